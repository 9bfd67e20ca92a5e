"""The op's stages appear as named ranges in torch.profiler traces (inside the op's own range), on
each CPU route: the Rust kernels (box sum fused into the collision at stride 1) and the libtorch
steps (which CUDA tensors take)."""

import pytest
import torch

import ic_networks as icn
from helpers import ic_op_events

BACKWARD = {"ic_networks::collision_backward", "ic_networks::conv_backward", "ic_networks::adjust_backward"}
STRIDED = {"ic_networks::conv", "ic_networks::boxsum", "ic_networks::conv1x1", "ic_networks::collision"}
# stride 1: the Rust CPU kernels box-sum the 1x1's output inside the collision
FUSED_BOX = {"ic_networks::conv", "ic_networks::conv1x1", "ic_networks::boxsum_collision"}


@pytest.fixture(params=[True, False], ids=["rust-kernels", "libtorch-steps"])
def cpu_kernels(request):
    old = icn._core.set_cpu_kernels(request.param)
    yield request.param
    icn._core.set_cpu_kernels(old)


@pytest.mark.parametrize("stride", [1, 2])
def test_stages_are_named_in_profiler_traces(cpu_kernels, stride):
    torch.manual_seed(0)
    m = icn.IcConv2d(8, 8, 3, stride=stride, padding=1, alpha=0.5)
    x = torch.randn(2, 8, 10, 10, requires_grad=True)
    events = ic_op_events(lambda: m(x).sum().backward())
    forward = FUSED_BOX if (stride == 1 and cpu_kernels) else STRIDED
    assert forward | BACKWARD | {"ic_networks::ic_conv2d_forward", "ic_networks::ic_conv2d_backward"} <= events, events
    with torch.no_grad():
        events = ic_op_events(lambda: m(x))
    assert forward | {"ic_networks::ic_conv2d_inference"} <= events and not events & BACKWARD, events
