"""Seed statistics for the demo and the study: mean ± std, and paired differences with a 95 % interval.

Decisions: the standard deviation is the sample one (n - 1); a paired difference (same seed, two
settings) "exceeds the seed noise" when its two-sided 95 % Student-t interval excludes 0, which
for 3 seeds means ``|mean| > 2.48 * std`` of the per-seed differences. No scipy: the t quantiles
for up to 30 degrees of freedom are tabulated below.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["MeanStd", "PairedDiff", "mean_std", "paired_diff", "t975"]

# two-sided 95 % quantiles of Student's t, t_{0.975, df}, df = 1..30
_T975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)


def t975(df: int) -> float:
    """``t_{0.975, df}`` (1.96 beyond the table)."""
    if df < 1:
        raise ValueError(f"df: expected >= 1, got {df}")
    return _T975[df - 1] if df <= len(_T975) else 1.96


@dataclass(frozen=True)
class MeanStd:
    mean: float
    std: float  # sample std (n - 1); 0 for one value
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.2f} ± {self.std:.2f}"


def mean_std(values: Sequence[float]) -> MeanStd:
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("values: expected at least one value")
    m = sum(xs) / len(xs)
    var = sum((x - m) ** 2 for x in xs) / (len(xs) - 1) if len(xs) > 1 else 0.0
    return MeanStd(m, math.sqrt(var), len(xs))


@dataclass(frozen=True)
class PairedDiff:
    """``b - a`` per seed: mean, std, the 95 % interval, and how many seeds have ``b > a``."""

    mean: float
    std: float
    n: int
    low: float | None  # None with one seed (no interval)
    high: float | None
    wins: int  # seeds where b > a
    losses: int  # seeds where b < a

    @property
    def significant(self) -> bool:
        """The 95 % interval excludes 0 (False with one seed)."""
        return self.low is not None and (self.low > 0 or self.high < 0)

    def verdict(self) -> str:
        if self.low is None:
            return "one seed: no noise estimate"
        if not self.significant:
            return "within seed noise"
        return "exceeds seed noise (better)" if self.mean > 0 else "exceeds seed noise (worse)"

    def __str__(self) -> str:
        return f"{self.mean:+.2f} ± {self.std:.2f}"

    def as_dict(self) -> dict:
        """The fields plus ``verdict``, for JSON."""
        return {**dataclasses.asdict(self), "verdict": self.verdict()}


def paired_diff(a: Sequence[float], b: Sequence[float]) -> PairedDiff:
    """Paired difference ``b - a`` (``a[i]`` and ``b[i]`` share seed ``i``)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"a, b: expected two equally long, non-empty sequences, got {len(a)} and {len(b)}")
    d = [float(y) - float(x) for x, y in zip(a, b)]
    ms = mean_std(d)
    if ms.n > 1:
        half = t975(ms.n - 1) * ms.std / math.sqrt(ms.n)
        low, high = ms.mean - half, ms.mean + half
    else:
        low = high = None
    return PairedDiff(ms.mean, ms.std, ms.n, low, high, sum(v > 0 for v in d), sum(v < 0 for v in d))
