"""Grad-CAM (Selvaraju et al. 2017) for plain and IC models, on Captum's ``LayerGradCam``.

The class-``c`` map of a layer with activations ``A`` (C, h, w) is
``relu(sum_k mean_ij(d logit_c / d A_kij) * A_k)``, upsampled bilinearly to the image size and
divided by its maximum, so it lies in [0, 1] (all zeros when nothing in the layer speaks for the class).

Captum (pure Python, needs only torch/numpy/matplotlib) was chosen over ``grad-cam``
(pytorch-grad-cam), which pulls in OpenCV, scikit-learn and SciPy. It is an optional dependency,
the ``[viz]`` extra: ``pip install "ic-networks[viz]"``; without it :func:`gradcam` raises an
``ImportError`` that says so.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch
from torch import Tensor, nn

from .._optional import require

__all__ = ["gradcam", "resolve_layer", "last_conv", "require_captum"]


def require_captum():
    """``captum.attr``, or an ``ImportError`` naming the ``[viz]`` extra."""
    return require("captum.attr", "Grad-CAM")


def resolve_layer(model: nn.Module, layer: str | nn.Module) -> nn.Module:
    """``layer`` as a module of ``model``: a module, or its qualified name as in ``named_modules()``."""
    if isinstance(layer, str):
        try:
            return model.get_submodule(layer)
        except AttributeError:
            raise ValueError(f"layer: {type(model).__name__} has no submodule named {layer!r}") from None
    if isinstance(layer, nn.Module):
        if not any(m is layer for m in model.modules()):
            raise ValueError(f"layer: the given {type(layer).__name__} is not a submodule of the model")
        return layer
    raise TypeError(f"layer: expected a submodule or its name, got {type(layer).__name__}")


def last_conv(model: nn.Module) -> str:
    """The qualified name of the usual Grad-CAM layer: the last ``nn.Conv2d`` (``IcConv2d`` included)
    with a kernel larger than 1x1, in ``model.named_modules()`` order, so that a ResNet's 1x1
    downsample/projection convs are skipped (``layer4.1.conv2`` for resnet18). Falls back to the
    last conv of any size."""
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"model: {type(model).__name__} has no Conv2d layer; pass layer= explicitly")
    spatial = [n for n, m in convs if tuple(m.kernel_size) != (1, 1)]
    return spatial[-1] if spatial else convs[-1][0]


def gradcam(model: nn.Module, image: Tensor, layer: str | nn.Module, target: int | None = None) -> np.ndarray:
    """The Grad-CAM heatmap of ``model`` for one image: a float32 numpy array (H, W) in [0, 1].

    Args:
        model: a classifier returning logits (1, num_classes). It is run in eval mode (BatchNorm
            with running statistics); its train/eval mode is restored afterwards.
        image: a float tensor (C, H, W) or (1, C, H, W), already normalised as the model expects;
            it is moved to the model's device and dtype.
        layer: the layer whose output (N, C, h, w) is explained, a submodule or its qualified name
            (e.g. ``'layer4'`` for a ResNet; :func:`last_conv` gives the last conv).
        target: the class index to explain; ``None`` takes the model's top prediction.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if not isinstance(image, Tensor):
        raise TypeError(f"image: expected a torch.Tensor, got {type(image).__name__}")
    if not image.is_floating_point():
        raise TypeError(f"image: expected a floating-point tensor, got {image.dtype}")
    if image.dim() == 3:
        image = image.unsqueeze(0)
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(f"image: expected shape (C, H, W) or (1, C, H, W), got {tuple(image.shape)}")
    if target is not None and (isinstance(target, bool) or not isinstance(target, numbers.Integral)):
        raise TypeError(f"target: expected an int class index or None, got {type(target).__name__}")
    module = resolve_layer(model, layer)
    attr_mod = require_captum()
    LayerAttribution, LayerGradCam = attr_mod.LayerAttribution, attr_mod.LayerGradCam

    p = next(model.parameters(), None)
    x = image.detach().to(device=p.device, dtype=p.dtype) if p is not None else image.detach()
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            with torch.no_grad():
                logits = model(x)
            if logits.dim() != 2 or logits.shape[0] != 1:
                raise ValueError(f"model: expected logits of shape (1, num_classes), got {tuple(logits.shape)}")
            n_classes = logits.shape[1]
            if target is None:
                target = int(logits.argmax(1))
            elif not 0 <= target < n_classes:
                raise ValueError(f"target: expected a class index in [0, {n_classes}), got {target}")
            attr = LayerGradCam(model, module).attribute(x, target=int(target), relu_attributions=True)
    finally:
        model.train(was_training)
    if attr.dim() != 4:
        raise ValueError(f"layer: Grad-CAM needs a layer with (N, C, h, w) output, got {attr.dim() - 1}-D maps")
    cam = LayerAttribution.interpolate(attr.detach().float(), tuple(x.shape[-2:]), "bilinear")[0, 0]
    cam = cam.clamp_min(0)
    peak = float(cam.max())
    cam = cam / peak if peak > 0 else torch.zeros_like(cam)
    return cam.cpu().numpy().astype(np.float32)
