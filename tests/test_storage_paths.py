"""One path to every file of a study: outside the storage layer (mnemoscope/storage/) no code names
a study's or a run's files, so a change of layout is one change there. Checked on the source: a
string in code (not a docstring, not part of a longer message) that is one of the storage layer's
file names, or a run folder's prefix, is a direct read or write."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from mnemoscope.storage.run_folder import RunFolder
from mnemoscope.storage.study_folder import StudyFolder
from test_settings import docstrings  # the docstrings of a module: prose, not code

REPO = Path(__file__).resolve().parent.parent
STORAGE = REPO / "mnemoscope" / "storage"
NAMES = {StudyFolder.CONFIG, StudyFolder.ENVIRONMENT, StudyFolder.DATA, StudyFolder.RUNS_TABLE,
         StudyFolder.POSITIONS_TABLE, RunFolder.RESULT, RunFolder.LOSSES, RunFolder.POSITIONS, RunFolder.CURVE,
         RunFolder.MODEL, RunFolder.METRICS, RunFolder.RESUMES, RunFolder.LOCK, RunFolder.LAST_CHECKPOINT}
PREFIXES = {StudyFolder.PARTIAL, StudyFolder.WORK}


def sources() -> list[Path]:
    """Every Python file of the project that is not the storage layer or a test."""
    found = [REPO / "study.py"]
    for folder in ("mnemoscope", "benchmarks", "results", "architectures", "tasks", "examples"):
        found += sorted((REPO / folder).rglob("*.py"))
    return [p for p in found if p.is_file() and STORAGE not in p.parents and ".venv" not in p.parts]


def direct_paths(path: Path) -> list[str]:
    """``file:line: 'name'`` for every study file named in ``path``'s code."""
    tree = ast.parse(path.read_text())
    skip = docstrings(tree)
    hits, rel = [], path.relative_to(REPO) if REPO in path.parents else path.name
    for node in ast.walk(tree):
        parts = []
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            parts = [node.value]
        elif isinstance(node, ast.JoinedStr):  # f".tmp-{run_id}": its literal parts
            parts = [v.value for v in node.values[:1] if isinstance(v, ast.Constant)]
        for text in parts:
            if text in NAMES or (isinstance(node, ast.JoinedStr) and text in PREFIXES) or text.rstrip("*") in PREFIXES:
                hits.append(f"{rel}:{node.lineno}: {text!r}")
    return hits


def test_no_study_file_is_named_outside_the_storage_layer():
    hits = [h for p in sources() for h in direct_paths(p)]
    assert not hits, "read or write these through StudyFolder / RunFolder:\n" + "\n".join(hits)


@pytest.mark.parametrize("code", ['out / "runs.parquet"', 'pd.read_parquet(folder / "config.yaml")',
                                  'f".partial-{run_id}"', 'glob(".tmp-*")', 'Path(d) / "last.ckpt"'])
def test_the_scan_finds_a_direct_path(tmp_path, code):
    bad = tmp_path / "probe.py"
    bad.write_text(f'"""A module."""\nx = {code}\n')
    assert any("probe.py:2" in h for h in direct_paths(bad))


def test_messages_and_docstrings_may_name_files(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text('"""Reads config.yaml."""\nraise SystemExit(f"no study at {out} (no config.yaml)")\n')
    assert direct_paths(probe) == []
