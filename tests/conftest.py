import os

import pytest
import torch

# One intra-op thread: the tests use small tensors, for which OpenMP fork/join costs more than it
# saves, and on a loaded 2-core machine spinning OpenMP threads slow everything by 10-40x.
torch.set_num_threads(int(os.environ.get("IC_TEST_THREADS", "1")))

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture(scope="module")
def fmnist():
    """Debian's Fashion-MNIST (train and test sets, no augmentation); skips when it is not installed."""
    from helpers import HAVE_FMNIST
    from ic_networks.training import data

    if not HAVE_FMNIST:
        pytest.skip(f"Fashion-MNIST not installed ({data.FMNIST_APT})")
    return data.build_datasets("fmnist", augment=False)
