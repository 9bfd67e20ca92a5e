"""Training schedules (lambda, alpha ramp, lr factor) and the named recipes."""

import numpy as np
import pytest
import torch
from torch import nn

import ic_networks as icn
import ic_networks.cli
from helpers import tiny_dataset
from ic_networks.models.cnn import fmnist_cnn, ic_fmnist_cnn
from ic_networks.models.mobilenet import IcDepthwiseSeparable
from ic_networks.nn import ic_layers
from ic_networks.training import trainer as trainer_mod
from ic_networks.training.recipes import RECIPES, get_recipe
from ic_networks.training.schedules import AlphaRamp, LambdaSchedule, LrFactor
from ic_networks.training.trainer import Trainer


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
    layers = icn.ic_layers(model)
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
        student,
        recipe,
        tiny_dataset(),
        tiny_dataset(),
        tmp_path,
        teacher=teacher,
        device="cpu",
        log=None,
        progress=False,
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
