"""The Python interface (docs/python.md): mnemoscope.load on every kind of folder, its tables and
figures (the report's own PNGs, byte for byte), mnemoscope.run against study.py, its errors and
its resume after an interrupt."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

import mnemoscope
from mnemoscope.cli import main
from mnemoscope.errors import UserError
from mnemoscope.render.figures import figure_png
from mnemoscope.report.view import ComparisonResults, StudyResults

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "results"
TINY = dict(params="8k", tokens="6k", context=32, eval_sequences=8, batch_size=8)
TINY_FLAGS = ["--params", "8k", "--tokens", "6k", "--context", "32", "--eval-sequences", "8", "--batch-size", "8"]


def _png(fig) -> bytes:
    return figure_png(fig)


def test_load_a_study_reads_its_tables_and_draws_the_reports_figures():
    s = mnemoscope.load(RESULTS / "books-long")
    assert isinstance(s, StudyResults) and s.kind == "study" and s.name == "books-long"
    assert s.config["archs"] == ["transformer", "lstm"]
    # the study's two runs and its first transformer's, GPT-2's recipe, tabled under its options
    assert set(s.runs["arch"]) == {"transformer", "lstm", "transformer:conv=0,init=gpt2"} and len(s.runs) == 3
    assert {"run_id", "arch", "task", "params", "seed", "position", "loss", "ci_low", "ci_high", "context_bytes"} <= set(
        s.per_position.columns)
    assert len(s.per_position) == 3 * 1024
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
    n = len(mnemoscope.load(RESULTS / "books-bpe").runs) + 1  # books-bpe's runs and SmolLM2
    assert len(c.runs) == n == 5 and {"family", "x", "loss"} <= set(c.per_position.columns) and not c.gaps.empty
    assert _png(c.plot.per_position()) == (RESULTS / "pretrained-smollm2-compare" / "per_position.png").read_bytes()
    assert _png(c.plot.gap()) == (RESULTS / "pretrained-smollm2-compare" / "gaps.png").read_bytes()
    assert f"{n} runs" in repr(c)


def test_recall_by_distance_is_the_recall_tasks_view():
    m = mnemoscope.load(RESULTS / "modalities")
    r = m.recall
    assert {"run_id", "arch", "task", "params", "seed", "distance", "loss", "correct", "accuracy"} <= set(r.columns)
    assert set(r["task"]) == {"recall"} and set(r["arch"]) == set(m.runs["arch"])
    assert sorted(r["distance"].unique()) == [2, 4, 8, 16, 32, 64, 128]
    ax = m.plot.recall().axes[0]
    assert ax.get_xlabel() == "distance back (tokens)" and len(ax.lines) >= 3
    with pytest.raises(UserError, match="no recall runs on copy"):
        m.plot.recall("copy")


def test_load_refuses_what_is_not_a_study_in_one_line(tmp_path):
    (tmp_path / "started").mkdir()
    (tmp_path / "started" / "config.yaml").write_text("name: started\n")  # a study with no finished run yet
    for path, says in ((tmp_path / "nowhere", "no study folder"), (tmp_path, "no study at"),
                       (tmp_path / "started", "no finished runs yet")):
        with pytest.raises(UserError, match=says) as e:
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
    assert len(c.runs) == len(books.runs) + 1  # its gaps need the books' text to check the pairing: the tiny comparison below


def _same(a: pd.DataFrame, b: pd.DataFrame, drop=("wall_seconds", "torch_threads")) -> None:
    pd.testing.assert_frame_equal(a.drop(columns=[c for c in drop if c in a]).reset_index(drop=True),
                                  b.drop(columns=[c for c in drop if c in b]).reset_index(drop=True))


def test_run_writes_the_tables_study_py_writes(text_dir, tmp_path, capsys):
    task = f"text:{text_dir}"
    assert main(["--arch", "lstm", "cnn", "--task", task, *TINY_FLAGS, "--out", str(tmp_path / "cli"),
                 "--no-progress", "--no-analysis"]) == 0
    s = mnemoscope.run(arch=["lstm", "cnn"], task=task, out=tmp_path / "py", analysis=False, progress=False, **TINY)
    assert isinstance(s, StudyResults) and len(s.runs) == 2
    cli = mnemoscope.load(tmp_path / "cli")
    assert s.config == cli.config  # the same study, the same name, the same settings
    _same(s.runs, cli.runs)
    _same(s.per_position, cli.per_position)
    for name in ("per_position.png", "gap_per_position.png"):
        assert (tmp_path / "py" / name).read_bytes() == (tmp_path / "cli" / name).read_bytes()
    assert "wrote" in capsys.readouterr().out  # it prints what study.py prints (quiet=True: nothing)
    # the comparison from Python draws compare.html's figures
    base = f"{tmp_path / 'cli'}:lstm"
    assert main(["compare", str(tmp_path / "cli"), str(tmp_path / "py"), "--baseline", base, "--out", str(tmp_path / "c")]) == 0
    c = cli.compare(s, baseline=base)
    assert len(c.runs) == 4 and not c.gaps.empty
    assert _png(c.plot.per_position()) == (tmp_path / "c" / "per_position.png").read_bytes()
    assert _png(c.plot.gap()) == (tmp_path / "c" / "gaps.png").read_bytes()
    assert _png(mnemoscope.load(tmp_path / "c").plot.gap()) == (tmp_path / "c" / "gaps.png").read_bytes()


def test_run_raises_the_command_lines_errors(text_dir, tmp_path, capsys):
    cases = [(dict(arch="no_such_arch", task=f"text:{text_dir}"), ["--arch", "no_such_arch", "--task", f"text:{text_dir}"]),
             (dict(arch="lstm", task=f"text:{text_dir}", params="lots"), ["--arch", "lstm", "--task", f"text:{text_dir}",
                                                                          "--params", "lots"]),
             (dict(arch="lstm", task=f"text:{text_dir}", workers=-1), ["--arch", "lstm", "--task", f"text:{text_dir}",
                                                                       "--workers", "-1"])]
    for kwargs, argv in cases:
        with pytest.raises(UserError) as e:
            mnemoscope.run(out=tmp_path / "s", **kwargs)
        assert main([*argv, "--out", str(tmp_path / "s")]) == 2
        assert capsys.readouterr().err.strip() == "error: " + str(e.value)
    assert not (tmp_path / "s" / "runs").exists()


def test_an_interrupted_run_resumes_on_the_second_call(text_dir, tmp_path, monkeypatch):
    """A KeyboardInterrupt (the notebook's stop button) during the second run leaves the first
    finished; the second call trains only what is left, and its tables equal an uninterrupted run's."""
    from mnemoscope.study.runner import Study

    execute, calls = Study.execute, []

    def interrupted_once(self, run, progress=True):
        calls.append(run.arch)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return execute(self, run, progress=progress)

    monkeypatch.setattr(Study, "execute", interrupted_once)
    kwargs = dict(arch=["lstm", "cnn"], task=f"text:{text_dir}", analysis=False, progress=False, quiet=True, **TINY)
    with pytest.raises(KeyboardInterrupt, match="rerun the same call"):
        mnemoscope.run(out=tmp_path / "a", **kwargs)
    assert len(list((tmp_path / "a" / "runs").glob("lstm-*"))) == 1
    s = mnemoscope.run(out=tmp_path / "a", **kwargs)
    assert calls == ["lstm", "cnn", "cnn"]  # the finished run is not trained again
    monkeypatch.setattr(Study, "execute", execute)
    whole = mnemoscope.run(out=tmp_path / "b", **kwargs)
    _same(s.runs, whole.runs)
    _same(s.per_position, whole.per_position)
