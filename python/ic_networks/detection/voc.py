"""PASCAL VOC from a local VOCdevkit, in torchvision's detection target format, and VOC mAP.

Conventions (decisions):

* Labels are 1..20 in :data:`VOC_CLASSES` order; 0 is the background, so detectors use
  ``num_classes=21``.
* Boxes are float ``(x1, y1, x2, y2)`` in pixels, from VOC's 1-based inclusive corners as
  ``(xmin - 1, ymin - 1, xmax, ymax)``.
* ``difficult`` objects: dropped from training targets; at evaluation they are passed to the metric
  as ``iscrowd`` so that detecting them is neither a true nor a false positive (VOC's rule).
* mAP is torchmetrics' ``MeanAveragePrecision`` (pycocotools backend) at IoU 0.5: COCO-style
  101-point interpolated AP, close to VOC2010+'s area AP; VOC2007's 11-point AP (mmdet's default
  for VOC07 test) comes out slightly lower. torchmetrics and pycocotools are the ``[detection]``
  extra (``pip install "ic-networks[detection]"``); :func:`voc_map` names it when they are missing.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor
from torch.utils.data import ConcatDataset, Dataset
from torchvision.datasets import VOCDetection
from torchvision.transforms.functional import pil_to_tensor

from .._optional import require

__all__ = ["VOC_CLASSES", "VOCDataset", "voc_datasets", "parse_voc_split", "voc_map", "collate"]

VOC_CLASSES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
_LABEL = {name: i + 1 for i, name in enumerate(VOC_CLASSES)}
_IMAGE_SETS = ("train", "trainval", "val", "test")


def _devkit_parent(root: str, year: str) -> str:
    """The directory holding ``VOCdevkit/VOC<year>``: ``root`` itself or, when ``root`` is the
    ``VOCdevkit`` folder, its parent."""
    root = os.fspath(root)
    for cand in (root, os.path.dirname(os.path.abspath(root))):
        if os.path.isdir(os.path.join(cand, "VOCdevkit", f"VOC{year}")):
            return cand
    raise FileNotFoundError(
        f"root: no VOCdevkit/VOC{year} under {root!r}; expected <root>/VOCdevkit/VOC{year}/"
        "{JPEGImages,Annotations,ImageSets/Main} (the PASCAL VOC tarballs unpacked; nothing is downloaded)"
    )


class VOCDataset(Dataset):
    """One VOC split as ``(image, target)``: ``image`` a float CHW tensor in [0, 1], ``target`` a dict
    with ``boxes`` (N, 4) float32, ``labels`` (N,) int64, ``difficult`` (N,) bool and ``image_id``
    (the file stem). With ``train=True`` difficult objects are dropped and images are flipped
    horizontally with probability ``hflip`` (boxes with them).
    """

    def __init__(
        self, root: str, year: str = "2007", image_set: str = "trainval", train: bool = False, hflip: float = 0.5
    ) -> None:
        if image_set not in _IMAGE_SETS:
            raise ValueError(f"image_set: expected one of {_IMAGE_SETS}, got {image_set!r}")
        if image_set == "test" and year != "2007":
            raise ValueError(f"image_set: 'test' annotations are public for VOC2007 only, got year {year!r}")
        if not 0.0 <= hflip <= 1.0:
            raise ValueError(f"hflip: expected a probability in [0, 1], got {hflip!r}")
        parent = _devkit_parent(root, year)
        split = os.path.join(parent, "VOCdevkit", f"VOC{year}", "ImageSets", "Main", f"{image_set}.txt")
        if not os.path.isfile(split):
            raise FileNotFoundError(f"root: split file {split!r} is missing")
        self.voc = VOCDetection(parent, year=year, image_set=image_set, download=False)
        self.train, self.hflip = bool(train), float(hflip)

    def __len__(self) -> int:
        return len(self.voc)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        img, ann = self.voc[index]
        ann = ann["annotation"]
        boxes, labels, difficult = [], [], []
        for obj in ann.get("object", []):
            name = obj["name"].strip()
            if name not in _LABEL:
                raise ValueError(f"{self.voc.annotations[index]}: unknown VOC class {name!r}")
            bb = obj["bndbox"]
            boxes.append([float(bb["xmin"]) - 1, float(bb["ymin"]) - 1, float(bb["xmax"]), float(bb["ymax"])])
            labels.append(_LABEL[name])
            difficult.append(str(obj.get("difficult", "0")).strip() == "1")
        image = pil_to_tensor(img.convert("RGB")).float().div_(255)
        target = {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "difficult": torch.tensor(difficult, dtype=torch.bool),
            "image_id": os.path.splitext(os.path.basename(self.voc.images[index]))[0],
        }
        if self.train:
            keep = ~target["difficult"]
            for k in ("boxes", "labels", "difficult"):
                target[k] = target[k][keep]
            if self.hflip and torch.rand(()) < self.hflip:
                image = image.flip(-1)
                b = target["boxes"]
                target["boxes"] = torch.stack(
                    [image.shape[-1] - b[:, 2], b[:, 1], image.shape[-1] - b[:, 0], b[:, 3]], 1
                )
        return image, target


def parse_voc_split(spec: str) -> tuple[str, str]:
    """``'2007-trainval'`` -> ``('2007', 'trainval')``."""
    year, sep, image_set = str(spec).partition("-")
    if not sep or not year.isdigit() or image_set not in _IMAGE_SETS:
        raise ValueError(f"VOC split: expected YEAR-SET such as '2007-trainval' or '2007-test', got {spec!r}")
    return year, image_set


def voc_datasets(root: str, splits: Iterable[str], train: bool) -> Dataset:
    """The concatenation of ``splits`` (e.g. ``['2007-trainval', '2012-trainval']``, VOC 07+12)."""
    sets = [VOCDataset(root, *parse_voc_split(s), train=train) for s in splits]
    if not sets:
        raise ValueError("splits: expected at least one VOC split")
    return sets[0] if len(sets) == 1 else ConcatDataset(sets)


def collate(batch: Sequence) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    """Lists of images and targets, the input format of torchvision's detectors."""
    images, targets = zip(*batch)
    return list(images), list(targets)


def voc_map(
    predictions: Sequence[dict[str, Tensor]], targets: Sequence[dict[str, Tensor]], class_metrics: bool = False
) -> dict[str, float]:
    """mAP at IoU 0.5 of torchvision-style ``predictions`` (``boxes``, ``scores``, ``labels``) against
    VOC ``targets`` (``difficult`` ones ignored), with torchmetrics' ``MeanAveragePrecision``.

    Returns ``{'map50': ...}`` and, with ``class_metrics``, ``'ap50/<class>'`` for every class present
    (-1 for classes with no ground truth, torchmetrics' convention).
    """
    require("pycocotools", "VOC mAP")  # torchmetrics' backend, imported by it only at compute()
    MeanAveragePrecision = require("torchmetrics.detection", "VOC mAP").MeanAveragePrecision
    if len(predictions) != len(targets):
        raise ValueError(f"predictions: expected one per target ({len(targets)}), got {len(predictions)}")
    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", iou_thresholds=[0.5], class_metrics=class_metrics)
    preds = [{k: p[k].detach().cpu() for k in ("boxes", "scores", "labels")} for p in predictions]
    gts = [
        {
            "boxes": t["boxes"].cpu(),
            "labels": t["labels"].cpu(),
            "iscrowd": t.get("difficult", torch.zeros(len(t["labels"]), dtype=torch.bool)).cpu().long(),
        }
        for t in targets
    ]
    metric.update(preds, gts)
    res = metric.compute()
    out = {"map50": float(res["map"])}
    if class_metrics:
        for c, ap in zip(res["classes"].reshape(-1).tolist(), res["map_per_class"].reshape(-1).tolist()):
            name = VOC_CLASSES[c - 1] if 1 <= c <= len(VOC_CLASSES) else str(c)
            out[f"ap50/{name}"] = float(ap)
    return out
