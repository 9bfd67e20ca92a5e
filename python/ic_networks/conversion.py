"""``convert``: turn the plain convolutions of a model into IC convolutions (the paper's eq. 7).

The function is ``ic_networks.convert`` (also ``ic_networks.conversion.convert``); this module is
``ic_networks.conversion``.

Like :meth:`torch.nn.SyncBatchNorm.convert_sync_batchnorm`, it walks the module tree and replaces
every matching ``nn.Conv2d`` with :meth:`IcConv2d.from_conv`. With ``alpha == 0`` (the default)
the converted model computes exactly what the original did, bit for bit, in eval and in train
mode (BatchNorm running statistics included), and its ``state_dict`` keeps every original key;
each converted conv adds ``adjust_weight``, ``adjust_bias`` and ``alpha``.
"""

import copy
import numbers
import warnings
from collections.abc import Callable, Iterable

from torch import nn

from ._utils import pair
from .nn import ALPHA_MODES, IcConv2d, _check_adjust_init, is_ic_layer

__all__ = ["convert"]

Include = Callable[[str, nn.Module], bool]


def _kernel_size_set(kernel_sizes: Iterable) -> set[tuple[int, int]]:
    """``(3, (1, 3))`` -> ``{(3, 3), (1, 3)}``: an int ``k`` means ``k x k``, a pair is ``(kh, kw)``."""
    if isinstance(kernel_sizes, (numbers.Integral, str)) or not isinstance(kernel_sizes, Iterable):
        raise TypeError(f"kernel_sizes: expected an iterable of ints or (kh, kw) pairs, got {kernel_sizes!r}")
    sizes = {tuple(pair("kernel_sizes", k)) for k in kernel_sizes}
    if not sizes:
        raise ValueError("kernel_sizes: expected at least one kernel size, got an empty collection")
    if any(v < 1 for s in sizes for v in s):
        raise ValueError(f"kernel_sizes: kernel sizes must be >= 1, got {sorted(sizes)}")
    return sizes


def convert(
    model: nn.Module,
    kernel_sizes: Iterable = (3,),
    include: Include | None = None,
    alpha: float = 0.0,
    alpha_mode: str = "learnable",
    inplace: bool = False,
    *,
    adjust_init: str = "like_weight",
    adjust_bias_init: float = 0.0,
) -> nn.Module:
    """Replaces the matching ``nn.Conv2d`` modules of ``model`` with :class:`IcConv2d`.

    A conv matches when it is exactly an ``nn.Conv2d``, its ``kernel_size`` is in ``kernel_sizes`` and
    ``include(qualified_name, conv)`` is true (``qualified_name`` as in ``model.named_modules()``, ``""``
    for ``model`` itself). An ``IcConv2d`` is never converted twice, nor a conv inside another IC layer
    such as ``models.IcDepthwiseSeparable``. Subclasses of ``nn.Conv2d`` (timm's ``Conv2dSame``,
    mmcv's ``Conv2d`` wrapper, ...) are left as they are, with a ``UserWarning`` naming them: they may
    override ``forward`` (``Conv2dSame`` pads dynamically), which the replacement would drop. Modules
    that are not ``nn.Conv2d`` at all (timm's ``CondConv2d``, deformable convs) are not convs to
    ``convert``. A ``UserWarning`` also says so when nothing was converted.

    Args:
        model: the model; if it is itself a matching conv, the new ``IcConv2d`` is returned.
        kernel_sizes: ints (``k`` means ``k x k``) or ``(kh, kw)`` pairs.
        include: optional predicate on ``(qualified_name, module)``.
        alpha, alpha_mode: passed to :meth:`IcConv2d.from_conv`. ``alpha=0`` keeps the model's
            function (eq. 7: fine-tuning a pre-trained model); ``alpha=1, alpha_mode='fixed'`` is
            the from-scratch layer (eq. 6).
        inplace: modify ``model`` itself; by default a deep copy is converted and ``model`` is left
            untouched.
        adjust_init, adjust_bias_init: initialisation of W' and b1 (see :class:`IcConv2d`).

    Each new layer keeps the conv's device, dtype, ``requires_grad`` flags and train/eval mode; its
    W' is drawn by ``adjust_init`` (default: kaiming uniform like W) and b1 is ``adjust_bias_init``
    (default 0). A conv module shared by several parents
    stays shared (one ``IcConv2d``). Forward hooks of a replaced conv are not carried over.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    sizes = _kernel_size_set(kernel_sizes)
    if include is not None and not callable(include):
        raise TypeError(f"include: expected a callable (name, module) -> bool or None, got {type(include).__name__}")
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TypeError(f"alpha: expected a float, got {type(alpha).__name__}")
    if alpha_mode not in ALPHA_MODES:
        raise ValueError(f"alpha_mode: expected one of {ALPHA_MODES}, got {alpha_mode!r}")
    _check_adjust_init(adjust_init, adjust_bias_init)
    if not isinstance(inplace, bool):
        raise TypeError(f"inplace: expected a bool, got {type(inplace).__name__}")
    if not inplace:
        model = copy.deepcopy(model)

    replaced = {}  # id(old conv) -> new IcConv2d, so shared convs stay shared
    skipped = {}  # qualified name -> class name of a matching nn.Conv2d subclass left as it is

    def matches(name: str, module: nn.Module) -> bool:
        return (
            isinstance(module, nn.Conv2d)
            and tuple(module.kernel_size) in sizes
            and (include is None or bool(include(name, module)))
        )

    def visit(module: nn.Module, prefix: str) -> nn.Module:
        if id(module) in replaced:
            return replaced[id(module)]
        if is_ic_layer(module):
            return module  # already an IC layer (e.g. the MobileNet dw + pw pair): its convs stay
        if matches(prefix, module):
            if type(module) is not nn.Conv2d:
                skipped[prefix] = type(module).__name__
                return module
            new = IcConv2d.from_conv(
                module,
                alpha=float(alpha),
                alpha_mode=alpha_mode,
                adjust_init=adjust_init,
                adjust_bias_init=adjust_bias_init,
            )
            replaced[id(module)] = new
            return new
        for name, child in list(module._modules.items()):  # every name, also of a shared child
            if child is None:
                continue
            new = visit(child, f"{prefix}.{name}" if prefix else name)
            if new is not child:
                setattr(module, name, new)
        return module

    model = visit(model, "")
    if skipped:
        kinds = ", ".join(sorted(set(skipped.values())))
        names = ", ".join(repr(n) for n in list(skipped)[:5]) + (", ..." if len(skipped) > 5 else "")
        warnings.warn(
            f"convert: left {len(skipped)} conv(s) unconverted: {kinds} is a subclass of nn.Conv2d and may override "
            f"forward, which an IcConv2d would drop ({names})",
            UserWarning,
            stacklevel=2,
        )
    if not replaced:
        wanted = ", ".join("x".join(map(str, s)) for s in sorted(sizes))
        warnings.warn(
            f"convert: nothing was converted: {type(model).__name__} has no nn.Conv2d with a kernel size in "
            f"kernel_sizes ({wanted})"
            + (" accepted by include" if include is not None else "")
            + " outside IC layers; the result is "
            + ("the model unchanged" if inplace else "an unchanged copy"),
            UserWarning,
            stacklevel=2,
        )
    return model
