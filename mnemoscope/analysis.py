"""How much history does each architecture use? Measurements of a finished study's models.

* ``truncation_ablation`` (Khandelwal et al. 2018): the same target tokens scored with exactly
  n tokens of context, fresh state, n = 1, 2, 4, ..., T; variants with the tokens farther than
  n back shuffled or replaced by unrelated text; ``ablation_table`` gives each variant's
  effective context (:func:`mnemoscope.statistics.effective_context`).
* ``extrapolation``: per-position loss on sequences 2x and 4x the training context, for the
  models that accept them (``extrapolates``).
* ``paired_gaps``: every architecture against a baseline on the same test sequences.

``analyze(study)`` runs them, with the per-position fits and octave gains of
:mod:`mnemoscope.statistics`, on every finished run and writes, in the study folder,
``fits.csv`` (one row per run), ``context.parquet`` (ablation rows), ``octaves.parquet``,
``extrapolation.parquet`` and ``gaps.csv`` (``study.py analyze DIR``); the report's
:mod:`mnemoscope.report_history` section draws them.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from . import files
from .bootstrap import LEVEL, percentile_interval
from .errors import UserError
from .evaluate import bootstrap_ci, per_position_losses
from .model import has_features
from .runner import Study
from .settings import ANALYSIS, N_BOOT, TOLERANCE, VARIANTS, AnalysisSettings
from .statistics import (bootstrap_fit, context_resolution, effective_context, format_effective_context,
                         last_significant_octave, octave_gains, paired_gap, truncation_check)
from .store import jsonable, load_run_model
from .task import Task, TokenSplit
from .windows import eval_offsets, n_windows, window_index


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
        with np.load(Path(study_dir) / "runs" / base_run["run_id"].iloc[0] / "losses.npz") as z:
            base, mask = z["losses"], z["mask"]
        for r in group.to_dict("records"):
            if r["arch"] == baseline:
                continue
            with np.load(Path(study_dir) / "runs" / r["run_id"] / "losses.npz") as z:
                losses, m = z["losses"], z["mask"]
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


# -- 3. truncation ablation (Khandelwal et al. 2018) ------------------------------------------------


@dataclass
class Ablation:
    """Loss of the same M target tokens under each variant and context budget n (nats).

    ``losses[variant]`` is (M, K) for ``contexts`` (K,); column -1 is the full context, where
    every variant is the unmodified window. ``refined[variant]``: (contexts (J,), losses (M, J)) of
    the lengths bisected between the last two of the grid (:func:`truncation_ablation`);
    :meth:`scored` merges both. ``available`` (M,) is each target's full context (T for text;
    less for a target early in a fixed-length instance). ``forward_tokens`` counts the tokens
    fed to the model per variant, bisection included: the cost.
    """

    contexts: np.ndarray
    losses: dict[str, np.ndarray]
    available: np.ndarray
    forward_tokens: dict[str, int]
    refined: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def scored(self, variant: str) -> tuple[np.ndarray, np.ndarray]:
        """Every context the variant was scored at, ascending, and its (M, K + J) losses."""
        extra_n, extra = self.refined.get(variant, (np.zeros(0, np.int64), self.losses[variant][:, :0]))
        n = np.concatenate([self.contexts, extra_n])
        order = np.argsort(n, kind="stable")
        return n[order], np.concatenate([self.losses[variant], extra], axis=1)[:, order]


def ablation_targets(split: TokenSplit, context_length: int, n_targets: int):
    """(windows (M, T+1) token ids, position (M,)) of the targets: in each evaluation window
    (``eval_offsets``: the same windows the per-position curve scores), its last counted target.
    Position p predicts window token p+1 from p+1 tokens of context."""
    T = context_length
    offsets = eval_offsets(split, T, n_targets)
    index = window_index(offsets, T)
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
            # only the last position's logits: (B, V), not (B, n, V), where the model exposes features/head
            logits = model.head(model.features(x)[:, -1]) if has_features(model) else model(x)[:, -1]
        out[i:i + step] = F.cross_entropy(logits.float(), y, reduction="none").cpu().numpy()
        counter[0] += x.numel()
    return out


def truncation_ablation(model: nn.Module, split: TokenSplit, context_length: int, n_targets: int = 512,
                        batch_size: int | None = None, variants=VARIANTS, contexts=None, seed: int = 0,
                        device=None, max_tokens: int = 1 << 16, tolerance: float = TOLERANCE,
                        refine=("truncate",)) -> Ablation:
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

    For the variants in ``refine``, the grid's effective context (within ``tolerance`` of the full
    context: :func:`mnemoscope.statistics.effective_context`) is then bisected on whole n between
    the last two lengths tried, the same targets scored at each midpoint, down to one token: a lag
    of 12 reads 12, not the 16 of the grid (``Ablation.refined``). Cost, in forward tokens, about
    M * 2T for ``truncate`` (plus at most M * n* for the bisection, n* the effective context) and
    M * T * log2(T) for each other variant.
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

    def score(variant: str, n: int, counter: list[int]) -> np.ndarray:
        """(M,) losses of every target under ``variant`` with n tokens of context."""
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
        return rows

    was_training = model.training
    model.eval()
    out, cost, refined = {}, {}, {}
    full = None
    try:
        for variant in variants:
            counter = [0]
            losses = np.empty((M, len(contexts)), np.float32)
            for k, n in enumerate(contexts):
                if n == T and full is not None:  # every variant's full context is the same window
                    losses[:, k] = full
                    continue
                losses[:, k] = score(variant, int(n), counter)
                if n == T:
                    full = losses[:, k]
            if variant in refine:
                refined[variant] = _bisect(lambda n: score(variant, n, counter), contexts, losses, tolerance)
            out[variant], cost[variant] = losses, counter[0]
    finally:
        model.train(was_training)
    return Ablation(contexts, out, available, cost, refined)


def _bisect(score, contexts: np.ndarray, losses: np.ndarray, tolerance: float):
    """Lengths between the grid's effective context and the length tried before it, bisected on
    whole n (each midpoint within ``tolerance`` of the full context or not, as
    :func:`mnemoscope.statistics.effective_context` decides), with their (M, J) losses."""
    mean = losses.astype(np.float64).mean(0)
    limit = mean[-1] * (1 + tolerance)
    tail = np.flip(np.logical_and.accumulate(np.flip(mean <= limit)))
    k = int(np.argmax(tail))
    lo, hi = (int(contexts[k - 1]), int(contexts[k])) if k > 0 else (0, 0)
    tried, rows = [], []
    while hi - lo > 1:
        mid = (lo + hi) // 2
        r = score(mid)
        tried.append(mid)
        rows.append(r)
        if r.astype(np.float64).mean() <= limit:
            hi = mid
        else:
            lo = mid
    return np.array(tried, np.int64), (np.stack(rows, 1) if rows else losses[:, :0])


def ablation_table(ab: Ablation, tolerance: float = TOLERANCE, n_boot: int = N_BOOT, seed: int = 0,
                   level: float = LEVEL) -> pd.DataFrame:
    """Tidy rows: one per variant and context n, mean loss with its bootstrap interval over
    targets, the loss's excess over full context, and the variant's effective context and cost."""
    rows = []
    rng = np.random.default_rng(seed)
    for variant in ab.losses:
        contexts, losses = ab.scored(variant)
        M = len(losses)
        idx = rng.integers(0, M, size=(n_boot, M))
        boots = losses[idx].astype(np.float64).mean(1)  # (B, K)
        lo, hi = percentile_interval(boots, level)
        mean = losses.astype(np.float64).mean(0)
        eff = effective_context(losses, contexts, tolerance, n_boot, seed)
        for k, n in enumerate(contexts):
            rows.append({"variant": variant, "context": int(n), "loss": mean[k], "ci_low": lo[k], "ci_high": hi[k],
                         "excess": mean[k] / mean[-1] - 1, "n_targets": M, "effective_context": eff[0],
                         "effective_context_low": eff[1], "effective_context_high": eff[2],
                         "tolerance": tolerance, "forward_tokens": ab.forward_tokens[variant]})
    return pd.DataFrame(rows)


# -- 4. length extrapolation ----------------------------------------------------------------------
def extrapolates(model: nn.Module) -> bool:
    """Whether the model accepts sequences longer than its training context (class or instance ``extrapolates``)."""
    return bool(getattr(model, "extrapolates", False))


def extrapolation(model: nn.Module, split: TokenSplit, context_length: int, factors=ANALYSIS.factors,
                  n_sequences: int = ANALYSIS.extrapolation_sequences, batch_size: int = 16, seed: int = 0) -> pd.DataFrame:
    """Per-position loss on test windows ``factor`` x the training context (positions past T were
    never trained on). Empty for a model that does not extrapolate, or a task whose sequences have
    a fixed length. Columns: factor, length, position, loss, ci_low, ci_high, n_sequences."""
    return long_context(model, split, context_length, factors, n_sequences, batch_size, seed)[0]


def long_context(model: nn.Module, split: TokenSplit, context_length: int, factors=ANALYSIS.factors,
                 n_sequences: int = ANALYSIS.extrapolation_sequences, batch_size: int = 16, seed: int = 0,
                 n_boot: int = 200) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`extrapolation`'s per-position table, and the same losses in **position buckets** of
    the training length T, [0, T), [T, 2T), ..., as long-context evaluations report them (Flash
    Linear Attention's ``evals/ppl.py`` buckets PG-19 by 2048-token blocks): the mean loss of each
    bucket with a bootstrap interval over sequences (columns factor, length, bucket_start,
    bucket_end, loss, ci_low, ci_high, n_sequences). With a task of ``windows=document`` every
    window lies inside one document, so a long window is one stretch of one book."""
    if not extrapolates(model) or split.starts is not None:
        return pd.DataFrame(), pd.DataFrame()
    tables, buckets = [], []
    rng = np.random.default_rng(seed)
    for f in factors:
        L = int(f * context_length)
        if n_windows(split, L) < 1:
            continue  # the test split holds no window this long
        losses, mask = per_position_losses(model, split, L, n_sequences, batch_size)
        mean, lo, hi, n = bootstrap_ci(losses, mask, n_boot=n_boot, seed=seed)
        tables.append(pd.DataFrame({"factor": f, "length": L, "position": np.arange(L), "loss": mean,
                                    "ci_low": lo, "ci_high": hi, "n_sequences": n.astype(np.int64)}))
        m = mask.astype(np.float64)
        idx = rng.integers(0, len(losses), size=(n_boot, len(losses)))
        for start in range(0, L, context_length):
            end = min(L, start + context_length)
            num, den = (losses[:, start:end] * m[:, start:end]).sum(1), m[:, start:end].sum(1)
            if den.sum() == 0:
                continue
            boots = num[idx].sum(1) / np.maximum(den[idx].sum(1), 1)
            b_lo, b_hi = percentile_interval(boots, axis=None)
            buckets.append({"factor": f, "length": L, "bucket_start": start, "bucket_end": end,
                            "loss": num.sum() / den.sum(), "ci_low": b_lo, "ci_high": b_hi,
                            "n_sequences": int((den > 0).sum())})
    return (pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()), pd.DataFrame(buckets)


def context_bytes(split: TokenSplit, context_length: int, n_targets: int, contexts, token_bytes) -> dict[int, float]:
    """Mean bytes of text in the n tokens before each truncation-ablation target, for each n of
    ``contexts``: the effective context in bytes (empty when the task's tokens are not text)."""
    if token_bytes is None:
        return {}
    windows, position = ablation_targets(split, context_length, n_targets)
    b = np.asarray(token_bytes, np.int64)[windows]  # (M, T+1)
    cum = np.concatenate([np.zeros((len(b), 1), np.int64), np.cumsum(b, axis=1)], axis=1)
    end = position + 1  # the target's context is window tokens [end - n, end)
    return {int(n): float((cum[np.arange(len(b)), end] - cum[np.arange(len(b)), np.maximum(end - n, 0)]).mean())
            for n in contexts}


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
    ab = truncation_ablation(model, split, T, settings.n_targets, variants=settings.variants, seed=seed, device=device,
                             tolerance=settings.tolerance)
    context = ablation_table(ab, settings.tolerance, settings.n_boot, seed)
    ablation_seconds = time.time() - t0
    token_bytes = task.token_bytes() if hasattr(task, "token_bytes") else None
    # every n, not only the grid's: the effective context may be a bisected length
    nbytes = context_bytes(split, T, settings.n_targets, range(1, T + 1), token_bytes)
    context["context_bytes"] = context["context"].map(nbytes) if nbytes else np.nan
    ext, buckets = long_context(model, split, T, settings.factors, settings.extrapolation_sequences, seed=seed)
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
            if variant == "truncate":  # the same in bytes of text (NaN where tokens are not text)
                fit_row[f"{name}_bytes{suffix}"] = nbytes.get(int(first["effective_context" + suffix]), math.nan)
    if not ext.empty:
        m = mask.astype(np.float64)
        fit_row["loss_last_half"] = float((losses[:, T // 2:] * m[:, T // 2:]).sum() / max(m[:, T // 2:].sum(), 1))
        for f in settings.factors:
            part = ext[(ext["factor"] == f) & (ext["position"] >= T)]
            if not part.empty:
                fit_row[f"loss_beyond_{f}x"] = float(part["loss"].mean())
    tables = {"context": context, "octaves": octaves, "extrapolation": ext, "extrapolation_buckets": buckets}
    for df in tables.values():
        if not df.empty:
            for i, (k, v) in enumerate(label.items()):
                df.insert(i, k, v)
    return {"fit": fit_row, **tables}


def _floor_excess(study, spec: str, folder: Path, seed: int) -> dict:
    """The task's exact floor and the run's excess over it (``Task.floor_excess``), where the task
    knows its floor (the lag probe); nothing for the others, or when the task cannot be built now."""
    try:
        task = study.task(spec)
        if type(task).floor_excess is Task.floor_excess:
            return {}
        with np.load(folder / "losses.npz") as z:
            return task.floor_excess(z["losses"], z["mask"], seed=seed) or {}
    except (UserError, OSError, ValueError, KeyError):
        return {}


def _cached_run(folder: Path, settings: AnalysisSettings):
    """A run's analysis stored by an earlier ``analyze`` with the same settings, or None."""
    path = folder / "analysis" / "fit.json"
    try:
        stored = json.loads(path.read_text())
        if stored["settings"] != json.loads(json.dumps(dataclasses.asdict(settings))):
            return None
        return {"fit": stored["fit"], **{name: pd.read_parquet(folder / "analysis" / f"{name}.parquet")
                                         for name in ("context", "octaves", "extrapolation")},
                # absent from analyses stored before it existed
                "extrapolation_buckets": files.read_optional(folder / "analysis" / "extrapolation_buckets.parquet")}
    except (OSError, ValueError, KeyError):
        return None


def _store_run(folder: Path, settings: AnalysisSettings, result: dict) -> None:
    for name in ("context", "octaves", "extrapolation", "extrapolation_buckets"):
        files.write_parquet(folder / "analysis" / f"{name}.parquet", result[name])
    files.write_text(folder / "analysis" / "fit.json",
                  json.dumps({"settings": dataclasses.asdict(settings), "fit": result["fit"]}, indent=1, default=jsonable))


def analyze(study, settings: AnalysisSettings | None = None, log=print, device=None,
            recompute: bool = False, baseline: str | None = None) -> dict[str, pd.DataFrame]:
    """Analyse every finished, non-diverged run of a study from its stored models and tables, and
    write ``fits.csv``, ``context.parquet``, ``octaves.parquet``, ``extrapolation.parquet`` and
    ``extrapolation_buckets.parquet`` into the study folder, and ``gaps.csv``: every architecture against ``baseline`` (default: the
    study's first) on the same test sequences. ``study``: a :class:`mnemoscope.runner.Study`, or a
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
        folder = study.runs_dir / r.run_id
        result = None if recompute else _cached_run(folder, settings)
        t0 = None
        if result is None:
            t0 = time.time()
            try:
                result = analyze_run(folder, study.task(r.task), settings, device)
            except Exception as exc:  # one broken run (or plugin) must not cost the study its report
                log(f"analysis: {r.run_id} failed, left out: {type(exc).__name__}: {exc}")
                continue
            _store_run(folder, settings, result)
        fit = {**result["fit"], **truncation_check(result["context"], settings.tolerance),
               **context_resolution(result["context"]), **_floor_excess(study, r.task, folder, int(r.seed))}
        if t0 is not None:
            eff = format_effective_context(fit)
            log(f"analysis: {r.run_id}: alpha {fit['alpha']:.3g} [{fit['alpha_low']:.3g}, {fit['alpha_high']:.3g}] "
                f"({fit['fit_status']}), effective context {eff}{'' if eff.startswith('not') else ' tokens'}, "
                f"{fit['ablation_forward_tokens']:,} forward tokens, {time.time() - t0:.0f} s")
        fits.append(fit)
        for name in tables:
            if not result[name].empty:
                tables[name].append(result[name])
    fit_df = pd.DataFrame(fits)
    if not fit_df.empty:
        fit_df = fit_df[[c for c in FIT_COLUMNS if c in fit_df] + [c for c in fit_df if c not in FIT_COLUMNS]]
    files.write_text(study.out / "fits.csv", fit_df.to_csv(index=False))
    baseline = baseline or study.config.archs[0]
    if baseline not in study.config.archs:
        raise UserError(f"baseline {baseline!r} is not one of the study's architectures: {', '.join(study.config.archs)}")
    gaps = paired_gaps(study.out, runs, baseline, settings.n_boot)
    files.write_text(study.out / "gaps.csv", gaps.to_csv(index=False))
    out = {"fits": fit_df, "gaps": gaps}
    for name, parts in tables.items():
        df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
        files.write_parquet(study.out / f"{name}.parquet", df)
        out[name] = df
    return out

