"""How much history does each architecture use? Numbers with intervals, from a finished study.

Four measurements, each bootstrapped over **sequences** (or over target tokens), never over
positions (SCIENCE.md sections 1, 3, 5):

* ``fit_power_law``: the per-position curve as L(t) = L_inf + A t^(-alpha), t = tokens of
  context, fitted as Chinchilla did (log space, Huber delta 1e-3 summed, L-BFGS from a grid of
  starts, best kept, convergence checked); flagged when it did not converge, has too few points
  or its residuals are far larger than the curve's own noise (the form is wrong, e.g. images).
* ``octave_gains``: the fall in loss from one octave of positions to the next, and the last
  octave whose fall is significantly above zero.
* ``truncation_ablation`` (Khandelwal et al. 2018): the same target tokens scored with exactly
  n tokens of context, fresh state, n = 1, 2, 4, ..., T; variants with the tokens farther than
  n back shuffled or replaced by unrelated text. ``effective_context`` = smallest n from which
  on the loss stays within 1% of the full-context loss.
* ``extrapolation``: per-position loss on sequences 2x and 4x the training context, for the
  models that accept them (``extrapolates``).

``analyze(study)`` runs all four on every finished run and writes, in the study folder,
``fits.csv`` (one row per run), ``context.parquet`` (ablation rows), ``octaves.parquet`` and
``extrapolation.parquet``; the report section below draws them (``study.py analyze DIR``).
"""
from __future__ import annotations

import dataclasses
import html
import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy import optimize
from threadpoolctl import threadpool_limits
from torch import nn

from . import io
from .errors import UserError
from .task import TokenSplit, eval_offsets

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


def _starts(y: np.ndarray):
    """A grid of starting points around the data's own scale."""
    lo = max(float(np.min(y)), 1e-6)
    for e in np.log(lo * np.array([0.3, 0.7, 0.95])):
        for a in np.log(max(float(y[0] - lo), 1e-3) * np.array([0.3, 1.0, 3.0])):
            for alpha in (0.1, 0.5, 1.5):
                yield np.array([e, a, alpha])


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

    Every start of a 27-point grid is run to convergence with L-BFGS-B and the lowest objective
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


def bootstrap_fit(losses: np.ndarray, mask: np.ndarray, n_boot: int = 200, level: float = 95, seed: int = 0,
                  **fit_kwargs) -> dict:
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
    rng = np.random.default_rng(seed)
    N = len(losses)
    m = mask.astype(np.float64)
    lm = losses * m
    start = np.array([math.log(point.L_inf), math.log(point.A), point.alpha])
    draws, n_conv = [], 0
    for _ in range(n_boot):
        idx = rng.integers(0, N, N)
        cnt = m[idx].sum(0)
        curve = np.where(cnt > 0, lm[idx].sum(0) / np.maximum(cnt, 1), np.nan)
        f = fit_power_law(t, curve, None, start=start, **fit_kwargs)
        n_conv += f.converged
        draws.append((f.L_inf, f.A, f.alpha))
    draws = np.array(draws)
    q = [(100 - level) / 2, 100 - (100 - level) / 2]
    for j, k in enumerate(keys):
        lo, hi = np.nanpercentile(draws[:, j], q)
        out[f"{k}_low"], out[f"{k}_high"] = float(lo), float(hi)
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
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(sums), size=(n_boot, len(sums)))  # (B, N) resampled sequences
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums.sum(0) / counts.sum(0), sums[idx].sum(1) / counts[idx].sum(1)


def _bin_gains(losses, mask, bins, n_boot: int, seed: int, level: float = 95):
    """Mean loss of bin i-1 minus bin i (i >= 1), with bootstrap intervals over sequences.

    Returns (gain, low, high), each (n_bins - 1,); NaN where a bin holds no counted target.
    """
    mean, boot = _bin_means(*_bin_sums(losses, mask, bins), n_boot, seed)
    gain = mean[:-1] - mean[1:]
    q = [(100 - level) / 2, 100 - (100 - level) / 2]
    bg = boot[:, :-1] - boot[:, 1:]
    lo, hi = np.nanpercentile(bg, q, axis=0) if np.isfinite(bg).any() else (gain * np.nan, gain * np.nan)
    bad = ~np.isfinite(gain)
    lo, hi = np.where(bad, np.nan, lo), np.where(bad, np.nan, hi)
    return gain, lo, hi


def octave_gain(losses: np.ndarray, mask: np.ndarray, a: int, b: int, c: int, n_boot: int = 1000, seed: int = 0):
    """Fall in mean loss from positions [a, b) to [b, c), with a 95% bootstrap interval over sequences.

    Positive: the model's loss keeps falling as it gets more context. Returns (gain, low, high).
    """
    gain, lo, hi = _bin_gains(losses, mask, [(a, b), (b, c)], n_boot, seed)
    return float(gain[0]), float(lo[0]), float(hi[0])


def octave_gains(losses: np.ndarray, mask: np.ndarray | None = None, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
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


# -- paired gaps: each architecture against a baseline on the same test sequences ---------------------
GAP_EDGES = (0, 8, 32, 128, 512, 2048, 8192)


def gap_bands(T: int) -> list[tuple[int, int]]:
    """Position bands [0, 8), [8, 32), [32, 128), ... (x4 each), the last one ending at T."""
    edges = [e for e in GAP_EDGES if e < T] + [T]
    return list(zip(edges[:-1], edges[1:]))


def paired_gap(losses: np.ndarray, base: np.ndarray, mask: np.ndarray | None, n_boot: int = 1000,
               seed: int = 0, level: float = 95) -> pd.DataFrame:
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
    q = [(100 - level) / 2, 100 - (100 - level) / 2]
    with np.errstate(invalid="ignore"):
        lo, hi = np.nanpercentile(boot, q, axis=0) if np.isfinite(boot).any() else (point * np.nan, point * np.nan)
    names = [f"{a}-{b - 1}" for a, b in bands[:-1]] + ["all", "growth"]
    return pd.DataFrame({"band": names, "gap": point, "gap_low": lo, "gap_high": hi,
                         "significant": (lo > 0) | (hi < 0)})


def paired_gaps(study_dir: Path, runs: pd.DataFrame, baseline: str, n_boot: int = 1000) -> pd.DataFrame:
    """:func:`paired_gap` of every finished run against the ``baseline`` architecture's run of the
    same task, size and seed (read from ``runs/<id>/losses.npz``)."""
    if "status" in runs:
        runs = runs[runs["status"] == "ok"]
    rows = []
    for (task, params, seed), group in runs.groupby(["task", "params", "seed"], sort=False):
        base_run = group[group["arch"] == baseline]
        if base_run.empty:
            continue
        with np.load(Path(study_dir) / "runs" / base_run["run_id"].iloc[0] / "losses.npz") as z:
            base, mask = z["losses"], z["mask"]
        for r in group.itertuples():
            if r.arch == baseline:
                continue
            with np.load(Path(study_dir) / "runs" / r.run_id / "losses.npz") as z:
                losses, m = z["losses"], z["mask"]
            if losses.shape != base.shape or not np.array_equal(m, mask):
                continue  # scored on other sequences (a changed eval setting): no pairing
            g = paired_gap(losses, base, mask, n_boot, seed=int(seed))
            rows.append(g.assign(task=task, params=params, seed=seed, arch=r.arch, baseline=baseline))
    cols = ["task", "params", "seed", "arch", "baseline", "band", "gap", "gap_low", "gap_high", "significant"]
    return pd.concat(rows, ignore_index=True)[cols] if rows else pd.DataFrame(columns=cols)


def gap_table(gaps: pd.DataFrame) -> pd.DataFrame:
    """Wide table for the report: a row per task, size and architecture, a column per band."""
    if gaps.empty:
        return gaps
    g = gaps.copy()
    g["cell"] = [f"{v:+.3f} [{a:+.3f}, {b:+.3f}]" + (" *" if s else "")
                 for v, a, b, s in zip(g["gap"], g["gap_low"], g["gap_high"], g["significant"])]
    order = list(dict.fromkeys(g["band"]))
    wide = g.pivot_table(index=["task", "params", "arch"], columns="band", values="cell", aggfunc="first", sort=False)
    wide = wide[[b for b in order if b in wide.columns]].reset_index()
    from .specs import format_count

    wide["params"] = wide["params"].map(lambda p: format_count(int(p)))
    wide.columns.name = None
    return wide


# -- 3. truncation ablation (Khandelwal et al. 2018) ------------------------------------------------
VARIANTS = ("truncate", "shuffle", "replace")


@dataclass
class Ablation:
    """Loss of the same M target tokens under each variant and context budget n (nats).

    ``losses[variant]`` is (M, K) for ``contexts`` (K,); column -1 is the full context, where
    every variant is the unmodified window. ``available`` (M,) is each target's full context
    (T for text; less for a target early in a fixed-length instance). ``forward_tokens``
    counts the tokens fed to the model per variant: the cost.
    """

    contexts: np.ndarray
    losses: dict[str, np.ndarray]
    available: np.ndarray
    forward_tokens: dict[str, int]


def ablation_targets(split: TokenSplit, context_length: int, n_targets: int):
    """(windows (M, T+1) token ids, position (M,)) of the targets: in each evaluation window
    (``eval_offsets``: the same windows the per-position curve scores), its last counted target.
    Position p predicts window token p+1 from p+1 tokens of context."""
    T = context_length
    offsets = eval_offsets(split, T, n_targets)
    index = offsets[:, None] + np.arange(T + 1)[None, :]
    windows = np.asarray(split.tokens[index], dtype=np.int64)  # (M, T+1)
    counted = np.ones((len(offsets), T), bool) if split.mask is None else np.asarray(split.mask[index[:, 1:]], bool)
    has = counted.any(1)
    position = T - 1 - np.argmax(counted[:, ::-1], axis=1)  # last counted position
    return windows[has], position[has]


@torch.no_grad()
def _last_position_loss(model: nn.Module, inputs: np.ndarray, targets: np.ndarray, device, max_tokens: int,
                        counter: list[int]) -> np.ndarray:
    """Loss (nats) of predicting ``targets`` (R,) after the windows ``inputs`` (R, n), each scored
    alone from fresh state, many windows per forward pass (at most ``max_tokens`` tokens)."""
    R, n = inputs.shape
    step = max(1, max_tokens // max(n, 1))
    out = np.empty(R, np.float32)
    for i in range(0, R, step):
        x = torch.from_numpy(inputs[i:i + step]).to(device)
        y = torch.from_numpy(targets[i:i + step]).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(x)  # (B, n, V)
        out[i:i + step] = F.cross_entropy(logits[:, -1].float(), y, reduction="none").cpu().numpy()
        counter[0] += x.numel()
    return out


def truncation_ablation(model: nn.Module, split: TokenSplit, context_length: int, n_targets: int = 512,
                        batch_size: int | None = None, variants=VARIANTS, contexts=None, seed: int = 0,
                        device=None, max_tokens: int = 1 << 16) -> Ablation:
    """Khandelwal et al.'s ablation: the same targets scored with n tokens of context, n in ``contexts``
    (default 1, 2, 4, ..., T).

    * ``truncate``: the model sees exactly the last n tokens before the target, from fresh state.
    * ``shuffle``: the whole available context, its tokens farther than n back randomly permuted
      (does their order matter?).
    * ``replace``: the whole context, its tokens farther than n back replaced by the same
      positions of another evaluation window, far away in the same split (does their identity matter?).

    Every (target, n) pair is its own window: exactly what a single forward pass over a fresh
    sequence gives, for any architecture. (A banded attention mask would not do: with L layers a
    position reaches L(n-1)+1 tokens back, not n.) Windows of one length are batched, up to
    ``max_tokens`` tokens per forward (``batch_size`` sequences, if given, caps it instead).
    Cost, in forward tokens, about M * 2T for ``truncate`` and M * T * log2(T) for each other variant.
    """
    device = torch.device(device or next(model.parameters()).device)
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise UserError(f"unknown ablation variant(s) {', '.join(sorted(unknown))} (known: {', '.join(VARIANTS)})")
    T = context_length
    windows, position = ablation_targets(split, T, n_targets)
    M = len(windows)
    if M == 0:
        raise UserError("the test split has no counted target for the truncation ablation")
    if "replace" in variants and M < 2:
        raise UserError("the replace variant needs at least two evaluation windows")
    if contexts is None:
        contexts = [2 ** j for j in range(int(math.log2(T)) + 1)] + ([T] if T & (T - 1) else [])
    contexts = np.array(sorted({int(c) for c in contexts if 1 <= int(c) <= T} | {T}), dtype=np.int64)
    if batch_size is not None:
        max_tokens = max(1, batch_size) * T
    available = position + 1  # (M,) tokens of context the target has in its window
    target = windows[np.arange(M), available]  # (M,) token ids
    rng = np.random.default_rng(seed)
    was_training = model.training
    model.eval()
    out, cost = {}, {}
    full = None
    try:
        for variant in variants:
            counter = [0]
            losses = np.empty((M, len(contexts)), np.float32)
            for k, n in enumerate(contexts):
                if n == T and full is not None:  # every variant's full context is the same window
                    losses[:, k] = full
                    continue
                if variant == "truncate" or n == T:
                    keep = np.minimum(n, available)  # a target with fewer tokens available keeps them all
                    starts = available - keep
                else:  # the full context, tokens farther than n back altered
                    keep = available
                    starts = np.zeros(M, np.int64)
                rows = np.empty(M, np.float32)
                for length in np.unique(keep):  # one batch shape per window length
                    sel = np.flatnonzero(keep == length)
                    idx = starts[sel, None] + np.arange(length)[None, :]
                    x = windows[sel[:, None], idx]  # (R, length)
                    cut = length - np.minimum(n, length)  # tokens farther than n back: x[:, :cut]
                    if variant == "shuffle" and n < T and cut > 1:
                        x = x.copy()
                        perm = np.argsort(rng.random((len(sel), cut)), axis=1)
                        x[:, :cut] = np.take_along_axis(x[:, :cut], perm, axis=1)
                    elif variant == "replace" and n < T and cut > 0:
                        x = x.copy()
                        donor = (sel + M // 2) % M  # the window half the split away
                        x[:, :cut] = windows[donor][:, :cut]
                    rows[sel] = _last_position_loss(model, x, target[sel], device, max_tokens, counter)
                losses[:, k] = rows
                if n == T:
                    full = rows
            out[variant], cost[variant] = losses, counter[0]
    finally:
        model.train(was_training)
    return Ablation(contexts, out, available, cost)


def effective_context(losses: np.ndarray, contexts: np.ndarray, tolerance: float = 0.01, n_boot: int = 1000,
                      seed: int = 0, level: float = 95) -> tuple[int, int, int]:
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
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(losses), size=(n_boot, len(losses)))
    boots = first_within(losses[idx].mean(1))  # (B,)
    lo = np.percentile(boots, (100 - level) / 2, method="lower")
    hi = np.percentile(boots, 100 - (100 - level) / 2, method="higher")
    return point, int(lo), int(hi)


def ablation_table(ab: Ablation, tolerance: float = 0.01, n_boot: int = 1000, seed: int = 0,
                   level: float = 95) -> pd.DataFrame:
    """Tidy rows: one per variant and context n, mean loss with its bootstrap interval over
    targets, the loss's excess over full context, and the variant's effective context and cost."""
    rows = []
    rng = np.random.default_rng(seed)
    q = [(100 - level) / 2, 100 - (100 - level) / 2]
    for variant, losses in ab.losses.items():
        M = len(losses)
        idx = rng.integers(0, M, size=(n_boot, M))
        boots = losses[idx].astype(np.float64).mean(1)  # (B, K)
        lo, hi = np.percentile(boots, q, axis=0)
        mean = losses.astype(np.float64).mean(0)
        eff = effective_context(losses, ab.contexts, tolerance, n_boot, seed)
        for k, n in enumerate(ab.contexts):
            rows.append({"variant": variant, "context": int(n), "loss": mean[k], "ci_low": lo[k], "ci_high": hi[k],
                         "excess": mean[k] / mean[-1] - 1, "n_targets": M, "effective_context": eff[0],
                         "effective_context_low": eff[1], "effective_context_high": eff[2],
                         "tolerance": tolerance, "forward_tokens": ab.forward_tokens[variant]})
    return pd.DataFrame(rows)


# -- 4. length extrapolation ----------------------------------------------------------------------
def extrapolates(model: nn.Module) -> bool:
    """Whether the model accepts sequences longer than its training context (class or instance ``extrapolates``)."""
    return bool(getattr(model, "extrapolates", False))


def extrapolation(model: nn.Module, split: TokenSplit, context_length: int, factors=(2, 4), n_sequences: int = 64,
                  batch_size: int = 16, seed: int = 0) -> pd.DataFrame:
    """Per-position loss on test windows ``factor`` x the training context (positions past T were
    never trained on). Empty for a model that does not extrapolate, or a task whose sequences have
    a fixed length. Columns: factor, length, position, loss, ci_low, ci_high, n_sequences."""
    from .evaluate import bootstrap_ci, per_position_losses

    if not extrapolates(model) or split.starts is not None:
        return pd.DataFrame()
    tables = []
    for f in factors:
        L = int(f * context_length)
        if len(split.tokens) < L + 1:
            continue  # the test split holds no window this long
        losses, mask = per_position_losses(model, split, L, n_sequences, batch_size)
        mean, lo, hi, n = bootstrap_ci(losses, mask, n_boot=200, seed=seed)
        tables.append(pd.DataFrame({"factor": f, "length": L, "position": np.arange(L), "loss": mean,
                                    "ci_low": lo, "ci_high": hi, "n_sequences": n.astype(np.int64)}))
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


# -- a whole study -----------------------------------------------------------------------------------
FIT_COLUMNS = ["run_id", "arch", "task", "params", "seed", "context", "n_sequences",
               "alpha", "alpha_low", "alpha_high", "L_inf", "L_inf_low", "L_inf_high", "A", "A_low", "A_high",
               "n_points", "converged", "boot_converged", "rms_log_residual", "chi2_reduced", "fit_status",
               "last_octave_gain", "last_octave_gain_low", "last_octave_gain_high",
               "last_significant_octave_start", "last_significant_octave_end",
               "full_context_loss", "effective_context", "effective_context_low", "effective_context_high",
               "effective_context_shuffle", "effective_context_shuffle_low", "effective_context_shuffle_high",
               "effective_context_replace", "effective_context_replace_low", "effective_context_replace_high",
               "tolerance", "ablation_targets", "ablation_forward_tokens", "extrapolates",
               "loss_last_half", "loss_beyond_2x", "loss_beyond_4x"]


@dataclass
class AnalysisSettings:
    """What ``analyze`` measures, and how much it spends on it."""

    n_targets: int = 256  # target tokens of the truncation ablation (one per evaluation window)
    tolerance: float = 0.01  # effective context: within this fraction of the full-context loss
    variants: tuple[str, ...] = VARIANTS
    n_boot: int = 1000  # bootstrap replicates for intervals of means and effective contexts
    fit_boot: int = 200  # bootstrap refits of the power law
    factors: tuple[int, ...] = (2, 4)  # extrapolation lengths, in training contexts
    extrapolation_sequences: int = 64


def analyze_run(folder: Path, task, settings: AnalysisSettings, device=None) -> dict[str, pd.DataFrame | dict]:
    """Every measurement of one finished run folder: its fit row, ablation, octave and
    extrapolation tables (each row labelled with the run)."""
    from .study import load_run_model

    folder = Path(folder)
    with np.load(folder / "losses.npz") as z:
        losses, mask = z["losses"], z["mask"]
    row = json.loads((folder / "result.json").read_text())
    label = {k: row[k] for k in ("run_id", "arch", "task", "params", "seed")}
    T, seed = int(row["context"]), int(row["seed"])
    if task.context_length != T:
        raise UserError(f"run {row['run_id']} was trained with context {T} but the study's task gives "
                        f"{task.context_length}; was config.yaml edited?")
    octaves = octave_gains(losses, mask, settings.n_boot, seed)
    start, end = last_significant_octave(octaves)
    # a curve that falls significantly nowhere has no law to put an interval on
    fit = bootstrap_fit(losses, mask, n_boot=settings.fit_boot if start is not None else 0, seed=seed)
    if start is None and fit["fit_status"] in ("ok", "not converged"):
        fit["fit_status"] = "flat"  # alpha and L_inf would describe noise (and the fit cannot settle)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, _ = load_run_model(folder, str(device))
    split = task.splits()["test"]
    t0 = time.time()
    ab = truncation_ablation(model, split, T, settings.n_targets, variants=settings.variants, seed=seed, device=device)
    context = ablation_table(ab, settings.tolerance, settings.n_boot, seed)
    ablation_seconds = time.time() - t0
    ext = extrapolation(model, split, T, settings.factors, settings.extrapolation_sequences, seed=seed)
    fit_row = {**label, "context": T, "n_sequences": int(len(losses)), **{k: v for k, v in fit.items() if k in FIT_COLUMNS},
               "last_octave_gain": octaves["gain"].iloc[-1], "last_octave_gain_low": octaves["gain_low"].iloc[-1],
               "last_octave_gain_high": octaves["gain_high"].iloc[-1],
               "last_significant_octave_start": start, "last_significant_octave_end": end,
               "full_context_loss": float(ab.losses[settings.variants[0]][:, -1].mean()),
               "tolerance": settings.tolerance, "ablation_targets": int(len(ab.available)),
               "ablation_forward_tokens": int(sum(ab.forward_tokens.values())), "extrapolates": extrapolates(model),
               "ablation_seconds": round(ablation_seconds, 2)}
    for variant in settings.variants:
        first = context[context["variant"] == variant].iloc[0]
        name = "effective_context" + ("" if variant == "truncate" else f"_{variant}")
        for suffix in ("", "_low", "_high"):
            fit_row[name + suffix] = int(first["effective_context" + suffix])
    if not ext.empty:
        m = mask.astype(np.float64)
        fit_row["loss_last_half"] = float((losses[:, T // 2:] * m[:, T // 2:]).sum() / max(m[:, T // 2:].sum(), 1))
        for f in settings.factors:
            part = ext[(ext["factor"] == f) & (ext["position"] >= T)]
            if not part.empty:
                fit_row[f"loss_beyond_{f}x"] = float(part["loss"].mean())
    tables = {"context": context, "octaves": octaves, "extrapolation": ext}
    for df in tables.values():
        if not df.empty:
            for i, (k, v) in enumerate(label.items()):
                df.insert(i, k, v)
    return {"fit": fit_row, **tables}


def _cached_run(folder: Path, settings: AnalysisSettings):
    """A run's analysis stored by an earlier ``analyze`` with the same settings, or None."""
    path = folder / "analysis" / "fit.json"
    try:
        stored = json.loads(path.read_text())
        if stored["settings"] != json.loads(json.dumps(dataclasses.asdict(settings))):
            return None
        return {"fit": stored["fit"], **{name: pd.read_parquet(folder / "analysis" / f"{name}.parquet")
                                         for name in ("context", "octaves", "extrapolation")}}
    except (OSError, ValueError, KeyError):
        return None


def _store_run(folder: Path, settings: AnalysisSettings, result: dict) -> None:
    for name in ("context", "octaves", "extrapolation"):
        io.write_parquet(folder / "analysis" / f"{name}.parquet", result[name])
    io.write_text(folder / "analysis" / "fit.json",
                  json.dumps({"settings": dataclasses.asdict(settings), "fit": result["fit"]}, indent=1, default=_plain))


def _plain(o):
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(type(o))


def analyze(study, settings: AnalysisSettings | None = None, log=print, device=None,
            recompute: bool = False, baseline: str | None = None) -> dict[str, pd.DataFrame]:
    """Analyse every finished, non-diverged run of a study from its stored models and tables, and
    write ``fits.csv``, ``context.parquet``, ``octaves.parquet`` and ``extrapolation.parquet``
    into the study folder, and ``gaps.csv``: every architecture against ``baseline`` (default: the
    study's first) on the same test sequences. ``study``: a :class:`mnemoscope.study.Study`, or a
    study folder.

    Each run's results are also kept in ``runs/<id>/analysis/`` and reused by a later call with
    the same settings unless ``recompute``. A run whose analysis fails is logged and left out.
    """
    from .study import Study

    if not isinstance(study, Study):
        study = Study.from_folder(study)
    settings = settings or AnalysisSettings()
    runs, _ = study.collect()
    if runs.empty:
        raise UserError(f"{study.out} has no finished runs to analyse")
    fits, tables = [], {"context": [], "octaves": [], "extrapolation": []}
    for r in runs.itertuples():
        if getattr(r, "status", "ok") != "ok":
            log(f"analysis: skipping {r.run_id} (status {r.status})")
            continue
        folder = study.runs_dir / r.run_id
        result = None if recompute else _cached_run(folder, settings)
        if result is None:
            t0 = time.time()
            try:
                result = analyze_run(folder, study.task(r.task), settings, device)
            except Exception as exc:  # one broken run (or plugin) must not cost the study its report
                log(f"analysis: {r.run_id} failed, left out: {type(exc).__name__}: {exc}")
                continue
            _store_run(folder, settings, result)
            f = result["fit"]
            log(f"analysis: {r.run_id}: alpha {f['alpha']:.3g} [{f['alpha_low']:.3g}, {f['alpha_high']:.3g}] "
                f"({f['fit_status']}), effective context {f['effective_context']} [{f['effective_context_low']}, "
                f"{f['effective_context_high']}] tokens, {f['ablation_forward_tokens']:,} forward tokens, "
                f"{time.time() - t0:.0f} s")
        fits.append({**result["fit"], **truncation_check(result["context"], settings.tolerance)})
        for name in tables:
            if not result[name].empty:
                tables[name].append(result[name])
    fit_df = pd.DataFrame(fits)
    if not fit_df.empty:
        fit_df = fit_df[[c for c in FIT_COLUMNS if c in fit_df] + [c for c in fit_df if c not in FIT_COLUMNS]]
    io.write_text(study.out / "fits.csv", fit_df.to_csv(index=False))
    baseline = baseline or study.config.archs[0]
    if baseline not in study.config.archs:
        raise UserError(f"baseline {baseline!r} is not one of the study's architectures: {', '.join(study.config.archs)}")
    gaps = paired_gaps(study.out, runs, baseline, settings.n_boot)
    io.write_text(study.out / "gaps.csv", gaps.to_csv(index=False))
    out = {"fits": fit_df, "gaps": gaps}
    for name, parts in tables.items():
        df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
        io.write_parquet(study.out / f"{name}.parquet", df)
        out[name] = df
    return out


# -- the report section (drawn from the stored tables alone) ------------------------------------------
def _read_optional(path: Path) -> pd.DataFrame:
    if not path.exists():
        return pd.DataFrame()
    if path.suffix != ".csv":
        return io.read_parquet(path)
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:  # an analysis that found no run to fit writes an empty table
        return pd.DataFrame()


def _model_label(df: pd.DataFrame) -> pd.Series:
    from .specs import format_count

    multi = df["params"].nunique() > 1
    return df["arch"] + (" " + df["params"].map(lambda p: format_count(int(p))) if multi else "")


def context_figure(context: pd.DataFrame, fits: pd.DataFrame):
    """Loss against the context the model was given, one panel per task: a line per model,
    solid = truncated to n tokens (95% band over targets), dashed = tokens beyond n shuffled,
    dotted = replaced; a dot marks the effective context."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    df = context.copy()
    df["model"] = _model_label(df)
    tasks = list(dict.fromkeys(df["task"]))
    models = list(dict.fromkeys(df["model"]))
    palette = dict(zip(models, sns.color_palette("colorblind", len(models))))
    styles = {"truncate": "-", "shuffle": "--", "replace": ":"}
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.2 * len(tasks), 4.4), squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        d = df[df["task"] == task]
        g = d.groupby(["model", "variant", "context"], as_index=False)[["loss", "ci_low", "ci_high"]].mean()  # seeds
        for (model, variant), part in g.groupby(["model", "variant"], sort=False):
            ax.plot(part["context"], part["loss"], ls=styles.get(variant, "-"), color=palette[model], lw=1.4,
                    label=f"{model}" if variant == "truncate" else None)
            if variant == "truncate":
                ax.fill_between(part["context"], part["ci_low"], part["ci_high"], color=palette[model], alpha=0.2, lw=0)
                eff = d[(d["model"] == model) & (d["variant"] == variant)]["effective_context"].median()
                at = part.iloc[(part["context"] - eff).abs().argmin()]
                ax.plot([at["context"]], [at["loss"]], "o", color=palette[model], ms=6)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("tokens of context given (n)")
        ax.set_ylabel("loss on the same targets (nats/token)")
        ax.set_title(f"{task}  (solid: truncated; dashed: beyond n shuffled; dotted: replaced)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def extrapolation_figure(ext: pd.DataFrame, bins_per_octave: int = 4):
    """Per-position loss on sequences past the training length (the longest factor scored), one
    panel per task; positions are averaged in bins of 1/``bins_per_octave`` octave so the long
    tail stays readable; the dotted line marks the training length."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    df = ext.copy()
    df["model"] = _model_label(df)
    df = df[df["factor"] == df.groupby("run_id")["factor"].transform("max")]
    df["bin"] = np.floor(np.log2(df["position"] + 1) * bins_per_octave)
    g = df.groupby(["task", "model", "length", "bin"], as_index=False)[["position", "loss", "ci_low", "ci_high"]].mean()
    tasks = list(dict.fromkeys(g["task"]))
    models = list(dict.fromkeys(g["model"]))
    palette = dict(zip(models, sns.color_palette("colorblind", len(models))))
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.2 * len(tasks), 4.4), squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        d = g[g["task"] == task]
        for model, part in d.groupby("model", sort=False):
            x = part["position"] + 1
            ax.plot(x, part["loss"], color=palette[model], lw=1.4, label=model)
            ax.fill_between(x, part["ci_low"], part["ci_high"], color=palette[model], alpha=0.2, lw=0)
        T = int(ext[ext["task"] == task]["length"].min() // ext[ext["task"] == task]["factor"].min())
        ax.axvline(T, color="k", ls=":", lw=1)
        ax.text(T, ax.get_ylim()[1], " training length", va="top", fontsize=8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("tokens of context (position + 1)")
        ax.set_ylabel("test loss (nats/token)")
        ax.set_title(task)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _interval(v, lo, hi, fmt="{:.3g}") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    text = fmt.format(v)
    if lo is not None and hi is not None and all(isinstance(x, (int, float)) and math.isfinite(x) for x in (lo, hi)):
        text += f" [{fmt.format(lo)}, {fmt.format(hi)}]"
    return text


def truncation_check(context: pd.DataFrame, tolerance: float) -> dict[str, Any]:
    """Whether some truncated context scores better than the full one by more than ``tolerance``
    (e.g. learned positions past the length they trained well at): then every n is "within" the
    full-context loss and the effective context says nothing."""
    trunc = context[context["variant"] == "truncate"] if not context.empty else context
    if trunc.empty:
        return {"full_context_worse": False, "best_truncated_context": math.nan}
    full = float(trunc.loc[trunc["context"].idxmax(), "loss"])
    best = trunc.loc[trunc["loss"].idxmin()]
    worse = bool(best["loss"] < full * (1 - tolerance)) and int(best["context"]) < int(trunc["context"].max())
    return {"full_context_worse": worse, "best_truncated_context": int(best["context"])}


def history_table(fits: pd.DataFrame) -> pd.DataFrame:
    """The section's table: architecture x task (x size, seed) -> effective context, alpha, L_inf,
    last significant octave, with intervals."""
    from .specs import format_count

    rows = []
    for r in fits.to_dict("records"):
        get = lambda k: r.get(k, math.nan)  # noqa: E731
        eff = lambda v: _interval(get(f"effective_context{v}"), get(f"effective_context{v}_low"),  # noqa: E731
                                  get(f"effective_context{v}_high"), "{:.0f}")
        start, end = get("last_significant_octave_start"), get("last_significant_octave_end")
        octave = f"[{start:.0f}, {end:.0f})" if isinstance(start, (int, float)) and math.isfinite(start) else "none"
        beyond = ""
        if math.isfinite(get("loss_beyond_4x")) or math.isfinite(get("loss_beyond_2x")):
            beyond = " / ".join(f"{get(f'loss_beyond_{f}x'):.3f}" for f in (2, 4) if math.isfinite(get(f"loss_beyond_{f}x")))
        effective = eff("")
        if r.get("full_context_worse") is True:  # every n is "within 1%" of a full context that is worse
            effective = f"not meaningful: {int(get('best_truncated_context'))} tokens beat the full context"
        rows.append({"arch": r["arch"], "task": r["task"], "size": format_count(int(r["params"])), "seed": r["seed"],
                     "T": r["context"], "effective context (tokens)": effective, "shuffled beyond n": eff("_shuffle"),
                     "replaced beyond n": eff("_replace"),
                     "alpha": _interval(get("alpha"), get("alpha_low"), get("alpha_high")),
                     "L_inf (nats)": _interval(get("L_inf"), get("L_inf_low"), get("L_inf_high")),
                     "fit": f"{r.get('fit_status', '')}, {int(get('n_points'))} pts, chi2/dof {get('chi2_reduced'):.2g}"
                     if math.isfinite(get("n_points")) else r.get("fit_status", ""),
                     "last significant octave (positions)": octave,
                     "loss [T/2, T) / past T at 2x / 4x": (f"{get('loss_last_half'):.3f} / {beyond}"
                                                           if beyond else "does not extrapolate")})
    return pd.DataFrame(rows)


def report_section(out: Path, runs: pd.DataFrame, pp: pd.DataFrame) -> list[tuple[str, str]]:
    """'How much history does each architecture use?', from fits.csv, context.parquet and
    extrapolation.parquet (written by ``study.py analyze``)."""
    from .report import _table, figure_png, img_tag

    title = "How much history does each architecture use?"
    out = Path(out)
    fits = _read_optional(out / "fits.csv")
    if fits.empty:
        return [(title, f"<p>Not analysed yet: run <code>python study.py analyze {html.escape(str(out))}</code>.</p>")]
    context = _read_optional(out / "context.parquet")
    ext = _read_optional(out / "extrapolation.parquet")
    tol = fits["tolerance"].iloc[0] if "tolerance" in fits else 0.01
    parts = [_table(history_table(fits))]
    parts.append(
        f"<p><b>Effective context</b> (Khandelwal et al. 2018): the same {int(fits['ablation_targets'].max())} target "
        f"tokens per run are scored with exactly n = 1, 2, 4, ..., T tokens of context from fresh state; it is the "
        f"smallest n from which on the loss stays within {tol:.0%} of the full-context loss, with a 95% bootstrap "
        "interval over targets. <i>Shuffled / replaced beyond n</i>: the full context is kept but its tokens farther "
        "than n back are permuted (does their order matter?) or replaced by text from elsewhere in the test split "
        "(does their identity matter?). Cost: every (target, n) pair is its own forward pass, "
        f"{int(fits['ablation_forward_tokens'].median()):,} forward tokens per run (median). "
        "<b>alpha, L_inf</b>: the per-position curve fitted as L(t) = L_inf + A t^-alpha (t = tokens of context; "
        "log space, Huber delta 1e-3 summed, L-BFGS-B from 27 starts; 95% intervals from refits on sequences "
        "resampled). A fit is flagged <i>wrong form</i> when its residuals are more than "
        f"{WRONG_FORM_CHI2:g} times their noise variance (reduced chi^2), <i>not converged</i>, refused with "
        f"fewer than {MIN_FIT_POINTS} points; <i>flat</i> when no octave's gain is significant (then alpha and L_inf "
        "describe noise). <b>Last significant octave</b>: the farthest octave of positions "
        "[2^j, 2^(j+1)) whose mean loss is below the previous octave's with a 95% interval above zero.</p>")
    gaps = _read_optional(out / "gaps.csv")
    if not gaps.empty:
        parts.append(f"<h3>Gap to {html.escape(str(gaps['baseline'].iloc[0]))}, paired, by position</h3>"
                     + _table(gap_table(gaps)) +
                     "<p>Each architecture's test loss minus the baseline's on the same test sequences (nats per "
                     "token; positive: worse than the baseline), averaged over positions in each band, with 95% "
                     "paired bootstrap intervals over sequences; * marks an interval that excludes zero. "
                     "<i>growth</i>: the last band's gap minus the first's (positive: the architecture falls "
                     "further behind as context grows). Table: <code>gaps.csv</code>; another baseline: "
                     "<code>study.py analyze DIR --baseline ARCH</code>.</p>")
    if not context.empty:
        png = figure_png(context_figure(context, fits))
        io.atomic_write(out / "context.png", lambda p: p.write_bytes(png))
        parts.append(img_tag(png, "loss against available context"))
    if not ext.empty:
        png = figure_png(extrapolation_figure(ext))
        io.atomic_write(out / "extrapolation.png", lambda p: p.write_bytes(png))
        parts.append(img_tag(png, "length extrapolation") + "<p>Loss at each position of test sequences up to "
                     f"{int(ext['factor'].max())}x the training context, for the models that accept them "
                     "(recurrent and convolutional ones; a transformer only with rotary positions); positions past the "
                     "dotted line were never trained on. Averaged in quarter-octave bins; bands: 95% bootstrap "
                     "intervals over sequences.</p>")
    return [(title, "\n".join(parts))]
