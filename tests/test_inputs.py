"""Inputs a new user tries that went wrong (issue 25): each is refused in one line before anything is
written, or now does what it says."""
from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mnemoscope import cli
from mnemoscope.cli import main
from test_faults import TINY, make_corpus

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    latin = root / "latin.txt"
    latin.write_bytes(("Le caf\xe9 na\xefve de l'\xe9t\xe9, o\xf9 l'on d\xeene. " * 400).encode("latin-1"))
    return {"texts": make_corpus(root / "texts"), "latin": latin}


def _refused(argv, out: Path, capfd, pattern: str) -> str:
    capfd.readouterr()
    assert main([*argv, "--out", str(out)]) == 2
    err = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: ") and pattern in err[0], err
    assert not out.exists()  # refused before anything is written
    return err[0]


@pytest.mark.parametrize("arch,key", [("transformer:n_layer=0", "n_layer=0"), ("lstm:n_layer=0", "n_layer=0"),
                                      ("hf:llama:num_hidden_layers=0", "num_hidden_layers=0")])
def test_a_model_without_a_block_is_refused(corpus, tmp_path, capfd, arch, key):
    if arch.startswith("hf:"):
        pytest.importorskip("transformers")
    err = _refused(["--arch", arch, "--task", f"text:{corpus['texts']}", *TINY], tmp_path / "s", capfd, key)
    assert "at least one block" in err


@pytest.mark.parametrize("option,words", [("vocab_size=10", "the task sets it"), ("hidden_size=0", "at least 1")])
def test_hf_options_that_break_the_model_follow_the_rule(corpus, tmp_path, capfd, option, words):
    pytest.importorskip("transformers")
    _refused(["--arch", f"hf:llama:{option}", "--task", f"text:{corpus['texts']}", *TINY], tmp_path / "s", capfd, words)


def test_a_context_beyond_the_token_budget_is_refused_before_any_work(corpus, tmp_path, capfd):
    args = [a for a in TINY]
    args[args.index("--context") + 1], args[args.index("--tokens") + 1] = "1000", "500"  # the data hold 1000
    err = _refused(["--arch", "lstm", "--task", f"text:{corpus['texts']}", *args], tmp_path / "s", capfd, "--context 1000")
    assert "--tokens 500" in err and "at least 1k" in err


@pytest.mark.parametrize("option", ["bpe=", "tokenizer="])
def test_an_empty_option_value_is_refused(corpus, tmp_path, capfd, option):
    _refused(["--arch", "lstm", "--task", f"text:source={corpus['texts']},{option}", *TINY], tmp_path / "s", capfd,
             f"option {option} has no value")


def test_bpe_names_its_upper_limit(corpus, tmp_path, capfd):
    err = _refused(["--arch", "lstm", "--task", f"text:source={corpus['texts']},bpe=100000000", *TINY], tmp_path / "s",
                   capfd, "at most 1048576")
    assert "embedding" in err


def test_a_corpus_that_is_not_utf8_is_refused_under_bpe_naming_the_file(corpus, tmp_path, capfd):
    pytest.importorskip("tokenizers")
    err = _refused(["--arch", "lstm", "--task", f"text:source={corpus['latin']},bpe=300", *TINY], tmp_path / "s", capfd,
                   "latin.txt is not UTF-8")
    assert "0xe9" in err and "Latin-1" in err


def test_bytes_keep_a_latin1_corpus_whole(corpus):
    """At byte level nothing is decoded: the file's bytes are its tokens, all of them."""
    from mnemoscope.registry import TASKS

    task = TASKS.get("text")(str(corpus["latin"]), context_length=16)
    assert sum(len(s.tokens) for s in task.splits().values()) == corpus["latin"].stat().st_size


def test_a_resumed_study_says_how_many_runs_remain(corpus, tmp_path, capsys):
    args = ["--arch", "lstm", "cnn", "--task", f"text:{corpus['texts']}", "--out", str(tmp_path / "s"), *TINY,
            "--workers", "0"]
    assert main(args) == 0  # only fills the queue
    assert "2 to run" in capsys.readouterr().out
    assert main(args) == 0  # the same runs are still waiting in the queue: not "0 queued"
    assert "0 already finished, 2 to run" in capsys.readouterr().out


def test_list_help_is_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["list", "--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0 and out.startswith("usage:") and "architectures:" not in out


def test_list_into_a_closed_pipe_ends_quietly():
    """`study.py list | head -1`: the reader is gone before the list is written."""
    r, w = os.pipe()
    os.close(r)  # the reader left: every write fails with EPIPE
    env = {**os.environ, "PYTHONPATH": str(REPO), "TRANSFORMERS_VERBOSITY": "error"}
    done = subprocess.run([sys.executable, str(REPO / "study.py"), "list"], stdout=w, stderr=subprocess.PIPE, text=True,
                          env=env, timeout=300)
    os.close(w)
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr
    assert done.returncode == 141


def test_list_prints_no_library_warnings(capfd):
    pytest.importorskip("transformers")
    assert main(["list"]) == 0
    out, err = capfd.readouterr()
    assert "hf:" in out and "falling back" not in err + out


def test_the_interrupted_line_is_the_last_one(monkeypatch, capsys):
    """A progress bar alive when Ctrl-C ends a command is closed before the line, not redrawn after it."""
    from tqdm import tqdm

    def interrupted(argv, prog):
        bar = tqdm(total=10, file=sys.stderr, mininterval=0)  # noqa: F841 (held by this frame, as a trainer holds its bar)
        bar.update(3)
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, "list", interrupted)
    assert main(["list"]) == 130
    gc.collect()
    err = capsys.readouterr().err
    last = [part for part in err.replace("\r", "\n").splitlines() if part.strip()][-1]
    assert last.startswith("interrupted;"), err
