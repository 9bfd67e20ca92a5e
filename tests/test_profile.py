"""ic_networks.profile: the paper's Table 1, the counting convention by hand, the IC share."""

import pytest
import torch
import torchvision
from torch import nn

import ic_networks.models as M
from ic_networks.nn import IcConv2d
from ic_networks.profiling import Profile, profile

# The paper's Table 1 at 224x224: params (M) and GMACs, plain -> IC, as printed.
PAPER = {
    "resnet18": (("11.7", "1.82"), ("12.9", "2.01")),
    "resnet34": (("21.8", "3.68"), ("24.2", "4.07")),
    "resnet50": (("25.6", "4.12"), ("26.8", "4.33")),
}


def _printed(p: Profile):
    return f"{p.params / 1e6:.1f}", f"{p.macs / 1e9:.2f}"


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_table(name):
    with torch.device("meta"):  # no memory, no init: the counts only need shapes
        plain, ic = getattr(torchvision.models, name)(), getattr(M, f"ic_{name}")()
    p_plain, p_ic = profile(plain), profile(ic)
    (paper_params, paper_gmacs), (paper_ic_params, paper_ic_gmacs) = PAPER[name]
    assert _printed(p_plain) == (paper_params, paper_gmacs)
    assert p_plain.ic_layers == 0 and p_plain.ic_macs == 0 and p_plain.ic_box_sum_adds == 0
    assert _printed(p_ic)[1] == paper_ic_gmacs
    assert p_ic.macs - p_plain.macs == p_ic.ic_macs  # the IC branch is all that was added
    assert p_ic.params - p_plain.params == p_ic.ic_params
    if name != "resnet34":
        assert _printed(p_ic)[0] == paper_ic_params
    else:
        # Measured 24.148M prints 24.1M; the paper's 24.2M needs one more Cout-vector per IC
        # layer (a b2 bias, or a bias on the W' conv), which these layers do not have.
        assert _printed(p_ic)[0] == "24.1"
        couts = sum(m.out_channels for m in ic.modules() if isinstance(m, IcConv2d))
        assert f"{(p_ic.params + couts) / 1e6:.1f}" == paper_ic_params
    # box sum: additions, reported apart; counting them as MACs would break 2.01 for ResNet-18
    if name == "resnet18":
        assert f"{(p_ic.macs + p_ic.ic_box_sum_adds) / 1e9:.2f}" == "2.02"


def test_convention_by_hand():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # bias
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        IcConv2d(8, 6, 3, stride=2, padding=1, groups=2, bias=False),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 4),
    )
    p = profile(model, (2, 3, 16, 16))
    conv = 2 * 8 * 16 * 16 * (3 * 9 + 1)
    bn = 2 * (2 * 8 * 16 * 16)
    relu, pool = 2 * 8 * 16 * 16, 2 * 8 * 16 * 16
    out_ic = 2 * 6 * 4 * 4
    ic_conv = out_ic * (4 * 9)
    avg, linear = out_ic, 2 * 4 * (6 + 1)
    assert p.ic_macs_adjust == out_ic * 4  # Cin/groups MACs per output element, on the output grid
    assert p.ic_macs_elementwise == 2 * out_ic
    assert p.ic_box_sum_adds == 2 * 8 * 4 * 4 * 9  # per input channel and output position
    assert p.macs == conv + bn + relu + pool + ic_conv + avg + linear + p.ic_macs
    assert p.ic_layers == 1 and p.ic_params == 6 * 4 + 6  # W', b1 (alpha is a fixed buffer)
    assert p.params == sum(t.numel() for t in model.parameters())
    assert p.as_dict()["ic_macs"] == p.ic_macs and "GMACs" in str(p)


def test_ic_share_matches_spec_cost_model():
    """Cost of the IC branch: extra MACs about 1/(kh*kw) (W') + 1/Cout (box sum) of the conv's, params 1/(kh*kw)."""
    layer = IcConv2d(64, 32, 3, padding=1, bias=False, alpha_mode="learnable")
    p = profile(layer, (1, 64, 20, 20))
    conv_macs = p.macs - p.ic_macs
    assert p.ic_macs_adjust * 9 == conv_macs
    assert p.ic_box_sum_adds * 32 == conv_macs
    assert p.ic_params == 32 * 64 + 32 + 1  # W' (1/9 of W), b1, a learnable alpha


def test_mobilenet_pair_counts_as_one_ic_layer_and_real_model_agrees():
    torch.manual_seed(0)
    real = M.ic_mobilenet_cifar()
    with torch.device("meta"):
        meta = M.ic_mobilenet_cifar()
    p, q = profile(real, (1, 3, 32, 32)), profile(meta, (1, 3, 32, 32))
    assert p == q and p.ic_layers == 13
    # W' is (Cout, Cin) on the pair's output grid: as many MACs as the pointwise conv
    side, adjust, box, params = 32, 0, 0, 0
    for block in meta.blocks:
        cin, cout = block.pw.in_channels, block.pw.out_channels
        side //= block.dw.stride[0]
        adjust += cin * cout * side * side
        box += cin * side * side * 9
        params += cin * cout + cout  # W', b1 (alpha: a fixed buffer from scratch)
    assert (p.ic_macs_adjust, p.ic_box_sum_adds, p.ic_params) == (adjust, box, params)
    before = [t.clone() for t in real.parameters()]
    profile(real)  # the model itself is not touched
    assert all(torch.equal(a, b) and b.device.type == "cpu" for a, b in zip(before, real.parameters()))


@pytest.mark.parametrize(
    "args, exc, word",
    [
        ((nn.Linear(2, 2).__class__, (1, 2)), TypeError, "model"),
        ((nn.Conv2d(3, 3, 3), "1x3x8x8"), TypeError, "input_size"),
        ((nn.Conv2d(3, 3, 3), (1, 3, 0, 8)), ValueError, "input_size"),
        ((nn.Conv2d(3, 3, 3), (1, 3, 8.0, 8)), ValueError, "input_size"),
    ],
)
def test_bad_arguments(args, exc, word):
    with pytest.raises(exc, match=word):
        profile(*args)
