"""The study's Markdown report: the tables of :func:`~.summary.summarize`."""

from __future__ import annotations

from typing import Any

from .grid import StudyConfig

__all__ = ["format_report"]


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
