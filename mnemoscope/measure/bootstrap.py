"""The bootstrap every interval of the project comes from: one resampling, one percentile interval.

Every bootstrap resamples whole units (sequences, or targets), never positions, with
:func:`bootstrap_indices`, from a seed, and reads its interval with :func:`percentile_interval` at
``LEVEL`` percent unless a caller asks for another; :func:`cluster_ci` is that bootstrap for a
weighted mean of targets grouped in whole units.
"""
from __future__ import annotations

import numpy as np

from ..settings import N_BOOT

LEVEL = 95  # percent: the confidence level of every interval unless a caller asks for another


def bootstrap_indices(n: int, n_boot: int, seed: int | np.random.Generator = 0) -> np.ndarray:
    """(n_boot, n) indices of ``n_boot`` resamples with replacement of n units (sequences, or
    targets), drawn from ``np.random.default_rng(seed)``: every bootstrap here resamples through
    this. ``seed`` may be a Generator, for several bootstraps drawn in turn from one stream. Row b is the draw a loop of ``integers(0, n, n)`` calls gives at step b (tested), the
    resampling seaborn's ``algorithms.bootstrap`` made for the intervals of older studies."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def percentile_interval(draws: np.ndarray, level: float = LEVEL, axis: int | None = 0, discrete: bool = False):
    """(low, high): the central ``level``% of bootstrap ``draws`` along ``axis`` (percentile
    interval), NaN draws left out; NaN where a column holds no finite draw. ``discrete``: the
    interval's ends are draws themselves (the lower one rounded down, the upper one up), for a
    statistic that takes only some values (a context length)."""
    draws = np.asarray(draws)
    q = ((100 - level) / 2, 100 - (100 - level) / 2)
    if not np.isfinite(draws).any():
        shape = () if axis is None else draws.shape[:axis % draws.ndim] + draws.shape[axis % draws.ndim + 1:]
        return np.full(shape, np.nan), np.full(shape, np.nan)
    if discrete:
        return (np.nanpercentile(draws, q[0], axis=axis, method="lower"),
                np.nanpercentile(draws, q[1], axis=axis, method="higher"))
    with np.errstate(invalid="ignore"):
        lo, hi = np.nanpercentile(draws, q, axis=axis)
    return lo, hi


def cluster_ci(values: np.ndarray, weights: np.ndarray, units: np.ndarray, seed: int = 0,
               n_boot: int = N_BOOT, level: float = LEVEL) -> tuple[float, float, float]:
    """Weighted mean of ``values`` and a bootstrap interval (``level``%) resampling whole ``units``
    (sequences), since targets within one sequence are correlated."""
    u, inv = np.unique(units, return_inverse=True)
    s = np.bincount(inv, weights=values * weights, minlength=len(u))
    w = np.bincount(inv, weights=weights, minlength=len(u))
    if w.sum() == 0:
        return (float("nan"),) * 3
    idx = bootstrap_indices(len(u), n_boot, seed)
    lo, hi = percentile_interval(s[idx].sum(1) / np.maximum(w[idx].sum(1), 1e-12), level, axis=None)
    return float(s.sum() / w.sum()), float(lo), float(hi)
