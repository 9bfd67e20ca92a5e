"""torchvision IC detectors, VOC reading, VOC mAP and the train-det / eval-det commands (CPU, small)."""

import json
import os
import sys

import pytest
import torch
import torchvision
from PIL import Image
from torch import nn
from torchvision.models.detection import FasterRCNN, RetinaNet
from torchvision.ops.misc import FrozenBatchNorm2d

import ic_networks
from helpers import ic_layer_names
from ic_networks import detection as det
from ic_networks.cli import main as cli_main
from ic_networks.detection.voc import VOC_CLASSES, VOCDataset, voc_map
from ic_networks.integrations.torchvision import register
from ic_networks.training import watchdog

SMALL = dict(min_size=128, max_size=128)

# name, size, [(class, xmin, ymin, xmax, ymax, difficult)]
FAKE_VOC = [
    ("000001", (160, 120), [("dog", 11, 21, 80, 100, 0), ("person", 90, 5, 150, 60, 1)]),
    ("000002", (120, 160), [("car", 1, 1, 100, 50, 0)]),
]


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    """A tiny VOCdevkit/VOC2007 with JPEGs, XML annotations and trainval/test splits."""
    root = tmp_path_factory.mktemp("voc")
    base = root / "VOCdevkit" / "VOC2007"
    for d in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (base / d).mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for name, (w, h), objs in FAKE_VOC:
        pixels = (torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(base / "JPEGImages" / f"{name}.jpg")
        xml_objs = "".join(
            f"<object><name>{c}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>{d}</difficult>"
            f"<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
            for c, x1, y1, x2, y2, d in objs
        )
        (base / "Annotations" / f"{name}.xml").write_text(
            f"<annotation><folder>VOC2007</folder><filename>{name}.jpg</filename>"
            f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>{xml_objs}</annotation>"
        )
    for split in ("trainval", "test"):
        (base / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(n + "\n" for n, _, _ in FAKE_VOC))
    return str(root)


def _targets(n=2, num_classes=21):
    return [
        {
            "boxes": torch.tensor([[10.0, 20.0, 90.0, 110.0], [40.0, 8.0, 120.0, 60.0]]),
            "labels": torch.tensor([1, num_classes - 1]),
        }
        for _ in range(n)
    ]


def _ic_layers_are_block_3x3(model):
    names = ic_layer_names(model)
    assert all(n.startswith("backbone.body.layer") and n.endswith(".conv2") for n in names), names
    return len(names)


@pytest.mark.parametrize(
    "builder,cls,kwargs",
    [
        (det.fasterrcnn_ic_resnet50_fpn, FasterRCNN, dict(rpn_pre_nms_top_n_test=200, rpn_post_nms_top_n_test=100)),
        (det.retinanet_ic_resnet50_fpn, RetinaNet, dict(topk_candidates=100)),
    ],
)
def test_detector_trains_and_predicts(builder, cls, kwargs):
    torch.manual_seed(0)
    model = builder(num_classes=21, **SMALL, **kwargs)  # kwargs reach the torchvision model
    assert isinstance(model, cls)
    assert _ic_layers_are_block_3x3(model) == 16 == det.count_ic_layers(model)
    # From scratch: BatchNorm2d, every stage trainable, alpha = 1 (eq. 6).
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    ic = [m for m in model.modules() if isinstance(m, ic_networks.IcConv2d)]
    assert all(m.alpha_mode == "fixed" and float(m.alpha) == 1.0 for m in ic)

    images = [torch.rand(3, 128, 128), torch.rand(3, 112, 128)]
    model.train()
    losses = model(images, _targets())
    assert set(losses) == (
        {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
        if cls is FasterRCNN
        else {"classification", "bbox_regression"}
    )
    loss = sum(losses.values())
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    for m in (ic[0], ic[-1]):  # the IC branch takes part in training
        for p in (m.weight, m.adjust_weight, m.adjust_bias):
            assert p.grad is not None and torch.isfinite(p.grad).all()
        assert m.adjust_weight.grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2
    for o, im in zip(out, images):
        n = o["boxes"].shape[0]
        assert o["boxes"].shape == (n, 4) and o["scores"].shape == (n,) and o["labels"].shape == (n,)
        if n:
            # Faster R-CNN never predicts the background; RetinaNet's sigmoid head has a logit for the
            # unused label 0 too, which training pushes down (every anchor is a negative for it).
            assert o["labels"].min() >= (1 if cls is FasterRCNN else 0) and o["labels"].max() <= 20
            assert o["boxes"][:, 2].max() <= im.shape[-1] + 1e-3 and o["boxes"][:, 3].max() <= im.shape[-2] + 1e-3


def test_weights_backbone_from_plain_and_ic_state_dict(tmp_path):
    torch.manual_seed(0)
    plain = torchvision.models.resnet50(num_classes=10)  # fc is ignored: any num_classes loads
    with torch.no_grad():
        for m in plain.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "resnet50.pth"
    torch.save(plain.state_dict(), path)

    model = det.fasterrcnn_ic_resnet50_fpn(num_classes=21, weights_backbone=str(path), **SMALL)
    body = model.backbone.body
    assert det.count_ic_layers(model) == 16
    assert torch.equal(body.layer3[2].conv2.weight, plain.layer3[2].conv2.weight)
    assert torch.equal(body.bn1.running_var, plain.bn1.running_var)
    assert isinstance(body.bn1, FrozenBatchNorm2d)
    assert all(
        m.alpha_mode == "learnable" and float(m.alpha.detach()) == 0.0
        for m in body.modules()
        if isinstance(m, ic_networks.IcConv2d)
    )
    # trainable_backbone_layers=3 (default with weights): conv1 and layer1 frozen, IC params included.
    assert not body.conv1.weight.requires_grad and not body.layer1[0].conv2.adjust_weight.requires_grad
    assert body.layer2[0].conv2.adjust_weight.requires_grad and body.layer4[0].conv2.weight.requires_grad
    # alpha = 0: the converted backbone computes the plain ResNet-50's features, bit for bit (eq. 7).
    frozen = torchvision.models.resnet50(num_classes=10, norm_layer=FrozenBatchNorm2d)
    frozen.load_state_dict(plain.state_dict())
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        ref = frozen.layer4(
            frozen.layer3(frozen.layer2(frozen.layer1(frozen.maxpool(frozen.relu(frozen.bn1(frozen.conv1(x)))))))
        )
        assert torch.equal(body(x)["3"], ref)

    # An IC checkpoint of the model zoo's IC-ResNet-50 (alpha set to 0.25) restores the IC parameters too.
    from ic_networks.models import ic_resnet50

    zoo = ic_resnet50(num_classes=10)
    for m in zoo.modules():
        if isinstance(m, ic_networks.IcConv2d):
            m.set_alpha(0.25)
    ic_path = tmp_path / "ic_resnet50.pth"
    torch.save({"model": zoo.state_dict()}, ic_path)  # a training checkpoint wrapper is unwrapped
    retina = det.retinanet_ic_resnet50_fpn(num_classes=21, weights_backbone=ic_path, trainable_backbone_layers=5)
    rb = retina.backbone.body
    assert all(float(m.alpha.detach()) == 0.25 for m in rb.modules() if isinstance(m, ic_networks.IcConv2d))
    assert torch.equal(rb.layer2[1].conv2.adjust_weight, zoo.layer2[1].conv2.adjust_weight)
    assert all(p.requires_grad for p in rb.parameters())


def test_weights_backbone_errors(tmp_path):
    r18 = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), r18)
    with pytest.raises(RuntimeError, match="weights_backbone: not a ResNet-50"):
        det.fasterrcnn_ic_resnet50_fpn(weights_backbone=r18)
    with pytest.raises(FileNotFoundError, match="weights_backbone"):
        det.fasterrcnn_ic_resnet50_fpn(weights_backbone=tmp_path / "missing.pth")
    with pytest.raises(TypeError, match="weights_backbone"):
        det.retinanet_ic_resnet50_fpn(weights_backbone=123)
    with pytest.raises(ValueError, match="num_classes"):
        det.fasterrcnn_ic_resnet50_fpn(num_classes=1)
    with pytest.raises(ValueError, match="trainable_backbone_layers"):
        det.fasterrcnn_ic_resnet50_fpn(trainable_backbone_layers=3)  # frozen random stages
    with pytest.raises(ValueError, match="trainable_backbone_layers"):
        det.retinanet_ic_resnet50_fpn(trainable_backbone_layers=6)


def test_import_registers_nothing_in_torchvision(tmp_path):
    """Importing ic_networks (detection included) leaves torchvision's registry alone; register() fills it."""
    code = (
        "import ic_networks, ic_networks.detection, ic_networks.integrations.torchvision\n"
        "from torchvision.models import _api\n"
        "names = ('fasterrcnn_ic_resnet50_fpn', 'retinanet_ic_resnet50_fpn', 'ic_resnet50')\n"
        "print(sorted(n for n in names if n in _api.BUILTIN_MODELS))\n"
        "ic_networks.integrations.torchvision.register()\n"
        "print(sorted(n for n in names if n in _api.BUILTIN_MODELS))\n"
    )
    out = watchdog.run(
        [sys.executable, "-X", "faulthandler", "-c", code],
        300,
        dump_dir=tmp_path,
        merge_stderr=False,
        what="import check",
    )
    assert out.returncode == 0, out.stderr
    before, after = out.stdout.splitlines()
    assert before == "[]"
    assert after == "['fasterrcnn_ic_resnet50_fpn', 'ic_resnet50', 'retinanet_ic_resnet50_fpn']"


def test_torchvision_registry():
    names = register()
    assert register() == names  # idempotent
    registered = torchvision.models.list_models()
    for name, fn in det.BUILDERS.items():
        assert name in names and name in registered
        assert torchvision.models.get_model_builder(name) is fn
    assert sorted(torchvision.models.list_models(module=det)) == sorted(det.BUILDERS)
    model = torchvision.models.get_model("fasterrcnn_ic_resnet50_fpn", num_classes=3, **SMALL)
    assert isinstance(model, FasterRCNN) and det.count_ic_layers(model) == 16
    assert model.roi_heads.box_predictor.cls_score.out_features == 3


def test_voc_reader(voc_root):
    ds = VOCDataset(voc_root, "2007", "trainval")
    assert len(ds) == 2
    image, t = ds[0]
    assert image.shape == (3, 120, 160) and image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
    assert t["image_id"] == "000001"
    torch.testing.assert_close(t["boxes"], torch.tensor([[10.0, 20, 80, 100], [89, 4, 150, 60]]))
    assert t["labels"].tolist() == [VOC_CLASSES.index("dog") + 1, VOC_CLASSES.index("person") + 1]
    assert t["difficult"].tolist() == [False, True]
    # Root may also be the VOCdevkit folder itself.
    assert len(VOCDataset(os.path.join(voc_root, "VOCdevkit"), "2007", "test")) == 2
    # Training: difficult objects dropped, horizontal flip moves the boxes with the image.
    flip = VOCDataset(voc_root, "2007", "trainval", train=True, hflip=1.0)
    fimage, ft = flip[0]
    torch.testing.assert_close(fimage, image.flip(-1))
    torch.testing.assert_close(ft["boxes"], torch.tensor([[160.0 - 80, 20, 160 - 10, 100]]))
    assert ft["labels"].tolist() == [VOC_CLASSES.index("dog") + 1]


def test_voc_reader_errors(voc_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="root: no VOCdevkit/VOC2007"):
        VOCDataset(str(tmp_path), "2007", "trainval")
    with pytest.raises(FileNotFoundError, match="val.txt"):
        VOCDataset(voc_root, "2007", "val")
    with pytest.raises(ValueError, match="image_set"):
        VOCDataset(voc_root, "2007", "minival")
    with pytest.raises(ValueError, match="VOC split"):
        det.voc.parse_voc_split("2007trainval")


def test_voc_map_from_torchmetrics(voc_root):
    targets = [VOCDataset(voc_root, "2007", "test")[i][1] for i in range(2)]

    def pred(boxes, labels, scores=None):
        return {
            "boxes": torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.as_tensor(labels, dtype=torch.int64),
            "scores": torch.as_tensor(scores if scores is not None else [0.9] * len(labels)),
        }

    perfect = [pred(t["boxes"][~t["difficult"]], t["labels"][~t["difficult"]]) for t in targets]
    res = voc_map(perfect, targets, class_metrics=True)
    assert res["map50"] == pytest.approx(1.0)
    assert res["ap50/dog"] == pytest.approx(1.0) and res["ap50/car"] == pytest.approx(1.0)
    # Detecting the difficult person is neither a true nor a false positive.
    with_difficult = [pred(targets[0]["boxes"], targets[0]["labels"], [0.9, 0.95]), perfect[1]]
    assert voc_map(with_difficult, targets)["map50"] == pytest.approx(1.0)
    # A box shifted to IoU < 0.5 ranked above the right one halves the dog's precision: AP(dog) ~ 0.5.
    shifted = targets[0]["boxes"][:1] + torch.tensor([50.0, 0, 50, 0])
    dog = targets[0]["labels"][:1]
    worse = [pred(torch.cat([shifted, targets[0]["boxes"][:1]]), torch.cat([dog, dog]), [0.99, 0.5]), perfect[1]]
    res = voc_map(worse, targets, class_metrics=True)
    assert res["ap50/dog"] == pytest.approx(0.5, abs=0.01) and res["ap50/car"] == pytest.approx(1.0)
    # Wrong classes everywhere: nothing is found.
    assert voc_map([pred(t["boxes"], torch.full_like(t["labels"], 5)) for t in targets], targets)["map50"] == 0.0
    with pytest.raises(ValueError, match="predictions"):
        voc_map(perfect[:1], targets)


def test_cli_train_det_then_eval_det(voc_root, tmp_path, capsys):
    out = tmp_path / "run"
    common = [
        "--voc-root",
        voc_root,
        "--test-set",
        "2007-test",
        "--batch-size",
        "2",
        "--min-size",
        "96",
        "--max-size",
        "128",
        "--workers",
        "0",
        "--out",
        str(out),
    ]
    train = [
        "train-det",
        "--model",
        "fasterrcnn_ic_resnet50_fpn",
        "--train-sets",
        "2007-trainval",
        "--epochs",
        "1",
        "--warmup-iters",
        "1",
        *common,
    ]
    torch.manual_seed(0)
    assert cli_main(train + ["--no-eval"]) == 0
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["arch"] == "fasterrcnn_ic_resnet50_fpn"
    assert not any(p.name.endswith(".tmp") for p in out.iterdir())  # the atomic save left no temp file
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(log) == 1 and log[0]["epoch"] == 1 and log[0]["loss"] > 0
    # Re-running resumes after the finished epoch: no training, then the final evaluation.
    assert cli_main(train) == 0
    assert "resuming from" in capsys.readouterr().out
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 1
    first = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= first["map50"] <= 1.0 and "ap50/dog" in first
    # eval-det rebuilds the model from the checkpoint and gives the same mAP.
    (out / "metrics.json").unlink()
    assert cli_main(["eval-det", "--checkpoint", str(out / "last.pt"), *common]) == 0
    assert json.loads((out / "metrics.json").read_text()) == pytest.approx(first)

    assert cli_main(["eval-det", "--checkpoint", str(tmp_path / "none.pt"), *common]) == 1
    assert cli_main(["train-det", "--voc-root", str(tmp_path / "novoc"), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "--checkpoint: no such file" in err and "no VOCdevkit/VOC2007" in err


def test_voc_map_without_the_detection_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchmetrics.detection", None)  # import -> ImportError
    with pytest.raises(ImportError, match=r'pip install "ic-networks\[detection\]"'):
        voc_map([], [])
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    with pytest.raises(ImportError, match=r"'pycocotools'.*ic-networks\[detection\]"):
        voc_map([], [])


def test_mmdet_integration_without_mmdet_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mmdet", None)  # import mmdet -> ImportError
    monkeypatch.delitem(sys.modules, "ic_networks.integrations.mmdet", raising=False)
    with pytest.raises(ImportError, match="setup_mmdet.sh"):
        import ic_networks.integrations.mmdet  # noqa: F401
