"""Modules: ``IcConv2d`` (a drop-in for ``nn.Conv2d``) and ``WLDLoss``; what counts as an IC layer.

An *IC layer* is a module that computes ``Y + alpha * relu(Y - conv1x1(boxsum(X), W') + b1)`` for
its own ``Y``: :class:`IcConv2d` (``Y`` is one convolution) and
:class:`~ic_networks.models.mobilenet.IcDepthwiseSeparable` (``Y`` is MobileNet's depthwise +
pointwise pair). They share an interface, and :func:`is_ic_layer` tests for it rather than for a
class, so a new IC layer type is seen everywhere (:func:`ic_networks.profile`, the alpha ramp and
alpha logging of the trainer, :func:`ic_networks.convert`, the checkpoint loaders) once it has:

* ``adjust_weight`` (an ``nn.Parameter``, W' of shape ``(Cout, Cin, 1, 1)``) and ``adjust_bias``
  (b1, an ``nn.Parameter``);
* ``alpha``: a 0-d tensor, a parameter (``alpha_mode="learnable"``) or a buffer (``"fixed"``);
* ``set_alpha(value)``, which sets alpha in place;
* the box sum's geometry: ``kernel_size``, ``stride``, ``padding``, ``dilation``.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import warnings
from collections.abc import Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import _ops
from . import functional as icf
from ._checks import int_pair, positive_int
from ._utils import IntPair, resolve_padding

__all__ = [
    "IcConv2d",
    "WLDLoss",
    "ALPHA_MODES",
    "ADJUST_INITS",
    "PlainStateDictWarning",
    "IC_PARAM_NAMES",
    "is_ic_layer",
    "ic_layers",
    "ic_keys",
]

#: The state_dict entries an IC layer adds to the plain layer's.
IC_PARAM_NAMES = ("adjust_weight", "adjust_bias", "alpha")


def is_ic_layer(module: nn.Module) -> bool:
    """True if ``module`` itself is an IC layer (see the module docstring); a model that merely
    contains IC layers is not one."""
    return (
        isinstance(getattr(module, "adjust_weight", None), nn.Parameter)
        and isinstance(getattr(module, "adjust_bias", None), nn.Parameter)
        and isinstance(getattr(module, "alpha", None), torch.Tensor)
        and callable(getattr(module, "set_alpha", None))
        and hasattr(module, "kernel_size")
    )


def ic_layers(model: nn.Module) -> list[nn.Module]:
    """Every IC layer in ``model`` (``model`` itself included), in ``modules()`` order. A wrapper
    such as ``DistributedDataParallel`` is walked through like any module."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    return [m for m in model.modules() if is_ic_layer(m)]


def ic_keys(model: nn.Module) -> set[str]:
    """The state_dict keys that the IC layers of ``model`` add (``<name>.adjust_weight``, ...)."""
    keys = set()
    for name, module in model.named_modules():
        if is_ic_layer(module):
            prefix = f"{name}." if name else ""
            keys.update(prefix + k for k in IC_PARAM_NAMES)
    return keys


ALPHA_MODES = ("fixed", "learnable")
#: initialisations of W' (``adjust_init``): W's kaiming-uniform distribution; the same divided by
#: k*k (the box sum adds k*k pixels); zeros; a normal with std 0.01.
ADJUST_INITS = ("like_weight", "scaled", "zeros", "normal")


class LoadsPlainState:
    """Mixin of the IC layers: loading the state_dict of the plain layer they replace (its
    ``plain_key`` present, none of the IC parameters) sets alpha = 0, so the layer computes the plain
    one bit for bit (see :class:`IcConv2d`). The layer has ``set_alpha``."""

    plain_key = "weight"

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        plain = _is_plain_state(state_dict, prefix, self.plain_key)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if plain:
            _loaded_plain_state(self, prefix, missing_keys)


class IcConv2d(LoadsPlainState, nn.Conv2d):
    r"""IC convolution layer, a drop-in replacement for :class:`torch.nn.Conv2d`.

    .. math::
        u = \mathrm{conv}(X, W) + \alpha\,\mathrm{relu}(\mathrm{conv}(X, W)
            - \mathrm{conv}_{1\times1}(\mathrm{boxsum}_k(X), W') + b_1) + b_2

    Same constructor as ``nn.Conv2d`` (tuple arguments, ``padding='same'|'valid'``, every
    ``padding_mode``, ``device=``/``dtype=``) plus ``alpha`` and ``alpha_mode``:

    * ``alpha_mode='fixed'``: ``alpha`` is a buffer (set it by hand or with a schedule);
    * ``alpha_mode='learnable'``: ``alpha`` is a parameter.

    Parameters: ``weight`` (W, the name kept from ``nn.Conv2d`` so plain checkpoints load),
    ``bias`` (b2), ``adjust_weight`` (W', shape ``(out, in/groups, 1, 1)``), ``adjust_bias`` (b1),
    ``alpha``. W' is initialised by ``adjust_init`` (default ``'like_weight'``: W's kaiming-uniform
    bound, fan-in of the full kernel; see :data:`ADJUST_INITS`) and b1 with ``adjust_bias_init``
    (default 0). docs/fidelity.md measures these choices from scratch. The constructor checks its
    arguments (a ``ValueError`` / ``TypeError`` naming the argument).

    Loading a plain ``nn.Conv2d``'s state_dict (``weight`` present, none of ``adjust_weight``,
    ``adjust_bias``, ``alpha``) sets alpha = 0, so the layer computes that convolution bit for bit:
    ``ic_model.load_state_dict(plain_model.state_dict(), strict=False)`` gives the plain model, with
    one :class:`PlainStateDictWarning` per call and the IC keys listed as missing; ``strict=True``
    still raises for the missing keys. :func:`ic_networks.io.load_weights` does the same and logs instead.

    The computation runs in the Rust core (``torch.ops.ic_networks.ic_conv2d``, an op of the
    native library), which ``torch.compile(fullgraph=True)``, ``torch.export``, autocast and
    ``torch.jit.script`` handle like a built-in op (a scripted model calls the op, so it needs
    ``ic_networks`` loaded to run). Only while an ONNX export or ``torch.jit.trace`` is running
    does it use the plain-PyTorch formula (``ic_networks.reference``), which those formats can
    hold; it gives the same outputs up to float rounding.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        padding: str | IntPair = 0,
        dilation: IntPair = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        alpha: float = 1.0,
        alpha_mode: str = "fixed",
        device=None,
        dtype=None,
        *,
        adjust_init: str = "like_weight",
        adjust_bias_init: float = 0.0,
    ) -> None:
        if alpha_mode not in ALPHA_MODES:
            raise ValueError(f"alpha_mode: expected one of {ALPHA_MODES}, got {alpha_mode!r}")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
            raise TypeError(f"alpha: expected a float, got {type(alpha).__name__}")
        _check_adjust_init(adjust_init, adjust_bias_init)
        _check_conv_args(in_channels, out_channels, kernel_size, stride, padding, dilation, groups)
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            padding_mode,
            device=device,
            dtype=dtype,
        )
        self._resolve_padding()
        factory = {"device": device, "dtype": dtype}
        self.alpha_mode = alpha_mode
        self.adjust_init, self.adjust_bias_init = adjust_init, float(adjust_bias_init)
        self.adjust_weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, 1, 1, **factory))
        self.adjust_bias = nn.Parameter(torch.empty(out_channels, **factory))
        a = torch.tensor(float(alpha), **factory)
        if alpha_mode == "learnable":
            self.alpha = nn.Parameter(a)
        else:
            self.register_buffer("alpha", a)
        self.reset_adjust_parameters()

    def reset_adjust_parameters(self) -> None:
        """W' by ``self.adjust_init`` and b1 = ``self.adjust_bias_init``. ``'like_weight'`` draws W'
        from W's distribution (kaiming uniform, a=sqrt(5), fan-in of W), ``'scaled'`` the same
        divided by kh*kw, ``'zeros'`` zeros, ``'normal'`` N(0, 0.01^2)."""
        kk = self.kernel_size[0] * self.kernel_size[1]
        fan_in = self.in_channels // self.groups * kk
        bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        init = self.adjust_init
        with torch.no_grad():
            if init == "zeros":
                self.adjust_weight.zero_()
            elif init == "normal":
                self.adjust_weight.normal_(0.0, 0.01)
            else:
                self.adjust_weight.uniform_(-bound, bound)
                if init == "scaled":
                    self.adjust_weight.div_(kk)
            self.adjust_bias.fill_(self.adjust_bias_init)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if hasattr(self, "adjust_weight"):
            self.reset_adjust_parameters()

    @classmethod
    def from_conv(
        cls,
        conv: nn.Conv2d,
        alpha: float = 0.0,
        alpha_mode: str = "learnable",
        *,
        adjust_init: str = "like_weight",
        adjust_bias_init: float = 0.0,
    ) -> IcConv2d:
        """An ``IcConv2d`` with ``conv``'s configuration and a copy of its weights (W' and b1 are
        initialised by ``adjust_init`` / ``adjust_bias_init``).

        With ``alpha == 0`` its output is bit-identical to ``conv``'s (eq. 7 of the paper).
        """
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv: expected an nn.Conv2d, got {type(conv).__name__}")
        w = conv.weight
        ic = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            conv.bias is not None,
            conv.padding_mode,
            alpha=alpha,
            alpha_mode=alpha_mode,
            device=w.device,
            dtype=w.dtype,
            adjust_init=adjust_init,
            adjust_bias_init=adjust_bias_init,
        )
        with torch.no_grad():
            ic.weight.copy_(w)
            ic.weight.requires_grad_(w.requires_grad)
            if conv.bias is not None:
                ic.bias.copy_(conv.bias)
                ic.bias.requires_grad_(conv.bias.requires_grad)
        ic.train(conv.training)
        return ic

    def set_alpha(self, value: float) -> None:
        """Sets alpha in place (keeps it a parameter or a buffer)."""
        with torch.no_grad():
            self.alpha.fill_(float(value))

    def _resolve_padding(self) -> None:
        """The op's symmetric padding, and the extra right/bottom zero padding of an uneven 'same'
        (as nn.Conv2d pads it); non-zero padding modes pad the input in full instead."""
        if self.padding_mode != "zeros":
            self._ic_padding, self._ic_extra = [0, 0], [0, 0, 0, 0]
        else:
            self._ic_padding, self._ic_extra = resolve_padding(
                self.padding, self.kernel_size, self.dilation, self.stride
            )
        self._ic_uneven = any(e != 0 for e in self._ic_extra)

    def forward(self, x: Tensor) -> Tensor:
        x = self.op_input(x)
        if torch.jit.is_scripting():
            return torch.ops.ic_networks.ic_conv2d(
                x, self.weight, self.adjust_weight, self.adjust_bias, self.alpha, self.bias,
                self.stride, self._ic_padding, self.dilation, self.groups,
            )  # fmt: skip
        return self._eager_forward(x)

    @torch.jit.unused
    def _eager_forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
        return _ops.ic_conv2d(
            x, self.weight, self.adjust_weight, self.adjust_bias, self.alpha, self.bias,
            self.stride, self._ic_padding, self.dilation, self.groups,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, alpha={float(self.alpha.detach()):g}, alpha_mode={self.alpha_mode}"

    def op_input(self, x: Tensor) -> Tensor:
        """``x`` padded as :meth:`forward` pads it before the op (non-zero ``padding_mode``, uneven
        ``'same'``); the op then applies ``self._ic_padding``."""
        if self.padding_mode != "zeros":
            return F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
        return F.pad(x, self._ic_extra) if self._ic_uneven else x


def _check_conv_args(in_channels, out_channels, kernel_size, stride, padding, dilation, groups) -> None:
    """The constructor's checks of nn.Conv2d's arguments, with the messages the op gives in forward."""
    positive_int("in_channels", in_channels)
    positive_int("out_channels", out_channels)
    int_pair("kernel_size", kernel_size, 1)
    int_pair("stride", stride, 1)
    int_pair("dilation", dilation, 1)
    if not isinstance(padding, str):
        int_pair("padding", padding, 0)
    positive_int("groups", groups)
    for name, channels in (("in_channels", in_channels), ("out_channels", out_channels)):
        if channels % groups:
            raise ValueError(f"groups: {name} ({channels}) must be divisible by groups ({groups})")


class PlainStateDictWarning(UserWarning):
    """An IC layer loaded a plain layer's state_dict (no IC parameters) and was set to alpha = 0."""


#: False inside :func:`quiet_plain_loads` (loaders that report plain layers themselves).
_WARN_PLAIN = contextvars.ContextVar("ic_networks_warn_plain", default=True)
#: The ``missing_keys`` list of the last load_state_dict call that warned: one warning per call.
_last_warned: list[list[str]] = [[]]


@contextlib.contextmanager
def quiet_plain_loads() -> Iterator[None]:
    """No :class:`PlainStateDictWarning` inside (for a loader that reports plain layers itself)."""
    token = _WARN_PLAIN.set(False)
    try:
        yield
    finally:
        _WARN_PLAIN.reset(token)


def _is_plain_state(state_dict: Mapping, prefix: str, plain_key: str) -> bool:
    """True if ``state_dict`` holds the plain layer's ``plain_key`` at ``prefix`` and no IC parameter."""
    return prefix + plain_key in state_dict and not any(prefix + k in state_dict for k in IC_PARAM_NAMES)


def _loaded_plain_state(layer: nn.Module, prefix: str, missing_keys: list[str]) -> None:
    """What an IC layer's ``_load_from_state_dict`` does after loading a plain layer's state: alpha = 0
    (so it computes the plain layer), and a warning, once per ``load_state_dict`` call (torch passes
    every layer of one call the same ``missing_keys`` list)."""
    layer.set_alpha(0.0)
    if not _WARN_PLAIN.get() or missing_keys is _last_warned[0]:
        return
    _last_warned[0] = missing_keys
    warnings.warn(
        f"{type(layer).__name__} {prefix[:-1] or '(the model itself)'} and any other IC layer of this "
        f"load_state_dict call whose state_dict has no {'/'.join(IC_PARAM_NAMES)} (a plain layer's) got "
        f"alpha = 0, so they compute the plain layer; their IC keys are in the result's missing_keys",
        PlainStateDictWarning,
        stacklevel=3,
    )


def _check_adjust_init(adjust_init, adjust_bias_init) -> None:
    if adjust_init not in ADJUST_INITS:
        raise ValueError(f"adjust_init: expected one of {ADJUST_INITS}, got {adjust_init!r}")
    if (
        isinstance(adjust_bias_init, bool)
        or not isinstance(adjust_bias_init, (int, float))
        or not math.isfinite(adjust_bias_init)
    ):
        raise TypeError(f"adjust_bias_init: expected a finite float, got {adjust_bias_init!r}")


class WLDLoss(nn.Module):
    """Weak logit distillation loss as a module: ``forward(student_logits, teacher_logits, target, lam)``.

    See :func:`ic_networks.functional.wld_loss` for the formula. ``e`` is the hinge tolerance and
    ``tau`` the temperature (default 4.0).
    """

    def __init__(self, e: float = 0.005, tau: float = 4.0) -> None:
        super().__init__()
        if not (isinstance(e, (int, float)) and e >= 0):
            raise ValueError(f"e: expected a float >= 0, got {e!r}")
        if not (isinstance(tau, (int, float)) and tau > 0):
            raise ValueError(f"tau: expected a float > 0, got {tau!r}")
        self.e = float(e)
        self.tau = float(tau)

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, target: Tensor, lam: float) -> Tensor:
        return icf.wld_loss(student_logits, teacher_logits, target, lam, self.e, self.tau)

    def extra_repr(self) -> str:
        return f"e={self.e:g}, tau={self.tau:g}"
