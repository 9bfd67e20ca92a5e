"""Export of IC models: ONNX (onnxruntime), torch.jit.trace and script, torch.export, AOTInductor (C++)."""

import os

import pytest
import torch
from torch import nn

import ic_networks as icn
from helpers import small_ic_model

OPS = torch.ops.ic_networks
CL = torch.channels_last


# --------------------------------------------------------------------------------------------------
# ONNX, TorchScript, torch.export
# --------------------------------------------------------------------------------------------------
STANDARD_ONNX_OPS = {"Conv", "Relu", "Mul", "Add", "Sub", "BatchNormalization", "Pad", "Constant", "Identity", "Cast"}


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
def test_onnx_export_standard_ops_and_onnxruntime(tmp_path, dynamo):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    if dynamo:
        pytest.importorskip("onnxscript")
    model = small_ic_model().eval()
    x = torch.randn(2, 3, 12, 12)
    path = str(tmp_path / "ic.onnx")
    torch.onnx.export(
        model,
        (x,),
        path,
        dynamo=dynamo,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes=None if dynamo else {"x": {0: "n"}, "y": {0: "n"}},
    )
    proto = onnx.load(path)
    onnx.checker.check_model(proto)
    op_types = {node.op_type for node in proto.graph.node}
    assert {"Conv", "Relu", "Mul", "Add"} <= op_types <= STANDARD_ONNX_OPS, op_types
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        want = model(x)
    got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    assert (got - want).abs().max() < 1e-4
    if not dynamo:
        x3 = torch.randn(3, 3, 12, 12)
        got3 = torch.from_numpy(session.run(None, {"x": x3.numpy()})[0])
        with torch.no_grad():
            assert (got3 - model(x3)).abs().max() < 1e-4


def test_jit_trace_uses_reference():
    model = small_ic_model().eval()
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        traced = torch.jit.trace(model, x)
        graph = str(traced.inlined_graph)
        assert "ic_networks::" not in graph and "aten::_convolution" in graph
        for shape in [(2, 3, 12, 12), (1, 3, 9, 10)]:
            xi = torch.randn(shape)
            torch.testing.assert_close(traced(xi), model(xi), rtol=1e-5, atol=1e-5)


def test_jit_script_calls_the_op_and_round_trips(tmp_path):
    """torch.jit.script compiles IcConv2d.forward to a call of ic_networks::ic_conv2d (the op of
    the native library); the scripted model trains, saves and loads like the eager one."""
    model = small_ic_model()
    scripted = torch.jit.script(model)
    graph = str(scripted.inlined_graph)
    assert graph.count("ic_networks::ic_conv2d") == 3, graph
    x = torch.randn(2, 3, 12, 12)
    torch.testing.assert_close(scripted(x), model(x))
    names, params = zip(*model.named_parameters())  # (the scripted model shares them)
    got = torch.autograd.grad(scripted(x).square().sum(), params)
    want = torch.autograd.grad(model(x).square().sum(), params)
    for n, a, b in zip(names, got, want):
        torch.testing.assert_close(a, b, msg=n)
    path = str(tmp_path / "ic.pt")
    torch.jit.save(scripted, path)
    loaded = torch.jit.load(path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    layer = icn.IcConv2d(3, 5, 3, padding="same", padding_mode="reflect", alpha=0.5)
    with torch.no_grad():  # unbatched (C, H, W) input, a non-zero padding mode
        torch.testing.assert_close(torch.jit.script(layer)(x[0]), layer(x[0]))


def test_onnx_export_of_the_functional_api(tmp_path):
    """A model that calls functional.ic_conv2d (not IcConv2d) exports to ONNX with standard ops."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")

    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.ic = icn.IcConv2d(3, 4, 3, alpha=0.4)

        def forward(self, x):
            m = self.ic
            return icn.functional.ic_conv2d(
                x, m.weight, m.adjust_weight, m.adjust_bias, m.alpha, m.bias, 2, "valid", 1, 1
            )

    model = Functional().eval()
    x = torch.randn(2, 3, 11, 11)
    path = str(tmp_path / "f.onnx")
    torch.onnx.export(model, (x,), path, dynamo=False, input_names=["x"], output_names=["y"])
    proto = onnx.load(path)
    onnx.checker.check_model(proto)
    op_types = {node.op_type for node in proto.graph.node}
    assert "Conv" in op_types and op_types <= STANDARD_ONNX_OPS, op_types
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"x": x.numpy()})[0])
    with torch.no_grad():
        assert (got - model(x)).abs().max() < 1e-4


def test_torch_export_keeps_the_custom_op():
    model = small_ic_model().eval()
    x = torch.randn(2, 3, 12, 12)
    ep = torch.export.export(model, (x,))
    assert str(ep.graph).count("ic_networks.ic_conv2d") == 3
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x), model(x))


# --------------------------------------------------------------------------------------------------
# AOTInductor
# --------------------------------------------------------------------------------------------------
def test_aoti_package_runs_the_op_from_cpp(tmp_path):
    """torch.export + AOTInductor: the package calls ic_networks::ic_conv2d_inference through the
    proxy executor; scripts/aoti/demo.py checks it from Python, then builds scripts/aoti/runner.cpp
    and runs it from C++ with the op library loaded by the runner."""
    import shutil
    import subprocess
    import sys

    if shutil.which(os.environ.get("CXX", "c++")) is None:
        pytest.skip("needs a C++ compiler")
    demo = os.path.join(os.path.dirname(__file__), os.pardir, "scripts", "aoti", "demo.py")
    r = subprocess.run([sys.executable, demo, str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert "ic_networks.ic_conv2d.default" in r.stdout
    assert "Python aoti_load_package: matches eager" in r.stdout
    assert "max |C++ - Python eager| = 0" in r.stdout or "C++ runner exit code 0" in r.stdout, r.stdout
