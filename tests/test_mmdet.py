"""mmdetection integration: the ICResNet backbone, IcConv2d as a conv_cfg type, the shipped VOC configs.

Skipped when mmdetection is not installed (``bash scripts/setup_mmdet.sh``).
"""
import os

import pytest
import torch

pytest.importorskip("mmdet", reason="mmdetection is not installed (bash scripts/setup_mmdet.sh; its mmcv 2.1.0 builds against torch 2.13.0 only, not 2.14+: docs/detection.md)")
pytest.importorskip("mmcv._ext", reason="mmcv was built without its ops (MMCV_WITH_OPS=1)")

import torchvision  # noqa: E402
from mmcv.cnn import ConvModule  # noqa: E402
from mmdet.registry import MODELS  # noqa: E402
from mmdet.structures import DetDataSample  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from mmengine.structures import InstanceData  # noqa: E402
from mmengine.utils import import_modules_from_strings  # noqa: E402

import ic_networks  # noqa: E402
import ic_networks.integrations.mmdet as icmm  # noqa: E402

pytestmark = pytest.mark.mmdet
CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs", "mmdet")


def _ic(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, ic_networks.IcConv2d)]


@pytest.fixture(scope="module")
def plain_resnet50(tmp_path_factory):
    """A local plain torchvision ResNet-50 state_dict (non-trivial BN statistics) and its path."""
    torch.manual_seed(0)
    net = torchvision.models.resnet50()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("ckpt") / "resnet50.pth"
    torch.save(net.state_dict(), path)
    return net.state_dict(), str(path)


@pytest.mark.parametrize("depth,channels,n_ic", [(50, (256, 512, 1024, 2048), 16), (18, (64, 128, 256, 512), 16)])
def test_icresnet_from_config_dict(depth, channels, n_ic):
    torch.manual_seed(0)
    # zero_init_residual=False: with it the last BN of every block starts at 0, which blocks gradients.
    backbone = MODELS.build(dict(type="ICResNet", depth=depth, frozen_stages=1, zero_init_residual=False,
                                 init_cfg=None))
    backbone.init_weights()
    names = [n for n, _ in _ic(backbone)]
    assert len(names) == n_ic
    assert all(n.startswith("layer") for n in names)  # stem and 1x1/downsample convs stay plain
    assert all(m.alpha_mode == "fixed" and float(m.alpha) == 1.0 for _, m in _ic(backbone))  # from scratch: eq. 6
    assert not backbone.layer1[0].conv2.adjust_weight.requires_grad  # frozen stage: IC params too
    assert backbone.layer2[0].conv2.adjust_weight.requires_grad
    backbone.train()
    feats = backbone(torch.rand(2, 3, 64, 96))
    assert len(feats) == 4
    for f, c, stride in zip(feats, channels, (4, 8, 16, 32)):
        assert f.shape == (2, c, 64 // stride, 96 // stride)
    sum(f.mean() for f in feats).backward()
    assert backbone.layer4[0].conv2.adjust_weight.grad.abs().sum() > 0


def test_icresnet_loads_plain_checkpoint_and_matches_resnet(plain_resnet50):
    sd, path = plain_resnet50
    init = dict(type="Pretrained", checkpoint=path)
    ic = MODELS.build(dict(type="ICResNet", depth=50, init_cfg=init))
    plain = MODELS.build(dict(type="ResNet", depth=50, init_cfg=init))
    ic.init_weights()
    plain.init_weights()
    assert torch.equal(ic.layer3[1].conv2.weight, sd["layer3.1.conv2.weight"])
    assert torch.equal(ic.layer1[0].bn2.running_var, sd["layer1.0.bn2.running_var"])
    assert all(m.alpha_mode == "learnable" and float(m.alpha.detach()) == 0.0 for _, m in _ic(ic))  # eq. 7
    ic.eval()
    plain.eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(ic(x), plain(x)):
            assert torch.equal(a, b)


def test_icconv2d_as_conv_cfg():
    m = ConvModule(8, 16, 3, padding=1, conv_cfg=dict(type="IcConv2d", alpha=0.5, alpha_mode="fixed"),
                   norm_cfg=dict(type="BN"))
    assert isinstance(m.conv, ic_networks.IcConv2d) and float(m.conv.alpha) == 0.5
    assert m(torch.rand(2, 8, 10, 10)).shape == (2, 16, 10, 10)
    # Every conv of mmdet's ResNet (stem, 1x1, downsample) through conv_cfg, under the mmdet scope.
    init_default_scope("mmdet")
    net = MODELS.build(dict(type="ResNet", depth=18, conv_cfg=dict(type="IcConv2d"), init_cfg=None))
    n_conv = sum(isinstance(x, torch.nn.Conv2d) for x in net.modules())
    assert len(_ic(net)) == n_conv == 20
    assert [f.shape[1] for f in net(torch.rand(1, 3, 64, 64))] == [64, 128, 256, 512]


def test_icresnet_bad_arguments():
    with pytest.raises(ValueError, match="ic_alpha_mode"):
        icmm.ICResNet(depth=50, ic_alpha_mode="sometimes")
    with pytest.raises(TypeError, match="ic_alpha"):
        icmm.ICResNet(depth=50, ic_alpha="1")


def _fake_batch(shapes, num_classes=20):
    """Packed inputs as mmdet's PackDetInputs makes them: uint8 CHW images and DetDataSamples."""
    g = torch.Generator().manual_seed(0)
    inputs, samples = [], []
    for i, (h, w) in enumerate(shapes):
        inputs.append(torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8))
        s = DetDataSample(metainfo=dict(img_id=i, img_shape=(h, w), ori_shape=(h, w), scale_factor=(1.0, 1.0),
                                        flip=False, flip_direction=None))
        s.gt_instances = InstanceData(
            bboxes=torch.tensor([[8.0, 12.0, w * 0.6, h * 0.7], [w * 0.3, h * 0.2, w - 4.0, h - 6.0]]),
            labels=torch.tensor([3, num_classes - 1]),
        )
        samples.append(s)
    return {"inputs": inputs, "data_samples": samples}


@pytest.mark.parametrize("name,loss_keys", [
    ("faster-rcnn_ic-r50_fpn_voc0712.py", {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox"}),
    ("retinanet_ic-r50_fpn_voc0712.py", {"loss_cls", "loss_bbox"}),
])
def test_shipped_config_builds_detector_and_runs_loss(name, loss_keys, plain_resnet50):
    cfg = Config.fromfile(os.path.join(CONFIGS, name))
    assert cfg.custom_imports["imports"] == ["ic_networks.integrations.mmdet"]
    import_modules_from_strings(**cfg.custom_imports)  # what mmengine's Runner does with it
    assert cfg.model.backbone.type == "ICResNet" and cfg.model.backbone.depth == 50
    assert not cfg.model.backbone.init_cfg.checkpoint.startswith(("torchvision://", "http", "open-mmlab://"))
    head = cfg.model.roi_head.bbox_head if "roi_head" in cfg.model else cfg.model.bbox_head
    assert head.num_classes == 20  # VOC, from mmdet's base config
    sd, path = plain_resnet50
    cfg.model.backbone.init_cfg.checkpoint = path
    init_default_scope(cfg.get("default_scope", "mmdet"))
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    ic = _ic(model.backbone)
    assert len(ic) == 16 and all(float(m.alpha.detach()) == 0.0 for _, m in ic)
    assert torch.equal(model.backbone.layer2[0].conv2.weight, sd["layer2.0.conv2.weight"])

    model.train()
    data = model.data_preprocessor(_fake_batch([(160, 224), (192, 160)]), True)
    losses = model(**data, mode="loss")
    assert loss_keys <= set(losses)
    loss, _ = model.parse_losses(losses)
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    conv = model.backbone.layer4[2].conv2
    assert conv.weight.grad is not None and conv.alpha.grad is not None and torch.isfinite(conv.alpha.grad)
