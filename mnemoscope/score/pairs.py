"""Models with different tokenizers, paired on the bytes both scored (``byte_gaps.csv``).

``study.py score`` starts every byte-aligned window at the same byte of the same document for
every model (:func:`mnemoscope.score.scoring.byte_starts`). Model A's target t covers the window's bytes
[c_t, c_t + b_t) (c_t: bytes of its context, b_t: its own), known from ``losses.npz``. For a
pair of models and a window, the bytes both scored run from the later of their first targets to
the earlier of their last; each model's targets lying wholly inside that span, and whose context
falls in a band of bytes, give its bits per byte there. The two spans differ by less than one
token at each end (a tokenizer cuts where it will), so the pair is scored on the same text to
within a token. Intervals bootstrap over windows, the same resample for both models.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..measure.bootstrap import bootstrap_indices, percentile_interval
from ..settings import N_BOOT
from ..storage.study_folder import StudyFolder

#: bands of bytes of context: [0, 16), [16, 128), [128, 1024), [1024, 8192), [8192, ...)
BYTE_BANDS = (0, 16, 128, 1024, 8192, 1 << 62)


def _sums(losses, mask, ctx, tgt, lo, hi, bands):
    """(W, K) bits and bytes of each window's targets inside its [lo, hi) byte span, per band."""
    start = ctx  # target t covers bytes [ctx, ctx + tgt) of its window
    inside = mask & (start >= lo[:, None]) & (start + tgt <= hi[:, None])
    bits, nbytes = [], []
    for a, b in zip(bands[:-1], bands[1:]):
        sel = inside & (start >= a) & (start < b)
        bits.append(np.where(sel, losses, 0).sum(1) / math.log(2))
        nbytes.append(np.where(sel, tgt, 0).sum(1))
    return np.stack(bits, 1), np.stack(nbytes, 1).astype(np.float64)


def _span(mask, ctx, tgt):
    """Each window's first scored byte and the end of its last scored target."""
    first = np.where(mask, ctx, np.iinfo(np.int64).max).min(1)
    last = np.where(mask, ctx + tgt, 0).max(1)
    return first, last


def pair_bytes(a: dict, b: dict, n_boot: int = N_BOOT, seed: int = 0, bands=BYTE_BANDS) -> pd.DataFrame:
    """Bits per byte of A and B on the bytes both scored, per band of bytes of context, and A minus
    B with a paired bootstrap interval over windows. ``a``, ``b``: ``losses.npz`` contents."""
    arr = lambda z, k: np.asarray(z[k], np.int64 if k != "losses" else np.float64)  # noqa: E731
    (la, ma, ca, ta), (lb, mb, cb, tb) = [(arr(z, "losses"), np.asarray(z["mask"], bool), arr(z, "bytes"),
                                           arr(z, "target_bytes")) for z in (a, b)]
    fa, ea = _span(ma, ca, ta)
    fb, eb = _span(mb, cb, tb)
    lo, hi = np.maximum(fa, fb), np.minimum(ea, eb)
    bits_a, bytes_a = _sums(la, ma, ca, ta, lo, hi, bands)
    bits_b, bytes_b = _sums(lb, mb, cb, tb, lo, hi, bands)
    idx = bootstrap_indices(len(la), n_boot, seed)
    rows = []
    for k, (x, y) in enumerate(zip(bands[:-1], bands[1:])):
        if bytes_a[:, k].sum() == 0 or bytes_b[:, k].sum() == 0:
            continue
        bpb = lambda bits, nb, i=slice(None): bits[i, k].sum(-1) / np.maximum(nb[i, k].sum(-1), 1)  # noqa: E731
        boots = bpb(bits_a, bytes_a, idx) - bpb(bits_b, bytes_b, idx)
        g_lo, g_hi = percentile_interval(boots, axis=None)
        va, vb = float(bpb(bits_a, bytes_a)), float(bpb(bits_b, bytes_b))
        rows.append({"band": f"{x}-{'' if y >= 1 << 62 else y - 1} bytes", "bytes_start": x,
                     "bytes_end": None if y >= 1 << 62 else y, "bpb": va, "baseline_bpb": vb, "gap": va - vb,
                     "gap_low": g_lo, "gap_high": g_hi, "significant": bool(g_lo > 0 or g_hi < 0),
                     "bytes": float(bytes_a[:, k].sum()), "baseline_bytes": float(bytes_b[:, k].sum()),
                     "n_windows": int(((bytes_a[:, k] > 0) & (bytes_b[:, k] > 0)).sum())})
    return pd.DataFrame(rows)


def byte_gaps(out: Path, runs: pd.DataFrame) -> pd.DataFrame:
    """:func:`pair_bytes` of every byte-aligned model of a score folder against the first given,
    where both started their windows at the same bytes of the same documents."""
    cols = ["arch", "baseline", "band", "bytes_start", "bytes_end", "bpb", "baseline_bpb", "gap", "gap_low",
            "gap_high", "significant", "bytes", "baseline_bytes", "n_windows"]
    aligned = runs[runs.get("windows", pd.Series(dtype=str)) == "byte-aligned"] if "windows" in runs else runs.iloc[:0]
    if len(aligned) < 2:
        return pd.DataFrame(columns=cols)
    order = list(StudyFolder(out).config().get("archs") or [])  # the models in the order they were given
    aligned = aligned.sort_values("arch", key=lambda a: a.map(lambda x: order.index(x) if x in order else len(order)),
                                  kind="stable")
    load = lambda rid: StudyFolder(out).run(rid).loss_arrays()  # noqa: E731
    rows = []
    base = aligned.iloc[0]
    zb = load(base["run_id"])
    for r in aligned.iloc[1:].to_dict("records"):
        za = load(r["run_id"])
        same = (len(za["window_starts"]) == len(zb["window_starts"]) and (za["window_starts"] == zb["window_starts"]).all()
                and (za["window_documents"] == zb["window_documents"]).all())
        if not same or "bytes" not in za or "bytes" not in zb:
            continue
        rows.append(pair_bytes(za, zb).assign(arch=r["arch"], baseline=base["arch"]))
    return pd.concat(rows, ignore_index=True)[cols] if rows else pd.DataFrame(columns=cols)
