"""ic_networks.viz: Figure 2 PNGs, Grad-CAM, and the ``figures``/``gradcam`` commands."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ic_networks import IcConv2d
from ic_networks.cli import main
from ic_networks.cli.viz import GRADCAM_SIZE
from ic_networks.models.cnn import fmnist_cnn, ic_fmnist_cnn
from ic_networks.viz import figures, gradcam, last_conv


def assert_png(path, size):
    assert path.is_file() and path.stat().st_size > 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        assert im.size == size
        pixels = np.asarray(im.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20  # drawn, not blank


# ------------------------------------------------------------------------------------------ figures
def test_figure_2a_region_colours(tmp_path):
    """The left panel (plain) shows 2 region colours, the right (IC) 4, as the titles say."""
    figures.plot_regions(tmp_path / "r.png", resolution=120)
    px = np.asarray(Image.open(tmp_path / "r.png").convert("RGB")).reshape(-1, 3)
    w = figures.REGIONS_SIZE[0]
    px = px.reshape(-1, w, 3)
    palette = [tuple(int(c[i : i + 2], 16) for i in (1, 3, 5)) for c in figures._REGION_COLOURS.colors]

    def colours(half):
        found = {tuple(p) for p in half.reshape(-1, 3)}
        return sum(c in found for c in palette)

    assert colours(px[:, : w // 2]) == 2
    assert colours(px[:, w // 2 :]) == 4


def test_write_figures_rejects_a_file_as_folder(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ValueError, match="out_dir"):
        figures.write_figures(f)


# ------------------------------------------------------------------------------------------ Grad-CAM
class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 6, 3, padding=1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(torch.relu(self.conv(x)), 1).flatten(1))


def manual_gradcam(model, x, layer, target):
    """Grad-CAM by hand: alpha_k = mean_ij d y_c / d A_kij, relu(sum_k alpha_k A_k), bilinear, / max."""
    acts = {}
    h = layer.register_forward_hook(lambda m, i, o: acts.setdefault("a", o))
    y = model(x[None])
    h.remove()
    (g,) = torch.autograd.grad(y[0, target], acts["a"])
    cam = torch.relu((g.mean((2, 3), keepdim=True) * acts["a"]).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear")[0, 0]
    return (cam / cam.max()).detach().numpy()


def test_gradcam_matches_definition():
    torch.manual_seed(0)
    model = Tiny()
    x = torch.randn(2, 9, 7)
    for target in range(4):
        got = gradcam(model, x, model.conv, target=target)
        assert got.shape == (9, 7) and got.dtype == np.float32
        np.testing.assert_allclose(got, manual_gradcam(model, x, model.conv, target), rtol=1e-5, atol=1e-6)


def test_gradcam_on_small_cnn():
    torch.manual_seed(0)
    model = ic_fmnist_cnn().train()
    x = torch.randn(1, 28, 28)
    maps = [gradcam(model, x, "features.8", target=t) for t in range(3)]
    for m in maps:
        assert m.shape == (28, 28) and m.min() >= 0.0 and m.max() <= 1.0
    assert any(m.max() == 1.0 for m in maps)
    assert max(np.abs(maps[0] - m).max() for m in maps[1:]) > 0.1  # the class matters
    assert model.training  # mode restored
    top = int(model.eval()(x[None]).argmax())
    np.testing.assert_array_equal(gradcam(model, x[None], model.features[8]), gradcam(model, x, "features.8", top))


def test_gradcam_resnet_with_ic_convs():
    """A torchvision ResNet (random weights, one BasicBlock per stage to keep it quick) whose 3x3
    convs are IcConv2d (alpha = 1)."""
    from torchvision.models.resnet import BasicBlock, ResNet

    torch.manual_seed(0)
    model = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=5)
    for mod in list(model.modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, nn.Conv2d) and child.kernel_size == (3, 3):
                setattr(mod, child_name, IcConv2d.from_conv(child, alpha=1.0))
    assert isinstance(model.layer4[0].conv2, IcConv2d)
    x = torch.randn(3, 40, 40)
    a, b = (gradcam(model, x, "layer2", target=t) for t in (0, 3))
    assert a.shape == b.shape == (40, 40)
    assert 0.0 <= min(a.min(), b.min()) and max(a.max(), b.max()) <= 1.0
    assert np.abs(a - b).max() > 0.05
    assert last_conv(model) == "layer4.0.conv2"


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(model="m"), TypeError, "model: expected an nn.Module"),
        (dict(image=np.zeros((2, 5, 5))), TypeError, "image: expected a torch.Tensor"),
        (dict(image=torch.zeros(2, 5, 5, dtype=torch.int64)), TypeError, "image: expected a floating-point"),
        (dict(image=torch.zeros(2, 2, 5, 5)), ValueError, r"image: expected shape \(C, H, W\)"),
        (dict(layer="nope"), ValueError, "layer: Tiny has no submodule named 'nope'"),
        (dict(layer=nn.Conv2d(2, 2, 1)), ValueError, "layer: the given Conv2d is not a submodule"),
        (dict(layer=3), TypeError, "layer: expected a submodule"),
        (dict(target=4), ValueError, r"target: expected a class index in \[0, 4\)"),
        (dict(target=1.0), TypeError, "target: expected an int"),
        (dict(layer="fc"), ValueError, r"layer: Grad-CAM needs a layer with \(N, C, h, w\) output"),
    ],
)
def test_gradcam_errors(kwargs, exc, match):
    model = Tiny()
    args = dict(model=model, image=torch.zeros(2, 5, 5), layer="conv", target=None)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        gradcam(**args)


# ------------------------------------------------------------------------------------------ CLI
def test_cli_figures(tmp_path, capsys):
    assert main(["figures", "--out", str(tmp_path / "figs"), "--resolution", "100"]) == 0
    assert_png(tmp_path / "figs" / "fig2a_regions.png", figures.REGIONS_SIZE)
    assert_png(tmp_path / "figs" / "fig2b_xor.png", figures.XOR_SIZE)
    assert "fig2b_xor.png" in capsys.readouterr().out


def test_cli_gradcam_random_weights_warns(tmp_path, capsys):
    out = tmp_path / "sub" / "cam.png"
    assert (
        main(["gradcam", "--image", "fmnist:0", "--model", "fmnist_cnn", "--train-steps", "0", "--out", str(out)]) == 0
    )
    err = capsys.readouterr().err
    assert "random weights" in err and "meaningless" in err
    assert_png(out, GRADCAM_SIZE)


def test_cli_gradcam_with_weights_and_image_file(tmp_path, capsys):
    torch.manual_seed(1)
    torch.save(fmnist_cnn().state_dict(), tmp_path / "plain.pt")
    torch.save({"model": ic_fmnist_cnn().state_dict()}, tmp_path / "ic.pt")  # a training checkpoint
    img = (np.add.outer(np.arange(40), np.arange(30)) % 256).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "img.png")
    out = tmp_path / "cam.png"
    argv = [
        "gradcam",
        "--image",
        str(tmp_path / "img.png"),
        "--plain-weights",
        str(tmp_path / "plain.pt"),
        "--ic-weights",
        str(tmp_path / "ic.pt"),
        "--target",
        "3",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    assert "meaningless" not in capsys.readouterr().err
    assert_png(out, GRADCAM_SIZE)
    assert main(argv[:1] + ["--image", str(tmp_path / "missing.png")] + argv[3:]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_last_conv_choice():
    assert last_conv(Tiny()) == "conv"
    assert last_conv(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Conv2d(2, 2, 1))) == "0"  # 1x1 skipped
    assert last_conv(nn.Sequential(nn.ReLU(), nn.Conv2d(1, 2, 1))) == "1"  # only 1x1: taken
    with pytest.raises(ValueError, match="has no Conv2d layer"):
        last_conv(nn.Linear(2, 2))
