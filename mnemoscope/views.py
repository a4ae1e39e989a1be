"""Per-task report views: a section per task, drawn in the way that suits its modality.

Registered in ``report.SECTIONS``. Each view reads the study's stored tables
(``per_position.parquet``, each run's ``losses.npz``) and, where the view needs the model's own
predictions (math's greedy answers and extrapolation split, recall's accuracy), evaluates the
stored ``model.pt`` once and keeps the result beside it (``runs/<id>/view_<name>.parquet``), so a
later ``study.py report`` draws it from that table.

* images: per-pixel loss map, position i -> (row i // W, column i % W).
* video: the per-position curve with frame boundaries, and mean loss per frame.
* math: loss and exact-match accuracy on answers, interpolation (test) and extrapolation apart.
* recall: accuracy and loss against key-query distance; copy: loss on the repeat against d.
* lag: the per-position curve against its exact floor.
"""
from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Callable

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import yaml

from . import io
from .errors import UserError
from .registry import TASKS
from .report import SECTIONS, figure_png, img_tag
from .specs import format_count, parse_spec
from .task import Task, eval_offsets

N_BOOT = 1000


# -- helpers: the study's tasks, runs and evaluation windows ------------------------------------
def study_task(out: Path, spec: str) -> Task:
    """The task of a study exactly as its runs built it (the study's --context included)."""
    from .study import Study

    return Study.from_folder(out).task(spec)


def eval_sequences(out: Path) -> int:
    return int(yaml.safe_load((Path(out) / "config.yaml").read_text()).get("eval_sequences", 256))


def run_losses(out: Path, run_id: str) -> tuple[np.ndarray, np.ndarray]:
    """A run's stored per-sequence losses (N, T) in nats and target mask (N, T)."""
    with np.load(Path(out) / "runs" / run_id / "losses.npz") as z:
        return z["losses"], z["mask"]


def test_windows(task: Task, n_rows: int, n_sequences: int) -> np.ndarray:
    """(N, T+1) tokens of the test windows the study scored (same ``eval_offsets``)."""
    split, T = task.splits()["test"], task.context_length
    offsets = eval_offsets(split, T, n_sequences)
    if len(offsets) != n_rows:
        raise UserError(f"stored losses hold {n_rows} sequences but the task's test split gives {len(offsets)}; "
                        "the task's data changed since the run")
    return np.asarray(split.tokens)[offsets[:, None] + np.arange(T + 1)[None, :]]


def cached_run_table(out: Path, run_id: str, name: str, compute: Callable[[], pd.DataFrame]) -> pd.DataFrame:
    """``runs/<id>/view_<name>.parquet``, computed once (from the stored model) and kept."""
    path = Path(out) / "runs" / run_id / f"view_{name}.parquet"
    if path.exists():
        return pd.read_parquet(path)
    df = compute()
    io.write_parquet(path, df)
    return df


def label_runs(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    df["size"] = df["params"].map(lambda p: format_count(int(p)))
    df["model"] = df["arch"] + " " + df["size"]
    return df


def cluster_ci(values: np.ndarray, weights: np.ndarray, units: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """Weighted mean of ``values`` and a 95% bootstrap interval resampling whole ``units``
    (sequences), since targets within one sequence are correlated."""
    u, inv = np.unique(units, return_inverse=True)
    s = np.bincount(inv, weights=values * weights, minlength=len(u))
    w = np.bincount(inv, weights=weights, minlength=len(u))
    if w.sum() == 0:
        return (float("nan"),) * 3
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(u), size=(N_BOOT, len(u)))
    boots = s[idx].sum(1) / np.maximum(w[idx].sum(1), 1e-12)
    return float(s.sum() / w.sum()), float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def _table(df: pd.DataFrame) -> str:
    return df.to_html(index=False, float_format=lambda x: f"{x:.4g}", na_rep="", border=0)


def _p(text: str) -> str:
    return f"<p>{text}</p>"


# -- images ------------------------------------------------------------------------------------
def pixel_loss_map(position: np.ndarray, loss: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W) map: the loss at position i lands on pixel (i // W, i % W); NaN where none was stored."""
    out = np.full(height * width, np.nan)
    position = np.asarray(position, dtype=np.int64)
    keep = (position >= 0) & (position < height * width)
    out[position[keep]] = np.asarray(loss)[keep]
    return out.reshape(height, width)


def images_view(out: Path, spec: str, runs: pd.DataFrame, pp: pd.DataFrame) -> str:
    task = study_task(out, spec)
    H, W = task.height, task.width
    pp = label_runs(pp)
    models = list(dict.fromkeys(pp["model"]))
    maps = {m: pixel_loss_map(*pp[pp["model"] == m].groupby("position")["loss"].mean().reset_index().values.T, H, W)
            for m in models}
    vmin = np.nanmin([np.nanmin(v) for v in maps.values()])
    vmax = np.nanmax([np.nanmax(v) for v in maps.values()])
    fig, axes = plt.subplots(1, len(models), figsize=(3.2 * len(models) + 0.8, 3.2), squeeze=False)
    for ax, m in zip(axes[0], models):
        im = ax.imshow(maps[m], cmap="magma", vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_title(m, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes[0].tolist(), label="test loss (nats/pixel)", shrink=0.9)
    rows = [{"model": m, "mean": float(np.nanmean(v)), "first row": float(np.nanmean(v[0])),
             "last row": float(np.nanmean(v[-1])), "top-left pixel": float(v[0, 0])} for m, v in maps.items()]
    return (img_tag(figure_png(fig), f"per-pixel loss maps of {spec}") +
            _p(f"Mean test loss of each pixel ({H}x{W}, {task.levels} grey levels, raster order after a BOS "
               "token), averaged over held-out images and seeds. Henighan et al. (Fig. 6) found the first pixels "
               "dearest and the cost dependent on where a pixel sits.") + _table(pd.DataFrame(rows)))


# -- video -------------------------------------------------------------------------------------
def frame_means(losses: np.ndarray, mask: np.ndarray, frame_length: int) -> np.ndarray:
    """(N, F) mean loss of each sequence over each frame's positions."""
    N, T = losses.shape
    F = T // frame_length
    m = mask[:, :F * frame_length].reshape(N, F, frame_length)
    l = losses[:, :F * frame_length].reshape(N, F, frame_length)
    return (l * m).sum(-1) / np.maximum(m.sum(-1), 1)


def video_view(out: Path, spec: str, runs: pd.DataFrame, pp: pd.DataFrame) -> str:
    task = study_task(out, spec)
    L = task.frame_length
    pp = label_runs(pp)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.2), gridspec_kw={"width_ratios": [2, 1]})
    g = pp.groupby(["model", "position"], as_index=False)[["loss", "ci_low", "ci_high"]].mean()
    palette = dict(zip(dict.fromkeys(g["model"]), sns.color_palette("colorblind", g["model"].nunique())))
    for m, part in g.groupby("model", sort=False):
        # a rolling mean over a row of pixels keeps the curve readable at 1,000+ positions
        smooth = part["loss"].rolling(task.size, min_periods=1, center=True).mean()
        ax1.plot(part["position"], smooth, color=palette[m], lw=1.2, label=m)
        ax1.fill_between(part["position"], part["ci_low"].rolling(task.size, min_periods=1, center=True).mean(),
                         part["ci_high"].rolling(task.size, min_periods=1, center=True).mean(), color=palette[m],
                         alpha=0.15, lw=0)
    for f in range(1, task.frames):
        ax1.axvline(f * L - 0.5, color="k", ls=":", lw=1)
    ax1.set_xlabel(f"position (frame boundaries every {L} tokens)")
    ax1.set_ylabel("test loss (nats/token)")
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    rows = []
    for _, r in label_runs(runs).iterrows():
        try:
            losses, mask = run_losses(out, r["run_id"])
        except FileNotFoundError:
            continue
        fm = frame_means(losses, mask, L)
        for i, row in enumerate(fm):
            for f, v in enumerate(row):
                rows.append({"model": r["model"], "seed": r["seed"], "sequence": i, "frame": f + 1, "loss": v})
    frames = pd.DataFrame(rows)
    sns.pointplot(data=frames, x="frame", y="loss", hue="model", palette=palette, errorbar=("ci", 95),
                  n_boot=N_BOOT, seed=0, dodge=0.3 if frames["model"].nunique() > 1 else False, ax=ax2)  # seaborn divides by (levels - 1)
    ax2.set_ylabel("mean test loss over the frame (nats/token)")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    table = frames.groupby(["model", "frame"])["loss"].mean().unstack("frame").add_prefix("frame ").reset_index()
    return (img_tag(figure_png(fig), f"video per-position and per-frame loss of {spec}") +
            _p(f"Clips of {task.frames} frames of {task.size}x{task.size} pixels, frame-major, so the same pixel one "
               f"frame back is {L} tokens back. Left: per-position loss (smoothed over {task.size} positions, 95% "
               "bands over sequences), dotted lines at frame boundaries. Right: mean loss per frame, 95% bootstrap "
               "intervals over clips; a model that uses the previous frame pays less for frames 2 onwards.") +
            _table(table))


# -- math --------------------------------------------------------------------------------------
def math_eval(out: Path, run_id: str, task) -> pd.DataFrame:
    from tasks.math import answer_accuracy

    from .study import load_run_model

    model, _ = load_run_model(Path(out) / "runs" / run_id)
    n = eval_sequences(out)
    parts = []
    for split, label in (("test", "interpolation (test)"), ("extrapolation", "extrapolation")):
        df = answer_accuracy(model, task.splits()[split], task.context_length, n)
        df.insert(0, "split", label)
        parts.append(df)
    return pd.concat(parts, ignore_index=True)


def math_view(out: Path, spec: str, runs: pd.DataFrame, pp: pd.DataFrame) -> str:
    task = study_task(out, spec)
    parts = []
    for _, r in label_runs(runs).iterrows():
        df = cached_run_table(out, r["run_id"], "math", lambda: math_eval(out, r["run_id"], task))
        parts.append(df.assign(model=r["model"], seed=r["seed"], unit=r["run_id"] + ":" + df["sequence"].astype(str)))
    answers = pd.concat(parts, ignore_index=True)
    answers["accuracy"] = answers["correct"].astype(float)
    rows = []
    for (m, split), d in answers.groupby(["model", "split"], sort=False):
        acc = cluster_ci(d["accuracy"].to_numpy(), np.ones(len(d)), d["unit"].to_numpy())
        loss = cluster_ci(d["loss"].to_numpy(), d["length"].to_numpy(float), d["unit"].to_numpy())
        rows.append({"model": m, "split": split, "answers": len(d), "exact match": acc[0], "acc low": acc[1],
                     "acc high": acc[2], "answer loss (nats/char)": loss[0], "loss low": loss[1], "loss high": loss[2]})
    table = pd.DataFrame(rows)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
    sns.barplot(data=answers, x="model", y="accuracy", hue="split", errorbar=("ci", 95), n_boot=N_BOOT, seed=0, ax=ax1)
    sns.barplot(data=answers, x="model", y="loss", hue="split", errorbar=("ci", 95), n_boot=N_BOOT, seed=0, ax=ax2)
    ax1.set_ylabel("exact-match accuracy (greedy)")
    ax1.set_ylim(0, max(0.05, min(1.0, answers["accuracy"].groupby([answers["model"], answers["split"]]).mean().max() * 1.3)))
    ax2.set_ylabel("mean loss per answer character (nats)")
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", labelrotation=20)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    by_kind = (answers.groupby(["model", "split", "kind"])["accuracy"].mean().unstack("kind").reset_index())
    return (img_tag(figure_png(fig), f"math accuracy and answer loss of {spec}") +
            _p("Answers only (their characters and the closing newline). Interpolation: held-out questions of the "
               "training difficulties; extrapolation: harder ones. Exact match under greedy decoding. The table's "
               "intervals are 95% bootstrap intervals over evaluation windows (the plot's over answers).") +
            _table(table) + _p("Exact-match accuracy by kind of problem:") + _table(by_kind))


# -- probes ------------------------------------------------------------------------------------
def recall_eval(out: Path, run_id: str, task) -> pd.DataFrame:
    from tasks.math import greedy_hits
    from tasks.probes import recall_distances

    from .study import load_run_model

    model, _ = load_run_model(Path(out) / "runs" / run_id)
    split = task.splits()["test"]
    offsets, hits, losses, mask, _ = greedy_hits(model, split, task.context_length, eval_sequences(out))
    windows = np.asarray(split.tokens)[offsets[:, None] + np.arange(task.context_length + 1)[None, :]]
    dist = recall_distances(windows, mask)
    i, t = np.nonzero(mask)
    return pd.DataFrame({"sequence": i, "position": t, "distance": dist[i, t], "loss": losses[i, t],
                         "correct": hits[i, t]})


def _against_distance(df: pd.DataFrame, value: str, unit: str = "unit") -> pd.DataFrame:
    rows = []
    for (m, d), g in df.groupby(["model", "distance"], sort=True):
        mean, lo, hi = cluster_ci(g[value].to_numpy(float), np.ones(len(g)), g[unit].to_numpy())
        rows.append({"model": m, "distance": int(d), value: mean, "low": lo, "high": hi, "n": len(g)})
    return pd.DataFrame(rows)


def _distance_plot(ax, table: pd.DataFrame, value: str, palette: dict) -> None:
    for m, g in table.groupby("model", sort=False):
        ax.errorbar(g["distance"], g[value], yerr=[g[value] - g["low"], g["high"] - g[value]], color=palette[m],
                    marker="o", ms=4, capsize=3, label=m)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("distance back (tokens)")
    ax.grid(alpha=0.3)


def recall_view(out: Path, spec: str, runs: pd.DataFrame, pp: pd.DataFrame) -> str:
    task = study_task(out, spec)
    parts = []
    for _, r in label_runs(runs).iterrows():
        df = cached_run_table(out, r["run_id"], "recall", lambda: recall_eval(out, r["run_id"], task))
        parts.append(df.assign(model=r["model"], unit=r["run_id"] + ":" + df["sequence"].astype(str)))
    queries = pd.concat(parts, ignore_index=True)
    queries["accuracy"] = queries["correct"].astype(float)
    acc, loss = _against_distance(queries, "accuracy"), _against_distance(queries, "loss")
    palette = dict(zip(dict.fromkeys(queries["model"]), sns.color_palette("colorblind", queries["model"].nunique())))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
    _distance_plot(ax1, acc, "accuracy", palette)
    _distance_plot(ax2, loss, "loss", palette)
    ax1.axhline(1 / task.options["values"], color="k", ls=":", lw=1, label="chance")
    ax1.set_ylabel("accuracy (argmax = value)")
    ax2.set_ylabel("loss on the value (nats; floor 0)")
    ax2.axhline(math.log(task.options["values"]), color="k", ls=":", lw=1, label="log(values)")
    ax1.legend(fontsize=8)
    fig.tight_layout()
    wide = acc.pivot(index="model", columns="distance", values="accuracy").add_prefix("acc d=").reset_index()
    return (img_tag(figure_png(fig), f"recall against distance for {spec}") +
            _p("Each query repeats a key stored exactly d tokens earlier; the target is that key's value (floor 0 "
               "nats, chance 1/values). 95% bootstrap intervals over test sequences.") + _table(wide))


def copy_view(out: Path, spec: str, runs: pd.DataFrame, pp: pd.DataFrame) -> str:
    from tasks.probes import copy_distances

    task = study_task(out, spec)
    n_seq = eval_sequences(out)
    rows = []
    for _, r in label_runs(runs).iterrows():
        try:
            losses, mask = run_losses(out, r["run_id"])
        except FileNotFoundError:
            continue
        d = copy_distances(test_windows(task, len(losses), n_seq), task.marker)
        per_seq = (losses * mask).sum(1) / np.maximum(mask.sum(1), 1)
        rows.append(pd.DataFrame({"model": r["model"], "unit": r["run_id"] + ":" + pd.Series(range(len(d))).astype(str),
                                  "distance": d, "loss": per_seq}))
    df = pd.concat(rows, ignore_index=True)
    table = _against_distance(df, "loss")
    palette = dict(zip(dict.fromkeys(df["model"]), sns.color_palette("colorblind", df["model"].nunique())))
    fig, ax = plt.subplots(figsize=(6.5, 4))
    _distance_plot(ax, table, "loss", palette)
    ax.axhline(math.log(task.options["symbols"]), color="k", ls=":", lw=1, label="log(symbols): no copying")
    ax.set_ylabel("mean loss on the repeated segment (nats; floor 0)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    wide = table.pivot(index="model", columns="distance", values="loss").add_prefix("loss d=").reset_index()
    return (img_tag(figure_png(fig), f"copy loss against distance for {spec}") +
            _p(f"A marked segment of {task.options['segment']} random symbols repeats exactly d tokens later; the loss "
               "is on the repeat (floor 0 nats). 95% bootstrap intervals over test sequences.") + _table(wide))


def lag_view(out: Path, spec: str, runs: pd.DataFrame, pp: pd.DataFrame) -> str:
    task = study_task(out, spec)
    T, k = task.context_length, task.options["k"]
    floor = task.entropy_per_position(T)
    pp = label_runs(pp)
    g = pp.groupby(["model", "position"], as_index=False)[["loss", "ci_low", "ci_high"]].mean()
    palette = dict(zip(dict.fromkeys(g["model"]), sns.color_palette("colorblind", g["model"].nunique())))
    fig, ax = plt.subplots(figsize=(8, 4.2))
    for m, part in g.groupby("model", sort=False):
        ax.plot(part["position"] + 1, part["loss"], color=palette[m], lw=1.2, label=m)
        ax.fill_between(part["position"] + 1, part["ci_low"], part["ci_high"], color=palette[m], alpha=0.2, lw=0)
    ax.plot(np.arange(1, T + 1), floor, color="k", ls="--", lw=1.2, label="exact floor")
    ax.axvline(k, color="k", ls=":", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("tokens of context (position + 1)")
    ax.set_ylabel("test loss (nats/token)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    rows = []
    for _, r in label_runs(runs).iterrows():
        try:
            losses, mask = run_losses(out, r["run_id"])
        except FileNotFoundError:
            continue
        excess = losses[:, k - 1:] - floor[None, k - 1:]  # positions whose target depends on a token in view
        mean, lo, hi = cluster_ci(excess.ravel(), mask[:, k - 1:].ravel().astype(float),
                                  np.repeat(np.arange(len(excess)), excess.shape[1]))
        rows.append({"model": r["model"], "seed": r["seed"], "excess over floor (nats)": mean, "low": lo, "high": hi})
    return (img_tag(figure_png(fig), f"lag loss against its floor for {spec}") +
            _p(f"Each token equals the one k={k} back with probability p={task.options['p']}, else is uniform over "
               f"{task.options['vocab']} symbols. Dashed: the exact optimal loss, log({task.options['vocab']}) = "
               f"{floor[0]:.3f} before the lagged token is in view, {floor[-1]:.3f} after. Table: mean excess over the "
               "floor from position k-1 on, 95% bootstrap intervals over sequences; a model that cannot reach k tokens "
               f"back sits about {floor[0] - floor[-1]:.3f} nats above it.") + _table(pd.DataFrame(rows)))


# -- registration ------------------------------------------------------------------------------
def _views():
    from tasks.images import Images
    from tasks.math import Math
    from tasks.probes import Copy, Lag, Recall
    from tasks.video import Video

    return [(Images, "per-pixel loss map", images_view), (Video, "frames", video_view),
            (Math, "answers, interpolation and extrapolation", math_view),
            (Recall, "recall against distance", recall_view), (Copy, "copy against distance", copy_view),
            (Lag, "distance from the exact floor", lag_view)]


def task_sections(out: Path, runs: pd.DataFrame, pp: pd.DataFrame) -> list[tuple[str, str]]:
    """One section per task of the study that has a view of its own."""
    sections = []
    try:  # in the study's own task order
        order = list(yaml.safe_load((Path(out) / "config.yaml").read_text()).get("tasks", []))
    except (OSError, yaml.YAMLError, AttributeError):
        order = []
    for spec in dict.fromkeys([t for t in order if t in set(runs["task"])] + list(runs["task"])):
        try:
            cls = parse_spec(spec, TASKS)[0]
        except Exception:
            continue  # a plugin task that cannot be imported now has no view
        for base, title, view in _views():
            if isinstance(cls, type) and issubclass(cls, base):
                try:
                    body = view(Path(out), spec, runs[runs["task"] == spec], pp[pp["task"] == spec])
                except (UserError, OSError, ValueError, KeyError) as exc:
                    body = _p(f"(view not drawn: {html.escape(type(exc).__name__ + ': ' + str(exc))})")
                sections.append((f"Task {spec}: {title}", body))
                break
    return sections


if task_sections not in SECTIONS:
    SECTIONS.append(task_sections)
