"""What every figure and HTML fragment of a report shares: PNG bytes, ``<img>`` tags, tables,
labels and colours. Used by the report page, its sections and the tasks' own views."""
from __future__ import annotations

import base64
import hashlib
import html
import inspect
from io import BytesIO

import matplotlib

matplotlib.use("Agg")  # reports are drawn without a screen
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from .registry import ARCHITECTURES  # noqa: E402
from .specs import format_count, spec_labels  # noqa: E402

N_BOOT = 1000  # bootstrap replicates of the intervals seaborn draws in views


def figure_png(fig) -> bytes:
    """The figure as PNG bytes (110 dpi); the figure is closed."""
    buf = BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def img_tag(png: bytes, alt: str) -> str:
    """An ``<img>`` holding the PNG itself, so a report is one self-contained file."""
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def html_table(df: pd.DataFrame) -> str:
    return df.to_html(index=False, float_format=lambda x: f"{x:.4g}", na_rep="", border=0)


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
_BUILTIN_COLORS = sns.color_palette("colorblind", 10)
#: for variants (a built-in with other options) and plugins: chosen by a hash of the name, so the
#: colour does not depend on which other curves a figure shows
_OTHER_COLORS = [_BUILTIN_COLORS[9]] + sns.color_palette("dark", 10)


def canonical_arch(spec: str) -> str:
    """The architecture a spec names, without the options that equal a built-in's defaults:
    ``transformer:pos=rotary`` and ``transformer`` are the same model, and get one colour."""
    head, sep, rest = str(spec).partition(":")
    if not sep or head not in BUILTIN_ARCHS or "=" not in rest:
        return str(spec)
    try:
        defaults = {k: p.default for k, p in inspect.signature(ARCHITECTURES.get(head)).parameters.items()}
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
