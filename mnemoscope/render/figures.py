"""What every figure and HTML fragment of a report shares: PNG bytes, ``<img>`` tags, tables,
labels and colours. Used by the report page, its sections and the tasks' own views."""
from __future__ import annotations

import base64
import hashlib
import html
import inspect
import sys
import textwrap
from io import BytesIO

import matplotlib

if "ipykernel" not in sys.modules:  # a notebook keeps its inline backend: mnemoscope.load(...).plot shows there
    matplotlib.use("Agg")  # reports are drawn without a screen
import matplotlib.colors as mcolors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from ..registry import ARCHITECTURES  # noqa: E402
from ..specs import format_count, spec_labels  # noqa: E402


def figure_png(fig) -> bytes:
    """The figure as PNG bytes (110 dpi); the figure is closed."""
    buf = BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def img_tag(png: bytes, alt: str) -> str:
    """An ``<img>`` holding the PNG itself, so a report is one self-contained file."""
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


#: tables longer than this are folded (``<details>``): the page opens on its findings and figures
FOLD_ROWS = 16


def html_table(df: pd.DataFrame, fold: str | None = None) -> str:
    """The table as HTML (4 significant digits; long cells wrap, so a table never runs off the
    page). Folded under a ``<details>`` line when it has more than FOLD_ROWS rows (or ``fold``
    given: that line's text)."""
    table = '<div class="table">' + df.to_html(index=False, float_format=lambda x: f"{x:.4g}", na_rep="", border=0) + "</div>"
    if fold is None and len(df) <= FOLD_ROWS:
        return table
    return f"<details><summary>{html.escape(fold or f'{len(df)} rows')}</summary>{table}</details>"


#: the style of every page (report, comparison): at 1400 px nothing runs off the right edge (long
#: cells and preformatted text wrap; images shrink to the page)
PAGE_STYLE = """body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em} img{max-width:100%}
.row{display:flex;flex-wrap:wrap;gap:1em} .row>div{flex:1 1 520px;min-width:0}
.table{overflow-x:auto;max-width:100%} table{border-collapse:collapse;font-size:12px;margin:0.4em 0}
td,th{border:1px solid #ccc;padding:2px 6px;overflow-wrap:break-word}
th{background:#f4f4f4} pre{white-space:pre-wrap;overflow-wrap:anywhere} summary{cursor:pointer;color:#345}
ul.findings li{margin:0.35em 0;line-height:1.4}"""


def page_html(title: str, heading: str, sections: list[tuple[str, str]]) -> str:
    """A self-contained page: a heading, then an ``<h2>`` and its HTML per section."""
    body = "\n".join(f"<h2>{html.escape(t)}</h2>\n{h}" for t, h in sections)
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>\n'
            f"<style>{PAGE_STYLE}</style></head>\n<body><h1>{html.escape(heading)}</h1>{body}</body></html>")


def paragraph(text: str) -> str:
    return f"<p>{text}</p>"


def label_runs(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with ``size`` (e.g. 300k) and ``model`` (arch and size) columns; an architecture given
    as ``file.py:Class`` is called by its class name (:func:`mnemoscope.specs.spec_label`)."""
    df = df.copy()
    df["size"] = df["params"].map(lambda p: format_count(int(p)))
    df["model"] = df["arch"].map(spec_labels(df["arch"])) + " " + df["size"]
    return df


# -- one colour per architecture, the same in every figure of a study and of a comparison -------------
#: the built-ins, each with its own colour-blind-safe colour, whatever else a figure shows
BUILTIN_ARCHS = ("transformer", "lstm", "cnn", "gru", "ssm", "linear_attention", "window_transformer",
                 "moe_transformer", "memory_lstm")
#: transformer, LSTM and CNN as seaborn's colour-blind palette draws them; the other six chosen so
#: that no two built-ins are closer than 39 (CIE76 distance in CIELAB) and none is a variant's colour:
#: the recurrent families drawn beside the LSTM are purple, red and olive, not three shades of orange
_BUILTIN_COLORS = [mcolors.to_rgb(c) for c in ("#0173b2", "#de8f05", "#029e73", "#6a3d9a", "#d62728", "#bcbd22",
                                                "#e377c2", "#797979", "#fb9a99")]
#: for variants (a built-in with other options) and plugins: chosen by a hash of the name, so the
#: colour does not depend on which other curves a figure shows
_OTHER_COLORS = [sns.color_palette("colorblind", 10)[9]] + sns.color_palette("dark", 10)


def _defaults(cls) -> dict:
    """An architecture's keyword defaults, those it passes on to its base class (``**kwargs``, as the
    window transformer passes ``pos`` to the transformer) included."""
    out = {}
    for klass in inspect.getmro(cls) if inspect.isclass(cls) else (cls,):
        params = inspect.signature(klass).parameters.values()
        for p in params:
            if p.kind is not p.VAR_KEYWORD:
                out.setdefault(p.name, p.default)
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return out


def canonical_arch(spec: str) -> str:
    """The architecture a spec names, without the options that equal a built-in's defaults:
    ``transformer:pos=rotary`` and ``transformer`` are the same model, and get one colour."""
    head, sep, rest = str(spec).partition(":")
    if not sep or head not in BUILTIN_ARCHS or "=" not in rest:
        return str(spec)
    try:
        defaults = _defaults(ARCHITECTURES.get(head))
    except Exception:  # a registry that cannot load: keep the spec as it is
        return str(spec)
    kept = [item for item in rest.split(",") if str(defaults.get(item.partition("=")[0].strip(), object())) !=
            item.partition("=")[2].strip()]
    return head + (":" + ",".join(kept) if kept else "")


def arch_palette(archs) -> dict:
    """A colour for each architecture spec: every built-in has a fixed one; any other spec takes one
    by a hash of its name (in sorted order, a clash moves to the next free colour among ``archs``).
    Every figure of a study and of a comparison draws with it."""
    out, taken = {}, set()
    names = list(dict.fromkeys(archs))
    for name in names:
        canon = canonical_arch(name)
        if canon in BUILTIN_ARCHS:
            out[name] = _BUILTIN_COLORS[BUILTIN_ARCHS.index(canon)]
    others = sorted({canonical_arch(n) for n in names if n not in out})
    colors = {}
    for canon in others:
        i = int(hashlib.sha256(canon.encode()).hexdigest(), 16) % len(_OTHER_COLORS)
        for k in range(len(_OTHER_COLORS)):  # probe for a free colour; reuse once all are taken
            if (i + k) % len(_OTHER_COLORS) not in taken:
                i = (i + k) % len(_OTHER_COLORS)
                break
        taken.add(i)
        colors[canon] = _OTHER_COLORS[i]
    for name in names:
        if name not in out:
            out[name] = colors[canonical_arch(name)]
    return out


def arch_labels_colors(archs) -> tuple[dict, dict]:
    """({spec: label}, {label: colour}) for a study's or a comparison's architectures: one label
    (:func:`mnemoscope.specs.spec_labels`: ``file.py:Class`` -> ``Class``) and one colour
    (:func:`arch_palette`, chosen by the spec) per architecture, the same in every figure."""
    archs = list(dict.fromkeys(str(a) for a in archs))
    labels, colors = spec_labels(archs), arch_palette(archs)
    return labels, {labels[a]: colors[a] for a in archs}


def wrap_title(text: str, width_in: float, fontsize: float = 10) -> str:
    """A panel's title wrapped to the panel's width (``width_in`` inches) rather than cut."""
    return textwrap.fill(str(text), max(16, int(width_in * 72 / (fontsize * 0.6))), break_long_words=True)


def legend_below(fig, axes, fontsize: float = 8) -> None:
    """One legend for the whole figure, under its panels, where it covers no curve: each label
    once (the panels' legends removed); then the layout, leaving the legend its room."""
    handles, labels = {}, []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles and not lab.startswith("_"):
                handles[lab] = h
                labels.append(lab)
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    per = 0.6 + 0.075 * max((len(lab) for lab in labels), default=0)  # inches a label takes at fontsize 8
    ncol = max(1, min(len(labels), int(fig.get_figwidth() // per)))
    rows = -(-len(labels) // ncol) if labels else 0
    if labels:
        fig.set_figheight(fig.get_figheight() + 0.2 * rows + 0.1)
        fig.legend([handles[lab] for lab in labels], labels, loc="lower center", ncol=ncol, fontsize=fontsize,
                   frameon=False)
    fig.tight_layout(rect=(0, min(0.5, (0.18 * rows + 0.1 * bool(rows)) / fig.get_figheight()), 1, 1))


def model_palette(df: pd.DataFrame, key: str = "model") -> dict:
    """Colours for the ``key`` labels of ``df`` (one per arch x size, as :func:`label_runs` makes):
    the architecture's colour (:func:`arch_palette`), lighter for its smaller sizes."""
    archs = arch_palette(df["arch"])
    out = {}
    for arch, part in df.groupby("arch", sort=False):
        sizes = sorted(part["params"].unique())
        for label, params in part.drop_duplicates(key)[[key, "params"]].itertuples(index=False):
            light = 0.6 * (1 - sizes.index(params) / max(1, len(sizes) - 1)) if len(sizes) > 1 else 0.0
            out[label] = tuple(c + (1 - c) * light for c in archs[arch][:3])
    return out


#: line styles that tell the studies of a comparison apart (colour: the architecture)
STUDY_STYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)))


def draw_curves(ax, df: pd.DataFrame, colors: dict, styles: dict | None = None, y: str = "loss",
                bins_per_octave: int = 4) -> None:
    """Per-position curves with their 95% bands on ``ax``, one per ``key``: ``x`` against ``y``
    (bands ``<y>_low``/``<y>_high``, or ``ci_low``/``ci_high`` for ``loss``), coloured by ``arch``
    (``colors``), styled by ``study`` (``styles``), labelled ``label``. Positions are averaged in
    bins of 1/``bins_per_octave`` octave (the first ones single): readable with ten curves and more."""
    lo, hi = ("ci_low", "ci_high") if y == "loss" else (f"{y}_low", f"{y}_high")
    d = df.dropna(subset=[y]).copy()
    d["bin"] = np.floor(np.log2(d["position"] + 1) * bins_per_octave)
    g = d.groupby(["key", "label", "arch", "study", "bin"], as_index=False, sort=False)[["x", y, lo, hi]].mean()
    for (key, label, arch, study), part in g.groupby(["key", "label", "arch", "study"], sort=False):
        ls = (styles or {}).get(study, "-")
        ax.plot(part["x"], part[y], color=colors[arch], ls=ls, lw=1.4, label=label)
        ax.fill_between(part["x"], part[lo], part[hi], color=colors[arch], alpha=0.15, lw=0)
    ax.set_xscale("log", base=2)
    ax.grid(alpha=0.3)
