"""timm: the IC zoo in timm's registry (ic_networks.integrations.timm) and ``convert`` on timm's own models
(the paper's Table 4 families), built with ``timm.create_model(pretrained=False)``; nothing is downloaded."""

import importlib
import sys
import warnings

import pytest
import torch
import torchvision
from torch import nn

import ic_networks as icn
from ic_networks import IcConv2d

timm = pytest.importorskip("timm", reason="timm is not installed (pip install 'ic-networks[timm]')")

import ic_networks.integrations.timm as ictimm  # noqa: E402

X = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def _n_ic(model):
    return sum(isinstance(m, IcConv2d) for m in model.modules())


def _plain_3x3(model):
    return [n for n, m in model.named_modules() if type(m) is nn.Conv2d and m.kernel_size == (3, 3)]


def test_register_and_create_model(tmp_path):
    names = ictimm.register()
    assert "ic_resnet50" in names and "ic_vgg16_cifar" in names and "resnet50" not in names
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # idempotent: no "Overwriting ... in registry" from timm
        assert ictimm.register() == names
    assert set(names) <= set(timm.list_models("ic_*")) and timm.is_model("ic_resnet18")

    model = timm.create_model("ic_resnet50", num_classes=7)
    assert _n_ic(model) == 16 and model.fc.out_features == 7
    assert all(m.alpha_mode == "fixed" and float(m.alpha) == 1.0 for m in model.modules() if isinstance(m, IcConv2d))
    assert model.eval()(X[:1]).shape == (1, 7)
    assert timm.data.resolve_model_data_config(model)["input_size"] == (3, 224, 224)
    small = timm.create_model("ic_fmnist_cnn", num_classes=10, in_chans=1, dtype=torch.float64)
    assert next(small.parameters()).dtype == torch.float64

    # weights=: a local plain ResNet-18 state_dict gives the plain network (alpha = 0), bit for bit.
    torch.manual_seed(0)
    plain = torchvision.models.resnet18(num_classes=5).eval()
    torch.save(plain.state_dict(), tmp_path / "resnet18.pth")
    ic = timm.create_model("ic_resnet18", num_classes=5, weights=tmp_path / "resnet18.pth").eval()
    assert _n_ic(ic) == 16
    with torch.no_grad():
        assert torch.equal(ic(X), plain(X))

    with pytest.raises(ValueError, match="weights=PATH"):
        timm.create_model("ic_resnet18", pretrained=True)
    with pytest.raises(ValueError, match="in_chans must be 3"):
        timm.create_model("ic_resnet18", in_chans=1)


def test_register_refuses_a_different_model(monkeypatch):
    from timm.models import _registry

    def ic_resnet18(**kwargs):
        return nn.Identity()

    monkeypatch.setitem(_registry._model_entrypoints, "ic_resnet18", ic_resnet18)
    monkeypatch.delitem(_registry._model_entrypoints, "ic_resnet34", raising=False)
    with pytest.raises(RuntimeError, match="different model registered as 'ic_resnet18'"):
        ictimm.register()
    assert not timm.is_model("ic_resnet34")  # nothing registered


def test_missing_timm_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # what `import timm` does when it is not installed
    monkeypatch.delitem(sys.modules, "ic_networks.integrations.timm")
    with pytest.raises(ImportError, match=r"'timm'.*ic-networks\[timm\]"):
        importlib.import_module("ic_networks.integrations.timm")


# (timm name, create_model kwargs, IC layers, also compare in train mode)
FAMILIES = [
    ("resnet18", {}, 16, True),  # the 7x7 stem and the 1x1 downsample convs stay plain
    ("resnet50", {}, 16, False),
    ("seresnet50", {}, 16, False),
    ("resnext50_32x4d", {}, 16, False),  # grouped 3x3 convs (groups=32)
    ("vgg16", {"mlp_ratio": 1 / 16}, 13, False),  # a narrow pre-logits ConvMlp (7x7, not converted)
    ("mobilenetv2_100", {}, 18, False),  # 17 depthwise 3x3 convs and the 3x3 stem
    ("mobilenetv3_large_100", {}, None, True),  # depthwise 3x3 and 5x5, SE, hard-swish
]


@pytest.mark.parametrize("name,kwargs,n_ic,train", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_convert_timm_model_bit_identical(name, kwargs, n_ic, train):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10, **kwargs)
    expected = _plain_3x3(model)
    assert n_ic is None or len(expected) == n_ic
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every conv of these families is an nn.Conv2d: nothing skipped
        ic = icn.convert(model)
    assert sorted(n for n, m in ic.named_modules() if isinstance(m, IcConv2d)) == sorted(expected)
    assert not _plain_3x3(ic)
    assert set(model.state_dict()) < set(ic.state_dict())
    for mode in ("eval", "train") if train else ("eval",):
        getattr(model, mode)()
        getattr(ic, mode)()
        with torch.no_grad():
            assert torch.equal(ic(X), model(X)), mode
    if train:  # BatchNorm running statistics moved identically
        for (k, a), b in zip(model.state_dict().items(), (ic.state_dict()[k] for k in model.state_dict())):
            assert torch.equal(a, b), k


def test_convert_more_kernel_sizes_on_mobilenetv3():
    model = timm.create_model("mobilenetv3_large_100", pretrained=False, num_classes=10).eval()
    ic = icn.convert(model, kernel_sizes=(1, 3, 5)).eval()  # pointwise, depthwise 5x5 and the SE convs too
    assert not any(type(m) is nn.Conv2d for m in ic.modules())
    with torch.no_grad():
        assert torch.equal(ic(X), model(X))


def test_convert_leaves_conv2d_same_with_a_warning():
    # tf_* models pad like TensorFlow's "SAME" with timm's Conv2dSame (dynamic padding in forward).
    model = timm.create_model("tf_mobilenetv3_small_minimal_100", pretrained=False, num_classes=10).eval()
    same = [n for n, m in model.named_modules() if type(m).__name__ == "Conv2dSame" and m.kernel_size == (3, 3)]
    assert same
    with pytest.warns(UserWarning, match=r"left \d+ conv\(s\) unconverted: Conv2dSame") as rec:
        ic = icn.convert(model)
    assert repr(same[0]) in str(rec[0].message)
    assert all(type(dict(ic.named_modules())[n]).__name__ == "Conv2dSame" for n in same)
    assert _n_ic(ic) == len(_plain_3x3(model)) > 0
    with torch.no_grad():
        assert torch.equal(ic.eval()(X), model(X))
