"""Rebuild every committed study's tables, figures and report from its run folders, in a copy,
and compare them with the committed files: the check that a change to how study folders are read
or written changes no result.

    OMP_NUM_THREADS=1 python benchmarks/rebuild.py [results/NAME ...]   (default: every study in results/)

For each study (a folder of ``results/`` with a ``config.yaml``; ``results/benchmarks`` holds no
study) the folder is copied to a temporary directory, and there:

1. the run tables are rebuilt from ``runs/*/`` (``runs.parquet``, ``per_position.parquet``,
   ``history*.parquet``; a scored study's ``fits.csv`` and analysis tables too);
2. the analysis tables (``fits.csv``, ``gaps.csv``, ``context.parquet``, ...) are rebuilt from each
   run's stored analysis (``runs/<id>/analysis/``), and the growth tables from the stored growth
   analysis, made with the settings that analysis was made with (the first run's ``fit.json``)
   and paired against the committed ``gaps.csv``'s baseline, only where every run has one (else
   they are put back as committed): nothing is retrained or re-measured (a model's forward pass stops the check);
3. ``study.py report`` rebuilds the figures and ``report.html``.

Every file of the copy is then compared with the committed one: ``identical`` (same bytes),
``equal values`` (a parquet or CSV table whose values, columns and types are equal but whose bytes
differ: its metadata), ``equal to float order`` (equal to a relative 1e-6, ``FLOAT_ORDER``: a fit's
optimizer on another CPU), ``equal but paths`` (``report.html`` identical once the copy's path is replaced by the
study's), or ``DIFFERS``. The script exits 1 when any file differs.
"""
from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent


class WouldMeasure(Exception):
    """Raised where the rebuild would run a model (a forward pass): the check reads stored results
    only (a model may be loaded, e.g. to count an older run's active parameters)."""


def _refuse(*args, **kwargs):
    raise WouldMeasure("a model would be loaded")


def rebuild(folder: Path, committed: Path, log=lambda line: None) -> list[str]:
    """Rebuild ``folder`` (a copy of ``committed``) in place from its stored run folders (see the
    module's docstring); returns notes on what was not rebuilt, and why. Tables that cannot be
    rebuilt without measuring are put back as committed before the report."""
    import torch

    from mnemoscope.score import scoring as score
    from mnemoscope.storage import study_folder as store
    from mnemoscope.analysis.analyze import analyze
    from mnemoscope.analysis.growth import analyze_growth
    from mnemoscope.report.page import write_report
    from mnemoscope.study.runner import Study

    notes = []
    call = torch.nn.Module.__call__
    torch.nn.Module.__call__ = _refuse  # a forward pass measures: the rebuild reads stored results only
    try:
        config = store.StudyFolder(folder).config()
        if config.get("score"):
            score.collect(folder)
        else:
            study = Study.from_folder(folder)
            study.collect()
            failed = []
            settings, baseline = study_settings(study), committed_baseline(committed)
            analyze(study, settings, log=lambda line: failed.append(line) if "failed" in line else None,
                    baseline=baseline if baseline in study.config.archs else None)
            if failed:
                notes.append(f"analysis not rebuilt ({len(failed)} runs keep no stored analysis made with the settings "
                             f"of the others)")
                _restore(folder, committed, ANALYSIS_TABLES)
            lost = []  # a run whose stored growth analysis is of an older layout, and whose weights are not kept

            def growth_log(line: str) -> None:
                log(line)
                if "no effective context through training" in line:
                    lost.append(line)
            try:
                analyze_growth(study, settings, log=growth_log)
            except WouldMeasure:
                lost.append("a forward pass")
            if lost:
                notes.append(f"growth not rebuilt ({len(lost)} runs keep no stored growth analysis of today's layout)")
                _restore(folder, committed, GROWTH_TABLES)
        write_report(folder)
    finally:
        torch.nn.Module.__call__ = call
    return notes


def study_settings(study):
    """The analysis settings the study's stored analysis was made with (its first analysed run's,
    :func:`mnemoscope.analysis.analyze.stored_settings`: a study analysed with ``--variants
    truncate`` is rebuilt so), else the defaults."""
    from mnemoscope.analysis.analyze import AnalysisSettings, stored_settings

    for run_id in study.folder.finished():
        try:
            return stored_settings(study.folder.run(run_id))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return AnalysisSettings()


def committed_baseline(committed: Path) -> str | None:
    """The baseline the committed gaps.csv was paired against (``analyze --baseline``), or None."""
    try:
        gaps = pd.read_csv(committed / "gaps.csv")
    except (OSError, ValueError, pd.errors.EmptyDataError):
        return None
    return str(gaps["baseline"].iloc[0]) if "baseline" in gaps and len(gaps) else None


ANALYSIS_TABLES = ("fits.csv", "gaps.csv", "context.parquet", "octaves.parquet", "extrapolation.parquet",
                   "extrapolation_buckets.parquet")
GROWTH_TABLES = ("growth.parquet", "growth_fits.csv", "growth_crossings.csv")


def _restore(folder: Path, committed: Path, names) -> None:
    for name in names:
        (folder / name).unlink(missing_ok=True)
        if (committed / name).exists():
            shutil.copyfile(committed / name, folder / name)


def compare(committed: Path, rebuilt: Path) -> dict[str, str]:
    """Each file of ``committed`` (recursively), or new in ``rebuilt``, with its verdict."""
    verdicts = {}
    names = {p.relative_to(committed) for p in committed.rglob("*") if p.is_file()}
    names |= {p.relative_to(rebuilt) for p in rebuilt.rglob("*") if p.is_file()}
    for rel in sorted(names):
        a, b = committed / rel, rebuilt / rel
        if not b.exists():
            verdicts[str(rel)] = "not rebuilt" if rel.parent == Path(".") else "DIFFERS: removed"
            continue
        if not a.exists():
            verdicts[str(rel)] = "DIFFERS: new"
            continue
        if a.read_bytes() == b.read_bytes():
            verdicts[str(rel)] = "identical"
        elif rel.suffix in (".parquet", ".csv") and _same_values(a, b):
            verdicts[str(rel)] = "equal values"
        elif rel.suffix in (".parquet", ".csv") and _same_values(a, b, rtol=FLOAT_ORDER):
            verdicts[str(rel)] = "equal to float order"
        elif rel.suffix == ".html" and _paths_aside(a.read_text()) == _paths_aside(b.read_text()):
            verdicts[str(rel)] = "equal but paths"
        else:
            verdicts[str(rel)] = "DIFFERS"
    return verdicts


def _paths_aside(html: str) -> str:
    """A page with a rebuilt copy's path (``TMP/tmpXXXX/NAME``) written as the committed study's
    (``results/NAME``: the reports are made from the repository's root)."""
    return re.sub(re.escape(tempfile.gettempdir()) + r"/tmp[^/]*/", "results/", html)


FLOAT_ORDER = 1e-6  # relative: a fit's optimizer or a sum in another order on another CPU moves the last digits


def _same_values(a: Path, b: Path, rtol: float | None = None) -> bool:
    """The two tables hold equal values (exactly, or to ``rtol``), whatever their bytes."""
    read = pd.read_parquet if a.suffix == ".parquet" else pd.read_csv
    try:
        pd.testing.assert_frame_equal(read(a), read(b), check_exact=rtol is None, rtol=rtol or 0)
        return True
    except (AssertionError, ValueError, pd.errors.EmptyDataError):
        return False


def check(study: Path, keep: Path | None = None) -> tuple[dict[str, str], list[str]]:
    """Copy ``study`` to a temporary folder, :func:`rebuild` it there, :func:`compare` the two;
    ``keep``: a folder the rebuilt copy is kept in (to compare two versions of the code)."""
    from mnemoscope.storage.study_folder import StudyFolder

    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / study.name
        shutil.copytree(study, copy, ignore=shutil.ignore_patterns(*StudyFolder.UNDER_WAY))
        notes = rebuild(copy, study)
        verdicts = compare(study, copy)
        if keep is not None:
            shutil.rmtree(keep / study.name, ignore_errors=True)
            shutil.copytree(copy, keep / study.name)
        return verdicts, notes


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("studies", nargs="*", type=Path)
    p.add_argument("--keep", type=Path, help="keep each rebuilt copy in KEEP/NAME")
    p.add_argument("--against", type=Path, help="compare with the copies an earlier --keep kept (AGAINST/NAME), "
                                                 "not with the committed files")
    args = p.parse_args(argv)
    if args.against is not None and args.keep is None:
        p.error("--against needs --keep")
    from mnemoscope.storage.study_folder import StudyFolder

    studies = args.studies or sorted(d for d in (ROOT / "results").iterdir() if StudyFolder(d).exists)
    bad = 0
    for study in studies:
        verdicts, notes = check(study, args.keep)
        if args.against is not None:
            verdicts = compare(args.against / study.name, args.keep / study.name)
        counts = pd.Series(list(verdicts.values())).str.split(":").str[0].value_counts().to_dict()
        print(f"{study.name}: " + ", ".join(f"{n} {v}" for v, n in counts.items()) + "".join(f"; {n}" for n in notes))
        for rel, v in verdicts.items():
            if v.startswith("DIFFERS") or (v != "identical" and rel.count("/") == 0):
                print(f"  {rel}: {v}")
        bad += sum(v.startswith("DIFFERS") for v in verdicts.values())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
