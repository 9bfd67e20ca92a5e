"""Loading weights and files: a plain checkpoint gives the plain network through every loader, saved
files respect the umask, and every kind of unreadable file gets its own one-line reason."""

import json
import logging
import os
import pickle
import warnings

import pytest
import torch
import torchvision
from torch import nn

import ic_networks as icn
from helpers import ic_layer_names
from ic_networks import io
from ic_networks.cli import main
from ic_networks.models.cnn import ic_fmnist_cnn
from ic_networks.models.mobilenet import DepthwiseSeparable, IcDepthwiseSeparable
from ic_networks.nn import IC_PARAM_NAMES, PlainStateDictWarning, ic_keys, ic_layers


def _alphas(model):
    return [float(m.alpha.detach()) for m in ic_layers(model)]


@pytest.fixture(scope="module")
def resnet18_plain(tmp_path_factory):
    """A randomly initialised torchvision ResNet-18 (eval), its state_dict file, an input and its output."""
    torch.manual_seed(0)
    plain = torchvision.models.resnet18().eval()
    path = tmp_path_factory.mktemp("plain") / "resnet18.pth"
    torch.save(plain.state_dict(), path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        return plain, path, x, plain(x)


def _output(model, x):
    with torch.no_grad():
        return model.eval()(x)


# --------------------------------------------------------------------------------------------------
# A plain checkpoint gives the plain network
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("alpha_mode", ["fixed", "learnable"])
def test_torchvision_pattern_load_state_dict_non_strict_gives_the_plain_model(resnet18_plain, alpha_mode):
    plain, _, x, want = resnet18_plain
    m = icn.models.ic_resnet18(alpha_mode=alpha_mode)
    assert set(_alphas(m)) == {1.0}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = m.load_state_dict(plain.state_dict(), strict=False)
    plain_warnings = [w for w in caught if issubclass(w.category, PlainStateDictWarning)]
    assert len(plain_warnings) == 1, [str(w.message) for w in caught]  # one per call, not one per layer
    assert "alpha = 0" in str(plain_warnings[0].message)
    assert set(result.missing_keys) == ic_keys(m) and not result.unexpected_keys
    assert set(_alphas(m)) == {0.0}
    for layer in ic_layers(m):  # still a buffer / a parameter
        assert isinstance(layer.alpha, nn.Parameter) == (alpha_mode == "learnable")
    assert torch.equal(_output(m, x), want)
    # a second call warns again
    with pytest.warns(PlainStateDictWarning):
        m.load_state_dict(plain.state_dict(), strict=False)


def test_plain_state_dict_with_strict_true_still_raises(resnet18_plain):
    plain = resnet18_plain[0]
    with pytest.raises(RuntimeError, match="Missing key.*adjust_weight"), pytest.warns(PlainStateDictWarning):
        icn.models.ic_resnet18().load_state_dict(plain.state_dict())


def test_ic_layers_load_a_plain_layer_state_dict_at_alpha_0():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1).eval()
    ic = icn.IcConv2d(4, 6, 3, padding=1, alpha=0.7)
    with pytest.warns(PlainStateDictWarning, match="IcConv2d"):
        missing, unexpected = ic.load_state_dict(conv.state_dict(), strict=False)
    assert set(missing) == set(IC_PARAM_NAMES) and not unexpected
    x = torch.randn(2, 4, 9, 9)
    assert float(ic.alpha) == 0.0 and torch.equal(_output(ic, x), _output(conv, x))
    pair, block = DepthwiseSeparable(4, 6).eval(), IcDepthwiseSeparable(4, 6, alpha=0.7)
    with pytest.warns(PlainStateDictWarning, match="IcDepthwiseSeparable"):
        block.load_state_dict(pair.state_dict(), strict=False)
    assert float(block.alpha) == 0.0 and torch.equal(_output(block, x), _output(pair, x))
    # an IC state_dict keeps its alpha, without a warning
    other = icn.IcConv2d(4, 6, 3, padding=1, alpha=0.25)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PlainStateDictWarning)
        ic.load_state_dict(other.state_dict())
    assert float(ic.alpha) == 0.25


def test_every_loader_gives_the_plain_model_from_a_plain_checkpoint(resnet18_plain, caplog, tmp_path):
    plain, path, x, want = resnet18_plain
    n = len(ic_layers(icn.models.ic_resnet18()))
    # ic_networks.io.load_weights: alpha 1 from scratch, 0 after loading; one log line, no warning
    m = icn.models.ic_resnet18()
    with caplog.at_level(logging.INFO, logger="ic_networks"), warnings.catch_warnings():
        warnings.simplefilter("error", PlainStateDictWarning)
        io.load_weights(m, path)
    lines = [r.getMessage() for r in caplog.records if r.name == "ic_networks"]
    assert len(lines) == 1 and f"{n} of {n} IC layers" in lines[0] and "alpha = 0" in lines[0], lines
    assert set(_alphas(m)) == {0.0} and torch.equal(_output(m, x), want)
    # the zoo's weights= (also with a fixed alpha), and a checkpoint wrapped as the trainer writes it
    for model in (icn.models.ic_resnet18(weights=path), icn.models.ic_resnet18(weights=path, alpha_mode="fixed")):
        assert set(_alphas(model)) == {0.0} and torch.equal(_output(model, x), want)
    wrapped = tmp_path / "ckpt.pt"
    torch.save({"model": {f"module.{k}": v for k, v in plain.state_dict().items()}, "epoch": 3}, wrapped)
    assert torch.equal(_output(io.load_weights(icn.models.ic_resnet18(), wrapped), x), want)
    # an explicit alpha of the zoo builder is kept
    assert set(_alphas(icn.models.ic_resnet18(weights=path, alpha=0.5))) == {0.5}


def test_cli_diagnose_and_convert_load_plain_weights_at_alpha_0(resnet18_plain, tmp_path, capsys):
    plain, path, x, want = resnet18_plain
    assert (
        main(
            [
                "diagnose",
                "resnet18",
                "--weights",
                str(path),
                "--probe",
                "noise",
                "--batch",
                "1",
                "--input-size",
                "32",
                "--eval",
            ]
        )
        == 0
    )
    rows = [line.split("|") for line in capsys.readouterr().out.splitlines() if line.startswith("| layer")]
    alphas = {r[2].strip() for r in rows if r[1].strip() != "layer"}
    assert alphas == {"0"}, alphas
    # an explicit --alpha is what the user asked for, plain checkpoint or not
    assert (
        main(
            [
                "diagnose",
                "resnet18",
                "--weights",
                str(path),
                "--alpha",
                "0.5",
                "--probe",
                "noise",
                "--batch",
                "1",
                "--input-size",
                "32",
                "--eval",
            ]
        )
        == 0
    )
    rows = [line.split("|") for line in capsys.readouterr().out.splitlines() if line.startswith("| layer")]
    assert {r[2].strip() for r in rows if r[1].strip() != "layer"} == {"0.5"}
    out = tmp_path / "ic.pth"
    assert main(["convert", "--model", "resnet18", "--weights", str(path), "--out", str(out)]) == 0
    assert torch.equal(_output(icn.models.ic_resnet18(weights=out), x), want)


def test_plain_layers_of_a_partly_ic_checkpoint_start_at_alpha_0():
    """Per layer: an IC layer without IC keys gets alpha 0, the others keep the checkpoint's alpha."""
    ic = ic_fmnist_cnn(alpha=0.5)
    first = sorted(ic_keys(ic))[0].rsplit(".", 1)[0]
    state = {k: v for k, v in ic.state_dict().items() if k not in {f"{first}.{n}" for n in IC_PARAM_NAMES}}
    model = io.load_weights(ic_fmnist_cnn(alpha=1.0), state)
    got = {name: float(model.get_submodule(name).alpha) for name in ic_layer_names(model)}
    assert got[first] == 0.0 and all(v == 0.5 for k, v in got.items() if k != first), got
    partial = dict(ic.state_dict())
    del partial[f"{first}.alpha"]  # one IC key of a layer missing, not all three: an error
    with pytest.raises(RuntimeError, match="missing keys"):
        io.load_weights(ic_fmnist_cnn(), partial)


def test_detection_backbone_from_plain_weights_keeps_the_builders_alpha():
    from ic_networks.detection.builders import ic_resnet50_fpn_backbone

    state = torchvision.models.resnet50().state_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("error", PlainStateDictWarning)
        default = ic_resnet50_fpn_backbone(weights_backbone=state)
        explicit = ic_resnet50_fpn_backbone(weights_backbone=state, ic_alpha=0.5)
    assert set(_alphas(default)) == {0.0} and set(_alphas(explicit)) == {0.5}


def test_pretrained_is_refused_with_what_to_pass():
    with pytest.raises(TypeError, match=r"pretrained.*weights=PATH.*resnet18-"):
        icn.models.ic_resnet18(pretrained=True)


# --------------------------------------------------------------------------------------------------
# Saved files respect the umask
# --------------------------------------------------------------------------------------------------
@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_saves_get_the_mode_open_would_give(tmp_path, umask):
    old = os.umask(umask)
    try:
        io.atomic_save({"w": torch.zeros(1)}, tmp_path / "a.pt")
        io.atomic_write_text("{}\n", tmp_path / "results.json")
        with open(tmp_path / "plain.txt", "w") as f:
            f.write("x")
    finally:
        os.umask(old)
    want = 0o666 & ~umask
    assert (tmp_path / "plain.txt").stat().st_mode & 0o777 == want
    for name in ("a.pt", "results.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == want, name
    # replacing a file keeps its mode, as open(path, "w") does
    os.chmod(tmp_path / "a.pt", 0o640)
    io.atomic_save({"w": torch.ones(1)}, tmp_path / "a.pt")
    assert (tmp_path / "a.pt").stat().st_mode & 0o777 == 0o640


# --------------------------------------------------------------------------------------------------
# Unreadable files: one distinct reason each
# --------------------------------------------------------------------------------------------------
class _Reduces:
    """Unpickling it would call ``os.system`` (never reached: weights_only refuses it first)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _bad_files(folder):
    """name -> (path, expected kind, a phrase of the expected reason)."""
    good = folder / "good.pt"
    torch.save(nn.Linear(3, 2).state_dict(), good)
    data = good.read_bytes()
    rng = torch.Generator().manual_seed(0)
    noise = bytes(torch.randint(0, 256, (4096,), generator=rng, dtype=torch.uint8).tolist())
    assert noise[:1] != b"\x80" and noise[:2] != b"PK"
    files = {
        "random": (noise, "corrupt", "neither a zip archive"),
        "truncated": (data[: len(data) // 2], "truncated", "truncated"),
        "empty": (b"", "empty", "empty"),
        "text": (b"epoch 1: loss 0.3\nepoch 2: loss 0.2\n", "not_torch", "text file"),
        "json": (json.dumps({"top1": 71.2}).encode(), "not_torch", "JSON file"),
        "pickle": (pickle.dumps({"w": [1.0]}, protocol=2), "not_torch", "pickle.dump"),
    }
    out = {}
    for name, (content, kind, phrase) in files.items():
        (folder / f"{name}.pt").write_bytes(content)
        out[name] = (folder / f"{name}.pt", kind, phrase)
    torch.save({"w": torch.zeros(1), "x": _Reduces(folder / "pwned")}, folder / "code.pt")
    out["code"] = (folder / "code.pt", "code", "pickles Python objects (Unsupported global: posix.system)")
    torch.save(nn.Linear(3, 2), folder / "module.pt")
    out["module"] = (folder / "module.pt", "code", "(Unsupported global: torch.nn.modules.linear.Linear)")
    torch.save({"w": torch.zeros(4)}, folder / "legacy.pt", _use_new_zipfile_serialization=False)
    legacy = (folder / "legacy.pt").read_bytes()
    (folder / "legacy_cut.pt").write_bytes(legacy[: len(legacy) // 3])
    out["legacy_cut"] = (folder / "legacy_cut.pt", "truncated", "truncated")
    return out


def test_each_unreadable_file_gets_its_own_one_line_reason(tmp_path):
    files = _bad_files(tmp_path)
    reasons = {}
    for name, (path, kind, phrase) in files.items():
        with pytest.raises(io.CheckpointError) as info:
            io.load(path, "weights")
        msg = str(info.value)
        assert info.value.kind == kind, (name, msg)
        assert msg.startswith(f"weights: cannot read {str(path)!r}") and phrase in msg, (name, msg)
        assert "\n" not in msg and "Please file an issue" not in msg and "\x1b" not in msg, (name, msg)
        assert isinstance(info.value, ValueError) and isinstance(info.value, RuntimeError)
        reasons[name] = msg.split(": ", 2)[2]
    assert not (tmp_path / "pwned").exists()  # nothing ran
    assert len(set(reasons.values())) == len(reasons)  # a distinct reason for each
    assert torch.equal(io.load(tmp_path / "legacy.pt")["w"], torch.zeros(4))  # a legacy file still loads


def test_every_loader_reports_the_same_reason(tmp_path, capsys):
    files = _bad_files(tmp_path)
    for name in ("random", "truncated", "code"):
        path = files[name][0]
        with pytest.raises(io.CheckpointError) as info:
            io.load(path, "weights")
        want = str(info.value)
        for load in (
            lambda: io.load_weights(ic_fmnist_cnn(), path),
            lambda: icn.models.ic_fmnist_cnn(weights=path),
            lambda: icn.models.fmnist_cnn(weights=path),
        ):
            with pytest.raises(io.CheckpointError) as got:
                load()
            assert str(got.value) == want
        for argv in (
            ["diagnose", "fmnist_cnn", "--weights", str(path), "--probe", "noise", "--batch", "1"],
            ["convert", "--model", "fmnist_cnn", "--weights", str(path), "--out", str(tmp_path / "o.pt")],
        ):
            assert main(argv) == 1
            assert want in capsys.readouterr().err
    assert not (tmp_path / "pwned").exists()


# torch.load(weights_only=True) failure texts. 2.15: generated with torch 2.15.0 (the reason on its
# own line after "WeightsUnpickler error:", or the blocklist wording); 2.13: the layout in which the
# reason follows "WeightsUnpickler error: " on the same line.
_DOCS = (
    "\n\nCheck the documentation of torch.load to learn more about types accepted by default with weights_only "
    "https://pytorch.org/docs/stable/generated/torch.load.html."
)
_UNSAFE_26 = (
    "In PyTorch 2.6, we changed the default value of the `weights_only` argument in `torch.load` from "
    "`False` to `True`. Re-running `torch.load` with `weights_only` set to `False` will likely succeed, "
    "but it can result in arbitrary code execution. Do it only if you got the file from a trusted source."
)
_UNSAFE_OLD = (
    "Re-running `torch.load` with `weights_only` set to `False` will likely succeed, but it can result in "
    "arbitrary code execution. Do it only if you got the file from a trusted source."
)
_FILE_ISSUE = (
    "Please file an issue with the following so that we can make `weights_only=True` compatible with "
    "your use case: WeightsUnpickler error: "
)
_GLOBAL = (
    "Unsupported global: GLOBAL torch.nn.modules.linear.Linear was not an allowed global by default. Please "
    "use `torch.serialization.add_safe_globals([torch.nn.modules.linear.Linear])` or the "
    "`torch.serialization.safe_globals([torch.nn.modules.linear.Linear])` context manager to allowlist this "
    "global if you trust this class/function."
)
_TWO_OPTIONS = (
    "Weights only load failed. This file can still be loaded, to do so you have two options, "
    "\x1b[1mdo those steps only if you trust the source of the checkpoint\x1b[0m. \n\t(1) {unsafe}\n\t"
    "(2) Alternatively, to load with `weights_only=True` please check the recommended steps in the "
    "following error message.\n\tWeightsUnpickler error: "
)
MESSAGES = {
    "2.15 operand": (
        f"Weights only load failed. {_UNSAFE_26}\n{_FILE_ISSUE}\n\nUnsupported operand 72{_DOCS}",
        ("opcode", 72),
    ),
    "2.15 blocked": (
        f"Weights only load failed. {_UNSAFE_26}\n\n\nTrying to load unsupported GLOBAL posix.system "
        f"whose module posix is blocked.{_DOCS}",
        ("code", "posix.system"),
    ),
    "2.15 global": (
        _TWO_OPTIONS.format(unsafe=_UNSAFE_26) + _GLOBAL + _DOCS,
        ("code", "torch.nn.modules.linear.Linear"),
    ),
    "2.15 other": (
        f"Weights only load failed. {_UNSAFE_26}\n{_FILE_ISSUE}\n\nUnsupported persistent id type{_DOCS}",
        ("other", "Unsupported persistent id type"),
    ),
    "2.13 operand": (
        f"Weights only load failed. {_UNSAFE_OLD}\n {_FILE_ISSUE}Unsupported operand 72{_DOCS}",
        ("opcode", 72),
    ),
    "2.13 global": (
        _TWO_OPTIONS.format(unsafe=_UNSAFE_OLD) + _GLOBAL + _DOCS,
        ("code", "torch.nn.modules.linear.Linear"),
    ),
    "2.13 reduce": (
        f"Weights only load failed. {_UNSAFE_OLD}\n {_FILE_ISSUE}Trying to call reduce for unrecognized "
        f"function <built-in function system>{_DOCS}",
        ("code", "<built-in"),
    ),
    "2.13 other": (
        f"Weights only load failed. {_UNSAFE_OLD}\n {_FILE_ISSUE}Unsupported persistent id type{_DOCS}",
        ("other", "Unsupported persistent id type"),
    ),
    "not weights_only": ("PytorchStreamReader failed reading zip archive: failed finding central directory", None),
}


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_weights_only_messages_of_torch_2_13_and_2_15_are_classified(name):
    message, want = MESSAGES[name]
    assert io._weights_only_reason(message) == want


def test_the_running_torch_messages_are_classified(tmp_path):
    """The samples above match what the installed torch says (for the versions they come from)."""
    files = _bad_files(tmp_path)
    for name, kind in (("random", "opcode"), ("code", "code"), ("module", "code")):
        with pytest.raises(Exception) as info:
            torch.load(files[name][0], weights_only=True)
        assert io._weights_only_reason(str(info.value))[0] == kind, str(info.value)
