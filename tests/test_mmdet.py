"""mmdetection integration: the ICResNet backbone, IcConv2d as a conv_cfg type, the shipped VOC configs, and
mmengine's Runner on them (checkpoint loading with torch's weights_only default, resume).

Skipped when mmdetection is not installed (``bash scripts/setup_mmdet.sh``).
"""

import os
import pickle

import pytest
import torch

pytest.importorskip("mmdet", reason="mmdetection is not installed (bash scripts/setup_mmdet.sh, docs/detection.md)")
pytest.importorskip("mmcv._ext", reason="mmcv was built without its ops (MMCV_WITH_OPS=1)")

import torchvision  # noqa: E402
from mmcv.cnn import ConvModule  # noqa: E402
from mmdet.registry import DATASETS, MODELS  # noqa: E402
from mmdet.structures import DetDataSample  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.hooks import Hook  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from mmengine.runner import Runner  # noqa: E402
from mmengine.structures import InstanceData  # noqa: E402
from mmengine.utils import import_modules_from_strings  # noqa: E402

import ic_networks  # noqa: E402
import ic_networks.integrations.mmdet as icmm  # noqa: E402
from ic_networks.io import atomic_save  # noqa: E402
from ic_networks.training.trainer import CHECKPOINT, FINAL_WEIGHTS  # noqa: E402

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
    backbone = MODELS.build(
        dict(type="ICResNet", depth=depth, frozen_stages=1, zero_init_residual=False, init_cfg=None)
    )
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
    m = ConvModule(
        8, 16, 3, padding=1, conv_cfg=dict(type="IcConv2d", alpha=0.5, alpha_mode="fixed"), norm_cfg=dict(type="BN")
    )
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
        s = DetDataSample(
            metainfo=dict(
                img_id=i, img_shape=(h, w), ori_shape=(h, w), scale_factor=(1.0, 1.0), flip=False, flip_direction=None
            )
        )
        s.gt_instances = InstanceData(
            bboxes=torch.tensor([[8.0, 12.0, w * 0.6, h * 0.7], [w * 0.3, h * 0.2, w - 4.0, h - 6.0]]),
            labels=torch.tensor([3, num_classes - 1]),
        )
        samples.append(s)
    return {"inputs": inputs, "data_samples": samples}


@pytest.mark.parametrize(
    "name,loss_keys",
    [
        ("faster-rcnn_ic-r50_fpn_voc0712.py", {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox"}),
        ("retinanet_ic-r50_fpn_voc0712.py", {"loss_cls", "loss_bbox"}),
    ],
)
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


# ----------------------------------------------------------------------------- mmengine's Runner
class _SyntheticDet(torch.utils.data.Dataset):
    """What mmdet's pipeline (PackDetInputs) gives per image, for 4 small random images."""

    metainfo = dict(classes=tuple(f"class{i}" for i in range(20)))

    def __len__(self):
        return 4

    def __getitem__(self, i):
        batch = _fake_batch([(96, 128)])
        return {"inputs": batch["inputs"][0], "data_samples": batch["data_samples"][0]}


DATASETS.register_module(name="ICTestSyntheticDet", module=_SyntheticDet, force=True)


def _runner(tmp_path, checkpoint, max_iters, lr=0.01, save=False, resume=False):
    """mmengine's Runner on the shipped RetinaNet config: synthetic data, CPU, ``max_iters`` iterations."""
    cfg = Config.fromfile(os.path.join(CONFIGS, "retinanet_ic-r50_fpn_voc0712.py"))
    cfg.model.backbone.init_cfg.checkpoint = str(checkpoint)
    cfg.work_dir = str(tmp_path / "work")
    cfg.train_dataloader = dict(
        batch_size=2,
        num_workers=0,
        persistent_workers=False,
        sampler=dict(type="DefaultSampler", shuffle=False),
        dataset=dict(type="ICTestSyntheticDet"),
    )
    cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters)
    for key in ("val_dataloader", "val_evaluator", "val_cfg", "test_dataloader", "test_evaluator", "test_cfg"):
        cfg[key] = None
    cfg.param_scheduler = None
    cfg.optim_wrapper.optimizer = dict(type="SGD", lr=lr, momentum=0.9, weight_decay=0.0)
    cfg.default_hooks.checkpoint = dict(type="CheckpointHook", interval=1, by_epoch=False) if save else None
    cfg.default_hooks.logger = dict(type="LoggerHook", interval=1)
    cfg.log_processor = dict(by_epoch=False)
    cfg.randomness = dict(seed=0)
    cfg.resume, cfg.load_from = resume, None
    return Runner.from_cfg(cfg)


class _AtStart(Hook):
    """Records the iteration and the model's state when training starts (after init_cfg / resume)."""

    def before_train(self, runner):
        self.iter = runner.iter
        self.state = {k: v.detach().clone() for k, v in runner.model.state_dict().items()}
        self.optimizer_state = len(runner.optim_wrapper.optimizer.state)  # SGD's momentum buffers


def _train(runner):
    start = _AtStart()
    runner.register_hook(start)
    runner.train()
    return start


def _ic_resnet50_state(alpha):
    torch.manual_seed(1)
    net = ic_networks.models.ic_resnet50(alpha=alpha, alpha_mode="learnable")
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 1.5)
    return net.state_dict()


def test_runner_init_cfg_loads_plain_torchvision_checkpoint(plain_resnet50, tmp_path):
    sd, path = plain_resnet50
    start = _train(_runner(tmp_path, path, max_iters=1))
    got = {k[len("backbone.") :]: v for k, v in start.state.items() if k.startswith("backbone.")}
    for key in ("conv1.weight", "layer2.0.conv2.weight", "layer4.2.conv3.weight", "layer1.0.bn2.running_var"):
        assert torch.equal(got[key], sd[key]), key
    assert start.iter == 0 and start.optimizer_state == 0
    alphas = [v for k, v in got.items() if k.endswith(".alpha")]
    assert len(alphas) == 16 and all(float(a) == 0.0 for a in alphas)  # eq. 7: the plain network at the start


@pytest.mark.parametrize("kind", ["final weights", "training checkpoint"])
def test_runner_init_cfg_loads_ic_networks_train_output(kind, tmp_path):
    """What ``ic-networks train`` writes: ``OUT/model.pt`` (the final state_dict) and ``OUT/checkpoint.pt``
    (a training checkpoint with the weights under "model"), both with ``ic_networks.io.atomic_save``."""
    sd = _ic_resnet50_state(alpha=0.25)
    out = tmp_path / "run"
    if kind == "final weights":
        path = atomic_save(sd, out / FINAL_WEIGHTS)
    else:
        path = atomic_save(
            {
                "format": "ic_networks.training/1",
                "recipe": {"epochs": 1},
                "model": sd,
                "optimizer": {"state": {}, "param_groups": []},
                "epoch": 1,
                "step": 10,
            },
            out / CHECKPOINT,
        )
    start = _train(_runner(tmp_path, path, max_iters=1))
    got = {k[len("backbone.") :]: v for k, v in start.state.items() if k.startswith("backbone.")}
    for key in (
        "layer3.4.conv2.weight",
        "layer3.4.conv2.adjust_weight",
        "layer3.4.conv2.adjust_bias",
        "layer1.0.conv2.alpha",
        "layer1.2.bn1.running_var",
    ):
        assert torch.equal(got[key], sd[key]), key
    assert float(got["layer4.0.conv2.alpha"]) == 0.25


def test_runner_resume_continues_a_run(plain_resnet50, tmp_path):
    _, path = plain_resnet50
    _train(_runner(tmp_path, path, max_iters=1, save=True))
    saved = icmm.load_from_local(str(tmp_path / "work" / "iter_1.pth"))
    assert saved["meta"]["iter"] == 1 and "message_hub" in saved  # HistoryBuffers, numpy arrays
    runner = _runner(tmp_path, path, max_iters=2, save=True, resume=True)
    start = _train(runner)
    assert start.iter == 1 and start.optimizer_state > 0  # continued where the first run stopped
    for k, v in saved["state_dict"].items():
        assert torch.equal(start.state[k], v), k
    assert runner.iter == 2 and (tmp_path / "work" / "iter_2.pth").is_file()


def test_checkpoint_loader_is_scoped_and_refuses_code(tmp_path):
    from mmengine.runner.checkpoint import CheckpointLoader

    assert CheckpointLoader._get_checkpoint_loader(str(tmp_path / "x.pth")) is icmm.load_from_local
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "payload": os.system}, evil)  # a pickled callable: refused, never called
    with pytest.raises(pickle.UnpicklingError, match=r"weights_only=True\) refused it: .*(posix|os)\.system"):
        icmm.load_from_local(str(evil))

    class Reach:  # getattr is allowed only for HistoryBuffer's statistics methods
        def __reduce__(self):
            return getattr, (icmm.HistoryBuffer, "__init__")

    torch.save({"x": Reach()}, evil)
    with pytest.raises(pickle.UnpicklingError, match="only HistoryBuffer statistics methods"):
        icmm.load_from_local(str(evil))
    from mmengine.logging import HistoryBuffer

    buf = tmp_path / "hb.pth"
    torch.save({"hb": HistoryBuffer([1.0, 2.0], [1, 1])}, buf)
    with pytest.raises(Exception, match="HistoryBuffer"):
        torch.load(buf)  # torch.load elsewhere keeps its own allowlist
    hb = icmm.load_from_local(str(buf))["hb"]
    assert isinstance(hb, HistoryBuffer) and hb.mean() == 1.5
