"""The demo (ic_networks.experiments.demo): its CLI without data, an end-to-end run on tiny data, its plot."""

import json
import math

import pytest

import ic_networks as icn
import ic_networks.cli
from helpers import tiny_fmnist_dir


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
