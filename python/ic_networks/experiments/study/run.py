"""``run_study``: the parts of a :class:`~.grid.StudyConfig` run, summarised, reported and plotted."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..._checks import positive_int
from ...io import atomic_write_text
from .grid import ScratchCell, StudyConfig, scratch_cells, wld_cells
from .plots import plot_study
from .report import format_report
from .runner import cached, run_all, slug
from .summary import summarize

__all__ = ["run_study"]


def run_study(
    cfg: StudyConfig = StudyConfig(),
    out_dir="runs/study",
    data=None,
    *,
    jobs: int = 2,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Runs the parts of ``cfg`` (the package docstring) and returns ``{"runs", "summary", "report"}``.
    Raises ``FileNotFoundError`` (naming the apt command) when Fashion-MNIST is missing."""
    positive_int("jobs", jobs)
    from ...training.data import load_fashion_mnist

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
                out=str(out / "runs" / "scratch" / slug(c.name) / f"seed{s}"),
            )
            for c in cells
            for s in cfg.seeds
        ]
        sjobs.sort(key=lambda j: (j["cell"]["net"] != "resnet", not j["cell"]["ic"]))  # longest first
        runs += run_all(sjobs, jobs, log)
    if "wld" in cfg.parts:
        teacher_cell = ScratchCell(f"cnn/plain/lr{cfg.lrs[0]:g}", "cnn", False, cfg.lrs[0])
        teachers = {}
        for s in cfg.seeds:
            path = out / "runs" / "scratch" / slug(teacher_cell.name) / f"seed{s}"
            if cached(dict(cell=dataclasses.asdict(teacher_cell), data=dkey, epochs=cfg.epochs, out=str(path))) is None:
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
                out=str(out / "runs" / "wld" / slug(c.name) / f"seed{s}"),
            )
            for c in cells
            for s in cfg.seeds
        ]
        runs += run_all(wjobs, jobs, log)
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
