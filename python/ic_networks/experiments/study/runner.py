"""The study's runs: one (cell, seed) run in its own folder (:func:`run_job`), and a list of them on
worker processes (:func:`run_all`), reusing the runs whose ``result.json`` an earlier study left."""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset

from ...io import atomic_write_text

__all__ = ["run_job", "run_all", "cached", "slug"]

_DATA: dict[tuple, Any] = {}


def _data(cfg: dict, root):
    """(train, val, test, probe) for this configuration, cached per process."""
    key = (json.dumps(cfg, sort_keys=True), str(root))
    if key not in _DATA:
        from ...training.data import build_datasets

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
    from ...conversion import convert
    from ...models.cnn import FmnistCNN, FmnistResNet

    model = FmnistCNN() if net == "cnn" else FmnistResNet(depth=8)
    if ic:
        model = convert(
            model, alpha=alpha, alpha_mode=alpha_mode, adjust_init=adjust_init, adjust_bias_init=b1, inplace=True
        )
    return model


def _ratios(model, probe, train_mode: bool) -> dict | None:
    from ...diagnostics import branch_ratios
    from ...nn import ic_layers

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
    from ...training.evaluate import evaluate
    from ...training.recipes import get_recipe
    from ...training.trainer import Trainer

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
        from ...conversion import convert
        from ...io import load_weights

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


def slug(name: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-._" else "_" for c in name.replace("/", "__"))
    return keep + "-" + hashlib.sha1(name.encode()).hexdigest()[:6]


def cached(job: dict) -> dict | None:
    path = Path(job["out"]) / "result.json"
    if not path.is_file():
        return None
    try:
        r = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    same = r.get("cell") == job["cell"] and r.get("data") == job["data"] and r.get("epochs") == job["epochs"]
    return r if same else None


def run_all(jobs: list[dict], workers: int, log: Callable[[str], None]) -> list[dict]:
    done = {}
    for j in jobs:  # finished runs of an earlier study, read once
        r = cached(j)
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
