"""Visualisations: the paper's Figure 2 (:mod:`.figures`) and Grad-CAM (:func:`gradcam`, Figure 3).

``ic_networks.viz.gradcam`` is the function; the module is ``ic_networks.viz.gradcam`` in
``sys.modules`` (``from ic_networks.viz.gradcam import last_conv`` works).
"""
from .gradcam import gradcam, last_conv, resolve_layer  # noqa: F401

__all__ = ["gradcam", "last_conv", "resolve_layer"]
