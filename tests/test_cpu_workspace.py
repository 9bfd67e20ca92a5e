"""The CPU kernels' scratch pool (ic_networks.memory): reused buffers never change a result, never
alias what a call returns, and the pool keeps its limit and frees on request."""

import gc

import pytest
import torch

import ic_networks.memory as icm
from helpers import make_case
from ic_networks.functional import ic_conv2d


@pytest.fixture
def pool_limit():
    """Starts the test with the default limit and no free buffers; restores the limit and empties
    the pool after it."""
    old = icm.set_cpu_workspace_limit(512 << 20)
    icm.release_cpu_workspace()
    yield
    icm.set_cpu_workspace_limit(old)
    icm.release_cpu_workspace()


def _fwd_bwd(case, stride, seed):
    x, w, wa, b1, a, b2 = (t.detach().clone().requires_grad_(True) for t in case)
    out = ic_conv2d(x, w, wa, b1, a, b2, stride, 1, 1, 1)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    grads = torch.autograd.grad(out, (x, w, wa, b1, a, b2), g)
    return (out.detach(), *grads)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("stride", [1, 2])
def test_reused_buffers_give_the_results_of_fresh_ones(pool_limit, stride, channels_last):
    case_a = make_case(dtype=torch.float32, n=3, cin=8, cout=8, hw=(12, 10), channels_last=channels_last, seed=1)
    case_b = make_case(dtype=torch.float32, n=3, cin=8, cout=8, hw=(12, 10), channels_last=channels_last, seed=2)
    icm.set_cpu_workspace_limit(0)
    fresh = _fwd_bwd(case_b, stride, seed=4)
    icm.set_cpu_workspace_limit(512 << 20)
    first = _fwd_bwd(case_a, stride, seed=3)
    kept = [t.clone() for t in first]
    assert icm.cpu_workspace_bytes() > 0, "the pipeline's temporaries were not pooled"
    reused = _fwd_bwd(case_b, stride, seed=4)  # same shapes: the pool's buffers, holding case_a's values
    for got, want in zip(reused, fresh):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    # what the first call returned is not a pooled buffer the second call wrote into
    for got, want in zip(first, kept):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_repeated_calls_reuse_the_same_buffers(pool_limit, channels_last):
    case = make_case(dtype=torch.float32, n=2, cin=8, cout=8, hw=(9, 9), channels_last=channels_last)
    icm.release_cpu_workspace()
    _fwd_bwd(case, 1, seed=0)
    held = icm.cpu_workspace_bytes()
    assert held > 0
    for seed in range(3):
        _fwd_bwd(case, 1, seed=seed)
    assert icm.cpu_workspace_bytes() == held, "a later call of the same shape took new buffers"


@pytest.mark.parametrize("stride", [1, 2])
def test_saved_state_of_a_pending_backward_is_not_reused(pool_limit, stride):
    """Two forwards of one shape before either backward: the second must not take the buffer the
    first saved for its backward (relu_z comes from the pool)."""
    cases = [make_case(dtype=torch.float32, n=2, cin=8, cout=8, hw=(10, 10), seed=s, alpha=0.5) for s in (5, 6)]
    alone = [_fwd_bwd(c, stride, seed=7) for c in cases]
    leaves = [[t.detach().clone().requires_grad_(True) for t in c] for c in cases]
    outs = [ic_conv2d(*lv, stride, 1, 1, 1) for lv in leaves]  # both graphs alive
    g = torch.randn(outs[0].shape, generator=torch.Generator().manual_seed(7))
    for lv, out, want in zip(leaves, outs, alone):
        got = torch.autograd.grad(out, lv, g)
        for a, b in zip(got, want[1:]):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_release_frees_and_the_limit_holds(pool_limit):
    gc.collect()
    base = icm.release_cpu_workspace()  # saved state of graphs that other tests left alive
    case = make_case(dtype=torch.float32, n=2, cin=8, cout=8, hw=(16, 16))
    _fwd_bwd(case, 1, seed=0)
    assert icm.cpu_workspace_bytes() > base
    assert icm.release_cpu_workspace() <= base, "nothing of this call runs any more, so none of it stays held"
    base = icm.cpu_workspace_bytes()
    icm.set_cpu_workspace_limit(1000)  # below one 2x8x16x16 float32 buffer (16 KiB)
    _fwd_bwd(case, 1, seed=0)
    assert icm.cpu_workspace_bytes() <= base, "a buffer above the limit was kept"


@pytest.mark.parametrize("bad,err", [(-1, ValueError), (1.5, TypeError), (True, TypeError), ("64", TypeError)])
def test_limit_argument_errors_name_it(bad, err):
    with pytest.raises(err, match="nbytes"):
        icm.set_cpu_workspace_limit(bad)


@pytest.mark.parametrize("stride", [1, 2])
def test_widened_half_precision_calls_keep_nothing_in_the_pool(pool_limit, stride):
    """A float16/bfloat16 call that the kernels run in float32 (a CPU without half-precision matrix
    instructions) takes fresh temporaries: the pool would otherwise hold float32 copies of every
    layer's between steps. A float32 call of the same shape does pool its own."""
    import ic_networks as icn

    if icn._core.cpu_native_half(True):
        pytest.skip("this CPU multiplies bfloat16 natively: the libtorch steps take bf16 calls")
    case = make_case(dtype=torch.float32, n=2, cin=8, cout=8, hw=(9, 9))
    gc.collect()  # what earlier tests left unreachable lets go of its buffers, which are then freed
    icm.release_cpu_workspace()
    held = icm.cpu_workspace_bytes()  # buffers that live tensors of earlier tests still hold
    _fwd_bwd([t.bfloat16() for t in case], stride, seed=0)
    assert icm.cpu_workspace_bytes() == held
    _fwd_bwd(case, stride, seed=0)
    assert icm.cpu_workspace_bytes() > held
