"""Optional dependencies: imported only by the features that need them, with an error that names
the pip extra to install.

=================  ======================  ===============================================
extra              packages                needed by
=================  ======================  ===============================================
``[viz]``          captum                  :func:`ic_networks.viz.gradcam`, ``ic-networks gradcam``
``[detection]``    torchmetrics,           :func:`ic_networks.detection.voc_map`, ``ic-networks
                   pycocotools             train-det`` (its final evaluation) and ``eval-det``
``[timm]``         timm                    :mod:`ic_networks.integrations.timm`
=================  ======================  ===============================================
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["EXTRAS", "require"]

#: top-level package -> (pip distribution, ic-networks extra)
EXTRAS = {
    "captum": ("captum", "viz"),
    "torchmetrics": ("torchmetrics", "detection"),
    "pycocotools": ("pycocotools", "detection"),
    "timm": ("timm", "timm"),
}


def require(module: str, feature: str) -> ModuleType:
    """Imports ``module`` (e.g. ``"captum.attr"``) for ``feature``; if its package is missing,
    raises an ``ImportError`` that says which extra provides it."""
    top = module.split(".")[0]
    dist, extra = EXTRAS[top]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{feature} needs the optional dependency {dist!r}, which is not installed: "
            f'pip install "ic-networks[{extra}]" (or pip install {dist}); import failed with: {exc}'
        ) from exc
