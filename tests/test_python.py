"""The Python interface (docs/python.md): mnemoscope.load on every kind of folder, its tables and
figures (the report's own PNGs, byte for byte)."""
from __future__ import annotations

from pathlib import Path

import pytest

import mnemoscope
from mnemoscope.errors import UserError
from mnemoscope.figures import figure_png
from mnemoscope.view import ComparisonResults, StudyResults

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "results"


def _png(fig) -> bytes:
    return figure_png(fig)


def test_load_a_study_reads_its_tables_and_draws_the_reports_figures():
    s = mnemoscope.load(RESULTS / "books-long")
    assert isinstance(s, StudyResults) and s.kind == "study" and s.name == "books-long"
    assert s.config["archs"] == ["transformer", "lstm"]
    assert set(s.runs["arch"]) == {"transformer", "lstm"} and len(s.runs) == 2
    assert {"run_id", "arch", "task", "params", "seed", "position", "loss", "ci_low", "ci_high", "context_bytes"} <= set(
        s.per_position.columns)
    assert len(s.per_position) == 2 * 1024
    bpb = s.bits_per_byte
    assert list(bpb.columns[:5]) == ["run_id", "arch", "task", "params", "seed"] and (bpb["bits_per_byte"] > 0).all()
    assert list(s.effective_context["effective_context"]) == list(s.fits["effective_context"])
    assert not s.gaps.empty and not s.context.empty and not s.growth.empty and not s.growth_fits.empty
    assert s.recall.empty  # no recall task
    assert s.findings and "transformer" in repr(s) and "<table" in s._repr_html_()
    for name, draw in [("per_position.png", s.plot.per_position),
                       ("per_position_bytes.png", lambda: s.plot.per_position(bytes=True)),
                       ("gap_per_position.png", s.plot.gap), ("growth.png", s.plot.growth),
                       ("extrapolation.png", s.plot.extrapolation)]:
        assert _png(draw()) == (RESULTS / "books-long" / name).read_bytes(), name
    assert s.plot.context().axes and s.plot.kept_steps().axes


def test_load_a_scored_folder_and_a_comparison():
    s = mnemoscope.load(RESULTS / "pretrained-smollm2")
    assert s.kind == "scored" and len(s.runs) == 1 and not s.per_position.empty
    assert _png(s.plot.per_position()) == (RESULTS / "pretrained-smollm2" / "per_position.png").read_bytes()
    with pytest.raises(UserError, match="no kept steps"):
        s.plot.growth()
    c = mnemoscope.load(RESULTS / "pretrained-smollm2-compare")
    assert isinstance(c, ComparisonResults) and c.comparison.baselines == ["books-bpe: transformer"]
    assert len(c.runs) == 4 and {"family", "x", "loss"} <= set(c.per_position.columns) and not c.gaps.empty
    assert _png(c.plot.per_position()) == (RESULTS / "pretrained-smollm2-compare" / "per_position.png").read_bytes()
    assert _png(c.plot.gap()) == (RESULTS / "pretrained-smollm2-compare" / "gaps.png").read_bytes()
    assert "4 runs" in repr(c)


def test_load_refuses_what_is_not_a_study_in_one_line(tmp_path):
    for path in (tmp_path / "nowhere", tmp_path):
        with pytest.raises(UserError) as e:
            mnemoscope.load(path)
        assert "\n" not in str(e.value)
    s = mnemoscope.load(RESULTS / "books-long")
    with pytest.raises(UserError, match="not an architecture"):
        s.plot.gap("cnn")


def test_compare_in_memory_draws_what_study_py_compare_draws(tmp_path):
    """Loaded studies compared from Python give compare's figure (the committed comparison's)."""
    books = mnemoscope.load(RESULTS / "books-bpe")
    c = books.compare(RESULTS / "pretrained-smollm2", baseline=f"{RESULTS / 'books-bpe'}:transformer")
    assert _png(c.plot.per_position()) == (RESULTS / "pretrained-smollm2-compare" / "per_position.png").read_bytes()
    assert len(c.runs) == 4  # its gaps need the books' text to check the pairing: the tiny comparison below
