"""What a study found, in a few sentences generated from its own tables (runs.parquet, fits.csv,
gaps.csv, data.json): which model has the lowest loss, how much context each uses, which gap to
the baseline grows and which does not, what is not significant, which runs learned nothing. The
report opens with them (:mod:`mnemoscope.report.page`), and a study prints them when it ends."""
from __future__ import annotations

import html
import math
from pathlib import Path

import pandas as pd

from ..contract.text_task import byte_level_spec
from ..measure.bootstrap import LEVEL
from ..measure.statistics import MIN_WINDOWS, format_effective_context, format_gap
from ..settings import TOLERANCE
from ..specs import format_count, spec_labels
from ..storage.study_folder import StudyFolder


def uniform_losses(out: Path, runs: pd.DataFrame) -> pd.Series:
    """Each run's uniform loss, ln V nats per token (V: its task's vocabulary, from data.json; 256
    for text at byte level), NaN where the vocabulary is not recorded. A model above it predicts
    worse than a guess."""
    data = StudyFolder(out).data()
    vocab = {}
    for spec, versions in data.items():
        for fingerprint, d in versions.items():
            if d.get("vocab_size"):
                vocab[(spec, fingerprint)] = int(d["vocab_size"])
                vocab.setdefault(spec, int(d["vocab_size"]))
    out_ = []
    for r in runs.to_dict("records"):
        v = vocab.get((r["task"], r.get("data_fingerprint")), vocab.get(r["task"]))
        if v is None and byte_level_spec(r["task"]):
            v = 256
        out_.append(math.log(v) if v else math.nan)
    return pd.Series(out_, index=runs.index, dtype=float)


def flags(out: Path, runs: pd.DataFrame) -> pd.Series:
    """A run's flag: '' when fine, else what is wrong with it (diverged, or a test loss above the
    uniform loss ln V: the model learned nothing the vocabulary's size does not give)."""
    uniform = uniform_losses(out, runs)
    out_ = []
    for (i, r), u in zip(runs.iterrows(), uniform):
        if r.get("status") not in (None, "ok"):
            out_.append(str(r.get("status")))
        elif math.isfinite(u) and float(r["test_loss"]) > u:
            out_.append(f"worse than uniform (test loss {r['test_loss']:.3f} > ln V = {u:.3f})")
        else:
            out_.append("")
    return pd.Series(out_, index=runs.index, dtype=object)


def _names(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def findings(out: Path, runs: pd.DataFrame, task_sentences: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """[(heading, sentence)], plain text: per task, the ranking by test loss, the task's own
    sentence (``task_sentences``: spec -> text, from ``Task.report_findings``, e.g. where recall
    falls below half), the effective contexts, the gaps to the baseline that grow and those that do
    not; then the runs flagged and whether any curve still falls over its last octave."""
    out = Path(out)
    if runs.empty:
        return []
    fits = StudyFolder(out).table("fits.csv")
    gaps = StudyFolder(out).table("gaps.csv")
    labels = spec_labels(runs["arch"])
    lines: list[tuple[str, str]] = []
    runs = runs.assign(flag=flags(out, runs))
    ok = runs[runs["flag"] == ""]
    for task in dict.fromkeys(runs["task"]):
        d = ok[ok["task"] == task]
        parts = []
        if not d.empty:
            top = d[d["params"] == d["params"].max()]
            mean = top.groupby("arch", sort=False)["test_loss"].mean().sort_values()
            size = f" at {format_count(int(top['params'].iloc[0]))} parameters" if runs["params"].nunique() > 1 else ""
            seeds = f" (mean of {top['seed'].nunique()} seeds)" if top["seed"].nunique() > 1 else ""
            ranked = [f"{labels[a]} {v:.3f}" for a, v in mean.items()]
            parts.append(f"test loss{size}{seeds}, lowest first: {', '.join(ranked)} nats/token.")
        if (task_sentences or {}).get(task):
            parts.append(task_sentences[task])
        f = fits[fits["task"] == task] if not fits.empty and "effective_context" in fits else pd.DataFrame()
        if not f.empty:
            f = f[f["params"] == f["params"].max()]
            cells = [f"{labels.get(r['arch'], r['arch'])} {format_effective_context(r) or not_measured(r)}"
                     for r in f.to_dict("records")]
            tol = f["tolerance"].iloc[0] if "tolerance" in f else TOLERANCE
            parts.append(f"Effective context (tokens, of {int(f['context'].iloc[0])}; within {tol:.0%} of the "
                         f"full-context loss): {'; '.join(cells)}.")
        g = gaps[gaps["task"] == task] if not gaps.empty else pd.DataFrame()
        if not g.empty:
            parts.append(gap_sentence(g, labels))
        if parts:
            lines.append((task, " ".join(parts)))
    bad = runs[runs["flag"] != ""]
    if not bad.empty:
        lines.append(("flagged", "; ".join(f"{labels[r['arch']]} on {r['task']} ({format_count(int(r['params']))}, seed "
                                           f"{r['seed']}): {r['flag']}" for r in bad.to_dict("records"))
                      + ". Their numbers describe no learned model; they are left out of the sentences above."))
    if "n_windows" in runs:  # scored on one window: a bootstrap over windows has nothing to resample
        few = runs[runs["n_windows"].notna() & (runs["n_windows"] < MIN_WINDOWS)]
        if not few.empty:
            names = list(dict.fromkeys(f"{labels.get(a, a)} on {t}" for a, t in zip(few["arch"], few["task"])))
            lines.append(("intervals", f"{_names(names)}: one window scored, so no interval and no claim of "
                                       f"significance (a bootstrap interval over windows needs at least {MIN_WINDOWS}); "
                                       "score more windows (--sequences) for them."))
    ok = ok[ok["last_octave_gain_low"].notna()] if "last_octave_gain_low" in ok else ok  # runs with no interval: no claim
    if "last_octave_gain_low" in ok and not ok.empty:
        falling = ok[ok["last_octave_gain_low"] > 0]
        if falling.empty:
            lines.append(("last octave", "No curve still falls significantly over its last octave of positions "
                                         "(T/2 to T): at this budget no model gains measurably from its farthest context."))
        else:
            names = list(dict.fromkeys(f"{labels[a]} on {t}" for a, t in zip(falling["arch"], falling["task"])))
            lines.append(("last octave", f"Still falling over the last octave of positions (T/2 to T, {LEVEL}% interval "
                                         f"above zero): {_names(names)}; their loss would keep falling with more context."))
    return lines


def not_measured(fit: dict) -> str:
    """What an effective context without a value says instead of an empty cell."""
    if fit.get("ablation_targets") == 0:
        return "not measured (no truncation ablation: --targets 0)"
    return "not measured"


def gap_sentence(g: pd.DataFrame, labels: dict, key: str = "arch") -> str:
    """Which gaps to the baseline grow with context (significantly), which do not, over the
    largest size's runs (rows as in gaps.csv; ``key``: the column naming a run's model)."""
    g = g[g["params"] == g["params"].max()]
    base = str(g["baseline"].iloc[0])
    grows, flat, shrinks = [], [], []
    for (arch, seed), rows in g.groupby([key, "seed"], sort=False):
        bands = rows[~rows["band"].isin(["all", "growth"])]
        growth = rows[rows["band"] == "growth"]
        name = labels.get(arch, arch) + (f" (seed {seed})" if g["seed"].nunique() > 1 else "")
        if growth.empty or bands.empty:
            continue
        gr, first, last = growth.iloc[0], bands.iloc[0], bands.iloc[-1]
        cell = (f"{name}: {format_gap(first['gap'], first['gap_low'], first['gap_high'])} at positions {first['band']}, "
                f"{format_gap(last['gap'], last['gap_low'], last['gap_high'])} at {last['band']} (growth "
                f"{format_gap(gr['gap'], gr['gap_low'], gr['gap_high'])})")
        if not gr["significant"]:
            flat.append(f"{name} ({format_gap(gr['gap'], gr['gap_low'], gr['gap_high'])})")
        elif gr["gap"] > 0:
            grows.append(cell)
        else:
            shrinks.append(cell)
    base = labels.get(base, base)
    out = []
    if grows:  # the gap rises: behind and falling further back, or ahead by less
        out.append(f"Loses ground to {base} as context grows (paired gap, nats/token, {LEVEL}% interval): "
                   f"{'; '.join(grows)}.")
    if shrinks:
        out.append(f"Gains ground on {base} as context grows: {'; '.join(shrinks)}.")
    if flat:
        out.append(f"No significant growth of the gap to {base} (growth, last band minus first): {'; '.join(flat)}.")
    return " ".join(out)


def findings_html(items: list[tuple[str, str]]) -> str:
    if not items:
        return "<p>No finished run to report on.</p>"
    return "<ul class=\"findings\">" + "".join(f"<li><b>{html.escape(h)}</b>: {html.escape(t)}</li>"
                                               for h, t in items) + "</ul>"


def findings_lines(items: list[tuple[str, str]]) -> list[str]:
    return [f"  {h}: {t}" for h, t in items]
