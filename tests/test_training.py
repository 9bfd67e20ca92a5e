"""Training engine: schedules, datasets, evaluation, checkpoints and exact resume, DDP, the CLI, and a
real Fashion-MNIST run that must reach a stated accuracy."""

import gzip
import json
import math
import os
import pickle
import socket
import struct
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset, TensorDataset

import ic_networks as icn
import ic_networks.cli
from ic_networks.io import atomic_save, atomic_write
from ic_networks.models.cnn import fmnist_cnn, ic_fmnist_cnn
from ic_networks.models.mobilenet import IcDepthwiseSeparable
from ic_networks.nn import ic_layers
from ic_networks.training import data as D
from ic_networks.training import trainer as trainer_mod
from ic_networks.training.checkpoint import load_checkpoint
from ic_networks.training.evaluate import evaluate
from ic_networks.training.model_factory import make_student
from ic_networks.training.recipes import RECIPES, get_recipe
from ic_networks.training.schedules import AlphaRamp, LambdaSchedule, LrFactor
from ic_networks.training.trainer import Trainer

HAVE_FMNIST = (D.FMNIST_DIR / "train-images-idx3-ubyte.gz").is_file()
needs_fmnist = pytest.mark.skipif(not HAVE_FMNIST, reason=f"Fashion-MNIST not installed ({D.FMNIST_APT})")


@pytest.fixture(scope="module")
def fmnist():
    if not HAVE_FMNIST:
        pytest.skip(f"Fashion-MNIST not installed ({D.FMNIST_APT})")
    return D.build_datasets("fmnist", augment=False)


# --------------------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", ["cosine", "linear"])
@pytest.mark.parametrize("total", [1, 2, 7, 1000])
def test_lambda_end_points(shape, total):
    lam = LambdaSchedule(total, shape=shape)
    assert lam(0) == 0.9 or total == 1
    assert lam(total - 1) == 0.1 if total > 1 else lam(0) == 0.9
    assert lam(total + 5) == 0.1
    values = [lam(s) for s in range(total)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # never rises
    assert all(0.1 <= v <= 0.9 for v in values)


def test_lambda_shapes_differ_in_the_middle():
    cos, lin = LambdaSchedule(101), LambdaSchedule(101, shape="linear")
    assert cos(50) == pytest.approx(0.5) and lin(50) == pytest.approx(0.5)
    assert cos(10) > lin(10) and cos(90) < lin(90)  # cosine: slow start, slow end
    with pytest.raises(ValueError, match="shape"):
        LambdaSchedule(10, shape="exp")
    with pytest.raises(ValueError, match="start"):
        LambdaSchedule(10, start=1.2)
    with pytest.raises(ValueError, match="total_steps"):
        LambdaSchedule(0)


def test_alpha_ramp_sets_every_ic_layer():
    model = ic_fmnist_cnn()
    ramp = AlphaRamp(model, total_steps=11, start=0.0, end=0.04)
    layers = [m for m in model.modules() if isinstance(m, icn.IcConv2d)]
    assert len(layers) == 3
    assert ramp(0) == 0.0 and all(float(m.alpha) == 0.0 for m in layers)
    assert ramp(5) == pytest.approx(0.02) and all(float(m.alpha) == pytest.approx(0.02) for m in layers)
    assert ramp(10) == 0.04 and all(float(m.alpha) == pytest.approx(0.04) for m in layers)
    with pytest.raises(ValueError, match="IC layers"):
        AlphaRamp(fmnist_cnn(), 10)


class TinyMobile(nn.Module):
    """One MobileNet IC block (depthwise + pointwise pair as one IC layer) and a classifier, 1x8x8 -> 6."""

    def __init__(self):
        super().__init__()
        self.block = IcDepthwiseSeparable(1, 4, alpha=0.0, alpha_mode="fixed")
        self.fc = nn.Linear(4, 6)

    def forward(self, x):
        return self.fc(self.block(x).mean((2, 3)))


def test_alpha_ramp_and_logging_see_depthwise_separable_ic_layers(tmp_path, monkeypatch):
    model = TinyMobile()
    assert ic_layers(model) == [model.block]  # no IcConv2d in it, yet it is an IC model
    ramp = AlphaRamp(model, total_steps=3, start=0.0, end=0.02)
    assert ramp(2) == 0.02 and float(model.block.alpha) == pytest.approx(0.02)
    # A WLD run with this student: accepted, alpha ramped and logged per epoch.
    calls = []
    real = trainer_mod.wld_loss_parts

    def counting(*args, **kw):
        calls.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(trainer_mod, "wld_loss_parts", counting)
    torch.manual_seed(0)
    student, teacher = TinyMobile(), nn.Sequential(nn.Flatten(), nn.Linear(64, 6))
    recipe = get_recipe("wld-fmnist", epochs=1, batch_size=16, alpha="ramp", alpha_start=0.0, alpha_end=0.02)
    t = Trainer(
        student, recipe, _ddp_data(), _ddp_data(), tmp_path, teacher=teacher, device="cpu", log=None, progress=False
    )
    t.fit()
    assert t.steps_per_epoch == 2 and len(calls) == 2  # one WLD evaluation per step gives loss and CE
    assert t.metrics.epochs[0]["alpha"] == pytest.approx(0.02) == float(student.block.alpha)
    assert np.isfinite(t.metrics.epochs[0]["train_ce"])


def test_lr_factor():
    step = LrFactor("step", steps_per_epoch=10, total_steps=100, milestones=(3, 6), gamma=0.1)
    assert step(0) == 1.0 and step(29) == 1.0
    assert step(30) == pytest.approx(0.1) and step(60) == pytest.approx(0.01)
    cos = LrFactor("cosine", 10, 100)
    assert cos(0) == 1.0 and cos(50) == pytest.approx(0.5) and cos(100) == pytest.approx(0.0)
    warm = LrFactor("constant", 10, 100, warmup_steps=4)
    assert warm(0) == pytest.approx(0.2) and warm(3) == pytest.approx(0.8) and warm(4) == 1.0
    with pytest.raises(ValueError, match="lr_schedule"):
        LrFactor("poly", 10, 100)


def test_recipes_follow_the_paper():
    r = RECIPES["scratch-imagenet"]
    assert (r.epochs, r.batch_size, r.lr, r.momentum, r.weight_decay, r.lr_milestones) == (
        120,
        256,
        0.1,
        0.9,
        1e-4,
        (30, 60, 90),
    )
    r = RECIPES["wld-imagenet"]
    assert (r.mode, r.epochs, r.lr, r.lr_milestones, r.e, r.lam_start, r.lam_end) == (
        "wld",
        30,
        0.001,
        (15,),
        0.005,
        0.9,
        0.1,
    )
    r = RECIPES["scratch-cifar"]
    assert (r.epochs, r.batch_size, r.lr, r.lr_milestones) == (200, 128, 0.1, (60, 120))
    assert {"wld-cifar", "scratch-fmnist", "wld-fmnist"} <= set(RECIPES)
    with pytest.raises(ValueError, match="recipe"):
        get_recipe("nope")
    with pytest.raises(ValueError, match="unknown field"):
        get_recipe("wld-fmnist", learning_rate=3)
    with pytest.raises(ValueError, match="epochs"):
        get_recipe("wld-fmnist", epochs=0)


# --------------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------------
def write_idx(path, array, code=0x08):
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(payload)


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


@needs_fmnist
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


# --------------------------------------------------------------------------------------------------
# Evaluation, checkpoints
# --------------------------------------------------------------------------------------------------
class Flat(nn.Module):
    """A tiny BN-free IC model on 1x8x8 inputs."""

    def __init__(self, k=6):
        super().__init__()
        self.conv = icn.IcConv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 16, k)

    def forward(self, x):
        return self.fc(F.max_pool2d(torch.relu(self.conv(x)), 2).flatten(1))


def test_evaluate_top_k_and_ten_crop():
    torch.manual_seed(0)
    model = Flat().eval()
    x, y = torch.randn(37, 1, 8, 8), torch.randint(0, 6, (37,))
    res = evaluate(model, TensorDataset(x, y), batch_size=8)
    with torch.no_grad():
        logits = model(x)
    top5 = logits.topk(5, 1).indices
    assert res["n"] == 37
    assert res["top1"] == pytest.approx(100.0 * (logits.argmax(1) == y).double().mean().item())
    assert res["top5"] == pytest.approx(100.0 * (top5 == y[:, None]).any(1).double().mean().item())
    assert res["loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    crops = torch.randn(37, 10, 1, 8, 8)
    res10 = evaluate(model, TensorDataset(crops, y), batch_size=4)
    with torch.no_grad():
        avg = model(crops.flatten(0, 1)).view(37, 10, -1).mean(1)
    assert res10["top1"] == pytest.approx(100.0 * (avg.argmax(1) == y).double().mean().item())
    assert res10["loss"] == pytest.approx(F.cross_entropy(avg, y).item(), rel=1e-5)


def test_atomic_writes(tmp_path):
    path = tmp_path / "ck.pt"
    atomic_save({"a": torch.ones(2)}, path)

    def boom(f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, boom)
    assert torch.equal(load_checkpoint(path)["a"], torch.ones(2))  # the old file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt"]  # no temp file left behind
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        load_checkpoint(tmp_path / "none.pt")


# --------------------------------------------------------------------------------------------------
# Resume is exact
# --------------------------------------------------------------------------------------------------
def small_fmnist(n_train=384, n_val=128, augment=True):
    x, y = (
        D.load_fashion_mnist(train=True)
        if HAVE_FMNIST
        else (torch.randint(0, 256, (n_train, 1, 28, 28), dtype=torch.uint8), torch.randint(0, 10, (n_train,)))
    )
    train_tf, val_tf, _ = D._small_transforms("fmnist", 28, augment)
    train = D.Seeded(D.TensorImages(x[:n_train], y[:n_train], train_tf), seed=5)
    val = D.TensorImages(x[-n_val:], y[-n_val:], val_tf)
    return train, val


def wld_trainer(out, train, val, **kw):
    torch.manual_seed(0)
    teacher = fmnist_cnn()
    recipe = get_recipe("wld-fmnist", epochs=2, batch_size=64, lr=0.05, lr_schedule="step", lr_milestones=(1,))
    student = make_student(teacher, recipe)
    return Trainer(student, recipe, train, val, out, teacher=teacher, seed=5, log=None, progress=False, **kw)


def test_resume_is_exact(tmp_path):
    """Interrupted mid-epoch (after step 4) and at the end of epoch 1 (step 6 of 12), then resumed:
    weights, optimizer state and metrics equal the uninterrupted run's, bit for bit."""
    train, val = small_fmnist()
    full = wld_trainer(tmp_path / "full", train, val, log_every=2)
    s_full = full.fit()
    assert full.step == 12 and s_full["finished"]
    a = full.model.state_dict()
    assert float(full.model.features[0].alpha.detach()) != 0.0  # alpha was learnt
    untimed = lambda rows: [{k: v for k, v in r.items() if k != "time_s"} for r in rows]  # noqa: E731

    for stop in (4, 6):
        out = tmp_path / f"cut{stop}"
        s_cut = wld_trainer(out, train, val, log_every=2).fit(max_steps=stop)
        assert not s_cut["finished"] and s_cut["stopped_by"] == "max_steps" and s_cut["step"] == stop
        with pytest.raises(ValueError, match="--resume"):
            wld_trainer(out, train, val).fit()
        torch.manual_seed(123)  # the resumed run must not depend on the RNG state it starts with
        second = wld_trainer(out, train, val, log_every=2)
        s_res = second.fit(resume=True)
        assert second.step == 12
        b = second.model.state_dict()
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (stop, k)
        oa, ob = full.optimizer.state_dict()["state"], second.optimizer.state_dict()["state"]
        assert all(torch.equal(oa[i]["momentum_buffer"], ob[i]["momentum_buffer"]) for i in oa)
        assert untimed(full.metrics.epochs) == untimed(second.metrics.epochs)
        assert full.metrics.steps == second.metrics.steps
        assert s_full["val_top1"] == s_res["val_top1"]

    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("epoch,step,lr,train_loss")
    doc = json.loads((out / "metrics.json").read_text())
    assert len(doc["epochs"]) == 2 and doc["epochs"][0]["lam"] is not None
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert torch.equal(torch.load(out / "model.pt")["classifier.weight"], a["classifier.weight"])


def test_resume_rejects_another_recipe(tmp_path):
    train, val = small_fmnist(n_train=128)
    wld_trainer(tmp_path, train, val).fit(max_steps=1)
    torch.manual_seed(0)
    other = Trainer(ic_fmnist_cnn(), get_recipe("scratch-fmnist", batch_size=64), train, val, tmp_path, log=None)
    with pytest.raises(ValueError, match="different recipe"):
        other.fit(resume=True)


def test_amp_bf16_step_on_cpu(tmp_path):
    train, val = small_fmnist(n_train=64, n_val=64, augment=False)
    torch.manual_seed(0)
    model = ic_fmnist_cnn()
    w0 = model.features[0].weight.detach().clone()
    t = Trainer(model, get_recipe("scratch-fmnist", epochs=1, batch_size=32), train, val, tmp_path, amp=True, log=None)
    s = t.fit()
    assert s["step"] == 2 and np.isfinite(t.metrics.epochs[0]["train_loss"])
    assert not torch.equal(model.features[0].weight, w0) and model.features[0].weight.dtype == torch.float32


# --------------------------------------------------------------------------------------------------
# DDP: 2 processes, gloo
# --------------------------------------------------------------------------------------------------
def _ddp_data():
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(32, 1, 8, 8, generator=g), torch.randint(0, 6, (32,), generator=g))


def _engine_env(rank, world, port):
    """The environment torchrun gives a worker, so the engine's own init_distributed runs."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world)
    )


def _ddp_worker(rank, world, port, out):
    from ic_networks.training import watchdog
    from ic_networks.training.distributed import init_distributed, shutdown_distributed

    watchdog.arm(out)
    _engine_env(rank, world, port)
    torch.set_num_threads(1)
    init_distributed()
    ok = False
    try:
        torch.manual_seed(0)
        model = Flat()
        recipe = get_recipe("scratch-fmnist", epochs=1, batch_size=16, lr=0.1, weight_decay=0.0, lr_schedule="constant")
        t = Trainer(
            model, recipe, _ddp_data(), _ddp_data(), out, device="cpu", log=None, progress=False, overwrite=True
        )
        summary = t.fit()
        torch.save({"state": model.state_dict(), "summary": summary}, os.path.join(out, f"rank{rank}.pt"))
        ok = True
    finally:
        shutdown_distributed(ok)  # t (and its DDP wrapper) still alive here: the case that can hang


def _dying_peer_worker(rank, world, port, out):
    """Rank 1 dies (os._exit) in its second training step; rank 0 must fail with an error naming
    its rank, not hang."""
    from ic_networks.training import watchdog
    from ic_networks.training.distributed import init_distributed, shutdown_distributed

    watchdog.arm(out)
    _engine_env(rank, world, port)
    os.environ["IC_NETWORKS_DIST_TIMEOUT"] = "30"
    torch.set_num_threads(1)
    init_distributed()
    ok = False
    try:
        torch.manual_seed(0)
        recipe = get_recipe("scratch-fmnist", epochs=2, batch_size=8, lr=0.1, weight_decay=0.0, lr_schedule="constant")
        t = Trainer(
            Flat(), recipe, _ddp_data(), _ddp_data(), out, device="cpu", log=None, progress=False, overwrite=True
        )
        step = t._train_step

        def dying_step(x, y):
            if rank == 1 and t.step == 1:
                os._exit(3)
            step(x, y)

        t._train_step = dying_step
        try:
            t.fit()
        except BaseException as exc:  # recorded whatever it is: the test shows what rank 0 saw
            with open(os.path.join(out, f"error{rank}.txt"), "w") as fh:
                fh.write(f"{type(exc).__name__}: {exc}")
            return
        ok = True
    finally:
        shutdown_distributed(ok)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_gloo(tmp_path):
    import torch.multiprocessing as mp

    from ic_networks.training import watchdog

    ctx = mp.start_processes(
        _ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=False, start_method="spawn"
    )
    watchdog.join(ctx, 300, dump_dir=tmp_path, what="DDP trainer workers")  # a hang fails with every worker's stacks
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0["summary"]["world_size"] == 2 and r0["summary"]["step"] == 2
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), k  # replicas stay identical
    assert r0["summary"]["val_top1"] == r1["summary"]["val_top1"]  # all-reduced evaluation
    assert (tmp_path / "checkpoint.pt").is_file()

    # the same two steps in one process with the global batch: the gradients DDP averaged are the same
    torch.manual_seed(0)
    model = Flat()
    recipe = get_recipe("scratch-fmnist", epochs=1, batch_size=16, lr=0.1, weight_decay=0.0, lr_schedule="constant")
    ds = _ddp_data()
    # Both draw the same seeded permutation; the two ranks' batches of 8 interleave the single run's 16.
    Trainer(model, recipe, ds, ds, tmp_path / "single", device="cpu", log=None, progress=False).fit()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, r0["state"][k], rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------
def test_cli_demo_without_dataset(tmp_path, capsys):
    rc = icn.cli.main(["demo", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")])
    assert rc == 1
    err = capsys.readouterr().err
    assert "apt-get install dataset-fashion-mnist" in err
    assert not (tmp_path / "out").exists()


def test_demo_end_to_end_on_tiny_data(tmp_path, capsys, monkeypatch):
    from ic_networks.experiments.demo import run_demo
    from ic_networks.training import metrics

    figures = {}  # path -> the matplotlib Figure written there
    save = metrics.save_figure
    monkeypatch.setattr(
        metrics, "save_figure", lambda fig, path: figures.setdefault(str(path), fig) and save(fig, path)
    )
    res = run_demo(
        tiny_fmnist_dir(tmp_path), tmp_path / "demo", subset=384, epochs=1, wld_epochs=1, seeds=2, progress=False
    )
    assert [r["run"] for r in res["runs"]] == ["plain", "ic", "wld", "plain+ce"]
    assert res["seeds"] == [0, 1] and [p["seed"] for p in res["per_seed"]] == [0, 1]
    for p in res["per_seed"]:  # conversion keeps the plain model's function
        assert p["converted_top1_at_alpha0"] == p["runs"]["plain"]["top1"]
    assert res["train_images"] == 384 and res["test_images"] == 256
    plain = [p["runs"]["plain"]["top1"] for p in res["per_seed"]]
    ic = [p["runs"]["ic"]["top1"] for p in res["per_seed"]]
    assert res["runs"][0]["top1"] == pytest.approx(sum(plain) / 2) and res["runs"][0]["seeds"] == 2
    assert res["runs"][0]["top1_std"] == pytest.approx(abs(plain[0] - plain[1]) / math.sqrt(2))
    comp = {c["name"]: c for c in res["comparisons"]}
    assert comp["IC from scratch vs plain"]["mean"] == pytest.approx((ic[0] - plain[0] + ic[1] - plain[1]) / 2)
    assert len(res["ic_epochs_to_plain_final"]) == 2
    printed = capsys.readouterr().out
    assert res["table"] in printed and "| plain | plain CNN, from scratch | 29,178 | 1 |" in printed
    assert res["comparison_table"] in printed and ("within seed noise" in printed or "exceeds seed noise" in printed)
    assert json.loads((tmp_path / "demo" / "results.json").read_text())["table"] == res["table"]
    assert (tmp_path / "demo" / "curves.png").read_bytes()[:4] == b"\x89PNG"
    # the curves: accuracy on the test set, so named; 3 steps per run (< log_every): the loss panel
    # still has each run's epoch mean
    ax_loss, ax_acc = figures[str(tmp_path / "demo" / "curves.png")].axes
    assert ax_acc.get_title() == "test set accuracy"
    assert [ln.get_label() for ln in ax_loss.lines] == ["plain", "ic", "wld", "plain+ce"]
    assert all(len(ln.get_xdata()) == 1 for ln in ax_loss.lines)
    for seed in (0, 1):
        for run in ("plain", "ic", "wld", "plain+ce"):
            assert (tmp_path / "demo" / f"seed{seed}" / run / "metrics.csv").is_file()


def test_demo_mean_curves_plot(tmp_path):
    from ic_networks.experiments.demo import _mean_curves
    from ic_networks.training.metrics import plot_curves

    seeds = [
        {
            "epochs": [{"epoch": 1, "val_top1": v, "train_ce": loss}],
            "steps": [{"step": 10, "epoch": 0.5, "loss": loss, "ce": loss / 2}],
        }
        for v, loss in ((80.0, 1.0), (82.0, 3.0))
    ]
    mean = _mean_curves(seeds, offset=2)
    assert mean == {
        "epochs": [{"epoch": 1, "val_top1": 81.0, "train_ce": 2.0}],
        "steps": [{"epoch": 0.5, "loss": 2.0, "ce": 1.0}],
        "offset": 2,
    }
    assert plot_curves({"wld": mean}, tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_errors(tmp_path, capsys):
    assert icn.cli.main(["train", "--recipe", "wld-fmnist", "--out", str(tmp_path)]) == 1
    assert "--teacher" in capsys.readouterr().err
    assert icn.cli.main(["train", "--recipe", "scratch-cifar", "--out", str(tmp_path)]) == 1
    assert "--data" in capsys.readouterr().err


def tiny_fmnist_dir(root, n_train=512, n_test=256):
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("t10k", n_test)):
        write_idx(root / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, n, dtype=np.uint8))
    return root


def test_cli_train_then_eval(tmp_path, capsys):
    data = str(tiny_fmnist_dir(tmp_path))
    out = tmp_path / "run"
    args = [
        "train",
        "--recipe",
        "scratch-fmnist",
        "--model",
        "fmnist_cnn",
        "--epochs",
        "1",
        "--data",
        data,
        "--subset",
        "384",
        "--out",
        str(out),
    ]
    assert icn.cli.main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["step"] == 3 and summary["train_samples"] == 384
    for name in ("checkpoint.pt", "model.pt", "metrics.csv", "metrics.json", "curves.png"):
        assert (out / name).is_file(), name
    assert (
        icn.cli.main(["eval", "--checkpoint", str(out / "checkpoint.pt"), "--data", data, "--ten-crop", "--json"]) == 0
    )
    res = json.loads(capsys.readouterr().out)
    assert res["single_crop"]["top1"] == pytest.approx(summary["val_top1"]) and res["ten_crop"]["n"] == 256
    assert icn.cli.main(args) == 1  # the folder holds a run: refuse to clobber it
    assert "--resume" in capsys.readouterr().err
    assert icn.cli.main(args + ["--resume"]) == 0  # a finished run: nothing left to train, same result
    assert json.loads(capsys.readouterr().out)["val_top1"] == summary["val_top1"]
    # WLD from that run's weights, stopped after one step
    rc = icn.cli.main(
        [
            "train",
            "--recipe",
            "wld-fmnist",
            "--teacher",
            str(out / "model.pt"),
            "--data",
            data,
            "--max-steps",
            "1",
            "--out",
            str(tmp_path / "wld"),
        ]
    )
    stopped = json.loads(capsys.readouterr().out)
    assert rc == 0 and not stopped["finished"] and stopped["stopped_by"] == "max_steps"


# --------------------------------------------------------------------------------------------------
# Real training reaches a stated accuracy
# --------------------------------------------------------------------------------------------------
def test_fmnist_ic_cnn_reaches_80_percent(fmnist, tmp_path):
    """IC CNN, 2 epochs on 6,000 training images (batch 32): >= 80% on 2,000 test images within
    90 s of CPU time (all threads; CPU rather than wall time, so a loaded machine does not fail it).
    Measured on a loaded 2-core machine: 84.05% in about 21 s of CPU time single-threaded."""
    train = Subset(fmnist.train, range(6000))
    val = Subset(fmnist.val, range(2000))
    torch.manual_seed(0)
    model = ic_fmnist_cnn()
    t0 = time.process_time()
    s = Trainer(model, get_recipe("scratch-fmnist", epochs=2, batch_size=32), train, val, tmp_path, log=None).fit()
    elapsed = time.process_time() - t0
    assert s["val_top1"] >= 80.0, s
    assert elapsed < 90, elapsed


def test_ddp_dead_peer_gives_an_error_naming_the_rank(tmp_path):
    import torch.multiprocessing as mp

    from ic_networks.training import watchdog

    ctx = mp.start_processes(
        _dying_peer_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=False, start_method="spawn"
    )
    p0, p1 = ctx.processes
    try:
        p0.join(300)  # rank 0 must notice the dead peer by itself (not ctx.join: it would kill rank 0)
        if p0.is_alive():
            pytest.fail("rank 0 still running 300 s after its peer died\n" + watchdog.stack_report([p0.pid], tmp_path))
        p1.join(30)
    finally:
        for p in (p0, p1):
            if p.is_alive():
                p.kill()
    err = tmp_path / "error0.txt"
    msg = err.read_text() if err.is_file() else "(rank 0 raised nothing)"
    assert p1.exitcode == 3 and p0.exitcode == 0, (p0.exitcode, p1.exitcode, msg)
    assert msg.startswith("RuntimeError: rank 0 of 2"), msg
