"""The study's statistics: per cell, mean ± std over seeds, paired differences against the reference
cell, branch ratios, epochs to reach the reference; the settings chosen on validation."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..stats import mean_std, paired_diff
from .grid import StudyConfig, wld_cells

__all__ = ["summarize", "by_cell"]


def by_cell(runs: list[dict], part: str) -> dict[str, list[dict]]:
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
    cells = by_cell(runs, "scratch")
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
    cells = by_cell(runs, "wld")
    if cells:
        ref_name = wld_cells()[0].name
        ref = cells.get(ref_name)
        part = {name: _cell_summary(rs, ref if name != ref_name else None) for name, rs in cells.items()}
        out["wld"] = {"cells": part, "reference": ref_name}
    return out
