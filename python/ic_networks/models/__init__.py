"""The IC model zoo (the table in docs/design.md): IC-ResNets and IC-EfficientNets from torchvision's builders, the
CIFAR-10 family of the paper's Table 4 (plain and IC), and the small Fashion-MNIST CNN.

Every builder takes ``weights`` (``None``, a local state_dict path, or for torchvision-based ones a
torchvision ``WeightsEnum`` read from the local hub cache, never downloaded) and ``num_classes``;
IC builders also take ``alpha`` / ``alpha_mode`` (default: 1 fixed from scratch, 0 learnable on
weights). See :mod:`ic_networks.models._common`. Which convs become IC layers is documented in
each builder's module.
"""

from . import cifar_resnet, cnn, efficientnet, mobilenet, resnet, vgg
from ._zoo import ZOO, ZooEntry, lookup  # noqa: F401
from .cifar_resnet import *  # noqa: F401,F403
from .cnn import *  # noqa: F401,F403
from .efficientnet import *  # noqa: F401,F403
from .mobilenet import *  # noqa: F401,F403
from .resnet import *  # noqa: F401,F403
from .vgg import *  # noqa: F401,F403

__all__ = (
    resnet.__all__
    + efficientnet.__all__
    + vgg.__all__
    + mobilenet.__all__
    + cifar_resnet.__all__
    + cnn.__all__
    + ["ZOO", "ZooEntry", "lookup"]
)
