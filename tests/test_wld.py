"""The WLD loss (Rust custom op) against the formula written in plain PyTorch, its gradient, edge
cases and errors."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck

import ic_networks as icn
from ic_networks.functional import wld_loss, wld_loss_parts


def formula(s, t, y, lam, e=0.005, tau=4.0):
    """The loss with torch's built-ins: batchmean KL, tau^2, hinge on L_kd."""
    kd = tau**2 * F.kl_div(F.log_softmax(s / tau, 1), F.log_softmax(t / tau, 1), log_target=True, reduction="batchmean")
    ce = F.cross_entropy(s, y)
    return (1 - lam) * ce + lam * torch.clamp(kd - e, min=0), ce, kd


def paper_formula(s, t, y, lam, e=0.005, tau=4.0):
    """Paper eq. 8-10 written out with exponentials (hinge on L_kd, the printed L_ce is a typo)."""

    def p(z):
        ez = torch.exp(z / tau - (z / tau).max(1, keepdim=True).values)
        return ez / ez.sum(1, keepdim=True)

    pt, ps = p(t), p(s)
    l_kd = tau**2 * (pt * (torch.log(pt) - torch.log(ps))).sum() / s.shape[0]
    sm = torch.exp(s - s.max(1, keepdim=True).values)
    sm = sm / sm.sum(1, keepdim=True)
    l_ce = -torch.log(sm[torch.arange(len(y)), y]).mean()
    return (1 - lam) * l_ce + lam * max(l_kd - e, torch.zeros(()))


def batch(b=8, k=10, seed=0, dtype=torch.float64, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    s = (scale * torch.randn(b, k, generator=g)).to(dtype)
    t = (scale * torch.randn(b, k, generator=g)).to(dtype)
    y = torch.randint(0, k, (b,), generator=g)
    return s, t, y


@pytest.mark.parametrize("lam", [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("tau", [0.5, 1.0, 4.0, 20.0])
def test_matches_formula_float64(lam, tau):
    s, t, y = batch(seed=int(lam * 10 + tau))
    got = wld_loss(s, t, y, lam, e=0.005, tau=tau)
    want, _, _ = formula(s, t, y, lam, 0.005, tau)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got, paper_formula(s, t, y, lam, 0.005, tau), rtol=1e-10, atol=1e-12)


def test_parts_and_module():
    s, t, y = batch(seed=3)
    loss, ce, kd = wld_loss_parts(s, t, y, 0.3, e=0.01, tau=2.0)
    want, want_ce, want_kd = formula(s, t, y, 0.3, 0.01, 2.0)
    for a, b in ((loss, want), (ce, want_ce), (kd, want_kd)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert not loss.requires_grad
    mod = icn.WLDLoss(e=0.01, tau=2.0)
    torch.testing.assert_close(mod(s, t, y, 0.3), want, rtol=1e-12, atol=1e-12)


def test_parts_in_one_call_with_the_gradient():
    """wld_loss_parts gives (loss, ce, kd) from one op call; loss carries the student's gradient,
    ce and kd carry none."""
    from torch.profiler import ProfilerActivity, profile

    s, t, y = batch(seed=5)
    s.requires_grad_(True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        loss, ce, kd = wld_loss_parts(s, t, y, 0.4, e=0.01, tau=2.0)
    calls = [e.name for e in prof.events() if e.name.startswith("ic_networks::")]
    assert calls.count("ic_networks::wld_loss") == 1, calls
    assert loss.requires_grad and not ce.requires_grad and not kd.requires_grad
    want, want_ce, want_kd = formula(s.detach(), t, y, 0.4, 0.01, 2.0)
    for a, b in ((loss, want), (ce, want_ce), (kd, want_kd)):
        torch.testing.assert_close(a.detach(), b, rtol=1e-12, atol=1e-12)
    loss.backward()
    s2 = s.detach().clone().requires_grad_(True)
    wld_loss(s2, t, y, 0.4, e=0.01, tau=2.0).backward()
    torch.testing.assert_close(s.grad, s2.grad, rtol=0, atol=0)


@pytest.mark.cuda
def test_cuda_checks_targets_without_a_host_sync():
    """On CUDA the class-index check runs on the device: a training step's loss and backward do
    not synchronise with the host."""
    s, t, y = (u.cuda() for u in batch(seed=6))
    s.requires_grad_(True)
    wld_loss(s, t, y, 0.5).backward()  # warm-up (allocations)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss, ce, kd = wld_loss_parts(s, t, y, 0.5)
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(
        loss.detach().cpu(), formula(s.detach().cpu(), t.cpu(), y.cpu(), 0.5)[0], rtol=1e-10, atol=1e-12
    )


def test_hinge_on_kd_not_ce():
    s, t, y = batch(seed=4)
    _, ce, kd = formula(s, t, y, 0.5)
    # e above L_kd: the distillation term vanishes entirely, whatever L_ce is.
    e = float(kd) + 0.1
    torch.testing.assert_close(wld_loss(s, t, y, 0.5, e=e), 0.5 * ce, rtol=1e-12, atol=1e-12)
    # e = 0: plain Hinton distillation.
    torch.testing.assert_close(wld_loss(s, t, y, 0.5, e=0.0), 0.5 * ce + 0.5 * kd, rtol=1e-12, atol=1e-12)
    # a teacher equal to the student: L_kd = 0, below any e > 0.
    torch.testing.assert_close(wld_loss(s, s.clone(), y, 0.7, e=0.005), 0.3 * ce, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("lam, e", [(0.4, 0.0), (0.4, 1e6), (1.0, 0.005), (0.0, 0.005)])
def test_gradcheck_student(lam, e):
    s, t, y = batch(b=5, k=7, seed=7)
    s.requires_grad_(True)
    assert gradcheck(lambda z: wld_loss(z, t, y, lam, e=e, tau=3.0), (s,), eps=1e-6, atol=1e-8)


def test_grad_matches_autograd_of_formula():
    s, t, y = batch(b=16, k=10, seed=8)
    s1, s2 = s.clone().requires_grad_(True), s.clone().requires_grad_(True)
    wld_loss(s1, t, y, 0.6, e=0.005, tau=4.0).backward()
    formula(s2, t, y, 0.6, 0.005, 4.0)[0].backward()
    torch.testing.assert_close(s1.grad, s2.grad, rtol=1e-10, atol=1e-12)


def test_teacher_gets_no_gradient():
    s, t, y = batch(seed=9)
    s.requires_grad_(True)
    t.requires_grad_(True)
    wld_loss(s, t, y, 0.5).backward()
    assert s.grad is not None and t.grad is None


def test_float32_and_bfloat16():
    s, t, y = batch(b=32, seed=10, dtype=torch.float64)
    want = formula(s, t, y, 0.5)[0]
    got32 = wld_loss(s.float(), t.float(), y, 0.5)
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32.double(), want, rtol=1e-5, atol=1e-5)
    got16 = wld_loss(s.bfloat16(), t.bfloat16(), y, 0.5)
    assert got16.dtype == torch.bfloat16 and math.isfinite(float(got16))
    ref16 = formula(s.bfloat16().double(), t.bfloat16().double(), y, 0.5)[0]
    torch.testing.assert_close(got16.double(), ref16, rtol=2e-2, atol=2e-2)


def test_extreme_logits_are_stable():
    s, t, y = batch(seed=11, scale=1e4)
    s.requires_grad_(True)
    loss = wld_loss(s, t, y, 0.5, tau=1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    torch.testing.assert_close(loss, formula(s.detach(), t, y, 0.5, tau=1.0)[0], rtol=1e-10, atol=1e-6)


def test_single_class_and_single_row():
    s, t = torch.randn(1, 1, dtype=torch.float64), torch.randn(1, 1, dtype=torch.float64)
    y = torch.zeros(1, dtype=torch.long)
    assert float(wld_loss(s, t, y, 0.5)) == 0.0  # log softmax of one class is 0
    s, t, y = batch(b=1, seed=12)
    torch.testing.assert_close(wld_loss(s, t, y, 0.5), formula(s, t, y, 0.5)[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "kwargs, exc, word",
    [
        (dict(lam=1.5), ValueError, "lam"),
        (dict(lam=-0.1), ValueError, "lam"),
        (dict(tau=0.0), ValueError, "tau"),
        (dict(tau=float("nan")), ValueError, "tau"),
        (dict(e=-1.0), ValueError, "e:"),
        (dict(lam="0.5"), TypeError, "lam"),
    ],
)
def test_bad_hyperparameters(kwargs, exc, word):
    s, t, y = batch()
    args = dict(lam=0.5, e=0.005, tau=4.0)
    args.update(kwargs)
    with pytest.raises(exc, match=word):
        wld_loss(s, t, y, args["lam"], e=args["e"], tau=args["tau"])


def test_bad_tensors():
    s, t, y = batch()
    with pytest.raises(ValueError, match="teacher_logits"):
        wld_loss(s, t[:3], y, 0.5)
    with pytest.raises(TypeError, match="target"):
        wld_loss(s, t, y.double(), 0.5)
    with pytest.raises(ValueError, match="target"):
        wld_loss(s, t, y + 10, 0.5)
    with pytest.raises(ValueError, match="target"):
        wld_loss(s, t, y[:2], 0.5)
    with pytest.raises(ValueError, match="student_logits"):
        wld_loss(s[0], t[0], y[:1], 0.5)
    with pytest.raises(TypeError, match="student_logits"):
        wld_loss(s.numpy(), t, y, 0.5)
    with pytest.raises(ValueError, match="tau"):
        icn.WLDLoss(tau=-1.0)
    with pytest.raises(ValueError, match="e"):
        icn.WLDLoss(e=-0.5)
