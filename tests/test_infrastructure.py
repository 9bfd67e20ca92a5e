"""Shared infrastructure: ic_networks.io (atomic saves, safe loading, state_dict unwrapping), the one
IC-layer predicate, the command line package, optional dependencies (extras), and the package's
public names (``convert``/``profile`` are functions, their modules have their own names)."""

import importlib
import os
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import ic_networks as icn
from helpers import VERBS
from ic_networks import io
from ic_networks.cli import build_parser, main
from ic_networks.models.cnn import fmnist_cnn, ic_fmnist_cnn
from ic_networks.models.mobilenet import DepthwiseSeparable, IcDepthwiseSeparable, ic_mobilenet_cifar
from ic_networks.nn import IC_PARAM_NAMES, ic_keys, ic_layers, is_ic_layer
from test_data_safety import _Payload  # unpickling it creates a marker file

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------------
# ic_networks.io: atomic writes
# --------------------------------------------------------------------------------------------------
def test_atomic_write_fsyncs_file_and_folder_and_renames_from_the_same_folder(tmp_path, monkeypatch):
    synced, replaced = [], []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        synced.append(os.path.isdir(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else None)
        return real_fsync(fd)

    def replace(src, dst):
        replaced.append((Path(src), Path(dst)))
        assert Path(src).is_file()  # written and closed before the rename
        return real_replace(src, dst)

    monkeypatch.setattr(io.os, "fsync", fsync)
    monkeypatch.setattr(io.os, "replace", replace)
    path = tmp_path / "sub" / "ck.pt"  # the folder is created
    assert io.atomic_save({"w": torch.arange(3)}, path) == path
    ((src, dst),) = replaced
    assert src.parent == dst.parent == path.parent and dst == path and src != path
    if synced[0] is not None:
        assert synced == [False, True]  # the file, then the folder that holds the new name
    else:
        assert len(synced) == 2
    assert torch.equal(io.load(path)["w"], torch.arange(3))
    assert sorted(p.name for p in path.parent.iterdir()) == ["ck.pt"]


def test_atomic_write_failure_keeps_the_old_file(tmp_path):
    path = tmp_path / "metrics.json"
    io.atomic_write_text("old\n", path)

    def boom(f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        io.atomic_write(path, boom)
    assert path.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["metrics.json"]
    with pytest.raises(ValueError, match="mode"):
        io.atomic_write(path, lambda f: None, mode="a")


def test_detection_and_training_and_convert_share_the_one_atomic_save():
    from ic_networks.cli import detection as det_cli
    from ic_networks.cli import models as models_cli
    from ic_networks.training import trainer

    assert det_cli.atomic_save is models_cli.atomic_save is trainer.atomic_save is io.atomic_save


# --------------------------------------------------------------------------------------------------
# ic_networks.io: loading
# --------------------------------------------------------------------------------------------------
def test_load_is_weights_only_with_a_clear_error(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"model": {"w": torch.zeros(1)}, "extra": _Payload(marker)}, tmp_path / "ckpt.pt")
    for load in (lambda p: io.load(p), lambda p: io.read_state_dict(p), lambda p: io.load_weights(nn.Linear(1, 1), p)):
        with pytest.raises(RuntimeError, match=r"cannot read .* safely.*Unsupported global"):
            load(tmp_path / "ckpt.pt")
    assert not marker.exists()  # refused before anything ran
    path = tmp_path / "module.pt"
    torch.save(nn.Linear(2, 2), path)  # a pickled module, not a state_dict
    with pytest.raises(RuntimeError, match=r"weights: cannot read .* safely: it pickles Python objects.*state_dict"):
        io.load(path, "weights")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(RuntimeError, match="checkpoint: cannot read"):
        io.load(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError, match="teacher: no such file"):
        io.load(tmp_path / "none.pt", "teacher")
    with pytest.raises(TypeError, match="checkpoint: expected a path"):
        io.load(123)


def test_unwrap_state_dict():
    w = torch.ones(2)
    assert io.unwrap_state_dict({"a.weight": w}) == {"a.weight": w}
    for wrapped in (
        {"model": {"a.weight": w}, "epoch": 3},
        {"state_dict": {"a.weight": w}, "meta": {}},
        {"module.a.weight": w},  # DistributedDataParallel
        {"_orig_mod.a.weight": w},  # torch.compile
        {"model": {"module._orig_mod.a.weight": w}},  # a compiled model inside DDP, in a checkpoint
    ):
        assert io.unwrap_state_dict(wrapped) == {"a.weight": w}, wrapped
    # a prefix that only some keys carry is a real child named "module": kept
    assert set(io.unwrap_state_dict({"module.x": w, "fc.x": w})) == {"module.x", "fc.x"}
    with pytest.raises(RuntimeError, match="weights: does not hold a state_dict"):
        io.unwrap_state_dict({"a": 1})
    with pytest.raises(RuntimeError, match="ckpt: does not hold a state_dict"):
        io.unwrap_state_dict([w], "ckpt")
    with pytest.raises(TypeError, match="weights: expected a path or a state_dict"):
        io.read_state_dict(3)


def test_load_weights_one_behaviour_everywhere(tmp_path):
    from ic_networks import training

    assert training.load_weights is io.load_weights  # the trainer's, the CLI's and the zoo's loader
    plain = fmnist_cnn()
    ddp_ckpt = {"model": {"module." + k: v for k, v in plain.state_dict().items()}, "epoch": 1}
    torch.save(ddp_ckpt, tmp_path / "ckpt.pt")
    # plain -> plain (strict) and plain -> IC (only all IC keys missing) from the same wrapped file
    loaded = io.load_weights(fmnist_cnn(), tmp_path / "ckpt.pt")
    ic = io.load_weights(ic_fmnist_cnn(), str(tmp_path / "ckpt.pt"))
    x = torch.randn(2, 1, 28, 28)
    for m in ic_layers(ic):
        m.set_alpha(0.0)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), plain.eval()(x))
        assert torch.equal(ic.eval()(x), plain(x))
    partial = dict(ic.state_dict())
    partial.pop(sorted(ic_keys(ic))[0])
    with pytest.raises(RuntimeError, match="missing keys"):
        io.load_weights(ic_fmnist_cnn(), partial)
    with pytest.raises(RuntimeError, match="unexpected keys"):
        io.load_weights(fmnist_cnn(), ic.state_dict())
    with pytest.raises(RuntimeError, match="teacher: cannot load"):
        io.load_weights(fmnist_cnn(num_classes=3), plain.state_dict(), what="teacher")


# --------------------------------------------------------------------------------------------------
# The IC-layer predicate
# --------------------------------------------------------------------------------------------------
def test_is_ic_layer_covers_every_ic_layer_type():
    conv = icn.IcConv2d(3, 4, 3, padding=1)
    pair = IcDepthwiseSeparable(3, 4)
    assert is_ic_layer(conv) and is_ic_layer(pair)
    assert is_ic_layer(IcDepthwiseSeparable(3, 4, alpha_mode="learnable"))
    for not_ic in (nn.Conv2d(3, 4, 3), DepthwiseSeparable(3, 4), nn.Sequential(conv), nn.Linear(2, 2)):
        assert not is_ic_layer(not_ic), not_ic
    assert ic_layers(nn.Sequential(conv, pair, nn.ReLU())) == [conv, pair]
    assert icn.is_ic_layer is is_ic_layer and icn.ic_layers is ic_layers
    with pytest.raises(TypeError, match="model"):
        ic_layers("resnet")


def test_every_consumer_counts_the_mobilenet_pairs():
    from ic_networks.detection import count_ic_layers
    from ic_networks.training.schedules import AlphaRamp
    from ic_networks.training.schedules import ic_layers as schedule_layers

    model = ic_mobilenet_cifar()
    pairs = [m for m in model.modules() if isinstance(m, IcDepthwiseSeparable)]
    assert len(pairs) == 13 and not any(isinstance(m, icn.IcConv2d) for m in model.modules())
    assert schedule_layers(model) == pairs  # the trainer's alpha ramp and alpha logging
    assert count_ic_layers(model) == 13
    with torch.device("meta"):
        assert icn.profile(ic_mobilenet_cifar(), (1, 3, 32, 32)).ic_layers == 13
    AlphaRamp(model, 2, 0.0, 0.5)(1)
    assert all(float(m.alpha) == 0.5 for m in pairs)
    converted = icn.convert(model)  # the stem's 3x3 conv becomes IC; the pairs, already IC, keep their convs
    assert isinstance(converted.stem[0], icn.IcConv2d)
    assert all(type(b.dw) is nn.Conv2d and type(b.pw) is nn.Conv2d for b in converted.blocks)
    assert {k.rsplit(".", 1)[-1] for k in ic_keys(model)} == set(IC_PARAM_NAMES)


# --------------------------------------------------------------------------------------------------
# Public names: convert / profile are functions, their modules are conversion / profiling
# --------------------------------------------------------------------------------------------------
def test_convert_and_profile_are_functions_and_their_modules_have_other_names():
    import ic_networks.conversion
    import ic_networks.profiling

    assert callable(icn.convert) and icn.convert is ic_networks.conversion.convert
    assert callable(icn.profile) and icn.profile is ic_networks.profiling.profile
    assert icn.conversion is sys.modules["ic_networks.conversion"]
    assert icn.profiling is sys.modules["ic_networks.profiling"]
    import ic_networks.viz
    import ic_networks.viz.attribution

    assert ic_networks.viz.gradcam is ic_networks.viz.attribution.gradcam
    for name in ("ic_networks.convert", "ic_networks.profile", "ic_networks.viz.gradcam"):
        assert name not in sys.modules
        with pytest.raises(ModuleNotFoundError, match=name):  # "import ic_networks.convert" does not lie
            importlib.import_module(name)


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def test_every_verb_has_help(capsys):
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert sorted(sub.choices) == sorted(VERBS)
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    overview = capsys.readouterr().out
    assert e.value.code == 0 and all(v in overview for v in VERBS)
    for verb in VERBS:
        with pytest.raises(SystemExit) as e:
            main([verb, "--help"])
        assert e.value.code == 0, verb
        assert f"usage: ic-networks {verb}" in capsys.readouterr().out, verb
    assert main([]) == 2  # no verb: the overview, exit status 2


def test_python_dash_m_ic_networks():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    from ic_networks.training import watchdog

    out = watchdog.run(
        [sys.executable, "-X", "faulthandler", "-m", "ic_networks", "bench", "--help"],
        300,
        env=env,
        cwd=ROOT,
        merge_stderr=False,
        what="python -m ic_networks",
    )
    assert out.returncode == 0, out.stderr
    assert "usage: ic-networks bench" in out.stdout and "--channels-last" in out.stdout


def test_bench_tables_with_the_fused_rows():
    """The tables' ratios by hand, with the fused-route rows a CUDA machine adds (ic-fused layer
    rows get their own speed-up column; ic_*-fused model rows are divided by the plain model)."""
    from ic_networks import bench

    def row(variant, fb):
        return {
            "shape": "64@56",
            "variant": variant,
            "fwd_ms": fb / 2,
            "fwdbwd_ms": fb,
            "infer_ms": fb / 4,
            "saved_mb": 1.0,
            "out_mb": 1.0,
        }

    layers = [row("conv", 2.0), row("ic", 5.0), row("ic-fused", 2.5), row("reference", 5.5)]
    models = [
        {"model": "resnet50", "step_ms": 100.0},
        {"model": "ic_resnet50", "step_ms": 122.0},
        {"model": "ic_resnet50-fused", "step_ms": 108.0},
    ]
    text = bench.format_tables(layers, models, torch.device("cpu"), 8)
    lines = {ln.split(" | ")[1] if ln.startswith("| 64@56") else ln.split(" | ")[0]: ln for ln in text.splitlines()}
    assert "ref / ic-fused (fwd+bwd) |" in text
    # fwd+bwd 2.5 / 2 of conv; the libtorch route's column: 2.5 / 5; its own column blank
    assert lines["ic-fused"].endswith("| 1.25x | 1.25x | +0.00 | 0.50x |  |")
    assert lines["reference"].endswith("| +0.00 | 1.10x | 2.20x |")  # 5.5 / 5 and 5.5 / 2.5
    # rows without a measured peak memory show n/a in its two columns
    assert lines["| ic_resnet50-fused"] == "| ic_resnet50-fused | 108.0 | 1.08x | n/a | n/a | n/a | n/a |"
    # without fused rows the table has no fused column
    assert "ic-fused" not in bench.format_tables(layers[:2], [], torch.device("cpu"), 8)
    assert not bench.fused_available(torch.device("cpu"))


def test_shared_parsers_reject_bad_values(capsys):
    for argv, msg in (
        (["train", "--recipe", "scratch-fmnist", "--epochs", "0"], "--epochs: expected an int >= 1, got '0'"),
        (["train", "--recipe", "scratch-fmnist", "--workers", "-1"], "--workers: expected an int >= 0"),
        (["eval", "--checkpoint", "x", "--batch-size", "two"], "--batch-size: expected an integer, got 'two'"),
        (["train-det", "--voc-root", "v", "--out", "o", "--limit", "0"], "--limit: expected an int >= 1"),
        (["bench", "--device", "tpu"], "--device: expected auto, cpu, cuda or cuda:N, got 'tpu'"),
        (["bench", "--autocast", "fp8"], "--autocast: invalid choice: 'fp8'"),
        (["flops", "resnet18", "--input-size", "0"], "--input-size: expected an int >= 1"),
    ):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2, argv
        assert msg in capsys.readouterr().err, argv


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_is_a_parse_error(capsys):
    for argv in (
        ["bench", "--device", "cuda"],
        ["eval-det", "--checkpoint", "c", "--voc-root", "v", "--out", "o", "--device", "cuda:1"],
    ):
        with pytest.raises(SystemExit):
            main(argv)
        assert "CUDA is not available" in capsys.readouterr().err


def test_one_copy_of_each_parser():
    """positive_int and device parsing exist once (cli.common); the verb modules import them."""
    from ic_networks.cli import bench, common, detection, models, training

    assert training.positive_int is detection.positive_int is bench.positive_int is common.positive_int
    assert models.positive_int is common.positive_int


# --------------------------------------------------------------------------------------------------
# Optional dependencies
# --------------------------------------------------------------------------------------------------
def test_gradcam_without_captum_names_the_viz_extra(monkeypatch, tmp_path, capsys):
    from ic_networks.viz import gradcam

    monkeypatch.setitem(sys.modules, "captum", None)  # "import captum" -> ImportError
    monkeypatch.setitem(sys.modules, "captum.attr", None)
    with pytest.raises(
        ImportError, match=r'Grad-CAM needs the optional dependency \'captum\'.*pip install "ic-networks\[viz\]"'
    ):
        gradcam(fmnist_cnn(), torch.randn(1, 28, 28), "features.0")
    rc = main(["gradcam", "--image", "fmnist:0", "--out", str(tmp_path / "g.png")])
    assert rc == 1 and "ic-networks[viz]" in capsys.readouterr().err
    assert not (tmp_path / "g.png").exists()


def test_pyproject_extras():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        tomllib = pytest.importorskip("tomli")
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = " ".join(meta["dependencies"])
    extras = meta["optional-dependencies"]
    for pkg in ("captum", "torchmetrics", "pycocotools"):
        assert pkg not in deps, pkg  # not a hard dependency
    assert any(d.startswith("captum") for d in extras["viz"])
    assert {d.split(">")[0].split("=")[0] for d in extras["detection"]} == {"torchmetrics", "pycocotools"}
    test = set(extras["test"])
    assert {"pytest", "hypothesis", "onnx"} <= test
    assert any(d.startswith("pytest-codeblocks") for d in test)  # tests/test_docs.py
    self_extras = next(d for d in test if d.startswith("ic-networks["))  # pip install -e ".[test]" runs every test
    assert {"viz", "detection"} <= set(self_extras[len("ic-networks[") : -1].split(","))
