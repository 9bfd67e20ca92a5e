# Faster R-CNN, IC-ResNet-50 + FPN, PASCAL VOC 07+12: mmdetection's VOC recipe with the
# backbone swapped for ic_networks' ICResNet (3x3 block convs are IcConv2d).
# Data as in mmdet: data/VOCdevkit/VOC2007, VOC2012 under the working directory.
# The backbone is initialised from a LOCAL state_dict of an IC-ResNet-50 (from WLD, as in the paper)
# or of a plain ResNet-50 (its IC parameters then start at random with alpha = 0); nothing is downloaded.
# Change it with --cfg-options model.backbone.init_cfg.checkpoint=PATH.
_base_ = "mmdet::pascal_voc/faster-rcnn_r50_fpn_1x_voc0712.py"
custom_imports = dict(imports=["ic_networks.integrations.mmdet"], allow_failed_imports=False)

ic_backbone_checkpoint = "checkpoints/ic_resnet50.pth"
model = dict(
    backbone=dict(
        type="ICResNet",
        depth=50,
        ic_alpha_mode="learnable",
        init_cfg=dict(type="Pretrained", checkpoint=ic_backbone_checkpoint),
    )
)
