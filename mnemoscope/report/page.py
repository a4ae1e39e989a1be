"""The report page: plots and one self-contained HTML file, built only from a study's stored
tables (``study.py report DIR``).

The page lists the sections it shows (``SECTIONS``): its own headline sections, then how much
history each architecture uses (:mod:`mnemoscope.report.context_use`), scaling
(:mod:`mnemoscope.report.scaling`), and each task's own view (``Task.report_view``).
"""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Callable

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import yaml

from . import growth as report_growth, context_use as report_history, scaling as report_scaling
from ..analysis.analyze import paired_runs
from ..contract.task import DESCRIBED_DOCUMENTS, Task
from ..contract.text_task import TextTask, corpus_and_tokenization, tokens_are
from ..errors import UserError
from ..measure.bootstrap import LEVEL
from ..measure.statistics import format_effective_context, format_gap, paired_gap_curve, single_positions
from ..registry import TASKS
from ..render.figures import (arch_labels_colors, arch_palette, draw_curves, figure_png, html_table, img_tag, legend_below,
                              page_html, paragraph, wrap_title)
from ..specs import format_count, parse_spec, spec_labels
from ..storage.migrations import windows_inside_documents
from ..storage.study_folder import StudyFolder
from ..study.runner import Study, mixed_data
from .findings import findings, findings_html, findings_lines, flags


def load_tables(out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    out = Path(out)
    if not out.is_dir():
        raise UserError(f"no study folder at {out}")
    folder = StudyFolder(out)
    return folder.runs(), folder.per_position()


def report_tables(out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs, per_position) as the report draws them: the tasks in the study's order (its panels'
    order), each table sorted stably by it. Every figure of the page, and ``mnemoscope.load(DIR).plot``,
    is drawn from these."""
    out = Path(out)
    runs, pp = load_tables(out)
    if pp.empty:
        raise UserError(f"{out} has no finished runs to report on")
    order = {t: i for i, t in enumerate(StudyFolder(out).config().get("tasks") or [])}  # panels in the study's order
    by_task = lambda s: s.map(order).fillna(len(order))  # noqa: E731
    runs, pp = (t.sort_values("task", key=by_task, kind="stable") for t in (runs, pp))
    return runs, pp


BINS_PER_OCTAVE = 4


def _curves_panel(ax, g: pd.DataFrame, x: str, style: str, palette: dict, title: str, xlabel: str, ylabel: str):
    """One panel of per-position curves: a line per architecture (hue) and ``style``, each with its
    band from the runs' own intervals, on a log2 axis of context."""
    sns.lineplot(data=g, x=x, y="loss", hue="arch", style=style, palette=palette, ax=ax, errorbar=None, linewidth=1.4)
    for (arch, _), part in g.groupby(["arch", style]):
        ax.fill_between(part[x], part["ci_low"], part["ci_high"], color=palette[arch], alpha=0.2, lw=0)
    ax.set_xscale("log", base=2)
    ax.set_title(wrap_title(title, 6.2))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def per_position_figure(pp: pd.DataFrame, runs: pd.DataFrame | None = None, bins_per_octave: int | None = BINS_PER_OCTAVE):
    """One facet per task: loss against position (log x), a line per architecture, a dash style
    per size, and 95% bootstrap bands (over sequences) from the stored ci columns.

    With ``bins_per_octave``, positions are averaged in bins of that fraction of an octave (the
    first ``single_positions`` stay single, :func:`mnemoscope.measure.statistics.position_bins`): one point per position makes many lines unreadable at
    T >= 256. A bin's band is the mean of its positions' intervals, wider than the interval of
    the bin's mean would be. ``None``: every position."""
    pp = pp.dropna(subset=["loss"]).copy()
    if bins_per_octave:
        pp["bin"] = np.floor(np.log2(pp["position"] + 1) * bins_per_octave)
        keys = ["run_id", "arch", "task", "params", "seed", "bin"]
        pp = pp.groupby(keys, as_index=False, sort=False)[["position", "loss", "ci_low", "ci_high"]].mean()
    pp["context tokens"] = pp["position"] + 1  # position t has t+1 tokens of context
    labels, palette = arch_labels_colors(list(runs["arch"]) + list(pp["arch"]) if runs is not None else pp["arch"])
    pp["arch"] = pp["arch"].map(labels)  # file.py:Class -> Class, as in every figure of the study
    pp["size"] = pp["params"].map(lambda p: format_count(int(p)))
    tasks = list(dict.fromkeys(pp["task"]))
    n = max(1, len(tasks))
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 4.4 * rows), squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        d = pp[pp["task"] == task]
        # average seeds of one arch x size; bands from the runs' own intervals
        g = d.groupby(["arch", "size", "params", "context tokens"], as_index=False)[["loss", "ci_low", "ci_high"]].mean()
        _curves_panel(ax, g, "context tokens", "size", palette, task, "tokens of context (position + 1)",
                      "test loss (nats/token)")
    for ax in list(axes.flat)[len(tasks):]:
        ax.set_visible(False)
    legend_below(fig, axes.flat)
    return fig


def gap_baseline(out: Path, runs: pd.DataFrame) -> str | None:
    """The architecture the study's gaps are to: gaps.csv's baseline, else the study's first."""
    gaps = StudyFolder(out).table("gaps.csv")
    order = list(StudyFolder(out).config().get("archs") or []) + list(runs["arch"])
    if not gaps.empty and "baseline" in gaps:
        order.insert(0, str(gaps["baseline"].iloc[0]))
    return next((a for a in order if a in set(runs["arch"])), None)


def gap_figure(out: Path, runs: pd.DataFrame, baseline: str):
    """Each run's loss minus the ``baseline`` architecture's run of the same task, size and seed on
    the same test sequences, against context, a panel per task, with 95% paired bootstrap bands
    over sequences: the quantity a comparison is about, readable with ten curves and more.
    None when no run pairs (one architecture, or losses not stored)."""
    rows = []
    multi = {c: runs[c].nunique() > 1 for c in ("params", "seed")}
    labels, _ = arch_labels_colors(runs["arch"])
    try:
        for r, losses, base, mask in paired_runs(out, runs, baseline):
            c = paired_gap_curve(losses, base, mask, seed=int(r["seed"]))
            label = labels[r["arch"]] + (f" {format_count(int(r['params']))}" if multi["params"] else "") + (
                f" seed {r['seed']}" if multi["seed"] else "")
            rows.append(c.assign(key=r["run_id"], label=label, arch=r["arch"], study="", task=r["task"], x=c["position"] + 1))
    except OSError:
        return None
    if not rows:
        return None
    df = pd.concat(rows, ignore_index=True)
    tasks = list(dict.fromkeys(df["task"]))
    cols = min(len(tasks), 3)
    fig, axes = plt.subplots(-(-len(tasks) // cols), cols, figsize=(6.2 * cols, 4.4 * -(-len(tasks) // cols)), squeeze=False)
    palette = arch_palette(runs["arch"])
    for ax, task in zip(axes.flat, tasks):
        ax.axhline(0, color="k", lw=1)
        draw_curves(ax, df[df["task"] == task], palette, y="gap")
        ax.set_title(wrap_title(f"{task}: minus {labels.get(baseline, baseline)}", 6.2), fontsize=10)
        ax.set_xlabel("tokens of context (position + 1)")
        ax.set_ylabel("gap to the baseline (nats/token)")
    for ax in list(axes.flat)[len(tasks):]:
        ax.set_visible(False)
    legend_below(fig, axes.flat)
    return fig


def bytes_figure(pp: pd.DataFrame, bins_per_octave: int = BINS_PER_OCTAVE, archs=None):
    """Loss in bits per byte against bytes of context, one facet per corpus: the tokenizations of
    one corpus (``text``, ``text:bpe=1024``) share a panel, a line style each. Positions are
    binned as in :func:`per_position_figure`; a bin's value is its mean loss over its mean target
    bytes (bits per byte of the bin), its band the runs' intervals scaled alike. None when no
    task's tokens are text."""
    pp = pp.dropna(subset=["loss", "context_bytes", "target_bytes"]).copy()
    if pp.empty:
        return None
    pp["bin"] = np.floor(np.log2(pp["position"] + 1) * bins_per_octave)
    keys = ["run_id", "arch", "task", "params", "seed", "bin"]
    pp = pp.groupby(keys, as_index=False, sort=False)[["loss", "ci_low", "ci_high", "context_bytes", "target_bytes"]].mean()
    split = pp["task"].map(corpus_and_tokenization)
    pp["corpus"], pp["tokens"] = split.str[0], split.str[1]
    if pp["params"].nunique() > 1:
        pp["tokens"] = pp["tokens"] + ", " + pp["params"].map(lambda p: format_count(int(p)))
    scale = 1 / (pp["target_bytes"] * np.log(2))
    for col in ("loss", "ci_low", "ci_high"):
        pp[col] = pp[col] * scale
    corpora = list(dict.fromkeys(pp["corpus"]))
    cols = min(len(corpora), 3)
    rows = (len(corpora) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 4.4 * rows), squeeze=False)
    labels, palette = arch_labels_colors(pp["arch"] if archs is None else archs)  # one label, one colour
    pp["arch"] = pp["arch"].map(labels)
    for ax, corpus in zip(axes.flat, corpora):
        d = pp[pp["corpus"] == corpus]
        g = d.groupby(["arch", "tokens", "bin"], as_index=False)[["loss", "ci_low", "ci_high", "context_bytes"]].mean()
        _curves_panel(ax, g, "context_bytes", "tokens", palette, corpus, "bytes of context (mean over the test windows)",
                      "test loss (bits/byte)")
    for ax in list(axes.flat)[len(corpora):]:
        ax.set_visible(False)
    legend_below(fig, axes.flat)
    return fig


def layers_of(arch_config: str | None) -> str:
    """A run's depth and, for a hybrid, its kinds of layer, from its recorded config: '4 (3
    linear_attention, 1 full_attention)'."""
    try:
        config = json.loads(arch_config or "{}")
    except ValueError:
        return ""
    types = config.get("layer_types")
    if isinstance(types, list) and types:
        kinds = ", ".join(f"{types.count(k)} {k}" for k in dict.fromkeys(map(str, types)))
        return f"{len(types)} ({kinds})"
    depth = next((config[k] for k in ("n_layer", "num_hidden_layers", "n_layers", "num_layers") if k in config), None)
    return "" if depth is None else str(depth)


def headline_table(out: Path, runs: pd.DataFrame) -> pd.DataFrame:
    """A row per run, in words and units: size, tokens trained, test loss, the gain over the last
    octave of positions with its interval, and the run's flag (diverged, worse than uniform)."""
    labels = spec_labels(runs["arch"])
    flag = flags(out, runs)
    rows = []
    for (_, r), f in zip(runs.iterrows(), flag):
        row = {"architecture": labels[r["arch"]], "task": r["task"], "size": format_count(int(r["params"])),
               "seed": r["seed"], "parameters (non-embedding)": f"{int(r['achieved_params']):,}"}
        if "arch_config" in r and layers_of(r["arch_config"]):
            row["layers"] = layers_of(r["arch_config"])
        if "state_size" in r and pd.notna(r["state_size"]):
            row["state (numbers carried)"] = f"{int(r['state_size']):,}"
        row["tokens trained"] = format_count(int(float(f"{r['tokens_trained']:.3g}"))) if pd.notna(r.get("tokens_trained")) else ""
        row["test loss (nats/token)"] = f"{r['test_loss']:.3f}"
        if "last_octave_gain" in r and pd.notna(r["last_octave_gain"]):
            row[f"gain over the last octave (nats) [{LEVEL}%]"] = format_gap(r["last_octave_gain"], r["last_octave_gain_low"],
                                                                       r["last_octave_gain_high"])
            row["still falling?"] = ("no interval" if pd.isna(r["last_octave_gain_low"]) else
                                     "yes" if r["last_octave_gain_low"] > 0 else "no")
        row["status"] = f or "ok"
        rows.append(row)
    return pd.DataFrame(rows)


def study_tasks(out: Path, runs: pd.DataFrame) -> dict[str, Task]:
    """The study's tasks that draw something of their own (a view, a headline, a finding), built from
    its config.yaml, in the study's task order; a plugin that cannot be imported now is left out."""
    order = list(StudyFolder(out).config().get("tasks") or [])
    try:
        study = Study.from_folder(out)
    except UserError:
        return {}
    tasks = {}
    for spec in dict.fromkeys([t for t in order if t in set(runs["task"])] + list(runs["task"])):
        try:
            cls = parse_spec(spec, TASKS)[0]
            if isinstance(cls, type) and issubclass(cls, Task):
                tasks[spec] = study.task(spec)
        except Exception:  # noqa: BLE001 - a plugin that cannot be imported or built draws nothing
            continue
    return tasks


def task_findings(out: Path, runs: pd.DataFrame) -> dict[str, str]:
    """spec -> the sentence a task adds to the findings (``Task.report_findings``)."""
    sentences = {}
    for spec, task in study_tasks(out, runs).items():
        try:
            sentences[spec] = task.report_findings(StudyFolder(out), runs[runs["task"] == spec])
        except (UserError, OSError, ValueError, KeyError) as exc:
            sentences[spec] = f"(not measured: {type(exc).__name__}: {exc})"
    return sentences


def findings_section(out: Path, runs: pd.DataFrame, pp: pd.DataFrame) -> list[tuple[str, str]]:
    return [("Findings", findings_html(findings(out, runs, task_findings(out, runs))) + paragraph(
        "Generated from this study's tables (<code>runs.parquet</code>, <code>fits.csv</code>, <code>gaps.csv</code>): "
        f"gaps are paired on the same test sequences with {LEVEL}% bootstrap intervals over sequences (a gap that <i>loses "
        "ground</i> rises with context: the model falls further behind, or its lead shrinks); effective context: the "
        "tokens of context from which a run's loss stays within the tolerance of its full-context loss. Where runs of "
        "several sizes exist, the sentences speak of the largest. The figures and tables below give every run."))]


def curves_section(out: Path, runs: pd.DataFrame, pp: pd.DataFrame) -> list[tuple[str, str]]:
    """The per-position curves (``per_position.png``) and the paired gaps to the baseline beside or
    under them (``gap_per_position.png``)."""
    png = figure_png(per_position_figure(pp, runs))
    StudyFolder(out).write_file("per_position.png", png)
    figures = [img_tag(png, "per-position loss")]
    wide = ' style="flex-basis:100%"' if runs["task"].nunique() > 1 else ""  # side by side: one panel each
    opening = ""
    headline = headline_figure(out, runs)
    if headline is not None:  # the page opens with it, that task's per-position loss beside it
        spec, head_png, caption = headline
        beside = figure_png(per_position_figure(pp[pp["task"] == spec], runs[runs["task"] == spec]))
        opening = ('<div class="row">' + f"<div>{img_tag(head_png, caption)}<p>{html.escape(caption)}</p></div>" +
                   f"<div>{img_tag(beside, f'per-position loss on {spec}')}<p>The loss on {html.escape(spec)} at each "
                   "position (below: every task, and the gaps).</p></div></div>")
    baseline = gap_baseline(out, runs)
    fig = gap_figure(out, runs, baseline) if baseline else None
    if fig is not None:
        gap_png = figure_png(fig)
        StudyFolder(out).write_file("gap_per_position.png", gap_png)
        figures.append(img_tag(gap_png, f"gap to {baseline} by position"))
    name = spec_labels(runs["arch"]).get(baseline, baseline)
    return [("Per-position loss", opening + '<div class="row">' + "".join(f"<div{wide}>{f}</div>" for f in figures) + "</div>" +
             "<p>Loss at each position of held-out test sequences, in nats per token, averaged in quarter-octave "
             f"bins of positions (each of the first {single_positions(BINS_PER_OCTAVE)} positions on its own); bands are the bins' mean {LEVEL}% bootstrap "
             "intervals over sequences (conservative for a bin's mean). Position t predicts token t+1 from t+1 "
             "tokens of context. Every position: <code>per_position.parquet</code>; per-task views below."
             + (f" The second figure (<code>gap_per_position.png</code>): each run's loss minus {html.escape(str(name))}'s "
                f"(same task, size and seed) on the same test sequences, in the same bins, with {LEVEL}% paired bootstrap "
                "intervals over sequences (the noise the two share cancels, so differences the first figure's "
                "overlapping bands hide show here; <code>study.py compare</code> draws it across studies)."
                if len(figures) > 1 else "") + "</p>")]


def headline_figure(out: Path, runs: pd.DataFrame) -> tuple[str, bytes, str] | None:
    """(task spec, PNG, caption) of the first task of the study that opens the page with a figure of
    its own (``Task.report_headline``: the recall probe's accuracy against distance); None where none does."""
    for spec, task in study_tasks(out, runs).items():
        try:
            made = task.report_headline(StudyFolder(out), runs[runs["task"] == spec])
        except (UserError, OSError, ValueError, KeyError):
            continue
        if made is not None:
            return (spec, *made)
    return None


def last_octave_section(out: Path, runs: pd.DataFrame, pp: pd.DataFrame) -> list[tuple[str, str]]:
    return [("Does the loss keep falling over the last octave?", html_table(headline_table(out, runs)) + paragraph(
        "<i>Gain over the last octave</i>: mean loss over positions [T/4, T/2) minus mean loss over [T/2, T), with a "
        f"{LEVEL}% bootstrap interval over sequences (<code>last_octave_gain</code> in <code>runs.parquet</code>); "
        "<i>still falling</i> when that interval lies above zero: the model still gains from its farthest context. "
        "<i>Worse than uniform</i>: a test loss above ln V (V: the vocabulary), what a model that predicts every token "
        "equally likely scores."))]


def runs_section(out: Path, runs: pd.DataFrame, pp: pd.DataFrame) -> list[tuple[str, str]]:
    summary = summary_table(runs, StudyFolder(out).table("fits.csv"), StudyFolder(out).table("gaps.csv"),
                            flags(out, runs))
    return [("Runs", html_table(summary) + html_table(runs, fold=f"every column of runs.parquet ({len(runs)} runs)") +
             paragraph("Test loss in nats per token; effective context in tokens; the gap is paired on the same test "
                       f"sequences over all positions, [{LEVEL}% interval]. Folded: the stored table as it is."))]


def data_page_section(out: Path, runs: pd.DataFrame, pp: pd.DataFrame) -> list[tuple[str, str]]:
    return [("Data", data_section(out, runs))]


def settings_sections(out: Path, runs: pd.DataFrame, pp: pd.DataFrame) -> list[tuple[str, str]]:
    folder = StudyFolder(out)
    config = folder.config_path.read_text() if folder.config_path.exists() else "(missing)"
    env = folder.environment() or {"note": "environment.json missing or unreadable"}
    return [("Configuration", f"<pre>{html.escape(config)}</pre><p>Rerun with <code>python study.py --config "
                              f"{html.escape(str(folder.config_path))}</code>.</p>"),
            ("Environment", f"<details><summary>versions, device, commit</summary><pre>"
                            f"{html.escape(yaml.safe_dump(env, sort_keys=False))}</pre></details>")]


def write_report(out: Path) -> Path:
    """Rebuild the figures and report.html from the stored tables alone: the page's sections are
    those of ``HEAD``, then ``SECTIONS``, then ``TAIL``."""
    out = Path(out)
    runs, pp = report_tables(out)
    sections = []
    for section in [*HEAD, *SECTIONS, *TAIL]:
        sections += section(out, runs, pp)
    StudyFolder(out).write_file("report.html", page_html(out.name, f"Study {out.name}", sections))
    return out / "report.html"


def data_section(out: Path, runs: pd.DataFrame) -> str:
    """What the study did with each task's data (``data.json``, written when the study ran): each
    split's documents and tokens, whether a window may span two documents; and a warning when the
    runs were trained on different versions of a task's data."""
    parts = [f"<p><b>Note: {html.escape(note)}.</b></p>" for note in mixed_data(runs)]
    data = StudyFolder(out).data()
    rows = []
    for spec, versions in data.items():
        inside = windows_inside_documents(spec)  # a data.json written before spans were looked at says "yes"
        for fingerprint, d in versions.items():
            for split, e in d.get("splits", {}).items():
                names = ", ".join(e["names"][:4]) + (f", ... ({e['documents']} in all)" if e["documents"] > 4 else "")
                rows.append({"task": spec, "tokens are": tokens_are(spec, d.get("vocab_size")),
                             "data fingerprint": fingerprint, "split": split, "documents": e["documents"],
                             "tokens": e["tokens"], "which": names,
                             "windows may cross documents": "yes" if e["windows_cross_documents"] and not inside else "no"})
    if not rows:
        return "".join(parts) + paragraph("Not recorded: the study ran before studies recorded their data "
                                          "(<code>data.json</code>); rerunning its command records it and trains nothing.")
    table = pd.DataFrame(rows)
    cut = any(str(n).endswith("#test") for n in table["which"])
    parts.append(html_table(table))
    parts.append(paragraph(
        f"<i>Tokens are</i>: bytes ({TextTask.vocab_size} ids) for text at byte level; a byte-level BPE trained on the training split alone "
        "(<code>bpe=N</code>, kept in <code>tokenizers/</code>), or the tokenizer file the study names "
        "(<code>tokenizer=PATH</code>), with the size of its vocabulary. <i>Which</i>: the first documents' names; "
        f"<code>data.json</code> lists the first {DESCRIBED_DOCUMENTS} of each split. Text and code documents (files) go whole to one split, "
        "ordered by a hash of their name, about 10% of the bytes to test and 10% to validation"
        + ("; a corpus of fewer than three files is cut instead, each file's first 80% of bytes for training, the next "
           "10% for validation and its last 10% for test (names ending in #train, #validation, #test)" if cut else "")
        + ". Within a split the documents are joined into one stream (a blank line between two) and windows start "
        "anywhere in it: where <i>windows may cross documents</i>, a window's context may reach back past the start of "
        "its document into the end of another; with <code>windows=document</code> (the default of <code>books</code>) "
        "every window lies inside one document. Tasks of fixed-length sequences (images, video, math, the probes) start "
        "windows only at a sequence's start. Table: <code>data.json</code>; the runs' <code>data_fingerprint</code> "
        "says which version of the data each was trained on."))
    return "".join(parts)


def summary_table(runs: pd.DataFrame, fits: pd.DataFrame, gaps: pd.DataFrame, flag: pd.Series | None = None) -> pd.DataFrame:
    """One row per run: test loss, effective context with its interval, paired gap to the baseline
    over all positions with its interval, from the study's tables (runs.parquet, fits.csv, gaps.csv)."""
    fit = {r["run_id"]: r for r in fits.to_dict("records")} if "run_id" in fits else {}
    gap = {}
    if not gaps.empty:
        for g in gaps[gaps["band"] == "all"].to_dict("records"):
            gap[(g["arch"], g["task"], g["params"], g["seed"])] = format_gap(g["gap"], g["gap_low"], g["gap_high"])
    baseline = str(gaps["baseline"].iloc[0]) if not gaps.empty else None
    labels = spec_labels(runs["arch"])
    column = f"gap to {labels.get(baseline, baseline)}" if baseline else "gap to the baseline"
    rows = []
    flag = flag if flag is not None else pd.Series("", index=runs.index)
    for r, f in zip(runs.to_dict("records"), flag):
        eff = format_effective_context(fit[r["run_id"]]) if r["run_id"] in fit else "not analysed"
        loss = f"{r['test_loss']:.4f}" if r.get("status") == "ok" else r.get("status")
        rows.append({"arch": labels[r["arch"]], "task": r["task"], "size": format_count(int(r["params"])),
                     "seed": r["seed"], "test loss": loss + (" (worse than uniform)" if f.startswith("worse") else ""),
                     "effective context": eff,
                     column: "baseline" if r["arch"] == baseline else
                     gap.get((r["arch"], r["task"], r["params"], r["seed"]), "")})
    return pd.DataFrame(rows)


def summary_lines(out: Path) -> list[str]:
    """The summary a study prints when it ends: :func:`summary_table` as text, and how to read it."""
    out = Path(out)
    runs = StudyFolder(out).table(StudyFolder.RUNS_TABLE)
    if runs.empty:
        return []
    table = summary_table(runs, StudyFolder(out).table("fits.csv"), StudyFolder(out).table("gaps.csv"),
                          flags(out, runs))
    return ["findings:", *findings_lines(findings(out, runs, task_findings(out, runs))),
            "summary (test loss in nats per token; effective context in tokens; gap: test loss minus the baseline's "
            f"on the same test sequences, all positions; [{LEVEL}% intervals]):",
            *("  " + line for line in table.to_string(index=False).splitlines()),
            *report_growth.still_learning_lines(out, runs)]


def bytes_section(out: Path, pp: pd.DataFrame, archs=None) -> list[tuple[str, str]]:
    """The per-position curves in bits per byte against bytes of context (``per_position_bytes.png``),
    where the study's tasks are text."""
    fig = bytes_figure(pp, archs=archs)
    if fig is None:
        return []
    png = figure_png(fig)
    StudyFolder(out).write_file("per_position_bytes.png", png)
    return [("Per-position loss per byte", img_tag(png, "per-position loss in bits per byte") +
             "<p>The same curves in the units of text rather than tokens: loss in bits per byte (a bin's mean loss "
             "over its targets' mean bytes, divided by ln 2) against the mean bytes of context at each position "
             "(<code>context_bytes</code>, <code>target_bytes</code> in <code>per_position.parquet</code>). "
             "Tokenizations of one corpus (bytes, BPE) share a panel, so their curves compare at equal "
             "text.</p>")]


def task_sections(out: Path, runs: pd.DataFrame, pp: pd.DataFrame) -> list[tuple[str, str]]:
    """One section per task of the study that draws a view of its own (``Task.report_view``),
    in the study's task order."""
    folder = StudyFolder(out)
    sections = []
    for spec, task in study_tasks(out, runs).items():
        if type(task).report_view is Task.report_view:
            continue
        try:
            body = task.report_view(folder, runs[runs["task"] == spec], pp[pp["task"] == spec])
        except (UserError, OSError, ValueError, KeyError) as exc:
            body = paragraph(f"(view not drawn: {html.escape(type(exc).__name__ + ': ' + str(exc))})")
        if body:
            sections.append((f"Task {spec}: {type(task).view_title or 'view'}", body))
    return sections


def through_training_sections(out: Path, runs: pd.DataFrame, pp: pd.DataFrame) -> list[tuple[str, str]]:
    """What a task adds to the through-training section (``Task.report_through_training``: the probes'
    phase change), one section per task that draws it."""
    sections = []
    for spec, task in study_tasks(out, runs).items():
        try:
            body = task.report_through_training(StudyFolder(out), runs[runs["task"] == spec])
        except (UserError, OSError, ValueError, KeyError) as exc:
            body = paragraph(f"(not drawn: {html.escape(type(exc).__name__ + ': ' + str(exc))})")
        if body:
            sections.append((f"Phase change on {spec}: when each model starts using its history", body))
    return sections


Section = Callable[[Path, pd.DataFrame, pd.DataFrame], list[tuple[str, str]]]
#: The page's sections in order, each (study_dir, runs, per_position) -> [(title, html)]: first what the
#: study found and its curves (HEAD), then the analyses (SECTIONS: add a section here), then the runs,
#: the data and the settings (TAIL).
HEAD: list[Section] = [findings_section, curves_section, lambda out, runs, pp: bytes_section(out, pp, runs["arch"]),
                       last_octave_section]
SECTIONS: list[Section] = [
    task_sections,  # each task's own view
    report_history.report_section,  # how much history: effective context, fits, extrapolation (study.py analyze)
    report_growth.report_section,  # how context use grows with training: kept steps, ICL score, law (--history)
    through_training_sections,  # the probes' phase change, from the kept steps
    report_scaling.report_section,  # L(N), L(C), frontier, alpha(N), tuning: only for size sweeps
]
TAIL: list[Section] = [runs_section, data_page_section, settings_sections]
