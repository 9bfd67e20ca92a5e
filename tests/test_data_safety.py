"""Data and checkpoint files never run code: CIFAR-10 batches go through a restricted unpickler,
checkpoints and weights through ``torch.load(..., weights_only=True)``."""

import os
import pickle

import numpy as np
import pytest
import torch

from ic_networks.training.data import load_cifar10


def _batch(n, seed):
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"training batch 1 of 5",
        b"labels": [int(v) for v in rng.integers(0, 10, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar_real_format_batches_load(tmp_path, protocol):
    batches = {"data_batch_1": _batch(5, 0), "data_batch_2": _batch(3, 1), "test_batch": _batch(4, 2)}
    for name, b in batches.items():
        with open(tmp_path / name, "wb") as fh:
            pickle.dump(b, fh, protocol=protocol)
    x, y = load_cifar10(tmp_path, train=True)
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.int64
    want = np.concatenate([batches["data_batch_1"][b"data"], batches["data_batch_2"][b"data"]]).reshape(-1, 3, 32, 32)
    assert np.array_equal(x.numpy(), want)
    assert y.tolist() == batches["data_batch_1"][b"labels"] + batches["data_batch_2"][b"labels"]
    xt, yt = load_cifar10(tmp_path, train=False)
    assert xt.shape == (4, 3, 32, 32) and yt.tolist() == batches["test_batch"][b"labels"]


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: a side effect a test can see."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_cifar_malicious_batch_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    evil = _batch(2, 0)
    evil[b"labels"] = _Payload(marker)
    blob = pickle.dumps(evil, protocol=2)
    # The payload is live: a plain pickle.load runs it.
    pickle.loads(blob).get(b"labels").close()
    assert marker.exists()
    marker.unlink()

    d = tmp_path / "cifar"
    d.mkdir()
    (d / "data_batch_1").write_bytes(blob)
    with pytest.raises(ValueError, match=r"data_batch_1 is not a CIFAR-10 pickle batch.*(builtins|io)\.open"):
        load_cifar10(d, train=True)
    assert not marker.exists()


def test_cifar_reduce_with_numpy_but_foreign_callable_is_refused(tmp_path):
    marker = tmp_path / "pwned2"

    class Sneaky:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": Sneaky(), b"labels": []}))
    with pytest.raises(ValueError, match=r"(posix|os)\.system"):
        load_cifar10(tmp_path, train=False)
    assert not marker.exists()


def test_cifar_persistent_ids_are_refused(tmp_path):
    import io

    class P(pickle.Pickler):
        def persistent_id(self, obj):
            return "x" if isinstance(obj, list) else None

    buf = io.BytesIO()
    P(buf, protocol=2).dump({b"data": np.zeros((1, 3072), np.uint8), b"labels": [1]})
    (tmp_path / "test_batch").write_bytes(buf.getvalue())
    with pytest.raises(ValueError, match="persistent ids"):
        load_cifar10(tmp_path, train=False)


def test_checkpoint_with_code_is_refused(tmp_path):
    """Checkpoints and weights load with weights_only=True: an object that is not tensors and
    containers is refused, and its payload does not run."""
    from ic_networks.training.checkpoint import load_checkpoint

    marker = tmp_path / "pwned"
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "extra": _Payload(marker)}, path)
    with pytest.raises(RuntimeError, match="checkpoint: cannot read"):
        load_checkpoint(path)
    assert not marker.exists()

    from ic_networks.io import read_state_dict

    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        read_state_dict(str(path))
    assert not marker.exists()
