"""``ic-networks study``: the from-scratch and WLD ablations of docs/fidelity.md, over seeds.

Data (Fashion-MNIST, local files only): a fixed validation split of ``val_images`` images is held
out of the 60,000 training images (permutation seeded by :data:`SPLIT_SEED`, the same for every
run), the training set is the next ``train_images`` images of that permutation, and the official
10,000 test images are evaluated once per run at the end. Settings are compared and chosen on the
validation split; the test set is only reported.

Part ``scratch``: networks ``cnn`` (the demo's :class:`~ic_networks.models.cnn.FmnistCNN`, no
residual path) and ``resnet`` (:class:`~ic_networks.models.cnn.FmnistResNet`, depth 8), plain and
IC, trained from random weights with the ``scratch-fmnist`` recipe (SGD, cosine lr). Cells
(:func:`scratch_cells`): plain and the IC default at each learning rate of ``lrs`` (the same
tuning budget for both; ``resnet``: the first lr only), and, at the first lr, one IC factor
changed at a time: W' initialisation (``scaled`` by 1/k², ``zeros``, ``normal``), alpha
(learnable from 1, learnable from 0.1) and b1 (``-0.5``, ``+0.5``); ``resnet`` leaves out
``normal`` and ``+0.5`` (:data:`_CNN_ONLY`).

Part ``wld``: every seed's plain ``cnn`` of part ``scratch`` (first lr) is the teacher; the student
is its conversion (alpha learnt from ``alpha_start``) trained for ``wld_epochs`` with the
``wld-fmnist`` recipe. Cells (:func:`wld_cells`): the cross-entropy control (the plain model
fine-tuned with CE for the same steps), WLD as the recipe says, and one change at a time: the IC
branch's learning rate x10 and x100 (``ic_lr_mult``), alpha from 0.1, ``e = 0.05``, ``tau = 1``.

Every (cell, seed) is one run in its own folder (``OUT/runs/<part>/<cell>/seed<k>``) whose
``result.json`` is written atomically at its end; a second ``study`` with the same settings reuses
finished runs, so an interrupted study resumes. Runs go to ``jobs`` worker processes with one
torch thread each. ``OUT/results.json`` holds every run and the summary, ``OUT/report.md`` the
tables, ``OUT/study.png`` the plots.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset

from .._checks import positive_int
from ..io import atomic_write_text
from .stats import mean_std, paired_diff

__all__ = ["StudyConfig", "ScratchCell", "WldCell", "scratch_cells", "wld_cells", "run_study", "format_report"]

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
    """The part-``scratch`` cells (module docstring), plain first."""
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
    """The part-``wld`` cells (module docstring), the CE control first."""
    return [
        WldCell("CE control (plain, fine-tuned)", "ce"),
        WldCell("WLD (recipe wld-fmnist)", "wld"),
        WldCell("WLD, IC branch lr x10", "wld", "branch lr", ic_lr_mult=10.0),
        WldCell("WLD, IC branch lr x100", "wld", "branch lr", ic_lr_mult=100.0),
        WldCell("WLD, alpha from 0.1", "wld", "alpha start", alpha_start=0.1),
        WldCell("WLD, e=0.05", "wld", "e", e=0.05),
        WldCell("WLD, tau=1", "wld", "tau", tau=1.0),
    ]


# ----------------------------------------------------------------------------------------- runs
_DATA: dict[tuple, Any] = {}


def _data(cfg: dict, root):
    """(train, val, test, probe) for this configuration, cached per process."""
    key = (json.dumps(cfg, sort_keys=True), str(root))
    if key not in _DATA:
        from .data import build_datasets

        bundle = build_datasets("fmnist", root, augment=False)
        perm = torch.randperm(len(bundle.train), generator=torch.Generator().manual_seed(cfg["split_seed"])).tolist()
        val = Subset(bundle.train, perm[: cfg["val_images"]])
        train = Subset(bundle.train, perm[cfg["val_images"] : cfg["val_images"] + cfg["train_images"]])
        probe = torch.stack([val[i][0] for i in range(min(cfg["probe_images"], len(val)))])
        _DATA.clear()
        _DATA[key] = (train, val, bundle.val, probe)
    return _DATA[key]


def _build(
    net: str,
    ic: bool = False,
    adjust_init: str = "like_weight",
    alpha: float = 1.0,
    alpha_mode: str = "fixed",
    b1: float = 0.0,
    **_ignored,
):
    """The ``net`` (``cnn`` | ``resnet``), converted to IC with these settings when ``ic``."""
    from ..conversion import convert
    from ..models.cnn import FmnistCNN, FmnistResNet

    model = FmnistCNN() if net == "cnn" else FmnistResNet(depth=8)
    if ic:
        model = convert(
            model, alpha=alpha, alpha_mode=alpha_mode, adjust_init=adjust_init, adjust_bias_init=b1, inplace=True
        )
    return model


def _ratios(model, probe, train_mode: bool) -> dict | None:
    from ..diagnostics import branch_ratios
    from ..nn import ic_layers

    if not ic_layers(model):
        return None
    # train mode moves BatchNorm's running statistics: measure a copy then
    m = copy.deepcopy(model).train() if train_mode else model.eval()
    stats = branch_ratios(m, probe)
    return {"mean": sum(s.ratio for s in stats) / len(stats), "layers": [s.as_dict() for s in stats]}


def _curve(trainer) -> list[dict]:
    return [
        {k: r.get(k) for k in ("epoch", "train_ce", "train_loss", "val_top1", "alpha")} for r in trainer.metrics.epochs
    ]


def run_job(job: dict) -> dict:
    """One (cell, seed) run; ``job`` is plain data so that it crosses process boundaries. Writes and
    returns the result (``job['out']/result.json``)."""
    from .evaluate import evaluate
    from .recipes import get_recipe
    from .trainer import Trainer

    out = Path(job["out"])
    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    train, val, test, probe = _data(job["data"], job.get("root"))
    seed, part, cell = job["seed"], job["part"], job["cell"]
    t0 = time.perf_counter()
    teacher = None
    if part == "scratch":
        torch.manual_seed(seed)
        model = _build(**cell)
        recipe = get_recipe(
            "scratch-fmnist",
            epochs=job["epochs"],
            lr=cell["lr"],
            batch_size=job["data"]["batch_size"],
            model=("ic_" if cell["ic"] else "") + cell["net"],
        )
        init_ratio = _ratios(model, probe, train_mode=True)
    else:
        from ..conversion import convert
        from ..io import load_weights

        teacher = _build(cell.get("net", "cnn"))
        load_weights(teacher, job["teacher"], what="teacher")
        teacher.eval()
        torch.manual_seed(seed)
        if cell["mode"] == "ce":
            model = copy.deepcopy(teacher)
            recipe = get_recipe("wld-fmnist", epochs=job["epochs"]).replace(mode="scratch", name="ce-fmnist")
            teacher = None
        else:
            model = convert(teacher, alpha=cell["alpha_start"], alpha_mode="learnable")
            recipe = get_recipe(
                "wld-fmnist",
                epochs=job["epochs"],
                ic_lr_mult=cell["ic_lr_mult"],
                e=cell["e"],
                tau=cell["tau"],
                alpha_start=cell["alpha_start"],
            )
        recipe = recipe.replace(batch_size=job["data"]["batch_size"])
        init_ratio = None
    trainer = Trainer(
        model, recipe, train, val, out, teacher=teacher, seed=seed, overwrite=True, progress=False, log=None
    )
    summary = trainer.fit()
    trainer.close()
    model.eval()
    test_m = evaluate(model, test, progress=False)
    result = {
        "part": part,
        "cell": cell,
        "seed": seed,
        "epochs": job["epochs"],
        "data": job["data"],
        "val_top1": summary["val_top1"],
        "test_top1": test_m["top1"],
        "test_loss": test_m["loss"],
        "curve": _curve(trainer),
        "time_s": time.perf_counter() - t0,
        "threads": torch.get_num_threads(),
        "ratio_init": init_ratio,
        "ratio_end": _ratios(model, probe, train_mode=False),
    }
    atomic_write_text(json.dumps(result, indent=1) + "\n", out / "result.json")
    return result


def _slug(name: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-._" else "_" for c in name.replace("/", "__"))
    return keep + "-" + hashlib.sha1(name.encode()).hexdigest()[:6]


def _cached(job: dict) -> dict | None:
    path = Path(job["out"]) / "result.json"
    if not path.is_file():
        return None
    try:
        r = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    same = r.get("cell") == job["cell"] and r.get("data") == job["data"] and r.get("epochs") == job["epochs"]
    return r if same else None


def _run_all(jobs: list[dict], workers: int, log: Callable[[str], None]) -> list[dict]:
    done = {}
    for j in jobs:  # finished runs of an earlier study, read once
        r = _cached(j)
        if r is not None:
            done[j["out"]] = r
    todo = [j for j in jobs if j["out"] not in done]
    if done:
        log(f"  {len(done)} run(s) reused from an earlier study")
    if todo:
        log(f"  {len(todo)} run(s) on {workers} worker process(es)")
    t0 = time.perf_counter()
    if workers <= 1 or len(todo) <= 1:
        for i, j in enumerate(todo):
            done[j["out"]] = r = run_job(j)
            log(f"  [{i + 1}/{len(todo)}] {_describe(r)} ({time.perf_counter() - t0:.0f} s)")
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(run_job, j): j for j in todo}
            for i, f in enumerate(as_completed(futures)):
                done[futures[f]["out"]] = r = f.result()
                log(f"  [{i + 1}/{len(todo)}] {_describe(r)} ({time.perf_counter() - t0:.0f} s)")
    return [done[j["out"]] for j in jobs]


def _describe(r: dict) -> str:
    return (
        f"{r['cell']['name']} seed {r['seed']}: val {r['val_top1']:.2f}% test {r['test_top1']:.2f}% "
        f"in {r['time_s']:.0f} s"
    )


def run_study(
    cfg: StudyConfig = StudyConfig(),
    out_dir="runs/study",
    data=None,
    *,
    jobs: int = 2,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Runs the parts of ``cfg`` (module docstring) and returns ``{"runs", "summary", "report"}``.
    Raises ``FileNotFoundError`` (naming the apt command) when Fashion-MNIST is missing."""
    positive_int("jobs", jobs)
    from .data import load_fashion_mnist

    load_fashion_mnist(data, train=False)  # a missing dataset fails here, not in a worker
    out = Path(out_dir)
    t0 = time.perf_counter()
    dkey = cfg.data_key()
    threads = 1 if jobs > 1 else None
    base = {"data": dkey, "root": None if data is None else str(data), "threads": threads}
    runs: list[dict] = []
    if "scratch" in cfg.parts:
        cells = scratch_cells(cfg.nets, cfg.lrs)
        log(
            f"study, part scratch: {len(cells)} cells x {len(cfg.seeds)} seeds, {cfg.epochs} epochs on "
            f"{cfg.train_images:,} images (validation: {cfg.val_images:,} held out of the training set)"
        )
        sjobs = [
            dict(
                base,
                part="scratch",
                cell=dataclasses.asdict(c),
                seed=s,
                epochs=cfg.epochs,
                out=str(out / "runs" / "scratch" / _slug(c.name) / f"seed{s}"),
            )
            for c in cells
            for s in cfg.seeds
        ]
        sjobs.sort(key=lambda j: (j["cell"]["net"] != "resnet", not j["cell"]["ic"]))  # longest first
        runs += _run_all(sjobs, jobs, log)
    if "wld" in cfg.parts:
        teacher_cell = ScratchCell(f"cnn/plain/lr{cfg.lrs[0]:g}", "cnn", False, cfg.lrs[0])
        teachers = {}
        for s in cfg.seeds:
            path = out / "runs" / "scratch" / _slug(teacher_cell.name) / f"seed{s}"
            if (
                _cached(dict(cell=dataclasses.asdict(teacher_cell), data=dkey, epochs=cfg.epochs, out=str(path)))
                is None
            ):
                raise ValueError(
                    f"parts: the wld part needs the scratch part's {teacher_cell.name} runs "
                    f"(seed {s} missing in {path}): run the scratch part first"
                )
            teachers[s] = str(path / "model.pt")
        cells = wld_cells()
        log(
            f"study, part wld: {len(cells)} cells x {len(cfg.seeds)} seeds, {cfg.wld_epochs} epoch(s), teacher: "
            f"each seed's {teacher_cell.name}"
        )
        wjobs = [
            dict(
                base,
                part="wld",
                cell=dict(dataclasses.asdict(c), net="cnn"),
                seed=s,
                epochs=cfg.wld_epochs,
                teacher=teachers[s],
                out=str(out / "runs" / "wld" / _slug(c.name) / f"seed{s}"),
            )
            for c in cells
            for s in cfg.seeds
        ]
        runs += _run_all(wjobs, jobs, log)
    summary = summarize(runs, cfg)
    report = format_report(summary, cfg)
    result = {
        "config": dataclasses.asdict(cfg),
        "summary": summary,
        "runs": runs,
        "total_time_s": time.perf_counter() - t0,
        "jobs": jobs,
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps(result, indent=1) + "\n", out / "results.json")
    atomic_write_text(report + "\n", out / "report.md")
    plot_study(summary, runs, out / "study.png")
    log(
        "\n" + report + f"\n\ntotal {result['total_time_s']:.0f} s. Wrote {out / 'results.json'}, "
        f"{out / 'report.md'} and {out / 'study.png'}."
    )
    result["report"] = report
    return result


# -------------------------------------------------------------------------------------- summary
def _by_cell(runs: list[dict], part: str) -> dict[str, list[dict]]:
    cells: dict[str, list[dict]] = {}
    for r in runs:
        if r["part"] == part:
            cells.setdefault(r["cell"]["name"], []).append(r)
    for rs in cells.values():
        rs.sort(key=lambda r: r["seed"])
    return cells


def _epochs_to(curve_ic: list[dict], target: float) -> int | None:
    for row in curve_ic:
        if row["val_top1"] is not None and row["val_top1"] >= target:
            return int(row["epoch"])
    return None


def _cell_summary(rs: list[dict], ref: list[dict] | None) -> dict:
    s: dict[str, Any] = {
        "cell": rs[0]["cell"],
        "seeds": [r["seed"] for r in rs],
        "val": dataclasses.asdict(mean_std([r["val_top1"] for r in rs])),
        "test": dataclasses.asdict(mean_std([r["test_top1"] for r in rs])),
        "time_s": mean_std([r["time_s"] for r in rs]).mean,
    }
    alphas = [r["curve"][-1]["alpha"] for r in rs if r["curve"] and r["curve"][-1].get("alpha") is not None]
    s["alpha_end"] = mean_std(alphas).mean if alphas else None
    for when in ("init", "end"):
        vals = [r[f"ratio_{when}"]["mean"] for r in rs if r.get(f"ratio_{when}")]
        s[f"ratio_{when}"] = mean_std(vals).mean if vals else None
    ce1 = [r["curve"][0]["train_ce"] for r in rs if r["curve"]]
    s["train_ce_epoch1"] = mean_std(ce1).mean if ce1 else None
    if ref is not None and rs is not ref:
        by_seed = {r["seed"]: r for r in ref}
        pairs = [(by_seed[r["seed"]], r) for r in rs if r["seed"] in by_seed]
        if pairs:
            for split in ("val", "test"):
                d = paired_diff([a[f"{split}_top1"] for a, _ in pairs], [b[f"{split}_top1"] for _, b in pairs])
                s[f"d_{split}"] = d.as_dict()
            reach = [_epochs_to(b["curve"], a["val_top1"]) for a, b in pairs]
            s["epochs_to_ref_final"] = reach
    return s


def summarize(runs: list[dict], cfg: StudyConfig) -> dict[str, Any]:
    """Per cell: val/test mean ± std, paired differences against the reference cell (plain at the
    same lr for ``scratch``, the CE control for ``wld``), branch ratios, epochs to reach the
    reference's final validation accuracy; and the settings chosen on validation."""
    out: dict[str, Any] = {}
    cells = _by_cell(runs, "scratch")
    if cells:
        part: dict[str, Any] = {}
        for name, rs in cells.items():
            c = rs[0]["cell"]
            ref = cells.get(f"{c['net']}/plain/lr{c['lr']:g}")
            part[name] = _cell_summary(rs, ref if c["ic"] else None)
        chosen = {}
        for net in cfg.nets:
            mine = {n: s for n, s in part.items() if s["cell"]["net"] == net}
            plain = {n: s for n, s in mine.items() if not s["cell"]["ic"]}
            ic = {n: s for n, s in mine.items() if s["cell"]["ic"]}
            if plain and ic:
                bp = max(plain, key=lambda n: plain[n]["val"]["mean"])
                bi = max(ic, key=lambda n: ic[n]["val"]["mean"])
                d = (
                    paired_diff([r["test_top1"] for r in cells[bp]], [r["test_top1"] for r in cells[bi]])
                    if [r["seed"] for r in cells[bp]] == [r["seed"] for r in cells[bi]]
                    else None
                )
                chosen[net] = {
                    "plain": bp,
                    "plain_candidates": len(plain),
                    "ic": bi,
                    "ic_candidates": len(ic),
                    "d_test": None if d is None else d.as_dict(),
                }
        out["scratch"] = {"cells": part, "chosen_on_val": chosen}
    cells = _by_cell(runs, "wld")
    if cells:
        ref_name = wld_cells()[0].name
        ref = cells.get(ref_name)
        part = {name: _cell_summary(rs, ref if name != ref_name else None) for name, rs in cells.items()}
        out["wld"] = {"cells": part, "reference": ref_name}
    return out


def _fmt(v: float | None, spec: str = ".2f", none: str = "–") -> str:
    return none if v is None else format(v, spec)


def _ms(d: dict) -> str:
    return f"{d['mean']:.2f} ± {d['std']:.2f}"


def _diff(d: dict | None) -> str:
    if not d:
        return "–"
    return f"{d['mean']:+.2f} ± {d['std']:.2f} ({d['wins']}/{d['n']})"


def _reach(v: list | None) -> str:
    if not v:
        return "–"
    return ", ".join("–" if e is None else str(e) for e in v)


def format_report(summary: dict[str, Any], cfg: StudyConfig) -> str:
    """Markdown tables of :func:`summarize`."""
    lines: list[str] = []
    n = len(cfg.seeds)
    if "scratch" in summary:
        s = summary["scratch"]
        lines += [
            f"### From scratch: {cfg.epochs} epochs on {cfg.train_images:,} Fashion-MNIST images, {n} seeds",
            "",
            "Top-1 in %, mean ± std over seeds; Δ = paired difference against plain at the same lr (IC wins / "
            "seeds); *reach* = epoch at which IC's validation accuracy first reaches plain's final one, per seed "
            "(– never); *ratio* = mean over IC layers of std(alpha·relu(Z)) / std(conv) at init → after training.",
            "",
            "| cell | val top-1 | test top-1 | Δ val | Δ test | verdict (Δ val) | reach | ratio | alpha end "
            "| CE epoch 1 | time |",
            "|---|---:|---:|---:|---:|---|---|---|---:|---:|---:|",
        ]
        for name, c in s["cells"].items():
            ratio = "–" if c["ratio_init"] is None else f"{c['ratio_init']:.2f} → {c['ratio_end']:.2f}"
            verdict = c.get("d_val", {}).get("verdict", "–") if c.get("d_val") else "–"
            lines.append(
                f"| {name} | {_ms(c['val'])} | {_ms(c['test'])} | {_diff(c.get('d_val'))} | {_diff(c.get('d_test'))} "
                f"| {verdict} | {_reach(c.get('epochs_to_ref_final'))} | {ratio} | {_fmt(c['alpha_end'], '.3f')} "
                f"| {_fmt(c['train_ce_epoch1'], '.3f')} | {c['time_s']:.0f} s |"
            )
        for net, ch in s["chosen_on_val"].items():
            d = ch["d_test"]
            lines += [
                "",
                f"Chosen on validation, {net}: plain = {ch['plain']} (best of {ch['plain_candidates']}), "
                f"IC = {ch['ic']} (best of {ch['ic_candidates']}); test Δ (IC − plain) = {_diff(d)}"
                + (f", {d['verdict']}" if d else ""),
            ]
    if "wld" in summary:
        w = summary["wld"]
        lines += [
            "" if lines else "",
            f"### WLD fine-tuning of the plain CNN: {cfg.wld_epochs} epoch(s), {n} seeds "
            "(teacher = that seed's plain CNN)",
            "",
            f"Δ = paired difference against the {w['reference']}.",
            "",
            "| cell | val top-1 | test top-1 | Δ val | Δ test | verdict (Δ val) | alpha end | ratio end | time |",
            "|---|---:|---:|---:|---:|---|---:|---:|---:|",
        ]
        for name, c in w["cells"].items():
            verdict = c["d_val"]["verdict"] if c.get("d_val") else "–"
            lines.append(
                f"| {name} | {_ms(c['val'])} | {_ms(c['test'])} | {_diff(c.get('d_val'))} | {_diff(c.get('d_test'))} "
                f"| {verdict} | {_fmt(c['alpha_end'], '.4f')} | {_fmt(c['ratio_end'], '.3f')} | {c['time_s']:.0f} s |"
            )
    return "\n".join(lines).strip()


def plot_study(summary: dict[str, Any], runs: list[dict], path) -> Path:
    """Left: test top-1 per scratch cell (mean ± std, one bar colour per network); right: mean
    validation curves of plain and the IC default at the first lr."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .metrics import save_figure

    fig = Figure(figsize=(12, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax_bar, ax_curve = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]})
    cells = summary.get("scratch", {}).get("cells", {})
    names = list(cells)
    if names:
        means = [cells[n]["test"]["mean"] for n in names]
        stds = [cells[n]["test"]["std"] for n in names]
        colours = ["tab:blue" if cells[n]["cell"]["net"] == "cnn" else "tab:orange" for n in names]
        ax_bar.barh(range(len(names)), means, xerr=stds, color=colours, alpha=0.8)
        ax_bar.set_yticks(range(len(names)), names, fontsize=7)
        ax_bar.invert_yaxis()
        lo = min(m - s for m, s in zip(means, stds))
        ax_bar.set_xlim(max(0.0, lo - 1.0), max(m + s for m, s in zip(means, stds)) + 0.5)
        ax_bar.set(xlabel="test top-1 (%), mean ± std over seeds", title="from scratch")
        by = _by_cell(runs, "scratch")
        lr0 = cells[names[0]]["cell"]["lr"]
        for n in names:
            c = cells[n]["cell"]
            if c["factor"] or c["lr"] != lr0:
                continue
            curves = [r["curve"] for r in by[n]]
            epochs = [row["epoch"] for row in curves[0]]
            mean = [sum(cv[i]["val_top1"] for cv in curves) / len(curves) for i in range(len(epochs))]
            ax_curve.plot(epochs, mean, marker="o", label=n)
        ax_curve.set(xlabel="epoch", ylabel="validation top-1 (%), mean over seeds", title="plain vs IC default")
        ax_curve.grid(alpha=0.3)
        if ax_curve.lines:
            ax_curve.legend(fontsize=7)
    return save_figure(fig, path)
