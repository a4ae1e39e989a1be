"""Runs that survive any stop: a run killed (SIGKILL, SIGTERM, Slurm's requeue signal) at chosen
steps resumes from its mid-run checkpoint and ends as the uninterrupted run. Out of test_faults.py,
so that pytest's --dist loadfile runs the two files' long kill tests side by side."""
from __future__ import annotations

import io
import json
import os
import random
import signal
import time
from multiprocessing.connection import wait
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mnemoscope.cli import main
from test_faults import cli_process, make_corpus, stop_at

# -- runs that survive any stop: mid-run checkpoints ------------------------------------------------------
STEPS = 500  # enough for 8 kept steps an octave apart and a kill well inside the run
RESUMABLE = ["--arch", "transformer", "--params", "5k", "--context", "32", "--tokens", str(STEPS * 4 * 32),
             "--batch-size", "4", "--eval-sequences", "16", "--no-progress", "--no-analysis", "--seeds", "0"]


def _run_files(out: Path) -> tuple[dict, dict, pd.DataFrame, str]:
    (run,) = [p for p in (out / "runs").iterdir() if not p.name.startswith(".")]
    row = json.loads((run / "result.json").read_text())
    weights = torch.load(run / "model.pt", weights_only=True)["state_dict"]
    return row, weights, pd.read_parquet(run / "history_steps.parquet"), (run / "metrics.csv").read_text()


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory):
    """The uninterrupted run that the stopped ones must end as: (corpus, its study folder)."""
    tmp = tmp_path_factory.mktemp("whole")
    corpus = make_corpus(tmp / "texts")
    assert main([*RESUMABLE, "--task", f"text:{corpus}", "--out", str(tmp / "whole")]) == 0
    return corpus, tmp / "whole"


def assert_same_end(whole: Path, stopped: Path) -> dict:
    """The stopped-and-resumed run ends as the uninterrupted one: test loss, weights, kept steps
    (deterministic CPU kernels: to 1e-6) and metrics.csv, every row and column, byte for byte."""
    row_a, w_a, hist_a, metrics_a = _run_files(whole)
    row_b, w_b, hist_b, metrics_b = _run_files(stopped)
    assert abs(row_a["test_loss"] - row_b["test_loss"]) <= 1e-6
    assert max(float((w_a[k] - w_b[k]).abs().max()) for k in w_a) <= 1e-6
    assert list(hist_a["step"]) == list(hist_b["step"]) and len(hist_a) == 8
    assert np.allclose(hist_a["loss"], hist_b["loss"], atol=1e-6) and np.allclose(hist_a["icl_score"], hist_b["icl_score"], atol=1e-6)
    assert not list((stopped / "runs").glob(".partial-*"))  # moved into place, its checkpoints removed
    assert not list((stopped / "runs").glob("*/checkpoints"))
    a, b = pd.read_csv(io.StringIO(metrics_a)), pd.read_csv(io.StringIO(metrics_b))
    assert b["step"].is_unique, b[b["step"].duplicated(keep=False)]
    pd.testing.assert_frame_equal(a, b)  # a readable difference first: which row, which column
    assert metrics_a == metrics_b
    return row_b


def test_a_run_killed_with_sigkill_resumes_from_its_checkpoint_to_the_same_end(whole_run, tmp_path, capfd):
    """SIGKILL at step 230, rows logged after its last checkpoint (step 200); the same command
    then says which run resumes from where, resumes from that checkpoint (not step 0) and ends with
    the uninterrupted run's test loss, weights, through-training measurements and metrics.csv."""
    corpus, whole = whole_run
    killed = tmp_path / "killed"
    argv = [*RESUMABLE, "--task", f"text:{corpus}", "--out", str(killed), "--checkpoint-every", "off"]
    assert stop_at(argv, tmp_path / "fifos", pause=230, checkpoint=100) == 230  # SIGKILL: nothing saved at the kill
    (partial,) = (killed / "runs").glob(".partial-*")
    written = (partial / "checkpoints" / "last.ckpt").stat().st_mtime
    capfd.readouterr()
    assert main(argv) == 0
    run_id = partial.name.removeprefix(".partial-")
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(written))
    assert f"run {run_id} resumes from step 200 of {STEPS}, from a checkpoint written {when}" in capfd.readouterr().out
    row = assert_same_end(whole, killed)
    assert row["resumed_from_step"] == 200  # resumed, not restarted
    assert [(r["step"], r["of"]) for r in row["resumes"]] == [(200, STEPS)]
    assert row["resumes"][0]["checkpoint_written"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(written))
    (cell,) = pd.read_parquet(killed / "runs.parquet")["resumes"]
    assert json.loads(cell) == row["resumes"]
    assert pd.isna(pd.read_parquet(whole / "runs.parquet")["resumes"]).all()  # never stopped: no resume


def test_a_run_killed_ten_times_at_random_steps_ends_as_the_uninterrupted_run(whole_run, tmp_path):
    """SIGKILL (and twice SIGTERM) at 10 random steps, each sitting checkpointing at its own random
    cadence, the same command after each: the run ends as the uninterrupted one, metrics.csv
    included, every row and column."""
    corpus, whole = whole_run
    out = tmp_path / "stopped"
    argv = [*RESUMABLE, "--task", f"text:{corpus}", "--out", str(out), "--checkpoint-every", "off"]
    from mnemoscope.training.checkpoints import checkpoint_step

    rng = random.Random(30)
    steps = sorted(rng.sample(range(5, STEPS), 10))  # each later than the last: past any checkpoint resumed from
    resumed = []  # the step each sitting should resume from (none: no checkpoint yet, it starts afresh)

    def resumes_from():
        ckpt = list((out / "runs").glob(".partial-*/checkpoints/last.ckpt")) if (out / "runs").exists() else []
        if ckpt:
            resumed.append(checkpoint_step(ckpt[0]))

    for i, step in enumerate(steps):
        signum = signal.SIGTERM if i in (3, 7) else signal.SIGKILL
        resumes_from()
        assert stop_at(argv, tmp_path / "fifos", signum, pause=step, checkpoint=rng.randint(3, 60)) == step
        assert stop_at.exitcode == (130 if signum == signal.SIGTERM else -signal.SIGKILL)
    resumes_from()
    assert main(argv) == 0
    row = assert_same_end(whole, out)
    # every resume recorded, in order, those of sittings stopped before they saved a checkpoint too
    assert [r["step"] for r in row["resumes"]] == resumed and len(resumed) >= 8
    assert json.loads(pd.read_parquet(out / "runs.parquet")["resumes"][0]) == row["resumes"]


def test_resumed_batches_continue_where_they_stopped():
    """The loader of a run resumed at step s yields exactly the batches of steps s, s+1, ... of the
    uninterrupted run: none seen twice, none skipped."""
    from mnemoscope.training.checkpoints import ResumableBatches
    from mnemoscope.contract.task import TokenSplit
    from mnemoscope.contract.windows import TrainBatches

    split = TokenSplit(np.arange(5000) % 97, None)
    batches = TrainBatches(split, 16, 4, n_steps=20, seed=3)
    whole = [b[0] for b in ResumableBatches(batches)]
    resumed = [b[0] for b in ResumableBatches(batches, start=7)]
    assert len(whole) == 20 and len(resumed) == 13
    assert all(torch.equal(a, b) for a, b in zip(whole[7:], resumed))


def test_slurm_requeue_signal_saves_a_checkpoint_requeues_and_the_rerun_resumes(tmp_path):
    """Under Slurm (its environment variables set), Lightning's SLURMEnvironment handles the requeue
    signal (SIGUSR1, as `sbatch --signal=USR1@90` sends it): it saves hpc_ckpt_1.ckpt and calls
    `scontrol requeue JOBID` (a stand-in here that records its arguments). The scheduler's SIGTERM
    then ends the job with a checkpoint and exit 130; the requeued job (the same command) resumes.
    No clock: the run pauses at a step (the step hook), and the stand-in scontrol says it was
    called through a FIFO, then waits, while the SIGTERM is sent, for the test to let it return."""
    corpus = make_corpus(tmp_path / "texts")
    out, bin_dir, calls = tmp_path / "study", tmp_path / "bin", tmp_path / "scontrol.calls"
    called, release, hook = tmp_path / "called.fifo", tmp_path / "release.fifo", tmp_path / "hook.fifo"
    bin_dir.mkdir()
    for fifo in (called, release, hook):
        os.mkfifo(fifo)
    (bin_dir / "scontrol").write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\necho called > {called}\n"
                                      f"read go < {release}\n")
    (bin_dir / "scontrol").chmod(0o755)
    slurm = {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "mnemoscope-test", "SLURM_JOB_ID": "4242", "SLURM_NODEID": "0",
             "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NTASKS_PER_NODE": "1",
             "PATH": f"{bin_dir}:{os.environ['PATH']}", "MNEMOSCOPE_STEP_HOOK": f"pause=20,fifo={hook}"}
    argv = [*RESUMABLE, "--task", f"text:{corpus}", "--out", str(out), "--checkpoint-every", "off"]
    hook_fd, called_fd = os.open(hook, os.O_RDWR), os.open(called, os.O_RDWR)  # no end of file before a write
    try:
        p = cli_process(argv, slurm)
        assert hook_fd in wait([hook_fd, p.sentinel]), f"exit {p.exitcode} before step 20"
        assert os.read(hook_fd, 64).split() == [b"20"]
        os.kill(p.pid, signal.SIGUSR1)  # the paused run goes on into Lightning's handler
        assert called_fd in wait([called_fd, p.sentinel]), f"exit {p.exitcode} without calling scontrol"
        os.read(called_fd, 64)
    finally:
        os.close(hook_fd)
        os.close(called_fd)
    assert calls.read_text().split() == ["requeue", "4242"]
    (partial,) = list((out / "runs").glob(".partial-*"))
    assert list((partial / "checkpoints").glob("hpc_ckpt_*.ckpt"))
    os.kill(p.pid, signal.SIGTERM)  # the scheduler ends the job after the requeue, before training goes on
    with open(release, "w") as f:  # scontrol returns
        f.write("go\n")
    p.join()
    assert p.exitcode == 130
    assert main(argv) == 0  # the requeued job
    (run,) = [q for q in (out / "runs").iterdir() if not q.name.startswith(".")]
    assert json.loads((run / "result.json").read_text())["resumed_from_step"] > 0
