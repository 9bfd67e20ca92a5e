"""ic_networks.convert: bit-identity with torchvision models at alpha = 0, selection rules, errors."""

import warnings

import pytest
import torch
import torchvision
from torch import nn

from helpers import ic_layer_names
from ic_networks.conversion import convert
from ic_networks.models.mobilenet import IcDepthwiseSeparable
from ic_networks.nn import IcConv2d


def _torchvision_model(name):
    if name != "vgg16_bn":
        return getattr(torchvision.models, name)(num_classes=10)
    # torchvision's VGG-16-BN features; its 120M-parameter classifier would only cost time
    # (5 s to initialise) and has no conv in it, so it is swapped for one linear layer.
    with torch.device("meta"):
        model = torchvision.models.vgg16_bn()
        model.classifier = nn.Linear(512 * 7 * 7, 10)
    model.to_empty(device="cpu")
    for m in model.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return model


@pytest.mark.parametrize(
    "name, expected_ic",
    [
        ("resnet18", 16),
        ("resnet50", 16),
        ("vgg16_bn", 13),
        ("mobilenet_v2", 18),
        ("efficientnet_b0", 8),
        ("resnext50_32x4d", 16),
    ],
)
def test_torchvision_bit_identical_eval_and_train(name, expected_ic):
    torch.manual_seed(0)
    plain = _torchvision_model(name)
    ic = convert(plain)
    assert len(ic_layer_names(ic)) == expected_ic  # every 3x3 conv
    assert not ic_layer_names(plain)  # inplace=False left the original alone
    plain_sd = plain.state_dict()
    x = torch.randn(2, 3, 32, 32)
    for train in (False, True):
        plain.train(train)
        ic.train(train)
        with torch.no_grad():  # train mode still updates the BN running statistics
            torch.manual_seed(1)  # dropout / stochastic depth draw the same masks
            a = plain(x)
            torch.manual_seed(1)
            b = ic(x)
        assert torch.equal(a, b), f"{name} differs in {'train' if train else 'eval'} mode"
    ic_sd = ic.state_dict()
    for k, v in plain.state_dict().items():  # every key kept, BN running stats updated identically
        assert torch.equal(ic_sd[k], v), k
    added = set(ic_sd) - set(plain_sd)
    assert added == {f"{n}.{p}" for n in ic_layer_names(ic) for p in ("adjust_weight", "adjust_bias", "alpha")}


def test_gradients_at_alpha_zero():
    torch.manual_seed(0)
    ic = convert(torchvision.models.resnet18(num_classes=4))
    ic(torch.randn(2, 3, 32, 32)).sum().backward()
    for n, p in ic.named_parameters():
        assert p.grad is not None, n
        if n.endswith(("adjust_weight", "adjust_bias")):
            assert not p.grad.any(), n  # zero tensors while alpha == 0 (DDP sees them used)
    assert any(p.grad.abs().sum() > 0 for n, p in ic.named_parameters() if n.endswith("alpha"))


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, (1, 3), padding=(0, 1), bias=False)
        self.c = nn.Conv2d(4, 4, 1)
        self.shared = self.a  # the same conv under two names
        self.seq = nn.Sequential(nn.Conv2d(4, 4, 5, padding=2), nn.ReLU())

    def forward(self, x):
        return self.seq(self.c(self.b(self.a(x))))


def test_selection_rules_and_options():
    torch.manual_seed(0)
    net = _Net().double()
    net.a.weight.requires_grad_(False)
    ic = convert(net, kernel_sizes=[(1, 3), 5], alpha=0.5, alpha_mode="fixed")
    assert set(ic_layer_names(ic)) == {"b", "seq.0"}
    assert isinstance(ic.b, IcConv2d) and ic.b.adjust_weight.dtype == torch.float64
    assert float(ic.seq[0].alpha) == 0.5 and "alpha" in dict(ic.seq[0].named_buffers())

    ic = convert(net, kernel_sizes=(3,), include=lambda name, m: m.out_channels == 4 and name != "c")
    assert isinstance(ic.a, IcConv2d) and ic.shared is ic.a  # a shared conv stays one module
    assert not ic.a.weight.requires_grad and ic.a.bias.requires_grad
    assert isinstance(ic.a.alpha, nn.Parameter)  # alpha_mode="learnable" by default

    seen = []
    with pytest.warns(UserWarning, match="nothing was converted"):
        convert(net, kernel_sizes=(1, 3, 5), include=lambda n, m: seen.append(n) or False)
    assert sorted(seen) == ["a", "c", "seq.0", "shared"]  # qualified names; "b" is (1, 3), not a match

    assert convert(net, inplace=True) is net and isinstance(net.a, IcConv2d) and net.shared is net.a
    before = net.state_dict()
    again = convert(net, kernel_sizes=(1, 3, 5, (1, 3)))  # an IcConv2d is never converted twice
    assert isinstance(again.a, IcConv2d) and set(again.state_dict()) - set(before) == {
        f"{n}.{p}" for n in ("b", "c", "seq.0") for p in ("adjust_weight", "adjust_bias", "alpha")
    }


def test_top_level_conv_and_subclasses():
    conv = nn.Conv2d(2, 3, 3)
    assert isinstance(convert(conv), IcConv2d)

    class WeirdConv(nn.Conv2d):  # may override forward: left alone, with a warning naming it
        pass

    seq = nn.Sequential(WeirdConv(2, 3, 3), nn.Conv2d(3, 3, 3), WeirdConv(3, 3, 1))
    with pytest.warns(UserWarning, match=r"left 1 conv\(s\) unconverted: WeirdConv .*\('0'\)"):
        ic = convert(seq)
    assert type(ic[0]) is WeirdConv and type(ic[1]) is IcConv2d and type(ic[2]) is WeirdConv

    pair = nn.Sequential(IcDepthwiseSeparable(4, 8))  # already an IC layer: its dw conv stays plain
    with pytest.warns(UserWarning, match="nothing was converted"):
        assert type(convert(pair)[0].dw) is nn.Conv2d


@pytest.mark.parametrize(
    "model, kwargs, sizes",
    [
        (nn.Sequential(nn.Linear(4, 4), nn.ReLU()), {}, r"\(3x3\)"),
        (nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 1)), {"kernel_sizes": (5, (1, 7))}, r"\(1x7, 5x5\)"),
        (nn.Sequential(nn.Conv2d(3, 8, 3)), {"include": lambda name, m: False}, r"\(3x3\) accepted by include"),
    ],
)
def test_nothing_to_convert_warns(model, kwargs, sizes):
    with pytest.warns(
        UserWarning,
        match=f"nothing was converted: Sequential has no nn.Conv2d with a kernel size in kernel_sizes {sizes}",
    ) as rec:
        out = convert(model, **kwargs)
    assert len(rec) == 1 and rec[0].filename == __file__  # points at the caller
    assert out is not model and out.state_dict().keys() == model.state_dict().keys()
    with pytest.warns(UserWarning, match="the result is the model unchanged"):
        assert convert(model, inplace=True, **kwargs) is model


def test_converting_something_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        convert(torchvision.models.resnet18())


def test_train_mode_and_device_preserved():
    net = nn.Sequential(nn.Conv2d(2, 3, 3)).eval()
    ic = convert(net)
    assert not ic[0].training and ic[0].weight.device == net[0].weight.device


@pytest.mark.parametrize(
    "kwargs, exc, word",
    [
        (dict(model="resnet"), TypeError, "model"),
        (dict(kernel_sizes=3), TypeError, "kernel_sizes"),
        (dict(kernel_sizes=()), ValueError, "kernel_sizes"),
        (dict(kernel_sizes=[0]), ValueError, "kernel_sizes"),
        (dict(kernel_sizes=["3"]), TypeError, "kernel_sizes"),
        (dict(include="layer"), TypeError, "include"),
        (dict(alpha="0"), TypeError, "alpha"),
        (dict(alpha_mode="trainable"), ValueError, "alpha_mode"),
        (dict(inplace="yes"), TypeError, "inplace"),
    ],
)
def test_bad_arguments(kwargs, exc, word):
    kwargs.setdefault("model", nn.Conv2d(1, 1, 3))
    with pytest.raises(exc, match=word):
        convert(**kwargs)
