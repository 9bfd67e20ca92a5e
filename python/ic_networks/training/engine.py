"""The training engine: one loop for every recipe (scratch or WLD), on CPU or CUDA, single process
or DDP under ``torchrun``.

Conventions and decisions:

* **Steps.** The training loader drops the last incomplete batch. Schedules (lr, lambda, alpha)
  advance once per optimiser step. ``batch_size`` is global; under DDP every process takes
  ``batch_size / world_size`` samples per step from a ``DistributedSampler`` (seeded, reshuffled
  each epoch with ``set_epoch``; a single process uses the same sampler with one replica).
* **Checkpoints** (``OUT/checkpoint.pt``, written atomically by rank 0) after every epoch and,
  with ``ckpt_every=N``, every N steps: model, optimizer, lr scheduler, GradScaler, the RNG states
  of every rank (torch CPU and CUDA, numpy, python), epoch, batch within the epoch, global step,
  running metric sums, the metric history and the recipe. ``fit(resume=True)`` continues from it,
  mid-epoch too, by skipping the batches already done in that epoch. On CPU with ``workers=0`` the
  resumed run is bit-identical to an uninterrupted one (tested); augmentation is seeded per
  ``(seed, epoch, index)`` and the loader gets its own per-epoch generator, so neither the worker
  count nor the resume point changes what is drawn. A resumed run must use the same recipe, except that
  ``epochs`` may grow (the schedules then stretch to the new length) and ``ten_crop`` may change. ``OUT/model.pt`` holds the final weights
  (a plain state_dict).
* **WLD.** The teacher runs in eval mode without gradient; the loss is
  :func:`ic_networks.functional.wld_loss` on float32 logits with lambda from
  :class:`~.schedules.LambdaSchedule`. Alpha is learnt, ramped (:class:`~.schedules.AlphaRamp`) or
  left fixed, as the recipe says. Weight decay skips the ``alpha`` parameters.
* **AMP** (``amp=True``): autocast in bfloat16 on CPU, float16 with a ``GradScaler`` on CUDA.
  Losses are computed on float32 logits.
* **Evaluation**: top-1/top-5 accuracy (percent) and mean cross-entropy. A dataset whose samples
  are ``(n_crops, C, H, W)`` (10-crop) is evaluated on the average of the crops' logits. Under DDP
  each rank evaluates every ``world_size``-th sample and the sums are all-reduced (no padding).
* **Progress**: tqdm bars on rank 0 when stderr is a terminal (``progress=None``), one log line
  per epoch.
"""
from __future__ import annotations

import datetime
import gc
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from ..functional import wld_loss, wld_loss_parts
from .checkpoint import atomic_save, load_checkpoint, rng_state, set_rng_state
from .metrics import MetricsLog
from .recipes import Recipe
from .schedules import AlphaRamp, LambdaSchedule, LrFactor, ic_layers

__all__ = [
    "Trainer", "evaluate", "build_model", "load_weights", "make_student", "dist_info", "init_distributed",
    "default_device", "models_for_recipe", "train", "shutdown_distributed", "release_ddp_reducers", "dist_timeout",
]

CHECKPOINT = "checkpoint.pt"
FINAL_WEIGHTS = "model.pt"
_COMPAT_IGNORE = {"epochs", "description", "ten_crop"}  # recipe fields a resumed run may change


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------
def build_model(name: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    """A model by name, randomly initialised: ``fmnist_cnn``/``ic_fmnist_cnn``, any builder of
    ``ic_networks.models``, or a torchvision classification model (``resnet50``, ...)."""
    from ..models import cnn

    if name in cnn.__all__ and name.islower():
        return getattr(cnn, name)(num_classes=num_classes, in_channels=in_channels)
    try:
        from .. import models as zoo

        fn = getattr(zoo, name, None)
    except ImportError:
        fn = None
    if callable(fn) and not isinstance(fn, type) and not name.startswith("_"):
        return fn(num_classes=num_classes)
    import torchvision

    if name in torchvision.models.list_models(module=torchvision.models):
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    raise ValueError(
        f"model: unknown model {name!r}; use fmnist_cnn, ic_fmnist_cnn, a builder of ic_networks.models "
        f"or a torchvision classification model name"
    )


def load_weights(model: nn.Module, source, strict: bool = True) -> nn.Module:
    """Loads a state_dict, a path to one, or a path to an engine checkpoint (its ``model`` entry)
    into ``model``; a ``module.`` prefix (DDP) is stripped."""
    if isinstance(source, (str, os.PathLike)):
        state = load_checkpoint(source)
    elif isinstance(source, dict):
        state = source
    else:
        raise TypeError(f"weights: expected a path or a state_dict, got {type(source).__name__}")
    if "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    state = {(k[7:] if k.startswith("module.") else k): v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=strict)
    except RuntimeError as exc:
        raise ValueError(f"weights: they do not fit the model: {str(exc).splitlines()[0]} ...") from exc
    return model


def make_student(teacher: nn.Module, recipe: Recipe) -> nn.Module:
    """The WLD student: ``ic_networks.convert.convert(teacher)`` with alpha = ``alpha_start``
    (learnable when ``recipe.alpha == 'learn'``, else a buffer), a deep copy."""
    from ..convert import convert

    mode = "learnable" if recipe.alpha == "learn" else "fixed"
    return convert(teacher, alpha=recipe.alpha_start, alpha_mode=mode)


# --------------------------------------------------------------------------------------------------
# Distributed helpers
# --------------------------------------------------------------------------------------------------
def dist_info():
    """``(rank, world_size)``; ``(0, 1)`` without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


DIST_TIMEOUT_ENV = "IC_NETWORKS_DIST_TIMEOUT"


def dist_timeout() -> datetime.timedelta:
    """How long a collective may wait for the other ranks before it fails (seconds in
    ``$IC_NETWORKS_DIST_TIMEOUT``, default 1800, torch's own default)."""
    raw = os.environ.get(DIST_TIMEOUT_ENV, "1800")
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ValueError(f"{DIST_TIMEOUT_ENV}: expected a positive number of seconds, got {raw!r}")
    return datetime.timedelta(seconds=seconds)


def init_distributed() -> torch.device:
    """Under ``torchrun`` (``WORLD_SIZE`` > 1) joins the process group (nccl on CUDA, gloo on CPU)
    with the collective timeout of :func:`dist_timeout`, and returns this process's device;
    otherwise just the default device."""
    device = default_device()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=dist_timeout())
    return device


def release_ddp_reducers() -> int:
    """Drops the C++ reducer (and its logger) of every live ``DistributedDataParallel`` wrapper in
    this process; returns how many wrappers were found. The wrappers are unusable afterwards.

    Why: a DDP reducer holds a reference to the process group, and Python frees a reducer while
    holding the GIL. If the reducer drops the *last* reference (the group was already destroyed),
    ``~ProcessGroupGloo`` joins gloo's worker threads with the GIL held, while a worker thread that
    is releasing a tensor Python knows (a finished broadcast's parameters) waits for the GIL: the
    process hangs forever at teardown. Released while the group is still registered, the reducer
    never holds the last reference; the registry's own references release the GIL when dropped."""
    gc.collect()  # wrappers only reachable through reference cycles
    found = 0
    ddp = nn.parallel.DistributedDataParallel
    for obj in gc.get_objects():
        if issubclass(type(obj), ddp):  # type(), not isinstance: no __class__ lookups on foreign objects
            found += 1
            for name in ("logger", "reducer"):
                if name in obj.__dict__:
                    obj.__dict__[name] = None
    gc.collect()
    return found


def shutdown_distributed(ok: bool = True) -> None:
    """Leaves the process group, if one is initialised: ``barrier`` (with ``ok``: every rank has
    finished its collectives, and rank 0, which hosts the rendezvous store, outlives the others'
    use of it), :func:`release_ddp_reducers`, then ``destroy_process_group``. Pass ``ok=False``
    on an error path, where a peer may be gone and a barrier would only wait for the timeout."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        if ok:
            dist.barrier()
    finally:
        release_ddp_reducers()
        dist.destroy_process_group()


def rank_error(exc: BaseException) -> BaseException:
    """``exc`` with this process's rank in front, for an error under DDP (a collective that timed
    out or lost its peer says neither which rank saw it nor why)."""
    rank, world = dist_info()
    if world <= 1:
        return exc
    where = f"rank {rank} of {world}"
    if isinstance(exc, RuntimeError):
        hint = ""
        if isinstance(exc, dist.DistError) or "gloo" in str(exc).lower() or "timed out" in str(exc).lower():
            hint = " (a collective failed: another rank died, hangs or lost its connection)"
        return RuntimeError(f"{where}{hint}: {type(exc).__name__}: {exc}")
    if hasattr(exc, "add_note"):
        exc.add_note(f"raised on {where}")
    return exc


def _all_reduce(t: Tensor) -> Tensor:
    if dist_info()[1] > 1:
        dist.all_reduce(t)
    return t


def _is_tty() -> bool:
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def _autocast(device: torch.device, enabled: bool):
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=enabled)


# --------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int = 256,
    device: Optional[torch.device] = None,
    amp: bool = False,
    workers: int = 0,
    progress: Optional[bool] = None,
    desc: str = "eval",
) -> Dict[str, float]:
    """``{"top1", "top5", "loss", "n"}`` of ``model`` on ``dataset`` (accuracies in percent).

    Samples of shape ``(n_crops, C, H, W)`` are multi-crop: the logits of the crops are averaged.
    top-5 is top-``min(5, classes)``. Under DDP the dataset is split across ranks and the result
    is the all-reduced total (every rank returns it).
    """
    if len(dataset) == 0:
        raise ValueError("dataset: cannot evaluate on an empty dataset")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    rank, world = dist_info()
    shard = Subset(dataset, range(rank, len(dataset), world)) if world > 1 else dataset
    loader = DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=device.type == "cuda")
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1, top5, n
    show = (progress if progress is not None else _is_tty()) and rank == 0
    try:
        from tqdm.auto import tqdm

        for x, y in tqdm(loader, desc=desc, leave=False, disable=not show):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            crops = x.dim() == 5
            if crops:
                b, n = x.shape[:2]
                x = x.flatten(0, 1)
            with _autocast(device, amp):
                logits = model(x)
            logits = logits.float()
            if crops:
                logits = logits.view(b, n, -1).mean(1)
            k = min(5, logits.shape[1])
            top = logits.topk(k, dim=1).indices
            hit = top.eq(y.unsqueeze(1))
            sums[0] += F.cross_entropy(logits, y, reduction="sum").double()
            sums[1] += hit[:, 0].sum()
            sums[2] += hit.any(1).sum()
            sums[3] += y.numel()
    finally:
        model.train(was_training)
    loss, top1, top5, n = _all_reduce(sums).tolist()
    return {"top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "loss": loss / n, "n": int(n)}


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------
class Trainer:
    """Trains ``model`` on ``train_set`` by ``recipe``, validating on ``val_set`` after every epoch.

    Args:
        model: the model to train (for WLD: the student, e.g. from :func:`make_student`).
        recipe: a :class:`~.recipes.Recipe` (only its optimisation fields are used here).
        train_set, val_set: datasets of ``(image, label)``; ``val_ten_crop`` optionally a 10-crop
            version of ``val_set``, evaluated once at the end when ``recipe.ten_crop``.
        out_dir: run folder (checkpoint, final weights, metrics CSV/JSON, curves PNG).
        teacher: the plain teacher for ``recipe.mode == 'wld'``.
        device: default CUDA (``LOCAL_RANK``) if available, else CPU.
        amp, workers, seed: mixed precision, loader workers, seed of shuffling/augmentation/RNGs.
        ckpt_every: also checkpoint every this many steps (0: only at epoch ends).
        log_every: record the mean training loss every this many steps (for the curves).
        overwrite: allow a fresh run in a folder that already holds a checkpoint.
        progress: tqdm bars (None: when stderr is a terminal); ``log`` gets one line per epoch.
    """

    def __init__(
        self,
        model: nn.Module,
        recipe: Recipe,
        train_set: Dataset,
        val_set: Dataset,
        out_dir,
        *,
        teacher: Optional[nn.Module] = None,
        val_ten_crop: Optional[Dataset] = None,
        device=None,
        amp: bool = False,
        workers: int = 0,
        seed: int = 0,
        ckpt_every: int = 0,
        log_every: int = 10,
        eval_batch_size: Optional[int] = None,
        overwrite: bool = False,
        progress: Optional[bool] = None,
        log: Optional[Callable[[str], None]] = print,
    ) -> None:
        if not isinstance(recipe, Recipe):
            raise TypeError(f"recipe: expected a Recipe, got {type(recipe).__name__}")
        if recipe.mode == "wld" and teacher is None:
            raise ValueError("teacher: a WLD recipe needs the plain teacher model")
        if recipe.mode == "wld" and not ic_layers(model):
            raise ValueError("model: the WLD student has no IcConv2d layer (convert the teacher first)")
        for name, v in (("workers", workers), ("ckpt_every", ckpt_every), ("log_every", log_every)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name}: expected an int >= 0, got {v!r}")
        self.recipe, self.out_dir = recipe, Path(out_dir)
        self.rank, self.world = dist_info()
        if recipe.batch_size % self.world:
            raise ValueError(f"batch_size: {recipe.batch_size} is not divisible by the world size {self.world}")
        self.device = torch.device(device) if device is not None else default_device()
        self.amp, self.workers, self.seed = bool(amp), workers, int(seed)
        self.ckpt_every, self.log_every = ckpt_every, max(1, log_every)
        self.train_set, self.val_set, self.val_ten_crop = train_set, val_set, val_ten_crop
        self.eval_batch_size = eval_batch_size or max(recipe.batch_size // self.world, 64)
        self.overwrite, self.progress = overwrite, progress
        self.log = (log if log is not None else (lambda s: None)) if self.rank == 0 else (lambda s: None)

        self.model = model.to(self.device)
        self.net = model
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        self.teacher = teacher
        if teacher is not None:
            self.teacher = teacher.to(self.device).eval().requires_grad_(False)

        self.per_rank_batch = recipe.batch_size // self.world
        shard = math.ceil(len(train_set) / self.world)
        self.steps_per_epoch = shard // self.per_rank_batch
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"batch_size: the training set ({len(train_set)} samples over {self.world} process(es)) "
                f"holds less than one batch of {self.per_rank_batch}"
            )
        self.total_steps = recipe.epochs * self.steps_per_epoch

        decay, no_decay = [], []
        for name, p in model.named_parameters():
            if p.requires_grad:
                (no_decay if name.rsplit(".", 1)[-1] == "alpha" else decay).append(p)
        groups = [{"params": decay, "weight_decay": recipe.weight_decay}]
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0})
        self.optimizer = torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum)
        self.lr_factor = LrFactor(
            recipe.lr_schedule, self.steps_per_epoch, self.total_steps, recipe.lr_milestones, recipe.lr_gamma,
            int(round(recipe.warmup_epochs * self.steps_per_epoch)),
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_factor)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and self.device.type == "cuda")
        self.lam = LambdaSchedule(self.total_steps, recipe.lam_start, recipe.lam_end, recipe.lam_shape)
        self.alpha_ramp = (
            AlphaRamp(model, self.total_steps, recipe.alpha_start, recipe.alpha_end)
            if recipe.mode == "wld" and recipe.alpha == "ramp" else None
        )

        self.epoch = self.batch = self.step = 0
        self.elapsed = 0.0
        # running sums: epoch loss, ce, correct, count | window loss, ce, count
        self.acc = torch.zeros(7, dtype=torch.float64, device=self.device)
        self.metrics = MetricsLog(self.out_dir)

    # ---------------------------------------------------------------------------------- checkpoint
    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT

    def _gather(self, obj: Any) -> list:
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def state_dict(self) -> Dict[str, Any]:
        local = self._gather({"rng": rng_state(), "acc": self.acc.cpu()})
        return {
            "format": "ic_networks.training/1",
            "recipe": self.recipe.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "batch": self.batch,
            "step": self.step,
            "elapsed": self.elapsed,
            "world_size": self.world,
            "seed": self.seed,
            "ranks": local,
            "metrics": self.metrics.state(),
        }

    def save_checkpoint(self) -> None:
        state = self.state_dict()  # collective under DDP: every rank calls it
        if self.rank == 0:
            atomic_save(state, self.checkpoint_path)

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        old = state.get("recipe", {})
        diff = {k: (old.get(k), v) for k, v in self.recipe.to_dict().items() if k not in _COMPAT_IGNORE and old.get(k) != v}
        if diff:
            raise ValueError(f"resume: the checkpoint was made with a different recipe: {diff} (checkpoint, now)")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        # LambdaLR restores its lambdas' attributes too; keep this run's (``epochs`` may have grown).
        self.scheduler.lr_lambdas = [self.lr_factor] * len(self.optimizer.param_groups)
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.batch, self.step = int(state["epoch"]), int(state["batch"]), int(state["step"])
        self.elapsed, self.seed = float(state["elapsed"]), int(state["seed"])
        self.metrics = MetricsLog(self.out_dir, **state["metrics"])
        ranks = state["ranks"]
        mine = ranks[self.rank] if len(ranks) == self.world else ranks[0]
        if len(ranks) != self.world:
            self.log(f"resume: checkpoint from {len(ranks)} process(es), now {self.world}: RNG of rank 0 reused")
        self.acc = mine["acc"].to(self.device, torch.float64)
        set_rng_state(mine["rng"])

    # ------------------------------------------------------------------------------------ training
    def _loader(self, epoch: int, skip_batches: int) -> DataLoader:
        sampler = DistributedSampler(self.train_set, num_replicas=self.world, rank=self.rank, shuffle=True, seed=self.seed)
        sampler.set_epoch(epoch)
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(epoch)
        indices = list(sampler)[skip_batches * self.per_rank_batch:]
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)  # worker seeds; not the global RNG
        return DataLoader(
            self.train_set, batch_size=self.per_rank_batch, sampler=indices, drop_last=True,
            num_workers=self.workers, pin_memory=self.device.type == "cuda", generator=gen,
        )

    def _train_step(self, x: Tensor, y: Tensor) -> None:
        r = self.recipe
        if self.alpha_ramp is not None:
            self.alpha_ramp(self.step)
        with _autocast(self.device, self.amp):
            out = self.net(x)
            t_out = None
            if self.teacher is not None:
                with torch.no_grad():
                    t_out = self.teacher(x)
        out = out.float()
        if t_out is not None:
            lam = self.lam(self.step)
            loss = wld_loss(out, t_out.float(), y, lam, r.e, r.tau)
            ce = wld_loss_parts(out, t_out.float(), y, lam, r.e, r.tau)[1]
        else:
            loss = F.cross_entropy(out, y, label_smoothing=r.label_smoothing)
            ce = F.cross_entropy(out.detach(), y) if r.label_smoothing else loss.detach()
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        n = y.numel()
        correct = (out.detach().argmax(1) == y).sum()
        ld, cd = loss.detach().double() * n, ce.double() * n
        self.acc += torch.stack([ld, cd, correct.double(), ld.new_tensor(n), ld, cd, ld.new_tensor(n)])

    def _log_window(self) -> Optional[float]:
        w = _all_reduce(self.acc[4:].clone()).tolist()
        self.acc[4:] = 0
        if w[2] == 0:
            return None
        loss = w[0] / w[2]
        self.metrics.steps.append({"step": self.step, "epoch": self.step / self.steps_per_epoch, "loss": loss, "ce": w[1] / w[2]})
        return loss

    def _alpha_mean(self) -> Optional[float]:
        layers = ic_layers(self.model)
        return sum(float(m.alpha.detach()) for m in layers) / len(layers) if layers else None

    def _end_epoch(self, epoch: int, t0: float) -> Dict[str, Any]:
        e = _all_reduce(self.acc[:4].clone()).tolist()
        self.acc[:4] = 0
        val = evaluate(self.model, self.val_set, batch_size=self.eval_batch_size, device=self.device, amp=self.amp,
                       workers=self.workers, progress=self._show_progress(), desc="val")
        self.elapsed += time.perf_counter() - t0
        row = {
            "epoch": epoch + 1, "step": self.step, "lr": self.optimizer.param_groups[0]["lr"],
            "train_loss": e[0] / e[3], "train_ce": e[1] / e[3], "train_acc": 100.0 * e[2] / e[3],
            "val_loss": val["loss"], "val_top1": val["top1"], "val_top5": val["top5"],
            "lam": self.lam(max(self.step - 1, 0)) if self.recipe.mode == "wld" else None,
            "alpha": self._alpha_mean(), "time_s": self.elapsed,
        }
        self.metrics.epochs.append(row)
        self.log(
            f"epoch {epoch + 1}/{self.recipe.epochs}  step {self.step}  train loss {row['train_loss']:.4f} "
            f"acc {row['train_acc']:.2f}%  val top-1 {val['top1']:.2f}% top-5 {val['top5']:.2f}%  "
            f"({self.elapsed:.1f} s)"
        )
        return row

    def _show_progress(self) -> bool:
        return (self.progress if self.progress is not None else _is_tty()) and self.rank == 0

    def _write_metrics(self, summary: Optional[dict] = None) -> None:
        if self.rank == 0:
            self.metrics.write(summary, title=f"{self.recipe.name}: {type(self.model).__name__}")

    def fit(self, resume: bool = False, max_steps: Optional[int] = None) -> Dict[str, Any]:
        """Trains to ``recipe.epochs`` (or stops, with a checkpoint, once ``max_steps`` global steps
        are done: ``summary["interrupted"]`` is then True). Returns a summary dict with the final
        validation metrics (``val_top1``, ``val_top5``, ``val_loss``, and ``ten_crop_*`` when asked).
        Under DDP an error names the rank that saw it (see :func:`rank_error`)."""
        try:
            return self._fit(resume, max_steps)
        except Exception as exc:
            err = rank_error(exc)
            if err is exc:
                raise
            raise err from exc

    def close(self) -> None:
        """Drops the DDP wrapper (its reducer holds the process group; see
        :func:`release_ddp_reducers`). The trainer can still evaluate, not train, afterwards."""
        self.net = self.model

    def _fit(self, resume: bool, max_steps: Optional[int]) -> Dict[str, Any]:
        if resume and self.checkpoint_path.is_file():
            self.load_state_dict(load_checkpoint(self.checkpoint_path))
            self.log(f"resumed from {self.checkpoint_path} at epoch {self.epoch + 1}, batch {self.batch}, step {self.step}")
        else:
            if self.checkpoint_path.is_file() and not self.overwrite and not resume:
                raise ValueError(
                    f"out: {self.checkpoint_path} exists; pass --resume to continue it, or --overwrite / another --out"
                )
            if resume:
                self.log(f"resume: no checkpoint in {self.out_dir}; starting from scratch")
            torch.manual_seed(self.seed + self.rank)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.net.train()
        if self.teacher is not None:
            self.teacher.eval()
        from tqdm.auto import tqdm

        while self.epoch < self.recipe.epochs:
            t0 = time.perf_counter()
            loader = self._loader(self.epoch, self.batch)
            bar = tqdm(loader, total=len(loader), initial=0, leave=False, disable=not self._show_progress(),
                       desc=f"epoch {self.epoch + 1}/{self.recipe.epochs}")
            for x, y in bar:
                x = x.to(self.device, non_blocking=True)
                y = y.to(self.device, non_blocking=True)
                self._train_step(x, y)
                self.step += 1
                self.batch += 1
                if self.step % self.log_every == 0:
                    loss = self._log_window()
                    if loss is not None:
                        bar.set_postfix(loss=f"{loss:.4f}")
                mid_epoch = self.batch < self.steps_per_epoch
                stop = max_steps is not None and self.step >= max_steps
                if mid_epoch and (stop or (self.ckpt_every and self.step % self.ckpt_every == 0)):
                    self.elapsed += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    self.save_checkpoint()
                    if stop:
                        bar.close()
                        self._write_metrics({"interrupted": True, "step": self.step})
                        return {"interrupted": True, "epoch": self.epoch, "step": self.step}
            bar.close()
            self._end_epoch(self.epoch, t0)
            self.epoch += 1
            self.batch = 0
            self.save_checkpoint()
            self._write_metrics({"interrupted": False, "step": self.step})
            if max_steps is not None and self.step >= max_steps and self.epoch < self.recipe.epochs:
                return {"interrupted": True, "epoch": self.epoch, "step": self.step}
        return self._finish()

    def _finish(self) -> Dict[str, Any]:
        last = self.metrics.epochs[-1] if self.metrics.epochs else {}
        summary = {
            "interrupted": False, "recipe": self.recipe.name, "model": type(self.model).__name__,
            "epochs": self.recipe.epochs, "step": self.step, "time_s": self.elapsed,
            "val_top1": last.get("val_top1"), "val_top5": last.get("val_top5"), "val_loss": last.get("val_loss"),
            "train_samples": len(self.train_set), "world_size": self.world,
        }
        if self.recipe.ten_crop and self.val_ten_crop is not None:
            ten = evaluate(self.model, self.val_ten_crop, batch_size=max(1, self.eval_batch_size // 10),
                           device=self.device, amp=self.amp, workers=self.workers, progress=self._show_progress(),
                           desc="10-crop")
            summary.update({"ten_crop_top1": ten["top1"], "ten_crop_top5": ten["top5"], "ten_crop_loss": ten["loss"]})
            self.log(f"10-crop: top-1 {ten['top1']:.2f}%  top-5 {ten['top5']:.2f}%")
        if self.rank == 0:
            atomic_save(self.model.state_dict(), self.out_dir / FINAL_WEIGHTS)
        self._write_metrics(summary)
        return summary


# --------------------------------------------------------------------------------------------------
# Entry point used by the command line
# --------------------------------------------------------------------------------------------------
def models_for_recipe(recipe: Recipe, num_classes: int, in_channels: int, teacher_weights=None):
    """``(model, teacher)``: for ``scratch`` the randomly initialised ``recipe.model`` and None; for
    ``wld`` the student converted from the teacher ``recipe.model`` (weights from
    ``teacher_weights``, required to train) and the teacher itself."""
    if recipe.mode == "scratch":
        return build_model(recipe.model, num_classes, in_channels), None
    teacher = build_model(recipe.model, num_classes, in_channels)
    if teacher_weights is not None:
        load_weights(teacher, teacher_weights)
    return make_student(teacher, recipe), teacher


def train(
    recipe: Recipe,
    *,
    data=None,
    out_dir=None,
    teacher_weights=None,
    resume: bool = False,
    overwrite: bool = False,
    amp: bool = False,
    workers: int = 0,
    seed: int = 0,
    device=None,
    ckpt_every: int = 0,
    max_steps: Optional[int] = None,
    progress: Optional[bool] = None,
    log: Callable[[str], None] = print,
) -> Dict[str, Any]:
    """Builds the datasets (``data``: local path) and models of ``recipe`` and runs :class:`Trainer`.
    Joins the process group first when started by ``torchrun``. Returns the run summary."""
    from .data import build_datasets

    if recipe.mode == "wld" and teacher_weights is None:
        raise ValueError(
            f"teacher: recipe {recipe.name!r} distils from a trained plain {recipe.model}; pass --teacher "
            f"WEIGHTS (a state_dict or a run's checkpoint.pt; nothing is downloaded)"
        )
    own_device = init_distributed()  # joins the process group under torchrun
    device = torch.device(device) if device is not None else own_device
    bundle = build_datasets(recipe.dataset, data, augment=recipe.augment, train_subset=recipe.train_subset, seed=seed)
    torch.manual_seed(seed)  # same initial weights on every rank (DDP also broadcasts them)
    model, teacher = models_for_recipe(recipe, bundle.num_classes, bundle.in_channels, teacher_weights)
    out_dir = Path(out_dir) if out_dir is not None else Path("runs") / f"{recipe.name}-{recipe.model}"
    trainer = Trainer(
        model, recipe, bundle.train, bundle.val, out_dir, teacher=teacher, val_ten_crop=bundle.val_ten_crop,
        device=device, amp=amp, workers=workers, seed=seed, ckpt_every=ckpt_every, overwrite=overwrite,
        progress=progress, log=log,
    )
    try:
        summary = trainer.fit(resume=resume, max_steps=max_steps)
    finally:
        trainer.close()
    summary["out_dir"] = str(out_dir)
    return summary
