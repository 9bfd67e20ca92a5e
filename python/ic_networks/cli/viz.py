"""Verbs ``ic-networks figures`` (the paper's Figure 2) and ``ic-networks gradcam`` (Figure 3).

``gradcam`` builds a plain model and its IC version by name (``--model fmnist_cnn`` gives
``fmnist_cnn`` and ``ic_fmnist_cnn``; a name without an ``ic_`` builder is converted with
``ic_networks.convert(alpha=1)``), loads their weights (a state_dict or a training
checkpoint), and draws the input and both Grad-CAM maps side by side. ``--image`` is an image file
or ``fmnist:N``, the N-th Fashion-MNIST test image (default fmnist:0; images 0-9 are shipped with
the package, the others are read from the dataset). A Fashion-MNIST model given no weights is
first trained for ``--train-steps`` steps (a few seconds) on the local Fashion-MNIST training set;
without that set, or with ``--train-steps 0``, or for other models, its weights are random and the
maps mean nothing: the command says so and still renders. Grad-CAM needs Captum, the ``[viz]``
extra (``pip install "ic-networks[viz]"``).
"""

from __future__ import annotations

import os
import sys

import numpy as np
import torch
from torch import nn

from .common import add_out_argument, add_verb, nonnegative_int, positive_int

# Per-dataset (mean, std, image side, input channels). Same statistics as the training data.
DATASETS = {
    "fmnist": ((0.2860,), (0.3530,), 28, 1),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 32, 3),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 224, 3),
}
GRADCAM_SIZE = (1200, 460)
RANDOM_WARNING = "random weights (no --plain-weights/--ic-weights): these Grad-CAM maps are meaningless"
FIGURES_OUT = os.path.join("runs", "figures")
GRADCAM_OUT = os.path.join("runs", "gradcam", "gradcam.png")
TRAIN_STEPS, TRAIN_BATCH = 100, 32


def register(sub) -> None:
    p = add_verb(
        sub,
        "figures",
        help="write the PNGs of the paper's Figure 2 (neuron regions, XOR)",
        description="Writes fig2a_regions.png and fig2b_xor.png into --out.",
    )
    add_out_argument(p, f"output folder, created if missing (default {FIGURES_OUT})", default=FIGURES_OUT)
    p.add_argument(
        "--resolution", type=positive_int, default=400, help="grid points per axis for the regions (default 400)"
    )
    p.set_defaults(func=_figures)

    p = add_verb(
        sub,
        "gradcam",
        help="Grad-CAM maps of a plain and an IC model side by side (Figure 3)",
        description=__doc__.split("\n\n")[1],
    )
    p.add_argument(
        "--image",
        default="fmnist:0",
        help="an image file, or fmnist:N, the N-th Fashion-MNIST test image (default fmnist:0; "
        "0-9 are shipped with the package)",
    )
    p.add_argument(
        "--model", default="fmnist_cnn", help="plain model name (default fmnist_cnn); its IC version is ic_NAME"
    )
    p.add_argument("--plain-weights", metavar="P", help="weights of the plain model (state_dict or checkpoint)")
    p.add_argument("--ic-weights", metavar="Q", help="weights of the IC model (state_dict or checkpoint)")
    add_out_argument(p, f"output PNG (default {GRADCAM_OUT})", default=GRADCAM_OUT, metavar="PNG")
    p.add_argument(
        "--train-steps",
        type=nonnegative_int,
        default=TRAIN_STEPS,
        metavar="N",
        help="a Fashion-MNIST model given no weights is trained for N SGD steps of batch "
        f"{TRAIN_BATCH} on the local training set first (default {TRAIN_STEPS}; 0: random weights)",
    )
    p.add_argument("--data", help="Fashion-MNIST IDX folder (default /usr/share/datasets/fashion-mnist)")
    p.add_argument(
        "--layer",
        help="layer to explain, a qualified module name (default: the last conv larger than 1x1; a post-ReLU "
        "layer such as features.10 of fmnist_cnn or layer4 of a ResNet is often clearer)",
    )
    p.add_argument("--target", type=int, help="class to explain (default: each model's prediction)")
    p.add_argument(
        "--dataset",
        choices=sorted(DATASETS),
        help="input statistics and size (default: fmnist for fmnist models, else imagenet)",
    )
    p.add_argument("--num-classes", type=positive_int, default=10, help="classes of the models (default 10)")
    p.set_defaults(func=_gradcam)


def _figures(args) -> int:
    from ..viz.figures import write_figures

    for path in write_figures(args.out, resolution=args.resolution).values():
        print(f"wrote {path}")
    return 0


def build_pair(name: str, num_classes: int, in_channels: int) -> tuple[nn.Module, nn.Module]:
    """The plain model ``name`` and its IC version (``ic_<name>``, or ``convert(alpha=1, fixed)``)."""
    from ..training.model_factory import build_model

    base = name[3:] if name.startswith("ic_") else name
    plain = build_model(base, num_classes, in_channels)
    try:
        ic = build_model("ic_" + base, num_classes, in_channels)
    except ValueError:
        from ..conversion import convert

        ic = convert(plain, alpha=1.0, alpha_mode="fixed")
    return plain, ic


def fmnist_test_image(index: int, data=None) -> tuple[np.ndarray, int]:
    """``(image uint8 (28, 28), label)``: Fashion-MNIST test image ``index``, from the copy shipped
    with the package for 0-9 (unless ``data`` names a dataset folder), else from the dataset."""
    from ..viz.samples import bundled_fmnist_test_image

    if data is None and 0 <= index < 10:
        return bundled_fmnist_test_image(index)
    from ..training.data import load_fashion_mnist

    images, labels = load_fashion_mnist(data, train=False)
    if not 0 <= index < len(images):
        raise ValueError(f"image: index {index} is out of range [0, {len(images)})")
    return images[index, 0].numpy(), int(labels[index])


def load_image(spec: str, dataset: str, data=None) -> tuple[torch.Tensor, np.ndarray, str | None]:
    """``(normalised tensor (C, S, S), image in [0, 1] (S, S) or (S, S, 3) for display, label or None)``."""
    mean, std, side, channels = DATASETS[dataset]
    label = None
    if spec.startswith("fmnist:"):
        from ..training.data import FMNIST_CLASSES

        try:
            index = int(spec[7:])
        except ValueError:
            raise ValueError(f"image: expected fmnist:N with an integer N, got {spec!r}") from None
        image, target = fmnist_test_image(index, data)
        arr = image.astype(np.float32) / 255.0
        label = FMNIST_CLASSES[target]
        if arr.shape != (side, side):
            raise ValueError(f"image: Fashion-MNIST images are 28x28 but --dataset {dataset} needs {side}x{side}")
        if channels == 3:
            arr = np.repeat(arr[..., None], 3, axis=2)
    else:
        from PIL import Image

        try:
            img = Image.open(spec)
            img = img.convert("L" if channels == 1 else "RGB").resize((side, side), Image.BILINEAR)
        except (OSError, ValueError) as exc:
            raise FileNotFoundError(f"image: cannot read {spec!r}: {exc}") from None
        arr = np.asarray(img, dtype=np.float32) / 255.0
    chw = torch.from_numpy(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1).copy())
    x = (chw - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1)
    return x, arr, label


def _quick_train(models, steps: int, data) -> list:
    """Trains each ``(kind, model)`` for ``steps`` SGD steps on the local Fashion-MNIST training set;
    returns the pairs left untrained (all of them, with a note, when the set is missing)."""
    from ..training.data import load_fashion_mnist

    try:
        images, labels = load_fashion_mnist(data, train=True)
    except FileNotFoundError as exc:
        print(f"note: cannot train the models without weights: {exc}", file=sys.stderr)
        return models
    mean, std = DATASETS["fmnist"][0][0], DATASETS["fmnist"][1][0]
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(images), generator=gen)[: steps * TRAIN_BATCH]
    order = order.repeat(-(-steps * TRAIN_BATCH // len(order)))[: steps * TRAIN_BATCH]  # a tiny set: reused
    for kind, model in models:
        print(
            f"training the {kind} model for {steps} steps of batch {TRAIN_BATCH} on Fashion-MNIST "
            "(pass --plain-weights/--ic-weights to use trained weights)",
            file=sys.stderr,
            flush=True,
        )
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        model.train()
        for idx in order.view(steps, TRAIN_BATCH):
            x = (images[idx].float() / 255.0 - mean) / std
            loss = nn.functional.cross_entropy(model(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
    return []


def _gradcam(args) -> int:
    from ..io import load_weights
    from ..viz.attribution import gradcam, last_conv, require_captum, resolve_layer
    from ..viz.figures import DPI

    require_captum()  # before any model is built

    dataset = args.dataset or ("fmnist" if "fmnist" in args.model else "imagenet")
    x, shown, label = load_image(args.image, dataset, args.data)
    torch.manual_seed(0)
    plain, ic = build_pair(args.model, args.num_classes, DATASETS[dataset][3])
    random = []
    for model, weights, kind in ((plain, args.plain_weights, "plain"), (ic, args.ic_weights, "IC")):
        if weights:
            load_weights(model, weights, what=f"--{kind.lower()}-weights")
        else:
            random.append((kind, model))
    trained = []
    if random and dataset == "fmnist" and args.train_steps:
        left = _quick_train(random, args.train_steps, args.data)
        trained = [kind for kind, _ in random if all(kind != k for k, _ in left)]
        random = left
    random = [kind for kind, _ in random]
    if random:
        which = " and ".join(random)
        print(
            f"warning: the {which} model{'s have' if len(random) > 1 else ' has'} random weights, so the "
            "Grad-CAM maps are meaningless; pass --plain-weights and --ic-weights",
            file=sys.stderr,
        )
    layer = args.layer or last_conv(plain)
    resolve_layer(ic, layer)  # the same name must exist in both

    from matplotlib.figure import Figure

    fig = Figure(figsize=(GRADCAM_SIZE[0] / DPI, GRADCAM_SIZE[1] / DPI), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, 3)
    cmap = "gray" if shown.ndim == 2 else None
    axes[0].imshow(shown, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    axes[0].set_title("input" + (f" (label: {label})" if label else ""), fontsize=12)
    classes = None
    if dataset == "fmnist":
        from ..training.data import FMNIST_CLASSES as classes
    for ax, model, kind in ((axes[1], plain, "plain"), (axes[2], ic, "IC")):
        cam = gradcam(model, x, layer, target=args.target)
        with torch.no_grad():
            prob = torch.softmax(model.eval()(x[None]).float(), 1)[0]
        cls = int(prob.argmax()) if args.target is None else args.target
        name = classes[cls] if classes and cls < len(classes) else f"class {cls}"
        ax.imshow(shown, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        im = ax.imshow(cam, cmap="jet", alpha=0.5, vmin=0, vmax=1, interpolation="bilinear")
        title = f"{kind} {args.model.removeprefix('ic_')}: {name} (p = {float(prob[cls]):.2f})"
        ax.set_title(
            title + ("\nRANDOM WEIGHTS" if kind in random else ""),
            fontsize=12,
            color="#b2182b" if kind in random else "black",
        )
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes[1:], shrink=0.8, label="Grad-CAM")
    suptitle = f"Grad-CAM of layer {layer!r}"
    if trained:
        suptitle += f" ({' and '.join(trained)} trained here for {args.train_steps} steps only)"
    if random:
        suptitle += f" — {RANDOM_WARNING}"
    fig.suptitle(suptitle, fontsize=12, color="#b2182b" if random else "black")
    folder = os.path.dirname(args.out)
    if folder:
        os.makedirs(folder, exist_ok=True)
    fig.savefig(args.out, dpi=DPI, format="png")
    print(f"wrote {args.out}")
    return 0
