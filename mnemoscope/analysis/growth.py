"""How context use grows with training: the effective context at each kept step, and a law for it.

For every finished run that kept its history (:mod:`mnemoscope.measure.history`), the truncation ablation
of :mod:`mnemoscope.analysis.analyze` (variant ``truncate``, the same targets as the final analysis) is
run on the weights of each kept step. Then, per run, the law ``C(D) = a * D**g`` of effective
context C (tokens) against training tokens D is fitted in log-log space over the later half of the
kept steps (given at least 6: the earliest steps, where a model has learnt little more than which
tokens are frequent and uses a few tokens of context, follow another form), with a bootstrap interval
over the ablation's targets (a replicate draws the same targets at every step, so the replicate's
effective contexts are those of one resampled test set); and for the study's first architecture
against each other one of the same task, size and seed, the training tokens at which the first's
effective context would be 4 times the other's (the same replicates, paired: the runs share their
targets).

Written into the study folder: ``growth.parquet`` (per run and kept step: tokens, loss, the
in-context learning score and the effective context in tokens and bytes, each with its interval),
``growth_fits.csv`` (the law per run) and ``growth_crossings.csv`` (the 4x point per pair); each
run's part is kept in ``runs/<id>/analysis/growth*`` and reused by a later ``analyze``.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..errors import UserError
from ..measure.ablation import ablation_table, context_bytes, truncation_ablation
from ..measure.bootstrap import LEVEL, bootstrap_indices, percentile_interval
from ..measure.statistics import context_resolution, full_context_check
from ..settings import N_BOOT, AnalysisSettings
from ..storage.study_folder import RunFolder, StudyFolder, model_from_checkpoint
from ..study.runner import Study

RATIO = 4  # the crossing asked of the law: first architecture's effective context RATIO times the other's
MIN_POINTS = 3  # kept steps a law needs
BAD_FIT_RMS = 0.35  # rms residual of log C (a factor of 1.4) above which a law is flagged "bad fit"


def _first_within(mean: np.ndarray, contexts: np.ndarray, tolerance: float) -> np.ndarray:
    """:func:`mnemoscope.measure.statistics.effective_context`'s rule on means (..., K): the smallest
    context from which on every mean is within ``tolerance`` of the last (full-context) one."""
    within = mean <= mean[..., -1:] * (1 + tolerance)
    tail = np.flip(np.logical_and.accumulate(np.flip(within, -1), -1), -1)
    return contexts[np.argmax(tail, axis=-1)]


def _run_model(run_folder: Path, device: str):
    """The run's model at its end (``model.pt``); the kept steps' weights replace it in turn."""
    meta = RunFolder(run_folder).checkpoint("cpu")
    return model_from_checkpoint(meta, device), meta


def ablate_steps(run_folder: Path, task, settings: AnalysisSettings, seed: int, device=None):
    """The truncation ablation at each kept step whose weights are kept (the last step: ``model.pt``).
    Returns (table: one row per step, raw: {step: (contexts (K,), losses (M, K))}); the columns ruled
    from those losses are :func:`_derived`'s, added by :func:`run_growth`."""
    device = str(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    steps = RunFolder(run_folder).steps()
    if not steps:
        return pd.DataFrame(), {}
    model, meta = _run_model(run_folder, device)
    final = {k: v.clone() for k, v in model.state_dict().items()}  # loading a step's weights overwrites the model's own
    T = int(meta["context_length"])
    split = task.splits()["test"]
    token_bytes = task.token_bytes() if hasattr(task, "token_bytes") else None
    nbytes = context_bytes(split, T, settings.n_targets, range(1, T + 1), token_bytes)
    rows, raw = [], {}
    for i, s in enumerate(steps):
        last = i == len(steps) - 1
        if s["weights"] is None and not last:
            continue
        model.load_state_dict(final if last else RunFolder.step_weights(s["weights"], device))
        ab = truncation_ablation(model, split, T, settings.n_targets, variants=("truncate",), seed=seed,
                                 device=device, tolerance=settings.tolerance)
        table = ablation_table(ab, settings.tolerance, settings.n_boot, seed)
        first = table.iloc[0]
        contexts, losses = ab.scored("truncate")
        raw[s["step"]] = (contexts, losses)
        row = {"step": s["step"], "tokens": s["tokens"], "full_context_loss": float(losses[:, -1].mean())}
        for suffix in ("", "_low", "_high"):
            n = int(first["effective_context" + suffix])
            row["effective_context" + suffix] = n
            row["effective_context_bytes" + suffix] = nbytes.get(n, math.nan) if nbytes else math.nan
        rows.append(row)
    model.load_state_dict(final)
    return pd.DataFrame(rows), raw


def _settings_key(settings: AnalysisSettings) -> dict:
    return {"n_targets": settings.n_targets, "tolerance": settings.tolerance, "n_boot": settings.n_boot}


def _derived(table: pd.DataFrame, raw: dict, tolerance: float) -> pd.DataFrame:
    """The columns made from a run's losses by today's rules, for a step just measured and for one
    stored by an older release alike: whether a truncated context beats the full one
    (:func:`full_context_check`) and how finely the lengths tried resolve the effective context, as
    the final analysis says it (:func:`context_resolution`, read by ``format_effective_context``)."""
    rows = []
    for r in table.itertuples():
        contexts, losses = raw[int(r.step)]
        tried = pd.DataFrame({"variant": "truncate", "context": np.asarray(contexts),
                              "effective_context": r.effective_context, "effective_context_low": r.effective_context_low})
        rows.append({**full_context_check(contexts, np.asarray(losses, np.float64).mean(0), tolerance),
                     **context_resolution(tried)})
    derived = pd.DataFrame(rows, index=table.index)
    return table.assign(**{c: derived[c] for c in derived})


def run_growth(run_folder: Path, task, settings: AnalysisSettings, seed: int, device=None, recompute: bool = False):
    """:func:`ablate_steps` of one run, stored in ``analysis/growth.parquet`` and ``growth.npz`` and
    reused while the settings and the kept steps are the same; a run whose kept steps' weights are
    gone (a committed study) reuses what is stored whatever its age: it cannot be made again."""
    folder = RunFolder(run_folder)
    kept = folder.history_dir.is_dir()  # a committed study keeps its analysis, not its kept steps' files
    steps = [s["step"] for s in folder.steps()]
    if not recompute or not kept:
        try:
            stored = folder.analysis_json("growth")
            same = {k: stored.get(k) for k in _settings_key(settings)} == _settings_key(settings)
            if same and (stored.get("steps") == steps or not kept):
                table = folder.analysis_table("growth")
                z = folder.analysis_arrays("growth")
                raw = {int(s): (z[f"contexts_{s}"], z[f"losses_{s}"]) for s in table["step"]}
                return _derived(table, raw, settings.tolerance), raw
        except (OSError, ValueError, KeyError):
            pass
    if not folder.has_model:
        raise UserError(f"{run_folder} keeps no model.pt: the effective context through training needs the weights")
    table, raw = ablate_steps(run_folder, task, settings, seed, device)
    table = _derived(table, raw, settings.tolerance)
    arrays = {f"{k}_{s}": v for s, (c, l) in raw.items() for k, v in (("contexts", c), ("losses", l))}
    folder.write_analysis("growth", {**_settings_key(settings), "steps": steps}, {"growth": table}, arrays)
    return table, raw


# -- the law -------------------------------------------------------------------------------------
def _replicates(raw: dict, steps: list[int], idx: np.ndarray, tolerance: float) -> np.ndarray:
    """(B, S) effective contexts of bootstrap replicates ``idx`` (B, M) of the targets, at each step."""
    out = []
    for s in steps:
        contexts, losses = raw[s]
        out.append(_first_within(losses.astype(np.float64)[idx].mean(1), contexts, tolerance))
    return np.stack(out, axis=1)


def _loglog(D: np.ndarray, C: np.ndarray) -> tuple[float, float]:
    """(log a, g) of log C = log a + g log D, least squares (C of 0 cannot occur: contexts are >= 1)."""
    g, log_a = np.polyfit(np.log(D), np.log(C), 1)
    return float(log_a), float(g)


def fit_growth(table: pd.DataFrame, raw: dict, context_length: int, tolerance: float, n_boot: int = N_BOOT,
               seed: int = 0, level: float = LEVEL, idx: np.ndarray | None = None) -> tuple[dict, np.ndarray | None]:
    """The law C(D) = a D^g of one run's kept steps: a, g with the interval of g, its rms log
    residual, and a status (ok, too few points, flat, bad fit; ``capped`` says that some step's
    effective context is the whole context, where the law cannot go on). Returns the row and the
    (B, 2) replicates (log a, g) for :func:`crossing` (None when there is no law)."""
    t = table[~table["full_context_worse"]].sort_values("tokens") if not table.empty else table
    if len(t) >= 2 * MIN_POINTS:  # the later half: the first steps (unigram statistics, a few tokens) follow another form
        t = t.iloc[len(t) // 2:]
    steps = [int(s) for s in t["step"]] if not t.empty else []
    D = t["tokens"].to_numpy(np.float64) if steps else np.zeros(0)
    C = t["effective_context"].to_numpy(np.float64) if steps else np.zeros(0)
    row = {"n_points": len(steps), "tokens_min": float(D.min()) if steps else math.nan,
           "tokens_max": float(D.max()) if steps else math.nan, "capped": bool((C >= context_length).any())}
    nan = {"a": math.nan, "g": math.nan, "g_low": math.nan, "g_high": math.nan, "rms_log_residual": math.nan}
    if len(set(D)) < MIN_POINTS:
        return {**row, **nan, "fit_status": "too few points"}, None
    log_a, g = _loglog(D, C)
    rms = float(np.sqrt(np.mean((np.log(C) - (log_a + g * np.log(D))) ** 2)))
    M = len(next(iter(raw.values()))[1])
    if idx is None:
        idx = bootstrap_indices(M, n_boot, seed)
    reps = _replicates(raw, steps, idx, tolerance)  # (B, S)
    boots = np.array([_loglog(D, r) for r in reps.astype(np.float64)])  # (B, 2)
    lo, hi = percentile_interval(boots[:, 1], level, axis=None)
    status = "ok"
    if len(set(C)) == 1 or (lo <= 0 <= hi and abs(g) < 0.05):
        status = "flat"
    elif rms > BAD_FIT_RMS:
        status = "bad fit"
    return {**row, "a": float(np.exp(log_a)), "g": g, "g_low": float(lo), "g_high": float(hi),
            "rms_log_residual": rms, "fit_status": status}, boots


FIT_COLUMNS = ["run_id", "arch", "task", "params", "seed", "n_points", "tokens_min", "tokens_max", "capped", "a", "g",
               "g_low", "g_high", "rms_log_residual", "fit_status"]  # growth_fits.csv: a run and its law (fit_growth)
CROSSING_COLUMNS = ["task", "params", "seed", "arch", "other", "ratio", "tokens", "tokens_low", "tokens_high", "defined",
                    "extrapolation", "tokens_max"]  # growth_crossings.csv: a pair and its crossing (crossing)


def crossing(first: dict, first_boots: np.ndarray, other: dict, other_boots: np.ndarray, ratio: float = RATIO,
             level: float = LEVEL) -> dict:
    """Training tokens D* at which ``first``'s law gives ``ratio`` times ``other``'s effective context:
    a1 D^g1 = ratio a2 D^g2, D* = (ratio a2 / a1) ** (1 / (g1 - g2)), only where g1 > g2 (else the
    first never gets there, or is there already and falls back). The interval: the replicates in
    which the crossing exists (paired: both laws' replicates drew the same targets); ``defined`` the
    share of them."""
    def d_star(la1, g1, la2, g2):
        la1, g1, la2, g2 = (np.asarray(v, np.float64) for v in (la1, g1, la2, g2))
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return np.where(g1 > g2, np.exp((math.log(ratio) + la2 - la1) / (g1 - g2)), np.nan)

    point = float(d_star(math.log(first["a"]), first["g"], math.log(other["a"]), other["g"]))
    reps = d_star(first_boots[:, 0], first_boots[:, 1], other_boots[:, 0], other_boots[:, 1])
    ok = np.isfinite(reps)
    lo, hi = percentile_interval(reps[ok], level, axis=None) if ok.sum() >= 10 else (math.nan, math.nan)
    tokens_max = max(first["tokens_max"], other["tokens_max"])
    return {"ratio": ratio, "tokens": point, "tokens_low": float(lo), "tokens_high": float(hi),
            "defined": float(ok.mean()), "extrapolation": point / tokens_max if point == point else math.nan,
            "tokens_max": tokens_max}


def analyze_growth(study, settings: AnalysisSettings | None = None, log=print, device=None,
                   recompute: bool = False) -> dict[str, pd.DataFrame]:
    """The effective context through training of every finished, non-diverged run that kept its
    history; its law per run; the 4x crossing of the study's first architecture against each other
    one. Writes ``growth.parquet``, ``growth_fits.csv`` and ``growth_crossings.csv`` (none of them
    when no run kept a history)."""
    if not isinstance(study, Study):
        study = Study.from_folder(study)
    settings = settings or AnalysisSettings()
    runs = study.folder.table(StudyFolder.RUNS_TABLE)
    steps_all = study.folder.table("history_steps.parquet")
    if runs.empty or steps_all.empty:
        return {}
    tables, fits, laws = [], [], {}
    for r in runs.to_dict("records"):
        if r.get("status", "ok") != "ok":
            continue
        folder = study.folder.run(r["run_id"])
        mine = steps_all[steps_all["run_id"] == r["run_id"]]
        if mine.empty or not (folder.history_dir.is_dir() or folder.has_analysis("growth")):
            continue
        try:
            table, raw = run_growth(folder.path, study.task(r["task"]), settings, int(r["seed"]), device, recompute)
        except UserError as exc:
            log(f"analysis: {r['run_id']}: no effective context through training: {exc}")
            table, raw = pd.DataFrame(), {}
        merged = mine.merge(table.drop(columns=["tokens"]), on="step", how="left") if not table.empty else mine
        tables.append(merged)
        label = {k: r[k] for k in ("run_id", "arch", "task", "params", "seed")}
        if table.empty:
            continue
        M = len(next(iter(raw.values()))[1])
        idx = bootstrap_indices(M, settings.n_boot, int(r["seed"]))
        fit, boots = fit_growth(table, raw, int(r["context"]), settings.tolerance, settings.n_boot, idx=idx)
        fits.append({**label, **fit})
        if boots is not None and fit["fit_status"] in ("ok", "flat"):
            laws[(r["task"], r["params"], r["seed"], r["arch"])] = (fit, boots)
        log(f"analysis: {r['run_id']}: effective context through training "
            f"{', '.join(str(int(c)) for c in table['effective_context'])} tokens at {len(table)} kept steps; "
            f"law C ~ D^{fit['g']:.2f} ({fit['fit_status']})")
    crossings = []
    first_arch = study.config.archs[0]
    for (task, params, seed, arch), (fit, boots) in laws.items():
        base = laws.get((task, params, seed, first_arch))
        if arch == first_arch or base is None:
            continue
        crossings.append({"task": task, "params": params, "seed": seed, "arch": first_arch, "other": arch,
                          **crossing(base[0], base[1], fit, boots)})
    growth = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    # the header even without a row: pd.read_csv of an empty table reads its columns, not an error
    fits_df, cross_df = pd.DataFrame(fits, columns=FIT_COLUMNS), pd.DataFrame(crossings, columns=CROSSING_COLUMNS)
    study.folder.write_table("growth.parquet", growth)
    study.folder.write_table("growth_fits.csv", fits_df)
    study.folder.write_table("growth_crossings.csv", cross_df)
    return {"growth": growth, "fits": fits_df, "crossings": cross_df}
