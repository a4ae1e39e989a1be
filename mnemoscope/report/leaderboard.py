"""The leaderboard's table and figure (``study.py leaderboard``): a row per architecture, built
from its two study folders, ``recall/<slug>/`` and ``books/<slug>/`` (:func:`mnemoscope.api.run_leaderboard`
trains them), with the committed board's rows beside them (read from its ``table.parquet``, never
recomputed and never written), the rows that could not be measured, and the scale reference.

Every number comes from the measurements the studies already make: recall's distance of half
accuracy from :func:`mnemoscope.tasks.probe_views.recall_half_table`, effective context from the
books study's ``fits.csv`` (``study.py analyze``), bits per byte with :func:`mnemoscope.measure.evaluate.bits_per_byte`
(an interval over test windows), and paired gaps from :func:`mnemoscope.analysis.compare.compare`.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..analysis.compare import Selection, compare
from ..errors import UserError
from ..measure.bootstrap import LEVEL
from ..measure.evaluate import bits_per_byte
from ..registry import TASKS
from ..settings import N_BOOT
from ..render.figures import arch_palette, figure_png
from ..specs import format_count, parse_spec, spec_label
from ..storage import files
from ..storage.study_folder import StudyFolder
from ..tasks.probe_views import recall_half_table, recall_queries
from .compare import write_comparison

PARTS = ("recall", "books")
#: the table's columns (table.parquet), in order
COLUMNS = ["rank", "tied", "arch", "source", "recall_half", "recall_half_low", "recall_half_high", "never_below_half",
           "longest_distance", "accuracy_longest", "effective_context", "effective_context_low",
           "effective_context_high", "effective_context_bytes", "effective_context_bytes_low",
           "effective_context_bytes_high", "bits_per_byte", "bits_per_byte_low", "bits_per_byte_high", "state_size",
           "recall_params", "books_params", "recall_seconds", "books_seconds", "paired", "recall_run", "books_run"]
NOT_MEASURED = ["arch", "part", "reason", "seconds"]
TABLE, NOT_MEASURED_FILE, FIGURE = "table.parquet", "not_measured.csv", "recall_vs_state.png"


def slug(arch: str) -> str:
    """The folder name of an architecture's studies: its label with anything but letters and digits as '-'."""
    return re.sub(r"[^A-Za-z0-9]+", "-", spec_label(arch)).strip("-") or "arch"


def _finished_run(folder: Path) -> dict | None:
    """The one finished, non-diverged run of a part's study folder, or None."""
    study = StudyFolder(folder)
    if not study.exists:
        return None
    for run_id in study.finished():
        row = study.run(run_id).row()
        if row.get("status", "ok") in (None, "ok"):
            return row
    return None


def recall_cells(folder: Path) -> dict:
    """Recall's cells of a row: the distance at which accuracy falls below half [interval], the
    accuracy at the longest distance, state, parameters and training seconds."""
    row = _finished_run(folder)
    if row is None:
        return {}
    study = StudyFolder(folder)
    runs = study.runs()
    runs = runs[runs["run_id"] == row["run_id"]]
    cls, _, options = parse_spec(row["task"], TASKS)
    task = cls(context_length=int(row["context"]), **options)
    half = recall_half_table(recall_queries(task, study, runs), seed=int(row["seed"])).iloc[0]
    never = bool(half["never_below_half"])
    return {"recall_half": math.inf if never else float(half["half_distance"]),
            "recall_half_low": float(half["half_low"]), "recall_half_high": float(half["half_high"]),
            "never_below_half": never, "longest_distance": int(half["longest_distance"]),
            "accuracy_longest": float(half["accuracy_longest"]),
            "state_size": row.get("state_size"), "recall_params": int(row["achieved_params"]),
            "recall_seconds": float(row["wall_seconds"]), "recall_run": row["run_id"]}


def _bits_per_byte(arrays: dict) -> tuple[float, float, float]:
    """Bits per byte of a run's ``losses.npz`` (losses, mask, target_bytes) with its interval over
    test windows (:func:`mnemoscope.measure.evaluate.bits_per_byte`, which every runs table's column comes from)."""
    return bits_per_byte(arrays["losses"], arrays["mask"], arrays["target_bytes"], n_boot=N_BOOT)


def _fit_of(fits: pd.DataFrame, run_id: str) -> dict:
    """A run's row of fits.csv; empty where its analysis failed or was not made."""
    found = fits[fits["run_id"] == run_id] if "run_id" in fits else fits.iloc[:0]
    return found.iloc[0].to_dict() if len(found) else {}


def books_cells(folder: Path) -> dict:
    """Books' cells of a row: effective context in tokens and bytes [interval] (the study's
    fits.csv), bits per byte [interval], parameters and training seconds."""
    row = _finished_run(folder)
    if row is None:
        return {}
    study = StudyFolder(folder)
    fits = study.table("fits.csv")
    fit = _fit_of(fits, row["run_id"])
    bpb = _bits_per_byte(study.run(row["run_id"]).loss_arrays())
    cells = {f"effective_context{k}": fit.get(f"effective_context{k}") for k in ("", "_low", "_high")}
    cells.update({f"effective_context_bytes{k}": fit.get(f"effective_context_bytes{k}") for k in ("", "_low", "_high")})
    return {**cells, "bits_per_byte": bpb[0], "bits_per_byte_low": bpb[1], "bits_per_byte_high": bpb[2],
            "books_params": int(row["achieved_params"]), "books_seconds": float(row["wall_seconds"]),
            "books_run": row["run_id"]}


def own_rows(out: Path, archs: list[str], source: str) -> pd.DataFrame:
    """A row per architecture with at least one part measured in ``out``."""
    rows = []
    for arch in archs:
        cells = {**recall_cells(out / "recall" / slug(arch)), **books_cells(out / "books" / slug(arch))}
        if cells:
            rows.append({"arch": arch, "source": source, **cells})
    return pd.DataFrame(rows, columns=[c for c in COLUMNS if c not in ("rank", "tied", "paired")] + ["paired"])


def _recall_key(t: pd.DataFrame) -> tuple[pd.Series, pd.Series, pd.Series]:
    """(point, low, high) of recall's distance, a run that never falls below half counted at twice
    the longest distance (as the bootstrap counts such a draw)."""
    top = 2.0 * t["longest_distance"].astype(float)
    point = t["recall_half"].astype(float).where(~t["never_below_half"].fillna(False).astype(bool), top)
    return point, t["recall_half_low"].astype(float), t["recall_half_high"].astype(float)


def ranked(table: pd.DataFrame) -> pd.DataFrame:
    """Rows ordered by recall's distance of half accuracy (then bits per byte); ``rank`` is one
    more than the number of rows whose interval lies wholly above this row's, so rows whose
    intervals overlap share a rank when nothing separates them; ``tied`` names the rows whose
    interval overlaps this row's. Rows without recall come last, unranked."""
    t = table.copy()
    point, low, high = _recall_key(t)
    t["_point"], t["_bpb"] = point, t["bits_per_byte"].astype(float)
    t = t.sort_values(["_point", "_bpb"], ascending=[False, True], na_position="last", kind="stable")
    point, low, high = _recall_key(t)
    ranks, tied = [], []
    for i in t.index:
        if pd.isna(point[i]):
            ranks.append(None)
            tied.append("")
            continue
        ranks.append(int(1 + (low > high[i]).sum()))
        overlap = (low <= high[i]) & (high >= low[i]) & point.notna() & (t.index != i)
        tied.append(", ".join(map(spec_label, t.loc[overlap, "arch"])))
    t["rank"], t["tied"] = pd.array(ranks, dtype="Int64"), tied
    return t.drop(columns=["_point", "_bpb"]).reset_index(drop=True)[COLUMNS]


def _interval(v, lo, hi, fmt: str = "{:.1f}") -> str:
    if v is None or pd.isna(v):
        return "not measured"
    ends = "" if pd.isna(lo) or pd.isna(hi) else f" [{fmt.format(lo)}, {fmt.format(hi)}]"
    return fmt.format(v) + ends


def _recall_text(r) -> str:
    if isinstance(r["never_below_half"], (bool, np.bool_)) and r["never_below_half"]:
        return f"never below half up to {int(r['longest_distance'])}"
    if pd.isna(r["recall_half"]):
        return "not measured"
    top = r["longest_distance"]
    end = lambda v: f">{int(top)}" if v > top else f"{v:.1f}"  # noqa: E731
    return f"{r['recall_half']:.1f} [{end(r['recall_half_low'])}, {end(r['recall_half_high'])}]"


def markdown_table(t: pd.DataFrame) -> str:
    """The ranked table as markdown, a line per row."""
    head = ["rank", "architecture", "recall falls below half at (tokens) [95%]", "accuracy at the longest distance",
            "effective context on books, tokens [95%]", "bytes [95%]", "bits per byte [95%]", "state (numbers)",
            "parameters (recall / books)", "training seconds (recall / books)", "tied with (intervals overlap)"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for _, r in t.iterrows():
        shared = (t["rank"] == r["rank"]).sum() > 1 if pd.notna(r["rank"]) else False
        rank = "-" if pd.isna(r["rank"]) else f"{r['rank']}{'=' if shared else ''}"
        name = f"**{spec_label(r['arch'])}** (yours)" if r["source"] == "yours" else spec_label(r["arch"])
        count = lambda v: "-" if pd.isna(v) else f"{int(v):,}"  # noqa: E731
        secs = lambda v: "-" if pd.isna(v) else f"{v:.0f}"  # noqa: E731
        cells = [rank, name, _recall_text(r), "-" if pd.isna(r["accuracy_longest"]) else f"{r['accuracy_longest']:.2f}",
                 _interval(r["effective_context"], r["effective_context_low"], r["effective_context_high"], "{:.0f}"),
                 _interval(r["effective_context_bytes"], r["effective_context_bytes_low"],
                           r["effective_context_bytes_high"], "{:.0f}"),
                 _interval(r["bits_per_byte"], r["bits_per_byte_low"], r["bits_per_byte_high"], "{:.3f}"),
                 "unknown" if pd.isna(r["state_size"]) else f"{int(r['state_size']):,}",
                 f"{count(r['recall_params'])} / {count(r['books_params'])}",
                 f"{secs(r['recall_seconds'])} / {secs(r['books_seconds'])}", r["tied"] or "-"]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def recall_state_figure(t: pd.DataFrame):
    """Recall's distance of half accuracy against the numbers of state carried, a point per
    architecture with its interval; log axes; triangles: never below half (drawn at twice the
    longest distance)."""
    drawn = t[t["state_size"].notna() & t["recall_half_low"].notna()]
    fig, ax = plt.subplots(figsize=(7, 4.6))
    colors = arch_palette(drawn["arch"]) if not drawn.empty else {}
    point, low, high = _recall_key(drawn)
    for i, r in drawn.iterrows():
        y = point[i]
        ax.errorbar([float(r["state_size"])], [y], yerr=[[max(y - min(low[i], y), 0)], [max(max(high[i], y) - y, 0)]],
                    marker="^" if r["never_below_half"] else "o", ms=6, capsize=3, color=colors[r["arch"]],
                    mfc="none" if r["source"] == "committed" else colors[r["arch"]], label=spec_label(r["arch"]), ls="none")
    ax.set_xscale("log")
    ax.set_yscale("log", base=2)
    ax.set_xlabel("numbers of state carried per sequence at the recall context")
    ax.set_ylabel("distance at which recall falls below half (tokens)")
    never = drawn[drawn["never_below_half"].astype(bool)]
    if not never.empty:  # the triangles stand above the longest distance tested, not at a measured one
        longest = float(never["longest_distance"].max())
        ax.axhline(longest, ls=":", lw=1, color="0.4")
        ax.text(ax.get_xlim()[0], longest, f" longest distance tested ({longest:g})", va="bottom", fontsize=7,
                color="0.3")
    ax.set_title(f"recall against state ({LEVEL}% intervals; filled: yours)\ntriangles: never below half up to the "
                 f"longest distance tested, drawn at twice it", fontsize=9)
    ax.grid(alpha=0.3)
    if not drawn.empty:
        ax.legend(fontsize=7, ncol=2, loc="best")
    fig.tight_layout()
    return fig


def reference_lines(reference: Path, books: dict) -> list[str]:
    """The scale reference under the table: a pretrained model scored on books (not trained here),
    read from its score folder, with how its settings differ from the leaderboard's books part."""
    study = StudyFolder(reference)
    try:
        runs = study.runs()
    except (OSError, UserError, ValueError):
        return [f"Scale reference: none found at {reference}."]
    if runs.empty:
        return [f"Scale reference: none found at {reference}."]
    r = runs.iloc[0].to_dict()
    fits = study.table("fits.csv")
    fit = _fit_of(fits, r["run_id"])
    bpb = _bits_per_byte(study.run(r["run_id"]).loss_arrays())
    differs = []
    if str(r["task"]) != str((books.get("tasks") or ["?"])[0]):
        differs.append(f"task `{r['task']}` through its own tokenizer (the leaderboard: `{books.get('tasks', ['?'])[0]}`)")
    if int(r["context"]) != int(books.get("context") or 0):
        differs.append(f"context {int(r['context'])} of its tokens (the leaderboard: {books.get('context')})")
    n = len(study.run(r["run_id"]).losses()[0])
    differs.append(f"{n} test windows")
    ctx = _interval(fit.get("effective_context"), fit.get("effective_context_low"), fit.get("effective_context_high"),
                    "{:.0f}")
    ctx_bytes = _interval(fit.get("effective_context_bytes"), fit.get("effective_context_bytes_low"),
                          fit.get("effective_context_bytes_high"), "{:.0f}")
    return [f"**Scale reference, not a row** (scored, not trained here: {reference}): {r['arch']}, "
            f"{format_count(int(r['params']))} parameters, pretrained elsewhere; on books {bpb[0]:.3f} "
            f"[{bpb[1]:.3f}, {bpb[2]:.3f}] bits per byte, effective context {ctx} tokens ({ctx_bytes} bytes). "
            f"The same test books, but its settings differ: {'; '.join(differs)}."]


def not_measured_lines(nm: pd.DataFrame) -> list[str]:
    """A line per architecture and part that could not be measured: why, and what it cost."""
    return [f"- {r['arch']} ({r['part']}): {r['reason']} (measured cost: {r['seconds']})" for _, r in nm.iterrows()]


def paired_text(out: Path, board: Path, archs: list[str], baselines: tuple[str, ...]) -> dict[str, str]:
    """Each architecture's paired gaps (all positions, nats/token) to the committed baselines on
    both parts, where they were scored on the same test data (``compare``); writes each part's
    comparison page into ``out/compare-<part>/``. A baseline you trained again yourself is left
    out (its two folders would carry one name on the page). {arch: text}."""
    text: dict[str, list[str]] = {a: [] for a in archs}
    for part in PARTS:
        mine = [Selection(out / part / slug(a)) for a in archs if _finished_run(out / part / slug(a))]
        bases = [Selection(board / part / slug(b), [b]) for b in baselines
                 if _finished_run(board / part / slug(b)) and slug(b) not in {slug(a) for a in archs}]
        if not mine or not bases:
            continue
        c = compare(mine + bases, bases)
        write_comparison(c, out / f"compare-{part}", f"study.py leaderboard ({part})")
        gaps = c.gaps[c.gaps["band"] == "all"]
        for a in archs:
            own = c.runs[c.runs["folder"] == str(out / part / slug(a))]
            for b in c.baselines:
                g = gaps[(gaps["arch"] == a) & (gaps["baseline"] == b)]
                if not g.empty:
                    g = g.iloc[0]
                    text[a].append(f"{part} vs {b.partition(': ')[2]} {g['gap']:+.3f} [{g['gap_low']:+.3f}, {g['gap_high']:+.3f}]")
                elif not own.empty:
                    text[a].append(f"{part} vs {b.partition(': ')[2]}: {own.iloc[0][f'vs {b}']}")
    return {a: "; ".join(v) for a, v in text.items()}


def read_board(board: Path | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The committed rows and not-measured list of ``board`` (only read); empty where there is none."""
    if board is None or not (board / TABLE).is_file():
        return pd.DataFrame(columns=COLUMNS), pd.DataFrame(columns=NOT_MEASURED)
    rows = files.read_parquet(board / TABLE).assign(source="committed")
    return rows, read_not_measured(board)


def read_not_measured(folder: Path) -> pd.DataFrame:
    """A board folder's ``not_measured.csv`` (every column text); empty where there is none."""
    path = folder / NOT_MEASURED_FILE
    return pd.read_csv(path, dtype=str) if path.is_file() else pd.DataFrame(columns=NOT_MEASURED)


def write_board(out: Path, archs: list[str], not_measured: pd.DataFrame, settings, board: Path | None,
                source: str = "yours", header: str = "") -> pd.DataFrame:
    """Write ``table.parquet``, ``table.md`` and ``recall_vs_state.png`` into ``out``: the rows of
    ``archs`` measured in ``out`` beside the committed rows of ``board`` (None: none), ranked; under
    the table the rows not measured (``not_measured`` and the board's) and the scale reference."""
    mine = own_rows(out, archs, source)
    committed, board_nm = read_board(board)
    if board is not None and not mine.empty:
        paired = paired_text(out, board, list(mine["arch"]), settings.baselines)
        mine["paired"] = mine["arch"].map(paired)
    committed = committed[~committed["arch"].isin(mine["arch"])]
    table = ranked(pd.concat([df for df in (committed, mine) if not df.empty], ignore_index=True)
                   if len(committed) + len(mine) else pd.DataFrame(columns=COLUMNS))
    # the board's lines for an architecture measured again here give way to this folder's
    parts = [df for df in (board_nm[~board_nm["arch"].isin(set(mine["arch"]) | set(not_measured["arch"]))],
                           not_measured) if not df.empty]
    nm = (pd.concat(parts, ignore_index=True).drop_duplicates(["arch", "part"], keep="last") if parts
          else pd.DataFrame(columns=NOT_MEASURED))
    files.write_parquet(out / TABLE, table)
    files.write_text(out / NOT_MEASURED_FILE, nm[NOT_MEASURED].to_csv(index=False))
    png = figure_png(recall_state_figure(table))
    files.atomic_write(out / FIGURE, lambda p: p.write_bytes(png))
    paired = [f"- {spec_label(r['arch'])}: {r['paired']}" for _, r in table.iterrows() if isinstance(r["paired"], str) and r["paired"]]
    no_state = [spec_label(a) for a, s in zip(table["arch"], table["state_size"]) if pd.isna(s)]
    lines = [header, markdown_table(table), "",
             f"Ranked by the distance at which recall falls below half; ties: rows whose {LEVEL}% intervals overlap "
             "(a row's rank is one more than the number of rows whose interval lies wholly above its own).",
             "", f"![recall against state]({FIGURE})" + (f" (not drawn, no state size known: {', '.join(no_state)})" if no_state else ""),
             "", "**Not measured**" + (":" if len(nm) else ": none."), *not_measured_lines(nm), "",
             *reference_lines(Path(settings.reference), dict(settings.books)), ""]
    if paired:
        lines += [f"**Paired gaps** (nats/token over all positions, {LEVEL}% paired bootstrap intervals over test "
                  "sequences; pages in compare-recall/ and compare-books/):", *paired, ""]
    files.write_text(out / "table.md", "\n".join(lines).lstrip("\n"))
    return table
