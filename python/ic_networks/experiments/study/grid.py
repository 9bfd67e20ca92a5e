"""The study's grid: its configuration (:class:`StudyConfig`) and the cells of each part
(:func:`scratch_cells`, :func:`wld_cells`); the package docstring says what each cell changes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..._checks import positive_int

__all__ = ["SPLIT_SEED", "NETS", "PARTS", "StudyConfig", "ScratchCell", "WldCell", "scratch_cells", "wld_cells"]

SPLIT_SEED = 20261201
NETS = ("cnn", "resnet")
PARTS = ("scratch", "wld")


@dataclass(frozen=True)
class StudyConfig:
    train_images: int = 10_000
    val_images: int = 5_000
    epochs: int = 2
    wld_epochs: int = 1
    seeds: tuple[int, ...] = (0, 1, 2)
    nets: tuple[str, ...] = NETS
    lrs: tuple[float, ...] = (0.05, 0.1)
    batch_size: int = 128
    parts: tuple[str, ...] = PARTS
    probe_images: int = 256  # validation images for the branch-ratio diagnostic

    def __post_init__(self) -> None:
        for name in ("train_images", "val_images", "epochs", "wld_epochs", "batch_size", "probe_images"):
            positive_int(name, getattr(self, name))
        if self.train_images + self.val_images > 60_000:
            raise ValueError(
                f"train_images + val_images: at most 60000 (the training set), got "
                f"{self.train_images + self.val_images}"
            )
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds: expected distinct seeds, got {self.seeds!r}")
        bad = [n for n in self.nets if n not in NETS]
        if not self.nets or bad:
            raise ValueError(f"nets: expected some of {NETS}, got {self.nets!r}")
        bad = [p for p in self.parts if p not in PARTS]
        if not self.parts or bad:
            raise ValueError(f"parts: expected some of {PARTS}, got {self.parts!r}")
        if not self.lrs or any(not lr > 0 for lr in self.lrs):
            raise ValueError(f"lrs: expected learning rates > 0, got {self.lrs!r}")

    def data_key(self) -> dict:
        """What a run's result depends on besides its cell and seed."""
        return {
            "train_images": self.train_images,
            "val_images": self.val_images,
            "batch_size": self.batch_size,
            "split_seed": SPLIT_SEED,
            "probe_images": self.probe_images,
        }


@dataclass(frozen=True)
class ScratchCell:
    name: str
    net: str  # 'cnn' | 'resnet'
    ic: bool
    lr: float
    factor: str = ""  # the factor this cell changes from the IC default ('' for plain and the default)
    adjust_init: str = "like_weight"
    alpha: float = 1.0
    alpha_mode: str = "fixed"
    b1: float = 0.0


@dataclass(frozen=True)
class WldCell:
    name: str
    mode: str  # 'ce' (the control) | 'wld'
    factor: str = ""
    ic_lr_mult: float = 1.0
    alpha_start: float = 0.0
    e: float = 0.005
    tau: float = 4.0


def scratch_cells(nets: Sequence[str] = NETS, lrs: Sequence[float] = (0.05, 0.1)) -> list[ScratchCell]:
    """The part-``scratch`` cells (the package docstring), plain first."""
    cells: list[ScratchCell] = []
    for net in nets:
        for lr in lrs if net == "cnn" else lrs[:1]:
            cells.append(ScratchCell(f"{net}/plain/lr{lr:g}", net, False, lr))
            cells.append(ScratchCell(f"{net}/ic/lr{lr:g}", net, True, lr))
        lr = lrs[0]
        variants = [
            ("W' init", dict(adjust_init="scaled"), "W'/k²"),
            ("W' init", dict(adjust_init="zeros"), "W'=0"),
            ("W' init", dict(adjust_init="normal"), "W'~N(0,0.01²)"),
            ("alpha", dict(alpha_mode="learnable"), "alpha learnt from 1"),
            ("alpha", dict(alpha_mode="learnable", alpha=0.1), "alpha learnt from 0.1"),
            ("b1 init", dict(b1=-0.5), "b1=-0.5"),
            ("b1 init", dict(b1=0.5), "b1=+0.5"),
        ]
        for factor, kw, label in variants:
            if net == "resnet" and label in _CNN_ONLY:
                continue
            cells.append(ScratchCell(f"{net}/ic/{label}", net, True, lr, factor, **kw))
    return cells


#: left out for ``resnet`` (4x the CNN's time per run) to fit the study into about 40 minutes on
#: 2 cores: N(0, 0.01²) is nearly W' = 0, and b1 = +0.5 nearly linearises the branch.
_CNN_ONLY = ("W'~N(0,0.01²)", "b1=+0.5")


def wld_cells() -> list[WldCell]:
    """The part-``wld`` cells (the package docstring), the CE control first."""
    return [
        WldCell("CE control (plain, fine-tuned)", "ce"),
        WldCell("WLD (recipe wld-fmnist)", "wld"),
        WldCell("WLD, IC branch lr x10", "wld", "branch lr", ic_lr_mult=10.0),
        WldCell("WLD, IC branch lr x100", "wld", "branch lr", ic_lr_mult=100.0),
        WldCell("WLD, alpha from 0.1", "wld", "alpha start", alpha_start=0.1),
        WldCell("WLD, e=0.05", "wld", "e", e=0.05),
        WldCell("WLD, tau=1", "wld", "tau", tau=1.0),
    ]
