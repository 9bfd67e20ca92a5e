"""IcConv2d as a first-class PyTorch op: registration by the native library, opcheck,
torch.compile, autocast, channels_last, ONNX, TorchScript, torch.export, AOTInductor, DDP and
thread safety."""

import copy
import datetime
import os
import socket
import threading
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch._prims_common import check_significant_strides
from torch._subclasses.fake_tensor import FakeTensorMode

import ic_networks as icn
from conftest import DEVICES
from ic_networks.reference import ic_conv2d_reference

OPS = torch.ops.ic_networks
CL = torch.channels_last


def _args(dtype=torch.float64, device="cpu", n=2, cin=4, cout=6, k=3, groups=2, bias=True, hw=(7, 6), seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype).to(device)  # noqa: E731
    x, w = r(n, cin, *hw), r(cout, cin // groups, k, k) * 0.5
    wa, b1 = r(cout, cin // groups, 1, 1) * 0.3, r(cout) * 0.3
    a = torch.tensor(0.7, dtype=dtype, device=device)
    return x, w, wa, b1, a, (r(cout) if bias else None)


def _small_model():
    torch.manual_seed(0)
    return nn.Sequential(
        icn.IcConv2d(3, 8, 3, padding=1, alpha=0.5, alpha_mode="learnable"),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        icn.IcConv2d(8, 8, 3, stride=2, padding=1, groups=2, bias=False, alpha=0.0, alpha_mode="learnable"),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        icn.IcConv2d(8, 4, (2, 3), padding="same", dilation=2, alpha=0.3),  # uneven 'same': an F.pad first
    )


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
# opcheck and fake implementations
# --------------------------------------------------------------------------------------------------
def _backward_args(
    x,
    w,
    wa,
    b1,
    a,
    b2,
    stride=(1, 1),
    padding=(1, 1),
    dilation=(1, 1),
    groups=2,
    needs=(True,) * 6,
    grad_format=torch.contiguous_format,
):
    out, relu_z = OPS.ic_conv2d_forward(x, w, wa, b1, a, b2, list(stride), list(padding), list(dilation), groups)
    grad = torch.randn(out.shape, dtype=out.dtype, device=out.device).contiguous(memory_format=grad_format)
    return (
        grad,
        x,
        w,
        wa,
        b1,
        a,
        relu_z,
        b2 is not None,
        list(stride),
        list(padding),
        list(dilation),
        groups,
        list(needs),
    )


def test_opcheck_every_op():
    x, w, wa, b1, a, b2 = _args()
    leaves = [t.requires_grad_() for t in (x, w, wa, b1, a, b2)]
    torch.library.opcheck(OPS.ic_conv2d_forward.default, (*leaves, [2, 1], [1, 0], [1, 2], 2))
    with torch.no_grad():  # the inference forward has no backward: plain tensors
        torch.library.opcheck(
            OPS.ic_conv2d_inference.default, (*(t.detach() for t in leaves), [2, 1], [1, 0], [1, 2], 2)
        )
    with torch.no_grad():  # plain tensors: the backward op has no double backward
        bargs = _backward_args(
            *(t.detach() for t in (x, w, wa, b1, a)), None, needs=(True, False, True, True, True, False)
        )
    torch.library.opcheck(OPS.ic_conv2d_backward.default, bargs)
    torch.library.opcheck(OPS.boxsum.default, (x, [3, 2], [2, 1], [1, 0], [1, 2]))
    s = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    t, y = torch.randn(5, 7, dtype=torch.float64), torch.randint(0, 7, (5,))
    torch.library.opcheck(OPS.wld_loss.default, (s, t, y, 0.5, 0.005, 4.0))
    torch.library.opcheck(
        OPS.wld_loss_backward.default, (torch.tensor(1.0, dtype=torch.float64), s.detach(), t, y, 0.5, 0.005, 4.0)
    )


def test_boxsum_op_is_differentiable():
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64, requires_grad=True)
    for k, st, p, d in [((3, 3), 1, 1, 1), ((3, 2), (2, 1), (1, 0), (1, 2)), ((2, 2), 1, 3, 1)]:
        f = lambda t: icn.functional.boxsum(t, k, st, p, d)  # noqa: E731
        assert torch.autograd.gradcheck(f, (x,), fast_mode=True)
        assert torch.autograd.gradgradcheck(f, (x,), fast_mode=True)


LAYOUTS = [(xf, wf) for xf in ("nchw", "nhwc") for wf in ("nchw", "nhwc")]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("x_fmt,w_fmt", LAYOUTS)
def test_fake_matches_real_for_layouts(device, dtype, x_fmt, w_fmt):
    """The fake kernels predict the real outputs' strides (what torch.compile relies on)."""
    fmt = {"nchw": torch.contiguous_format, "nhwc": CL}
    x, w, wa, b1, a, b2 = _args(dtype=dtype, device=device, groups=1, hw=(6, 6))
    x, w = x.contiguous(memory_format=fmt[x_fmt]), w.contiguous(memory_format=fmt[w_fmt])
    fwd = (x, w, wa, b1, a, b2, [1, 1], [1, 1], [1, 1], 1)
    checks = [
        (OPS.ic_conv2d_forward.default, fwd),
        (OPS.ic_conv2d_inference.default, fwd),
        (OPS.boxsum.default, (x, [3, 3], [1, 1], [1, 1], [1, 1])),
    ]
    for gf in (torch.contiguous_format, CL):
        checks.append((OPS.ic_conv2d_backward.default, _backward_args(x, w, wa, b1, a, b2, groups=1, grad_format=gf)))
    checks.append((OPS.ic_conv2d_forward.default, (x[:0], w, wa, b1, a, b2, [1, 1], [1, 1], [1, 1], 1)))
    checks.append((OPS.ic_conv2d_backward.default, _backward_args(x[:0], w, wa, b1, a, b2, groups=1)))
    for op, args in checks:
        real = op(*args)
        with FakeTensorMode() as mode:
            fake = op(*[mode.from_tensor(t) if isinstance(t, torch.Tensor) else t for t in args])
        for r, f in zip(real if isinstance(real, tuple) else (real,), fake if isinstance(fake, tuple) else (fake,)):
            assert (r.shape, r.dtype, r.device) == (f.shape, f.dtype, f.device), op
            assert check_significant_strides(r, f)[0], (op, r.stride(), f.stride())


def test_fake_raises_the_same_clear_errors_under_compile():
    m = torch.compile(icn.IcConv2d(4, 6, 3), backend="aot_eager", fullgraph=True)
    # dynamo re-raises them as a RuntimeError (TorchRuntimeError) that quotes our ValueError
    with pytest.raises(RuntimeError, match="ValueError.*x: has 5 channels but weight"):
        m(torch.randn(1, 5, 8, 8))
    with pytest.raises(RuntimeError, match="ValueError.*smaller than the dilated kernel"):
        m(torch.randn(1, 4, 2, 2))


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
    eager = _small_model()
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
    model = _small_model().eval()
    x = torch.randn(2, 3, 12, 12)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        events = _ic_events(lambda: compiled(x))
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


def test_autocast_under_compile():
    torch._dynamo.reset()
    m = icn.IcConv2d(4, 8, 3, padding=1, alpha=0.5)
    x = torch.randn(2, 4, 8, 8)
    compiled = torch.compile(m, backend="aot_eager", fullgraph=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, ref = compiled(x), m(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref)


# --------------------------------------------------------------------------------------------------
# channels_last
# --------------------------------------------------------------------------------------------------
COPIES = {"aten::copy_", "aten::clone", "aten::contiguous", "aten::_to_copy"}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("x_fmt,w_fmt", LAYOUTS)
def test_channels_last_layouts_follow_conv2d(device, x_fmt, w_fmt):
    fmt = {"nchw": torch.contiguous_format, "nhwc": CL}
    torch.manual_seed(0)
    m = icn.IcConv2d(8, 16, 3, padding=1, alpha=0.5).to(device, memory_format=fmt[w_fmt])
    conv = nn.Conv2d(8, 16, 3, padding=1).to(device, memory_format=fmt[w_fmt])
    x = torch.randn(2, 8, 12, 12, device=device).contiguous(memory_format=fmt[x_fmt])
    for layer in (m, conv):
        layer.requires_grad_(False)
    xs = [x.clone(memory_format=torch.preserve_format).requires_grad_() for _ in range(2)]
    out, ref = m(xs[0]), conv(xs[1])
    assert out.stride() == ref.stride()
    go = torch.randn_like(out)
    out.backward(go)
    ref.backward(go)
    assert xs[0].grad.stride() == xs[1].grad.stride()
    if x_fmt == "nhwc":
        assert out.is_contiguous(memory_format=CL) and xs[0].grad.is_contiguous(memory_format=CL)


@pytest.mark.parametrize("device", DEVICES)
def test_channels_last_hot_path_has_no_activation_copies(device):
    """Forward + backward on channels_last input, through the registered ops, copy nothing larger
    than a parameter."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    m = icn.IcConv2d(8, 16, 3, padding=1, alpha=0.5, alpha_mode="learnable").to(device)
    x = torch.randn(4, 8, 16, 16, device=device).contiguous(memory_format=CL).requires_grad_()
    m(x).sum().backward()  # warm-up
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        out = m(x)
        out.backward(torch.ones_like(out))
    names = {e.name for e in prof.events()}
    assert "ic_networks::ic_conv2d_forward" in names and "ic_networks::ic_conv2d_backward" in names
    largest_param = max(p.numel() for p in m.parameters())
    copies = [
        (e.name, e.input_shapes[0]) for e in prof.events() if e.name in COPIES and e.input_shapes and e.input_shapes[0]
    ]
    big = [(n, s) for n, s in copies if torch.Size(s).numel() > largest_param]
    assert not big, big


# --------------------------------------------------------------------------------------------------
# Export: ONNX, TorchScript, torch.export
# --------------------------------------------------------------------------------------------------
STANDARD_ONNX_OPS = {"Conv", "Relu", "Mul", "Add", "Sub", "BatchNormalization", "Pad", "Constant", "Identity", "Cast"}


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
def test_onnx_export_standard_ops_and_onnxruntime(tmp_path, dynamo):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    if dynamo:
        pytest.importorskip("onnxscript")
    model = _small_model().eval()
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
    model = _small_model().eval()
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
    model = _small_model()
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
    model = _small_model().eval()
    x = torch.randn(2, 3, 12, 12)
    ep = torch.export.export(model, (x,))
    assert str(ep.graph).count("ic_networks.ic_conv2d") == 3
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x), model(x))


# --------------------------------------------------------------------------------------------------
# DDP
# --------------------------------------------------------------------------------------------------
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_model():
    torch.manual_seed(0)
    return nn.Sequential(
        icn.IcConv2d(3, 6, 3, padding=1, alpha=0.0, alpha_mode="learnable"),
        nn.ReLU(),
        icn.IcConv2d(6, 4, 3, padding=1, alpha=0.0),  # fixed alpha = 0: W' and b1 still get (zero) gradients
    )


def _ddp_worker(rank, world, port, dump_dir=None):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from ic_networks.training import watchdog
    from ic_networks.training.distributed import shutdown_distributed

    watchdog.arm(dump_dir)
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        model = DDP(_ddp_model(), find_unused_parameters=False)
        single = _ddp_model()  # the same model without DDP, on the whole batch
        opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (model, single)]
        for step in range(3):
            g = torch.Generator().manual_seed(step)
            x = torch.randn(2 * world, 3, 8, 8, generator=g)
            for opt in opts:
                opt.zero_grad()
            model(x[2 * rank : 2 * rank + 2]).square().mean().backward()
            single(x).square().mean().backward()
            for (name, p), q in zip(model.module.named_parameters(), single.parameters()):
                assert p.grad is not None, (step, name)
                torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=f"step {step} {name}")
            for name in ("adjust_weight", "adjust_bias"):  # alpha = 0: zero gradients, not None
                assert torch.count_nonzero(getattr(model.module[2], name).grad) == 0
                if step == 0:  # (the learnable alpha of layer 0 moves away from 0 after the first step)
                    assert torch.count_nonzero(getattr(model.module[0], name).grad) == 0
            assert model.module[0].alpha.grad.abs() > 0
            for opt in opts:
                opt.step()
        ok = True
    except BaseException:
        ok = False
        raise
    finally:
        # While `model` (DDP) is still alive: its reducer must not hold the last reference to the
        # process group (see shutdown_distributed), else about 1 teardown in 10 hangs.
        shutdown_distributed(ok)


def test_ddp_gloo_two_processes_alpha_zero_no_unused_parameters(tmp_path):
    import torch.multiprocessing as mp

    from ic_networks.training import watchdog

    ctx = mp.start_processes(
        _ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=False, start_method="spawn"
    )
    watchdog.join(ctx, 300, dump_dir=tmp_path, what="DDP workers")  # a hang fails with every worker's stacks


# --------------------------------------------------------------------------------------------------
# Threads
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_threads_give_sequential_results(device):
    torch.manual_seed(0)
    m = icn.IcConv2d(4, 8, 3, padding=1, alpha=0.5, alpha_mode="learnable").double().to(device)
    inputs = [[torch.randn(2, 4, 9, 9, dtype=torch.float64, device=device) for _ in range(20)] for _ in range(4)]
    if device == "cpu":
        inputs[1] = [x.contiguous(memory_format=CL) for x in inputs[1]]  # the NHWC fused kernels too

    def run(xs):
        res = []
        for x in xs:
            x = x.clone().requires_grad_()
            out = m(x)
            gx, gw, ga = torch.autograd.grad(out.square().sum(), (x, m.weight, m.alpha))
            res.append((out.detach(), gx, gw, ga))
        return res

    sequential = [run(xs) for xs in inputs]
    results, errors = [None] * 4, []

    def worker(i):
        try:
            results[i] = run(inputs[i])
        except BaseException as e:  # noqa: BLE001 -- reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    for got, want in zip(results, sequential):
        for a, b in zip(got, want):
            for u, v in zip(a, b):
                torch.testing.assert_close(u, v, rtol=1e-12, atol=1e-12)


def test_rust_op_releases_the_gil():
    """A Python thread keeps running while another thread is inside the Rust forward.

    Were the GIL held, this thread would stand still for every call: the stalls longer than half a
    call would add up to (almost) the whole time. With it released the thread runs all along; the
    OS may still preempt it now and then (two cores, libtorch's threads busy), which a test of the
    longest single stall would mistake for a held GIL, so the stalls are summed."""
    x = torch.randn(8, 32, 96, 96)
    w, wa, b1, a = torch.randn(32, 32, 5, 5), torch.randn(32, 32, 1, 1), torch.randn(32), torch.tensor(0.5)
    icn.ic_conv2d(x, w, wa, b1, a, padding=2)  # warm-up
    t0 = time.perf_counter()
    icn.ic_conv2d(x, w, wa, b1, a, padding=2)
    op_time = time.perf_counter() - t0
    done = threading.Event()

    def work():
        for _ in range(3):
            icn.ic_conv2d(x, w, wa, b1, a, padding=2)
        done.set()

    th = threading.Thread(target=work)
    gaps, last = [], time.perf_counter()
    th.start()
    while not done.is_set():
        now = time.perf_counter()
        gaps.append(now - last)
        last = now
    th.join()
    total = sum(gaps)
    stalled = sum(g for g in gaps if g > 0.5 * op_time)
    assert total > 2 * op_time and stalled < 0.5 * total, (stalled, total, op_time)


def _ic_events(fn):
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.name for e in prof.events() if e.name.startswith("ic_networks::")}


# --------------------------------------------------------------------------------------------------
# The native op library
# --------------------------------------------------------------------------------------------------
OP_NAMES = ["ic_conv2d_forward", "ic_conv2d_inference", "ic_conv2d_backward", "boxsum", "wld_loss", "wld_loss_backward"]


def test_ops_are_registered_by_the_native_library():
    """Every op is defined in C++ with a kernel per dispatch key (no Python kernel but the fake)."""
    for name in OP_NAMES + ["ic_conv2d"]:
        op = getattr(OPS, name).default
        assert not op._defined_in_python, name
        assert "ops.cpp" in op._handle.debug(), (name, op._handle.debug())
    for name in OP_NAMES:
        for key in ("CPU", "CUDA", "Autograd"):
            assert torch._C._dispatch_has_kernel_for_dispatch_key(f"ic_networks::{name}", key), (name, key)
    for name in ("ic_conv2d_forward", "ic_conv2d_inference"):
        for key in ("AutocastCPU", "AutocastCUDA"):
            assert torch._C._dispatch_has_kernel_for_dispatch_key(f"ic_networks::{name}", key), (name, key)
    assert torch._C._dispatch_has_kernel_for_dispatch_key("ic_networks::ic_conv2d", "CompositeImplicitAutograd")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fmt", [torch.contiguous_format, CL], ids=["nchw", "nhwc"])
def test_eager_calls_take_the_registered_ops(device, fmt):
    """Training calls run ic_conv2d -> ic_conv2d_forward / ic_conv2d_backward; no_grad calls run
    ic_conv2d_inference (which writes no relu_z), with the training forward's output bit for bit."""
    torch.manual_seed(0)
    m = icn.IcConv2d(8, 12, 3, stride=2, padding=1, groups=2, alpha=0.3, alpha_mode="learnable").to(device)
    x = torch.randn(3, 8, 11, 9, device=device).contiguous(memory_format=fmt).requires_grad_()
    events = _ic_events(lambda: m(x).square().sum().backward())
    assert {"ic_networks::ic_conv2d", "ic_networks::ic_conv2d_forward", "ic_networks::ic_conv2d_backward"} <= events, (
        events
    )
    assert "ic_networks::ic_conv2d_inference" not in events
    with torch.no_grad():
        events = _ic_events(lambda: m(x))
        infer = m(x)
    assert "ic_networks::ic_conv2d_inference" in events and "ic_networks::ic_conv2d_forward" not in events, events
    train = m(x)
    assert torch.equal(train.detach(), infer) and train.stride() == infer.stride()


def test_inference_op_and_double_backward_refuse_clearly():
    x, w, wa, b1, a, b2 = _args()
    x.requires_grad_()
    out = OPS.ic_conv2d_inference(x, w, wa, b1, a, b2, [1, 1], [1, 1], [1, 1], 2)
    with pytest.raises(RuntimeError, match="ic_conv2d_inference keeps nothing for a backward"):
        out.sum().backward()
    out = icn.functional.ic_conv2d(x, w, wa, b1, a, b2, 1, 1, 1, 2)
    (gx,) = torch.autograd.grad(out.square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        gx.sum().backward()


def test_autocast_and_fake_mode_go_through_the_op():
    m = icn.IcConv2d(4, 4, 3, padding=1)
    x = torch.randn(2, 4, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        events = _ic_events(lambda: m(x))
    assert "ic_networks::ic_conv2d_forward" in events, events
    params = [m.weight.detach(), m.adjust_weight.detach(), m.adjust_bias.detach(), m.alpha.detach()]
    mode = FakeTensorMode()
    fx, *fparams = [mode.from_tensor(t) for t in (x, *params)]
    with mode:
        out = icn.functional.ic_conv2d(fx, *fparams, padding=1)
    assert out.shape == (2, 4, 6, 6)


def test_eager_errors_name_the_argument():
    """Bad input gets the core's clear exceptions, not a panic."""
    m = icn.IcConv2d(4, 4, 3, padding=1)
    with pytest.raises(TypeError, match="dtype"):
        m(torch.randn(1, 4, 5, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="x: has 3 channels"):
        m(torch.randn(1, 3, 5, 5))
    with pytest.raises(ValueError, match="smaller than the dilated kernel"):
        icn.functional.ic_conv2d(torch.randn(1, 4, 2, 2), m.weight, m.adjust_weight, m.adjust_bias, m.alpha)
    with pytest.raises(TypeError, match="x"):
        m([[1.0]])


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
