"""How much history does each architecture use? Measurements of a finished study's models.

* the truncation ablation (Khandelwal et al. 2018, :mod:`mnemoscope.measure.ablation`): the same target
  tokens scored with exactly n tokens of context; each variant's effective context.
* ``extrapolation``: per-position loss on sequences 2x and 4x the training context, for the
  models that accept them (``extrapolates``).
* ``paired_gaps``: every architecture against a baseline on the same test sequences.

``analyze(study)`` runs them, with the per-position fits and octave gains of
:mod:`mnemoscope.measure.statistics`, on every finished run and writes, in the study folder,
``fits.csv`` (one row per run), ``context.parquet`` (ablation rows), ``octaves.parquet``,
``extrapolation.parquet`` and ``gaps.csv`` (``study.py analyze DIR``); the report's
:mod:`mnemoscope.report.context_use` section draws them.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

# ablation_targets, Ablation: read through this module by callers of the ablation before its split
from ..contract.task import Task, TokenSplit
from ..contract.windows import n_windows
from ..errors import UserError
from ..measure.ablation import (VARIANTS, Ablation, ablation_fields, ablation_table, ablation_targets,  # noqa: F401
                                context_bytes, truncation_ablation)
from ..measure.bootstrap import bootstrap_indices
from ..measure.evaluate import bootstrap_ci, per_position_losses
from ..measure.statistics import (context_resolution, curve_shape, format_effective_context, loss_buckets, paired_gap,
                                  truncation_check)
from ..settings import ANALYSIS, BUCKET_BOOT, N_BOOT, AnalysisSettings
from ..storage.study_folder import RunFolder, StudyFolder
from ..study.runner import Study, name_runs

# windows per forward pass at the extrapolation's contexts (2-8x the trained length: half of
# settings.EVAL_BATCH), named once for extrapolation and long_context
EXTRAPOLATION_BATCH = 16


def paired_runs(study_dir: Path, runs: pd.DataFrame, baseline: str):
    """(row, losses, baseline's losses, mask) for every finished run other than the ``baseline``
    architecture's, paired with the baseline's run of the same task, size and seed, where both were
    scored on the same test sequences (read from ``runs/<id>/losses.npz``)."""
    if "status" in runs:
        runs = runs[runs["status"] == "ok"]
    for (task, params, seed), group in runs.groupby(["task", "params", "seed"], sort=False):
        base_run = group[group["arch"] == baseline]
        if base_run.empty:
            continue
        base, mask = StudyFolder(study_dir).run_losses(base_run["run_id"].iloc[0])
        for r in group.to_dict("records"):
            if r["arch"] == baseline:
                continue
            losses, m = StudyFolder(study_dir).run_losses(r["run_id"])
            if losses.shape != base.shape or not np.array_equal(m, mask):
                continue  # scored on other sequences (a changed eval setting): no pairing
            yield r, losses, base, mask


def paired_gaps(study_dir: Path, runs: pd.DataFrame, baseline: str, n_boot: int = N_BOOT) -> pd.DataFrame:
    """:func:`paired_gap` of every finished run against the ``baseline`` architecture's run of the
    same task, size and seed (:func:`paired_runs`)."""
    rows = []
    for r, losses, base, mask in paired_runs(study_dir, runs, baseline):
        g = paired_gap(losses, base, mask, n_boot, seed=int(r["seed"]))
        rows.append(g.assign(task=r["task"], params=r["params"], seed=r["seed"], arch=r["arch"], baseline=baseline))
    cols = ["task", "params", "seed", "arch", "baseline", "band", "gap", "gap_low", "gap_high", "significant"]
    return pd.concat(rows, ignore_index=True)[cols] if rows else pd.DataFrame(columns=cols)


# -- 4. length extrapolation ----------------------------------------------------------------------
def extrapolates(model: nn.Module) -> bool:
    """Whether the model accepts sequences longer than its training context (class or instance ``extrapolates``)."""
    return bool(getattr(model, "extrapolates", False))


def extrapolation(model: nn.Module, split: TokenSplit, context_length: int, factors=ANALYSIS.factors,
                  n_sequences: int = ANALYSIS.extrapolation_sequences, batch_size: int = EXTRAPOLATION_BATCH, seed: int = 0) -> pd.DataFrame:
    """Per-position loss on test windows ``factor`` x the training context (positions past T were
    never trained on). Empty for a model that does not extrapolate, or a task whose sequences have
    a fixed length. Columns: factor, length, position, loss, ci_low, ci_high, n_sequences."""
    return long_context(model, split, context_length, factors, n_sequences, batch_size, seed)[0]


def long_context(model: nn.Module, split: TokenSplit, context_length: int, factors=ANALYSIS.factors,
                 n_sequences: int = ANALYSIS.extrapolation_sequences, batch_size: int = EXTRAPOLATION_BATCH, seed: int = 0,
                 n_boot: int = BUCKET_BOOT) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`extrapolation`'s per-position table, and the same losses in **position buckets** of
    the training length T, [0, T), [T, 2T), ..., as long-context evaluations report them (Flash
    Linear Attention's ``evals/ppl.py`` buckets PG-19 by 2048-token blocks): the mean loss of each
    bucket with a bootstrap interval over sequences (columns factor, length, bucket_start,
    bucket_end, loss, ci_low, ci_high, n_sequences). With a task of ``windows=document`` every
    window lies inside one document, so a long window is one stretch of one book."""
    if not extrapolates(model) or split.starts is not None:
        return pd.DataFrame(), pd.DataFrame()
    tables, buckets = [], []
    rng = np.random.default_rng(seed)  # one stream: each factor draws the next n_boot resamples
    for f in factors:
        L = int(f * context_length)
        if n_windows(split, L) < 1:
            continue  # the test split holds no window this long
        losses, mask = per_position_losses(model, split, L, n_sequences, batch_size)
        mean, lo, hi, n = bootstrap_ci(losses, mask, n_boot=n_boot, seed=seed)
        tables.append(pd.DataFrame({"factor": f, "length": L, "position": np.arange(L), "loss": mean,
                                    "ci_low": lo, "ci_high": hi, "n_sequences": n.astype(np.int64)}))
        idx = bootstrap_indices(len(losses), n_boot, rng)
        buckets += [{"factor": f, "length": L, **b} for b in loss_buckets(losses, mask, context_length, idx)]
    return (pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()), pd.DataFrame(buckets)


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


def analyze_run(folder: Path, task, settings: AnalysisSettings, device=None) -> dict[str, pd.DataFrame | dict]:
    """Every measurement of one finished run folder: its fit row, ablation, octave and
    extrapolation tables (each row labelled with the run)."""
    folder = RunFolder(folder)
    losses, mask = folder.losses()
    row = folder.row()
    label = {k: row[k] for k in ("run_id", "arch", "task", "params", "seed")}
    T, seed = int(row["context"]), int(row["seed"])
    if task.context_length != T:
        raise UserError(f"run {row['run_id']} was trained with context {T} but the study's task gives "
                        f"{task.context_length}; was config.yaml edited?")
    octaves, shape = curve_shape(losses, mask, settings.n_boot, settings.fit_boot, seed)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, _ = folder.load_model(str(device))
    split = task.splits()["test"]
    t0 = time.time()
    ab = truncation_ablation(model, split, T, settings.n_targets, variants=settings.variants, seed=seed, device=device,
                             tolerance=settings.tolerance)
    token_bytes = task.token_bytes() if hasattr(task, "token_bytes") else None
    context, ablated = ablation_fields(ab, split, T, settings.n_targets, token_bytes, settings.tolerance,
                                       settings.n_boot, seed)
    ablation_seconds = time.time() - t0
    ext, buckets = long_context(model, split, T, settings.factors, settings.extrapolation_sequences, seed=seed)
    fit_row = {**label, "context": T, **{k: v for k, v in shape.items() if k in FIT_COLUMNS}, **ablated,
               "tolerance": settings.tolerance, "extrapolates": extrapolates(model),
               "ablation_seconds": round(ablation_seconds, 2)}
    if not ext.empty:
        m = mask.astype(np.float64)
        fit_row["loss_last_half"] = float((losses[:, T // 2:] * m[:, T // 2:]).sum() / max(m[:, T // 2:].sum(), 1))
        for f in settings.factors:
            part = ext[(ext["factor"] == f) & (ext["position"] >= T)]
            if not part.empty:
                fit_row[f"loss_beyond_{f}x"] = float(part["loss"].mean())
    tables = {"context": context, "octaves": octaves, "extrapolation": ext, "extrapolation_buckets": buckets}
    return {"fit": fit_row, **labelled(tables, label)}


def labelled(tables: dict[str, pd.DataFrame], label: dict) -> dict[str, pd.DataFrame]:
    """Each table's rows labelled with their run (``label``: run_id, arch, task, params, seed, as
    the first columns), in place; an empty table stays as it is."""
    for df in tables.values():
        if not df.empty:
            for i, (k, v) in enumerate(label.items()):
                df.insert(i, k, v)
    return tables


def _floor_excess(study, spec: str, folder: RunFolder, seed: int) -> dict:
    """The task's exact floor and the run's excess over it (``Task.floor_excess``), where the task
    knows its floor (the lag probe); nothing for the others, or when the task cannot be built now."""
    try:
        task = study.task(spec)
        if type(task).floor_excess is Task.floor_excess:
            return {}
        losses, mask = folder.losses()
        return task.floor_excess(losses, mask, seed=seed) or {}
    except (UserError, OSError, ValueError, KeyError):
        return {}


ANALYSIS_TABLES = ("context", "octaves", "extrapolation", "extrapolation_buckets")  # runs/<id>/analysis/NAME.parquet


def _as_json(settings: AnalysisSettings) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(settings)))


def _stored_settings(folder: RunFolder) -> dict:
    """The settings a run's stored analysis was made with, a setting added since read as its default
    (a new setting's default keeps what the analysis did before it): adding one does not cost every
    committed run, whose weights are not kept, its stored analysis."""
    return {**_as_json(AnalysisSettings()), **folder.analysis_json("fit")["settings"]}


def stored_settings(folder: RunFolder) -> AnalysisSettings:
    """:func:`_stored_settings` as the settings to analyse with (its lists as the fields' tuples):
    what reuses the run's stored analysis. Raises OSError, ValueError or KeyError where none is stored."""
    names = {f.name for f in dataclasses.fields(AnalysisSettings)}
    return AnalysisSettings(**{k: tuple(v) if isinstance(v, list) else v
                               for k, v in _stored_settings(folder).items() if k in names})


def _cached_run(folder: RunFolder, settings: AnalysisSettings):
    """A run's analysis stored by an earlier ``analyze`` with the same settings, or None."""
    try:
        stored = folder.analysis_json("fit")
        if _stored_settings(folder) != _as_json(settings):
            return None
        return {"fit": stored["fit"], **{name: folder.analysis_table(name) for name in ANALYSIS_TABLES}}
    except (OSError, ValueError, KeyError):
        return None


def _stored_with(folder: RunFolder, settings: AnalysisSettings) -> str:
    """Where a run's stored analysis was made with other settings than ``settings``: the options
    that would reuse it (``--variants truncate``, or ``name=value`` for a setting without a flag);
    '' where none is stored or it was made with these."""
    try:
        stored = _stored_settings(folder)
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    now = _as_json(settings)
    out = []
    for f in dataclasses.fields(settings):
        if stored.get(f.name) != now[f.name]:
            value = stored[f.name]
            shown = " ".join(map(str, value)) if isinstance(value, list) else str(value)
            out.append(f"{f.metadata['flag']} {shown}" if f.metadata.get("flag") else f"{f.name}={shown}")
    return ", ".join(out)


def _store_run(folder: RunFolder, settings: AnalysisSettings, result: dict) -> None:
    folder.write_analysis("fit", {"settings": dataclasses.asdict(settings), "fit": result["fit"]},
                          {name: result[name] for name in ANALYSIS_TABLES})


def analyze(study, settings: AnalysisSettings | None = None, log=print, device=None,
            recompute: bool = False, baseline: str | None = None) -> dict[str, pd.DataFrame]:
    """Analyse every finished, non-diverged run of a study from its stored models and tables, and
    write ``fits.csv``, ``context.parquet``, ``octaves.parquet``, ``extrapolation.parquet`` and
    ``extrapolation_buckets.parquet`` into the study folder, and ``gaps.csv``: every architecture against ``baseline`` (default: the
    study's first) on the same test sequences. ``study``: a :class:`mnemoscope.study.runner.Study`, or a
    study folder.

    Each run's results are also kept in ``runs/<id>/analysis/`` and reused by a later call with
    the same settings unless ``recompute``. A run whose analysis fails is logged and left out.
    """
    if not isinstance(study, Study):
        study = Study.from_folder(study)
    settings = settings or AnalysisSettings()
    runs, _ = study.collect()
    if runs.empty:
        raise UserError(f"{study.out} has no finished runs to analyse")
    fits, tables = [], {"context": [], "octaves": [], "extrapolation": [], "extrapolation_buckets": []}
    for r in runs.itertuples():
        if getattr(r, "status", "ok") != "ok":
            log(f"analysis: skipping {r.run_id} (status {r.status})")
            continue
        folder = study.folder.run(r.run_id)
        result = None if recompute else _cached_run(folder, settings)
        t0 = None
        if result is None:
            t0 = time.time()
            try:
                result = analyze_run(folder.path, study.task(r.task), settings, device)
            except Exception as exc:  # one broken run (or plugin) must not cost the study its report
                other = "" if folder.has_model else _stored_with(folder, settings)
                if other:  # a committed run: its weights are not kept, its analysis is, made with other settings
                    log(f"analysis: {r.run_id} failed, left out: its weights are not kept and its stored analysis "
                        f"was made with {other}: `study.py analyze {study.out} {other.replace(', ', ' ')}` reuses it")
                else:
                    log(f"analysis: {r.run_id} failed, left out: {type(exc).__name__}: {exc}")
                continue
            _store_run(folder, settings, result)
        fit = {**result["fit"], "arch": r.arch, **truncation_check(result["context"], settings.tolerance),
               **context_resolution(result["context"]), **_floor_excess(study, r.task, folder, int(r.seed))}
        if t0 is not None:
            eff = format_effective_context(fit)
            log(f"analysis: {r.run_id}: alpha {fit['alpha']:.3g} [{fit['alpha_low']:.3g}, {fit['alpha_high']:.3g}] "
                f"({fit['fit_status']}), effective context {eff}{'' if eff.startswith('not') else ' tokens'}, "
                f"{fit['ablation_forward_tokens']:,} forward tokens, {time.time() - t0:.0f} s")
        fits.append(fit)
        for name in tables:
            if not result[name].empty:
                tables[name].append(name_runs(result[name], {r.run_id: r.arch}))
    fit_df = pd.DataFrame(fits)
    if not fit_df.empty:
        fit_df = fit_df[[c for c in FIT_COLUMNS if c in fit_df] + [c for c in fit_df if c not in FIT_COLUMNS]]
    study.folder.write_table("fits.csv", fit_df)
    baseline = baseline or study.config.archs[0]
    if baseline not in study.config.archs:
        raise UserError(f"baseline {baseline!r} is not one of the study's architectures: {', '.join(study.config.archs)}")
    gaps = paired_gaps(study.out, runs, baseline, settings.n_boot)
    study.folder.write_table("gaps.csv", gaps)
    out = {"fits": fit_df, "gaps": gaps}
    for name, parts in tables.items():
        df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
        study.folder.write_table(f"{name}.parquet", df)
        out[name] = df
    return out

