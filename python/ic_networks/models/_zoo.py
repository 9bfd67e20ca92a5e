"""The zoo's table: every IC builder with its plain counterpart and its natural input size.

Used by ``ic-networks flops`` / ``ic-networks convert`` and by the torchvision registration.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torchvision.models as tvm

from . import cifar_resnet, cnn, efficientnet, mobilenet, resnet, vgg

__all__ = ["ZooEntry", "ZOO", "lookup"]

IMAGENET = (1, 3, 224, 224)
CIFAR = (1, 3, 32, 32)
FMNIST = (1, 1, 28, 28)


@dataclass(frozen=True)
class ZooEntry:
    """``ic`` builder named ``name``; ``plain`` builds the model it was made from."""

    name: str
    plain_name: str
    plain: Callable
    ic: Callable
    input_size: tuple[int, ...]


def _entries():
    for depth in (18, 34, 50, 101, 152):
        yield f"resnet{depth}", getattr(tvm, f"resnet{depth}"), getattr(resnet, f"ic_resnet{depth}"), IMAGENET
    yield "resnet50", tvm.resnet50, resnet.ic_resnet50_b, IMAGENET
    yield "resnet50", tvm.resnet50, resnet.ic_resnet50_c, IMAGENET
    for b in (0, 1, 2):
        yield (
            f"efficientnet_b{b}",
            getattr(tvm, f"efficientnet_b{b}"),
            getattr(efficientnet, f"ic_efficientnet_b{b}"),
            IMAGENET,
        )
    for module, names in (
        (vgg, ("vgg16_cifar", "vgg19_cifar")),
        (mobilenet, ("mobilenet_cifar",)),
        (cifar_resnet, ("se_resnet18_cifar", "se_resnet50_cifar", "resnext29_2x64d_cifar")),
    ):
        for n in names:
            yield n, getattr(module, n), getattr(module, f"ic_{n}"), CIFAR
    yield "fmnist_cnn", cnn.fmnist_cnn, cnn.ic_fmnist_cnn, FMNIST
    yield "fmnist_resnet", cnn.fmnist_resnet, cnn.ic_fmnist_resnet, FMNIST


ZOO: dict[str, ZooEntry] = {
    ic.__name__: ZooEntry(ic.__name__, plain_name, plain, ic, size) for plain_name, plain, ic, size in _entries()
}


def lookup(name: str) -> ZooEntry:
    """The entry of an IC builder name (``ic_resnet50``) or of a plain one (``resnet50``)."""
    if not isinstance(name, str):
        raise TypeError(f"name: expected a model name, got {type(name).__name__}")
    entry = ZOO.get(name) or ZOO.get(f"ic_{name}")
    if entry is None:
        raise ValueError(f"name: unknown model {name!r}; known: {', '.join(sorted(ZOO))}")
    return entry
