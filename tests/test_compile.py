"""torch.compile (fullgraph, dynamic shapes, inductor, no_grad) and autocast (eager and compiled) over
the IC op."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ic_networks as icn
from conftest import DEVICES
from helpers import ic_op_events, small_ic_model
from ic_networks.reference import ic_conv2d_reference

OPS = torch.ops.ic_networks
CL = torch.channels_last


def _ic_resnet18():
    import torchvision

    torch.manual_seed(0)
    m = torchvision.models.resnet18(num_classes=10)
    for block in m.modules():
        if isinstance(block, torchvision.models.resnet.BasicBlock):
            block.conv1 = icn.IcConv2d.from_conv(block.conv1, alpha=0.0)
            block.conv2 = icn.IcConv2d.from_conv(block.conv2, alpha=0.0)
            with torch.no_grad():  # a converted model part-way through training: alpha != 0
                block.conv2.alpha.fill_(0.05)
    assert sum(isinstance(c, icn.IcConv2d) for c in m.modules()) == 16
    return m


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


# --------------------------------------------------------------------------------------------------
# torch.compile
# --------------------------------------------------------------------------------------------------
def _recording_backend(graphs, inner="aot_eager"):
    from torch._dynamo.backends.registry import lookup_backend

    def backend(gm, example_inputs):
        graphs.append(gm.code)
        return lookup_backend(inner)(gm, example_inputs)

    return backend


def _train_step(model, x, target):
    loss = F.cross_entropy(model(x).flatten(2).mean(-1), target)
    loss.backward()
    return loss.detach()


def test_compile_fullgraph_small_model_train_step():
    torch._dynamo.reset()
    eager = small_ic_model()
    compiled_model = copy.deepcopy(eager)
    graphs = []
    compiled = torch.compile(compiled_model, backend=_recording_backend(graphs), fullgraph=True)
    x, target = torch.randn(2, 3, 12, 12), torch.tensor([1, 3])
    for _ in range(2):  # the second step reuses the graph (no recompilation)
        l1 = _train_step(compiled, x, target)
        l2 = _train_step(eager, x, target)
        torch.testing.assert_close(l1, l2)
        g1, g2 = _grads(compiled_model), _grads(eager)
        assert g1.keys() == g2.keys() and all(g is not None for g in g1.values())
        for name in g1:
            torch.testing.assert_close(g1[name], g2[name], rtol=1e-4, atol=1e-5, msg=name)
        for m in (compiled_model, eager):
            m.zero_grad()
    assert len(graphs) == 1, "one graph, no graph break and no recompilation"
    assert graphs[0].count("ic_networks.ic_conv2d") == 3, graphs[0]


def test_compile_fullgraph_ic_resnet18_sgd_step():
    torch._dynamo.reset()
    eager = _ic_resnet18()
    compiled_model = copy.deepcopy(eager)
    graphs = []
    compiled = torch.compile(compiled_model, backend=_recording_backend(graphs), fullgraph=True)
    x, target = torch.randn(2, 3, 32, 32), torch.tensor([1, 7])
    outs = []
    for model, fn in ((compiled_model, compiled), (eager, eager)):
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        out = fn(x)
        F.cross_entropy(out, target).backward()
        assert all(p.grad is not None for p in model.parameters())
        opt.step()
        outs.append(out.detach())
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-5)
    g1, g2 = _grads(compiled_model), _grads(eager)
    for name in g1:
        torch.testing.assert_close(g1[name], g2[name], rtol=1e-3, atol=1e-5, msg=name)
    p1, p2 = dict(compiled_model.named_parameters()), dict(eager.named_parameters())
    for name in p1:
        torch.testing.assert_close(p1[name], p2[name], rtol=1e-4, atol=1e-6, msg=name)
    assert len(graphs) == 1 and graphs[0].count("ic_networks.ic_conv2d") == 16


def test_compile_dynamic_shapes_one_graph():
    torch._dynamo.reset()
    m = icn.IcConv2d(3, 4, 3, padding=1, alpha_mode="learnable")
    graphs = []
    compiled = torch.compile(m, backend=_recording_backend(graphs), fullgraph=True, dynamic=True)
    for shape in [(2, 3, 9, 10), (3, 3, 11, 7), (5, 3, 6, 8)]:  # (no size 1 and no H == W: torch specialises those)
        x = torch.randn(shape)
        torch.testing.assert_close(compiled(x), m(x))
    assert len(graphs) == 1


def test_compile_no_grad_takes_the_inference_op():
    """Under no_grad the compiled graph runs ic_conv2d_inference (no relu_z written), as eager does."""
    torch._dynamo.reset()
    model = small_ic_model().eval()
    x = torch.randn(2, 3, 12, 12)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        events = ic_op_events(lambda: compiled(x))
        torch.testing.assert_close(compiled(x), model(x))
    assert "ic_networks::ic_conv2d_inference" in events and "ic_networks::ic_conv2d_forward" not in events, events


def test_compile_inductor_forward_backward():
    torch._dynamo.reset()
    m = nn.Sequential(icn.IcConv2d(3, 4, 3, padding=1, alpha_mode="learnable"), nn.ReLU())
    compiled = torch.compile(m, backend="inductor", fullgraph=True)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    out = compiled(x)
    out.square().sum().backward()
    gx, g = x.grad.clone(), _grads(m)
    x.grad = None
    m.zero_grad()
    ref = m(x)
    ref.square().sum().backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(gx, x.grad)
    for name, t in _grads(m).items():
        torch.testing.assert_close(g[name], t, msg=name)


# --------------------------------------------------------------------------------------------------
# Autocast
# --------------------------------------------------------------------------------------------------
AUTOCAST = [("cpu", torch.bfloat16)] + [(d, t) for d in DEVICES if d == "cuda" for t in (torch.float16, torch.bfloat16)]
TOL = {torch.bfloat16: 4e-2, torch.float16: 5e-3}


@pytest.mark.parametrize("device,dtype", AUTOCAST)
def test_autocast_follows_conv2d_and_grads_keep_param_dtype(device, dtype):
    torch.manual_seed(0)
    m = icn.IcConv2d(8, 16, 3, padding=1, alpha=0.5, alpha_mode="learnable").to(device)
    conv = nn.Conv2d(8, 16, 3, padding=1).to(device)
    x = torch.randn(2, 8, 10, 10, device=device)
    with torch.autocast(device, dtype=dtype):
        out = m(x)
        assert out.dtype == conv(x).dtype == dtype
        x64 = x.double()
        assert m.double()(x64).dtype == F.conv2d(x64, m.weight).dtype == torch.float64  # float64 is left alone
        m.float()
    ref = ic_conv2d_reference(x, m.weight, m.adjust_weight, m.adjust_bias, m.alpha, m.bias, 1, 1, 1, 1)
    scale = ref.abs().max()
    assert (out.float() - ref).abs().max() <= TOL[dtype] * scale
    out.float().square().sum().backward()
    got = _grads(m)
    m.zero_grad()
    ref.square().sum().backward()
    for name, want in _grads(m).items():
        assert got[name].dtype == torch.float32, name
        assert (got[name] - want).abs().max() <= 4 * TOL[dtype] * want.abs().max() + 1e-3, name


@pytest.mark.parametrize("device,dtype", AUTOCAST)
@pytest.mark.parametrize("stride", [1, 2])
def test_backward_inside_autocast_matches_backward_outside(device, dtype, stride):
    """A backward run inside the autocast context (as a training loop that wraps the whole step
    does) gives the gradients of one run outside it: the op's kernels keep their own dtypes
    (autocast would turn the float32 GEMMs of a widened half-precision call into half ones)."""
    torch.manual_seed(0)
    m = icn.IcConv2d(8, 8, 3, stride, 1, alpha=0.5, alpha_mode="learnable").to(device)
    x = torch.randn(2, 8, 10, 10, device=device, requires_grad=True)
    grads = []
    for inside in (True, False):
        m.zero_grad()
        x.grad = None
        with torch.autocast(device, dtype=dtype):
            out = m(x)
            if inside:
                out.float().square().sum().backward()
        if not inside:
            out.float().square().sum().backward()
        grads.append({"x": x.grad.clone(), **_grads(m)})
    for name, want in grads[1].items():
        torch.testing.assert_close(grads[0][name], want, rtol=0, atol=0, msg=name)


def test_autocast_under_compile():
    torch._dynamo.reset()
    m = icn.IcConv2d(4, 8, 3, padding=1, alpha=0.5)
    x = torch.randn(2, 4, 8, 8)
    compiled = torch.compile(m, backend="aot_eager", fullgraph=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, ref = compiled(x), m(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref)
