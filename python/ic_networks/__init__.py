"""ic-networks: IC convolution networks (An, Liu, Zhao, Shen) with a Rust core on libtorch.

>>> import ic_networks as icn
>>> layer = icn.IcConv2d(64, 64, 3, padding=1)          # drop-in for nn.Conv2d
>>> model = icn.convert(torchvision.models.resnet18())  # IC-ify the 3x3 convs (alpha = 0)
"""
import torch  # noqa: F401  -- loads libtorch before the Rust extension (which links it)

from . import _torch_check  # noqa: F401  -- ImportError if _core was built against another torch
from . import _core  # noqa: F401
from . import functional, reference  # noqa: F401
from .functional import ic_conv2d, wld_loss  # noqa: F401
from .nn import IcConv2d, WLDLoss  # noqa: F401
from .convert import convert  # noqa: F401
from .profile import profile  # noqa: F401
from . import detection, integrations, models, neuron, training  # noqa: F401

__version__ = _core.__version__

__all__ = [
    "IcConv2d", "WLDLoss", "ic_conv2d", "wld_loss", "convert", "profile",
    "functional", "reference", "models", "neuron", "integrations", "training", "detection", "__version__",
]
