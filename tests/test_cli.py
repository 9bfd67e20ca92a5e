"""The command line's text: descriptions, usage errors, units and what it reports (in-process,
through ``ic_networks.cli.main``)."""

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

import ic_networks as icn
import ic_networks.cli
from helpers import VERBS, tiny_fmnist_dir
from ic_networks import bench
from ic_networks.cli import build_parser, main

REST = re.compile(r"``|:(mod|func|class|meth|attr):`")


def _help(capsys, argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0, argv
    return capsys.readouterr().out


def test_every_verb_has_a_one_line_description_in_both_helps(capsys):
    overview = _help(capsys, ["--help"])
    helps = {a.dest: a.help for a in next(a for a in build_parser()._actions if a.dest == "command")._choices_actions}
    assert sorted(helps) == sorted(VERBS)
    for verb in VERBS:
        line = helps[verb]
        assert line, verb
        assert re.search(rf"^\s+{re.escape(verb)}\s+{re.escape(line[:30])}", overview, re.M), verb
        text = _help(capsys, [verb, "--help"])
        first = text.split("\n\n")[1]  # usage, blank line, the description
        assert first.split(".")[0].lower().split() == line.rstrip(".").split(".")[0].lower().split(), (verb, first)
        assert not REST.search(text), (verb, REST.search(text).group(0))


def test_bench_help_is_plain_text(capsys):
    text = _help(capsys, ["bench", "--help"])
    assert "conv      - nn.Conv2d, the floor" in text and "ic_networks.reference" in text
    from ic_networks.cli.common import plain

    assert (
        plain("the ``ic`` op of :mod:`ic_networks.bench` and :func:`~.evaluate.evaluate`, `x`")
        == "the ic op of ic_networks.bench and evaluate, x"
    )


def test_bench_refuses_an_empty_selection(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "--skip-layers", "--skip-models"])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert "usage: ic-networks bench" in err and "nothing to measure" in err


def test_bench_names_the_model_batch_and_image_size(capsys, monkeypatch):
    models = bench.bench_models
    monkeypatch.setattr(bench, "bench_models", lambda *a, **kw: models(*a, names=("resnet18",), **kw))
    assert main(["bench", "--skip-layers", "--model-batch", "1", "--image-size", "64", "--model-repeats", "1"]) == 0
    out = capsys.readouterr().out
    first = out.splitlines()[0]
    assert "model batch N=1 at 64x64" in first and "layer batch" not in first
    assert "| ic_resnet18 |" in out


def test_bench_table_shows_n_a_for_an_unmeasured_saved_size():
    def row(variant, saved):
        return {
            "shape": "512@7",
            "variant": variant,
            "fwd_ms": 1.0,
            "fwdbwd_ms": 2.0,
            "infer_ms": 0.5,
            "saved_mb": saved,
            "out_mb": 0.1,
        }

    text = bench.format_tables(
        [row("conv", 0.2), row("compiled", None), row("reference", float("nan"))], [], torch.device("cpu"), 4
    )
    lines = {ln.split(" | ")[1]: ln for ln in text.splitlines() if ln.startswith("| 512@7")}
    assert "nan" not in text
    assert lines["compiled"].split(" | ")[5] == "n/a" and "| n/a |" in lines["reference"]
    assert lines["conv"].split(" | ")[5] == "0.2"
    assert "layer batch N=4" in text.splitlines()[0] and "model batch" not in text


def test_flops_scales_its_units(capsys):
    assert main(["flops", "fmnist_cnn"]) == 0
    out = capsys.readouterr().out
    header = next(ln for ln in out.splitlines() if ln.startswith("model"))
    assert "MMACs" in header and "GMACs" not in header
    rows = [ln.split() for ln in out.splitlines() if ln.startswith(("fmnist_cnn", "ic_fmnist_cnn"))]
    assert len(rows) == 2
    assert float(rows[0][2]) > 1.0 and float(rows[1][2]) > float(rows[0][2])  # MMACs, IC > plain
    assert rows[0][1].endswith("K")  # 29,178 parameters
    assert main(["flops", "resnet18"]) == 0
    out = capsys.readouterr().out
    assert "GMACs" in out and re.search(r"^resnet18\s+11\.69M\s+1\.82\s", out, re.M)


def test_figures_without_arguments_writes_into_runs_figures(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["figures", "--resolution", "50"]) == 0
    for name in ("fig2a_regions.png", "fig2b_xor.png"):
        assert (tmp_path / "runs" / "figures" / name).read_bytes()[:4] == b"\x89PNG"
    assert "runs/figures/fig2b_xor.png" in capsys.readouterr().out


def test_gradcam_without_arguments_uses_a_shipped_image(tmp_path, monkeypatch, capsys):
    """No dataset (an empty --data folder is not used for images 0-9; IC_FMNIST_DIR points nowhere):
    the shipped test image 0, random weights with the warning, runs/gradcam/gradcam.png."""
    pytest.importorskip("captum")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IC_FMNIST_DIR", str(tmp_path / "no-dataset"))
    assert main(["gradcam"]) == 0
    err = capsys.readouterr().err
    assert "Fashion-MNIST not found" in err and "random weights" in err
    png = tmp_path / "runs" / "gradcam" / "gradcam.png"
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_shipped_images_are_the_test_set_images(tmp_path):
    from ic_networks.cli.viz import fmnist_test_image
    from ic_networks.training.data import FMNIST_CLASSES
    from ic_networks.viz.samples import bundled_fmnist_test_image

    image, label = bundled_fmnist_test_image(0)
    assert image.shape == (28, 28) and image.dtype == np.uint8 and FMNIST_CLASSES[label] == "Ankle boot"
    with pytest.raises(ValueError, match="0 to 9"):
        bundled_fmnist_test_image(10)
    try:
        from ic_networks.training.data import load_fashion_mnist

        images, labels = load_fashion_mnist(train=False)
    except FileNotFoundError:
        return
    for i in range(10):
        image, label = fmnist_test_image(i)
        assert np.array_equal(image, images[i, 0].numpy()) and label == int(labels[i])


def test_gradcam_trains_a_model_given_no_weights(tmp_path, capsys):
    """With a training set (a tiny one here), models without weights are trained first: no
    random-weights warning; --train-steps 0 keeps them random."""
    pytest.importorskip("captum")

    data = tiny_fmnist_dir(tmp_path, n_train=64, n_test=16)
    out = tmp_path / "cam.png"
    assert main(["gradcam", "--data", str(data), "--image", "fmnist:3", "--train-steps", "2", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "training the plain model for 2 steps" in err and "training the IC model" in err
    assert "random weights" not in err and Image.open(out).format == "PNG"
    assert main(["gradcam", "--data", str(data), "--train-steps", "0", "--out", str(out)]) == 0
    assert "random weights" in capsys.readouterr().err


def test_train_summary_names_the_model_eval_takes_and_max_steps_is_no_interruption(tmp_path, capsys):
    """``train`` in a log (stderr is not a terminal here): a progress line after the first step;
    --max-steps stops a run without calling it interrupted; the summary's model name is the one
    ``eval --model`` takes."""

    data = str(tiny_fmnist_dir(tmp_path))
    out = tmp_path / "run"
    argv = _train_argv(data, out)
    assert main(argv + ["--max-steps", "2"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["finished"] is False and summary["stopped_by"] == "max_steps" and summary["step"] == 2
    assert "interrupted" not in summary and summary["model"] == "fmnist_cnn"
    assert re.search(r"^epoch 1/1  batch 1/3  step 1/3  train loss \d", captured.err, re.M), captured.err
    assert "--resume continues" in captured.err
    assert main(argv + ["--resume"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["finished"] is True and summary["model"] == "fmnist_cnn" and "stopped_by" not in summary
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(out / "model.pt"),
                "--recipe",
                "scratch-fmnist",
                "--model",
                summary["model"],
                "--data",
                data,
                "--json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["single_crop"]["top1"] == pytest.approx(summary["val_top1"])


def _train_argv(data, out):
    """``ic-networks train``: the small CNN for one epoch on 384 images of ``data``, into ``out``."""
    return ["train", "--recipe", "scratch-fmnist", "--model", "fmnist_cnn", "--epochs", "1"] + [
        "--data", data, "--subset", "384", "--out", str(out),
    ]  # fmt: skip


def test_cli_errors(tmp_path, capsys):
    assert icn.cli.main(["train", "--recipe", "wld-fmnist", "--out", str(tmp_path)]) == 1
    assert "--teacher" in capsys.readouterr().err
    assert icn.cli.main(["train", "--recipe", "scratch-cifar", "--out", str(tmp_path)]) == 1
    assert "--data" in capsys.readouterr().err


def test_cli_train_then_eval(tmp_path, capsys):
    data = str(tiny_fmnist_dir(tmp_path))
    out = tmp_path / "run"
    args = _train_argv(data, out)
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
