"""``profile``: parameters and multiply-adds of a model, with the IC branch's share broken out.

The function is ``ic_networks.profile`` (also ``ic_networks.profiling.profile``); this module is
``ic_networks.profiling``.

Counting convention
-------------------
The plain part follows the de-facto counter ``ptflops``, whose numbers are the ones the paper
prints for the plain networks (ResNet-18/34/50: 1.82 / 3.68 / 4.12 GMACs at 224x224; conv and
linear layers alone give 1.81 / 3.66 / 4.09). Per forward pass, counted by forward hooks on leaf
modules:

* conv (``nn.Conv1d/2d/3d``, ``IcConv2d``'s own conv): ``Cin/groups * prod(kernel)`` MACs per output
  element, plus 1 per output element for a bias; transposed convs the same per input element;
* ``nn.Linear``: ``in_features`` per output element, plus 1 for a bias;
* normalisation (BatchNorm, GroupNorm, LayerNorm, InstanceNorm): 1 per input element, 2 if affine;
* activations (ReLU, ReLU6, SiLU, Sigmoid, Hardswish, GELU, ...): 1 per output element;
* pooling (max, average, adaptive): 1 per input element; upsampling: 1 per output element;
* anything else (residual additions, SE's channel scaling, dropout, flatten, functional calls): 0.

The IC branch of an IC layer (``out = Y + alpha * relu(Y - conv1x1(boxsum(X), W') + b1) + b2``):

* ``ic_macs_adjust``: the 1x1 conv with W' on the **output** grid, ``Cin/groups`` MACs per output
  element (the extra cost is about 1/(kh*kw) of the conv's);
* ``ic_macs_elementwise``: 2 per output element, the ReLU (as every ReLU above) and the fused
  ``Y + alpha * r``; b1 is the initial value of the W' accumulator and ``Y - P`` is that
  accumulation, so neither is a separate operation;
* ``ic_box_sum_adds``: the box sum, ``kh*kw`` additions per input channel and output position (the
  1/Cout share of the conv's cost). It has no multiplications, so, like the residual additions above, it is
  **not** part of ``macs``; it is reported on its own.

``macs`` = plain part + ``ic_macs_adjust`` + ``ic_macs_elementwise``. This reproduces every entry
of the paper's Table 1 at 224x224 to the printed precision: 1.82 -> 2.01, 3.68 -> 4.07,
4.12 -> 4.33 GMACs. Counting the box sum's additions as well would give 2.02 for IC-ResNet-18.

``params`` counts the model's parameters (shared ones once); ``ic_params`` those of the IC
branches (W', b1 and a learnable alpha). Parameters: ResNet-18 11.69M -> 12.91M, ResNet-50
25.56M -> 26.82M, as printed; ResNet-34 21.80M -> 24.15M, which prints as 24.1M where the paper
prints 24.2M. The paper's figure needs one more Cout-vector per IC layer (e.g. a conv bias b2,
which these layers omit because BatchNorm follows, or a bias on the W' conv); no counting
convention recovers parameters that the layer does not have.

An IC layer is what :func:`ic_networks.is_ic_layer` accepts (``IcConv2d``, the MobileNet
``IcDepthwiseSeparable`` pair).
The pass runs on the meta device (no memory, no compute), so even ResNet-152 is counted in
milliseconds and the model is not touched.
"""

import math
import numbers
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.instancenorm import _InstanceNorm

from .nn import IC_PARAM_NAMES, is_ic_layer

__all__ = ["profile", "Profile"]

_NORMS = (_BatchNorm, _InstanceNorm, nn.GroupNorm, nn.LayerNorm)
_ACTIVATIONS = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Softplus,
)
_POOLS = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
)


@dataclass(frozen=True)
class Profile:
    """Counts for one forward pass at ``input_size`` (see the module doc for the convention)."""

    params: int
    macs: int
    ic_layers: int
    ic_params: int
    ic_macs_adjust: int
    ic_macs_elementwise: int
    ic_box_sum_adds: int

    @property
    def ic_macs(self) -> int:
        """Multiply-adds of the IC branches (included in ``macs``)."""
        return self.ic_macs_adjust + self.ic_macs_elementwise

    def as_dict(self) -> dict[str, int]:
        return dict(asdict(self), ic_macs=self.ic_macs)

    def __str__(self) -> str:
        return (
            f"{self.params / 1e6:.2f}M params, {self.macs / 1e9:.2f} GMACs "
            f"(IC: {self.ic_layers} layers, {self.ic_params / 1e6:.2f}M params, {self.ic_macs / 1e9:.3f} GMACs "
            f"= W' 1x1 {self.ic_macs_adjust / 1e9:.3f} + elementwise {self.ic_macs_elementwise / 1e9:.3f}; "
            f"box sum {self.ic_box_sum_adds / 1e9:.3f} G additions)"
        )


def _plain_macs(module: nn.Module, x: torch.Tensor, out: torch.Tensor) -> int:
    if isinstance(module, _ConvNd):
        bias = out.numel() if module.bias is not None else 0
        if module.transposed:
            return x.numel() * module.out_channels // module.groups * math.prod(module.kernel_size) + bias
        return out.numel() * module.in_channels // module.groups * math.prod(module.kernel_size) + bias
    if isinstance(module, nn.Linear):
        return out.numel() * module.in_features + (out.numel() if module.bias is not None else 0)
    if isinstance(module, _NORMS):
        affine = getattr(module, "affine", False) or getattr(module, "elementwise_affine", False)
        return x.numel() * (2 if affine else 1)
    if isinstance(module, _ACTIVATIONS) or isinstance(module, nn.Upsample):
        return out.numel()
    if isinstance(module, _POOLS):
        return x.numel()
    return 0


def _check_input_size(input_size) -> tuple:
    if not isinstance(input_size, Sequence) or isinstance(input_size, str) or not input_size:
        raise TypeError(f"input_size: expected a tuple of ints such as (1, 3, 224, 224), got {input_size!r}")
    if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1 for v in input_size):
        raise ValueError(f"input_size: expected positive ints, got {input_size!r}")
    return tuple(int(v) for v in input_size)


def profile(model: nn.Module, input_size: Sequence[int] = (1, 3, 224, 224)) -> Profile:
    """Parameters and multiply-adds of ``model`` for one input of shape ``input_size``.

    Runs one forward pass on the meta device (``torch.func.functional_call`` with meta copies of
    the parameters and buffers): ``model`` is not modified and nothing is computed. See the module
    docstring for what is counted and how the IC branch's share is split.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    input_size = _check_input_size(input_size)
    floats = [p.dtype for p in model.parameters() if p.is_floating_point()]
    x = torch.empty(input_size, device="meta", dtype=floats[0] if floats else torch.get_default_dtype())
    state = {k: torch.empty_like(v, device="meta") for k, v in model.named_parameters()}
    state.update({k: torch.empty_like(v, device="meta") for k, v in model.named_buffers()})

    counts = dict(macs=0, ic_macs_adjust=0, ic_macs_elementwise=0, ic_box_sum_adds=0)
    ic_modules = [m for m in model.modules() if is_ic_layer(m)]  # before functional_call swaps the parameters
    ic_ids = {id(m) for m in ic_modules}

    def hook(module: nn.Module, inputs, out) -> None:
        x = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
        if x is None or not isinstance(out, torch.Tensor):
            return
        counts["macs"] += _plain_macs(module, x, out)
        if id(module) in ic_ids:
            kh, kw = module.kernel_size
            counts["ic_macs_adjust"] += out.numel() * module.adjust_weight.shape[1]
            counts["ic_macs_elementwise"] += 2 * out.numel()
            counts["ic_box_sum_adds"] += x.shape[0] * x.shape[1] * out.shape[-2] * out.shape[-1] * kh * kw

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            torch.func.functional_call(model, state, (x,))
    finally:
        for h in handles:
            h.remove()

    ic_params = 0
    for m in ic_modules:
        ic_params += sum(p.numel() for n, p in m.named_parameters(recurse=False) if n in IC_PARAM_NAMES)
    counts["macs"] += counts["ic_macs_adjust"] + counts["ic_macs_elementwise"]
    params = sum(p.numel() for p in model.parameters())
    return Profile(params=params, ic_layers=len(ic_modules), ic_params=ic_params, **counts)
