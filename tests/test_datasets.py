"""Datasets read from local paths: IDX (Fashion-MNIST), CIFAR-10 batches, image folders, seeded augmentation."""

import pickle

import numpy as np
import pytest
import torch

from helpers import write_idx
from ic_networks.training import data as D


def test_read_idx(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", a)
    np.testing.assert_array_equal(D.read_idx(tmp_path / "a.gz"), a)
    f = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    write_idx(tmp_path / "f", f, code=0x0D)
    np.testing.assert_array_equal(D.read_idx(tmp_path / "f"), f)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(ValueError, match="not an IDX file"):
        D.read_idx(tmp_path / "bad")
    raw = (tmp_path / "f").read_bytes()
    (tmp_path / "short").write_bytes(raw[:-3])
    with pytest.raises(ValueError, match="truncated"):
        D.read_idx(tmp_path / "short")
    with pytest.raises(RuntimeError, match="cannot read"):
        D.read_idx(tmp_path / "missing")


def test_fashion_mnist_from_own_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("t10k", 4)):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, n, dtype=np.uint8))
    x, y = D.load_fashion_mnist(tmp_path, train=False)
    assert x.shape == (4, 1, 28, 28) and x.dtype == torch.uint8 and y.dtype == torch.int64


def test_fashion_mnist_missing_names_apt(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        D.load_fashion_mnist(tmp_path)


def test_fashion_mnist_debian_files(fmnist):
    assert len(fmnist.train) == 60000 and len(fmnist.val) == 10000
    x, y = fmnist.val[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and 0 <= int(y) < 10
    assert torch.bincount(fmnist.val.labels).tolist() == [1000] * 10
    assert fmnist.val_ten_crop[0][0].shape == (10, 1, 28, 28)


def write_cifar(root, n_train=(3, 2), n_test=4):
    d = root / "cifar-10-batches-py"
    d.mkdir()
    rng = np.random.default_rng(1)
    batches = {f"data_batch_{i + 1}": n for i, n in enumerate(n_train)}
    batches["test_batch"] = n_test
    for name, n in batches.items():
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        with open(d / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": name.encode()}, f)
    return d


def test_cifar10_pickle_batches(tmp_path):
    d = write_cifar(tmp_path)
    x, y = D.load_cifar10(tmp_path, train=True)  # the parent folder works too
    assert x.shape == (5, 3, 32, 32) and y.shape == (5,)
    with open(d / "data_batch_1", "rb") as f:
        b1 = pickle.load(f, encoding="bytes")
    # row layout: 1024 red, then green, then blue values, each row-major 32x32
    assert x[0, 1, 2, 3] == b1[b"data"][0, 1024 + 2 * 32 + 3]
    assert y[:3].tolist() == b1[b"labels"]
    xt, yt = D.load_cifar10(d, train=False)
    assert xt.shape == (4, 3, 32, 32)
    bundle = D.build_datasets("cifar10", d, augment=True)
    assert bundle.train[0][0].shape == (3, 32, 32) and bundle.val_ten_crop[1][0].shape == (10, 3, 32, 32)


def test_cifar10_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="CIFAR-10 not found"):
        D.load_cifar10(tmp_path)
    with pytest.raises(ValueError, match="--data"):
        D.load_cifar10(None)
    (tmp_path / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="not a CIFAR-10 pickle batch"):
        D.load_cifar10(tmp_path, train=False)
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(ValueError, match="expected"):
        D.load_cifar10(tmp_path, train=False)


def test_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(2)
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(
                    tmp_path / split / cls / f"{i}.png"
                )
    b = D.build_datasets("imagenet", tmp_path, image_size=32)
    assert b.num_classes == 2 and len(b.train) == 4
    assert b.train[0][0].shape == (3, 32, 32) and b.val[0][0].shape == (3, 32, 32)
    assert b.val_ten_crop[0][0].shape == (10, 3, 32, 32)
    with pytest.raises(FileNotFoundError, match="val"):
        D.build_datasets("imagenet", tmp_path / "train")
    with pytest.raises(ValueError, match="dataset"):
        D.build_datasets("mnist", tmp_path)


def test_seeded_augmentation_is_a_function_of_seed_epoch_index():
    x = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    train, _, _ = D._small_transforms("fmnist", 28, augment=True)
    ds = D.Seeded(D.TensorImages(x, torch.arange(4), train), seed=3)
    before = torch.get_rng_state()
    a = ds[1][0]
    assert torch.equal(torch.get_rng_state(), before)  # the global RNG is left alone
    torch.rand(5)
    assert torch.equal(ds[1][0], a)
    others = []
    for epoch in range(1, 5):
        ds.set_epoch(epoch)
        others.append(ds[1][0])
    assert any(not torch.equal(o, a) for o in others)  # other epochs draw other crops
    ds.set_epoch(0)
    assert torch.equal(ds[1][0], a)
