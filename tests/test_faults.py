"""Faults: SIGKILL at random moments, divergence, a full disk, determinism, safe checkpoint loading
(runs resumed from their checkpoints: test_resume.py).

The processes killed here are real `study.py` invocations (``mnemoscope.cli.main``) in child
processes forked from a forkserver that has already imported the harness, so each start costs
milliseconds, not the seconds of importing torch and Lightning again.
"""
from __future__ import annotations

import errno
import hashlib
import json
import multiprocessing
import os
import random
import re
import signal
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mnemoscope.cli import main

REPO = Path(__file__).resolve().parent.parent
TINY = ["--params", "2k", "--context", "16", "--tokens", "2k", "--batch-size", "8", "--eval-sequences", "8",
        "--no-progress", "--heartbeat", "1", "--no-analysis"]

PLUGINS = textwrap.dedent('''
    """Test plugins: a tiny causal model, and broken variants of it."""
    import torch
    from torch import nn
    from mnemoscope import Architecture


    class Tiny(Architecture):
        """Embedding -> per-position MLP -> head: causal (no mixing across positions), sized by width."""
        width_key = "width"

        def __init__(self, vocab_size, context_length, width=8):
            super().__init__()
            self.emb = nn.Embedding(vocab_size, width)
            self.mix = nn.Linear(width, width)
            self.head = nn.Linear(width, vocab_size)
            self.train_calls = 0  # test plugins only: count training forwards to fail on cue

        def forward(self, x):  # (B, T) -> (B, T, V)
            if self.training:
                self.train_calls += 1
            return self.head(torch.tanh(self.mix(self.emb(x))))


    class NaNAfterSteps(Tiny):
        """Trains, then its loss becomes NaN from the 6th step on."""
        def forward(self, x):
            y = super().forward(x)
            return y * float("nan") if self.train_calls > 5 else y


    class RaisesInTraining(Tiny):
        def forward(self, x):
            y = super().forward(x)
            if self.train_calls > 3:
                raise RuntimeError("plugin broke at step 4")
            return y


    class RaisesInInit(Tiny):
        def __init__(self, vocab_size, context_length, width=8):
            raise RuntimeError("broken constructor")


    class RaisesInForward(Tiny):
        def forward(self, x):
            raise ValueError("broken forward")


    class WrongShape(Tiny):
        def forward(self, x):
            return super().forward(x)[:, :-1]


    class NotCausal(Tiny):
        def forward(self, x):
            y = super().forward(x)
            return y + y.flip(1)  # position t sees position T-1-t


    class NaNOutput(Tiny):
        def forward(self, x):
            return super().forward(x) * float("nan")


    class KeepsState(Tiny):
        """Carries its LSTM state from one call to the next on self, as a generator would."""
        def __init__(self, vocab_size, context_length, width=8):
            super().__init__(vocab_size, context_length, width)
            self.rnn = nn.LSTM(width, width, batch_first=True)
            self.state = None

        def forward(self, x):
            h, state = self.rnn(self.emb(x), self.state)
            self.state = tuple(s.detach() for s in state)
            return self.head(h)
''')


def make_corpus(folder: Path) -> Path:
    """Twelve small English-like documents: enough for context 16."""
    rng = random.Random(0)
    words = "the quick brown fox jumps over lazy dog and then runs far away from home again".split()
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(12):
        body = " ".join(rng.choice(words) for _ in range(300 + 30 * i))
        (folder / f"doc{i:02d}.txt").write_text(f"Document {i}.\n{body}\n")
    return folder


def make_plugins(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "plugins.py"
    path.write_text(PLUGINS)
    return path


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (the queue database aside: opening it is not writing a result)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file() and not p.name.startswith("queue.db")
            and not any(part.startswith(".partial-") for part in p.relative_to(folder).parts)}  # work under way


def check_tables(out: Path, expected_runs: int, T: int = 16) -> pd.DataFrame:
    """The tables are readable, complete and free of duplicates; every run folder is whole."""
    runs = pd.read_parquet(out / "runs.parquet")
    pp = pd.read_parquet(out / "per_position.parquet")
    assert len(runs) == expected_runs and runs["run_id"].is_unique
    assert len(pp) == expected_runs * T and not pp.duplicated(["run_id", "position"]).any()
    assert set(pp["run_id"]) == set(runs["run_id"])
    # a stopped run's working folder (.partial-*) is no stray: the next run of the study resumes from it
    folders = sorted(p.name for p in (out / "runs").iterdir() if not p.name.startswith(".partial-"))
    assert folders == sorted(runs["run_id"]), f"stray folders: {folders}"
    for run_id in runs["run_id"]:
        folder = out / "runs" / run_id
        assert json.loads((folder / "result.json").read_text())["run_id"] == run_id
        assert len(pd.read_parquet(folder / "per_position.parquet")) == T
        with np.load(folder / "losses.npz") as z:
            assert z["losses"].shape[1] == T
        torch.load(folder / "model.pt", weights_only=True)
    return runs


# -- child processes for kill tests ------------------------------------------------------------
def _cli(argv: list[str], env: dict[str, str]) -> None:
    """A `study.py` process: what a user's shell would run."""
    os.environ.update(env)
    torch.set_num_threads(1)
    sys.exit(main(argv))


_CTX = None


def cli_process(argv: list[str], extra_env: dict[str, str] | None = None) -> multiprocessing.Process:
    """Start ``study.py argv`` in a child process (forked from a forkserver holding the imports)."""
    global _CTX
    if _CTX is None:
        _CTX = multiprocessing.get_context("forkserver")
        _CTX.set_forkserver_preload(["mnemoscope.cli", "mnemoscope.study.runner", "mnemoscope.study.queue", "mnemoscope.report.page",
                                     "mnemoscope.architectures", "mnemoscope.tasks", "test_faults"])
    env = {"MNEMOSCOPE_CACHE": os.environ["MNEMOSCOPE_CACHE"], "OMP_NUM_THREADS": "1", **(extra_env or {})}
    p = _CTX.Process(target=_cli, args=(argv, env), daemon=True)
    p.start()
    return p


def stop_at(argv: list[str], folder: Path, signum: int = signal.SIGKILL, then=None, **hook) -> int | None:
    """Run ``study.py argv`` in a child process until the step ``hook`` names (``pause=N`` or
    ``after=N``, and ``checkpoint=K``: :class:`mnemoscope.training.checkpoints.StepHook`), send it ``signum``
    there and wait for its end. Returns the step it stopped at, or None when it finished first
    (exit 0); ``stop_at.pid`` and ``stop_at.exitcode`` are the child's id and exit status. Waits
    on events only (the child's FIFO, its exit), never on the clock. ``then()``: called at the
    step, before the signal."""
    from multiprocessing.connection import wait

    folder.mkdir(parents=True, exist_ok=True)
    fifo = folder / f"step-{len(list(folder.iterdir()))}.fifo"
    os.mkfifo(fifo)
    fd = os.open(fifo, os.O_RDWR)  # a writer of its own: no end of file before the child writes
    try:
        spec = ",".join([*(f"{k}={v}" for k, v in hook.items()), f"fifo={fifo}"])
        p = cli_process(argv, {"MNEMOSCOPE_STEP_HOOK": spec})
        stop_at.pid = p.pid
        if fd not in wait([fd, p.sentinel]):
            p.join()
            stop_at.exitcode = p.exitcode
            assert p.exitcode == 0, f"exit {p.exitcode} before the step {hook}"
            return None
        step = int(os.read(fd, 64).decode().split()[0])
        if then is not None:
            then()
        os.kill(p.pid, signum)
        p.join()
        stop_at.exitcode = p.exitcode
        return step
    finally:
        os.close(fd)


def test_sigkill_at_random_moments_then_rerun(tmp_path):
    """A study killed with SIGKILL at 12 random steps (the n-th training step each process takes,
    over its runs), rerun each time, ends complete, uncorrupted, without a duplicate row; killed
    runs are retried through the queue's heartbeats."""
    corpus = make_corpus(tmp_path / "texts")
    out = tmp_path / "study"
    argv = ["--arch", "transformer", "lstm", "--task", f"text:{corpus}", "--seeds", "0", "1", "--out", str(out), *TINY]
    rng = random.Random(1234)
    kills, mid_run, attempts = 0, 0, 0
    while kills < 12 and attempts < 40:  # a process that finished before its step is no kill: go on
        attempts += 1
        # 15 steps a run: mostly a kill in the first run a process trains, sometimes after it finished one
        if stop_at(argv, tmp_path / "fifos", after=rng.randint(1, 20)) is not None:  # SIGKILL: no cleanup
            mid_run += any((out / "runs").glob(".partial-*"))
            kills += 1
        # between kills: whatever exists is whole (tables readable, no half run folder)
        for table in ("runs.parquet", "per_position.parquet"):
            if (out / table).exists():
                pd.read_parquet(out / table)
        if (out / "runs").exists():
            for folder in (out / "runs").iterdir():
                assert folder.name.startswith((".tmp-", ".partial-")) or (folder / "result.json").exists()
    assert kills >= 10
    p = cli_process(argv)
    p.join(300)
    assert p.exitcode == 0
    check_tables(out, expected_runs=4)
    assert not list((out / "runs").glob(".tmp-*")) and not list((out / "runs").glob(".partial-*"))

    import optuna

    from mnemoscope.study.queue import default_storage

    trials = optuna.load_study(study_name=_config_name(out), storage=default_storage(out)).get_trials(deepcopy=False)
    complete = [t.user_attrs["run_id"] for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    retries = sum("failed_trial" in t.system_attrs for t in trials)
    print(f"\nkill test: {kills} SIGKILLs ({mid_run} during a run), 4/4 runs finished, "
          f"{retries} retries, {len(trials)} trials, rows lost 0")
    # no run completed twice in the storage, none that has no folder (the folders are the record:
    # a kill between Optuna failing a stale trial and enqueuing its retry can leave a finished run
    # without a COMPLETE trial, never a row without a run)
    assert len(complete) == len(set(complete)) and set(complete) <= set(pd.read_parquet(out / "runs.parquet")["run_id"])


def _config_name(out: Path) -> str:
    import yaml

    return yaml.safe_load((out / "config.yaml").read_text())["name"]


def test_nan_loss_is_recorded_as_diverged_and_the_study_goes_on(tmp_path, capfd):
    corpus = make_corpus(tmp_path / "texts")
    plugins = make_plugins(tmp_path / "plugins")
    out = tmp_path / "study"
    rc = main(["--arch", f"{plugins}:NaNAfterSteps", f"{plugins}:Tiny", "--task", f"text:{corpus}",
               "--out", str(out), *TINY])
    assert rc == 0, capfd.readouterr().err
    runs = check_tables(out, expected_runs=2).set_index("arch")
    bad, good = runs.loc[f"{plugins}:NaNAfterSteps"], runs.loc[f"{plugins}:Tiny"]
    # NaN from its 6th training forward (one of which counts FLOPs before training): stopped there
    assert bad["status"] == "diverged" and 4 <= bad["diverged_step"] <= 6
    assert good["status"] == "ok" and pd.isna(good["diverged_step"]) and np.isfinite(good["test_loss"])


def test_run_failing_mid_training_gives_one_line_and_keeps_finished_runs(tmp_path, capfd):
    corpus = make_corpus(tmp_path / "texts")
    plugins = make_plugins(tmp_path / "plugins")
    out = tmp_path / "study"
    argv = ["--arch", f"{plugins}:Tiny", f"{plugins}:RaisesInTraining", "--task", f"text:{corpus}",
            "--out", str(out), *TINY]
    capfd.readouterr()
    assert main(argv) == 2
    err = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and re.match(r"error: run .* failed in training: RuntimeError: plugin broke at step 4", err[0]), err
    check_tables(out, expected_runs=1)  # the good run is kept, the failed one left no folder
    before = snapshot(out)
    assert main(argv) == 2  # rerun: the good run is not redone, the bad one fails again, nothing changes
    assert snapshot(out) == before


def test_full_disk_gives_one_clear_line_and_loses_nothing(tmp_path, capfd, monkeypatch):
    corpus = make_corpus(tmp_path / "texts")
    out = tmp_path / "study"
    argv = ["--arch", "lstm", "--seeds", "0", "1", "--task", f"text:{corpus}", "--out", str(out), *TINY]
    real_save, calls = torch.save, []

    def disk_fills_up(obj, f, *args, **kwargs):  # the first run's final weights fit; then the disk is full
        if str(f).endswith("model.pt"):
            calls.append(1)
            if len(calls) > 1:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_fills_up)
    capfd.readouterr()
    assert main(argv) == 2
    err = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "disk full" in err[0], err
    check_tables(out, expected_runs=1)
    assert not list((out / "runs").glob(".tmp-*"))
    before = snapshot(out)
    assert main(argv) == 2  # still full: one line again, and every table byte-identical
    assert len([line for line in capfd.readouterr().err.splitlines() if line.strip()]) == 1
    assert snapshot(out) == before
    monkeypatch.setattr(torch, "save", real_save)  # space freed: the study completes
    assert main(argv) == 0
    check_tables(out, expected_runs=2)


def test_unwritable_folder_gives_one_clear_line(tmp_path, capfd):
    corpus = make_corpus(tmp_path / "texts")
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert main(["--arch", "lstm", "--task", f"text:{corpus}", "--out", str(blocker / "study"), *TINY]) == 2
    err = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "cannot write" in err[0], err


def test_same_seed_bitwise_identical_losses_different_seed_differs(tmp_path):
    from mnemoscope.study.config import StudyConfig, plan
    from mnemoscope.study.runner import Study

    corpus = make_corpus(tmp_path / "texts")
    config = StudyConfig(archs=["transformer"], tasks=[f"text:{corpus}"], params=["2k"], context=16, tokens="2k",
                         batch_size=8, eval_sequences=8, seeds=[0, 1]).normalized()
    losses = []
    for folder, seed_index in (("a", 0), ("b", 0), ("c", 1)):
        study = Study(config, tmp_path / folder)
        run = plan(config)[seed_index]
        study.execute(run, progress=False)
        with np.load(study.runs_dir / study.run_id(run) / "losses.npz") as z:
            losses.append(z["losses"].copy())
    assert losses[0].tobytes() == losses[1].tobytes()  # bitwise, not approximately
    assert not np.array_equal(losses[0], losses[2])


def test_checkpoints_load_with_weights_only_and_nothing_untrusted_is_unpickled(tmp_path):
    from mnemoscope.errors import UserError
    from mnemoscope.study.config import StudyConfig, plan
    from mnemoscope.study.runner import Study
    from mnemoscope.storage.study_folder import load_run_model

    corpus = make_corpus(tmp_path / "texts")
    config = StudyConfig(archs=["lstm"], tasks=[f"text:{corpus}"], params=["2k"], context=16, tokens="1k",
                         batch_size=8, eval_sequences=8).normalized()
    study = Study(config, tmp_path / "s")
    run = plan(config)[0]
    study.execute(run, progress=False)
    folder = study.runs_dir / study.run_id(run)
    model, row = load_run_model(folder)
    assert row["run_id"] == study.run_id(run)
    assert model(torch.zeros(1, 16, dtype=torch.long)).shape == (1, 16, 256)

    # a tampered model.pt holding a pickled callable is refused, and its code never runs
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"arch": "lstm", "state_dict": Evil()}, folder / "model.pt")
    with pytest.raises(UserError, match="cannot load the model"):
        load_run_model(folder)
    assert not marker.exists()

    # no unsafe loader anywhere in the code base
    unsafe = re.compile(r"pickle\.loads?\(|yaml\.load\(|allow_pickle\s*=\s*True|read_pickle\(|"
                        r"torch\.load\((?![^)]*weights_only\s*=\s*True)")
    offenders = []
    for path in REPO.rglob("*.py"):
        if any(part in (".venv", "tests", "scratch", "build") or part.startswith(".") for part in path.relative_to(REPO).parts):
            continue
        for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if unsafe.search(line):
                offenders.append(f"{path.relative_to(REPO)}:{i}: {line.strip()}")
    assert not offenders, offenders


def test_divergence_guard_reading_losses_in_groups_records_the_first_bad_step():
    """On an accelerator the guard reads the losses every ``every`` steps (one wait for the device,
    not one per step): it stops at the end of that group and records the first bad step."""
    import torch
    from types import SimpleNamespace

    from mnemoscope.training.callbacks import DivergenceGuard

    guard = DivergenceGuard(every=4, every_step=False)
    trainer = SimpleNamespace(global_step=0, should_stop=False)
    losses = [3.0, 2.9, 2.8, 2.7, float("nan"), 2.5, 2.4, 2.3, 2.2]
    stopped_at = None
    for i, value in enumerate(losses):
        trainer.global_step = i + 1
        guard.on_train_batch_end(trainer, None, {"loss": torch.tensor(value)}, None, i)
        if trainer.should_stop and stopped_at is None:
            stopped_at = i + 1
    assert guard.step == 5 and stopped_at == 8  # bad at step 5, seen when the group 5-8 is read
    explodes = DivergenceGuard(every=4, every_step=False)
    trainer = SimpleNamespace(global_step=0, should_stop=False)
    for i, value in enumerate([2.0, 2.0, 20.0]):  # > 4 x first + 5: exploded; the run ends before a group fills
        trainer.global_step = i + 1
        explodes.on_train_batch_end(trainer, None, torch.tensor(value), None, i)
    assert explodes.step is None and not trainer.should_stop
    explodes.on_train_end(trainer, None)  # what is left is read when training ends
    assert explodes.step == 3 and trainer.should_stop
