"""Runs of several study folders side by side (``study.py compare``), paired only when it is honest.

Each finished run records what its test losses were scored on (``scoring_fingerprint`` and its
parts in ``result.json``, :func:`mnemoscope.measure.evaluate.scoring_parts`; the task part is the data's
content fingerprint, so the same data pair wherever their files lie); for a run from before that
column, or before runs recorded their data fingerprint, it is computed here from the study's
``config.yaml`` (the task rebuilt, the stored target mask) without writing anything into that study. Two runs with the same fingerprint were scored
on the same targets of the same test windows, so their difference gets paired bootstrap
intervals over sequences (:func:`mnemoscope.measure.statistics.paired_gap`, as ``gaps.csv`` inside a
study); any other pair is drawn side by side and marked unpaired, with the part that differs.

Curves of one task family with different tokenizers are drawn in bits per byte against bytes of
context. The page and figures are :mod:`mnemoscope.report.compare`.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import UserError
from ..measure.evaluate import SCORING_PARTS, bits_per_byte, scoring_difference, scoring_fingerprint, scoring_parts
from ..measure.statistics import format_effective_context, paired_gap, paired_gap_curve
from ..settings import N_BOOT
from ..specs import format_count
from ..storage.migrations import fill_bits_per_byte, recorded_data_fingerprint, stored_target_bytes, with_bytes
from ..storage.study_folder import StudyFolder
from ..study.runner import Study

@dataclass
class Selection:
    """One ``DIR[:ARCH,...]`` argument: a study folder and the architectures taken from it (all: [])."""

    folder: Path
    archs: list[str] = field(default_factory=list)


def parse_selection(text: str) -> Selection:
    """``DIR``, ``DIR:ARCH`` or ``DIR:ARCH,ARCH``: the folder is the longest part before a ':' that
    is a directory (so an architecture's own ``name:key=value`` options and file paths survive)."""
    cuts = [i for i, c in enumerate(text) if c == ":"] + [len(text)]
    for i in reversed(cuts):
        if Path(text[:i]).is_dir() and text[:i]:
            folder, rest = Path(text[:i]), text[i + 1:]
            break
    else:
        raise UserError(f"no study folder in {text!r} (expected DIR or DIR:ARCH,...)")
    if not StudyFolder(folder).exists:
        raise UserError(f"no study at {folder} (no config.yaml)")
    archs: list[str] = []
    for piece in [p for p in rest.split(",") if p.strip()]:
        if archs and "=" in piece and ":" not in piece:  # an option of the previous spec: transformer:pos=x,n_layer=2
            archs[-1] += "," + piece
        else:
            archs.append(piece.strip())
    return Selection(folder, archs)


def _match(wanted: str, available: list[str], folder: Path) -> list[str]:
    """The architectures of a study a name selects: itself, else every spec of that name
    (``transformer`` selects ``transformer:pos=rotary``)."""
    if wanted in available:
        return [wanted]
    found = [a for a in available if ":" not in wanted and a.partition(":")[0] == wanted]
    if not found:
        raise UserError(f"no finished run of {wanted!r} in {folder} (it holds: {', '.join(available) or 'none'})")
    # a rerun study also holds the runs of an earlier version, tabled with init=gpt2
    # (migrations.arch_before_convolutions): a plain name selects today's, where it has one
    current = [a for a in found if not a.endswith("init=gpt2")]
    return current or found


def _study_runs(folder: Path) -> pd.DataFrame:
    """The finished, non-diverged runs of a study folder, from their ``result.json`` (read only)."""
    rows = []
    study = StudyFolder(folder)
    config = study.config()
    trained = None if config.get("score") else Study.from_folder(folder)  # a scored folder trains nothing
    for run_id in study.finished():
        try:
            row = fill_bits_per_byte(study.run(run_id).row(), study.run(run_id).loss_arrays, bits_per_byte)
        except (OSError, ValueError):
            continue
        rows.append(row)
    if trained is not None:  # a rerun study's two versions of a run under two names, as in runs.parquet
        for row, arch in zip(rows, trained.tabled_archs(rows)):
            row["arch"] = arch
    runs = pd.DataFrame(rows)
    if runs.empty:
        raise UserError(f"{folder} has no finished runs")
    return runs[runs.get("status", pd.Series("ok", index=runs.index)).fillna("ok") == "ok"]


def _rebuilt_parts(folder: Path, row: dict, mask: np.ndarray, studies: dict) -> tuple[dict | None, str]:
    """A run's scoring parts computed from its study's config.yaml (for runs from before the
    column existed), or (None, why not)."""
    try:
        if folder not in studies:
            studies[folder] = Study.from_folder(folder)
        task = studies[folder].task(row["task"])
        if task.context_length != int(row["context"]):
            return None, f"its task now builds with context {task.context_length}, the run used {row['context']}"
        return scoring_parts(task, studies[folder].config.eval_sequences, mask), ""
    except UserError as exc:
        return None, f"its task could not be rebuilt to check: {exc}"


def _data_fingerprint(folder: Path, row: dict, studies: dict, stored: str | None) -> str | None:
    """The run's data fingerprint (:func:`mnemoscope.storage.migrations.recorded_data_fingerprint`)."""
    def rebuild():
        if folder not in studies:
            studies[folder] = Study.from_folder(folder)
        return studies[folder].task(row["task"]).data_fingerprint()
    return recorded_data_fingerprint(row, rebuild, stored)


@dataclass
class Comparison:
    """Everything the page draws. ``runs``: a row per run (``key`` identifies it); ``curves`` and
    ``gap_curves``: per-position rows in the panel's units; ``gaps``: band rows as in a study's
    gaps.csv; ``refused``: one line per explicitly requested baseline some runs cannot pair with."""

    runs: pd.DataFrame
    curves: pd.DataFrame
    gaps: pd.DataFrame
    gap_curves: pd.DataFrame
    baselines: list[str]
    configs: pd.DataFrame
    refused: list[str]
    studies: list[Path]


def load(selections: list[Selection]) -> tuple[pd.DataFrame, dict, list[Path]]:
    """The selected runs of every folder (a folder named twice: its selections merged), with their
    losses and scoring fingerprints. Returns (runs, {key: (losses, mask)}, folders in order)."""
    merged: dict[Path, Selection] = {}
    for sel in selections:
        key = sel.folder.resolve()
        if key in merged:
            merged[key].archs = [] if not (merged[key].archs and sel.archs) else merged[key].archs + sel.archs
        else:
            merged[key] = Selection(sel.folder, list(sel.archs))
    names = [s.folder.resolve().name for s in merged.values()]
    tables, losses, rebuilt = [], {}, {}
    for (resolved, sel), name in zip(merged.items(), names):
        study = name if names.count(name) == 1 else f"{resolved.parent.name}/{name}"
        runs = _study_runs(sel.folder)
        order = [a for a in (StudyFolder(sel.folder).config().get("archs") or []) if a in set(runs["arch"])]
        available = list(dict.fromkeys(order + list(runs["arch"])))
        chosen = list(dict.fromkeys(a for w in sel.archs for a in _match(w, available, sel.folder))) or available
        runs = runs[runs["arch"].isin(chosen)].copy()
        runs["arch_order"] = runs["arch"].map(chosen.index)
        runs = runs.sort_values(["arch_order", "task", "params", "seed"], kind="stable")
        fingerprints, parts, notes = [], [], []
        for r in runs.to_dict("records"):
            k = f"{study}/{r['run_id']}"
            try:
                losses[k] = StudyFolder(sel.folder).run_losses(r["run_id"])
            except (OSError, ValueError, KeyError):
                losses[k] = None
            p, note = None, "no stored losses (runs/<id>/losses.npz)"
            if isinstance(r.get("scoring_parts"), str):
                # the task part is the data's fingerprint (runs scored before recorded the task's options and path)
                p, note = json.loads(r["scoring_parts"]), ""
                p["task"] = _data_fingerprint(sel.folder, r, rebuilt, p.get("task"))
            elif losses[k] is not None:
                p, note = _rebuilt_parts(sel.folder, r, losses[k][1], rebuilt)
            parts.append(p)
            fingerprints.append(scoring_fingerprint(p) if p else None)
            notes.append(note)
        runs["study"], runs["folder"] = study, str(sel.folder)
        runs["key"] = study + "/" + runs["run_id"]
        runs["scoring_fingerprint"], runs["parts"], runs["note"] = fingerprints, parts, notes
        tables.append(runs)
    runs = pd.concat(tables, ignore_index=True)
    return _labelled(runs), losses, [s.folder for s in merged.values()]


def _labelled(runs: pd.DataFrame) -> pd.DataFrame:
    """``label``: study and architecture, plus size, seed and task where runs of one architecture
    on one panel (task family) differ in them."""
    runs = runs.copy()
    runs["family"] = runs["task"].map(lambda t: str(t).partition(":")[0])
    label = runs["study"] + ": " + runs["arch"]
    groups = runs.groupby(["study", "arch", "family"])
    for col, fmt in (("params", lambda p: format_count(int(p))), ("seed", lambda s: f"seed {s}"), ("task", str)):
        if (groups[col].nunique() > 1).any():
            label = label + " " + runs[col].map(fmt)
    runs["label"] = label
    return runs


def _byte_scale(pp: pd.DataFrame) -> tuple[np.ndarray, np.ndarray] | None:
    """(bytes of context, bytes per token) at each position, or None when the run's table does not
    say (a table from before the bytes columns: filled for byte-level text by ``with_bytes``)."""
    b = with_bytes(pp)["context_bytes"].to_numpy(float)
    if np.isnan(b).all():
        return None
    return b, b / (pp["position"].to_numpy(float) + 1)


def _curves(runs: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Per-position rows of every run in its panel's units; returns also each run's byte scale
    where its panel is drawn in bytes ({key: (bytes, bytes_per_token)})."""
    tables, scales = [], {}
    for family, group in runs.groupby("family", sort=False):
        tokenizers = {(p or {}).get("tokenizer", "?") for p in group["parts"]}
        in_bytes = len(tokenizers) > 1
        for r in group.to_dict("records"):
            pp = StudyFolder(r["folder"]).run(r["run_id"]).per_position().sort_values("position")
            x = pp["position"].to_numpy(float) + 1
            y = pp[["loss", "ci_low", "ci_high"]].to_numpy(float)
            unit = ("tokens of context (position + 1)", "test loss (nats/token)")
            if in_bytes:
                scale = _byte_scale(pp)
                if scale is None:
                    continue  # cannot be put in bytes: left out of the figure (the table keeps it)
                scales[r["key"]] = scale
                x, y = scale[0], y / math.log(2) / scale[1][:, None]
                unit = ("bytes of context", "test loss (bits/byte)")
            tables.append(pd.DataFrame({"key": r["key"], "study": r["study"], "label": r["label"], "arch": r["arch"],
                                        "family": family, "position": pp["position"].to_numpy(), "x": x,
                                        "loss": y[:, 0], "ci_low": y[:, 1], "ci_high": y[:, 2], "x_unit": unit[0],
                                        "y_unit": unit[1]}))
    return (pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()), scales


def _resolve_baselines(requested: list[Selection] | None, runs: pd.DataFrame) -> list[str]:
    """Baselines as 'study: arch' labels of (study, arch); default: the first study's first architecture."""
    if not requested:
        first = runs.iloc[0]
        return [f"{first['study']}: {first['arch']}"]
    out = []
    for sel in requested:
        mine = runs[runs["folder"].map(lambda f: Path(f).resolve()) == sel.folder.resolve()]
        if mine.empty:
            raise UserError(f"baseline folder {sel.folder} is not one of the compared studies")
        if not sel.archs:
            raise UserError(f"--baseline {sel.folder} names no architecture: write {sel.folder}:ARCH")
        for wanted in sel.archs:
            found = _match(wanted, list(dict.fromkeys(mine["arch"])), sel.folder)
            if len(found) > 1:
                raise UserError(f"baseline {wanted!r} matches {', '.join(found)} in {sel.folder}; name one")
            out.append(f"{mine['study'].iloc[0]}: {found[0]}")
    return list(dict.fromkeys(out))


def _partner(r: dict, base_runs: pd.DataFrame) -> tuple[dict | None, str]:
    """The baseline run that ``r`` pairs with (same fingerprint; the same size and seed preferred),
    or (None, which part of what they were scored on differs)."""
    same = base_runs[base_runs["scoring_fingerprint"].eq(r["scoring_fingerprint"]) & base_runs["scoring_fingerprint"].notna()]
    if r["scoring_fingerprint"] is not None and not same.empty:
        rank = (same["params"] != r["params"]).astype(int) * 2 + (same["seed"] != r["seed"]).astype(int)
        return same.loc[rank.idxmin()].to_dict(), ""
    kin = base_runs[base_runs["family"] == r["family"]]
    b = (kin if not kin.empty else base_runs).iloc[0].to_dict()
    if r["parts"] is None or b["parts"] is None:
        return None, "unknown: " + (r["note"] or b["note"])
    return None, scoring_difference(r["parts"], b["parts"])


def compare(selections: list[Selection], baselines: list[Selection] | None = None, n_boot: int = N_BOOT) -> Comparison:
    """Load the selected runs, pair each with each baseline where their fingerprints agree, and
    compute the band gaps and per-position gap curves with paired bootstrap intervals."""
    if not selections:
        raise UserError("compare needs at least one study folder")
    runs, losses, folders = load(selections)
    explicit = bool(baselines)
    if baselines:  # a baseline's folder that was not listed joins with that architecture
        listed = {s.folder.resolve() for s in selections}
        extra = [s for s in baselines if s.folder.resolve() not in listed]
        if extra:
            runs, losses, folders = load(list(selections) + extra)
    base_labels = _resolve_baselines(baselines, runs)
    curves, scales = _curves(runs)
    runs = _in_bytes(runs, n_boot)
    status = {b: [] for b in base_labels}
    gap_rows, curve_rows, refused = [], [], []
    for b in base_labels:
        study, _, arch = b.partition(": ")
        base_runs = runs[(runs["study"] == study) & (runs["arch"] == arch)]
        unpaired: dict[str, list[str]] = {}
        for r in runs.to_dict("records"):
            if r["key"] in set(base_runs["key"]):
                status[b].append("baseline")
                continue
            partner, why = _partner(r, base_runs)
            if partner is not None and (losses.get(r["key"]) is None or losses.get(partner["key"]) is None):
                partner, why = None, "no stored losses"
            if partner is not None:
                (mine, mask), (theirs, base_mask) = losses[r["key"]], losses[partner["key"]]
                if mine.shape != theirs.shape or not np.array_equal(mask, base_mask):
                    partner, why = None, "target mask (stored losses differ)"
            if partner is None:
                status[b].append(f"unpaired: differs in {why}")
                unpaired.setdefault(why, []).append(r["label"])
                continue
            status[b].append(f"paired with {partner['label']}")
            seed = int(r["seed"])
            g = paired_gap(mine, theirs, mask, n_boot, seed=seed)
            gap_rows.append(g.assign(study=r["study"], arch=r["arch"], label=r["label"], task=r["task"],
                                     params=r["params"], seed=r["seed"], baseline=b, baseline_run=partner["label"]))
            c = paired_gap_curve(mine, theirs, mask, n_boot=n_boot, seed=seed)
            c["x"] = c["position"] + 1
            c["y_unit"] = "gap (nats/token)"
            if r["key"] in scales:  # drawn in bytes: the gap too, in bits per byte at each bin
                nbytes, per_token = scales[r["key"]]
                i = c["start"].to_numpy()
                c["x"] = nbytes[i]
                c[["gap", "gap_low", "gap_high"]] = c[["gap", "gap_low", "gap_high"]].to_numpy() / math.log(2) / per_token[i, None]
                c["y_unit"] = "gap (bits/byte)"
            curve_rows.append(c.assign(key=r["key"], study=r["study"], arch=r["arch"], label=r["label"],
                                       family=r["family"], baseline=b))
        for why, labels in unpaired.items():
            if explicit:
                refused.append(f"refused: pairing {len(labels)} run(s) ({', '.join(labels[:3])}"
                               f"{', ...' if len(labels) > 3 else ''}) with baseline {b}: they were scored on "
                               f"different data, which differs in {why}")
    for b in base_labels:
        runs[f"vs {b}"] = status[b]
    gap_cols = ["study", "arch", "label", "task", "params", "seed", "baseline", "baseline_run", "band", "gap",
                "gap_low", "gap_high", "significant"]
    gaps = pd.concat(gap_rows, ignore_index=True)[gap_cols] if gap_rows else pd.DataFrame(columns=gap_cols)
    gap_curves = pd.concat(curve_rows, ignore_index=True) if curve_rows else pd.DataFrame()
    return Comparison(runs, curves, gaps, gap_curves, base_labels, config_differences(folders, runs), refused, folders)


def _in_bytes(runs: pd.DataFrame, n_boot: int = N_BOOT) -> pd.DataFrame:
    """Each run's bits per byte with a bootstrap interval over its windows (``bits_per_byte``,
    ``_low``, ``_high``; NaN where its tokens are not text), and ``tokenizers_differ``: whether the
    runs of its task family read their text through different tokenizers (then they are ranked in
    bits per byte, the one unit they share)."""
    runs = runs.copy()
    values = []
    for r in runs.to_dict("records"):
        try:
            z = StudyFolder(r["folder"]).run(r["run_id"]).loss_arrays()
            target = stored_target_bytes(r, z)
        except (OSError, ValueError, KeyError):
            target = None
        values.append(bits_per_byte(z["losses"], z["mask"], target, n_boot, seed=int(r["seed"]))
                      if target is not None else (math.nan,) * 3)
    runs["bits_per_byte"], runs["bits_per_byte_low"], runs["bits_per_byte_high"] = (
        [v[i] for v in values] for i in range(3))
    tokenizer = runs["parts"].map(lambda p: (p or {}).get("tokenizer", "?"))
    runs["tokenizers_differ"] = tokenizer.groupby(runs["family"]).transform("nunique") > 1
    return runs


def config_differences(folders: list[Path], runs: pd.DataFrame) -> pd.DataFrame:
    """The settings in which the studies' config.yaml differ: a row per key, a column per study."""
    names = list(dict.fromkeys(runs["study"]))
    configs = {name: StudyFolder(folder).config() for name, folder in zip(names, folders)}
    for name, c in configs.items():  # context None: each task's own, which the runs know
        if c.get("context") is None:
            known = sorted({int(x) for x in runs.loc[runs["study"] == name, "context"].dropna()}) if "context" in runs else []
            c["context"] = f"each task's own ({', '.join(map(str, known))})" if known else None
    for name, folder in zip(names, folders):  # the code each study ran
        env = StudyFolder(folder).environment()
        commit = env.get("git_commit")
        configs[name]["mnemoscope commit"] = (commit[:10] + (" (with uncommitted changes)" if env.get("git_dirty") else "")
                                              if commit else "not recorded")
    keys = list(dict.fromkeys(k for c in configs.values() for k in c))
    rows = []
    for k in keys:
        values = [json.dumps(c.get(k), sort_keys=True, default=str) for c in configs.values()]
        if len(set(values)) > 1:
            rows.append({"setting": k, **{n: configs[n].get(k) for n in names}})
    return pd.DataFrame(rows, columns=["setting", *names]).astype(str) if rows else pd.DataFrame(columns=["setting", *names])


def fits_of(runs: pd.DataFrame) -> pd.Series:
    """Each run's effective context with its interval from its study's fits.csv ('' where not analysed)."""
    out = pd.Series("", index=runs.index)
    for folder, group in runs.groupby("folder", sort=False):
        fits = StudyFolder(folder).table("fits.csv")
        if fits.empty or "effective_context" not in fits:
            continue
        by_id = fits.set_index("run_id")
        for i, run_id in group["run_id"].items():
            if run_id in by_id.index:
                out[i] = format_effective_context(by_id.loc[run_id].to_dict())
    return out


def runs_table(c: Comparison) -> pd.DataFrame:
    """The page's and runs.csv's table: a row per run, what it was scored on, how it pairs."""
    t = c.runs.copy()
    t["size"] = t["params"].map(lambda p: format_count(int(p)))
    known = pd.Series([int(p["context"]) if p and str(p.get("context", "")).isdigit() else None for p in t["parts"]],
                      index=t.index, dtype=object)
    t["context"] = t["context"].astype(object).where(t["context"].notna(), known) if "context" in t else known
    t["effective context"] = fits_of(t)
    t["fingerprint"] = t["scoring_fingerprint"].fillna("unknown")
    for part in SCORING_PARTS:
        t[f"scored_{part}"] = [(p or {}).get(part, "") for p in t["parts"]]
    cols = ["study", "arch", "task", "size", "seed", "context", "test_loss", "bits_per_byte", "bits_per_byte_low",
            "bits_per_byte_high", "effective context", "fingerprint",
            *[f"vs {b}" for b in c.baselines], "run_id", *[f"scored_{p}" for p in SCORING_PARTS]]
    return t[[col for col in cols if col in t]]
