"""mmdetection integration: importing this module registers

* ``ICResNet`` in mmdet's ``MODELS``: mmdet's ``ResNet`` (same arguments) whose 3x3 convs inside the
  residual blocks are :class:`~ic_networks.IcConv2d` (as in the zoo's IC-ResNets: the stem, 1x1 and
  downsample convs stay plain; DCN convs stay DCN). Extra arguments: ``ic_alpha`` and ``ic_alpha_mode`` (``'learnable'``
  or ``'fixed'``); ``None`` means a learnable alpha = 0 when ``init_cfg``/``pretrained`` loads a
  checkpoint (eq. 7) and a fixed alpha = 1 otherwise (eq. 6), as in :mod:`ic_networks.models`. Its
  parameter names are ResNet's, so a plain ResNet checkpoint (``torchvision://resnet50`` or a local
  file) loads with ``init_cfg=dict(type='Pretrained', checkpoint=...)``: like mmcv's DCN layers, the
  IC parameters (``adjust_weight``, ``adjust_bias``, ``alpha``) are extra keys reported as missing
  and keep their initialisation; an IC-ResNet checkpoint (``ic_networks.models.ic_resnet50``) loads
  all of them;
* ``IcConv2d`` as a conv layer type in mmengine's root ``MODELS`` (where mmcv registers ``Conv2d``),
  so ``conv_cfg=dict(type='IcConv2d', alpha=..., alpha_mode=...)`` works wherever mmcv's
  ``build_conv_layer``/``ConvModule`` is used (FPN, heads, ``ResNet(conv_cfg=...)`` for every conv).

It also makes mmengine read local checkpoints with ``torch.load(weights_only=True)`` (torch's
default since 2.6, which mmengine 0.10.7's own loader trips on when it resumes: its checkpoints hold
``HistoryBuffer`` objects and numpy arrays) by registering :func:`load_from_local` as mmengine's loader
for local paths. It allows exactly what mmengine's checkpoints hold besides tensors (mmengine's
``HistoryBuffer``, numpy arrays, dtypes and scalars, and the ``HistoryBuffer`` statistics methods
by name) for that load only; ``torch.load`` elsewhere is untouched and nothing needs
``weights_only=False``. A training checkpoint of ``ic-networks train`` (``OUT/checkpoint.pt``, the
weights under ``"model"``) is read as its ``state_dict``, so ``init_cfg=dict(type="Pretrained",
checkpoint=...)`` takes it as well as ``OUT/model.pt``.

Use it from a config with
``custom_imports = dict(imports=["ic_networks.integrations.mmdet"], allow_failed_imports=False)``.
"""

from __future__ import annotations

import functools
import os
import pickle
from typing import Any

import numpy as np
import torch

try:
    import mmcv  # noqa: F401
    import mmdet  # noqa: F401
    from mmdet.models.backbones import ResNet
    from mmdet.registry import MODELS
    from mmengine.logging import HistoryBuffer
    from mmengine.registry import MODELS as ROOT_MODELS
    from mmengine.runner.checkpoint import CheckpointLoader
except ImportError as exc:
    raise ImportError(
        "ic_networks.integrations.mmdet needs mmdetection (mmengine==0.10.7, mmcv==2.1.0 compiled with its ops, "
        "mmdet==3.3.0, setuptools<82). Install them with `bash scripts/setup_mmdet.sh` from the ic-networks "
        f"checkout (see docs/detection.md); import failed with: {exc}"
    ) from exc

from ..conversion import convert
from ..io import unwrap_state_dict
from ..nn import ALPHA_MODES, IcConv2d

__all__ = ["ICResNet", "IcConv2d", "load_from_local"]


def _loads_checkpoint(init_cfg) -> bool:
    cfgs = init_cfg if isinstance(init_cfg, (list, tuple)) else [init_cfg]
    return any(isinstance(c, dict) and c.get("type") == "Pretrained" for c in cfgs)


class ICResNet(ResNet):
    """mmdet's ``ResNet`` with IC 3x3 block convs; see the module docstring for the conventions."""

    def __init__(self, *args, ic_alpha: float | None = None, ic_alpha_mode: str | None = None, **kwargs) -> None:
        if ic_alpha_mode is not None and ic_alpha_mode not in ALPHA_MODES:
            raise ValueError(f"ic_alpha_mode: expected one of {ALPHA_MODES}, got {ic_alpha_mode!r}")
        if ic_alpha is not None and (isinstance(ic_alpha, bool) or not isinstance(ic_alpha, (int, float))):
            raise TypeError(f"ic_alpha: expected a float or None, got {type(ic_alpha).__name__}")
        super().__init__(*args, **kwargs)
        pretrained = _loads_checkpoint(self.init_cfg)
        if ic_alpha is None:
            ic_alpha = 0.0 if pretrained else 1.0
        if ic_alpha_mode is None:
            ic_alpha_mode = "learnable" if pretrained else "fixed"
        stages = set(self.res_layers)
        convert(
            self,
            kernel_sizes=(3,),
            include=lambda name, m: name.split(".")[0] in stages,
            alpha=float(ic_alpha),
            alpha_mode=ic_alpha_mode,
            inplace=True,
        )
        self._freeze_stages()  # again: the new IC parameters of frozen stages must be frozen too


def _history_buffer_getattr(obj: Any, name: Any) -> Any:
    """What ``builtins.getattr`` may do while unpickling: look up a ``HistoryBuffer`` statistics method
    (pickle writes ``HistoryBuffer.min`` as ``getattr(HistoryBuffer, "min")``), nothing else."""
    if (
        obj is HistoryBuffer
        and isinstance(name, str)
        and (name in HistoryBuffer._statistics_methods or name in ("min", "max", "mean", "current"))
    ):
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(f"refusing getattr({obj!r}, {name!r}): only HistoryBuffer statistics methods")


@functools.cache
def _safe_globals() -> list[Any]:
    """The globals of an mmengine checkpoint besides tensors, under the names pickle writes."""
    multiarray = (np._core if hasattr(np, "_core") else np.core).multiarray
    allowed: list[Any] = [HistoryBuffer, np.ndarray, np.dtype, (_history_buffer_getattr, "builtins.getattr")]
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):  # numpy 2 and numpy 1 pickles
        allowed += [(multiarray._reconstruct, f"{module}._reconstruct"), (multiarray.scalar, f"{module}.scalar")]
    kinds = (
        bool,
        np.int8,
        np.int16,
        np.int32,
        np.int64,
        np.uint8,
        np.uint16,
        np.uint32,
        np.uint64,
        np.float16,
        np.float32,
        np.float64,
        np.complex64,
        np.complex128,
    )
    dtype_classes = {type(np.dtype(k)) for k in kinds} - {np.dtype}  # numpy.dtypes.Float64DType, ...
    return allowed + sorted(dtype_classes, key=lambda c: c.__name__)


def _reason(exc: BaseException) -> str:
    """torch's reason for a weights_only refusal, without its boilerplate (and its advice to load with
    ``weights_only=False``)."""
    boiler = ("Weights only load failed", "(1)", "(2)", "Check the documentation", "Please file an issue")
    keep = []
    for line in str(exc).splitlines():
        line = line.split("WeightsUnpickler error:", 1)[-1].strip()
        if line and not line.startswith(boiler):
            keep.append(line)
    return " ".join(keep) or str(exc).strip()


def load_from_local(filename: str, map_location: Any = None) -> Any:
    """mmengine's loader for local checkpoint paths, with ``torch.load(weights_only=True)`` and the
    allowlist described in the module docstring; ``ic-networks train``'s ``checkpoint.pt`` (its
    ``"format"`` is ``"ic_networks.training/..."``) gives ``{"state_dict": its "model"}``."""
    filename = os.path.expanduser(filename)
    if not os.path.isfile(filename):
        raise FileNotFoundError(f"{filename} can not be found.")
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            checkpoint = torch.load(filename, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise pickle.UnpicklingError(
            f"{filename}: torch.load(weights_only=True) refused it: {_reason(exc)} (ic_networks' mmengine loader "
            f"allows mmengine's HistoryBuffer and numpy arrays besides tensors; a file you trust that holds other "
            f"classes loads once they are allowed with torch.serialization.add_safe_globals)"
        ) from exc
    if isinstance(checkpoint, dict) and str(checkpoint.get("format", "")).startswith("ic_networks.training/"):
        return {"state_dict": unwrap_state_dict(checkpoint, "checkpoint", filename)}  # ic-networks train's
    return checkpoint


MODELS.register_module(name="ICResNet", module=ICResNet, force=True)
ROOT_MODELS.register_module(name="IcConv2d", module=IcConv2d, force=True)
CheckpointLoader.register_scheme(prefixes="", loader=load_from_local, force=True)
