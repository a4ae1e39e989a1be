"""The report's section "How context use grows with training": the per-position curves at the kept
steps, the in-context learning score and the effective context against training tokens, the law
C(D) = a D^g and the 4x crossing, drawn from the tables of :mod:`mnemoscope.measure.history` and
:mod:`mnemoscope.analysis.growth`. :func:`comparison_section` draws the same for studies side by side."""
from __future__ import annotations

import html
import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm

from ..analysis.growth import BAD_FIT_RMS, MIN_POINTS, RATIO
from ..measure.bootstrap import LEVEL
from ..measure.history import ICL_BAND, ICL_EARLY, ICL_LATE, STILL_LEARNING, still_learning
from ..measure.statistics import format_effective_context
from ..render.figures import STUDY_STYLES, arch_palette, figure_png, html_table, img_tag
from ..specs import format_count, spec_labels
from ..storage.study_folder import StudyFolder

TITLE = "How context use grows with training"
BINS_PER_OCTAVE = 4


def _tokens(n: float) -> str:
    """Training tokens to 3 significant digits: 164k, 20.0M."""
    if n != n:
        return ""
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.0f}"


def _interval(v: float, lo: float, hi: float, digits: int = 2) -> str:
    if v != v:
        return ""
    return f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def curves_figure(history: pd.DataFrame, x: str = "position"):
    """A panel per task and architecture: the per-position test loss at each kept step, coloured by
    the training tokens seen (log scale), positions averaged in quarter-octave bins. ``x``:
    ``position`` (tokens of context) or ``context_bytes``."""
    d = history.dropna(subset=["loss"]).copy()
    d["label"] = d["arch"].map(spec_labels(d["arch"]))
    if d["params"].nunique() > 1:
        d["label"] += " " + d["params"].map(lambda p: format_count(int(p)))
    d["bin"] = np.floor(np.log2(d["position"] + 1) * BINS_PER_OCTAVE)
    d["x"] = d["position"] + 1 if x == "position" else d["context_bytes"]
    d = d.dropna(subset=["x"])  # in bytes: only the tasks whose tokens are text have a panel
    panels = list(dict.fromkeys(zip(d["task"], d["label"])))
    cols = max(1, min(3, len(panels)))
    rows = max(1, math.ceil(len(panels) / cols))
    # constrained layout: no panel's title over the axis labels of the panel above, the colour bar beside
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.9 * rows), squeeze=False, sharey=False,
                             layout="constrained")
    norm = LogNorm(vmin=max(1, d["tokens"].min()), vmax=max(2, d["tokens"].max()))
    cmap = plt.get_cmap("viridis")
    for ax, (task, label) in zip(axes.flat, panels):
        part = d[(d["task"] == task) & (d["label"] == label)]
        g = part.groupby(["step", "tokens", "bin"], as_index=False)[["x", "loss"]].mean()  # seeds
        for (step, tokens), curve in g.groupby(["step", "tokens"]):
            ax.plot(curve["x"], curve["loss"], color=cmap(norm(tokens)), lw=1.3)
        ax.set_xscale("log", base=2)
        ax.set_title(f"{label} on {task}", fontsize=10)
        ax.set_xlabel("tokens of context" if x == "position" else "bytes of context")
        ax.set_ylabel("test loss (nats/token)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    sm = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(sm, ax=axes.ravel().tolist(), label="training tokens", shrink=0.9)
    return fig


def _lines(ax, df: pd.DataFrame, y: str, colors: dict, styles: dict | None = None):
    for (study, arch, label), part in df.groupby(["study", "arch", "label"], sort=False):
        part = part.sort_values("tokens")
        ls = (styles or {}).get(study, "-")
        ax.plot(part["tokens"], part[y], color=colors[arch], ls=ls, marker="o", ms=3, lw=1.4, label=label)
        ax.fill_between(part["tokens"], part[f"{y}_low"], part[f"{y}_high"], color=colors[arch], alpha=0.15, lw=0)
    ax.set_xscale("log")
    ax.set_xlabel("training tokens")
    ax.grid(alpha=0.3)


def growth_figure(growth: pd.DataFrame, fits: pd.DataFrame | None = None, styles: dict | None = None):
    """A row per task: effective context (log) against training tokens, a line per architecture with
    its 95% band and, dashed, its law; beside it the in-context learning score."""
    d = growth.copy()
    if "study" not in d:
        d["study"] = ""
    d["label"] = d["arch"].map(spec_labels(d["arch"]))
    if d["params"].nunique() > 1:
        d["label"] += " " + d["params"].map(lambda p: format_count(int(p)))
    if d["study"].nunique() > 1:
        d["label"] += " (" + d["study"] + ")"
    d = d.rename(columns={"icl_score": "icl", "icl_low": "icl_low", "icl_high": "icl_high"})
    tasks = list(dict.fromkeys(d["task"]))
    colors = arch_palette(d["arch"])
    has_context = "effective_context" in d and d["effective_context"].notna().any()
    fig, axes = plt.subplots(len(tasks), 2, figsize=(12.4, 4.2 * len(tasks)), squeeze=False)
    for row, task in zip(axes, tasks):
        part = d[d["task"] == task]
        ax = row[0]
        if has_context:
            _lines(ax, part.dropna(subset=["effective_context"]), "effective_context", colors, styles)
            ax.set_yscale("log", base=2)
            if fits is not None and not fits.empty:
                for f in fits[(fits["task"] == task) & fits["g"].notna()].to_dict("records"):
                    D = np.geomspace(f["tokens_min"], f["tokens_max"], 20)
                    ax.plot(D, f["a"] * D ** f["g"], color=colors.get(f["arch"], "gray"), ls="--", lw=0.9)
        else:
            ax.text(0.5, 0.5, "no kept weights: no effective context", ha="center", va="center", transform=ax.transAxes)
        ax.set_ylabel("effective context (tokens)")
        ax.set_title(f"{task}: effective context (dashed: C = a D^g)", fontsize=10)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="upper left")
        ax = row[1]
        _lines(ax, part.dropna(subset=["icl"]), "icl", colors, styles)
        if part["icl"].isna().all():
            ax.text(0.5, 0.5, "not defined: no window has a scored target\nat both lengths of context compared",
                    ha="center", va="center", transform=ax.transAxes)
        ax.axhline(0, color="gray", lw=0.8)
        ax.set_ylabel("in-context learning score (nats)")
        ax.set_title(f"{task}: in-context learning score", fontsize=10)
    fig.tight_layout()
    return fig


def icl_undefined(growth: pd.DataFrame) -> list[str]:
    """The tasks whose in-context learning score is defined at no kept step of any run: no test
    window has a counted target both around ``early`` and around ``late`` tokens of context (a task
    that scores some targets per window, e.g. copy's last ones)."""
    if "icl_score" not in growth or growth.empty:
        return []
    return [task for task, g in growth.groupby("task", sort=False) if g["icl_score"].isna().all()]


def icl_undefined_text(task: str, growth: pd.DataFrame) -> str:
    g = growth[growth["task"] == task]
    early = int(g["icl_early"].iloc[0]) if "icl_early" in g else ICL_EARLY
    late = int(g["icl_late"].iloc[0]) if "icl_late" in g else ICL_LATE
    return (f"The in-context learning score is not defined on {task}: it compares each window's loss around {late} "
            f"tokens of context with its loss around {early}, and no test window of {task} has a scored target in "
            f"both places (the task scores only some targets of a window), so its panel and column are empty.")


def fits_table(fits: pd.DataFrame) -> pd.DataFrame:
    if fits.empty:
        return fits
    return pd.DataFrame({
        "task": fits["task"], "architecture": fits["arch"].map(spec_labels(fits["arch"])),
        "size": fits["params"].map(lambda p: format_count(int(p))), "seed": fits["seed"],
        "kept steps fitted": fits["n_points"],
        "training tokens": [f"{_tokens(a)}-{_tokens(b)}" for a, b in zip(fits["tokens_min"], fits["tokens_max"])],
        f"exponent g [{LEVEL}%]": [_interval(g, lo, hi) for g, lo, hi in zip(fits["g"], fits["g_low"], fits["g_high"])],
        "a": [f"{a:.3g}" if a == a else "" for a in fits["a"]],
        "rms log residual": [f"{r:.2f}" if r == r else "" for r in fits["rms_log_residual"]],
        "law": [s + (", reaches the whole context" if c else "") for s, c in zip(fits["fit_status"], fits["capped"])]})


def steps_table(growth: pd.DataFrame) -> pd.DataFrame:
    t = pd.DataFrame({"task": growth["task"], "architecture": growth["arch"].map(spec_labels(growth["arch"])),
                      "size": growth["params"].map(lambda p: format_count(int(p))), "step": growth["step"],
                      "training tokens": growth["tokens"].map(_tokens), "test loss (nats/token)": growth["loss"].round(4),
                      f"in-context learning score [{LEVEL}%]": [_interval(v, a, b, 3) if v == v else "not defined"
                                                          for v, a, b in zip(growth["icl_score"], growth["icl_low"],
                                                                             growth["icl_high"])]})
    if "effective_context" in growth:
        t[f"effective context, tokens [{LEVEL}%]"] = [format_effective_context(r) for r in growth.to_dict("records")]
        if growth["effective_context_bytes"].notna().any():
            t["in bytes"] = [
                "" if v != v else f"{v:.0f} [{a:.0f}, {b:.0f}]" for v, a, b in
                zip(growth["effective_context_bytes"], growth["effective_context_bytes_low"],
                    growth["effective_context_bytes_high"])]
    return t


def findings(growth: pd.DataFrame, fits: pd.DataFrame, crossings: pd.DataFrame) -> str:
    """A few sentences from the tables: where each run's effective context starts and ends, its
    law, and the 4x crossing."""
    out = []
    if "effective_context" in growth:
        for (task, arch, params, seed), g in growth.dropna(subset=["effective_context"]).groupby(
                ["task", "arch", "params", "seed"], sort=False):
            g = g.sort_values("tokens")
            a, b = g.iloc[0], g.iloc[-1]
            f = fits[(fits["task"] == task) & (fits["arch"] == arch) & (fits["params"] == params)
                     & (fits["seed"] == seed)] if not fits.empty else fits
            law = ""
            if not f.empty and f["g"].notna().iloc[0]:
                f = f.iloc[0]
                law = f"; C ~ D^{f['g']:.2f} [{f['g_low']:.2f}, {f['g_high']:.2f}] ({f['fit_status']})"
            # the one format of an effective context (the findings', the summary's): the last kept
            # step is the final model, and reads as the final analysis does
            out.append(f"{spec_labels([arch])[arch]} on {task}: effective context "
                       f"{format_effective_context(a.to_dict())} tokens after {_tokens(a['tokens'])} training "
                       f"tokens, {format_effective_context(b.to_dict())} after {_tokens(b['tokens'])}{law}.")
    for c in crossings.to_dict("records") if not crossings.empty else []:
        first, other = spec_labels([c["arch"]])[c["arch"]], spec_labels([c["other"]])[c["other"]]
        if c["tokens"] != c["tokens"]:
            out.append(f"On {c['task']}, {first}'s law does not grow faster than {other}'s: its effective context "
                       f"never becomes {RATIO:g} times {other}'s on these laws.")
            continue
        interval = (f"[{_tokens(c['tokens_low'])}, {_tokens(c['tokens_high'])}]" if c["tokens_low"] == c["tokens_low"]
                    else "[interval undefined]")
        where = ("inside the trained range" if c["extrapolation"] <= 1 else
                 f"{c['extrapolation']:.3g} times the most tokens trained ({_tokens(c['tokens_max'])}): an "
                 f"extrapolation of the laws, not a measurement")
        out.append(f"On {c['task']}, {first}'s effective context would be {RATIO:g} times {other}'s after "
                   f"{_tokens(c['tokens'])} {interval} training tokens ({c['defined']:.0%} of the bootstrap replicates "
                   f"have a crossing), {where}.")
    return " ".join(out)


def _method(growth: pd.DataFrame) -> str:
    early = int(growth["icl_early"].iloc[0]) if "icl_early" in growth and len(growth) else ICL_EARLY
    late = int(growth["icl_late"].iloc[0]) if "icl_late" in growth and len(growth) else ICL_LATE
    return (f"<p>At kept steps spaced evenly in log training tokens, each run scored the same test windows as its "
            f"final evaluation at every position and kept its weights (<code>runs/&lt;id&gt;/history/</code>; "
            f"<code>--history N</code>, <code>--no-keep-weights</code>). <b>In-context learning score</b> (Olsson et "
            f"al. 2022): the mean loss at {late} tokens of context minus at {early} (each over the positions within "
            f"{ICL_BAND:.0%} of it; Olsson's {ICL_LATE} and {ICL_EARLY}, scaled down where the context is shorter), per window, with a "
            f"{LEVEL}% bootstrap interval over windows; negative means later tokens are predicted better. <b>Effective "
            f"context</b>: the truncation ablation of the final analysis on each kept step's weights. <b>Law</b>: "
            f"C(D) = a D^g fitted in log-log space over the later half of the kept steps (with {2 * MIN_POINTS} or more; those whose "
            f"full context is not beaten by a truncated one); the interval of g refits bootstrap replicates of the ablation's targets (the same "
            f"targets at every step). Flagged <i>flat</i> when C does not move, <i>bad fit</i> when the rms log "
            f"residual exceeds {BAD_FIT_RMS:g}. <b>Crossing</b>: the training tokens at which the first architecture's law "
            f"gives {RATIO:g} times another's effective context, from the same replicates, paired. Tables: "
            f"<code>history.parquet</code>, <code>growth.parquet</code>, <code>growth_fits.csv</code>, "
            f"<code>growth_crossings.csv</code>.</p>")


def still_learning_lines(out: Path, runs: pd.DataFrame) -> list[str]:
    """One line per run still changing fast at its last kept step (:func:`mnemoscope.measure.history.still_learning`)."""
    fast = still_learning(StudyFolder(out).table("history_steps.parquet"))
    flagged = runs[runs["run_id"].isin(fast)] if fast else runs.iloc[:0]
    if len(flagged) > 2:  # many: one line, not a wall of the same sentence
        rates = [fast[i] for i in flagged["run_id"]]
        return [f"note: {len(flagged)} of {len(runs)} runs are still learning at their last kept step (test loss "
                f"falling {min(rates):.1%} to {max(rates):.1%} per doubling of training tokens): their numbers depend "
                f"on where training stopped; more --tokens, or --seeds, say by how much"]
    lines = []
    for r in flagged.to_dict("records"):
        lines.append(f"note: {spec_labels([r['arch']])[r['arch']]} on {r['task']} ({format_count(int(r['params']))}, seed "
                     f"{r['seed']}) is still learning at its last kept step (test loss falling "
                     f"{fast[r['run_id']]:.1%} per doubling of training tokens): its numbers depend on where training "
                     f"stopped; more --tokens, or --seeds, say by how much")
    return lines


def growth_tables(out: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(history, growth, fits, crossings) of a study, as the section draws them: ``growth.parquet``
    (the kept steps with their effective context), else ``history_steps.parquet`` (kept steps not
    analysed yet); each empty where the study has none."""
    folder = StudyFolder(out)
    growth = folder.table("growth.parquet")
    if growth.empty:
        growth = folder.table("history_steps.parquet")
    return (folder.table("history.parquet"), growth, folder.table("growth_fits.csv"),
            folder.table("growth_crossings.csv"))


def report_section(out: Path, runs: pd.DataFrame, pp: pd.DataFrame) -> list[tuple[str, str]]:
    """The section, where the runs kept a history (none otherwise)."""
    history, growth, fits, crossings = growth_tables(out)
    if history.empty:
        return []
    parts = []
    text = " ".join([findings(growth, fits, crossings), *(icl_undefined_text(t, growth) for t in icl_undefined(growth))])
    if text.strip():
        parts.append(f"<p>{html.escape(text.strip())}</p>")
    notes = still_learning_lines(out, runs)
    if notes:
        parts.append("<p>" + "<br>".join(html.escape(n.removeprefix("note: ")) for n in notes) +
                     f" (flagged where the loss falls more than {STILL_LEARNING:.0%} per doubling).</p>")
    png = figure_png(growth_figure(growth, fits))
    StudyFolder(out).write_file("growth.png", png)
    parts.append(img_tag(png, "effective context and in-context learning score against training tokens"))
    parts.append(img_tag(figure_png(curves_figure(history)), "per-position loss at each kept step"))
    if history["context_bytes"].notna().any():
        parts.append(img_tag(figure_png(curves_figure(history, "context_bytes")),
                             "per-position loss at each kept step, against bytes of context"))
    if not fits.empty:
        parts.append("<h3>The law C(D) = a D^g per run</h3>" + html_table(fits_table(fits)))
    parts.append("<details><summary>Every kept step</summary>" + html_table(steps_table(growth)) + "</details>")
    parts.append(_method(growth))
    return [(TITLE, "\n".join(parts))]


def comparison_growth(studies: list[tuple[str, Path]]) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(growth, fits, line style by study) of studies side by side, each table with a ``study``
    column; growth is empty where no study kept a history."""
    growths, fits = [], []
    for label, out in studies:
        _, g, f, _ = growth_tables(out)
        if not g.empty:
            growths.append(g.assign(study=label))
        if not f.empty:
            fits.append(f.assign(study=label))
    growth = pd.concat(growths, ignore_index=True) if growths else pd.DataFrame()
    fit = pd.concat(fits, ignore_index=True) if fits else pd.DataFrame()
    styles = {label: STUDY_STYLES[i % len(STUDY_STYLES)] for i, (label, _) in enumerate(studies)}
    return growth, fit, styles


def comparison_section(studies: list[tuple[str, Path]]) -> list[tuple[str, str]]:
    """The same section for studies side by side (``study.py compare``): one line per study and
    architecture (line style: the study), where at least one study kept a history."""
    growth, fit, styles = comparison_growth(studies)
    if growth.empty:
        return []
    parts = [img_tag(figure_png(growth_figure(growth, None, styles)), "context use through training, by study")]
    if not fit.empty:
        parts.append(html_table(fits_table(fit).assign(study=fit["study"].values)))
    parts.append("<p>Line style: the study; colour: the architecture. How each is measured: the section of the "
                 "same name in each study's report.</p>")
    return [(TITLE, "\n".join(parts))]
