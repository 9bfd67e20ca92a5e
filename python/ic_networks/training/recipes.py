"""Named training recipes: the paper's (ImageNet, CIFAR-10; docs/design.md) and small Fashion-MNIST ones
for a 2-core CPU.

A :class:`Recipe` is plain data; :func:`get_recipe` returns one by name, with overrides applied.
``batch_size`` is the *global* batch: under DDP each of the ``world_size`` processes takes
``batch_size / world_size`` samples per step.

``scratch-*`` recipes train ``model`` from random weights with cross-entropy; the default model is
the IC one (``--model`` with the plain name gives the baseline). ``wld-*`` recipes take the plain
``model`` as the teacher (weights from ``--teacher``), build the student with
``ic_networks.convert(teacher, alpha=alpha_start)`` (alpha = 0: it starts exactly as good as
the teacher) and train it with the WLD loss, lambda 0.9 -> 0.1 (cosine, see ``schedules``),
``e = 0.005``, ``tau = 4``; alpha learnt (``alpha="learn"``) or ramped linearly by hand
(``alpha="ramp"``, ``alpha_start -> alpha_end``).

Decisions where the paper is silent: CIFAR uses the standard augmentation (pad-4 random crop and
flip); ``wld-cifar`` reuses the ImageNet WLD schedule (30 epochs, lr 0.001 divided by 10 after 15);
EfficientNets in the paper drop the lr every 10 epochs (``--lr-step 10``). Weight decay applies to
every parameter except alpha. ``ic_lr_mult`` (default 1, ``--ic-lr-mult``) gives the IC branch's
parameters (W', b1, alpha) their own learning rate, ``lr * ic_lr_mult``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .._checks import positive_int

__all__ = ["Recipe", "RECIPES", "get_recipe"]


@dataclass(frozen=True)
class Recipe:
    name: str
    dataset: str  # 'fmnist' | 'cifar10' | 'imagenet' (ImageFolder)
    model: str  # model trained from scratch, or the plain teacher of a WLD recipe
    mode: str  # 'scratch' | 'wld'
    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_schedule: str = "step"  # 'step' | 'cosine' | 'constant'
    lr_milestones: tuple[int, ...] = ()  # epochs at which lr *= lr_gamma
    lr_gamma: float = 0.1
    warmup_epochs: float = 0.0
    augment: bool = True
    ten_crop: bool = False  # also report 10-crop accuracy at the end
    train_subset: int | None = None  # keep a fixed random subset of the training set
    label_smoothing: float = 0.0
    ic_lr_mult: float = 1.0  # lr of the IC branch's parameters (W', b1, alpha) = lr * ic_lr_mult
    # WLD only
    lam_start: float = 0.9
    lam_end: float = 0.1
    lam_shape: str = "cosine"
    e: float = 0.005
    tau: float = 4.0
    alpha: str = "learn"  # 'learn' | 'ramp' | 'fixed'
    alpha_start: float = 0.0
    alpha_end: float = 0.02
    description: str = ""

    def __post_init__(self) -> None:
        if self.mode not in ("scratch", "wld"):
            raise ValueError(f"mode: expected 'scratch' or 'wld', got {self.mode!r}")
        if self.alpha not in ("learn", "ramp", "fixed"):
            raise ValueError(f"alpha: expected 'learn', 'ramp' or 'fixed', got {self.alpha!r}")
        for name in ("epochs", "batch_size"):
            positive_int(name, getattr(self, name))
        if not self.lr > 0:
            raise ValueError(f"lr: expected > 0, got {self.lr!r}")
        if not self.ic_lr_mult > 0:
            raise ValueError(f"ic_lr_mult: expected > 0, got {self.ic_lr_mult!r}")

    def replace(self, **changes) -> Recipe:
        """A copy with ``changes`` (None values are ignored, so CLI defaults pass through)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"recipe: unknown field(s) {sorted(unknown)}")
        if "lr_milestones" in changes:
            changes["lr_milestones"] = tuple(int(m) for m in changes["lr_milestones"])
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["lr_milestones"] = list(self.lr_milestones)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Recipe:
        d = dict(d)
        d["lr_milestones"] = tuple(d.get("lr_milestones", ()))
        return cls(**d)


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in [
        Recipe(
            "scratch-imagenet",
            "imagenet",
            "ic_resnet50",
            "scratch",
            epochs=120,
            batch_size=256,
            lr=0.1,
            lr_milestones=(30, 60, 90),
            ten_crop=True,
            description="paper §5: SGD m=0.9 wd=1e-4, batch 256, lr 0.1 /10 every 30 epochs, 120 epochs",
        ),
        Recipe(
            "wld-imagenet",
            "imagenet",
            "resnet50",
            "wld",
            epochs=30,
            batch_size=256,
            lr=0.001,
            lr_milestones=(15,),
            ten_crop=True,
            description="paper §4: WLD 30 epochs, lr 0.001 /10 every 15, e=0.005, lambda 0.9->0.1",
        ),
        Recipe(
            "scratch-cifar",
            "cifar10",
            "ic_vgg16_cifar",
            "scratch",
            epochs=200,
            batch_size=128,
            lr=0.1,
            lr_milestones=(60, 120),
            description="paper §5: 200 epochs, batch 128, lr 0.1 /10 at 60 and 120, SGD m=0.9 wd=1e-4",
        ),
        Recipe(
            "wld-cifar",
            "cifar10",
            "vgg16_cifar",
            "wld",
            epochs=30,
            batch_size=128,
            lr=0.001,
            lr_milestones=(15,),
            description="WLD on CIFAR-10 with the ImageNet WLD schedule (30 epochs, lr 0.001 /10 after 15)",
        ),
        Recipe(
            "scratch-fmnist",
            "fmnist",
            "ic_fmnist_cnn",
            "scratch",
            epochs=3,
            batch_size=128,
            lr=0.05,
            lr_schedule="cosine",
            augment=False,
            description="small: Fashion-MNIST CNN from scratch, 3 epochs, lr 0.05 cosine (minutes on 2 cores)",
        ),
        Recipe(
            "wld-fmnist",
            "fmnist",
            "fmnist_cnn",
            "wld",
            epochs=2,
            batch_size=128,
            lr=0.005,
            lr_schedule="cosine",
            augment=False,
            description="small: WLD fine-tuning of the converted Fashion-MNIST CNN, 2 epochs, lr 0.005 cosine",
        ),
    ]
}


def get_recipe(name: str, **overrides) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"recipe: unknown recipe {name!r}; choose one of {sorted(RECIPES)}")
    return RECIPES[name].replace(**overrides)
