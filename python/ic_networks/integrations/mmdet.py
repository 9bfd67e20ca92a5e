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

Use it from a config with
``custom_imports = dict(imports=["ic_networks.integrations.mmdet"], allow_failed_imports=False)``.
"""
from __future__ import annotations

from typing import Optional

try:
    import mmcv  # noqa: F401
    import mmdet  # noqa: F401
    from mmdet.models.backbones import ResNet
    from mmdet.registry import MODELS
    from mmengine.registry import MODELS as ROOT_MODELS
except ImportError as exc:
    raise ImportError(
        "ic_networks.integrations.mmdet needs mmdetection (mmengine==0.10.7, mmcv==2.1.0 compiled with its ops, "
        "mmdet==3.3.0, setuptools<82). Install them with `bash scripts/setup_mmdet.sh` from the ic-networks "
        f"checkout (see docs/detection.md); import failed with: {exc}"
    ) from exc

from ..conversion import convert
from ..nn import ALPHA_MODES, IcConv2d

__all__ = ["ICResNet", "IcConv2d"]


def _loads_checkpoint(init_cfg) -> bool:
    cfgs = init_cfg if isinstance(init_cfg, (list, tuple)) else [init_cfg]
    return any(isinstance(c, dict) and c.get("type") == "Pretrained" for c in cfgs)


class ICResNet(ResNet):
    """mmdet's ``ResNet`` with IC 3x3 block convs; see the module docstring for the conventions."""

    def __init__(self, *args, ic_alpha: Optional[float] = None, ic_alpha_mode: Optional[str] = None,
                 **kwargs) -> None:
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
        convert(self, kernel_sizes=(3,), include=lambda name, m: name.split(".")[0] in stages,
                alpha=float(ic_alpha), alpha_mode=ic_alpha_mode, inplace=True)
        self._freeze_stages()  # again: the new IC parameters of frozen stages must be frozen too


MODELS.register_module(name="ICResNet", module=ICResNet, force=True)
ROOT_MODELS.register_module(name="IcConv2d", module=IcConv2d, force=True)
