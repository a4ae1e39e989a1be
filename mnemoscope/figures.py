"""What every figure and HTML fragment of a report shares: PNG bytes, ``<img>`` tags, tables,
labels and colours. Used by the report page, its sections and the tasks' own views."""
from __future__ import annotations

import base64
import html
from io import BytesIO

import matplotlib

matplotlib.use("Agg")  # reports are drawn without a screen
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

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


def palette(names) -> dict:
    """One colour per name, in order of first appearance (colour-blind safe)."""
    names = list(dict.fromkeys(names))
    return dict(zip(names, sns.color_palette("colorblind", len(names))))
