"""The IC model zoo: every builder trains, plain checkpoints load bit-identically, IC layer placement,
weights sources (never downloading), the torchvision registry and the ``convert`` / ``flops`` commands."""

import argparse
import os
import shutil

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models import _api

import ic_networks.models as M
from ic_networks.cli import models as models_cli
from ic_networks.detection import BUILDERS as DETECTORS
from ic_networks.integrations.torchvision import ic_builder_names, register
from ic_networks.models._common import hub_checkpoint_path
from ic_networks.models.mobilenet import IcDepthwiseSeparable
from ic_networks.nn import IcConv2d, ic_keys

MINE_PLAIN = [
    "vgg16_cifar",
    "vgg19_cifar",
    "mobilenet_cifar",
    "se_resnet18_cifar",
    "se_resnet50_cifar",
    "resnext29_2x64d_cifar",
]


def _input(entry, n=2):
    size = entry.input_size
    side = 32 if size[-1] == 224 else size[-1]  # ImageNet models at 32x32: enough for shapes and gradients
    return torch.randn(n, size[1], side, side)


def _ic_modules(model):
    return {n: m for n, m in model.named_modules() if isinstance(getattr(m, "adjust_weight", None), nn.Parameter)}


@pytest.mark.parametrize("name", sorted(M.ZOO) + MINE_PLAIN)
def test_every_builder_forward_backward(name):
    torch.manual_seed(0)
    entry = M.lookup(name)
    model = getattr(M, name)(num_classes=7)
    x = _input(entry)
    out = model(x)
    assert out.shape == (2, 7)
    F.cross_entropy(out, torch.tensor([1, 5])).backward()
    for n, p in model.named_parameters():
        assert p.grad is not None, f"{name}: {n} got no gradient"
    ic = _ic_modules(model)
    assert bool(ic) == name.startswith("ic_")
    for n, m in ic.items():  # from scratch: alpha = 1 (fixed), so W' learns wherever the layer learns
        w = m.weight if hasattr(m, "weight") else m.pw.weight  # (stochastic depth may drop a whole block)
        assert float(m.alpha) == 1.0, f"{name}: {n}"
        assert bool(m.adjust_weight.grad.any()) == bool(w.grad.any()), f"{name}: {n}"
    assert any(m.adjust_weight.grad.any() for m in ic.values()) or not ic


def _save(obj, path):
    torch.save(obj, path)
    return str(path)


@pytest.mark.parametrize(
    "ic_name",
    ["ic_resnet18", "ic_resnet50_c", "ic_efficientnet_b0"] + [f"ic_{n}" for n in MINE_PLAIN],
)
def test_plain_checkpoint_loads_bit_identical(ic_name, tmp_path):
    torch.manual_seed(0)
    entry = M.lookup(ic_name)
    plain = entry.plain(num_classes=5).eval()
    path = _save(plain.state_dict(), tmp_path / "plain.pth")
    ic = entry.ic(weights=path, num_classes=5).eval()
    # only the IC keys were missing; they keep their initialisation (W' random, b1 = 0, alpha = 0)
    assert set(ic.state_dict()) - set(plain.state_dict()) == ic_keys(ic)
    for m in _ic_modules(ic).values():
        assert isinstance(m.alpha, nn.Parameter) and float(m.alpha.detach()) == 0.0  # eq. 7 default on weights
        assert m.adjust_weight.abs().sum() > 0 and not m.adjust_bias.any()
    x = _input(entry)
    with torch.no_grad():
        assert torch.equal(plain(x), ic(x))


@pytest.mark.parametrize("ic_name", ["ic_resnet18", "ic_mobilenet_cifar"])
def test_ic_checkpoint_round_trip(ic_name, tmp_path):
    torch.manual_seed(0)
    ic = getattr(M, ic_name)(alpha=0.25, alpha_mode="learnable")
    again = getattr(M, ic_name)(weights=_save(ic.state_dict(), tmp_path / "ic.pth"))
    state = again.state_dict()
    assert set(state) == set(ic.state_dict())
    assert all(torch.equal(v, state[k]) for k, v in ic.state_dict().items())  # alpha = 0.25 included


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    torch.manual_seed(0)
    return _save(torchvision.models.resnet18().state_dict(), tmp_path_factory.mktemp("ckpt") / "resnet18.pth")


def test_checkpoint_mismatches_are_errors(resnet18_file, tmp_path):
    with pytest.raises(RuntimeError, match="weights"):  # another architecture
        M.ic_mobilenet_cifar(weights=resnet18_file)
    with pytest.raises(RuntimeError, match="weights"):  # a shape mismatch (fc)
        M.ic_resnet18(weights=resnet18_file, num_classes=10)
    state = M.ic_resnet18(weights=resnet18_file).state_dict()
    del state["layer1.0.conv1.adjust_weight"]  # an IC checkpoint missing part of the IC keys
    with pytest.raises(RuntimeError, match="missing keys"):
        M.ic_resnet18(weights=_save(state, tmp_path / "partial.pth"))
    with pytest.raises(RuntimeError, match="state_dict"):
        M.ic_resnet18(weights=_save([1, 2], tmp_path / "list.pth"))
    with pytest.raises(FileNotFoundError, match="no such file"):
        M.ic_resnet18(weights=str(tmp_path / "absent.pth"))
    with pytest.raises(TypeError, match="weights"):
        M.ic_resnet18(weights=3)
    with pytest.raises(TypeError, match="weights"):
        M.ic_vgg16_cifar(weights=torchvision.models.VGG16_BN_Weights.IMAGENET1K_V1)
    with pytest.raises(ValueError, match="num_classes"):
        M.ic_vgg16_cifar(num_classes=0)
    with pytest.raises(ValueError, match="alpha_mode"):
        M.ic_resnet18(alpha_mode="sometimes")
    with pytest.raises(TypeError, match="alpha"):
        M.ic_mobilenet_cifar(alpha="1")


def test_torchvision_weights_come_from_the_local_hub_cache_only(resnet18_file, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    expected = os.path.join(str(tmp_path / "hub"), "checkpoints", "resnet18-f37072fd.pth")
    assert hub_checkpoint_path(weights) == expected
    for w in (weights, "IMAGENET1K_V1", "DEFAULT", "ResNet18_Weights.IMAGENET1K_V1"):
        with pytest.raises(FileNotFoundError, match="resnet18-f37072fd.pth"):
            M.ic_resnet18(weights=w)
    with pytest.raises(TypeError, match="ResNet18_Weights"):
        M.ic_resnet18(weights=torchvision.models.ResNet50_Weights.IMAGENET1K_V1)
    with pytest.raises(ValueError, match="num_classes"):
        M.ic_resnet18(weights=weights, num_classes=10)
    os.makedirs(os.path.dirname(expected))
    shutil.copy(resnet18_file, expected)
    model = M.ic_resnet18(weights=weights).eval()
    plain = torchvision.models.resnet18()
    plain.load_state_dict(torch.load(resnet18_file, weights_only=True))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), plain.eval()(x))


def test_which_convs_are_ic():
    with torch.device("meta"):
        r18, r50b, r50c = M.ic_resnet18(), M.ic_resnet50_b(), M.ic_resnet50_c()
        eff, mob = M.ic_efficientnet_b0(), M.ic_mobilenet_cifar()
        vgg19, se50, rx = M.ic_vgg19_cifar(), M.ic_se_resnet50_cifar(), M.ic_resnext29_2x64d_cifar()
    block_3x3 = {n for n, m in r18.named_modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)}
    assert set(_ic_modules(r18)) == block_3x3 and len(block_3x3) == 16
    convs = lambda model, suffix: {n for n, m in model.named_modules() if n.startswith("layer") and n.endswith(suffix)}  # noqa: E731
    assert set(_ic_modules(r50b)) == convs(r50b, ".conv1") | convs(r50b, ".conv2")
    assert set(_ic_modules(r50c)) == convs(r50c, ".conv1") | convs(r50c, ".conv2") | convs(r50c, ".conv3")
    for model in (r18, r50b, r50c):
        assert type(model.conv1) is nn.Conv2d
        assert all(type(m) is nn.Conv2d for n, m in model.named_modules() if n.endswith("downsample.0"))
    eff_ic = _ic_modules(eff).values()
    assert len(eff_ic) == 16 and all(m.groups == m.in_channels == m.out_channels for m in eff_ic)
    assert {m.kernel_size for m in eff_ic} == {(3, 3), (5, 5)} and type(eff.features[0][0]) is nn.Conv2d
    assert len(_ic_modules(mob)) == 13 and all(isinstance(m, IcDepthwiseSeparable) for m in _ic_modules(mob).values())
    assert not any(isinstance(m, IcConv2d) for m in mob.modules())
    assert len(_ic_modules(vgg19)) == 16
    for model, n in ((se50, 16), (rx, 9)):
        ic = _ic_modules(model)
        assert len(ic) == n and all(k.startswith("layers.") and m.kernel_size == (3, 3) for k, m in ic.items())
    assert all(m.groups == 2 for m in _ic_modules(rx).values())


def test_depthwise_pointwise_pair_is_one_ic_layer():
    torch.manual_seed(0)
    block = IcDepthwiseSeparable(3, 4, stride=2, alpha=0.7).double().eval()
    with torch.no_grad():
        block.adjust_bias.uniform_(-1, 1)
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64, requires_grad=True)
    # independent formula: conv1x1(boxsum(X), W') == conv(X, W' broadcast to the dw kernel)
    y = block.pw(F.relu(block.bn1(block.dw(x))))
    p = F.conv2d(x, block.adjust_weight.expand(4, 3, 3, 3), None, 2, 1)
    expected = y + block.alpha * F.relu(y - p + block.adjust_bias.view(1, -1, 1, 1))
    assert torch.allclose(block.pair(x), expected, rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(lambda t: block(t), (x,))
    block.set_alpha(0.0)
    block(x).sum().backward()
    assert not block.adjust_weight.grad.any() and not block.adjust_bias.grad.any()  # zeros, not None


def test_torchvision_registry():
    names = register()
    assert register() == names  # idempotent
    classifiers = sorted(n for n in M.__all__ if n.startswith("ic_"))
    assert set(names) == set(classifiers) | set(DETECTORS) and "ic_resnet50" in names
    assert set(names) <= set(torchvision.models.list_models())
    assert torchvision.models.list_models(module=M) == classifiers
    assert torchvision.models.get_model_builder("ic_resnet50") is M.ic_resnet50
    assert torchvision.models.get_model_weights("ic_resnet50") is torchvision.models.ResNet50_Weights
    model = torchvision.models.get_model("ic_resnet18", num_classes=3)
    assert isinstance(model.layer1[0].conv1, IcConv2d) and model.fc.out_features == 3
    assert ic_builder_names() == classifiers


def test_registry_refuses_to_shadow_another_model(monkeypatch):
    monkeypatch.setitem(_api.BUILTIN_MODELS, "ic_resnet18", torchvision.models.resnet18)
    with pytest.raises(RuntimeError, match="ic_resnet18"):
        register()


def _run_cli(argv):
    parser = argparse.ArgumentParser()
    models_cli.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_convert_writes_a_loadable_ic_state_dict(resnet18_file, tmp_path):
    out = tmp_path / "out" / "ic_resnet18.pth"
    assert _run_cli(["convert", "--model", "resnet18", "--weights", resnet18_file, "--out", str(out)]) == 0
    assert os.listdir(out.parent) == ["ic_resnet18.pth"]  # no temporary file left behind
    state = torch.load(out, weights_only=True)
    plain = torch.load(resnet18_file, weights_only=True)
    assert all(torch.equal(state[k], v) for k, v in plain.items())
    assert set(state) - set(plain) == ic_keys(M.ic_resnet18(weights=str(out)))
    assert all(float(v) == 0.0 for k, v in state.items() if k.endswith(".alpha"))
    with pytest.raises(FileNotFoundError):
        _run_cli(["convert", "--model", "resnet18", "--weights", str(tmp_path / "no.pth"), "--out", str(out)])


def test_cli_flops_table(capsys):
    assert _run_cli(["flops", "resnet50"]) == 0
    text = capsys.readouterr().out
    assert "resnet50" in text and "ic_resnet50" in text and "4.12" in text and "4.33" in text
    assert _run_cli(["flops", "ic_vgg16_cifar", "--input-size", "64"]) == 0
    assert "(1, 3, 64, 64)" in capsys.readouterr().out
    with pytest.raises(ValueError, match="unknown model"):
        _run_cli(["flops", "alexnet"])
    with pytest.raises(ValueError, match="input-size"):
        _run_cli(["flops", "resnet18", "--input-size", "1", "2", "3"])


def test_import_ic_networks_does_not_import_torchvision():
    """torchvision is imported on first use of the zoo (``icn.models``), not by ``import ic_networks``."""
    import subprocess
    import sys

    code = (
        "import sys, ic_networks as icn\n"
        "assert 'torchvision' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torchvision'))\n"
        "assert icn.IcConv2d and icn.convert and icn.profile and icn.io.load_weights\n"
        "assert 'torchvision' not in sys.modules\n"
        "model = icn.models.ic_resnet18()\n"
        "assert 'torchvision' in sys.modules and icn.training.load_weights is icn.io.load_weights\n"
        "assert {'models', 'training', 'detection', 'integrations', 'neuron'} <= set(dir(icn))\n"
        "print('OK')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "IC_NETWORKS_STACK_DIR"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0 and r.stdout.strip() == "OK", r.stderr[-3000:]
