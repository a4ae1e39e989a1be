"""Context use through training: what a run keeps at its kept steps, and the tables made of it.

At ``history`` kept steps, spaced evenly in log training tokens over the run's last octaves (the
default, 8 steps, is one per octave from 1/128 of the run to its end), a run scores test windows
at every position (every k-th window of its final evaluation, at most ``HISTORY_WINDOWS``: the
same at every step) and keeps the weights::

    runs/<run_id>/history/step-0000123.npz   losses (N, T) nats, mask (N, T), step, tokens
    runs/<run_id>/history/step-0000123.pt    the weights at that step (state_dict; --no-keep-weights: none)

The last kept step is the run's end: its losses are those windows' rows of the run's
``losses.npz``, its weights ``model.pt``. From these files :func:`run_tables` makes the run's ``history.parquet`` (per step and
position: mean loss with a bootstrap interval over windows, the bytes of context) and
``history_steps.parquet`` (per step: mean loss and the in-context learning score with its
interval); :mod:`mnemoscope.analysis.growth` adds the effective context at each step from the kept weights.

**The in-context learning score** (Olsson et al. 2022): the loss with about 500 tokens of context
minus the loss with about 50, negative when later tokens are predicted better. Here: the mean loss
over the positions whose context is within 10% of ``late`` tokens, minus the same around ``early``;
``late`` is 500 where the context allows (T >= 550), else ``T * 500 / 550`` rounded, and
``early = late / 10`` (:func:`icl_positions`). Its interval bootstraps over windows.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..settings import N_BOOT, STILL_LEARNING, STUDY
from ..storage.study_folder import RunFolder
from .bootstrap import LEVEL, bootstrap_indices, cluster_ci, percentile_interval
from .evaluate import bootstrap_ci

HISTORY_POINTS = STUDY.history  # kept steps per run (0: none)
HISTORY_WINDOWS = 128  # test windows scored at a kept step: every k-th of the final evaluation's, at most this many
HISTORY_SPAN = 128  # the first kept step is at this fraction of the run (1/128: seven octaves before the end)
ICL_LATE, ICL_EARLY, ICL_BAND = 500, 50, 0.10  # Olsson et al.'s tokens of context, and the band around each


def history_steps(n_steps: int, points: int = HISTORY_POINTS, span: int = HISTORY_SPAN) -> list[int]:
    """The kept steps of a run of ``n_steps``: ``points`` steps evenly spaced in log(step) from
    ``n_steps / span`` to ``n_steps`` (duplicates merged at short runs), the last always included."""
    if points <= 0:
        return []
    if points == 1:
        return [int(n_steps)]
    first = max(1.0, n_steps / span)
    steps = {int(round(s)) for s in np.geomspace(first, n_steps, points)}
    return sorted(s for s in steps | {int(n_steps)} if 1 <= s <= n_steps)


def window_stride(n_sequences: int, windows: int = HISTORY_WINDOWS) -> int:
    """k: the kept steps score every k-th window of the final evaluation's ``n_sequences`` (the same
    windows at every step, the last step included)."""
    return max(1, math.ceil(n_sequences / windows))


def icl_positions(context_length: int) -> tuple[int, int]:
    """(early, late): the tokens of context the in-context learning score compares (Olsson's 50
    and 500 where the context allows; scaled down with shorter contexts)."""
    late = ICL_LATE if context_length >= ICL_LATE * (1 + ICL_BAND) else \
        max(2, int(round(context_length * ICL_LATE / (ICL_LATE * (1 + ICL_BAND)))))
    return max(1, int(round(late * ICL_EARLY / ICL_LATE))), late


def _band(n: int, T: int) -> np.ndarray:
    """Positions (0-based, position p has p+1 tokens of context) whose context is within ICL_BAND of n."""
    lo, hi = max(1, int(math.floor(n * (1 - ICL_BAND)))), min(T, int(math.ceil(n * (1 + ICL_BAND))))
    return np.arange(lo - 1, hi)


def icl_score(losses: np.ndarray, mask: np.ndarray, n_boot: int = N_BOOT, seed: int = 0,
              level: float = LEVEL) -> dict[str, float]:
    """Olsson et al.'s in-context learning score of per-window losses (N, T): mean loss around
    ``late`` tokens of context minus around ``early`` (:func:`icl_positions`), each window's
    difference of its counted targets; the interval bootstraps over windows (those with a counted
    target in both bands)."""
    T = losses.shape[1]
    early, late = icl_positions(T)
    m = np.asarray(mask, np.float64)
    x = np.asarray(losses, np.float64)

    def band_mean(pos):
        count = m[:, pos].sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (x[:, pos] * m[:, pos]).sum(1) / count, count > 0

    a, ok_a = band_mean(_band(early, T))
    b, ok_b = band_mean(_band(late, T))
    ok = ok_a & ok_b
    out = {"icl_early": early, "icl_late": late, "icl_windows": int(ok.sum())}
    if not ok.any():
        return {**out, "icl_score": math.nan, "icl_low": math.nan, "icl_high": math.nan}
    d = (b - a)[ok]
    lo, hi = percentile_interval(d[bootstrap_indices(len(d), n_boot, seed)].mean(1), level, axis=None)
    return {**out, "icl_score": float(d.mean()), "icl_low": float(lo), "icl_high": float(hi)}


# -- the files of a run's history: kept by mnemoscope.storage.study_folder.RunFolder -------------------------------------
def write_step(run_folder: Path, step: int, tokens: int, losses: np.ndarray, mask: np.ndarray,
               state_dict: dict | None = None) -> None:
    """:meth:`RunFolder.write_step`: one kept step's per-window losses (and weights, unless None)."""
    RunFolder(run_folder).write_step(step, tokens, losses, mask, state_dict)


def read_steps(run_folder: Path) -> list[dict]:
    """:meth:`RunFolder.steps`: the kept steps of a run, in order."""
    return RunFolder(run_folder).steps()


load_step_weights = RunFolder.step_weights


def run_tables(run_folder: Path, label: dict, context_bytes: np.ndarray | None = None, n_boot: int = N_BOOT,
               seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A run's ``history.parquet`` (step, tokens, position, loss, ci_low, ci_high, context_bytes) and
    ``history_steps.parquet`` (step, tokens, loss, the in-context learning score with its interval),
    from its kept steps; each row labelled with ``label`` (run_id, arch, task, params, seed).
    ``context_bytes`` (T,): mean bytes of context at each position, where tokens are text."""
    positions, steps = [], []
    for s in read_steps(run_folder):
        losses, mask = s["losses"], s["mask"]
        mean, lo, hi, n = bootstrap_ci(losses, mask, n_boot=n_boot, seed=seed)
        T = losses.shape[1]
        positions.append(pd.DataFrame({"step": s["step"], "tokens": s["tokens"], "position": np.arange(T),
                                       "loss": mean, "ci_low": lo, "ci_high": hi, "n_sequences": n.astype(np.int64),
                                       "context_bytes": context_bytes if context_bytes is not None else np.nan}))
        m = np.asarray(mask, np.float64)
        steps.append({"step": s["step"], "tokens": s["tokens"], "loss": float((losses * m).sum() / max(m.sum(), 1)),
                      **icl_score(losses, mask, n_boot, seed), "weights_kept": s["weights"] is not None})
    pos = pd.concat(positions, ignore_index=True) if positions else pd.DataFrame()
    st = pd.DataFrame(steps)
    for df in (pos, st):
        if not df.empty:
            for i, (k, v) in enumerate(label.items()):
                df.insert(i, k, v)
    return pos, st


def still_learning(steps: pd.DataFrame, threshold: float = STILL_LEARNING) -> dict[str, float]:
    """Runs still changing fast at their last kept step: run_id -> the fall of the mean test loss
    between the last two kept steps, as a fraction of the earlier of the two losses per octave
    (doubling) of training tokens, where it exceeds ``threshold`` (of the earlier loss: a run
    whose loss falls to nearly zero, having learned its task, falls by at most 100%, where a
    fraction of the last loss would grow without bound). Such a run's numbers depend on exactly where
    training stopped (and so on the last bits of floating-point order: another CPU can land
    elsewhere); a budget past that point, or several seeds, says how much."""
    out = {}
    if steps.empty or "run_id" not in steps:
        return out
    for run_id, g in steps.sort_values("tokens").groupby("run_id", sort=False):
        if len(g) < 2:
            continue
        a, b = g.iloc[-2], g.iloc[-1]
        octaves = math.log2(b["tokens"] / a["tokens"]) if a["tokens"] > 0 else 0
        if octaves > 0 and a["loss"] > 0:
            fall = (a["loss"] - b["loss"]) / a["loss"] / octaves
            if fall > threshold:
                out[run_id] = float(fall)
    return out


def scored_per_window(steps: list[dict]) -> pd.DataFrame:
    """The kept steps (:func:`read_steps`) reduced to what :func:`phase_change` needs, a row per step
    and window: tokens, the summed loss over the window's scored targets, and how many there are.
    Small enough to keep beside a run (the per-window losses of a kept step are not committed)."""
    rows = []
    for s in steps:
        m = np.asarray(s["mask"], np.float64)
        rows.append(pd.DataFrame({"tokens": int(s["tokens"]), "window": np.arange(len(m)),
                                  "loss_sum": (np.asarray(s["losses"], np.float64) * m).sum(1), "scored": m.sum(1)}))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["tokens", "window", "loss_sum", "scored"])


def phase_change(per_window: pd.DataFrame, threshold: float, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """When a run starts using its history on a probe (Olsson et al. 2022's phase change): the
    training tokens at which the mean loss on the scored targets falls below ``threshold`` (half of
    the loss of a model that cannot see the answer's source, e.g. ln(symbols) / 2 on copy).

    ``per_window``: :func:`scored_per_window` of the run's kept steps. At each, the mean scored loss
    with a bootstrap interval over windows. ``low``: the tokens of the last kept step whose interval
    lies wholly above the threshold before the first that lies wholly below; ``high``: that first
    step's tokens; ``tokens``: the crossing of the means, interpolated on log tokens between the
    kept steps around it. ``status``: "crossed"; "none" (the last kept step is not wholly below: no
    phase change within the run's budget); "before" (already below at the first kept step: it
    happened earlier than ``high``)."""
    rows = []
    for tokens, g in per_window.groupby("tokens", sort=True):
        w = g["scored"].to_numpy(float)  # the scored loss's mean over windows, resampled whole: cluster_ci
        mean = np.divide(g["loss_sum"].to_numpy(float), w, out=np.zeros_like(w), where=w > 0)
        rows.append((int(tokens), *cluster_ci(mean, w, g["window"].to_numpy(), seed=seed, n_boot=n_boot)))
    out = {"threshold": float(threshold), "steps": len(rows), "status": "none", "tokens": float("nan"),
           "low": float("nan"), "high": float("nan"),
           "final_loss": rows[-1][1] if rows else float("nan"), "final_low": rows[-1][2] if rows else float("nan"),
           "final_high": rows[-1][3] if rows else float("nan")}
    below = [i for i, r in enumerate(rows) if r[3] < threshold]
    if not rows or not below or rows[-1][3] >= threshold:
        return out
    first = below[0]
    above = [i for i, r in enumerate(rows[:first]) if r[2] > threshold]
    if not above:
        return {**out, "status": "before", "high": float(rows[first][0])}
    a = above[-1]
    cross = next(i for i in range(a + 1, first + 1) if rows[i][1] < threshold)  # the means cross here
    (t0, l0, _, _), (t1, l1, _, _) = rows[cross - 1], rows[cross]
    frac = (l0 - threshold) / (l0 - l1) if l0 != l1 else 1.0
    tokens = 2 ** (math.log2(t0) + frac * (math.log2(t1) - math.log2(t0)))
    return {**out, "status": "crossed", "tokens": float(tokens), "low": float(rows[a][0]), "high": float(rows[first][0])}
