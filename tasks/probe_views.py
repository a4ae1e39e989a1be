"""The probes' report sections: recall and copy accuracy and loss against the distance of their
answer, the lag probe's distance from its exact floor; and the two helpers that recover an
instance's distance from its tokens alone (:mod:`mnemoscope.tasks.probes` generates the instances).
"""
from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from mnemoscope.bootstrap import LEVEL, cluster_ci
from mnemoscope.evaluate import greedy_hits
from mnemoscope.figures import figure_png, html_table, img_tag, label_runs, model_palette, paragraph
from mnemoscope.store import StudyFolder
from mnemoscope.windows import scored_windows, window_tokens


# -- an instance's distance, from its tokens ------------------------------------------------------
def recall_distances(windows: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Key-query distance at each counted position, recovered from the tokens alone.

    ``windows`` (N, T+1) tokens, ``mask`` (N, T) counted targets (position t predicts token t+1,
    so the query key is the input token t). Returns (N, T): t minus the offset of the only
    earlier occurrence of that key, 0 where nothing is counted.
    """
    out = np.zeros(mask.shape, dtype=np.int64)
    for i, t in zip(*np.nonzero(mask)):
        earlier = np.flatnonzero(windows[i, :t] == windows[i, t])
        out[i, t] = t - earlier[-1] if len(earlier) else 0
    return out


def copy_distances(windows: np.ndarray, marker: int) -> np.ndarray:
    """(N,) distance between the two markers of each window (N, T+1)."""
    first = np.argmax(windows == marker, axis=1)
    last = windows.shape[1] - 1 - np.argmax(windows[:, ::-1] == marker, axis=1)
    return last - first



# -- the task's report section ------------------------------------------------------------------
def recall_eval(folder: StudyFolder, run_id: str, task) -> pd.DataFrame:
    model = folder.load_model(run_id)
    split = task.splits()["test"]
    offsets, hits, losses, mask, _ = greedy_hits(model, split, task.context_length, folder.eval_sequences)
    windows = window_tokens(split, offsets, task.context_length)
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


def recall_queries(task, folder: StudyFolder, runs: pd.DataFrame) -> pd.DataFrame:
    """Every scored query of the recall runs ``runs``: a row per query with its run's columns
    (``run_id``, ``arch``, ``task``, ``params``, ``seed``, ``model``), ``sequence``, ``position``,
    ``distance`` (tokens back to its key), ``loss`` (nats), ``correct`` (greedy answer right) and
    ``accuracy`` (the same as 0/1). Kept per run as ``view_recall.parquet``, computed once from the
    stored model."""
    parts = []
    for _, r in label_runs(runs).iterrows():
        df = folder.cached_table(r["run_id"], "recall", lambda: recall_eval(folder, r["run_id"], task))
        parts.append(df.assign(model=r["model"], unit=r["run_id"] + ":" + df["sequence"].astype(str),
                               **{k: r[k] for k in ("run_id", "arch", "task", "params", "seed")}))
    queries = pd.concat(parts, ignore_index=True)
    queries["accuracy"] = queries["correct"].astype(float)
    return queries


def recall_figure(task, runs: pd.DataFrame, queries: pd.DataFrame):
    """(figure, accuracy table): accuracy and loss against distance, a line per model, with 95%
    cluster bootstrap intervals over test sequences."""
    acc, loss = _against_distance(queries, "accuracy"), _against_distance(queries, "loss")
    palette = model_palette(label_runs(runs))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
    _distance_plot(ax1, acc, "accuracy", palette)
    _distance_plot(ax2, loss, "loss", palette)
    ax1.axhline(1 / task.options["values"], color="k", ls=":", lw=1, label="chance")
    ax1.set_ylabel("accuracy (argmax = value)")
    ax2.set_ylabel("loss on the value (nats; floor 0)")
    ax2.axhline(math.log(task.options["values"]), color="k", ls=":", lw=1, label="log(values)")
    ax1.legend(fontsize=8)
    fig.tight_layout()
    return fig, acc


def recall_view(task, folder: StudyFolder, runs: pd.DataFrame, pp: pd.DataFrame) -> str:
    spec = str(runs["task"].iloc[0])
    fig, acc = recall_figure(task, runs, recall_queries(task, folder, runs))
    wide = acc.pivot(index="model", columns="distance", values="accuracy").add_prefix("acc d=").reset_index()
    return (img_tag(figure_png(fig), f"recall against distance for {spec}") +
            paragraph("Each query repeats a key stored exactly d tokens earlier; the target is that key's value (floor 0 "
               f"nats, chance 1/values). {LEVEL}% bootstrap intervals over test sequences.") + html_table(wide))


def copy_view(task, folder: StudyFolder, runs: pd.DataFrame, pp: pd.DataFrame) -> str:
    spec = str(runs["task"].iloc[0])
    n_seq = folder.eval_sequences
    rows = []
    for r, losses, mask in folder.stored_losses(label_runs(runs)):
        d = copy_distances(scored_windows(task, len(losses), n_seq), task.marker)
        per_seq = (losses * mask).sum(1) / np.maximum(mask.sum(1), 1)
        rows.append(pd.DataFrame({"model": r["model"], "unit": r["run_id"] + ":" + pd.Series(range(len(d))).astype(str),
                                  "distance": d, "loss": per_seq}))
    df = pd.concat(rows, ignore_index=True)
    table = _against_distance(df, "loss")
    palette = model_palette(label_runs(runs))
    fig, ax = plt.subplots(figsize=(6.5, 4))
    _distance_plot(ax, table, "loss", palette)
    ax.axhline(math.log(task.options["symbols"]), color="k", ls=":", lw=1, label="log(symbols): no copying")
    ax.set_ylabel("mean loss on the repeated segment (nats; floor 0)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    wide = table.pivot(index="model", columns="distance", values="loss").add_prefix("loss d=").reset_index()
    return (img_tag(figure_png(fig), f"copy loss against distance for {spec}") +
            paragraph(f"A marked segment of {task.options['segment']} random symbols repeats exactly d tokens later; the loss "
               f"is on the repeat (floor 0 nats). {LEVEL}% bootstrap intervals over test sequences.") + html_table(wide))


def lag_view(task, folder: StudyFolder, runs: pd.DataFrame, pp: pd.DataFrame) -> str:
    spec = str(runs["task"].iloc[0])
    T, k = task.context_length, task.options["k"]
    floor = task.entropy_per_position(T)
    pp = label_runs(pp)
    g = pp.groupby(["model", "position"], as_index=False)[["loss", "ci_low", "ci_high"]].mean()
    palette = model_palette(pp)
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
    for r, losses, mask in folder.stored_losses(label_runs(runs)):
        e = task.floor_excess(losses, mask, seed=int(r["seed"]))
        rows.append({"model": r["model"], "seed": r["seed"], "excess over floor (nats)": e["excess_over_floor"],
                     "low": e["excess_over_floor_low"], "high": e["excess_over_floor_high"]})
    return (img_tag(figure_png(fig), f"lag loss against its floor for {spec}") +
            paragraph(f"Each token equals the one k={k} back with probability p={task.options['p']}, else is uniform over "
               f"{task.options['vocab']} symbols. Dashed: the exact optimal loss, log({task.options['vocab']}) = "
               f"{floor[0]:.3f} before the lagged token is in view, {floor[-1]:.3f} after. Table: mean excess over the "
               f"floor from position k-1 on, {LEVEL}% bootstrap intervals over sequences; a model that cannot reach k tokens "
               f"back sits about {floor[0] - floor[-1]:.3f} nats above it.") + html_table(pd.DataFrame(rows)))
