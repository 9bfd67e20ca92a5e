"""What the tests share: one case builder, one float64 oracle, one relative error, the tolerances,
the IC layers of a model, and tiny data sets written to disk.

The oracle is the plain-PyTorch formula of :mod:`ic_networks.reference`, run in float64.
"""

from __future__ import annotations

import gzip
import socket
import struct

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import ic_networks as icn
from ic_networks.reference import ic_conv2d_reference
from ic_networks.training.data import FMNIST_DIR

#: Whether Debian's Fashion-MNIST is installed (the tests that need it skip otherwise).
HAVE_FMNIST = (FMNIST_DIR / "train-images-idx3-ubyte.gz").is_file()

#: The verbs of the ``ic-networks`` command line.
VERBS = ["train", "eval", "demo", "study", "flops", "convert", "diagnose", "bench", "figures", "gradcam"] + [
    "train-det", "eval-det",
]  # fmt: skip

#: The op's tensor arguments in order, as they name the gradients.
GRAD_NAMES = ("x", "weight", "adjust_weight", "adjust_bias", "alpha", "bias")

#: (x, weight) memory formats: every combination of NCHW and channels_last (NHWC)
LAYOUTS = [(xf, wf) for xf in ("nchw", "nhwc") for wf in ("nchw", "nhwc")]

#: Tolerance of the float64 op against the float64 oracle: the forward, and every gradient.
F64_TOL = 1e-10
F64_GRAD_TOL = 1e-9
#: Relative error (:func:`rel_err`, in norm) allowed against float64 per dtype of the computation: a
#: relu mask that flips in half precision moves a few entries.
REL_TOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 1e-1}


def make_case(
    k=(3, 3),
    groups: int = 1,
    *,
    bias: bool = True,
    alpha: float = 0.7,
    n: int = 2,
    cin: int = 4,
    cout: int = 4,
    hw=(11, 10),
    dtype=torch.float64,
    device="cpu",
    channels_last: bool = False,
    seed: int = 0,
):
    """The op's tensors ``(x, weight, adjust_weight, adjust_bias, alpha, bias)`` (``bias`` None
    without ``bias``): seeded normal values, drawn in float64 on the CPU, then moved to ``dtype``
    and ``device``; ``x`` channels_last when asked."""
    g = torch.Generator().manual_seed(seed)

    def r(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64).to(device, dtype)

    kh, kw = (k, k) if isinstance(k, int) else k
    x = r(n, cin, *hw)
    w = r(cout, cin // groups, kh, kw) * 0.5
    wa = r(cout, cin // groups, 1, 1) * 0.2
    b1 = r(cout) * 0.5
    b2 = r(cout) if bias else None
    a = torch.tensor(alpha, dtype=dtype, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, w, wa, b1, a, b2


def oracle(x, weight, adjust_weight, adjust_bias, alpha, bias, stride=1, padding=0, dilation=1, groups=1, grad=None):
    """The float64 output of the plain-PyTorch formula and, with ``grad`` (the output gradient), its
    gradients by name (:data:`GRAD_NAMES`; zeros where an argument does not reach the output,
    None for a missing ``bias``)."""
    tensors = (x, weight, adjust_weight, adjust_bias, alpha, bias)
    leaves = [None if t is None else t.detach().double().requires_grad_(grad is not None) for t in tensors]
    out = ic_conv2d_reference(*leaves, stride, padding, dilation, groups)
    if grad is None:
        return out.detach(), None
    used = [t for t in leaves if t is not None]
    gs = iter(torch.autograd.grad(out, used, grad.double(), allow_unused=True))
    grads = {}
    for name, t in zip(GRAD_NAMES, leaves):
        if t is not None:
            g = next(gs)
            grads[name] = torch.zeros_like(t) if g is None else g
        else:
            grads[name] = None
    return out.detach(), grads


def rel_err(got: torch.Tensor, want: torch.Tensor, norm: str = "max") -> float:
    """Relative error of ``got`` against ``want``, in float64: the largest absolute difference over
    the largest magnitude (``norm="max"``), or the L2 norms' ratio (``norm="l2"``); 0 for empty
    tensors."""
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    if want.numel() == 0:
        return 0.0
    if norm == "max":
        return float((got - want).abs().max() / (want.abs().max() + 1e-12))
    if norm == "l2":
        return float((got - want).norm() / want.norm().clamp_min(1e-12))
    raise ValueError(f"norm: expected 'max' or 'l2', got {norm!r}")


def ic_layer_names(model: torch.nn.Module) -> list[str]:
    """The qualified names of the IC layers of ``model`` (:func:`ic_networks.ic_layers`), in order."""
    ic = {id(m) for m in icn.ic_layers(model)}
    return [name for name, m in model.named_modules() if id(m) in ic]


def free_port() -> int:
    """A TCP port that is free now (for a process group's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_idx(path, array: np.ndarray, code: int = 0x08) -> None:
    """``array`` as an IDX file (gzip-compressed when ``path`` ends in .gz)."""
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(payload)


def tiny_fmnist_dir(root, n_train: int = 512, n_test: int = 256):
    """A Fashion-MNIST-shaped data set of random images under ``root`` (the four IDX files)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("t10k", n_test)):
        write_idx(root / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, n, dtype=np.uint8))
    return root


class Flat(nn.Module):
    """A tiny BN-free IC model on 1x8x8 inputs."""

    def __init__(self, k=6):
        super().__init__()
        self.conv = icn.IcConv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 16, k)

    def forward(self, x):
        return self.fc(F.max_pool2d(torch.relu(self.conv(x)), 2).flatten(1))


def ic_op_events(fn) -> set[str]:
    """The names of the ``ic_networks::`` ops that ``fn()`` calls (by the CPU profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.name for e in prof.events() if e.name.startswith("ic_networks::")}


def tiny_dataset():
    """32 random 1x8x8 images with labels in 0..5 (for :class:`Flat`), the same every call."""
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(32, 1, 8, 8, generator=g), torch.randint(0, 6, (32,), generator=g))


def small_ic_model():
    """Three IC layers with BatchNorm: learnable and fixed alpha, groups, no bias, stride 2 and an uneven
    'same' padding."""
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
