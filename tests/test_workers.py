"""Many workers drain one study through Optuna's storage; a worker killed mid-run loses nothing.

The PostgreSQL case needs a server: `.ci/run` starts one on loopback and exports
MNEMOSCOPE_TEST_POSTGRES=postgresql://user:password@127.0.0.1:5432/db. Without it the case is
skipped here, and fails in CI (CI=true), where it must run.
"""
from __future__ import annotations

import os
import uuid

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from mnemoscope.cli import main
from test_faults import TINY, check_tables, cli_process, make_corpus, stop_at


def storage_url(backend: str, tmp_path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'shared-queue.db'}"
    url = os.environ.get("MNEMOSCOPE_TEST_POSTGRES")
    why = None
    if not url:
        why = "no PostgreSQL server: set MNEMOSCOPE_TEST_POSTGRES (.ci/run does)"
    else:
        try:
            import sqlalchemy

            with sqlalchemy.create_engine(url).connect():
                pass
        except Exception as exc:  # no driver, no server
            why = f"PostgreSQL at {url.split('@')[-1]} unreachable: {type(exc).__name__}: {str(exc).splitlines()[0]}"
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    return url


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_workers_drain_a_study_and_one_is_killed_mid_run(backend, tmp_path):
    url = storage_url(backend, tmp_path)
    corpus = make_corpus(tmp_path / "texts")
    out = tmp_path / "study"
    name = f"workers-{backend}-{uuid.uuid4().hex[:8]}"  # a fresh study in a shared server
    argv = ["--arch", "transformer", "lstm", "--task", f"text:{corpus}", "--seeds", "0", "1", "--name", name,
            "--out", str(out), *TINY, "--storage", url]
    assert main([*argv, "--workers", "0"]) == 0  # fill the queue only
    study = optuna.load_study(study_name=name, storage=url)
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 4

    # the victim takes a run and stops at its 5th training step (a step the test chooses,
    # mnemoscope.training.checkpoints.StepHook); the survivor starts beside it, and the victim is killed
    # there. The survivor drains the rest, the victim's run too, failed as stale once its heartbeat
    # (every 2 s) is 4 s old: the queue's clock, not the test's
    worker = ["worker", str(out), "--storage", url, "--heartbeat", "2", "--no-progress"]
    held, started = [], []

    def survivor_starts():
        held.extend(t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                    if t.user_attrs.get("worker", "").endswith(f":{stop_at.pid}"))
        started.append(cli_process(worker))

    assert stop_at(worker, tmp_path / "fifos", then=survivor_starts, pause=5) == 5
    assert len(held) == 1, "the victim held no run at its step"
    (survivor,) = started
    survivor.join()
    assert survivor.exitcode == 0

    runs = check_tables(out, expected_runs=4)
    trials = study.get_trials(deepcopy=False)
    complete = pd.Series([t.user_attrs["run_id"] for t in trials if t.state == TrialState.COMPLETE])
    assert complete.value_counts().max() == 1 and set(complete) == set(runs["run_id"])  # each run once
    killed = [t for t in trials if t.number == held[0].number][0]
    assert killed.state == TrialState.FAIL  # failed as stale by the survivor...
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number and t.state == TrialState.COMPLETE]
    assert len(retry) == 1 and retry[0].user_attrs["worker"].endswith(f":{survivor.pid}")  # ...and retried by it
    print(f"\n{backend}: 4/4 runs finished, 1 worker killed, {sum('failed_trial' in t.system_attrs for t in trials)} "
          f"retries, rows lost 0")
    if backend == "postgresql":
        optuna.delete_study(study_name=name, storage=url)


def test_workers_flag_runs_local_worker_processes(tmp_path, capfd, monkeypatch):
    """`--workers 2`: this process and one more drain the default SQLite queue in the study folder,
    the machine's cores split between them (not one thread per core in each)."""
    import torch

    import mnemoscope.study.queue as queue

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    threads_before = torch.get_num_threads()
    started, popen = [], queue.subprocess.Popen

    def recording(cmd, *args, **kwargs):
        if "worker" in cmd:
            started.append(kwargs["env"])
        return popen(cmd, *args, **kwargs)

    monkeypatch.setattr(queue.subprocess, "Popen", recording)
    corpus = make_corpus(tmp_path / "texts")
    out = tmp_path / "study"
    argv = ["--arch", "lstm", "--task", f"text:{corpus}", "--seeds", "0", "1", "2", "--out", str(out), *TINY,
            "--workers", "2"]
    assert main(argv) == 0, capfd.readouterr().err
    check_tables(out, expected_runs=3)
    trials = optuna.load_study(study_name=_name(out), storage=f"sqlite:///{out / 'queue.db'}").trials
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    # one COMPLETE trial per run folder, nothing left waiting or running
    assert sorted(t.user_attrs["run_id"] for t in done) == sorted(p.name for p in (out / "runs").iterdir())
    assert not [t for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING)]
    # one more process, the cores split between the two; each run records the threads it had
    # (the other process may start too late to take one of these tiny runs)
    half = max(1, queue.cpu_cores() // 2)
    assert [env["OMP_NUM_THREADS"] for env in started] == [str(half)]
    assert list(pd.read_parquet(out / "runs.parquet").torch_threads) == [half] * 3
    assert torch.get_num_threads() == threads_before  # this process gets its threads back


def test_threads_per_worker_splits_the_cores_unless_the_user_chose(monkeypatch):
    from mnemoscope.study.queue import cpu_cores, threads_per_worker

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert cpu_cores() == 16
    assert [threads_per_worker(n) for n in (1, 2, 3, 16, 40)] == [None, 8, 5, 1, 1]
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert threads_per_worker(2) is None


def _name(out) -> str:
    import yaml

    return yaml.safe_load((out / "config.yaml").read_text())["name"]
