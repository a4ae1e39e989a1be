"""What a study says must be true: changed data means new runs, an interrupted study says so and
leaves nothing half-made, a study's own advice works, effective context is resolved to the token
and never claims more precision than it measured, console and report agree, plugins are named by
their class, and the report says what was done with the data."""
from __future__ import annotations

import json
import os
import re
import select
import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mnemoscope.training.checkpoints import checkpoint_step
from mnemoscope.cli import main
from test_analysis import CopyBack
from test_faults import TINY, stop_at

REPO = Path(__file__).resolve().parent.parent


def write_corpus(path: Path, words: str, n: int = 3000, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    vocab = words.split()
    path.write_text(" ".join(vocab[i] for i in rng.integers(0, len(vocab), n)) + "\n")
    return path


# -- 1. an edited corpus makes new runs; 8. the report says what was done with the data --------------
def test_an_edited_corpus_makes_new_runs_and_the_study_says_it_mixes_data(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "small.txt", "the quick brown fox jumps over the lazy dog")
    out = tmp_path / "study"
    argv = ["--arch", "lstm", "--task", f"text:{corpus}", "--out", str(out), *TINY]
    assert main(argv) == 0
    first = pd.read_parquet(out / "runs.parquet")
    assert len(first) == 1 and isinstance(first["data_fingerprint"].iloc[0], str)
    capsys.readouterr()

    write_corpus(corpus, "a stitch in time saves nine while rolling stones gather no moss", seed=1)  # overwritten
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "1 runs, 0 already finished" in printed  # not "1 already finished": the data changed
    runs = pd.read_parquet(out / "runs.parquet")
    assert len(runs) == 2 and runs["data_fingerprint"].nunique() == 2
    assert re.search(r"note: the runs of task text:\S+ were trained on 2 versions of its data", printed)
    html = (out / "report.html").read_text()
    assert "were trained on 2 versions of its data" in html

    assert main(argv) == 0  # the same data again: nothing to train
    assert "1 runs, 1 already finished" in capsys.readouterr().out

    # what was done with the data: one file cut in three, each split's documents and tokens
    data = json.loads((out / "data.json").read_text())[f"text:{corpus}"]
    assert len(data) == 2  # both versions are described
    splits = data[first["data_fingerprint"].iloc[0]]["splits"]
    assert splits["test"]["names"] == ["small.txt#test"] and splits["test"]["documents"] == 1
    total = sum(s["tokens"] for s in splits.values())
    assert abs(splits["test"]["tokens"] / total - 0.1) < 0.01
    assert "<h2>Data</h2>" in html and "small.txt#test" in html and "windows may cross documents" in html
    assert "its last 10% for test" in html


def test_runs_recorded_before_data_fingerprints_are_still_recognised(text_dir, tmp_path, capsys):
    from mnemoscope.study.config import StudyConfig, plan

    out = tmp_path / "study"
    argv = ["--arch", "lstm", "--task", f"text:{text_dir}", "--out", str(out), *TINY]
    assert main(argv) == 0
    (folder,) = (out / "runs").iterdir()
    # the run as an older version wrote it: its id without the data, no data_fingerprint recorded
    config = StudyConfig.from_dict(yaml.safe_load((out / "config.yaml").read_text()))
    legacy = out / "runs" / plan(config)[0].run_id(config)
    folder.rename(legacy)
    row = json.loads((legacy / "result.json").read_text())
    del row["data_fingerprint"]
    row["run_id"] = legacy.name
    (legacy / "result.json").write_text(json.dumps(row))
    before = (legacy / "result.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(argv) == 0
    assert "1 runs, 1 already finished" in capsys.readouterr().out
    assert [p.name for p in (out / "runs").iterdir()] == [legacy.name]
    assert (legacy / "result.json").stat().st_mtime_ns == before
    assert pd.read_parquet(out / "runs.parquet")["data_fingerprint"].isna().all()


def test_editing_one_file_of_a_code_folder_prepares_it_again_and_makes_a_new_run_id(tmp_path):
    """The file keeps its size and modification time: only its content says it changed."""
    from mnemoscope.study.config import StudyConfig, plan
    from mnemoscope.study.runner import Study

    folder = tmp_path / "src"
    folder.mkdir()
    for i in range(6):
        (folder / f"m{i}.py").write_text("".join(f"def f{i}_{j}(x):\n    return x * {j}\n" for j in range(60)))
    config = StudyConfig(archs=["lstm"], tasks=[f"code:{folder}"], params=[8000], context=16, tokens=6000).normalized()
    (run,) = plan(config)

    def prepared():
        study = Study(config, tmp_path / "study")
        run_id, task = study.run_id(run), study.task(run.task)
        return run_id, task.fingerprint(), task.data_fingerprint(), task.prepared_path("meta.json").parent

    first = prepared()
    edited = folder / "m3.py"
    stat = edited.stat()
    edited.write_text(edited.read_text().replace("return x * 7\n", "return x + 7\n"))
    os.utime(edited, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert edited.stat().st_size == stat.st_size and edited.stat().st_mtime_ns == stat.st_mtime_ns
    second = prepared()
    assert second[1] != first[1] and second[3] != first[3]  # a new prepared data set beside the old one
    assert (first[3] / "meta.json").exists() and (second[3] / "meta.json").exists()
    assert second[2] != first[2] and second[0] != first[0]  # other data, another run
    assert prepared() == second  # the same content again: the same prepared data and run


def test_the_same_data_under_two_folder_names_pair_in_compare(text_dir, tmp_path):
    import shutil

    from test_compare import _study

    copy = tmp_path / "elsewhere" / "another-name"
    shutil.copytree(text_dir, copy)
    a = _study(text_dir, tmp_path / "A", "transformer")
    b = _study(copy, tmp_path / "B", "lstm")
    out = tmp_path / "AB"
    assert main(["compare", str(a), str(b), "--baseline", f"{a}:transformer", "--out", str(out)]) == 0
    runs = pd.read_csv(out / "runs.csv").set_index("arch")
    assert runs.loc["lstm", "vs A: transformer"] == "paired with A: transformer"
    assert runs["fingerprint"].nunique() == 1
    assert set(pd.read_csv(out / "gaps.csv")["arch"]) == {"lstm"}


# -- 2. Ctrl-C in a terminal, SIGTERM from a scheduler --------------------------------------------------------
def interrupted_cleanly(out: Path) -> None:
    """No finished run; the run's partial folder holds a checkpoint saved on the signal; the queue
    counts the run as interrupted, not lost with its worker."""
    from mnemoscope.training.checkpoints import checkpoint_step
    from mnemoscope.study.queue import RunQueue, closing_line
    from mnemoscope.study.runner import Study

    folders = list((out / "runs").iterdir())
    assert len(folders) == 1 and folders[0].name.startswith(".partial-"), folders
    assert 0 < checkpoint_step(folders[0] / "checkpoints" / "last.ckpt") < 10000
    summary = RunQueue(Study.from_folder(out), create=False).summary()
    assert summary["interrupted"] == 1 and summary["failed_stale"] == 0 and summary["finished"] == 0
    line = closing_line(summary)
    assert "1 interrupted" in line and "lost with their worker" not in line


def long_run(text_dir: Path, out: Path) -> list[str]:
    """10000 steps of a tiny LSTM (seconds): an interrupt comes mid-training."""
    return ["--arch", "lstm", "--task", f"text:{text_dir}", "--out", str(out), "--params", "2k", "--context", "16",
            "--tokens", str(10000 * 8 * 16), "--batch-size", "8", "--eval-sequences", "8", "--no-analysis"]


def test_ctrl_c_saves_a_checkpoint_and_exits_130_with_the_message(text_dir, tmp_path):
    """Ctrl-C at step 1500 (a step the test chooses: mnemoscope.training.checkpoints.StepHook), in a real
    `study.py` process whose output is a pipe; the test waits on events, never on the clock."""
    out, fifo = tmp_path / "study", tmp_path / "step.fifo"
    os.mkfifo(fifo)
    fd = os.open(fifo, os.O_RDWR)  # a writer of its own: no end of file before the process writes
    cmd = [sys.executable, str(REPO / "study.py"), *long_run(text_dir, out)]
    # its own process group, as a shell gives a command; Ctrl-C sends SIGINT to the whole group
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "MNEMOSCOPE_STEP_HOOK": f"pause=1500,fifo={fifo}"})
    pid = os.pidfd_open(proc.pid)
    try:
        # the pipes are read meanwhile, so a full pipe never stops the process before its step
        reader = threading.Thread(target=lambda: result.extend(proc.communicate()), daemon=True)
        result: list[str] = []
        reader.start()
        ready, _, _ = select.select([fd, pid], [], [])
        assert fd in ready, "study.py ended before step 1500"
        assert os.read(fd, 16) == b"1500\n"
        assert list((out / "runs").glob(".partial-*"))  # training, in its working folder
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal does
        reader.join()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        os.close(fd)
        os.close(pid)
    stdout, err = result
    assert proc.returncode == 130, err[-3000:]
    # output to a pipe: plain progress lines, no bar (a tenth of the run is step 1000)
    assert re.search(r": step 1000/10000 \(10%\), loss [\d.]+, \d+:\d\d left", stdout), stdout[-3000:]
    assert [line for line in err.splitlines() if line.strip()] == [
        "interrupted; finished runs are kept and a run under way resumes from its checkpoint: rerun the same command"]
    interrupted_cleanly(out)
    assert checkpoint_step(next((out / "runs").glob(".partial-*")) / "checkpoints" / "last.ckpt") == 1500


def test_sigterm_saves_a_checkpoint_and_exits_130(text_dir, tmp_path):
    """What a scheduler does to a job it preempts (a forked `study.py` process, imports preloaded),
    at step 700 of its training: the checkpoint is that step's."""
    out = tmp_path / "study"
    assert stop_at(long_run(text_dir, out), tmp_path / "fifos", signal.SIGTERM, pause=700) == 700
    assert stop_at.exitcode == 130
    interrupted_cleanly(out)
    assert checkpoint_step(next((out / "runs").glob(".partial-*")) / "checkpoints" / "last.ckpt") == 700


# -- 3. the refusal's advice, followed, continues the study where it is --------------------------------------
def test_the_advice_to_continue_a_study_works_verbatim(text_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "mine"
    assert main(["--arch", "lstm", "--task", f"text:{text_dir}", "--out", str(out), *TINY]) == 0
    finished = sorted(p.name for p in (out / "runs").iterdir())
    capsys.readouterr()
    assert main(["--arch", "lstm", "--task", f"text:{text_dir}", "--out", str(out), *TINY, "--tokens", "3k"]) == 2
    err = capsys.readouterr().err
    advice = re.search(r"to continue it run `([^`]+)`", err).group(1)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # another folder: the advice must not depend on where it is followed
    words = shlex.split(advice)
    assert words[0] == "study.py"
    assert main(words[1:]) == 0
    printed = capsys.readouterr().out
    assert "1 runs, 1 already finished" in printed and f"-> {out}" in printed
    assert sorted(p.name for p in (out / "runs").iterdir()) == finished
    assert not (elsewhere / "results").exists()
    # the study's config.yaml with a flag that changes it is a new study: refused, never a silent retrain elsewhere
    assert main([*words[1:], "--tokens", "3k"]) == 2
    assert "holds a different study" in capsys.readouterr().err
    assert not (elsewhere / "results").exists()


# -- 4. effective context to the token, honest about the grid ----------------------------------------------
def test_lag_k12_reads_12_tokens_of_effective_context(tmp_path, monkeypatch):
    """Position t sees t+1 tokens; its target repeats the token k back, which is in view with n >= k
    tokens of context: the lag k=12 at context 64 must read 12, where the powers of two gave 16 [16, 16]."""
    from mnemoscope.analysis.analyze import ablation_table, truncation_ablation
    from mnemoscope.measure.statistics import context_resolution, format_effective_context
    from mnemoscope.tasks.probes import Lag

    monkeypatch.setenv("MNEMOSCOPE_CACHE", str(tmp_path / "cache"))
    task = Lag(context_length=64, k=12, p=0.8, vocab=16, eval_sequences=128, train_tokens=4000)
    ab = truncation_ablation(CopyBack(16, 12, 0.8), task.splits()["test"], 64, n_targets=128)
    table = ablation_table(ab, 0.01, n_boot=200)
    trunc = table[table["variant"] == "truncate"].iloc[0]
    assert (trunc["effective_context"], trunc["effective_context_low"], trunc["effective_context_high"]) == (12, 12, 12)
    tried = sorted(table[table["variant"] == "truncate"]["context"])
    assert {11, 12} <= set(tried) and set(tried) - {1, 2, 4, 8, 16, 32, 64} <= set(range(9, 16))  # bisected in (8, 16]
    assert ab.forward_tokens["truncate"] == 128 * sum(tried)  # the bisection is counted in the cost
    fit = {"effective_context": 12, "effective_context_low": 12, "effective_context_high": 12,
           **context_resolution(table)}
    assert fit["effective_context_step"] == 1 and fit["effective_context_min"] == 12
    assert format_effective_context(fit) == "12 [12, 12]"


def test_an_effective_context_on_a_coarse_grid_is_no_narrower_than_the_grid():
    """A synthetic loss table through the same functions: the loss falls within 1% from 12 tokens on,
    scored on powers of two only (as analyses made before the bisection were)."""
    from mnemoscope.analysis.analyze import Ablation, ablation_table
    from mnemoscope.measure.statistics import context_resolution, format_effective_context

    contexts = np.array([1, 2, 4, 8, 16, 32, 64])
    rng = np.random.default_rng(0)
    losses = np.where(contexts[None, :] >= 12, 1.0, 2.77) + rng.normal(0, 0.01, (200, len(contexts)))
    ab = Ablation(contexts, {"truncate": losses.astype(np.float32)}, np.full(200, 64), {"truncate": 0})
    table = ablation_table(ab, 0.01, n_boot=200)
    fit = {k: table[k].iloc[0] for k in ("effective_context", "effective_context_low", "effective_context_high")}
    fit.update(context_resolution(table))
    assert (fit["effective_context"], fit["effective_context_step"], fit["effective_context_min"]) == (16, 8, 9)
    assert format_effective_context(fit) == "9-16 [9, 16]"  # not "16 [16, 16]": the truth is anywhere in 9-16


# -- 4, 5. one tiny lag study: floor columns in fits.csv; console, report and summary agree ---------------------
def test_lag_floor_in_fits_and_one_effective_context_string_everywhere(tmp_path, capsys):
    from mnemoscope.tasks.probes import lag_entropy

    out = tmp_path / "lag"
    assert main(["--arch", "lstm", "--task", "lag:k=12,train_tokens=20000,eval_sequences=16", "--context", "64",
                 "--params", "2k", "--tokens", "20k", "--batch-size", "8", "--eval-sequences", "16", "--out", str(out),
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    fits = pd.read_csv(out / "fits.csv")
    row = fits.iloc[0]
    assert row["loss_floor"] == pytest.approx(lag_entropy(16, 0.8))
    assert row["excess_over_floor_low"] <= row["excess_over_floor"] <= row["excess_over_floor_high"]
    assert {"effective_context_step", "effective_context_min"} <= set(fits.columns)
    console = re.search(r"analysis: \S+: .* effective context (.+?) tokens, ", printed).group(1)
    html = (out / "report.html").read_text()
    assert f"<td>{console}</td>" in html  # the report's table cell
    summary = printed[printed.index("summary ("):]
    assert console in summary and "gap to" in summary and "wrote " in summary
    lag_table = html[html.index("distance from the exact floor"):]
    assert f"{row['excess_over_floor']:.4g}" in lag_table  # the lag view shows the same excess


def test_not_meaningful_is_the_one_string_for_a_worse_full_context():
    from mnemoscope.report import context_use as report_history
    from mnemoscope.measure.statistics import format_effective_context

    fit = {"arch": "x.py:Net", "task": "text", "params": 1000, "seed": 0, "context": 512, "effective_context": 4,
           "effective_context_low": 2, "effective_context_high": 256, "full_context_worse": True,
           "best_truncated_context": 16}
    text = "not meaningful: 16 tokens beat the full context"
    assert format_effective_context(fit) == text
    assert report_history.history_table(pd.DataFrame([fit]))["effective context (tokens)"].iloc[0] == text


# -- 6. plugins named by their class ----------------------------------------------------------------------
def test_plugins_are_named_by_their_class_and_long_names_are_not_cut(tmp_path):
    from mnemoscope.study.config import RunSpec, StudyConfig
    from mnemoscope.render.figures import label_runs
    from mnemoscope.specs import spec_label, spec_labels

    a, b = f"{tmp_path}/thirdparty.py:XTransformer", f"{tmp_path}/thirdparty.py:MinGRULM"
    assert spec_label(a) == "XTransformer" and spec_label("mypkg.models:MyGRU") == "MyGRU"
    for unchanged in ("transformer:pos=rotary", "text:/data/small.txt", "lag:k=12", "text:corpus"):
        assert spec_label(unchanged) == unchanged
    assert spec_labels([a, f"{tmp_path}/other.py:XTransformer", b])[b] == "MinGRULM"  # clashing labels stay whole
    config = StudyConfig(archs=[a, b, "lstm"], tasks=["text"]).normalized()
    ids = [RunSpec(x, "text", 50_000, 0).run_id(config, "0123456789abcdef") for x in (a, b)]
    assert ids[0].startswith("XTransformer-text-50k-s0-") and ids[1].startswith("MinGRULM-text-50k-s0-")
    labels = label_runs(pd.DataFrame({"arch": [a, b], "params": [50_000, 50_000]}))["model"]
    assert list(labels) == ["XTransformer 50k", "MinGRULM 50k"]
    assert config.name.startswith("XTransformer-MinGRULM-lstm_text_")
    long = StudyConfig(archs=["window_transformer", "moe_transformer", "linear_attention", "memory_lstm", "lstm"]).normalized()
    words = long.name.split("_")[0].split("-")
    assert words[0] == "windowtransformer" and words[-1].startswith("and") and words[-1].endswith("more")
    assert all(w in ("windowtransformer", "moetransformer", "linearattention", "memorylstm", "lstm") for w in words[:-1])


def test_every_builtin_has_a_description_in_list(capsys):
    assert main(["list"]) == 0
    for line in capsys.readouterr().out.splitlines():
        if line.startswith("  "):
            name, _, rest = line.strip().partition(" ")
            assert rest.strip() and not rest.strip().startswith("["), name


def test_a_study_named_before_names_were_kept_whole_is_found_where_it_lies(tmp_path, monkeypatch):
    from mnemoscope.cli import run_parser, resolve_config, study_folder
    from mnemoscope.study.config import legacy_default_name

    monkeypatch.chdir(tmp_path)
    args = run_parser().parse_args(["--arch", "window_transformer", "lstm", "--task", "text"])
    config = resolve_config(args)
    old = legacy_default_name(config)
    assert old.startswith("windowtransf-lstm_text_") and config.name.startswith("windowtransformer-lstm_text_")
    assert study_folder(args, config) == Path("results") / config.name  # nothing there yet: the new name
    (tmp_path / "results" / old).mkdir(parents=True)
    (tmp_path / "results" / old / "config.yaml").write_text(yaml.safe_dump({**config.to_dict(), "name": old}))
    config = resolve_config(args)
    assert study_folder(args, config) == Path("results") / old and config.name == old  # rerunning finds it
