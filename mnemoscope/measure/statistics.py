"""Pure statistics of per-position losses: numpy and scipy only, no model, no files.

Everything here bootstraps over **sequences** (or over target tokens), never over positions:
neighbouring positions of one sequence are correlated, so resampling positions would give
intervals far too narrow.

* ``fit_power_law`` / ``bootstrap_fit``: the per-position curve as L(t) = L_inf + A t^(-alpha),
  t = tokens of context, fitted as Chinchilla did (log space, Huber delta 1e-3 summed, L-BFGS-B
  from a grid of starts, best kept, convergence checked); flagged when it did not converge, has
  too few points or its residuals are far larger than the curve's own noise (wrong form).
* ``octave_gains``: the fall in loss from one octave of positions to the next, and the last
  octave whose fall is significantly above zero.
* ``paired_gap``: one architecture's loss minus another's on the same sequences, per band of
  positions, with paired bootstrap intervals.
* ``effective_context``: the smallest context n from which on the loss stays within a
  tolerance of the full-context loss (Khandelwal et al. 2018), with an interval over targets.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize
from threadpoolctl import threadpool_limits

from ..errors import UserError
from ..settings import ANALYSIS, N_BOOT, TOLERANCE
from .bootstrap import LEVEL, bootstrap_indices, percentile_interval

# a band or bin with no counted target in a resample has no mean there: its interval is NaN by design
warnings.filterwarnings("ignore", "All-NaN slice encountered", RuntimeWarning)

HUBER_DELTA = 1e-3  # Chinchilla App. D.2, on log-loss residuals
MIN_FIT_POINTS = 5  # fewer points than this are not a law (3 parameters)
WRONG_FORM_CHI2 = 4.0  # residuals this many times their noise variance (reduced chi^2): wrong form
MAX_ITER = 300  # L-BFGS-B iterations per start: a curve that falls converges in under 100; a flat or
                # wrong-form one slides along a valley where alpha -> 0 (L_inf and A trade off) for thousands
# -- 1. the power law of the per-position curve ---------------------------------------------------
def _huber(r: np.ndarray, delta: float):
    """Huber loss of each residual and its derivative."""
    small = np.abs(r) <= delta
    loss = np.where(small, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta))
    grad = np.where(small, r, delta * np.sign(r))
    return loss, grad


def _objective(theta: np.ndarray, log_t: np.ndarray, log_y: np.ndarray, delta: float):
    """Summed (not averaged: Besiroglu et al. 2024) Huber loss of log L(t) - log y, and its gradient.

    theta = (e, a, alpha) with L_inf = exp(e), A = exp(a): positive by construction, and
    log L(t) = logaddexp(e, a - alpha log t), the Chinchilla parameterisation.
    """
    e, a, alpha = theta
    power = a - alpha * log_t
    pred = np.logaddexp(e, power)
    loss, g = _huber(pred - log_y, delta)
    w_e = np.exp(e - pred)  # d pred / d e; d pred / d a = 1 - w_e
    w_a = 1.0 - w_e
    grad = np.array([(g * w_e).sum(), (g * w_a).sum(), -(g * w_a * log_t).sum()])
    return loss.sum(), grad


#: the grid of starts: L_inf as fractions of the lowest point, A as multiples of the first point's
#: excess over it, and alpha
START_GRID = ((0.3, 0.7, 0.95), (0.3, 1.0, 3.0), (0.1, 0.5, 1.5))
N_STARTS = math.prod(len(axis) for axis in START_GRID)  # 27


def _starts(y: np.ndarray):
    """A grid of starting points around the data's own scale (:data:`START_GRID`)."""
    lo = max(float(np.min(y)), 1e-6)
    for e in np.log(lo * np.array(START_GRID[0])):
        for a in np.log(max(float(y[0] - lo), 1e-3) * np.array(START_GRID[1])):
            for alpha in START_GRID[2]:
                yield np.array([e, a, alpha])


def short_number(x: float) -> str:
    """A constant as the prose writes it: ``1e-3`` (not ``0.001`` or ``1e-03``), ``4``."""
    text = f"{x:g}"
    return f"{x:.0e}".replace("e-0", "e-").replace("e+0", "e+") if "e" in text or 0 < abs(x) < 0.01 else text


_BOUNDS = [(-20.0, 20.0), (-20.0, 20.0), (0.0, 5.0)]


def _minimize(theta0, log_t, log_y, delta):
    return optimize.minimize(_objective, theta0, args=(log_t, log_y, delta), jac=True, method="L-BFGS-B",
                             bounds=_BOUNDS, options={"maxiter": MAX_ITER, "ftol": 1e-15, "gtol": 1e-12})


@dataclass
class PowerLawFit:
    """L(t) = L_inf + A t^(-alpha), t in tokens of context, L in nats per token."""

    L_inf: float
    A: float
    alpha: float
    n_points: int
    converged: bool
    objective: float  # summed Huber loss at the optimum
    rms_log_residual: float  # root-mean-square of log L_fit - log L, over the points
    chi2_reduced: float  # mean (residual / its standard error)^2 * n/(n-3); ~1 when the form fits
    status: str  # "ok", "too few points", "not converged", "wrong form"

    def predict(self, t):
        return self.L_inf + self.A * np.asarray(t, dtype=np.float64) ** (-self.alpha)


def fit_power_law(t: np.ndarray, y: np.ndarray, stderr: np.ndarray | None = None, delta: float = HUBER_DELTA,
                  min_points: int = MIN_FIT_POINTS, wrong_form_chi2: float = WRONG_FORM_CHI2,
                  start: np.ndarray | None = None) -> PowerLawFit:
    """Fit L(t) = L_inf + A t^(-alpha) to a curve y(t) (t: tokens of context, y: nats per token).

    Every start of the grid (:data:`N_STARTS` points) is run to convergence with L-BFGS-B and the lowest objective
    kept (``start`` given: that start only, for bootstrap refits). ``stderr`` (the standard error
    of each y over sequences) enables the form check: a reduced chi^2 of the residuals above
    ``wrong_form_chi2`` flags the fit "wrong form". Fewer than ``min_points`` finite points are
    refused: the result is NaN with status "too few points".
    """
    t, y = np.asarray(t, np.float64), np.asarray(y, np.float64)
    ok = np.isfinite(t) & np.isfinite(y) & (t > 0) & (y > 0)
    if stderr is not None:
        stderr = np.asarray(stderr, np.float64)
        ok &= np.isfinite(stderr) & (stderr > 0)
    t, y = t[ok], y[ok]
    if stderr is not None:
        stderr = stderr[ok]
    n = len(t)
    if n < min_points:
        return PowerLawFit(*(math.nan,) * 3, n, False, math.nan, math.nan, math.nan, "too few points")
    log_t, log_y = np.log(t), np.log(y)
    best = None
    # L-BFGS-B calls BLAS on 3-vectors; a multi-threaded BLAS spinning its threads on every call
    # made each fit 10-20x slower on a busy 2-core machine
    with threadpool_limits(1):
        for theta0 in ([start] if start is not None else _starts(y)):
            res = _minimize(theta0, log_t, log_y, delta)
            if best is None or res.fun < best.fun:
                best = res
    # converged: the optimiser says so, or (bounded L-BFGS-B stopping in a line search on the
    # Huber kink) the projected gradient is negligible against the objective's own scale
    pg = np.where((best.x <= [b[0] for b in _BOUNDS]) & (best.jac > 0) | (best.x >= [b[1] for b in _BOUNDS]) & (best.jac < 0),
                  0.0, best.jac)
    converged = bool(np.isfinite(best.fun) and (best.success or np.abs(pg).max() <= 1e-6 * max(n * delta, best.fun)))
    e, a, alpha = best.x
    L_inf, A = math.exp(e), math.exp(a)
    fit_y = L_inf + A * t ** (-alpha)
    resid = fit_y - y
    rms = float(np.sqrt(np.mean(np.log(fit_y / y) ** 2)))
    chi2 = float(np.sum((resid / stderr) ** 2) / max(n - 3, 1)) if stderr is not None else math.nan
    status = "ok"
    if chi2 > wrong_form_chi2:  # residuals far beyond the noise: no setting of the law fits, converged or not
        status = "wrong form"
    elif not converged:
        status = "not converged"
    return PowerLawFit(L_inf, A, float(alpha), n, converged, float(best.fun), rms, chi2, status)


def position_means(losses: np.ndarray, mask: np.ndarray):
    """Mean loss at each position over sequences, its standard error, and the counts (all (T,))."""
    m = mask.astype(np.float64)
    n = m.sum(0)
    mean = (losses * m).sum(0) / np.maximum(n, 1)
    var = (((losses - mean) ** 2) * m).sum(0) / np.maximum(n - 1, 1)
    se = np.sqrt(var / np.maximum(n, 1))
    mean[n == 0] = np.nan
    return mean, se, n


def bootstrap_fit(losses: np.ndarray, mask: np.ndarray, n_boot: int = ANALYSIS.fit_boot, level: float = LEVEL,
                  seed: int = 0, **fit_kwargs) -> dict:
    """Power-law fit of the per-position curve of (N, T) losses, intervals by bootstrap over sequences.

    Each replicate resamples whole sequences, recomputes the curve and refits from the point
    estimate (warm start); a fit refused or of the wrong form gets no interval. Returns a flat
    dict: L_inf, A, alpha, each with _low/_high, and the point fit's n_points, converged,
    rms_log_residual, chi2_reduced, fit_status, and the fraction of replicates whose refit converged.
    """
    losses = np.asarray(losses, np.float64)
    mask = np.ones_like(losses, bool) if mask is None else np.asarray(mask, bool)
    t = np.arange(1, losses.shape[1] + 1)  # position p has p+1 tokens of context
    mean, se, _ = position_means(losses, mask)
    point = fit_power_law(t, mean, se, **fit_kwargs)
    out = {"L_inf": point.L_inf, "A": point.A, "alpha": point.alpha, "n_points": point.n_points,
           "converged": point.converged, "rms_log_residual": point.rms_log_residual,
           "chi2_reduced": point.chi2_reduced, "fit_status": point.status}
    keys = ("L_inf", "A", "alpha")
    if point.status in ("too few points", "wrong form") or n_boot <= 0:  # no law to put an interval on
        out.update({f"{k}_{s}": math.nan for k in keys for s in ("low", "high")}, boot_converged=math.nan)
        return out
    m = mask.astype(np.float64)
    lm = losses * m
    start = np.array([math.log(point.L_inf), math.log(point.A), point.alpha])
    draws, n_conv = [], 0
    for idx in bootstrap_indices(len(losses), n_boot, seed):
        cnt = m[idx].sum(0)
        curve = np.where(cnt > 0, lm[idx].sum(0) / np.maximum(cnt, 1), np.nan)
        f = fit_power_law(t, curve, None, start=start, **fit_kwargs)
        n_conv += f.converged
        draws.append((f.L_inf, f.A, f.alpha))
    lows, highs = percentile_interval(np.array(draws), level)
    for j, k in enumerate(keys):
        out[f"{k}_low"], out[f"{k}_high"] = float(lows[j]), float(highs[j])
    out["boot_converged"] = n_conv / n_boot
    return out


# -- 2. context gain per octave ---------------------------------------------------------------------
def octave_bins(T: int) -> list[tuple[int, int]]:
    """Position bins [0, 1), [1, 2), [2, 4), ..., [2^j, T): position p has p+1 tokens of context."""
    bins, lo = [(0, 1)], 1
    while lo < T:
        bins.append((lo, min(2 * lo, T)))
        lo *= 2
    return bins


def _bin_sums(losses: np.ndarray, mask: np.ndarray, bins: list[tuple[int, int]]):
    """Per-sequence summed loss and counted targets in each bin: two (N, n_bins) arrays."""
    m = np.asarray(mask, np.float64)
    lm = np.asarray(losses, np.float64) * m
    sums = np.stack([lm[:, a:b].sum(1) for a, b in bins], 1)
    counts = np.stack([m[:, a:b].sum(1) for a, b in bins], 1)
    return sums, counts


def _bin_means(sums: np.ndarray, counts: np.ndarray, n_boot: int, seed: int):
    """Mean per bin over counted targets, and its ``n_boot`` replicates with whole sequences
    resampled: ((n_bins,), (n_boot, n_bins)); NaN where a bin (or a replicate's bin) counts nothing."""
    idx = bootstrap_indices(len(sums), n_boot, seed)  # (B, N) resampled sequences
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums.sum(0) / counts.sum(0), sums[idx].sum(1) / counts[idx].sum(1)


def _bin_gains(losses, mask, bins, n_boot: int, seed: int, level: float = LEVEL):
    """Mean loss of bin i-1 minus bin i (i >= 1), with bootstrap intervals over sequences.

    Returns (gain, low, high), each (n_bins - 1,); NaN where a bin holds no counted target.
    """
    mean, boot = _bin_means(*_bin_sums(losses, mask, bins), n_boot, seed)
    gain = mean[:-1] - mean[1:]
    lo, hi = percentile_interval(boot[:, :-1] - boot[:, 1:], level)
    bad = ~np.isfinite(gain)
    lo, hi = np.where(bad, np.nan, lo), np.where(bad, np.nan, hi)
    return gain, lo, hi


def octave_gain(losses: np.ndarray, mask: np.ndarray, a: int, b: int, c: int, n_boot: int = N_BOOT, seed: int = 0):
    """Fall in mean loss from positions [a, b) to [b, c), with a 95% bootstrap interval over sequences.

    Positive: the model's loss keeps falling as it gets more context. Returns (gain, low, high).
    """
    gain, lo, hi = _bin_gains(losses, mask, [(a, b), (b, c)], n_boot, seed)
    return float(gain[0]), float(lo[0]), float(hi[0])


def octave_gains(losses: np.ndarray, mask: np.ndarray | None = None, n_boot: int = N_BOOT, seed: int = 0) -> pd.DataFrame:
    """Context gain per octave: mean loss over positions [2^(j-1), 2^j) minus the mean over the
    next octave [2^j, 2^(j+1)), in nats, for every octave of the context, with 95% bootstrap
    intervals over sequences. ``significant``: the interval lies above zero (no correction for
    the number of octaves tested)."""
    losses = np.asarray(losses)
    mask = np.ones(losses.shape, bool) if mask is None else np.asarray(mask, bool)
    bins = octave_bins(losses.shape[1])
    gain, lo, hi = _bin_gains(losses, mask, bins, n_boot, seed)
    return pd.DataFrame({"octave_start": [b[0] for b in bins[1:]], "octave_end": [b[1] for b in bins[1:]],
                         "gain": gain, "gain_low": lo, "gain_high": hi, "significant": lo > 0})


def last_significant_octave(gains: pd.DataFrame) -> tuple[int | None, int | None]:
    """(start, end) positions of the farthest octave whose gain is significantly above zero, or (None, None)."""
    sig = gains[gains["significant"]]
    if sig.empty:
        return None, None
    r = sig.iloc[-1]
    return int(r["octave_start"]), int(r["octave_end"])


def curve_shape(losses: np.ndarray, mask: np.ndarray, n_boot: int = N_BOOT, fit_boot: int = ANALYSIS.fit_boot,
                seed: int = 0) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The shape of one run's per-position curve, as ``analyze`` and ``score`` both measure it: its
    octave gains (:func:`octave_gains`) and the fields of its fit row (the power law of
    :func:`bootstrap_fit`, ``fit_boot`` refits; the last octave's gain; the last significant octave).
    A curve that falls significantly nowhere has no law to put an interval on: it gets no refits
    and its status reads ``flat`` (alpha and L_inf would describe noise)."""
    octaves = octave_gains(losses, mask, n_boot, seed)
    start, end = last_significant_octave(octaves)
    fit = bootstrap_fit(losses, mask, n_boot=fit_boot if start is not None else 0, seed=seed)
    if start is None and fit["fit_status"] in ("ok", "not converged"):
        fit["fit_status"] = "flat"
    last = octaves.iloc[-1]
    return octaves, {"n_sequences": int(len(losses)), **fit, "last_octave_gain": last["gain"],
                     "last_octave_gain_low": last["gain_low"], "last_octave_gain_high": last["gain_high"],
                     "last_significant_octave_start": start, "last_significant_octave_end": end}


def loss_buckets(losses: np.ndarray, mask: np.ndarray, length: int, idx: np.ndarray,
                 level: float = LEVEL) -> list[dict[str, Any]]:
    """Mean loss of (N, L) per-window losses in buckets of ``length`` positions, [0, length),
    [length, 2 length), ..., each with a bootstrap interval over windows from the resamples ``idx``
    (:func:`mnemoscope.measure.bootstrap.bootstrap_indices`): rows of bucket_start, bucket_end,
    loss, ci_low, ci_high, n_sequences (a bucket without a counted target left out)."""
    L = losses.shape[1]
    m = np.asarray(mask, np.float64)
    rows = []
    for start in range(0, L, length):
        end = min(L, start + length)
        num, den = (losses[:, start:end] * m[:, start:end]).sum(1), m[:, start:end].sum(1)
        if den.sum() == 0:
            continue
        lo, hi = percentile_interval(num[idx].sum(1) / np.maximum(den[idx].sum(1), 1), level, axis=None)
        rows.append({"bucket_start": start, "bucket_end": end, "loss": num.sum() / den.sum(), "ci_low": lo,
                     "ci_high": hi, "n_sequences": int((den > 0).sum())})
    return rows


# -- paired gaps: each architecture against a baseline on the same test sequences ---------------------
GAP_EDGES = (0, 8, 32, 128, 512, 2048, 8192)


def gap_bands(T: int) -> list[tuple[int, int]]:
    """Position bands [0, 8), [8, 32), [32, 128), ... (x4 each), the last one ending at T."""
    edges = [e for e in GAP_EDGES if e < T] + [T]
    return list(zip(edges[:-1], edges[1:]))


def paired_gap(losses: np.ndarray, base: np.ndarray, mask: np.ndarray | None, n_boot: int = N_BOOT,
               seed: int = 0, level: float = LEVEL) -> pd.DataFrame:
    """Loss of a model minus a baseline's on the **same** test sequences, per position band, with
    paired bootstrap intervals over sequences (both curves resampled together, so the noise the two
    share, which sequences are hard, cancels).

    Rows: one per band (``band`` "a-b"), then ``all`` positions, then ``growth`` (last band minus
    the first band that holds a counted target: does the gap widen with context?). Positive: the
    model is worse than the baseline.
    """
    losses, base = np.asarray(losses, np.float64), np.asarray(base, np.float64)
    if losses.shape != base.shape:
        raise UserError(f"paired gap needs the same test sequences: shapes {losses.shape} and {base.shape}")
    mask = np.ones(losses.shape, bool) if mask is None else np.asarray(mask, bool)
    T = losses.shape[1]
    bands = gap_bands(T) + [(0, T)]
    sums, counts = _bin_sums(losses - base, mask, bands)
    point, boot = _bin_means(sums, counts, n_boot, seed)  # (n_bands,), (B, n_bands)
    counted = np.flatnonzero(counts[:, :-1].sum(0) > 0)  # answer-only tasks count nothing in the first bands
    first = int(counted[0]) if len(counted) else 0
    point = np.append(point, point[-2] - point[first])  # point[-2]: the last band (point[-1]: all)
    boot = np.concatenate([boot, boot[:, -2:-1] - boot[:, first:first + 1]], axis=1)
    lo, hi = percentile_interval(boot, level)
    names = [f"{a}-{b - 1}" for a, b in bands[:-1]] + ["all", "growth"]
    return pd.DataFrame({"band": names, "gap": point, "gap_low": lo, "gap_high": hi,
                         "significant": (lo > 0) | (hi < 0)})


def position_bins(T: int, bins_per_octave: int = 4) -> list[tuple[int, int]]:
    """Contiguous bins of positions [a, b) of 1/``bins_per_octave`` octave of context each (the first
    positions one by one): what a per-position figure draws at T >= 256 to stay readable."""
    key = np.floor(np.log2(np.arange(T) + 1) * bins_per_octave)
    edges = [0] + [int(i) for i in np.flatnonzero(np.diff(key)) + 1] + [T]
    return list(zip(edges[:-1], edges[1:]))


def single_positions(bins_per_octave: int = 4) -> int:
    """How many first positions :func:`position_bins` leaves each in a bin of its own (7 at 4 bins
    per octave: positions 7 and 8, 8 and 9 tokens of context, share the next bin)."""
    return next(i for i, (a, b) in enumerate(position_bins(1 << 12, bins_per_octave)) if b - a > 1)


def paired_gap_curve(losses: np.ndarray, base: np.ndarray, mask: np.ndarray | None, bins_per_octave: int = 4,
                     n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> pd.DataFrame:
    """:func:`paired_gap` per bin of :func:`position_bins`: the gap to a baseline as a curve over
    positions, each bin's interval a paired bootstrap over sequences. Columns: ``position`` (the
    bin's mean position), ``start``, ``end``, ``gap``, ``gap_low``, ``gap_high``."""
    losses, base = np.asarray(losses, np.float64), np.asarray(base, np.float64)
    if losses.shape != base.shape:
        raise UserError(f"paired gap needs the same test sequences: shapes {losses.shape} and {base.shape}")
    mask = np.ones(losses.shape, bool) if mask is None else np.asarray(mask, bool)
    bins = position_bins(losses.shape[1], bins_per_octave)
    sums, counts = _bin_sums(losses - base, mask, bins)
    point, boot = _bin_means(sums, counts, n_boot, seed)
    lo, hi = percentile_interval(boot, level)
    keep = counts.sum(0) > 0  # bins with no counted target (answer-only tasks) have no gap
    return pd.DataFrame({"position": [(a + b - 1) / 2 for a, b in bins], "start": [a for a, _ in bins],
                         "end": [b for _, b in bins], "gap": point, "gap_low": lo, "gap_high": hi})[keep]


def effective_context(losses: np.ndarray, contexts: np.ndarray, tolerance: float = TOLERANCE, n_boot: int = N_BOOT,
                      seed: int = 0, level: float = LEVEL) -> tuple[int, int, int]:
    """Smallest context n from which on (every n' >= n) the mean loss is within ``tolerance``
    (relative) of the full-context loss, the last column. Interval: bootstrap over targets
    (paired: a replicate keeps a target's losses at every n). Returns (n, low, high)."""
    losses = np.asarray(losses, np.float64)
    contexts = np.asarray(contexts)

    def first_within(mean):  # mean: (..., K)
        within = mean <= mean[..., -1:] * (1 + tolerance)
        # within from column k on: reverse cumulative AND
        tail = np.flip(np.logical_and.accumulate(np.flip(within, -1), -1), -1)
        return contexts[np.argmax(tail, axis=-1)]

    point = int(first_within(losses.mean(0)))
    boots = first_within(losses[bootstrap_indices(len(losses), n_boot, seed)].mean(1))  # (B,)
    lo, hi = percentile_interval(boots, level, axis=None, discrete=True)
    return point, int(lo), int(hi)


#: the least improvement, in nats per target, by which a truncated context counts as beating the
#: full one, whatever ``tolerance`` says: where the full-context loss is near zero (a probe solved),
#: a fraction of it is float noise (a model at 3e-8 nats "beaten" by 2e-8), not worse use of context
NEGLIGIBLE_NATS = 1e-3


def beats_full_context(loss: float, full: float, tolerance: float) -> bool:
    """A truncated context's mean ``loss`` is better than the ``full`` context's by more than
    ``tolerance`` (relative) and by more than :data:`NEGLIGIBLE_NATS`."""
    return bool(loss < full * (1 - tolerance) and full - loss > NEGLIGIBLE_NATS)


def full_context_check(contexts, mean, tolerance: float) -> dict[str, Any]:
    """``full_context_worse`` and ``best_truncated_context`` from the mean loss ``mean`` (K,) at the
    increasing ``contexts`` (K,), the last the full context: the one rule of the final analysis
    (:func:`truncation_check`) and of each kept step (:mod:`mnemoscope.analysis.growth`)."""
    mean = np.asarray(mean, np.float64)
    best = int(np.argmin(mean))
    return {"full_context_worse": beats_full_context(float(mean[best]), float(mean[-1]), tolerance)
            and best < len(mean) - 1, "best_truncated_context": int(np.asarray(contexts)[best])}


def truncation_check(context: pd.DataFrame, tolerance: float) -> dict[str, Any]:
    """Whether some truncated context scores better than the full one (:func:`full_context_check`;
    e.g. learned positions past the length they trained well at): then every n is "within" the
    full-context loss and the effective context says nothing."""
    trunc = context[context["variant"] == "truncate"] if not context.empty else context
    if trunc.empty:
        return {"full_context_worse": False, "best_truncated_context": math.nan}
    trunc = trunc.sort_values("context", kind="stable")
    return full_context_check(trunc["context"].to_numpy(), trunc["loss"].to_numpy(), tolerance)


MIN_WINDOWS = 2  # fewer windows than this: a bootstrap over windows gives no interval, so none is given


def context_resolution(context: pd.DataFrame) -> dict[str, int]:
    """How finely each variant's effective context is resolved, from the lengths it was scored at
    (the ablation rows of one run): ``effective_context[_variant]_step``, the point minus the length
    tried just below it (1: resolved to the token; a grid of powers of two leaves 16 standing for
    9-16), and ``_min``, the smallest context the interval's low end stands for (the length tried
    below it, plus one): the interval is [min, high], never narrower than the lengths tried allow."""
    out: dict[str, int] = {}
    if context.empty:
        return out
    for variant, rows in context.groupby("variant", sort=False):
        tried = np.sort(rows["context"].to_numpy())

        def below(n):  # the longest length tried below n (0: none)
            return int(tried[tried < n].max()) if (tried < n).any() else 0

        name = "effective_context" + ("" if variant == "truncate" else f"_{variant}")
        point, low = int(rows["effective_context"].iloc[0]), int(rows["effective_context_low"].iloc[0])
        out[name + "_step"], out[name + "_min"] = point - below(point), below(low) + 1
    return out


def format_effective_context(fit: dict, variant: str = "truncate") -> str:
    """A run's effective context as every output prints it (the analysis's console line, the
    report's table, the closing summary): ``12 [12, 12]``; a point resolved only to a range of
    lengths reads ``9-16 [9, 16]``; "not meaningful: N tokens beat the full context" when a
    truncated context scores better than the whole one (:func:`truncation_check`)."""
    name = "effective_context" + ("" if variant == "truncate" else f"_{variant}")

    def number(key):  # a finite number (from a dict, a CSV row or numpy), else None
        v = fit.get(key)
        ok = isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and math.isfinite(v)
        return float(v) if ok else None

    if variant == "truncate" and str(fit.get("full_context_worse")) == "True":  # every n is "within" a worse full one
        return f"not meaningful: {int(fit['best_truncated_context'])} tokens beat the full context"
    point, low, high = (number(name + s) for s in ("", "_low", "_high"))
    if point is None:
        return ""
    step, lowest = number(name + "_step") or 1, number(name + "_min")
    text = f"{int(point)}" if step <= 1 else f"{int(point - step + 1)}-{int(point)}"
    if low is None or high is None:
        return text
    return f"{text} [{int(lowest if lowest is not None else low)}, {int(high)}]"


def format_interval(value: float, low: float, high: float, spec: str = "+.3f") -> str:
    """A number with its interval as every table and console line prints it, the three in the
    format ``spec``: ``+0.089 [+0.077, +0.102]`` (the default, a paired gap), ``0.512 [0.47, 0.55]``
    (``.3g``); ``+0.089 (no interval)`` where there is none (fewer than two windows)."""
    if not (math.isfinite(float(low)) and math.isfinite(float(high))):
        return f"{value:{spec}} (no interval)"
    return f"{value:{spec}} [{low:{spec}}, {high:{spec}}]"


format_gap = format_interval  # a paired gap: signed, three decimals
