"""Visualisations: the paper's Figure 2 (:mod:`.figures`) and Grad-CAM (:func:`gradcam`, Figure 3).

``ic_networks.viz.gradcam`` is the function; its module is ``ic_networks.viz.attribution`` (a
module and a function never share a name in ic-networks). Grad-CAM needs the ``[viz]`` extra.
"""

from .attribution import gradcam, last_conv, require_captum, resolve_layer  # noqa: F401

__all__ = ["gradcam", "last_conv", "require_captum", "resolve_layer"]
