"""Datasets read from local paths only (nothing is ever downloaded).

* Fashion-MNIST: the IDX files of the Debian package ``dataset-fashion-mnist``
  (``/usr/share/datasets/fashion-mnist/``; ``.gz`` or uncompressed), read by :func:`read_idx`.
* CIFAR-10: the "python version" pickle batches (``data_batch_1`` ... ``data_batch_5``,
  ``test_batch``) in ``cifar-10-batches-py/`` or the folder given. They are read by a restricted
  unpickler that admits only what real batches hold (dicts, lists, bytes, str, numbers, numpy
  arrays), so a crafted file is refused with a ``ValueError`` instead of running its code.
* ImageFolder trees (ImageNet style): ``ROOT/train/<class>/*.JPEG`` and ``ROOT/val/<class>/*.JPEG``.

Images are normalised with the dataset's channel mean/std. Training augmentation (when enabled):
random crop with zero padding of 1/8 of the side plus horizontal flip for the small-image sets,
``RandomResizedCrop(224)`` plus flip for ImageFolder. Evaluation: single-crop is the whole image for
the small sets and ``Resize(256)`` + ``CenterCrop(224)`` for ImageFolder; 10-crop takes the four
corners, the centre and their horizontal flips (``torchvision.transforms.TenCrop``) of the
``Resize(256)`` image, or of the small image zero-padded by 1/8 of its side. A 10-crop sample is a
``(10, C, H, W)`` tensor; the evaluator averages the logits of the 10 crops.

Random augmentation is made a pure function of ``(seed, epoch, index)`` by :class:`Seeded`, so a
run resumed mid-epoch (or run with a different number of loader workers) sees the same crops.
"""

from __future__ import annotations

import gzip
import os
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset
from torchvision import transforms as T

from .._checks import positive_int

__all__ = [
    "FMNIST_DIR",
    "FMNIST_APT",
    "FMNIST_CLASSES",
    "DATASETS",
    "read_idx",
    "load_fashion_mnist",
    "load_cifar10",
    "TensorImages",
    "Seeded",
    "DataBundle",
    "build_datasets",
]

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FMNIST_APT = "sudo apt-get install dataset-fashion-mnist"
FMNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
DATASETS = ("fmnist", "cifar10", "imagenet")

_STATS = {
    "fmnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


# --------------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------------
def read_idx(path) -> np.ndarray:
    """Reads one IDX file (the MNIST format; gzip-compressed or not) into a numpy array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise RuntimeError(f"path: cannot read IDX file {path}: {exc}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"path: {path} is not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"path: {path} is truncated or corrupt: header says {dims} ({expected} bytes), file has {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _find_idx(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(
        f"Fashion-MNIST not found: no {stem}[.gz] in {root}. Install the Debian package "
        f"(`{FMNIST_APT}`, which puts the IDX files in {FMNIST_DIR}) or pass --data DIR with the four IDX files."
    )


def load_fashion_mnist(root=None, train: bool = True) -> tuple[Tensor, Tensor]:
    """``(images uint8 (N, 1, 28, 28), labels int64 (N,))`` from the IDX files in ``root``
    (default: ``$IC_FMNIST_DIR`` or ``/usr/share/datasets/fashion-mnist``)."""
    root = Path(root if root is not None else os.environ.get("IC_FMNIST_DIR", FMNIST_DIR))
    split = "train" if train else "t10k"
    images = read_idx(_find_idx(root, f"{split}-images-idx3-ubyte"))
    labels = read_idx(_find_idx(root, f"{split}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"data: {root} holds inconsistent IDX files: images {images.shape}, labels {labels.shape}")
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def _cifar_dir(root: Path) -> Path:
    for d in (root, root / "cifar-10-batches-py"):
        if (d / "test_batch").is_file() or (d / "data_batch_1").is_file():
            return d
    raise FileNotFoundError(
        f"CIFAR-10 not found in {root}: expected the python-version pickle batches (data_batch_1..5, test_batch) "
        f"there or in {root / 'cifar-10-batches-py'}"
    )


# What CIFAR-10's python batches hold: a dict of bytes/str keys to a uint8 ndarray, lists of ints and
# bytes. Unpickling them needs numpy's array reconstruction and nothing else (``_codecs.encode`` is how
# Python 3 writes bytes at pickle protocol 2; ``_frombuffer`` is numpy's array at protocol 5).
_CIFAR_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),  # pickle protocol 5
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }
)


class _CifarUnpickler(pickle.Unpickler):
    """A pickle reader that admits only what real CIFAR-10 batches hold (dict, list, bytes, str, int,
    float, numpy arrays and dtypes): any other global (a function to call, a class to build) is
    refused before it is looked up, so a crafted batch cannot run code."""

    def __init__(self, fh) -> None:
        super().__init__(fh, encoding="bytes")

    def find_class(self, module: str, name: str):
        if (module, name) not in _CIFAR_GLOBALS:
            raise pickle.UnpicklingError(
                f"it references {module}.{name}, which a CIFAR-10 batch never holds "
                "(refused: unpickling it could run code)"
            )
        return super().find_class(module, name)

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("it uses persistent ids, which a CIFAR-10 batch never holds")


def load_cifar10(root, train: bool = True) -> tuple[Tensor, Tensor]:
    """``(images uint8 (N, 3, 32, 32), labels int64 (N,))`` from CIFAR-10's python pickle batches.

    ``train=True`` reads every ``data_batch_*`` present (normally 1..5), ``False`` reads ``test_batch``.
    """
    if root is None:
        raise ValueError("data: CIFAR-10 needs --data DIR (the folder with the python-version batches)")
    d = _cifar_dir(Path(root))
    files = sorted(d.glob("data_batch_*")) if train else [d / "test_batch"]
    files = [f for f in files if f.is_file()]
    if not files:
        raise FileNotFoundError(f"CIFAR-10: no {'data_batch_*' if train else 'test_batch'} file in {d}")
    xs, ys = [], []
    for f in files:
        try:
            with open(f, "rb") as fh:
                batch = _CifarUnpickler(fh).load()
        except pickle.UnpicklingError as exc:
            raise ValueError(f"data: {f} is not a CIFAR-10 pickle batch: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 -- any unpickling failure means a bad file
            raise ValueError(f"data: {f} is not a CIFAR-10 pickle batch ({type(exc).__name__}: {exc})") from exc
        if not isinstance(batch, dict):
            raise ValueError(f"data: {f} is not a CIFAR-10 pickle batch (a {type(batch).__name__}, not a dict)")
        data = batch.get(b"data", batch.get("data"))
        labels = batch.get(b"labels", batch.get("labels"))
        if data is None or labels is None:
            raise ValueError(f"data: {f} lacks the 'data'/'labels' entries of a CIFAR-10 batch")
        data = np.asarray(data, dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
            raise ValueError(
                f"data: {f} has data of shape {data.shape} and {len(labels)} labels; expected (N, 3072) and N"
            )
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(np.asarray(labels, dtype=np.int64))
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


# --------------------------------------------------------------------------------------------------
# Datasets and transforms
# --------------------------------------------------------------------------------------------------
class TensorImages(Dataset):
    """In-memory uint8 images ``(N, C, H, W)`` and int64 labels; ``transform`` maps one uint8 image
    to a float tensor."""

    def __init__(self, images: Tensor, labels: Tensor, transform: Callable[[Tensor], Tensor]) -> None:
        if images.dim() != 4 or labels.dim() != 1 or len(images) != len(labels):
            raise ValueError(
                f"images/labels: expected (N, C, H, W) and (N,), got {tuple(images.shape)} and {tuple(labels.shape)}"
            )
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(self.images[i]), self.labels[i]


class Seeded(Dataset):
    """Runs ``base[i]`` with the CPU RNG seeded from ``(seed, epoch, i)`` (and restored afterwards),
    so random augmentation depends on nothing else: not on worker count, order, or resume point."""

    def __init__(self, base: Dataset, seed: int = 0) -> None:
        self.base, self.seed, self.epoch = base, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        mixed = ((self.seed * 1_000_003 + self.epoch) * 1_000_000_007 + int(i)) % (2**63 - 1)
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(mixed)
            return self.base[i]


class _ScaleNormalize:
    """uint8 (C, H, W) -> float, scaled to [0, 1] and normalised."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __call__(self, x: Tensor) -> Tensor:
        return (x.float().div_(255.0) - self.mean) / self.std


class _StackCrops:
    """A tuple of crops -> one ``(n_crops, C, H, W)`` tensor, each crop through ``each``."""

    def __init__(self, each: Callable) -> None:
        self.each = each

    def __call__(self, crops) -> Tensor:
        return torch.stack([self.each(c) for c in crops])


def _small_transforms(name: str, size: int, augment: bool):
    norm = _ScaleNormalize(*_STATS[name])
    pad = max(1, size // 8)
    train = T.Compose([T.RandomCrop(size, padding=pad), T.RandomHorizontalFlip(), norm]) if augment else norm
    ten = T.Compose([T.Pad(pad), T.TenCrop(size), _StackCrops(norm)])
    return train, norm, ten


def _imagenet_transforms(size: int, augment: bool):
    to_tensor = T.Compose([T.ToTensor(), T.Normalize(*_STATS["imagenet"])])
    resize = int(round(size * 256 / 224))
    train = (
        T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), to_tensor])
        if augment
        else T.Compose([T.Resize(resize), T.CenterCrop(size), to_tensor])
    )
    single = T.Compose([T.Resize(resize), T.CenterCrop(size), to_tensor])
    ten = T.Compose([T.Resize(resize), T.TenCrop(size), _StackCrops(to_tensor)])
    return train, single, ten


def _image_folder(root: Path, split: str, transform):
    from torchvision.datasets import ImageFolder

    d = root / split
    if not d.is_dir():
        raise FileNotFoundError(
            f"ImageFolder: {d} not found; expected {root}/train/<class>/... and {root}/val/<class>/..."
        )
    try:
        return ImageFolder(str(d), transform=transform)
    except (FileNotFoundError, RuntimeError) as exc:
        raise FileNotFoundError(f"ImageFolder: {d} holds no class folders with images ({exc})") from exc


@dataclass
class DataBundle:
    """Train and evaluation sets of one dataset. ``val_ten_crop`` yields ``(10, C, H, W)`` samples."""

    name: str
    train: Dataset
    val: Dataset
    val_ten_crop: Dataset
    num_classes: int
    in_channels: int


def _subset(ds: Dataset, n: int | None, seed: int) -> Dataset:
    if n is None or n >= len(ds):
        return ds
    positive_int("train_subset", n)
    g = torch.Generator().manual_seed(seed)
    return Subset(ds, torch.randperm(len(ds), generator=g)[:n].tolist())


def build_datasets(
    dataset: str,
    root=None,
    *,
    augment: bool = True,
    train_subset: int | None = None,
    seed: int = 0,
    image_size: int = 224,
) -> DataBundle:
    """The train/val sets of ``dataset`` (one of :data:`DATASETS`) read from ``root``.

    ``train_subset`` keeps a fixed random subset (seeded by ``seed``) of that many training images.
    With ``augment`` the training set is wrapped in :class:`Seeded` (call ``set_epoch`` each epoch).
    """
    if dataset not in DATASETS:
        raise ValueError(f"dataset: expected one of {DATASETS}, got {dataset!r}")
    if dataset == "imagenet":
        if root is None:
            raise ValueError("data: the ImageFolder dataset needs --data ROOT (with train/ and val/ inside)")
        root = Path(root)
        tr, single, ten = _imagenet_transforms(image_size, augment)
        train = _image_folder(root, "train", tr)
        val, val_ten = _image_folder(root, "val", single), _image_folder(root, "val", ten)
        num_classes, in_channels = len(train.classes), 3
    else:
        loader = load_fashion_mnist if dataset == "fmnist" else load_cifar10
        xtr, ytr = loader(root, train=True)
        xte, yte = loader(root, train=False)
        tr, single, ten = _small_transforms(dataset, xtr.shape[-1], augment)
        train, val, val_ten = TensorImages(xtr, ytr, tr), TensorImages(xte, yte, single), TensorImages(xte, yte, ten)
        num_classes, in_channels = 10, xtr.shape[1]
    train = _subset(train, train_subset, seed)
    if augment:
        train = Seeded(train, seed)
    return DataBundle(dataset, train, val, val_ten, num_classes, in_channels)
