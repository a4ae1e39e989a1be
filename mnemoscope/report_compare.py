"""The comparison's page and figures (``study.py compare``): curves of runs from several study
folders, their paired gaps to one or more baselines, the runs' table with how each pairs, and the
settings in which the studies differ, as one self-contained ``compare.html``
(:mod:`mnemoscope.compare` computes them)."""
from __future__ import annotations

import html
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from . import files
from .compare import Comparison, runs_table
from .figures import STUDY_STYLES, arch_palette, draw_curves, figure_png, html_table, img_tag, paragraph
from .report_history import gap_cells
from .specs import format_count
from .statistics import format_gap


def _legend(fig, axes) -> None:
    handles, labels = {}, []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    if labels:
        ncol = max(1, min(len(labels), int(fig.get_figwidth() // 3.4)))  # labels of about 50 characters
        fig.legend([handles[lab] for lab in labels], labels, loc="lower center", ncol=ncol, fontsize=8, frameon=False)


def _rows(n_labels: int, n_panels: int) -> int:
    """Rows of the legend under a figure n_panels wide."""
    return -(-n_labels // max(1, int(6.4 * n_panels // 3.4)))


def _layout(fig, n_labels: int) -> None:
    rows = -(-n_labels // max(1, int(fig.get_figwidth() // 3.4)))
    fig.tight_layout(rect=(0, min(0.5, (0.18 * rows + 0.1) / fig.get_figheight()), 1, 1))


def curves_figure(c: Comparison, colors: dict, styles: dict):
    """Loss against context, a panel per task family (bits per byte against bytes where the
    panel mixes tokenizers); colour: architecture, line style: study; 95% bands over sequences."""
    families = list(dict.fromkeys(c.curves["family"]))
    n_labels = c.curves["label"].nunique()
    fig, axes = plt.subplots(1, len(families), figsize=(6.4 * len(families), 4.4 + 0.2 * _rows(n_labels, len(families))),
                             squeeze=False)
    for ax, family in zip(axes.flat, families):
        d = c.curves[c.curves["family"] == family]
        draw_curves(ax, d, colors, styles)
        ax.set_title(family)
        ax.set_xlabel(d["x_unit"].iloc[0])
        ax.set_ylabel(d["y_unit"].iloc[0])
    _legend(fig, axes.flat)
    _layout(fig, n_labels)
    return fig


def gaps_figure(c: Comparison, colors: dict, styles: dict):
    """Each run's loss minus its baseline's on the same test sequences, against context: a row per
    task family, a column per baseline; 95% paired bootstrap bands over sequences."""
    g = c.gap_curves
    families = list(dict.fromkeys(g["family"]))
    n_labels = g["label"].nunique()
    fig, axes = plt.subplots(len(families), len(c.baselines), squeeze=False,
                             figsize=(6.4 * len(c.baselines), 4.2 * len(families) + 0.2 * _rows(n_labels, len(c.baselines))))
    for i, family in enumerate(families):
        for j, base in enumerate(c.baselines):
            ax = axes[i, j]
            d = g[(g["family"] == family) & (g["baseline"] == base)]
            ax.axhline(0, color="k", lw=1)
            if not d.empty:
                draw_curves(ax, d, colors, styles, y="gap")
            ax.set_title(f"{family}: minus {base}", fontsize=10)
            ax.set_xlabel("tokens of context (position + 1)" if d.empty or d["y_unit"].iloc[0].endswith("token)")
                          else "bytes of context")
            ax.set_ylabel(d["y_unit"].iloc[0] if not d.empty else "gap")
            ax.set_xscale("log", base=2)
    _legend(fig, axes.flat)
    _layout(fig, n_labels)
    return fig


def gap_table(gaps: pd.DataFrame) -> pd.DataFrame:
    """A row per run and baseline, a column per band: gap [95% interval], * where it excludes zero."""
    if gaps.empty:
        return gaps
    return gap_cells(gaps.assign(size=gaps["params"].map(lambda p: format_count(int(p)))),
                     ["baseline", "label", "task", "size", "seed"])


def summary_lines(c: Comparison) -> list[str]:
    """What the console prints: per run, its test loss and, per baseline, its gap over all positions
    and in the last band with intervals, or why it is unpaired."""
    lines = []
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


def write_comparison(c: Comparison, out: Path, command: str = "") -> Path:
    """Write compare.html, per_position.png, gaps.png, runs.csv, gaps.csv, curves.parquet and
    gap_curves.parquet into ``out``; returns the page's path."""
    out = Path(out)
    colors = arch_palette(c.runs["arch"])
    styles = {s: STUDY_STYLES[i % len(STUDY_STYLES)] for i, s in enumerate(dict.fromkeys(c.runs["study"]))}
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
        ("Per-position loss and the gap to the baseline",
         f'<div class="row">{"".join(f"<div{wide}>{x}</div>" for x in figures)}</div>' + paragraph(
             f"Runs of {studies}. Left: test loss at every position, averaged in quarter-octave bins of positions; "
             "bands: the bins' mean 95% bootstrap intervals over sequences. Right: each run's loss minus its "
             "baseline's on the <b>same</b> test sequences, with 95% paired bootstrap intervals over sequences "
             f"(only for runs scored on exactly what the baseline was scored on). Colour: architecture (the same in "
             f"every figure of mnemoscope); line style: study ({legend}). Where one panel mixes tokenizers, loss is "
             "in bits per byte against bytes of context. Tables: <code>curves.parquet</code>, "
             "<code>gap_curves.parquet</code>.")),
        ("Paired gaps by position band",
         (html_table(gap_table(c.gaps)) if not c.gaps.empty else paragraph("No run pairs with a baseline.")) +
         paragraph("Nats per token; positive: worse than the baseline. * marks an interval that excludes zero; "
                   "<i>growth</i>: the last band's gap minus the first's. Table: <code>gaps.csv</code>.")),
        ("Runs, and how each pairs", html_table(table) + paragraph(
            "A run's <i>fingerprint</i> hashes exactly what its test losses were scored on: the task's data, the "
            "tokenizer, the context length, the test windows (offsets and tokens) and the targets' mask "
            "(<code>scored_*</code> columns). Runs pair only when they agree on all of it; otherwise the column names "
            "what differs. Runs trained before the fingerprint was recorded get it computed from their study's "
            "config.yaml and stored losses. Table: <code>runs.csv</code>.")),
        ("Where the studies' configurations differ",
         html_table(c.configs) if not c.configs.empty else paragraph("Their config.yaml files agree on every setting "
                                                                      "(only the architectures may differ).")),
    ]
    if c.refused:
        sections.append(("Refused pairings", "".join(paragraph(html.escape(line)) for line in c.refused)))
    if command:
        sections.append(("Command", f"<pre>{html.escape(command)}</pre>"))
    body = "\n".join(f"<h2>{html.escape(t)}</h2>\n{h}" for t, h in sections)
    names = ", ".join(dict.fromkeys(c.runs["study"]))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>compare: {html.escape(names)}</title>
<style>body{{font-family:sans-serif;max-width:1400px;margin:auto;padding:1em}} img{{max-width:100%}}
.row{{display:flex;flex-wrap:wrap;gap:1em}} .row>div{{flex:1 1 560px}}
table{{border-collapse:collapse;font-size:12px}} td,th{{border:1px solid #ccc;padding:2px 6px}}</style></head>
<body><h1>Comparison of {html.escape(names)}</h1>{body}</body></html>"""
    files.write_text(out / "compare.html", page)
    return out / "compare.html"
