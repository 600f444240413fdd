"""Statistics for checking a paper's claim on a fixed list of scenes: intervals, paired tests, verdicts.

Every per-scene number a benchmark measures is summarised by its mean and a 95 % **percentile
bootstrap** interval over scenes (Efron & Tibshirani 1993, ch. 13: resample the scenes with
replacement, take the 2.5th and 97.5th percentiles of the resampled means). The resampling is seeded,
so a table is reproducible to the digit.

A claim "A is better than B on metric M" (M lower- or higher-is-better) is tested on the *same*
scenes, paired:

* a continuous metric by the **Wilcoxon signed-rank test** on the per-scene differences
  (:func:`scipy.stats.wilcoxon`; zero differences dropped, Wilcoxon's convention);
* a success rate (0/1 per scene) by the **exact McNemar test**: the binomial test of the discordant
  scenes (A right, B wrong vs A wrong, B right) against ½ (McNemar 1947, in its exact binomial
  form, which needs no continuity correction on few discordant scenes);
* a statistic that is not a mean over scenes (KID) by a **paired bootstrap**: the same resampled
  scene indices for both systems, p-value from the share of resampled differences on the other side
  of zero (two-sided, with the +1 correction of Davison & Hinkley 1997, eq. 4.11).

Each test gives two one-sided p-values; the two-sided p-value is twice the smaller (at most 1), and the
side with the smaller one says which way the data lean. :func:`verdict` then reads a claim as

* **holds**: two-sided p < α and the data lean the claimed way;
* **does not hold**: two-sided p < α and the data lean the other way;
* **cannot be told apart**: p ≥ α.

α is 0.05 per claim; :func:`holm` adjusts a family of p-values (Holm 1979) for readers who want the
family-wise rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

HOLDS, FAILS, UNCLEAR = "holds", "does not hold", "cannot be told apart"
ALPHA = 0.05
RESAMPLES = 10_000


@dataclass(frozen=True)
class Interval:
    """A point estimate and its bootstrap interval."""

    estimate: float
    low: float
    high: float
    n: int

    def format(self, digits: int = 3) -> str:
        return f"{self.estimate:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def _finite(values) -> np.ndarray:
    values = np.asarray(values, dtype=float).ravel()
    return values[np.isfinite(values)]


def resample_indices(n: int, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """(resamples, n) scene indices drawn with replacement, from a seeded generator."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def bootstrap_interval(values, *, confidence: float = 0.95, resamples: int = RESAMPLES, seed: int = 0) -> Interval:
    """Mean of ``values`` (one per scene; NaN are left out) with its percentile bootstrap interval."""
    values = _finite(values)
    if len(values) == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    means = values[resample_indices(len(values), resamples, seed)].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return Interval(float(values.mean()), float(low), float(high), len(values))


def bootstrap_statistic(statistic: Callable[[np.ndarray], float], n: int, *, confidence: float = 0.95,
                        resamples: int = 1000, seed: int = 0) -> Interval:
    """``statistic(indices)`` of a set of ``n`` scenes (e.g. KID of their features) with its percentile interval.

    The statistic is called once on ``arange(n)`` for the estimate and once per resample; draws where it
    is undefined (NaN) are left out.
    """
    estimate = float(statistic(np.arange(n)))
    draws = _finite([statistic(idx) for idx in resample_indices(n, resamples, seed)])
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return Interval(estimate, float(low), float(high), n)


@dataclass(frozen=True)
class PairedTest:
    """A paired comparison of A and B: mean difference A − B with its interval, and the test's p-values."""

    test: str
    difference: Interval
    p_greater: float  # one-sided: A − B > 0
    p_less: float  # one-sided: A − B < 0
    n: int

    @property
    def p_value(self) -> float:
        return min(1.0, 2 * min(self.p_greater, self.p_less))

    @property
    def leans(self) -> int:
        """+1 if the data lean towards A − B > 0, −1 towards < 0, 0 if not at all."""
        if self.p_greater == self.p_less:
            return 0
        return 1 if self.p_greater < self.p_less else -1


def _paired(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"a paired test needs the same scenes on both sides; got {len(a)} and {len(b)} values")
    keep = np.isfinite(a) & np.isfinite(b)
    return a[keep], b[keep]


def wilcoxon_test(a, b, *, seed: int = 0) -> PairedTest:
    """Wilcoxon signed-rank test of the per-scene differences A − B (scenes with a NaN on either side dropped)."""
    from scipy.stats import wilcoxon

    a, b = _paired(a, b)
    difference = a - b
    interval = bootstrap_interval(difference, seed=seed)
    if len(difference) == 0 or not np.any(difference != 0):
        return PairedTest("Wilcoxon signed-rank", interval, 1.0, 1.0, len(difference))
    greater = float(wilcoxon(difference, alternative="greater").pvalue)
    less = float(wilcoxon(difference, alternative="less").pvalue)
    return PairedTest("Wilcoxon signed-rank", interval, greater, less, len(difference))


def mcnemar_test(a, b, *, seed: int = 0) -> PairedTest:
    """Exact McNemar test of two success indicators (0/1 per scene) on the same scenes."""
    from scipy.stats import binomtest

    a, b = _paired(a, b)
    if not np.all(np.isin(a, (0, 1)) & np.isin(b, (0, 1))):
        raise ValueError("McNemar's test needs 0/1 outcomes")
    interval = bootstrap_interval(a - b, seed=seed)
    a_only = int(np.sum((a == 1) & (b == 0)))
    b_only = int(np.sum((a == 0) & (b == 1)))
    if a_only + b_only == 0:
        return PairedTest("exact McNemar", interval, 1.0, 1.0, len(a))
    greater = float(binomtest(a_only, a_only + b_only, 0.5, alternative="greater").pvalue)
    less = float(binomtest(a_only, a_only + b_only, 0.5, alternative="less").pvalue)
    return PairedTest("exact McNemar", interval, greater, less, len(a))


def paired_bootstrap_test(statistic_a: Callable[[np.ndarray], float], statistic_b: Callable[[np.ndarray], float],
                          n: int, *, resamples: int = 1000, seed: int = 0) -> PairedTest:
    """Paired bootstrap of a set statistic: A and B evaluated on the same resampled scene indices.

    One-sided p-values are (1 + #{resampled A − B on the far side of 0}) / (1 + resamples); draws where
    either statistic is undefined (NaN) are left out.
    """
    estimate = float(statistic_a(np.arange(n)) - statistic_b(np.arange(n)))
    draws = _finite([statistic_a(idx) - statistic_b(idx) for idx in resample_indices(n, resamples, seed)])
    resamples = len(draws)
    low, high = np.percentile(draws, [2.5, 97.5])
    greater = (1 + np.sum(draws <= 0)) / (1 + resamples)
    less = (1 + np.sum(draws >= 0)) / (1 + resamples)
    if estimate == 0 and not np.any(draws != 0):
        greater = less = 1.0
    return PairedTest("paired bootstrap", Interval(estimate, float(low), float(high), n), float(greater),
                      float(less), n)


def paired_test(a, b, kind: str = "continuous", *, seed: int = 0) -> PairedTest:
    """McNemar for ``kind="binary"`` metrics, Wilcoxon signed-rank for ``"continuous"`` ones."""
    if kind == "binary":
        return mcnemar_test(a, b, seed=seed)
    if kind == "continuous":
        return wilcoxon_test(a, b, seed=seed)
    raise ValueError(f"unknown metric kind {kind!r}: binary or continuous")


@dataclass(frozen=True)
class Verdict:
    verdict: str
    p_value: float
    test: PairedTest


def verdict(test: PairedTest, better: str, *, alpha: float = ALPHA) -> Verdict:
    """Read the claim "A is better than B" from a paired test of A − B; ``better`` is "higher" or "lower"."""
    if better not in ("higher", "lower"):
        raise ValueError(f"better must be 'higher' or 'lower'; got {better!r}")
    claimed = 1 if better == "higher" else -1
    if test.p_value >= alpha or test.leans == 0:
        return Verdict(UNCLEAR, test.p_value, test)
    return Verdict(HOLDS if test.leans == claimed else FAILS, test.p_value, test)


def check_claim(a, b, better: str, kind: str = "continuous", *, alpha: float = ALPHA, seed: int = 0) -> Verdict:
    """:func:`paired_test` of per-scene values ``a`` and ``b``, then :func:`verdict`."""
    return verdict(paired_test(a, b, kind, seed=seed), better, alpha=alpha)


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error control over the given claims)."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p)
    adjusted = np.empty_like(p)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[index]))
        adjusted[index] = running
    return adjusted
