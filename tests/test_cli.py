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
from ic_networks import bench, bench_floor, bench_memory
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
    assert "conv      - nn.Conv2d, the baseline" in text and "ic_networks.reference" in text
    assert "floor / conv" in text and "ic / floor" in text
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


def test_bench_peak_of_deltas_by_hand():
    assert bench_memory.peak_of_deltas([100, 50, -100, 30]) == 150
    assert bench_memory.peak_of_deltas([100, -100, 80, 40, -120, 10]) == 120
    assert bench_memory.peak_of_deltas([]) == 0
    assert bench_memory.peak_of_deltas([-64, 32]) == 0  # frees of memory held before: never below the start
    assert bench_memory.peak_of_deltas(iter([8, 8, -16, 24])) == 24


def test_bench_models_report_the_train_step_peak():
    """A real tiny run: every model row has a peak above its gradients' size (the measured step
    allocates them) and its ratio to the plain model; the table prints both columns."""
    import torchvision

    rows = bench.bench_models(torch.device("cpu"), 1, 64, 1, names=("resnet18",))
    assert [r["model"] for r in rows] == ["resnet18", "ic_resnet18"]
    by = {r["model"]: r for r in rows}
    models = {"resnet18": torchvision.models.resnet18(), "ic_resnet18": icn.models.ic_resnet18()}
    for name, r in by.items():
        grads_mb = sum(p.numel() for p in models[name].parameters()) * 4 / 2**20
        assert r["peak_mb"] > grads_mb > 0, (name, r["peak_mb"], grads_mb)
    assert by["resnet18"]["peak_over_plain"] == 1.0
    assert by["ic_resnet18"]["peak_over_plain"] == pytest.approx(
        by["ic_resnet18"]["peak_mb"] / by["resnet18"]["peak_mb"]
    )
    text = bench.format_tables([], rows, torch.device("cpu"), 1)
    assert "| model | train step ms | / plain | eval forward ms | / plain | peak MB | ic / plain peak |" in text
    for name, r in by.items():
        assert r["infer_ms"] > 0
        cells = next(ln for ln in text.splitlines() if ln.startswith(f"| {name} |")).strip("| ").split(" | ")
        assert cells[3] == f"{r['infer_ms']:.1f}"
        assert cells[4] == f"{r['infer_ms'] / by['resnet18']['infer_ms']:.2f}x"
        assert float(cells[5]) > 0 and cells[5] == f"{r['peak_mb']:.1f}"
        assert cells[6] == f"{r['peak_over_plain']:.2f}x"


def test_bench_model_eval_floor_by_hand():
    """The model floor is the plain time plus, per IC layer, its forward MACs at the rate of the conv
    it replaces (that conv's share of the plain time) and its infer passes at the bandwidth."""
    a = bench_floor.stage_shape(("64@56", 64, 56, 1), 2)
    b = bench_floor.stage_shape(("512@7", 512, 7, 1), 2)
    f = bench_floor.model_eval_floor(100.0, [(a, 0.2), (b, 0.1)], 1e9, 4)
    macs = 20.0 * bench_floor.extra_macs(a)["fwd"] / bench_floor.conv_macs(a) + 10.0 * bench_floor.extra_macs(b)[
        "fwd"
    ] / bench_floor.conv_macs(b)
    nbytes = 3 * 4 * (a.out_elems + b.out_elems)  # x, y and u of each, x the size of y here
    assert f["macs_ms"] == pytest.approx(macs) and f["memory_ms"] == pytest.approx(nbytes / 1e6)
    assert f["floor_ms"] == pytest.approx(100.0 + macs + nbytes / 1e6) and f["floor_over_plain"] > 1.0
    assert bench_floor.model_eval_floor(50.0, [], 1e9, 4)["floor_ms"] == 50.0


def test_bench_models_report_the_eval_floor():
    """A real tiny run with a bandwidth: the IC row's eval floor lies above the plain model's time;
    the shares of its convs are one per IC layer, with the shapes the IC layers see."""
    import torchvision

    plain, ic = torchvision.models.resnet18().eval(), icn.models.ic_resnet18().eval()
    x = torch.randn(1, 3, 64, 64)
    shares = bench.conv_shares(plain, ic, lambda: plain(x), torch.device("cpu"), 2)
    ic_layers = [m for m in ic.modules() if isinstance(m, icn.IcConv2d)]
    assert len(shares) == len(ic_layers) == 16  # every 3x3 conv of the basic blocks
    assert 0 < sum(share for _, share in shares) < 1
    assert [(s.c_in, s.c_out, s.stride, s.h) for s, _ in shares][:2] == [(64, 64, 1, 16), (64, 64, 1, 16)]
    rows = bench.bench_models(torch.device("cpu"), 1, 64, 1, names=("resnet18",), bandwidth=1e10)
    by = {r["model"]: r for r in rows}
    assert "infer_floor_ms" not in by["resnet18"] and by["ic_resnet18"]["infer_floor_ms"] > by["resnet18"]["infer_ms"]
    text = bench.format_tables([], rows, torch.device("cpu"), 1)
    assert text.count("| eval floor / plain | eval ic / floor |") == 1
    cells = next(ln for ln in text.splitlines() if ln.startswith("| ic_resnet18 |")).strip("| ").split(" | ")
    floor = by["ic_resnet18"]["infer_floor_ms"]
    assert cells[7:] == [f"{floor / by['resnet18']['infer_ms']:.2f}x", f"{by['ic_resnet18']['infer_ms'] / floor:.2f}x"]


def test_bench_model_table_shows_n_a_without_a_peak():
    rows = [
        {"model": m, "step_ms": t, "batch": 2, "image_size": 64} for m, t in (("resnet50", 10.0), ("ic_resnet50", 12.0))
    ]
    text = bench.format_tables([], rows, torch.device("cpu"), 2)
    assert "| ic_resnet50 | 12.0 | 1.20x | n/a | n/a | n/a | n/a |" in text


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


def test_bench_floor_counts_by_hand():
    """The floor model's MACs and bytes for 64@56 at N=8 (stride 1 and 2), counted by hand."""
    s = bench_floor.stage_shape(("64@56", 64, 56, 1), 8)
    out = 8 * 64 * 56 * 56  # output elements = input elements at stride 1
    assert (s.ho, s.wo, s.x_elems, s.out_elems) == (56, 56, out, out)
    assert bench_floor.conv_macs(s) == out * 64 * 9 == 924_844_032
    m = bench_floor.extra_macs(s)
    assert m["one_by_one"] == out * 64 == 102_760_448  # 1/9 of the conv's
    assert m["box_adds"] == out * 4  # 2 adds along each axis of a 3x3 window
    assert m["fwd"] == out * 64 + out * 2 and m["bwd"] == 2 * out * 64 + out * 2
    # float32, fixed alpha (a bit mask): infer = x + y + u; fwd+bwd adds the mask twice, g, g + gz, x, dx twice
    b = bench_floor.extra_bytes(s, 4, 1 / 8)
    assert b == {"infer": 3 * out * 4, "fwd+bwd": 8 * out * 4 + 2 * out / 8}
    assert len(bench_floor.memory_passes(s, 4, 1 / 8)) == 9
    # bf16 activations, relu(z) saved (alpha learns): every pass at 2 bytes
    assert bench_floor.extra_bytes(s, 2, 2)["fwd+bwd"] == 10 * out * 2

    s2 = bench_floor.stage_shape(("64@56/s2", 64, 56, 2), 8)
    o2 = 8 * 64 * 28 * 28
    assert (s2.ho, s2.out_elems, s2.s_elems) == (28, o2, o2)
    assert bench_floor.conv_macs(s2) == o2 * 576 and bench_floor.extra_macs(s2)["one_by_one"] == o2 * 64
    # x is 4 outputs: infer = x + 2 outputs; dW' takes S (written and read, 2 outputs) instead of x
    b2 = bench_floor.extra_bytes(s2, 4, 1 / 8)
    assert b2 == {"infer": 6 * o2 * 4, "fwd+bwd": (4 + 2 + 2 + 2 + 2 * 4) * o2 * 4 + 2 * o2 / 8}

    grouped = bench_floor.LayerShape(2, 32, 64, 10, 10, groups=4)  # 1x1 in 4 groups, box sum on 32 channels
    assert bench_floor.extra_macs(grouped)["one_by_one"] == 2 * 64 * 100 * 8
    assert bench_floor.extra_macs(grouped)["box_adds"] == 2 * 32 * 100 * 4


def test_bench_floor_time_is_the_formula():
    # 10 ms conv doing 1e9 MACs; 1e8 extra MACs at its rate = 1 ms; 1e6 bytes at 1 GB/s = 1 ms
    assert bench_floor.floor_time(10.0, 1e9, 1e8, 1e6, 1e9) == pytest.approx((12.0, 1.0, 1.0))
    assert bench_floor.floor_time(4.0, 2e9, 0.0, 0.0, 1e9) == (4.0, 0.0, 0.0)  # nothing extra: the conv


def test_bench_floor_table_by_hand():
    """Floor rows and their table from hand-made layer rows: the fwd+bwd rate is 3x the forward's
    MACs over the conv's fwd+bwd time, and each ratio is the rows' times over each other."""

    def row(variant, fb, inf):
        times = {"fwd_ms": 1.0, "fwdbwd_ms": fb, "infer_ms": inf, "saved_mb": 1.0, "out_mb": 1.0}
        return {"shape": "512@7", "variant": variant, **times}

    layers = [row("conv", 3.0, 1.0), row("ic", 4.5, 1.5), row("reference", 5.4, 1.2)]
    stage = ("512@7", 512, 7, 1)
    s = bench_floor.stage_shape(stage, 2)
    floors = bench_floor.floor_rows(layers, [stage, ("64@56", 64, 56, 1)], 2, 1e9, 4, 1 / 8)
    assert [(r["shape"], r["mode"]) for r in floors] == [("512@7", "fwd+bwd"), ("512@7", "infer")]
    fb, inf = floors
    macs, nbytes = bench_floor.extra_macs(s), bench_floor.extra_bytes(s, 4, 1 / 8)
    assert fb["conv_macs"] == 3 * bench_floor.conv_macs(s) and inf["conv_macs"] == bench_floor.conv_macs(s)
    assert fb["macs_ms"] == pytest.approx(3.0 * (macs["fwd"] + macs["bwd"]) / fb["conv_macs"])
    assert inf["macs_ms"] == pytest.approx(1.0 * macs["fwd"] / inf["conv_macs"])
    assert fb["memory_ms"] == pytest.approx(nbytes["fwd+bwd"] / 1e6) and inf["extra_bytes"] == nbytes["infer"]
    for r, conv in ((fb, 3.0), (inf, 1.0)):
        assert r["floor_ms"] == pytest.approx(conv + r["macs_ms"] + r["memory_ms"])
        assert r["floor_over_conv"] >= 1.0
    assert fb["over_floor"] == pytest.approx({"ic": 4.5 / fb["floor_ms"], "reference": 5.4 / fb["floor_ms"]})

    text = bench.format_tables(layers, [], torch.device("cpu"), 2, floor_rows=floors)
    assert "1.0 GB/s" in text and "activations 4 bytes, saved relu state bit mask" in text
    header = next(ln for ln in text.splitlines() if ln.startswith("| shape | mode |"))
    assert header.endswith("| floor / conv | ic / conv | ic / floor | reference / ic |")
    cells = next(ln for ln in text.splitlines() if ln.startswith("| 512@7 | infer |")).strip("| ").split(" | ")
    assert cells[7] == f"{inf['floor_over_conv']:.2f}x" and cells[8] == "1.50x"
    assert cells[9] == f"{1.5 / inf['floor_ms']:.2f}x" and cells[10] == "0.80x"  # 1.2 / 1.5
    # the fused route's rows (CUDA) get their own three columns
    fused = bench.format_tables(layers + [row("ic-fused", 3.6, 1.1)], [], torch.device("cpu"), 2, floor_rows=floors)
    assert "| ic / floor | reference / ic | ic-fused / conv | ic-fused / floor | reference / ic-fused |" in fused
    cells = next(ln for ln in fused.splitlines() if ln.startswith("| 512@7 | fwd+bwd |")).strip("| ").split(" | ")
    assert cells[11:] == ["1.20x", f"{3.6 / fb['floor_ms']:.2f}x", "1.50x"]  # 3.6 / 3, 5.4 / 3.6
    # no floor rows: no floor table
    assert "floor" not in bench.format_tables(layers, [], torch.device("cpu"), 2)


@pytest.mark.parametrize("extra", [[], ["--channels-last", "--autocast", "bf16"]], ids=["fp32", "cl-bf16"])
def test_bench_reports_the_floor(extra, tmp_path, capsys):
    """A real run of one small shape: the floor table follows the layer table, the floor is at least
    the conv's time (by construction), and the JSON carries the floor rows and the copy bandwidth."""
    out = tmp_path / "bench.json"
    argv = ["bench", "--shapes", "512@7", "--batch", "1", "--repeats", "1", "--no-compile", "--skip-models"]
    assert main(argv + extra + ["--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| floor / conv | ic / conv | ic / floor | reference / ic |" in text
    lines = {ln.split(" | ")[1]: ln.strip("| ").split(" | ") for ln in text.splitlines() if ln.startswith("| 512@7 |")}
    for mode in ("fwd+bwd", "infer"):
        cells = lines[mode]
        assert float(cells[7].rstrip("x")) >= 1.0  # floor / conv
        assert all(c.endswith("x") for c in cells[8:11]), cells
    doc = json.loads(out.read_text())
    assert doc["copy_bandwidth_gbs"] > 0
    assert [r["mode"] for r in doc["floor"]] == ["fwd+bwd", "infer"]
    for r in doc["floor"]:
        assert r["floor_ms"] >= r["conv_ms"] and r["act_bytes"] == (2 if extra else 4)
        assert set(r["over_floor"]) == {"ic", "reference"}


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
