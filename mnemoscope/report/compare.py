"""The comparison's page and figures (``study.py compare``): curves of runs from several study
folders, their paired gaps to one or more baselines, the runs' table with how each pairs, and the
settings in which the studies differ, as one self-contained ``compare.html``
(:mod:`mnemoscope.analysis.compare` computes them)."""
from __future__ import annotations

import html
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from . import growth as report_growth
from ..analysis.compare import Comparison, runs_table
from ..measure.bootstrap import LEVEL
from ..measure.statistics import format_gap, format_interval
from ..render.figures import (STUDY_STYLES, arch_palette, draw_curves, figure_png, html_table, img_tag, legend_below, page_html,
                              paragraph, wrap_title)
from ..specs import format_count
from ..storage import files
from .context_use import gap_cells
from .findings import findings_html, findings_lines, gap_sentence


def curves_figure(c: Comparison, colors: dict, styles: dict):
    """Loss against context, a panel per task family (bits per byte against bytes where the
    panel mixes tokenizers); colour: architecture, line style: study; 95% bands over sequences."""
    families = list(dict.fromkeys(c.curves["family"]))
    fig, axes = plt.subplots(1, len(families), figsize=(6.4 * len(families), 4.4), squeeze=False)
    for ax, family in zip(axes.flat, families):
        d = c.curves[c.curves["family"] == family]
        draw_curves(ax, d, colors, styles)
        ax.set_title(wrap_title(family, 6.4))
        ax.set_xlabel(d["x_unit"].iloc[0])
        ax.set_ylabel(d["y_unit"].iloc[0])
    legend_below(fig, axes.flat)
    return fig


def gaps_figure(c: Comparison, colors: dict, styles: dict):
    """Each run's loss minus its baseline's on the same test sequences, against context: a row per
    task family, a column per baseline; 95% paired bootstrap bands over sequences."""
    g = c.gap_curves
    families = list(dict.fromkeys(g["family"]))
    fig, axes = plt.subplots(len(families), len(c.baselines), squeeze=False,
                             figsize=(6.4 * len(c.baselines), 4.2 * len(families)))
    for i, family in enumerate(families):
        for j, base in enumerate(c.baselines):
            ax = axes[i, j]
            d = g[(g["family"] == family) & (g["baseline"] == base)]
            ax.axhline(0, color="k", lw=1)
            if not d.empty:
                draw_curves(ax, d, colors, styles, y="gap")
            ax.set_title(wrap_title(f"{family}: minus {base}", 6.4), fontsize=10)
            ax.set_xlabel("tokens of context (position + 1)" if d.empty or d["y_unit"].iloc[0].endswith("token)")
                          else "bytes of context")
            ax.set_ylabel(d["y_unit"].iloc[0] if not d.empty else "gap")
            ax.set_xscale("log", base=2)
    legend_below(fig, axes.flat)
    return fig


def comparison_styles(runs: pd.DataFrame) -> tuple[dict, dict]:
    """(colours by architecture, line styles by study) of a comparison's runs: every figure of
    ``compare.html`` and of ``mnemoscope.analysis.compare(...).plot`` draws with them."""
    colors = arch_palette(runs["arch"])
    styles = {s: STUDY_STYLES[i % len(STUDY_STYLES)] for i, s in enumerate(dict.fromkeys(runs["study"]))}
    return colors, styles


def gap_table(gaps: pd.DataFrame) -> pd.DataFrame:
    """A row per run and baseline, a column per band: gap [95% interval], * where it excludes zero."""
    if gaps.empty:
        return gaps
    return gap_cells(gaps.assign(size=gaps["params"].map(lambda p: format_count(int(p)))),
                     ["baseline", "label", "task", "size", "seed"])


def summary_lines(c: Comparison) -> list[str]:
    """What the console prints: per run, its test loss and, per baseline, its gap over all positions
    and in the last band with intervals, or why it is unpaired."""
    lines = ["findings:", *findings_lines(comparison_findings(c, runs_table(c))), "runs:"]
    width = max(len(x) for x in c.runs["label"])
    for r in c.runs.to_dict("records"):
        parts = []
        for b in c.baselines:
            status = r[f"vs {b}"]
            rows = c.gaps[(c.gaps["label"] == r["label"]) & (c.gaps["baseline"] == b) & (c.gaps["task"] == r["task"])
                          & (c.gaps["params"] == r["params"]) & (c.gaps["seed"] == r["seed"])]
            if status == "baseline":
                parts.append(f"baseline {b}")
            elif rows.empty:
                parts.append(f"vs {b}: {status}")
            else:
                bands = rows[~rows["band"].isin(["all", "growth"])]
                cell = lambda x: format_gap(x["gap"], x["gap_low"], x["gap_high"])  # noqa: E731
                last, every = bands.iloc[-1], rows[rows["band"] == "all"].iloc[0]
                parts.append(f"vs {b}: {cell(every)} all positions, {cell(last)} at {last['band']}")
        lines.append(f"  {r['label']:<{width}}  [{r['task']}] test {r['test_loss']:.3f}  " + "; ".join(parts))
    return lines


def readable_runs(table: pd.DataFrame, baselines: list[str]) -> pd.DataFrame:
    """The runs' table in words: study, architecture, task, size, seed, context, test loss (3
    decimals), bits per byte with its interval (text only), effective context, and how each run pairs with each baseline."""
    cols = {"study": "study", "arch": "architecture", "task": "task", "size": "size", "seed": "seed",
            "context": "context (tokens)", "test_loss": "test loss (nats/token)", "bits_per_byte": "bits/byte",
            "effective context": "effective context", **{f"vs {b}": f"vs {b}" for b in baselines}}
    t = table[[c for c in cols if c in table]].rename(columns=cols)
    t["test loss (nats/token)"] = table["test_loss"].map(lambda v: f"{v:.3f}")
    if "bits/byte" in t:
        t["bits/byte"] = [format_interval(v, lo, hi, ".3f") if v == v else "" for v, lo, hi in
                          zip(table["bits_per_byte"], table["bits_per_byte_low"], table["bits_per_byte_high"])]
    return t


def comparison_findings(c: Comparison, table: pd.DataFrame) -> list[tuple[str, str]]:
    """[(heading, sentence)]: per task, the compared runs by test loss and their effective
    contexts; per baseline, which gaps grow; runs that pair with no baseline; studies made by
    different commits."""
    items = []
    effective = dict(zip(table["run_id"] + table["study"], table.get("effective context", pd.Series("", index=table.index))))
    differ = c.runs["tokenizers_differ"] if "tokenizers_differ" in c.runs else pd.Series(False, index=c.runs.index)
    # runs of one task family read through different tokenizers: ranked together, in bits per byte
    groups = c.runs.assign(group=c.runs["task"].where(~differ, c.runs["family"]))
    for group, d in groups.groupby("group", sort=False):
        top = d.assign(label=d["label"] + (" (" + d["params"].map(lambda p: format_count(int(p))) + ")"
                                           if c.runs["params"].nunique() > 1 else ""))
        if differ[d.index].any():
            parts = [bytes_ranking(top)]
        else:
            mean = top.groupby("label", sort=False)["test_loss"].mean().sort_values()
            parts = [f"test loss, lowest first: {', '.join(f'{lab} {v:.3f}' for lab, v in mean.items())} nats/token."]
        eff = [f"{r['label']} {effective.get(r['run_id'] + r['study'])}" for r in top.to_dict("records")
               if effective.get(r["run_id"] + r["study"])]
        if eff:
            parts.append(f"Effective context (tokens, from each study's fits.csv): {'; '.join(eff)}.")
        for b in c.baselines:
            g = c.gaps[c.gaps["task"].isin(set(d["task"])) & (c.gaps["baseline"] == b)]
            if not g.empty:
                parts.append(gap_sentence(g.assign(baseline=b), {}, key="label"))
        items.append((group, " ".join(parts)))
    for b in c.baselines:
        unpaired = c.runs[c.runs[f"vs {b}"].str.startswith("unpaired")]
        if not unpaired.empty:
            why = "; ".join(f"{n} {s.removeprefix('unpaired: ')}" for s, n in unpaired[f"vs {b}"].value_counts().items())
            items.append(("unpaired", f"{len(unpaired)} run(s) have no paired gap to {b}: scored on other data ({why})."))
    commits = c.configs[c.configs["setting"] == "mnemoscope commit"] if not c.configs.empty else c.configs
    if not commits.empty:
        row = commits.iloc[0]
        items.append(("code", "The studies were made by different commits of mnemoscope: " + ", ".join(
            f"{s} {row[s]}" for s in commits.columns if s != "setting") + "; their numbers may differ for that reason too."))
    return items


def bytes_ranking(runs: pd.DataFrame) -> str:
    """The sentence ranking runs read through different tokenizers: bits per byte of the text each
    predicted (nats per token would compare tokens of different lengths), lowest first, with its
    bootstrap interval over windows; runs whose bytes are unknown named apart."""
    known = runs[runs["bits_per_byte"].notna()].sort_values("bits_per_byte", kind="stable")
    cells = [f"{r['label']} {format_interval(r['bits_per_byte'], r['bits_per_byte_low'], r['bits_per_byte_high'], '.3f')}"
             for r in known.to_dict("records")]
    text = (f"their tokenizers differ, so they are ranked in bits per byte ({LEVEL}% bootstrap intervals over "
            f"windows), lowest first: {', '.join(cells)}." if cells else "their tokenizers differ and no run "
            "records the bytes of its targets: no ranking in a shared unit.")
    unknown = runs.loc[runs["bits_per_byte"].isna(), "label"]
    if len(unknown):
        text += f" Bytes unknown (not ranked): {', '.join(unknown)}."
    return text[0].upper() + text[1:]


def write_comparison(c: Comparison, out: Path, command: str = "") -> Path:
    """Write compare.html, per_position.png, gaps.png, runs.csv, gaps.csv, curves.parquet and
    gap_curves.parquet into ``out``; returns the page's path."""
    out = Path(out)
    colors, styles = comparison_styles(c.runs)
    table = runs_table(c)
    files.write_text(out / "runs.csv", table.to_csv(index=False))
    files.write_text(out / "gaps.csv", c.gaps.to_csv(index=False))
    files.write_parquet(out / "curves.parquet", c.curves)
    files.write_parquet(out / "gap_curves.parquet", c.gap_curves)
    figures = []
    if not c.curves.empty:
        png = figure_png(curves_figure(c, colors, styles))
        files.atomic_write(out / "per_position.png", lambda p: p.write_bytes(png))
        figures.append(img_tag(png, "per-position loss of the compared runs"))
    if not c.gap_curves.empty:
        png = figure_png(gaps_figure(c, colors, styles))
        files.atomic_write(out / "gaps.png", lambda p: p.write_bytes(png))
        figures.append(img_tag(png, "paired gap to the baseline by position"))
    else:
        figures.append(paragraph("No run pairs with a baseline: no gap to draw (see the table below for why)."))
    # side by side only when each figure is one panel wide
    wide = ' style="flex-basis:100%"' if c.runs["family"].nunique() > 1 or len(c.baselines) > 1 else ""
    studies = ", ".join(f"<code>{html.escape(s)}</code> ({html.escape(str(f))})"
                        for s, f in zip(dict.fromkeys(c.runs["study"]), c.studies))
    legend = ", ".join(f"{html.escape(s)}: <code>{html.escape(str(st))}</code>" for s, st in styles.items())
    sections = [
        ("Findings", findings_html(comparison_findings(c, table)) + paragraph(
            f"Generated from the tables below: gaps are paired on the same test sequences, with {LEVEL}% bootstrap intervals "
            "over sequences; where runs of several sizes exist, the sentences speak of the largest.")),
        ("Per-position loss and the gap to the baseline",
         f'<div class="row">{"".join(f"<div{wide}>{x}</div>" for x in figures)}</div>' + paragraph(
             f"Runs of {studies}. The first figure: test loss at every position, averaged in quarter-octave bins of "
             f"positions; bands: the bins' mean {LEVEL}% bootstrap intervals over sequences. The second: each run's loss "
             f"minus its baseline's on the <b>same</b> test sequences, with {LEVEL}% paired bootstrap intervals over sequences "
             f"(only for runs scored on exactly what the baseline was scored on). Colour: architecture (the same in "
             f"every figure of mnemoscope); line style: study ({legend}). Where one panel mixes tokenizers, loss is "
             "in bits per byte against bytes of context. Tables: <code>curves.parquet</code>, "
             "<code>gap_curves.parquet</code>.")),
        ("Paired gaps by position band",
         (html_table(gap_table(c.gaps)) if not c.gaps.empty else paragraph("No run pairs with a baseline.")) +
         paragraph("Nats per token; positive: worse than the baseline. * marks an interval that excludes zero; "
                   "<i>growth</i>: the last band's gap minus the first's. Table: <code>gaps.csv</code>.")),
        ("Runs, and how each pairs", html_table(readable_runs(table, c.baselines)) +
         html_table(table, fold=f"every column of runs.csv, with what each run was scored on ({len(table)} runs)") + paragraph(
            "A run's <i>fingerprint</i> hashes exactly what its test losses were scored on: the task's data, the "
            "tokenizer, the context length, the test windows (offsets and tokens) and the targets' mask "
            "(<code>scored_*</code> columns). Runs pair only when they agree on all of it; otherwise the column names "
            "what differs. Runs trained before the fingerprint was recorded get it computed from their study's "
            "config.yaml and stored losses. Table: <code>runs.csv</code>.")),
        ("Where the studies' configurations differ",
         html_table(c.configs) if not c.configs.empty else paragraph("Their config.yaml files agree on every setting "
                                                                      "(only the architectures may differ).")),
    ]
    # context use through training, where the studies kept it (line style: the study)
    sections += report_growth.comparison_section(list(zip(dict.fromkeys(c.runs["study"]), c.studies)))
    if c.refused:
        sections.append(("Refused pairings", "".join(paragraph(html.escape(line)) for line in c.refused)))
    if command:
        sections.append(("Command", f"<pre>{html.escape(command)}</pre>"))
    names = ", ".join(dict.fromkeys(c.runs["study"]))
    files.write_text(out / "compare.html", page_html(f"compare: {names}", f"Comparison of {names}", sections))
    return out / "compare.html"
