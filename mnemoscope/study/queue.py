"""A study as a queue of runs in Optuna's storage, drained by any number of workers.

Every planned run is one enqueued Optuna trial (param ``run_id``) in an Optuna study named
after the study. Workers, on one machine or many, pop WAITING trials (the WAITING -> RUNNING
step is a locked update in the database, so one trial goes to one worker), train the run into
``runs/<run_id>/`` (moved into place atomically) and mark the trial COMPLETE.

Faults are Optuna's: a worker records a heartbeat for its trial every ``heartbeat`` seconds;
a trial whose heartbeat is older than twice that is failed by the next worker that looks
(``optuna.storages.fail_stale_trials``), and ``RetryHeartbeatStaleTrialCallback`` enqueues it
again. A retried run whose folder already exists (its worker died after moving it into place)
is marked done without training again, so a run finishes exactly once; the tables are rebuilt
from the run folders, one row per folder.

Storage: ``sqlite:///DIR/queue.db`` in the study folder by default (workers on one machine);
``--storage postgresql://...`` (any database Optuna supports) for many machines, with the
study folder on a filesystem they share.
"""
from __future__ import annotations

import importlib.util
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import optuna
import torch
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import TrialState
from sqlalchemy import event
from sqlalchemy.engine import make_url

from ..errors import UserError
from ..settings import EXECUTION
from .config import plan

optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created" lines on stderr
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

DEFAULT_HEARTBEAT = EXECUTION.heartbeat  # seconds between heartbeats; a trial silent for 2x this is retried
MAX_RETRY = 3  # a run whose worker dies this many times more is left failed (rerun study.py to retry)
_TRANSIENT = (optuna.exceptions.StorageInternalError,)


def queue_file(out: Path) -> Path:
    """The SQLite file of a study folder's own queue (runtime state: the plan and who runs what)."""
    return Path(out).resolve() / "queue.db"


def default_storage(out: Path) -> str:
    return f"sqlite:///{queue_file(out)}"


def redact(url: str) -> str:
    """The storage URL without its password, for files and messages (the queue's and ``tune``'s)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1] if "@" in url else url


def check_url(url: str) -> str:
    """Refuse a malformed storage URL before anything is written."""
    if not isinstance(url, str) or "://" not in url:
        raise UserError(f"malformed storage URL {url!r}: expected e.g. sqlite:///path/queue.db or "
                        "postgresql://user:password@host/database")
    try:
        u = make_url(url)
    except Exception as exc:
        raise UserError(f"malformed storage URL {redact(url)!r}: {exc}") from None
    if u.get_backend_name() not in ("sqlite", "postgresql", "mysql", "oracle", "mssql"):
        raise UserError(f"unsupported storage URL {redact(url)!r}: use sqlite:///... or postgresql://...")
    if u.get_backend_name() == "sqlite" and u.database in (None, "", ":memory:"):
        raise UserError(f"storage URL {url!r} names no database file; workers must share one")
    return url


def _first_line(exc: BaseException) -> str:
    """``Type: first line`` of the database's own error (Optuna wraps it in a generic one)."""
    while isinstance(exc, optuna.exceptions.StorageInternalError) and exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _retry(fn: Callable[[], Any], what: str, attempts: int = 30) -> Any:
    """Call ``fn``, retrying briefly when the database is busy (SQLite locks under concurrency)."""
    for i in range(attempts):
        try:
            return fn()
        except _TRANSIENT as exc:
            if i == attempts - 1:
                raise UserError(f"storage error while {what}: {_first_line(exc)}") from exc
            time.sleep(0.05 + random.random() * 0.2 * (1 + i))


def open_storage(url: str, heartbeat: int) -> RDBStorage:
    """Optuna's RDB storage with heartbeats and a retry of stale trials."""
    check_url(url)
    try:
        storage = RDBStorage(_with_driver(url), heartbeat_interval=heartbeat,
                             heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
                             engine_kwargs={"connect_args": {"timeout": 30}} if url.startswith("sqlite") else None)
        if url.startswith("sqlite"):
            _serialize_sqlite(storage.engine)
        return storage
    except ImportError as exc:
        raise UserError(f"no database driver for {redact(url)}: {exc}; for PostgreSQL install "
                        "`pip install mnemoscope[postgres]`") from None
    except Exception as exc:
        raise UserError(f"cannot open storage {redact(url)}: {_first_line(exc)}") from None


def _with_driver(url: str) -> str:
    """``postgresql://`` with whichever driver is installed: SQLAlchemy 2.1 assumes psycopg 3, older
    versions psycopg2; naming the installed one explicitly works with both."""
    if url.startswith("postgresql://"):
        for module, dialect in (("psycopg", "postgresql+psycopg"), ("psycopg2", "postgresql+psycopg2")):
            if importlib.util.find_spec(module) is not None:
                return dialect + url[len("postgresql"):]
    return url


def _serialize_sqlite(engine) -> None:
    """Every SQLite transaction takes the write lock when it begins (BEGIN IMMEDIATE).

    Optuna checks a trial's state, then changes it (WAITING -> RUNNING, RUNNING -> FAIL): in
    PostgreSQL that is one locked row (SELECT ... FOR UPDATE); SQLite ignores FOR UPDATE and
    Python's driver begins a transaction only at the first write, so two workers could both see
    WAITING and both take the run. With the lock taken at BEGIN the check and the change are one
    step. (SQLAlchemy's documented recipe for pysqlite.)"""
    @event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_connection, record):
        dbapi_connection.isolation_level = None  # the driver emits no BEGIN of its own

    @event.listens_for(engine, "begin")
    def _begin_immediate(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened before the hooks are closed


def worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Heartbeat:
    """Records the trial's heartbeat every ``interval`` seconds from a thread, as Optuna's
    ``optimize`` does, for a trial we hold outside ``optimize``."""

    def __init__(self, storage: RDBStorage, trial_id: int, interval: int):
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="mnemoscope-heartbeat")

    def _beat(self):
        while not self._stop.wait(self.interval):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception:  # a busy database: the next beat tries again
                pass

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


class RunQueue:
    """The queue of a study folder's runs in an Optuna storage."""

    def __init__(self, study, storage: str | None = None, heartbeat: int | None = None, create: bool = True):
        self.study = study  # a mnemoscope.study.runner.Study
        self.url = storage or default_storage(study.out)
        self.heartbeat = int(heartbeat or DEFAULT_HEARTBEAT)
        if self.heartbeat < 1:
            raise UserError(f"--heartbeat must be at least 1 second, got {heartbeat}")
        self.storage = open_storage(self.url, self.heartbeat)
        name = study.config.name
        mine = json.dumps(study.config.identity(), sort_keys=True)  # history, checkpoints: the same study
        try:
            if create:
                self.optuna = _retry(lambda: optuna.create_study(study_name=name, storage=self.storage,
                                                                 direction="minimize", load_if_exists=True),
                                     "creating the study")
            else:
                self.optuna = optuna.load_study(study_name=name, storage=self.storage)
        except KeyError:
            raise UserError(f"storage {redact(self.url)} holds no study named {name!r}; start it with "
                            f"`study.py --config {study.folder.config_path} --storage URL --workers 0`") from None
        except UserError:
            raise
        except Exception as exc:
            raise UserError(f"cannot open study {name!r} in {redact(self.url)}: {_first_line(exc)}") from None
        theirs = self.optuna.user_attrs.get("config")
        if theirs is None and create:
            _retry(lambda: self.optuna.set_user_attr("config", mine), "writing the study's config")
        elif theirs is not None and theirs != mine:
            here = self.url == default_storage(study.out)  # the study folder's own queue: its plan only
            extend = (f"; or, if you changed {study.folder.config_path} to extend this study, delete "
                      f"{queue_file(study.out)} and run again (finished runs are kept, not "
                      "retrained)") if here else ""
            raise UserError(f"storage {redact(self.url)} already holds a different study named {name!r}; "
                            f"give this one another --name{extend}")
        self.study_id = self.storage.get_study_id_from_name(name)

    # -- reading the queue ---------------------------------------------------------------------
    def trials(self, states=None) -> list[optuna.trial.FrozenTrial]:
        return _retry(lambda: self.storage.get_all_trials(self.study_id, deepcopy=False, states=states),
                      "reading the queue")

    def _trial_id(self, trial) -> int:
        return _retry(lambda: self.storage.get_trial_id_from_study_id_trial_number(self.study_id, trial.number),
                      "reading the queue")

    def summary(self) -> dict[str, int]:
        """Counts for the closing line: runs planned/finished, trials by state, retries."""
        trials = self.trials()
        planned = {self.study.run_id(r) for r in plan(self.study.config)}
        count = lambda state: sum(t.state == state for t in trials)
        failed = [t for t in trials if t.state == TrialState.FAIL]
        return {"planned": len(planned), "finished": len(planned & self.study.finished()),
                "waiting": count(TrialState.WAITING), "running": count(TrialState.RUNNING),
                "complete": count(TrialState.COMPLETE),
                "interrupted": sum(bool(t.user_attrs.get("interrupted")) for t in failed),
                "failed_stale": sum("error" not in t.user_attrs and not t.user_attrs.get("interrupted") for t in failed),
                "failed_error": sum("error" in t.user_attrs for t in failed),
                "retries": sum("failed_trial" in t.system_attrs for t in trials)}

    # -- filling -------------------------------------------------------------------------------
    def fill(self, runs, only_lost: bool = False) -> int:
        """Enqueue every run that has no folder and no waiting or running trial. Returns how many.

        ``only_lost``: only runs whose every trial was lost with its worker, fewer than MAX_RETRY
        times; a worker dying between failing a stale trial and enqueuing its retry (two steps
        in Optuna) would otherwise leave such a run behind."""
        done = self.study.finished()
        trials = self.trials()
        live = {t.user_attrs.get("run_id") for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING)}
        added = 0
        for run in runs:
            run_id = self.study.run_id(run)
            if run_id in done or run_id in live:
                continue
            if only_lost:
                mine = [t for t in trials if t.user_attrs.get("run_id") == run_id]
                if not mine or any("error" in t.user_attrs for t in mine) or len(mine) > MAX_RETRY:
                    continue
            attrs = {"run_id": run_id, "arch": run.arch, "task": run.task, "params": run.params, "seed": run.seed}
            _retry(lambda: self.optuna.enqueue_trial({"run_id": run_id}, user_attrs=attrs), "enqueuing runs")
            live.add(run_id)
            added += 1
        return added

    # -- draining ------------------------------------------------------------------------------
    def _pop(self) -> tuple[int, optuna.trial.FrozenTrial] | None:
        for trial in self.trials((TrialState.WAITING,)):
            trial_id = self._trial_id(trial)
            try:
                # the heartbeat first: a worker killed right after taking the trial leaves it stale,
                # never RUNNING without a heartbeat (which Optuna would never retry)
                _retry(lambda: self.storage.record_heartbeat(trial_id), "taking a run")
                if _retry(lambda: self.storage.set_trial_state_values(trial_id, TrialState.RUNNING), "taking a run"):
                    _retry(lambda: self.storage.set_trial_user_attr(trial_id, "worker", worker_identity()),
                           "taking a run")
                    return trial_id, trial
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # someone else took and finished it meanwhile
        return None

    def _finish(self, trial_id: int, state: TrialState, value: float | None = None, **attrs) -> bool:
        """Record the end of a trial; False if the trial was already failed as stale meanwhile."""
        try:
            for key, v in attrs.items():
                _retry(lambda: self.storage.set_trial_user_attr(trial_id, key, v), "recording a run")
            values = None if value is None else [value]
            return bool(_retry(lambda: self.storage.set_trial_state_values(trial_id, state, values), "recording a run"))
        except optuna.exceptions.UpdateFinishedTrialError:
            return False

    def _complete(self, trial_id: int, run_id: str, row: dict, **attrs) -> None:
        """COMPLETE, unless another trial of this run already is (its worker was wrongly taken for
        dead and finished after all): then PRUNED with ``duplicate_of``, so one run, one COMPLETE."""
        done = [t.number for t in self.trials((TrialState.COMPLETE,)) if t.user_attrs.get("run_id") == run_id]
        if done:
            self._finish(trial_id, TrialState.PRUNED, duplicate_of=done[0])
        else:
            self._finish(trial_id, TrialState.COMPLETE, _value(row), status=row.get("status"),
                         diverged_step=row.get("diverged_step"), **attrs)

    def drain(self, progress: bool | str = True, log=print) -> int:
        """Take runs until none is waiting or running. Returns how many this worker finished.

        While others still hold runs, wait: a run whose worker dies comes back after its
        heartbeat goes stale, and any live worker may take it."""
        runs = {self.study.run_id(r): r for r in plan(self.study.config)}
        finished_here = 0
        while True:
            _retry(lambda: fail_stale_trials(self.optuna), "failing stale runs")
            popped = self._pop()
            if popped is None:
                if not self.trials((TrialState.RUNNING,)):
                    if self.fill(runs.values(), only_lost=True):
                        continue
                    return finished_here
                time.sleep(min(self.heartbeat, 2))
                continue
            trial_id, trial = popped
            run_id = trial.user_attrs.get("run_id")
            run = runs.get(run_id)
            if run is None:
                self._finish(trial_id, TrialState.FAIL, error=f"run {run_id} is not in this study's plan")
                continue
            if run_id in self.study.finished():  # its worker died after moving the folder into place
                row = self.study.folder.run(run_id).row()
                self._complete(trial_id, run_id, row, reused=True)
                continue
            retry = f" (retry of trial {trial.system_attrs['failed_trial']})" if "failed_trial" in trial.system_attrs else ""
            log(f"[{worker_identity()}] {run.arch} on {run.task}, {run.params} params, seed {run.seed}{retry}")
            try:
                with Heartbeat(self.storage, trial_id, self.heartbeat):
                    row = self.study.execute(run, progress=progress)
            except BaseException as exc:
                interrupted = isinstance(exc, (KeyboardInterrupt, SystemExit)) or _is_sigterm(exc)
                if interrupted:
                    self._finish(trial_id, TrialState.FAIL, interrupted=True)
                else:
                    self._finish(trial_id, TrialState.FAIL, error=str(exc)[:2000])
                if interrupted:  # give it back at once rather than after a heartbeat timeout
                    RetryHeartbeatStaleTrialCallback()(self.optuna, self.storage.get_trial(trial_id))
                raise
            self._complete(trial_id, run_id, row, wall_seconds=row.get("wall_seconds"))
            finished_here += 1
            self.study.collect()


def _value(row: dict) -> float:
    v = row.get("test_loss")
    return float(v) if isinstance(v, (int, float)) and v == v else float("inf")  # diverged: inf, not NaN


def _is_sigterm(exc: BaseException) -> bool:
    while exc is not None:
        if type(exc).__name__ == "SIGTERMException":  # Lightning turns SIGTERM into this
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def sigterm_as_interrupt() -> None:
    """A scheduler's SIGTERM (preemption) gives the run back to the queue, like Ctrl-C."""
    def handler(signum, frame):
        raise KeyboardInterrupt
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def cpu_cores() -> int:
    """Cores this process may run on (its affinity mask: what a scheduler allotted, not the whole machine)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity masks here (macOS, Windows)
        return os.cpu_count() or 1


def threads_per_worker(workers: int) -> int | None:
    """torch threads for each of ``workers`` processes on this machine: its cores split between
    them, as Lightning does for the processes it launches itself. None with one worker, or where
    OMP_NUM_THREADS says what the user wants.

    Each process would otherwise start one thread per core, their OpenMP threads spinning against
    each other, many times slower than one thread each (measured in docs/workers.md)."""
    if workers <= 1 or "OMP_NUM_THREADS" in os.environ:
        return None
    return max(1, cpu_cores() // workers)


def worker_command(out: Path, storage: str, heartbeat: int, loggers: list[str] | None = None) -> list[str]:
    extra = ["--logger", *loggers] if loggers and list(loggers) != ["csv"] else []
    return [sys.executable, "-c", "import sys; from mnemoscope.cli import main; sys.exit(main())",
            "worker", str(out), "--storage", storage, "--heartbeat", str(heartbeat), "--no-progress", *extra]


def run_study(study, runs, storage: str | None = None, workers: int = 1, heartbeat: int | None = None,
              progress: bool | str = True, log=print) -> bool:
    """Fill the queue with ``runs`` and drain it with ``workers`` processes (this one included).

    Returns True when every planned run has finished. ``workers=0`` only fills the queue.
    """
    queue = RunQueue(study, storage, heartbeat, create=True)
    queue.fill(runs)
    done = len({study.run_id(r) for r in runs} & study.finished())
    # a resumed study's unfinished runs may be in the queue already (waiting, or held by a worker):
    # "to run" counts them all, not only those this call added
    log(f"study {study.config.name}: {len(runs)} runs, {done} already finished, {len(runs) - done} to run "
        f"-> {study.out} (queue: {redact(queue.url)})")
    if workers == 0:
        log(f"join with: python study.py worker {study.out} --storage {redact(queue.url)}")
        return False
    sigterm_as_interrupt()
    procs = []
    env = dict(os.environ)
    gpus = torch.cuda.device_count()
    threads, threads_before = threads_per_worker(workers), torch.get_num_threads()
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)  # torch reads it when it starts
        torch.set_num_threads(threads)
        log(f"{workers} workers, {threads} torch thread(s) each ({cpu_cores()} cores)")
    for i in range(1, workers):
        if gpus > 1:  # one GPU per local worker; this process keeps cuda:0
            env = {**env, "CUDA_VISIBLE_DEVICES": str(i % gpus)}
        procs.append(subprocess.Popen(worker_command(study.out, queue.url, queue.heartbeat, study.loggers), env=env))
    shown = progress if workers == 1 else ("lines" if progress else False)  # one bar, or lines from several
    try:
        queue.drain(progress=shown, log=log)
        # a run whose workers died more than MAX_RETRY times is left failed by the queue; whoever
        # reruns study.py asks for it again (a run that kills every worker kills this one too)
        for _ in range(3):
            if not queue.fill(runs):
                break
            queue.drain(progress=shown, log=log)
    finally:
        for p in procs:
            p.wait()
        torch.set_num_threads(threads_before)
    s = queue.summary()
    if s["retries"] or s["failed_error"]:
        log(closing_line(s))
    return s["finished"] == s["planned"]


def closing_line(s: dict[str, int]) -> str:
    """The queue's closing summary: how its trials ended (:meth:`RunQueue.summary`)."""
    parts = [f"{s['complete']} trials complete"]
    parts += [f"{s[key]} {what}" for key, what in (("interrupted", "interrupted (Ctrl-C or SIGTERM)"),
                                                   ("failed_stale", "lost with their worker"),
                                                   ("failed_error", "failed")) if s.get(key)]
    return f"queue: {', '.join(parts)}; {s['retries']} retried"
