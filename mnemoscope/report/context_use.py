"""The report's section "How much history does each architecture use?": effective context,
power-law fits, last significant octave, paired gaps to a baseline, the context ablation and the
length-extrapolation figures, drawn from the tables :mod:`mnemoscope.analysis.analyze` wrote."""
from __future__ import annotations

import html
import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..measure.bootstrap import LEVEL
from ..measure.statistics import (HUBER_DELTA, MIN_FIT_POINTS, N_STARTS, WRONG_FORM_CHI2, format_effective_context, format_gap,
                                  format_interval, short_number)
from ..render.figures import figure_png, html_table, img_tag, legend_below, model_palette, wrap_title
from ..settings import TOLERANCE
from ..specs import format_count, spec_labels
from ..storage.study_folder import StudyFolder


def gap_cells(gaps: pd.DataFrame, index: list[str]) -> pd.DataFrame:
    """Band rows of paired gaps (as in gaps.csv) made wide: a row per ``index``, a column per band,
    each cell the gap [95% interval], * where the interval excludes zero."""
    g = gaps.copy()
    g["cell"] = [format_gap(v, a, b) + (" *" if s else "")
                 for v, a, b, s in zip(g["gap"], g["gap_low"], g["gap_high"], g["significant"])]
    order = list(dict.fromkeys(g["band"]))
    wide = g.pivot_table(index=index, columns="band", values="cell", aggfunc="first", sort=False)
    wide = wide[[b for b in order if b in wide.columns]].reset_index()
    wide.columns.name = None
    return wide


def gap_table(gaps: pd.DataFrame) -> pd.DataFrame:
    """Wide table for the report: a row per task, size and architecture, a column per band."""
    if gaps.empty:
        return gaps
    wide = gap_cells(gaps.assign(arch=gaps["arch"].map(spec_labels(gaps["arch"]))), ["task", "params", "arch"])
    wide["params"] = wide["params"].map(lambda p: format_count(int(p)))
    return wide


def _model_label(df: pd.DataFrame) -> pd.Series:
    multi = df["params"].nunique() > 1
    return df["arch"].map(spec_labels(df["arch"])) + (" " + df["params"].map(lambda p: format_count(int(p))) if multi else "")


def context_figure(context: pd.DataFrame, fits: pd.DataFrame):
    """Loss against the context the model was given, one panel per task: a line per model,
    solid = truncated to n tokens (95% band over targets), dashed = tokens beyond n shuffled,
    dotted = replaced; a dot marks the effective context."""
    df = context.copy()
    df["model"] = _model_label(df)
    tasks = list(dict.fromkeys(df["task"]))
    palette = model_palette(df)
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
        words = {"truncate": "solid: truncated", "shuffle": "dashed: beyond n shuffled", "replace": "dotted: replaced"}
        shown = "; ".join(words[v] for v in words if v in set(d["variant"]))  # only the variants scored
        ax.set_title(wrap_title(f"{task}  ({shown})", 6.2, 9), fontsize=9)
        ax.grid(alpha=0.3)
    legend_below(fig, axes.flat)
    return fig


def extrapolation_figure(ext: pd.DataFrame, bins_per_octave: int = 4):
    """Per-position loss on sequences past the training length (the longest factor scored), one
    panel per task; positions are averaged in bins of 1/``bins_per_octave`` octave so the long
    tail stays readable; the dotted line marks the training length."""
    df = ext.copy()
    df["model"] = _model_label(df)
    df = df[df["factor"] == df.groupby("run_id")["factor"].transform("max")]
    df["bin"] = np.floor(np.log2(df["position"] + 1) * bins_per_octave)
    g = df.groupby(["task", "model", "length", "bin"], as_index=False)[["position", "loss", "ci_low", "ci_high"]].mean()
    tasks = list(dict.fromkeys(g["task"]))
    palette = model_palette(df)
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
        ax.set_title(wrap_title(task, 6.2))
        ax.grid(alpha=0.3)
    legend_below(fig, axes.flat)
    return fig


def _interval(v, lo, hi, fmt="{:.3g}") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    text = fmt.format(v)
    if lo is not None and hi is not None and all(isinstance(x, (int, float)) and math.isfinite(x) for x in (lo, hi)):
        text += f" [{fmt.format(lo)}, {fmt.format(hi)}]"
    return text


def history_table(fits: pd.DataFrame) -> pd.DataFrame:
    """The section's table: architecture x task (x size, seed) -> effective context, alpha, L_inf,
    last significant octave, with intervals."""
    rows = []
    labels = spec_labels(fits["arch"]) if not fits.empty else {}
    for r in fits.to_dict("records"):
        get = lambda k: r.get(k, math.nan)  # noqa: E731
        start, end = get("last_significant_octave_start"), get("last_significant_octave_end")
        octave = f"[{start:.0f}, {end:.0f})" if isinstance(start, (int, float)) and math.isfinite(start) else "none"
        beyond = ""
        if math.isfinite(get("loss_beyond_4x")) or math.isfinite(get("loss_beyond_2x")):
            beyond = " / ".join(f"{get(f'loss_beyond_{f}x'):.3f}" for f in (2, 4) if math.isfinite(get(f"loss_beyond_{f}x")))
        rows.append({"arch": labels[r["arch"]], "task": r["task"], "size": format_count(int(r["params"])),
                     "seed": r["seed"], "T": r["context"], "effective context (tokens)": format_effective_context(r),
                     "shuffled beyond n": format_effective_context(r, "shuffle"),
                     "replaced beyond n": format_effective_context(r, "replace"),
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
    title = "How much history does each architecture use?"
    out = Path(out)
    fits = StudyFolder(out).table("fits.csv")
    if fits.empty:
        return [(title, f"<p>Not analysed yet: run <code>python study.py analyze {html.escape(str(out))}</code>.</p>")]
    context = StudyFolder(out).table("context.parquet")
    ext = StudyFolder(out).table("extrapolation.parquet")
    tol = fits["tolerance"].iloc[0] if "tolerance" in fits else TOLERANCE
    parts = [html_table(history_table(fits))]
    parts.append(
        f"<p><b>Effective context</b> (Khandelwal et al. 2018): the same {int(fits['ablation_targets'].max())} target "
        f"tokens per run are scored with exactly n = 1, 2, 4, ..., T tokens of context from fresh state; it is the "
        f"smallest n from which on the loss stays within {tol:.0%} of the full-context loss. Between the last two "
        "lengths of that grid, n is then bisected on whole tokens (position t sees t+1 tokens, so a lag of k reads "
        "k); a value the grid leaves unresolved reads as its range (e.g. 9-16: somewhere from 9 to 16 tokens; runs "
        f"analysed before the bisection). The interval is a {LEVEL}% bootstrap over targets, widened to the lengths tried: "
        "its low end is the length tried below the lowest replicate, plus one. <i>Shuffled / replaced beyond n</i>: "
        "the full context is kept but its tokens farther than n back are permuted (does their order matter?) or "
        "replaced by text from elsewhere in the test split (does their identity matter?), on the grid of powers of "
        "two only. Cost: every (target, n) pair is its own forward pass, "
        f"{int(fits['ablation_forward_tokens'].median()):,} forward tokens per run (median). "
        "<b>alpha, L_inf</b>: the per-position curve fitted as L(t) = L_inf + A t^-alpha (t = tokens of context; "
        f"log space, Huber delta {short_number(HUBER_DELTA)} summed, L-BFGS-B from {N_STARTS} starts; {LEVEL}% intervals "
        "from refits on sequences resampled). A fit is flagged <i>wrong form</i> when its residuals are more than "
        f"{WRONG_FORM_CHI2:g} times their noise variance (reduced chi^2), <i>not converged</i>, refused with "
        f"fewer than {MIN_FIT_POINTS} points; <i>flat</i> when no octave's gain is significant (then alpha and L_inf "
        "describe noise). <b>Last significant octave</b>: the farthest octave of positions "
        f"[2^j, 2^(j+1)) whose mean loss is below the previous octave's with a {LEVEL}% interval above zero.</p>")
    gaps = StudyFolder(out).table("gaps.csv")
    if not gaps.empty:
        parts.append(f"<h3>Gap to {html.escape(str(gaps['baseline'].iloc[0]))}, paired, by position</h3>"
                     + html_table(gap_table(gaps)) +
                     "<p>Each architecture's test loss minus the baseline's on the same test sequences (nats per "
                     f"token; positive: worse than the baseline), averaged over positions in each band, with {LEVEL}% "
                     "paired bootstrap intervals over sequences; * marks an interval that excludes zero. "
                     "<i>growth</i>: the last band's gap minus the first's (positive: the architecture falls "
                     "further behind as context grows). Table: <code>gaps.csv</code>; another baseline: "
                     "<code>study.py analyze DIR --baseline ARCH</code>.</p>")
    if not context.empty:
        png = figure_png(context_figure(context, fits))
        StudyFolder(out).write_file("context.png", png)
        parts.append(img_tag(png, "loss against available context"))
    if not ext.empty:
        png = figure_png(extrapolation_figure(ext))
        StudyFolder(out).write_file("extrapolation.png", png)
        parts.append(img_tag(png, "length extrapolation") + "<p>Loss at each position of test sequences up to "
                     f"{int(ext['factor'].max())}x the training context, for the models that accept them "
                     "(recurrent and convolutional ones; a transformer only with rotary positions); positions past the "
                     f"dotted line were never trained on. Averaged in quarter-octave bins; bands: {LEVEL}% bootstrap "
                     "intervals over sequences.</p>")
    buckets = StudyFolder(out).table("extrapolation_buckets.parquet")
    if not buckets.empty:
        parts.append("<h3>Loss by position bucket</h3>" + html_table(bucket_table(buckets)) +
                     "<p>The longest windows scored above, their mean loss in buckets of the training length "
                     f"(nats per token, {LEVEL}% bootstrap intervals over sequences), as long-context evaluations report "
                     "it: a model that uses context past its training length keeps falling after the first "
                     "bucket. Table: <code>extrapolation_buckets.parquet</code>.</p>")
    return [(title, "\n".join(parts))]


def bucket_table(buckets: pd.DataFrame) -> pd.DataFrame:
    """A row per run (its longest windows), a column per position bucket."""
    b = buckets[buckets["factor"] == buckets.groupby("run_id")["factor"].transform("max")].copy()
    b["model"] = _model_label(b)
    b["bucket"] = b["bucket_start"].astype(str) + "-" + (b["bucket_end"] - 1).astype(str)
    b["cell"] = [format_interval(v, lo, hi, ".3f") for v, lo, hi in zip(b["loss"], b["ci_low"], b["ci_high"])]
    wide = b.pivot_table(index=["task", "model"], columns="bucket", values="cell", aggfunc="first", sort=False)
    wide = wide[list(dict.fromkeys(b["bucket"]))].reset_index()
    wide.columns.name = None
    return wide