"""The statistics of comparisons: paired (two endpoints on the same items) and unpaired (two
A/B arms on different requests). Bootstrap intervals are seeded, so a report is reproducible."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class Difference:
    """B minus A: the mean difference with its confidence interval and a two-sided p-value."""

    mean_a: float
    mean_b: float
    difference: float
    low: float
    high: float
    p_value: float
    n_a: int
    n_b: int
    test: str


def paired(a: Sequence[float], b: Sequence[float], *, confidence: float = 0.95,
           resamples: int = 2000, seed: int = 0) -> Difference:  # fmt: skip
    """Paired bootstrap CI of the mean of b - a, and the Wilcoxon signed-rank p-value."""
    from scipy.stats import wilcoxon

    if len(a) != len(b) or not a:
        raise ValueError("paired samples need the same, non-zero length")
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diffs = y - x
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(diffs), size=(resamples, len(diffs)))
    means = diffs[picks].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    tied = np.allclose(diffs, 0)
    p = 1.0 if tied else float(wilcoxon(x, y, zero_method="zsplit").pvalue)
    return Difference(
        float(x.mean()), float(y.mean()), float(diffs.mean()), float(low), float(high), p,
        len(x), len(y), "paired bootstrap CI; Wilcoxon signed-rank",
    )  # fmt: skip


def unpaired(a: Sequence[float], b: Sequence[float], *, confidence: float = 0.95) -> Difference:
    """Welch's t-test of mean(b) - mean(a), with its confidence interval."""
    from scipy.stats import ttest_ind

    if len(a) < 2 or len(b) < 2:
        raise ValueError("each arm needs two samples at least")
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if np.ptp(x) == 0 and np.ptp(y) == 0:
        same = bool(x[0] == y[0])
        diff = float(y[0] - x[0])
        return Difference(float(x[0]), float(y[0]), diff, diff, diff, 1.0 if same else 0.0,
                          len(x), len(y), "Welch t-test (constant samples)")  # fmt: skip
    result = ttest_ind(y, x, equal_var=False)
    ci = result.confidence_interval(confidence_level=confidence)
    p = float(result.pvalue)
    return Difference(
        float(x.mean()), float(y.mean()), float(y.mean() - x.mean()), float(ci.low),
        float(ci.high), p if math.isfinite(p) else 1.0, len(x), len(y), "Welch t-test",
    )  # fmt: skip
