"""The trainer: one loop for every recipe (scratch or WLD), on CPU or CUDA, single process
or DDP under ``torchrun``.

Conventions and decisions:

* **Steps.** The training loader drops the last incomplete batch. Schedules (lr, lambda, alpha)
  advance once per optimiser step. ``batch_size`` is global; under DDP every process takes
  ``batch_size / world_size`` samples per step from a ``DistributedSampler`` (seeded, reshuffled
  each epoch with ``set_epoch``; a single process uses the same sampler with one replica).
* **Checkpoints** (``OUT/checkpoint.pt``, written atomically by rank 0 with
  :func:`ic_networks.io.atomic_save`) after every epoch and, with ``ckpt_every=N``, every N steps:
  model, optimizer, lr scheduler, GradScaler, the RNG states of every rank (torch CPU and CUDA,
  numpy, python), epoch, batch within the epoch, global step, running metric sums, the metric
  history and the recipe. ``fit(resume=True)`` continues from it, mid-epoch too, by skipping the
  batches already done in that epoch. On CPU with ``workers=0`` the resumed run is bit-identical to
  an uninterrupted one (tested); augmentation is seeded per ``(seed, epoch, index)`` and the loader
  gets its own per-epoch generator, so neither the worker count nor the resume point changes what
  is drawn. A resumed run must use the same recipe, except that ``epochs`` may grow (the schedules
  then stretch to the new length) and ``ten_crop`` may change. ``OUT/model.pt`` holds the final
  weights (a plain state_dict).
* **WLD.** The teacher runs in eval mode without gradient; the loss is
  :func:`ic_networks.functional.wld_loss` on float32 logits, evaluated once per step (its CE term
  is logged), with lambda from :class:`~.schedules.LambdaSchedule`. Alpha is learnt, ramped
  (:class:`~.schedules.AlphaRamp`, on every IC layer that :func:`ic_networks.is_ic_layer`
  accepts) or left fixed, as the recipe says. Weight decay skips the ``alpha`` parameters; the IC
  branch's parameters learn at ``lr * recipe.ic_lr_mult`` (:func:`param_groups`).
* **AMP** (``amp=True``): autocast in bfloat16 on CPU, float16 with a ``GradScaler`` on CUDA.
  Losses are computed on float32 logits.
* **Evaluation**: :func:`~.evaluate.evaluate` (top-1/top-5 accuracy in percent, mean
  cross-entropy; multi-crop; split across ranks under DDP).
* **Progress**: tqdm bars on rank 0 when stderr is a terminal (``progress=None``). Without bars
  (a log file, a pipe), ``log`` gets a progress line after the first step and then at least every
  ``progress_every`` seconds (default 20, also during evaluation), and one line per epoch.
* **Summary**: ``fit()`` returns ``finished`` (False when it stopped at ``max_steps``, with
  ``stopped_by: "max_steps"``; ``--resume`` continues it) and ``model``, the recipe's model name,
  which ``ic-networks eval --model`` takes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .._checks import nonnegative_int
from ..functional import wld_loss_parts
from ..io import atomic_save
from ..nn import ic_keys, ic_layers
from .checkpoint import load_checkpoint, rng_state, set_rng_state
from .distributed import all_reduce, default_device, dist_info, rank_error
from .evaluate import PROGRESS_EVERY_S, autocast, evaluate, show_progress
from .metrics import MetricsLog
from .recipes import Recipe
from .schedules import AlphaRamp, LambdaSchedule, LrFactor

__all__ = ["Trainer", "CHECKPOINT", "FINAL_WEIGHTS"]

CHECKPOINT = "checkpoint.pt"
FINAL_WEIGHTS = "model.pt"
_COMPAT_IGNORE = {"epochs", "description", "ten_crop"}  # recipe fields a resumed run may change


def param_groups(model: nn.Module, recipe: Recipe) -> list:
    """SGD parameter groups: weight decay on every parameter except alpha; the IC branch's
    parameters (W', b1, alpha) at ``recipe.lr * recipe.ic_lr_mult``. Empty groups are left out."""
    ic_names = ic_keys(model)
    buckets: dict[tuple, list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            alpha = name.rsplit(".", 1)[-1] == "alpha"
            key = (0.0 if alpha else recipe.weight_decay, recipe.lr * (recipe.ic_lr_mult if name in ic_names else 1.0))
            buckets.setdefault(key, []).append(p)
    return [{"params": ps, "weight_decay": wd, "lr": lr} for (wd, lr), ps in buckets.items()]


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
        progress: tqdm bars (None: when stderr is a terminal); ``log`` gets one line per epoch and,
            without bars, progress lines at least every ``progress_every`` seconds.
    """

    def __init__(
        self,
        model: nn.Module,
        recipe: Recipe,
        train_set: Dataset,
        val_set: Dataset,
        out_dir,
        *,
        teacher: nn.Module | None = None,
        val_ten_crop: Dataset | None = None,
        device=None,
        amp: bool = False,
        workers: int = 0,
        seed: int = 0,
        ckpt_every: int = 0,
        log_every: int = 10,
        eval_batch_size: int | None = None,
        overwrite: bool = False,
        progress: bool | None = None,
        log: Callable[[str], None] | None = print,
        progress_every: float = PROGRESS_EVERY_S,
    ) -> None:
        if not isinstance(recipe, Recipe):
            raise TypeError(f"recipe: expected a Recipe, got {type(recipe).__name__}")
        if recipe.mode == "wld" and teacher is None:
            raise ValueError("teacher: a WLD recipe needs the plain teacher model")
        if recipe.mode == "wld" and not ic_layers(model):
            raise ValueError("model: the WLD student has no IC layer (IcConv2d, ...): convert the teacher first")
        for name, v in (("workers", workers), ("ckpt_every", ckpt_every), ("log_every", log_every)):
            nonnegative_int(name, v)
        self.recipe, self.out_dir = recipe, Path(out_dir)
        self.rank, self.world = dist_info()
        if recipe.batch_size % self.world:
            raise ValueError(f"batch_size: {recipe.batch_size} is not divisible by the world size {self.world}")
        self.device = torch.device(device) if device is not None else default_device()
        self.amp, self.workers, self.seed = bool(amp), workers, int(seed)
        self.ckpt_every, self.log_every = ckpt_every, max(1, log_every)
        self.train_set, self.val_set, self.val_ten_crop = train_set, val_set, val_ten_crop
        self.eval_batch_size = eval_batch_size or max(recipe.batch_size // self.world, 64)
        self.overwrite, self.progress, self.progress_every = overwrite, progress, float(progress_every)
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

        self.optimizer = torch.optim.SGD(param_groups(model, recipe), lr=recipe.lr, momentum=recipe.momentum)
        self.lr_factor = LrFactor(
            recipe.lr_schedule,
            self.steps_per_epoch,
            self.total_steps,
            recipe.lr_milestones,
            recipe.lr_gamma,
            int(round(recipe.warmup_epochs * self.steps_per_epoch)),
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_factor)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and self.device.type == "cuda")
        self.lam = LambdaSchedule(self.total_steps, recipe.lam_start, recipe.lam_end, recipe.lam_shape)
        self.alpha_ramp = (
            AlphaRamp(model, self.total_steps, recipe.alpha_start, recipe.alpha_end)
            if recipe.mode == "wld" and recipe.alpha == "ramp"
            else None
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

    def state_dict(self) -> dict[str, Any]:
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

    def load_state_dict(self, state: dict[str, Any]) -> None:
        old = state.get("recipe", {})
        diff = {
            k: (old.get(k), v) for k, v in self.recipe.to_dict().items() if k not in _COMPAT_IGNORE and old.get(k) != v
        }
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
        sampler = DistributedSampler(
            self.train_set, num_replicas=self.world, rank=self.rank, shuffle=True, seed=self.seed
        )
        sampler.set_epoch(epoch)
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(epoch)
        indices = list(sampler)[skip_batches * self.per_rank_batch :]
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)  # worker seeds; not the global RNG
        return DataLoader(
            self.train_set,
            batch_size=self.per_rank_batch,
            sampler=indices,
            drop_last=True,
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
            generator=gen,
        )

    def _train_step(self, x: Tensor, y: Tensor) -> None:
        r = self.recipe
        if self.alpha_ramp is not None:
            self.alpha_ramp(self.step)
        with autocast(self.device, self.amp):
            out = self.net(x)
            t_out = None
            if self.teacher is not None:
                with torch.no_grad():
                    t_out = self.teacher(x)
        out = out.float()
        if t_out is not None:
            # one call: the loss (with gradient) and its cross-entropy term for the logs
            loss, ce, _ = wld_loss_parts(out, t_out.float(), y, self.lam(self.step), r.e, r.tau)
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
        nt = ld.new_tensor(n)
        self.acc += torch.stack([ld, cd, correct.double(), nt, ld, cd, nt])

    def _log_window(self) -> float | None:
        w = all_reduce(self.acc[4:].clone()).tolist()
        self.acc[4:] = 0
        if w[2] == 0:
            return None
        loss = w[0] / w[2]
        self.metrics.steps.append(
            {"step": self.step, "epoch": self.step / self.steps_per_epoch, "loss": loss, "ce": w[1] / w[2]}
        )
        return loss

    def _alpha_mean(self) -> float | None:
        layers = ic_layers(self.model)
        return sum(float(m.alpha.detach()) for m in layers) / len(layers) if layers else None

    def _end_epoch(self, epoch: int, t0: float) -> dict[str, Any]:
        e = all_reduce(self.acc[:4].clone()).tolist()
        self.acc[:4] = 0
        val = evaluate(
            self.model,
            self.val_set,
            batch_size=self.eval_batch_size,
            device=self.device,
            amp=self.amp,
            workers=self.workers,
            progress=self._show_progress(),
            desc="val",
            log=self.log,
            log_every_s=self.progress_every,
        )
        self.elapsed += time.perf_counter() - t0
        row = {
            "epoch": epoch + 1,
            "step": self.step,
            "lr": self.optimizer.param_groups[0]["lr"],
            "train_loss": e[0] / e[3],
            "train_ce": e[1] / e[3],
            "train_acc": 100.0 * e[2] / e[3],
            "val_loss": val["loss"],
            "val_top1": val["top1"],
            "val_top5": val["top5"],
            "lam": self.lam(max(self.step - 1, 0)) if self.recipe.mode == "wld" else None,
            "alpha": self._alpha_mean(),
            "time_s": self.elapsed,
        }
        self.metrics.epochs.append(row)
        self.log(
            f"epoch {epoch + 1}/{self.recipe.epochs}  step {self.step}  train loss {row['train_loss']:.4f} "
            f"acc {row['train_acc']:.2f}%  val top-1 {val['top1']:.2f}% top-5 {val['top5']:.2f}%  "
            f"({self.elapsed:.1f} s)"
        )
        return row

    def _show_progress(self) -> bool:
        return show_progress(self.progress, self.rank)

    def _write_metrics(self, summary: dict | None = None) -> None:
        if self.rank == 0:
            self.metrics.write(summary, title=f"{self.recipe.name}: {type(self.model).__name__}")

    def fit(self, resume: bool = False, max_steps: int | None = None) -> dict[str, Any]:
        """Trains to ``recipe.epochs`` (or stops, with a checkpoint, once ``max_steps`` global steps
        are done: ``summary["finished"]`` is then False and ``summary["stopped_by"]`` is
        ``"max_steps"``). Returns a summary dict with the final validation metrics (``val_top1``,
        ``val_top5``, ``val_loss``, and ``ten_crop_*`` when asked).
        Under DDP an error names the rank that saw it (see :func:`~.distributed.rank_error`)."""
        try:
            return self._fit(resume, max_steps)
        except Exception as exc:
            err = rank_error(exc)
            if err is exc:
                raise
            raise err from exc

    def close(self) -> None:
        """Drops the DDP wrapper (its reducer holds the process group; see
        :func:`~.distributed.release_ddp_reducers`). The trainer can still evaluate, not train, afterwards."""
        self.net = self.model

    def _fit(self, resume: bool, max_steps: int | None) -> dict[str, Any]:
        if resume and self.checkpoint_path.is_file():
            self.load_state_dict(load_checkpoint(self.checkpoint_path))
            self.log(
                f"resumed from {self.checkpoint_path} at epoch {self.epoch + 1}, batch {self.batch}, step {self.step}"
            )
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

        lines = not self._show_progress()  # no bar (a log, a pipe): progress lines instead
        last_line = -math.inf
        while self.epoch < self.recipe.epochs:
            t0 = time.perf_counter()
            loader = self._loader(self.epoch, self.batch)
            bar = tqdm(
                loader,
                total=len(loader),
                initial=0,
                leave=False,
                disable=not self._show_progress(),
                desc=f"epoch {self.epoch + 1}/{self.recipe.epochs}",
            )
            for x, y in bar:
                x = x.to(self.device, non_blocking=True)
                y = y.to(self.device, non_blocking=True)
                self._train_step(x, y)
                self.step += 1
                self.batch += 1
                if lines and time.monotonic() - last_line >= self.progress_every:
                    last_line = time.monotonic()
                    self._progress_line(t0)
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
                        return self._stopped()
            bar.close()
            self._end_epoch(self.epoch, t0)
            self.epoch += 1
            self.batch = 0
            self.save_checkpoint()
            self._write_metrics({"finished": self.epoch >= self.recipe.epochs, "step": self.step})
            if max_steps is not None and self.step >= max_steps and self.epoch < self.recipe.epochs:
                return self._stopped()
        return self._finish()

    def _progress_line(self, t0: float) -> None:
        done = self.acc[3].item()
        loss = f"  train loss {self.acc[0].item() / done:.4f}" if done else ""
        self.log(
            f"epoch {self.epoch + 1}/{self.recipe.epochs}  batch {self.batch}/{self.steps_per_epoch}  "
            f"step {self.step}/{self.total_steps}{loss}  ({self.elapsed + time.perf_counter() - t0:.1f} s)"
        )

    def _stopped(self) -> dict[str, Any]:
        """The summary of a run stopped at ``max_steps`` (its checkpoint is written)."""
        summary = {
            "finished": False,
            "stopped_by": "max_steps",
            "recipe": self.recipe.name,
            "model": self.recipe.model,
            "epoch": self.epoch,
            "step": self.step,
            "total_steps": self.total_steps,
        }
        self._write_metrics(summary)
        self.log(f"stopped at step {self.step} of {self.total_steps} (max_steps); --resume continues the run")
        return summary

    def _finish(self) -> dict[str, Any]:
        last = self.metrics.epochs[-1] if self.metrics.epochs else {}
        summary = {
            "finished": True,
            "recipe": self.recipe.name,
            "model": self.recipe.model,
            "epochs": self.recipe.epochs,
            "step": self.step,
            "time_s": self.elapsed,
            "val_top1": last.get("val_top1"),
            "val_top5": last.get("val_top5"),
            "val_loss": last.get("val_loss"),
            "train_samples": len(self.train_set),
            "world_size": self.world,
        }
        if self.recipe.ten_crop and self.val_ten_crop is not None:
            ten = evaluate(
                self.model,
                self.val_ten_crop,
                batch_size=max(1, self.eval_batch_size // 10),
                device=self.device,
                amp=self.amp,
                workers=self.workers,
                progress=self._show_progress(),
                desc="10-crop",
                log=self.log,
                log_every_s=self.progress_every,
            )
            summary.update({"ten_crop_top1": ten["top1"], "ten_crop_top5": ten["top5"], "ten_crop_loss": ten["loss"]})
            self.log(f"10-crop: top-1 {ten['top1']:.2f}%  top-5 {ten['top5']:.2f}%")
        if self.rank == 0:
            atomic_save(self.model.state_dict(), self.out_dir / FINAL_WEIGHTS)
        self._write_metrics(summary)
        return summary
