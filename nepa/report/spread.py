"""Seed spread: the unit of every comparison the report makes between two groups of runs.

A group is every run of one configuration (size, variant, stage, init) that differs only in its seed. Its
number is the mean over seeds with the sample standard deviation (n - 1); two groups differ *beyond seed
noise* when the difference of their means exceeds the sum of their two SDs. With fewer than two seeds on
either side there is no spread to judge by, and the report says so instead of marking a direction.

Why this rule rather than a t-test: with the 2-3 seeds a CPU budget allows, a t-test's p-value rests on SD
estimates from 1-2 degrees of freedom; "the gap is wider than both error bars together" is the reading a
table of mean ± SD invites, and it is the stricter of the two for equal spreads (about 2.8 standard errors
of the difference at 3 seeds each).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

CRITERION = (
    "a difference counts (✓ or ✗) only beyond seed noise: |mean A − mean B| > SD A + SD B, sample SDs over seeds, "
    "at least 2 seeds on each side; otherwise ≈ (within the spread) or ? (one seed: no spread)"
)


def seeds(n: int) -> str:
    return f"{n} seed{'s' * (n != 1)}"


@dataclass(frozen=True)
class Spread:
    """A metric over the seeds of one configuration."""

    values: tuple[float, ...]
    seeds: tuple[int | None, ...] = ()

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def sd(self) -> float:
        """Sample standard deviation over seeds; NaN for a single seed."""
        return statistics.stdev(self.values) if self.n > 1 else math.nan

    def short(self, digits: int = 2) -> str:
        """'85.31 ± 0.42', or '85.31' for one seed."""
        return f"{self.mean:.{digits}f}" + ("" if self.n == 1 else f" ± {self.sd:.{digits}f}")

    def text(self, digits: int = 2) -> str:
        """'85.31 ± 0.42 (3 seeds)', or '85.31 (1 seed)'."""
        return f"{self.short(digits)} ({seeds(self.n)})"


@dataclass(frozen=True)
class Gap:
    """`a` − `b` and whether it is beyond seed noise (None: a side has one seed, no spread to judge by)."""

    difference: float
    noise: float  # SD a + SD b (NaN with one seed)
    beyond: bool | None

    @property
    def sign(self) -> str:
        return "<" if self.difference < 0 else ">" if self.difference > 0 else "="


def gap(a: Spread, b: Spread) -> Gap:
    difference = a.mean - b.mean
    if a.n < 2 or b.n < 2:
        return Gap(difference, math.nan, None)
    noise = a.sd + b.sd
    return Gap(difference, noise, abs(difference) > noise)


def verdict(observed: Gap, expected_sign: str) -> str:
    """✓ the expected order beyond noise, ✗ the opposite beyond noise, ≈ within noise, ? no spread."""
    if observed.beyond is None:
        return "? one seed"
    if not observed.beyond:
        return f"≈ within spread (|Δ| {abs(observed.difference):.2f} ≤ {observed.noise:.2f})"
    mark = "✓" if observed.sign == expected_sign else "✗"
    return f"{mark} (|Δ| {abs(observed.difference):.2f} > {observed.noise:.2f})"
