"""The probes' report sections: recall and copy accuracy and loss against the distance of their
answer, the lag probe's distance from its exact floor; and the two helpers that recover an
instance's distance from its tokens alone (:mod:`mnemoscope.tasks.probes` generates the instances).
"""
from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from mnemoscope.measure.bootstrap import LEVEL, bootstrap_indices, cluster_ci, percentile_interval
from mnemoscope.measure.evaluate import greedy_hits
from mnemoscope.render.figures import figure_png, html_table, img_tag, label_runs, model_palette, paragraph
from mnemoscope.measure.history import phase_change, scored_per_window
from mnemoscope.settings import N_BOOT
from mnemoscope.specs import format_count
from mnemoscope.storage.study_folder import StudyFolder
from mnemoscope.contract.windows import scored_windows, window_tokens


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


def half_distance(distances: np.ndarray, accuracy: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """The distance at which recall accuracy first falls below ``threshold``: interpolated on a log2
    axis between the last distance at or above it and the first below (``accuracy`` (..., D) at
    the increasing ``distances`` (D,)). The smallest distance where it starts below; inf where it
    never falls below within the distances measured."""
    acc = np.atleast_2d(np.asarray(accuracy, dtype=float))
    x = np.log2(np.asarray(distances, dtype=float))
    below = acc < threshold
    first = np.where(below.any(-1), below.argmax(-1), -1)
    out = np.full(acc.shape[0], np.inf)
    for i, j in enumerate(first):
        if j == 0:
            out[i] = distances[0]
        elif j > 0:
            a0, a1 = acc[i, j - 1], acc[i, j]
            out[i] = 2 ** (x[j - 1] + (x[j] - x[j - 1]) * (a0 - threshold) / (a0 - a1))
    return out if np.ndim(accuracy) > 1 else out[:1]


def recall_half_table(queries: pd.DataFrame, seed: int = 0, n_boot: int = N_BOOT) -> pd.DataFrame:
    """Per model: the distance at which its recall falls below half (:func:`half_distance`) with a
    {LEVEL}% bootstrap interval over test sequences (whole sequences resampled, every distance
    recomputed from the same draw), its accuracy at the longest distance, and the distances measured."""
    rows = []
    for m, g in queries.groupby("model", sort=False):
        dists = np.sort(g["distance"].unique())
        units, inv = np.unique(g["unit"], return_inverse=True)
        col = np.searchsorted(dists, g["distance"].to_numpy())
        hit = np.zeros((len(units), len(dists)))
        n = np.zeros((len(units), len(dists)))
        np.add.at(hit, (inv, col), g["accuracy"].to_numpy())
        np.add.at(n, (inv, col), 1.0)
        curve = hit.sum(0) / np.maximum(n.sum(0), 1)
        point = half_distance(dists, curve)[0]
        idx = bootstrap_indices(len(units), n_boot, seed)
        draws = half_distance(dists, hit[idx].sum(1) / np.maximum(n[idx].sum(1), 1))
        lo, hi = percentile_interval(np.where(np.isinf(draws), 2.0 * dists[-1], draws), axis=None)
        rows.append({"model": m, "arch": g["arch"].iloc[0], "params": int(g["params"].iloc[0]),
                     "half_distance": point, "half_low": float(lo), "half_high": float(hi),
                     "never_below_half": bool(np.isinf(point)), "longest_distance": int(dists[-1]),
                     "lowest_accuracy": float(curve.min()), "lowest_at": int(dists[int(curve.argmin())]),
                     "shortest_distance": int(dists[0]), "accuracy_shortest": float(hit[:, 0].sum() / max(n[:, 0].sum(), 1)),
                     "accuracy_longest": float(hit[:, -1].sum() / max(n[:, -1].sum(), 1))})
    return pd.DataFrame(rows)


def format_half(r) -> str:
    """'9.1 [8.2, 10.3]', 'never below half up to 128 (lowest 0.97, at 64)', or 'below half from the
    shortest distance, 2 (0.31)'; an interval end past the longest distance (a resample that never
    falls below half) reads '>128'."""
    top = r["longest_distance"]
    end = lambda v: f">{top}" if v > top else f"{v:.1f}"  # noqa: E731
    if r["never_below_half"]:
        return f"never below half up to {top} (lowest {r['lowest_accuracy']:.2f}, at {r['lowest_at']})"
    if r["accuracy_shortest"] < 0.5:
        return f"below half from the shortest distance, {r['shortest_distance']} ({r['accuracy_shortest']:.2f})"
    return f"{r['half_distance']:.1f} [{end(r['half_low'])}, {end(r['half_high'])}]"


def recall_accuracy_figure(task, acc: pd.DataFrame, palette: dict):
    """Recall accuracy against distance, a line per model with its {LEVEL}% intervals, and chance."""
    fig, ax = plt.subplots(figsize=(6.2, 4.4))
    _distance_plot(ax, acc, "accuracy", palette)
    ax.axhline(1 / task.options["values"], color="k", ls=":", lw=1, label="chance")
    ax.axhline(0.5, color="0.5", ls="--", lw=0.8)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("recall accuracy (argmax = value)")
    ax.set_title("recall against the distance of the key", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def recall_headline(task, folder: StudyFolder, runs: pd.DataFrame) -> tuple[bytes, str]:
    """The page's opening figure for a study with recall (``recall_accuracy.png``) and its caption."""
    queries = recall_queries(task, folder, runs)
    png = figure_png(recall_accuracy_figure(task, _against_distance(queries, "accuracy"),
                                            model_palette(label_runs(runs))))
    folder.write_file("recall_accuracy.png", png)
    return png, (f"Recall ({runs['task'].iloc[0]}): the fraction of queries answered with the right value, against how "
                 f"far back the key was stored; {LEVEL}% bootstrap intervals over test sequences; dotted: chance "
                 f"(1/{task.options['values']}); dashed: half.")


def recall_findings(task, folder: StudyFolder, runs: pd.DataFrame) -> str:
    """One sentence per study: where each model's recall falls below half, and the numbers of state
    each carries at the context length (runs.parquet's ``state_size``)."""
    table = recall_half_table(recall_queries(task, folder, runs))
    top = table[table["params"] == table["params"].max()]
    cells = [f"{r['model']} {format_half(r)}" for _, r in top.iterrows()]
    state = runs.set_index("run_id")["state_size"] if "state_size" in runs else pd.Series(dtype=float)
    carried = [f"{m} {int(state[rid]):,}" for m, rid in label_runs(runs)[["model", "run_id"]].itertuples(index=False)
               if rid in state and pd.notna(state[rid])]
    return (f"Recall falls below half at distance (tokens, {LEVEL}% interval): {'; '.join(cells)}."
            + (f" Numbers of state carried per sequence at {task.context_length} tokens: {'; '.join(carried)}."
               if carried else ""))


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
    queries = recall_queries(task, folder, runs)
    fig, acc = recall_figure(task, runs, queries)
    wide = acc.pivot(index="model", columns="distance", values="accuracy").add_prefix("acc d=").reset_index()
    half = recall_half_table(queries)
    wide["falls below half at (tokens)"] = wide["model"].map(dict(zip(half["model"], half.apply(format_half, axis=1))))
    return (img_tag(figure_png(fig), f"recall against distance for {spec}") +
            paragraph("Each query repeats a key stored exactly d tokens earlier; the target is that key's value (floor 0 "
               f"nats, chance 1/values). {LEVEL}% bootstrap intervals over test sequences. <i>Falls below half</i>: the "
               "distance at which accuracy first drops under 0.5, interpolated on the log2 axis between the two distances "
               "around it, with a bootstrap interval over test sequences.") + html_table(wide))


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


# -- the phase change: when a run starts using its history --------------------------------------
def phase_table(task, folder: StudyFolder, runs: pd.DataFrame) -> pd.DataFrame:
    """A row per run that kept steps: :func:`mnemoscope.measure.history.phase_change` at half the task's
    ``no_history_loss`` (the loss of a model that cannot see the answer's source)."""
    rows = []
    for _, r in label_runs(runs).iterrows():
        run = folder.run(r["run_id"])
        per_window = folder.cached_table(r["run_id"], "phase", lambda: scored_per_window(run.steps()))
        if per_window["tokens"].nunique() < 2:
            continue
        change = phase_change(per_window, task.no_history_loss / 2, seed=int(r["seed"]))
        g = per_window.groupby("tokens", sort=True)[["loss_sum", "scored"]].sum()
        curve = [{"tokens": int(t), "loss": float(v["loss_sum"] / max(v["scored"], 1))} for t, v in g.iterrows()]
        rows.append({"model": r["model"], "arch": r["arch"], "run_id": r["run_id"], "seed": r["seed"],
                     "tokens_trained": r.get("tokens_trained"), **change, "curve": curve})
    return pd.DataFrame(rows)


def format_phase(r) -> str:
    n = lambda v: format_count(int(float(f"{v:.3g}")))  # noqa: E731 - three digits: 782k, not 782.343k
    if r["status"] == "crossed":
        return f"at {n(r['tokens'])} training tokens [{n(r['low'])}, {n(r['high'])}]"
    if r["status"] == "before":
        return f"before its first kept step ({n(r['high'])} tokens)"
    budget = format_count(int(float(f"{r['tokens_trained']:.3g}"))) if pd.notna(r.get("tokens_trained")) else "its"
    return (f"none within its {budget} training tokens (scored loss {r['final_loss']:.2f} [{r['final_low']:.2f}, "
            f"{r['final_high']:.2f}] at the end)")


def phase_sentence(task, table: pd.DataFrame) -> str:
    if table.empty:
        return ""
    cells = [f"{r['model']}{' seed ' + str(r['seed']) if table['seed'].nunique() > 1 else ''} {format_phase(r)}"
             for _, r in table.iterrows()]
    return (f"Phase change (the loss on the scored targets falls below {table['threshold'].iloc[0]:.2f} nats, half of "
            f"{task.no_history_name}; interval: the kept steps around it): {'; '.join(cells)}.")


def phase_view(task, folder: StudyFolder, runs: pd.DataFrame) -> str:
    """The scored loss at every kept step against training tokens, the threshold, and each run's phase change."""
    table = phase_table(task, folder, runs)
    if table.empty:
        return ""
    palette = model_palette(label_runs(runs))
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for _, r in table.iterrows():
        c = pd.DataFrame(r["curve"])
        ax.plot(c["tokens"], c["loss"], marker="o", ms=3, color=palette[r["model"]], label=r["model"])
        if r["status"] == "crossed":
            ax.axvspan(r["low"], r["high"], color=palette[r["model"]], alpha=0.15, lw=0)
    ax.axhline(table["threshold"].iloc[0], color="k", ls="--", lw=1, label=f"half of {task.no_history_name}")
    ax.set_xscale("log")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("loss on the scored targets (nats)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    shown = table.assign(**{"phase change": table.apply(format_phase, axis=1)})[["model", "seed", "phase change"]]
    png = figure_png(fig)
    folder.write_file(f"phase_{task.name}.png", png)  # phase_copy.png, phase_recall.png
    return (img_tag(png, f"{runs['task'].iloc[0]}: scored loss through training") +
            paragraph(f"{phase_sentence(task, table)} Each point is a kept step (<code>--history</code>): the mean loss on "
                      "the scored targets of the same test windows; shaded, the interval of each phase change: from the last "
                      f"kept step whose {LEVEL}% interval (bootstrap over windows) lies above the dashed line to the first "
                      "that lies below it. Keep more steps (<code>--history 24</code>) to narrow it.") + html_table(shown))
