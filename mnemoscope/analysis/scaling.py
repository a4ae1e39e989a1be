"""Scaling laws from a finished study: L(N), L(C), the compute frontier, N_opt(C), alpha(N).

Every law is L(x) = L_inf + (x0/x)^alpha (Henighan et al. 2020), fitted with the one fitter of
:mod:`mnemoscope.measure.statistics` (log space, Huber delta 1e-3 summed, L-BFGS from a grid of starts,
convergence checked), with 95% intervals by bootstrap over **sequences**:

* L(N): x = achieved non-embedding parameters, y = a run's mean test loss (mean over seeds).
  A replicate draws one set of test-sequence indices and applies it to every run (all runs of a
  task score the same test windows, so sequence difficulty is shared; drawing them independently
  per run would pretend it is not) and, with several seeds, also resamples the seeds of each size.
* L(C): x = training FLOPs (``flops_per_token`` x tokens seen, :mod:`mnemoscope.measure.flops`), y = the
  compute-efficient frontier: the lowest validation loss any run of the architecture reached
  with at most that compute, on a grid of 4 points per decade. The validation curves come from
  :class:`mnemoscope.training.callbacks.LogSpacedValidation`, which scores the same 64 validation windows at log-spaced steps.
* N_opt(C): the size whose curve is lowest at compute C; a power law C^b is fitted only where
  the optimum moves through at least 3 sizes away from the edges of the sweep.
* alpha(N): the per-position power law of each run (``statistics.bootstrap_fit``) against its size.

``scaling_tables(study_dir)`` writes ``scaling_fits.csv``, ``scaling_points.csv``,
``curves.parquet`` and ``alpha_vs_params.csv`` into the study folder; the report section draws them.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from ..measure.bootstrap import LEVEL, percentile_interval
from ..measure.statistics import bootstrap_fit, fit_power_law
from ..settings import ALPHA_BOOT
from ..storage.study_folder import RunFolder, StudyFolder

FRONTIER_PER_DECADE = 4  # frontier grid points per decade of compute
FRONTIER_SKIP = 0.05  # the first 5% of each run's steps (warm-up) is left out of the frontier
N_BOOT = 200

#: published exponents to set ours beside (nats/token laws; x0 in their units)
PUBLISHED = pd.DataFrame([
    ("Kaplan et al. 2020", "language (WebText2), Transformer", "L(N)", 0.076, "N_c = 8.8e13 params"),
    ("Kaplan et al. 2020", "language (WebText2), Transformer", "L(C_min)", 0.050, "C_c = 3.1e8 PF-days"),
    ("Kaplan et al. 2020", "language (WebText2), Transformer", "N_opt ~ C^b", 0.73, ""),
    ("Henighan et al. 2020", "image 8x8", "L(N)", 0.24, "L_inf = 3.12, N0 = 8.0e1"),
    ("Henighan et al. 2020", "image 32x32", "L(N)", 0.13, "L_inf = 2.20, N0 = 6.3e1"),
    ("Henighan et al. 2020", "video", "L(N)", 0.24, "L_inf = 1.01, N0 = 3.7e4"),
    ("Henighan et al. 2020", "mathematics", "L(N)", 0.16, "L_inf = 0.28, N0 = 1.1e4"),
    ("Henighan et al. 2020", "every domain", "N_opt ~ C^b", 0.7, ""),
], columns=["source", "data", "law", "exponent", "constants"])


# -- fitting L(x) = L_inf + (x0/x)^alpha with statistics.fit_power_law --------------------------------------
def fit_law(x, y, stderr=None, start=None, min_points: int | None = None) -> dict:
    """Fit L(x) = L_inf + (x0/x)^alpha. x is rescaled by its minimum first, so the fitter's grid of
    starts (made for x from 1) applies; returns L_inf, x0, alpha, the fit diagnostics, per-point
    log residuals and ``theta`` (the fitter's parameters, a warm start for bootstrap refits)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    order = np.argsort(x)
    x, y = x[order], y[order]
    se = None if stderr is None else np.asarray(stderr, np.float64)[order]
    x_ref = float(x.min()) if len(x) else 1.0
    kwargs = {} if min_points is None else {"min_points": min_points}
    # L-BFGS-B calls BLAS on 3x3 problems; a multi-threaded BLAS spins its threads on every call
    # and made each fit ~20x slower on a busy 2-core machine
    with threadpool_limits(1):
        f = fit_power_law(x / x_ref, y, se, start=start, **kwargs)
    ok = math.isfinite(f.alpha) and f.alpha > 0 and f.A > 0
    x0 = x_ref * f.A ** (1 / f.alpha) if ok else math.nan
    resid = np.log(f.predict(x / x_ref) / y) if ok else np.full_like(y, np.nan)
    return {"L_inf": f.L_inf, "x0": x0, "alpha": f.alpha, "n_points": f.n_points, "converged": f.converged,
            "status": f.status, "rms_log_residual": f.rms_log_residual, "chi2_reduced": f.chi2_reduced,
            "residuals": resid, "theta": np.array([math.log(f.L_inf), math.log(f.A), f.alpha]) if ok else None,
            "x_ref": x_ref}


def law(x, L_inf, x0, alpha):
    """L_inf + (x0/x)^alpha."""
    return L_inf + (x0 / np.asarray(x, np.float64)) ** alpha


def bootstrap_law(x, point: dict, replicate, n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> dict:
    """Percentile intervals of (L_inf, x0, alpha): ``replicate(rng)`` returns one resampled y (same
    order as x); each is refitted from the point estimate (warm start)."""
    out = {f"{k}_{s}": math.nan for k in ("L_inf", "x0", "alpha") for s in ("low", "high")}
    out["boot_converged"] = math.nan
    if point["theta"] is None or point["status"] == "too few points" or n_boot <= 0:
        return out
    rng = np.random.default_rng(seed)
    draws, ys, conv = [], [], 0
    for _ in range(n_boot):
        ys.append(replicate(rng))
        f = fit_law(x, ys[-1], start=point["theta"])
        conv += bool(f["converged"])
        draws.append((f["L_inf"], f["x0"], f["alpha"]))
    draws = np.array(draws, np.float64)
    lows, highs = percentile_interval(draws, level)  # NaN for a parameter no refit found
    for j, k in enumerate(("L_inf", "x0", "alpha")):
        out[f"{k}_low"], out[f"{k}_high"] = float(lows[j]), float(highs[j])
    out["boot_converged"] = conv / n_boot
    out["_draws"], out["_ys"] = draws, np.array(ys)  # parameters and resampled y of every replicate
    return out


# -- L(N) ---------------------------------------------------------------------------------------------------
def _sequence_table(folder: RunFolder) -> tuple[np.ndarray, np.ndarray]:
    """Per test sequence: summed loss (nats) and counted targets, from a run's losses.npz."""
    losses, mask = (a.astype(np.float64) for a in folder.losses())
    return (losses * mask).sum(1), mask.sum(1)


def size_law(study_dir: Path, runs: pd.DataFrame, n_boot: int = N_BOOT, seed: int = 0):
    """Fit L(N) per (arch, task). Returns (fits, points): one row per law, one row per size."""
    fits, points = [], []
    ok = runs[runs["status"] == "ok"] if "status" in runs else runs
    for (arch, task), group in ok.groupby(["arch", "task"], sort=False):
        sizes = []  # per size: [(loss_sum, targets) per seed], achieved params
        for params, g in group.groupby("params"):
            folders = [StudyFolder(study_dir).run(r) for r in g["run_id"]]
            tables = [_sequence_table(f) for f in folders if f.has_losses]
            if tables:
                sizes.append((float(g["achieved_params"].mean()), tables))
        if not sizes:
            continue
        x = np.array([s[0] for s in sizes])
        n_seq = {len(t[0]) for _, tables in sizes for t in tables}
        paired = len(n_seq) == 1  # same test windows in every run: resample one index set for all

        def mean_loss(tables, idx=None, seeds=None):
            seeds = range(len(tables)) if seeds is None else seeds
            vals = []
            for s in seeds:
                sums, counts = tables[s]
                i = slice(None) if idx is None else (idx if paired else idx[s])
                vals.append(sums[i].sum() / max(counts[i].sum(), 1))
            return float(np.mean(vals))

        y = np.array([mean_loss(t) for _, t in sizes])
        se = np.array([np.sqrt(np.mean([np.var(s / np.maximum(c, 1), ddof=1) / len(s) for s, c in t]) / len(t))
                       for _, t in sizes])

        def replicate(rng):
            out = []
            N = next(iter(n_seq)) if paired else None
            idx = rng.integers(0, N, N) if paired else None
            for _, tables in sizes:
                seeds = rng.integers(0, len(tables), len(tables)) if len(tables) > 1 else [0]
                if not paired:
                    idx = {s: rng.integers(0, len(tables[s][0]), len(tables[s][0])) for s in set(seeds)}
                out.append(mean_loss(tables, idx, seeds))
            return np.array(out)

        point = fit_law(x, y, se)
        boot = bootstrap_law(x, point, replicate, n_boot, seed)
        draws, y_boot = boot.pop("_draws", None), boot.pop("_ys", None)
        lo, hi = (percentile_interval(y_boot) if y_boot is not None and len(y_boot)
                  else (np.full(len(y), np.nan),) * 2)
        rank = np.argsort(np.argsort(x))  # fit_law's residuals are in order of increasing x
        for i, (xi, tables) in enumerate(sizes):
            points.append({"arch": arch, "task": task, "law": "L(N)", "x": xi, "loss": y[i], "loss_low": lo[i],
                           "loss_high": hi[i], "n_seeds": len(tables), "log_residual": point["residuals"][rank[i]]})
        fits.append(_fit_row(arch, task, "L(N)", point, boot, draws, paired=paired))
    return pd.DataFrame(fits), pd.DataFrame(points)


def _fit_row(arch, task, name, point, boot, draws, **extra) -> dict:
    row = {"arch": arch, "task": task, "law": name, "n_points": point["n_points"], "status": point["status"],
           "converged": point["converged"], "L_inf": point["L_inf"], "L_inf_low": boot["L_inf_low"],
           "L_inf_high": boot["L_inf_high"], "x0": point["x0"], "x0_low": boot["x0_low"], "x0_high": boot["x0_high"],
           "alpha": point["alpha"], "alpha_low": boot["alpha_low"], "alpha_high": boot["alpha_high"],
           "boot_converged": boot["boot_converged"], "rms_log_residual": point["rms_log_residual"],
           "max_abs_log_residual": float(np.nanmax(np.abs(point["residuals"]))) if len(point["residuals"]) else math.nan,
           "chi2_reduced": point["chi2_reduced"], **extra}
    # the band of fitted curves, for the plot: 2.5/97.5 percentiles of a few bootstrap curves' parameters
    row["boot_params"] = json.dumps(draws[np.isfinite(draws).all(1)][:100].round(6).tolist()) if draws is not None else "[]"
    return row


# -- L(C), the frontier and N_opt(C) ---------------------------------------------------------------------------
def load_curves(study_dir: Path, runs: pd.DataFrame) -> pd.DataFrame:
    """Tidy validation curves: one row per (run, log-spaced point), with compute in FLOPs."""
    rows = []
    for r in runs.itertuples():
        fpt = getattr(r, "flops_per_token", math.nan)
        z = StudyFolder(study_dir).run(r.run_id).val_curve() if fpt is not None and np.isfinite(fpt) else None
        if z is None:
            continue
        steps, tokens, loss_sum, targets = z["steps"], z["tokens"], z["loss_sum"], z["targets"]
        for i in range(len(steps)):
            rows.append({"run_id": r.run_id, "arch": r.arch, "task": r.task, "params": r.params,
                         "achieved_params": r.achieved_params, "seed": r.seed, "step": int(steps[i]),
                         "last_step": int(steps[-1]), "tokens": int(tokens[i]), "compute": float(fpt) * float(tokens[i]),
                         "val_loss": float(loss_sum[i].sum() / max(targets.sum(), 1))})
    return pd.DataFrame(rows)


def _curve_arrays(study_dir: Path, curves: pd.DataFrame):
    """Per run: (compute (P,), loss_sum (P, N), targets (N,), params), the warm-up points dropped."""
    out = []
    for run_id, g in curves.groupby("run_id", sort=False):
        z = StudyFolder(study_dir).run(run_id).val_curve()
        loss_sum, targets = z["loss_sum"].astype(np.float64), z["targets"].astype(np.float64)
        keep = (g["step"] >= FRONTIER_SKIP * g["last_step"]).to_numpy()
        out.append((g["compute"].to_numpy()[keep], loss_sum[keep], targets, float(g["achieved_params"].iloc[0])))
    return out


def frontier(arrays, idx=None, per_decade: int = FRONTIER_PER_DECADE):
    """The compute-efficient frontier on a log grid: at each C, the lowest loss any run reached with
    compute <= C (its curve interpolated in log C), and the size of that run. ``idx`` resamples
    validation sequences (the same indices for every run). Returns (grid, loss, params)."""
    arrays = [a for a in arrays if len(a[0]) >= 2]
    if not arrays:
        return np.array([]), np.array([]), np.array([])
    lo = min(a[0].min() for a in arrays)
    hi = max(a[0].max() for a in arrays)
    grid = np.geomspace(lo, hi, max(2, int(math.ceil(per_decade * math.log10(hi / lo))) + 1))
    best = np.full(len(grid), np.inf)
    who = np.full(len(grid), np.nan)
    for c, sums, targets, params in arrays:
        i = slice(None) if idx is None else idx
        loss = sums[:, i].sum(1) / max(targets[i].sum(), 1)  # (P,)
        loss = np.minimum.accumulate(loss)  # best reached so far: compute spent cannot be taken back
        inside = (grid >= c.min() * (1 - 1e-9)) & (grid <= c.max() * (1 + 1e-9))
        at = np.interp(np.log(grid[inside]), np.log(c), loss)
        # past its last point a run still holds its final loss (it reached it with less compute)
        after = grid > c.max() * (1 + 1e-9)
        cand = np.full(len(grid), np.inf)
        cand[inside], cand[after] = at, loss[-1]
        better = cand < best
        best[better], who[better] = cand[better], params
    return grid, best, who


def compute_law(study_dir: Path, curves: pd.DataFrame, n_boot: int = N_BOOT, seed: int = 0):
    """Fit L(C) on the frontier per (arch, task); N_opt(C) where the optimum moves through >= 3 sizes.
    Returns (fits, frontier rows, n_opt fits)."""
    fits, rows, nopt = [], [], []
    if curves.empty:
        return pd.DataFrame(), pd.DataFrame(), pd.DataFrame()
    for (arch, task), group in curves.groupby(["arch", "task"], sort=False):
        arrays = _curve_arrays(study_dir, group)
        grid, loss, who = frontier(arrays)
        if len(grid) == 0:
            continue
        n_seq = {a[1].shape[1] for a in arrays}
        point = fit_law(grid, loss)
        N = next(iter(n_seq))

        def replicate(rng):
            return frontier(arrays, rng.integers(0, N, N))[1]

        # one index set for every run needs every run to score the same validation windows
        boot = bootstrap_law(grid, point, replicate, n_boot if len(n_seq) == 1 else 0, seed)
        draws, _ = boot.pop("_draws", None), boot.pop("_ys", None)
        fits.append(_fit_row(arch, task, "L(C)", point, boot, draws, paired=True,
                             note="fitted on the frontier grid: points are not independent"))
        sizes = sorted({a[3] for a in arrays})
        for c, l, w in zip(grid, loss, who):
            rows.append({"arch": arch, "task": task, "compute": c, "frontier_loss": l, "n_opt": w})
        # N_opt(C): only where the optimum is an interior size (an edge size may be censored)
        interior = np.isin(who, sizes[1:-1])
        distinct = len(set(who[interior]))
        if distinct >= 3:
            b, a = np.polyfit(np.log(grid[interior]), np.log(who[interior]), 1)
            nopt.append({"arch": arch, "task": task, "exponent_b": b, "n_points": int(interior.sum()),
                         "distinct_sizes": distinct, "note": "least squares of log N_opt on log C"})
        else:
            nopt.append({"arch": arch, "task": task, "exponent_b": math.nan, "n_points": int(interior.sum()),
                         "distinct_sizes": distinct, "note": "the optimum moves through fewer than 3 interior "
                                                             "sizes: not enough to fit N_opt(C)"})
    return pd.DataFrame(fits), pd.DataFrame(rows), pd.DataFrame(nopt)


# -- alpha of the per-position fit against N -----------------------------------------------------------------
def alpha_vs_params(study_dir: Path, runs: pd.DataFrame, n_boot: int = ALPHA_BOOT) -> pd.DataFrame:
    """alpha of each run's per-position power law (analysis.bootstrap_fit), with its interval."""
    rows = []
    for r in runs.itertuples():
        folder = StudyFolder(study_dir).run(r.run_id)
        if getattr(r, "status", "ok") != "ok" or not folder.has_losses:
            continue
        fit = bootstrap_fit(*folder.losses(), n_boot=n_boot, seed=int(r.seed))
        rows.append({"run_id": r.run_id, "arch": r.arch, "task": r.task, "params": r.params,
                     "achieved_params": r.achieved_params, "seed": r.seed, **{k: fit.get(k) for k in (
                         "alpha", "alpha_low", "alpha_high", "L_inf", "A", "fit_status", "n_points")}})
    return pd.DataFrame(rows)


# -- everything, written beside the study's other tables ----------------------------------------------------
def scaling_tables(study_dir: Path, runs: pd.DataFrame | None = None, n_boot: int = N_BOOT) -> dict[str, pd.DataFrame]:
    """Compute every scaling table of a study from its stored run folders and write them as files."""
    study_dir, folder = Path(study_dir), StudyFolder(study_dir)
    if runs is None:
        runs = folder.runs()
    with threadpool_limits(1):  # see fit_law
        size_fits, size_points = size_law(study_dir, runs, n_boot)
        curves = load_curves(study_dir, runs[runs["status"] == "ok"] if "status" in runs else runs)
        c_fits, front, nopt = compute_law(study_dir, curves, n_boot)
        alphas = alpha_vs_params(study_dir, runs, n_boot=min(n_boot, ALPHA_BOOT))
    fits = pd.concat([f for f in (size_fits, c_fits) if not f.empty], ignore_index=True) if (
        not size_fits.empty or not c_fits.empty) else pd.DataFrame()
    tables = {"fits": fits, "points": size_points, "curves": curves, "frontier": front, "n_opt": nopt,
              "alpha": alphas}
    folder.write_table("scaling_fits.csv", fits)
    folder.write_table("scaling_points.csv", size_points)
    folder.write_table("alpha_vs_params.csv", alphas)
    if not curves.empty:
        folder.write_table("curves.parquet", curves)
    return tables
