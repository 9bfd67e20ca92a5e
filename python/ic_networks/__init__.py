"""ic-networks: IC convolution networks (An, Liu, Zhao, Shen) with a Rust core on libtorch.

>>> import ic_networks as icn
>>> layer = icn.IcConv2d(64, 64, 3, padding=1)          # drop-in for nn.Conv2d
>>> model = icn.convert(torchvision.models.resnet18())  # IC-ify the 3x3 convs (alpha = 0)
>>> print(icn.profile(model))                           # params and multiply-adds, IC share

``icn.convert`` and ``icn.profile`` are functions; their modules are :mod:`ic_networks.conversion`
and :mod:`ic_networks.profiling`. Importing ic-networks registers nothing anywhere: call
:func:`ic_networks.integrations.torchvision.register` to make the IC models known to
``torchvision.models.get_model``. (One opt-in exception: with ``$IC_NETWORKS_STACK_DIR`` set,
as :func:`ic_networks.training.watchdog.run` sets it for the processes it supervises, the import
registers a ``SIGUSR1`` handler that dumps every thread's Python stack into that folder.)

The subpackages that need torchvision (``models``, ``detection``, ``integrations``, ``training``)
and ``neuron`` are imported on first use (``icn.models.ic_resnet50`` works as usual), so
``import ic_networks`` does not import torchvision.
"""

import importlib
import os

import torch  # noqa: F401  -- loads libtorch before the Rust extension (which links it)

# isort: off
# First the torch check, which reads the core's stamp without loading it: a core built against another
# torch minor fails to load with an undefined symbol, so the check must raise its ImportError (naming
# both versions and the rebuild command) before `_core` is imported.
from . import _torch_check  # noqa: F401
from . import _core  # noqa: F401

# isort: on
from . import (  # noqa: F401
    conversion,
    cuda_kernels,
    diagnostics,
    functional,
    io,
    memory,
    profiling,
    reference,
)
from .conversion import convert  # noqa: F401
from .functional import ic_conv2d, wld_loss  # noqa: F401
from .nn import IcConv2d, WLDLoss, ic_layers, is_ic_layer  # noqa: F401
from .profiling import profile  # noqa: F401

__version__ = _core.__version__

#: Imported by ``__getattr__`` on first access (they import torchvision, or are rarely needed).
_LAZY_SUBMODULES = ("detection", "integrations", "models", "neuron", "training")


def __getattr__(name):
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f".{name}", __name__)  # also sets the attribute: called once
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_SUBMODULES))


# ic_networks.training.watchdog.DUMP_DIR_ENV, read here without importing ic_networks.training
if os.environ.get("IC_NETWORKS_STACK_DIR"):  # started under a watchdog: dump stacks on SIGUSR1 (see the docstring)
    from .training import watchdog as _watchdog

    _watchdog.arm()

__all__ = [
    "IcConv2d",
    "WLDLoss",
    "ic_conv2d",
    "wld_loss",
    "convert",
    "profile",
    "is_ic_layer",
    "ic_layers",
    "functional",
    "reference",
    "io",
    "conversion",
    "cuda_kernels",
    "diagnostics",
    "memory",
    "profiling",
    "models",
    "neuron",
    "integrations",
    "training",
    "detection",
    "__version__",
]
