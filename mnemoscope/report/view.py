"""A study from Python: :func:`load` any study folder, scored folder (``study.py score``) or
comparison folder (``study.py compare``) as an object whose tables are pandas DataFrames, read
when first asked for, and whose figures (``.plot``) are the report's own: the page and a notebook
call the same functions on the same tables, so a figure drawn here is the figure on the page.
:func:`compare` (or ``study.compare(other, ...)``) puts several studies on one figure, as ``study.py
compare`` does, without writing.

Everything is read through the storage layer (:class:`mnemoscope.storage.study_folder.StudyFolder`), so older
layouts read as the current one (:mod:`mnemoscope.storage.migrations`). docs/python.md documents it.
"""
from __future__ import annotations

import html
import math
from functools import cached_property
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd

from . import page as report, compare as report_compare, growth as report_growth, context_use as report_history
from ..analysis.compare import Comparison, Selection, compare as compare_runs, parse_selection
from ..errors import UserError
from ..registry import TASKS
from ..render.figures import html_table
from ..specs import parse_spec
from ..storage.study_folder import StudyFolder
from ..study.runner import Study
from ..tasks.probe_views import recall_figure, recall_queries
from .findings import findings, findings_html, findings_lines, flags

#: columns every per-run table carries, to join it with ``runs``
RUN_KEYS = ["run_id", "arch", "task", "params", "seed"]
#: rows of ``runs`` a ``repr`` shows before it says how many more there are
REPR_ROWS = 12


def _figure(fig):
    """A figure handed to the user: released by pyplot (a notebook shows it once, as the cell's
    value, not again among the cell's open figures), still drawable, restylable and savable."""
    if fig is not None:
        plt.close(fig)
    return fig


def _need(df: pd.DataFrame, what: str, folder: Path, hint: str = "") -> pd.DataFrame:
    if df.empty:
        raise UserError(f"{folder} has no {what}{hint}")
    return df


class StudyResults:
    """A study folder or a scored folder, read through :class:`~mnemoscope.storage.study_folder.StudyFolder`.

    Every table is a DataFrame, read from disk the first time it is asked for and kept; a table the
    study does not have is empty. ``kind``: ``"study"`` or ``"scored"`` (``study.py score``)."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.folder = StudyFolder(self.path)
        if not self.folder.exists:
            raise UserError(f"no study at {self.path} (a study folder holds config.yaml and runs.parquet)")
        if not self.folder.has_table(StudyFolder.RUNS_TABLE):
            raise UserError(f"{self.path} has no finished runs yet (no runs.parquet): run or resume it with "
                            f"study.py --config {self.folder.config_path}")
        self.plot = StudyPlots(self)

    # -- what the study is --------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return str(self.config.get("name") or self.path.name)

    @cached_property
    def config(self) -> dict[str, Any]:
        """``config.yaml`` as a dict (the settings of ``study.py`` / :func:`mnemoscope.run`)."""
        return self.folder.config()

    @cached_property
    def environment(self) -> dict[str, Any]:
        """``environment.json``: package versions, device, git commit."""
        return self.folder.environment()

    @property
    def kind(self) -> str:
        return "scored" if "score" in self.config else "study"  # study.py score records its settings there

    # -- the tables -------------------------------------------------------------------------------------
    @cached_property
    def _ordered(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        return report.report_tables(self.path)  # as the report draws them (tasks in the study's order)

    @property
    def runs(self) -> pd.DataFrame:
        """A row per run (``runs.parquet``): ``run_id``, ``arch``, ``task``, ``params`` (the target
        size), ``seed``, ``achieved_params``, ``context``, ``tokens_trained``, ``test_loss`` (nats per
        token over every position), ``last_octave_gain`` [``_low``, ``_high``], ``status``, ... (every
        column of the table; docs/python.md)."""
        return self._ordered[0]

    @property
    def per_position(self) -> pd.DataFrame:
        """A row per run and position: the run keys, ``position`` (t predicts token t+1 from t+1 tokens
        of context), ``loss`` (nats per token) with ``ci_low``/``ci_high`` (95% bootstrap over test
        sequences), and, for text, ``context_bytes`` and ``target_bytes`` (mean bytes of context
        before, and of the target at, that position)."""
        return self._ordered[1]

    @cached_property
    def bits_per_byte(self) -> pd.DataFrame:
        """Per position in the units of text (runs on text only): the run keys, ``position``,
        ``context_bytes``, ``bits_per_byte`` (loss / target bytes / ln 2) with ``low``/``high``."""
        pp = self.per_position.dropna(subset=["loss", "context_bytes", "target_bytes"])
        scale = 1 / (pp["target_bytes"] * math.log(2))
        return pd.DataFrame({**{k: pp[k] for k in RUN_KEYS + ["position", "context_bytes"]},
                             "bits_per_byte": pp["loss"] * scale, "low": pp["ci_low"] * scale,
                             "high": pp["ci_high"] * scale}).reset_index(drop=True)

    @cached_property
    def fits(self) -> pd.DataFrame:
        """``fits.csv`` (``study.py analyze``): a row per run, the power law L(t) = L_inf + A t^-alpha
        (``alpha``, ``L_inf``, ``A`` with ``_low``/``_high``, ``fit_status``), the last significant
        octave, the effective context and the losses past the training length."""
        return self.folder.table("fits.csv")

    @property
    def effective_context(self) -> pd.DataFrame:
        """A row per analysed run: the run keys, ``context`` (T), ``effective_context`` in tokens with
        ``effective_context_low``/``_high`` (95%), in bytes for text (``effective_context_bytes``...),
        and the ``tolerance`` it was measured at (from ``fits.csv``)."""
        keep = [c for c in self.fits.columns if c in RUN_KEYS + ["context", "tolerance"] or c.startswith("effective_context")]
        return self.fits[keep]

    @cached_property
    def context(self) -> pd.DataFrame:
        """``context.parquet``, the truncation ablation: the run keys, ``variant`` (truncate, shuffle,
        replace), ``context`` (n tokens given), ``loss`` with ``ci_low``/``ci_high`` on the same
        targets, and the run's ``effective_context``."""
        return self.folder.table("context.parquet")

    @cached_property
    def gaps(self) -> pd.DataFrame:
        """``gaps.csv``: each run's loss minus the ``baseline`` architecture's on the same test
        sequences, per ``band`` of positions (``all``, ``[a, b)``, ``growth``): ``gap``,
        ``gap_low``/``gap_high`` (95% paired bootstrap), ``significant``."""
        return self.folder.table("gaps.csv")

    @cached_property
    def _growth(self):
        return report_growth.growth_tables(self.path)

    @property
    def history(self) -> pd.DataFrame:
        """``history.parquet``: per-position loss at each kept step of training (run keys, ``step``,
        ``tokens`` trained, ``position``, ``loss``, ``context_bytes``)."""
        return self._growth[0]

    @property
    def growth(self) -> pd.DataFrame:
        """A row per kept step (``growth.parquet``, or ``history_steps.parquet`` before its analysis):
        run keys, ``step``, ``tokens``, ``loss``, ``icl_score`` [``icl_low``, ``icl_high``] and, where
        the weights were kept, ``effective_context`` [``_low``, ``_high``]."""
        return self._growth[1]

    @property
    def growth_fits(self) -> pd.DataFrame:
        """``growth_fits.csv``: per run, the law C(D) = a D^g of effective context against training
        tokens (``a``, ``g`` with ``g_low``/``g_high``, ``fit_status``, ``tokens_min``/``_max``)."""
        return self._growth[2]

    @cached_property
    def recall(self) -> pd.DataFrame:
        """Every scored query of the study's recall runs (the report's "recall against distance"):
        run keys, ``model``, ``sequence``, ``position``, ``distance`` (tokens back to its key),
        ``loss``, ``correct``, ``accuracy``; empty without a recall task. Computed once per run from
        its stored model where the report has not kept it yet (``view_recall.parquet``)."""
        parts = [q for _, q, _ in self._recall()]
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()

    def _recall(self):
        runs = self.runs
        specs = [s for s in dict.fromkeys(runs["task"]) if _task_name(s) == "recall"]
        if not specs:
            return []
        study = Study.from_folder(self.path)
        out = []
        for spec in specs:
            task, part = study.task(spec), runs[runs["task"] == spec]
            out.append((task, recall_queries(task, self.folder, part), part))
        return out

    @cached_property
    def findings(self) -> list[tuple[str, str]]:
        """What the study found, as the report's first section says it: [(heading, sentence)]."""
        return findings(self.path, self.runs)

    @cached_property
    def summary(self) -> pd.DataFrame:
        """The report's table of runs, in words: test loss, effective context, gap to the baseline."""
        return report.summary_table(self.runs, self.fits, self.gaps, flags(self.path, self.runs))

    def compare(self, *others, baseline=None) -> "ComparisonResults":
        """This study's runs beside those of ``others`` on one figure, as ``study.py compare`` draws
        them (:func:`compare`; the baseline defaults to this study's first architecture)."""
        return compare(self, *others, baseline=baseline)

    # -- in a notebook ------------------------------------------------------------------------------------
    def __repr__(self) -> str:
        s = self.summary
        lines = [f"{self.kind} {self.name}: {len(self.runs)} runs at {self.path}"]
        lines += ["  " + line for line in s.head(REPR_ROWS).to_string(index=False).splitlines()]
        if len(s) > REPR_ROWS:
            lines.append(f"  ... {len(s) - REPR_ROWS} more (.runs, .summary)")
        return "\n".join(lines + findings_lines(self.findings))

    def _repr_html_(self) -> str:
        s = self.summary
        return (f"<b>{self.kind} {html.escape(self.name)}</b>: {len(self.runs)} runs at "
                f"<code>{html.escape(str(self.path))}</code>" + html_table(s.head(REPR_ROWS))
                + (f"<p>... {len(s) - REPR_ROWS} more (<code>.runs</code>)</p>" if len(s) > REPR_ROWS else "")
                + findings_html(self.findings))


def _task_name(spec: str) -> str:
    """"recall" for a spec of the recall probe (``recall``, ``recall:keys=64``), else the spec."""
    try:
        return "recall" if parse_spec(spec, TASKS)[0] is TASKS.get("recall") else str(spec)
    except Exception:  # a plugin task that cannot be imported here: not the recall probe
        return str(spec)


class StudyPlots:
    """The report's figures of one study, each a matplotlib ``Figure`` (restyle it, ``savefig`` it)."""

    def __init__(self, study: StudyResults):
        self._s = study

    def per_position(self, bytes: bool = False, bins_per_octave: int | None = report.BINS_PER_OCTAVE):
        """Loss against tokens of context, a panel per task (``per_position.png``); ``bytes=True``:
        bits per byte against bytes of context (``per_position_bytes.png``); ``bins_per_octave=None``:
        every position (bytes: binned always)."""
        s = self._s
        if bytes:
            fig = report.bytes_figure(s.per_position, bins_per_octave or report.BINS_PER_OCTAVE, archs=s.runs["arch"])
            if fig is None:
                raise UserError(f"{s.path}: no task of this study is text, so there are no bytes to draw against")
            return _figure(fig)
        return _figure(report.per_position_figure(s.per_position, s.runs, bins_per_octave))

    def gap(self, baseline: str | None = None):
        """Each run's loss minus the ``baseline`` architecture's (default: the study's) on the same
        test sequences, by position (``gap_per_position.png``)."""
        s = self._s
        baseline = baseline or report.gap_baseline(s.path, s.runs)
        if baseline not in set(s.runs["arch"]):
            raise UserError(f"baseline {baseline!r} is not an architecture of {s.path} "
                            f"(it has {', '.join(dict.fromkeys(s.runs['arch']))})")
        fig = report.gap_figure(s.path, s.runs, baseline)
        if fig is None:
            raise UserError(f"{s.path}: no run pairs with {baseline} (one architecture, or losses not stored)")
        return _figure(fig)

    def context(self):
        """The context ablation: loss on the same targets against the context given (``context.png``)."""
        s = self._s
        hint = f"; run study.py analyze {s.path}" if s.kind == "study" else ""
        return _figure(report_history.context_figure(_need(s.context, "context ablation", s.path, hint), s.fits))

    def extrapolation(self):
        """Loss past the training length (``extrapolation.png``)."""
        s = self._s
        return _figure(report_history.extrapolation_figure(
            _need(s.folder.table("extrapolation.parquet"), "length extrapolation", s.path)))

    def growth(self):
        """Effective context and in-context learning score against training tokens (``growth.png``)."""
        s = self._s
        hint = " (run it with --history N)"
        return _figure(report_growth.growth_figure(_need(s.growth, "kept steps", s.path, hint), s.growth_fits))

    def kept_steps(self, bytes: bool = False):
        """The per-position loss at each kept step, coloured by training tokens."""
        s = self._s
        history = _need(s.history, "kept steps", s.path, " (run it with --history N)")
        return _figure(report_growth.curves_figure(history, "context_bytes" if bytes else "position"))

    def recall(self, task: str | None = None):
        """Recall accuracy and loss against the distance back to the key (the recall task's view), for
        ``task`` (a recall spec of the study; default: its first)."""
        parts = {str(r["task"].iloc[0]): (t, q, r) for t, q, r in self._s._recall()}
        if not parts or (task is not None and task not in parts):
            raise UserError(f"{self._s.path} has no recall runs" + (f" on {task}" if task else "") +
                            (f" (its recall tasks: {', '.join(parts)})" if parts else ""))
        spec, queries, runs = parts[task or next(iter(parts))]
        return _figure(recall_figure(spec, runs, queries)[0])


class ComparisonResults:
    """Runs of several studies side by side: a folder ``study.py compare`` wrote, or
    :func:`compare` in memory. Tables: ``runs`` (how each run pairs with each baseline), ``gaps``
    (paired gaps per band), ``per_position`` (the curves drawn, ``curves.parquet``), ``gap_curves``."""

    def __init__(self, comparison: Comparison, path: Path | None = None):
        self.comparison, self.path = comparison, path
        self.plot = ComparisonPlots(self)

    @classmethod
    def from_folder(cls, path: Path | str) -> "ComparisonResults":
        path = Path(path)
        runs = StudyFolder(path).table("runs.csv")
        if runs.empty or not (path / "curves.parquet").is_file():
            raise UserError(f"no comparison at {path} (study.py compare writes runs.csv and curves.parquet)")
        baselines = [c.removeprefix("vs ") for c in runs.columns if c.startswith("vs ")]
        folder = StudyFolder(path)  # a comparison's tables, read as a study's are
        gap_curves = folder.table("gap_curves.parquet")
        c = Comparison(runs, folder.read_table("curves.parquet"), folder.table("gaps.csv"),
                       gap_curves, baselines, pd.DataFrame(), [], [])
        return cls(c, path)

    @property
    def name(self) -> str:
        return self.path.name if self.path else "comparison of " + ", ".join(dict.fromkeys(self.runs["study"]))

    @property
    def runs(self) -> pd.DataFrame:
        """A row per run: ``study``, ``arch``, ``task``, ``seed``, ``test_loss``, and per baseline
        ``vs STUDY: ARCH`` (baseline, paired with ..., or unpaired: differs in ...)."""
        return self.comparison.runs

    @property
    def gaps(self) -> pd.DataFrame:
        """Paired gaps per band: ``study``, ``arch``, ``label``, ``task``, ``params``, ``seed``,
        ``baseline``, ``band``, ``gap`` [``gap_low``, ``gap_high``], ``significant``."""
        return self.comparison.gaps

    @property
    def per_position(self) -> pd.DataFrame:
        """The curves drawn: ``study``, ``arch``, ``label``, ``family`` (panel), ``x`` (context, in
        ``x_unit``), ``loss`` with ``ci_low``/``ci_high`` (in ``y_unit``), ``position``."""
        return self.comparison.curves

    @property
    def gap_curves(self) -> pd.DataFrame:
        return self.comparison.gap_curves

    def __repr__(self) -> str:
        cols = [c for c in ("study", "arch", "task", "seed", "test_loss") if c in self.runs]
        return "\n".join([f"{self.name}: {len(self.runs)} runs; baseline {', '.join(self.comparison.baselines)}"] +
                         ["  " + line for line in self.runs[cols].head(REPR_ROWS).to_string(index=False).splitlines()])

    def _repr_html_(self) -> str:
        cols = [c for c in self.runs.columns if c in ("study", "arch", "task", "seed", "test_loss") or c.startswith("vs ")]
        return f"<b>{html.escape(self.name)}</b>" + html_table(self.runs[cols].head(REPR_ROWS))


class ComparisonPlots:
    """The figures of ``compare.html``: colour the architecture, line style the study."""

    def __init__(self, c: ComparisonResults):
        self._c = c

    def per_position(self):
        """Loss against context, a panel per task family (``per_position.png`` of the comparison)."""
        c = self._c.comparison
        return _figure(report_compare.curves_figure(c, *report_compare.comparison_styles(c.runs)))

    def gap(self):
        """Each run's loss minus its baseline's on the same test sequences (``gaps.png``)."""
        c = self._c.comparison
        if c.gap_curves.empty:
            raise UserError("no run of this comparison pairs with a baseline: no gap to draw")
        return _figure(report_compare.gaps_figure(c, *report_compare.comparison_styles(c.runs)))

    def growth(self):
        """Context use through training, a line per study and architecture (where kept)."""
        if not self._c.comparison.studies:
            raise UserError("a comparison read from its folder does not hold its studies' kept steps: "
                            "study.compare(...) them instead (mnemoscope.load(DIR).compare(OTHER))")
        studies = list(zip(dict.fromkeys(self._c.runs["study"]), self._c.comparison.studies))
        growth, _, styles = report_growth.comparison_growth(studies)
        if growth.empty:
            raise UserError("no study of this comparison kept steps of training (--history N)")
        return _figure(report_growth.growth_figure(growth, None, styles))


def load(path: Path | str) -> StudyResults | ComparisonResults:
    """The study, scored folder or comparison at ``path``, as an object of DataFrames and figures."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"no study folder at {path}")
    if (path / "compare.html").is_file() or ((path / "curves.parquet").is_file() and (path / "runs.csv").is_file()):
        return ComparisonResults.from_folder(path)
    return StudyResults(path)


def _selection(item) -> Selection:
    if isinstance(item, StudyResults):
        return Selection(item.path)
    if isinstance(item, Selection):
        return item
    return parse_selection(str(item))


def compare(*studies, baseline=None) -> ComparisonResults:
    """Runs of several studies side by side, as ``study.py compare`` computes them (nothing is
    written): each of ``studies`` a loaded study, a folder or ``"DIR:ARCH,..."``; ``baseline``:
    ``"DIR:ARCH"`` (or several in a list; default: the first study's first architecture)."""
    if len(studies) == 1 and isinstance(studies[0], (list, tuple)):
        studies = tuple(studies[0])
    baselines = [baseline] if isinstance(baseline, (str, Path)) else baseline
    return ComparisonResults(compare_runs([_selection(s) for s in studies],
                                          [_selection(b) for b in baselines] if baselines else None))
