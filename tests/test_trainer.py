"""The Trainer: evaluation, atomic checkpoints, exact resume, AMP, and a real Fashion-MNIST run that
must reach a stated accuracy."""

import json
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import Subset, TensorDataset

from helpers import HAVE_FMNIST, Flat
from ic_networks.io import atomic_save, atomic_write
from ic_networks.models.cnn import fmnist_cnn, ic_fmnist_cnn
from ic_networks.training import data as D
from ic_networks.training.checkpoint import load_checkpoint
from ic_networks.training.evaluate import evaluate
from ic_networks.training.model_factory import make_student
from ic_networks.training.recipes import get_recipe
from ic_networks.training.trainer import Trainer


# --------------------------------------------------------------------------------------------------
# Evaluation, checkpoints
# --------------------------------------------------------------------------------------------------
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
