"""Runs that survive any stop: mid-run checkpoints through Lightning's own machinery.

* ``ModelCheckpoint`` writes ``last.ckpt`` every ``--checkpoint-every`` of training time (model,
  optimizer, learning-rate schedule, step counters, callbacks' state); :class:`AtomicCheckpointIO`
  makes each write atomic (a temporary file renamed over the old one), so a kill during a save
  leaves the previous checkpoint whole.
* :class:`ResumableBatches` feeds the training batches by step number and tells Lightning where it
  stands (``state_dict``): a run resumed with ``trainer.fit(ckpt_path=...)`` continues with the
  batch of the step after the checkpoint, none seen twice, none skipped.
* :class:`GracefulStop`: Ctrl-C or SIGTERM during training finishes the current step, saves a
  checkpoint, then interrupts (a second signal interrupts at once).
* :class:`LoggedRows`: every checkpoint carries the rows of ``metrics.csv`` logged up to its step
  (the row of that step included, although Lightning writes it just after the save): a resumed
  run's ``metrics.csv`` is those rows and the resumed sitting's, never a row twice nor one lost,
  however many times the run was stopped.
* :class:`StepHook` (tests only, through the ``MNEMOSCOPE_STEP_HOOK`` environment variable): stop
  a real process at a step the test chooses, and tell the test through a FIFO; no clock involved.
* Slurm's preemption signal is Lightning's: under Slurm, ``SLURMEnvironment(auto_requeue=True)``
  saves ``hpc_ckpt_N.ckpt`` on the requeue signal (SIGUSR1) and requeues the job; the rerun
  resumes from the newest checkpoint (:func:`latest_checkpoint`).
"""
from __future__ import annotations

import csv
import datetime
import os
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import lightning as L
import torch
from lightning.fabric.utilities.apply_func import convert_tensors_to_scalars
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.fabric.utilities.cloud_io import _atomic_save
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..errors import UserError
from ..settings import STUDY
from ..storage import files
from ..storage.run_folder import RunFolder

DEFAULT_CHECKPOINT_EVERY = STUDY.checkpoint_every
LAST = RunFolder.LAST_CHECKPOINT
STEP_HOOK = "MNEMOSCOPE_STEP_HOOK"  # tests: "pause=N,fifo=PATH[,checkpoint=K]" (:class:`StepHook`)

_UNITS = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}


def parse_duration(text: str | int | float | None, what: str = "--checkpoint-every") -> float | None:
    """``30s``, ``10m``, ``1.5h``, ``500ms`` or a number of seconds -> seconds; ``off``/``none``/``0``
    -> None (no periodic checkpoint)."""
    if text is None:
        return None
    if isinstance(text, bool):
        raise UserError(f"malformed {what} {text!r}: a duration such as 30s, 10m or 1h, or off")
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        s = str(text).strip().lower()
        if s in ("off", "none", "no", "0", "never"):
            return None
        m = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|sec|m|min|h)?", s)
        if not m:
            raise UserError(f"malformed {what} {text!r}: a duration such as 30s, 10m or 1h, or off")
        seconds = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    if seconds < 0 or seconds != seconds:
        raise UserError(f"malformed {what} {text!r}: a duration such as 30s, 10m or 1h, or off")
    return seconds or None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O, each file written to a temporary name and renamed into place."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        files.atomic_write(Path(path), lambda tmp: _atomic_save(checkpoint, tmp))


def checkpoint_step(path: Path) -> int:
    """The optimizer steps done when the checkpoint at ``path`` was saved."""
    return int(torch.load(path, map_location="cpu", weights_only=True).get("global_step", 0))


def latest_checkpoint(folder: Path | None) -> Path | None:
    """The checkpoint in ``folder`` with the most steps done: ``last.ckpt`` (periodic, or saved on
    Ctrl-C/SIGTERM) or Lightning's ``hpc_ckpt_N.ckpt`` (Slurm's requeue signal); None if none."""
    if folder is None or not Path(folder).is_dir():
        return None
    found = []
    for p in Path(folder).glob("*.ckpt"):
        try:
            found.append((checkpoint_step(p), p.name == LAST, p))
        except Exception:  # unreadable (a kill mid-write cannot make one, but a full disk might): ignore it
            continue
    return max(found)[2] if found else None


class ResumableBatches:
    """The training batches in step order, item s the batch of step s (``TrainBatches``), starting
    at ``start``: the step a resumed run continues from. ``len`` is the whole run, so Lightning's
    epoch counters mean the same before and after a resume; ``state_dict`` makes Lightning treat
    the loader as resumable (the position itself is the trainer's restored ``global_step``)."""

    def __init__(self, batches: torch.utils.data.Dataset, start: int = 0, pin_memory: bool = False):
        self.batches, self.start, self.pin_memory = batches, int(start), pin_memory

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator:
        for step in range(self.start, len(self.batches)):
            batch = self.batches[step]
            # pinned batches: the copy to a GPU is then truly asynchronous
            yield tuple(t.pin_memory() for t in batch) if self.pin_memory else batch

    def state_dict(self) -> dict[str, int]:
        return {"start": self.start}

    def load_state_dict(self, state: dict[str, int]) -> None:
        pass  # the start was read from the checkpoint's global_step before the loader was made


class GracefulStop(L.Callback):
    """Ctrl-C or SIGTERM during training: finish the step under way, save ``last.ckpt``, then raise
    KeyboardInterrupt (the command line exits with 130). A second signal interrupts at once."""

    def __init__(self, path: Path | None):
        self.path = path
        self.requested: int | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum, frame):
        if self.requested is not None:
            raise KeyboardInterrupt
        self.requested = signum

    def on_train_start(self, trainer, pl_module):
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handler)

    def _restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.requested is None:
            return
        if self.path is not None:
            trainer.save_checkpoint(self.path, weights_only=False)
        self._restore()
        raise KeyboardInterrupt

    def on_train_end(self, trainer, pl_module):
        self._restore()

    def on_exception(self, trainer, pl_module, exception):
        self._restore()


class Elapsed(L.Callback):
    """Training time summed over every sitting of a run (kept in its checkpoints): a resumed run's
    ``wall_seconds`` counts the time before the stop up to its last checkpoint, not the time lost."""

    def __init__(self):
        self.before, self.since = 0.0, None

    def on_train_start(self, trainer, pl_module):
        self.since = time.time()

    @property
    def seconds(self) -> float:
        return self.before + (time.time() - self.since if self.since is not None else 0.0)

    def state_dict(self):
        return {"seconds": self.seconds}

    def load_state_dict(self, state):
        self.before = float(state.get("seconds", 0.0))


class RowsCSVLogger(CSVLogger):
    """Lightning's CSV logger (``metrics.csv``), each row it logs also kept in ``rows`` (a list
    shared with :class:`LoggedRows`, which keeps them in every checkpoint)."""

    def __init__(self, *args, rows: list[dict[str, Any]], **kwargs):
        super().__init__(*args, **kwargs)
        self.rows = rows

    @rank_zero_only
    def log_metrics(self, metrics, step=None):
        super().log_metrics(metrics, step)
        self.rows.append(_row(metrics, step if step is not None else len(self.rows)))


def _row(metrics: dict[str, Any], step: int) -> dict[str, Any]:
    """A row as Lightning's CSV writer records it: scalars, and the step."""
    return {**{k: v.item() if isinstance(v, torch.Tensor) else v for k, v in metrics.items()}, "step": int(step)}


class LoggedRows(L.Callback):
    """The rows of ``metrics.csv`` in every checkpoint, so that a resumed run's log is whole.

    Lightning saves a checkpoint at the end of a training step (periodic, Ctrl-C/SIGTERM) before
    it logs that step's row; a kill afterwards leaves rows in the file that the resumed sitting
    logs again, and one before leaves the step's row to no sitting. The checkpoint holds instead
    the rows of every sitting before it up to its own step, that step's row included (what
    Lightning is about to log); the resumed sitting logs from the next step on, and
    :meth:`write` puts the two together in Lightning's own format."""

    def __init__(self):
        self.before: list[dict[str, Any]] = []  # rows of the sittings before this one (from the checkpoint)
        self.rows: list[dict[str, Any]] = []  # rows logged in this sitting
        self.trainer = None

    def setup(self, trainer, pl_module, stage):
        self.trainer = trainer

    def _pending(self) -> list[dict[str, Any]]:
        """The row Lightning logs right after the save, when the save comes at a training step's end."""
        trainer = self.trainer
        if trainer is None or not trainer.training:
            return []
        loop = trainer.fit_loop.epoch_loop
        done = loop.batch_progress.total
        at_batch_end = done.ready == done.started == done.processed == done.completed + 1
        if not at_batch_end or loop._should_accumulate() or not trainer._logger_connector.should_update_logs:
            return []
        metrics = convert_tensors_to_scalars(trainer._logger_connector.metrics["log"])
        if not metrics:
            return []
        metrics.setdefault("epoch", trainer.current_epoch)
        return [_row(metrics, loop._batches_that_stepped)]

    def state_dict(self):
        return {"rows": [*self.before, *self.rows, *self._pending()]}

    def load_state_dict(self, state):
        self.before = [dict(r) for r in state.get("rows", [])]

    def write(self, path: Path) -> None:
        """``metrics.csv`` of a resumed run: the rows of the checkpoint, then this sitting's, with
        Lightning's header (every key, sorted) and its way of writing values."""
        rows = [*self.before, *self.rows]
        keys = sorted(set().union(*rows)) if rows else []


        def write(tmp: Path) -> None:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=keys)
                writer.writeheader()
                writer.writerows(rows)
        files.atomic_write(path, write)


class StepHook(L.Callback):
    """Tests only: stop a real process at a training step the test chooses, without a clock.

    ``MNEMOSCOPE_STEP_HOOK="pause=N,fifo=PATH,checkpoint=K"``: after step N of a run (its training
    and the callbacks before this one done, its row not yet logged) the process writes ``N`` to the
    FIFO at PATH (the test's wait on it ends) and waits for a signal: SIGKILL ends it there,
    SIGTERM or SIGINT let it go on to :class:`GracefulStop`, another signal lets training go on.
    ``after=N`` instead of ``pause=N``: after the N-th training step this process takes, over all
    its runs. ``checkpoint=K``: also save ``last.ckpt`` after every K-th step, as the periodic
    checkpoint does (the test then knows where the run resumes)."""

    taken = 0  # training steps this process has taken, over all runs

    def __init__(self, spec: str, path: Path | None):
        try:
            parts = dict(p.split("=", 1) for p in spec.split(","))
            self.pause = int(parts["pause"]) if "pause" in parts else None
            self.after = int(parts["after"]) if "after" in parts else None
            self.fifo, self.every = parts["fifo"], int(parts.get("checkpoint", 0))
        except (KeyError, ValueError):
            raise UserError(f"malformed {STEP_HOOK} {spec!r}: pause=STEP or after=STEPS, fifo=PATH, "
                            "checkpoint=STEPS") from None
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = int(trainer.global_step)
        StepHook.taken += 1
        if self.every and self.path is not None and step % self.every == 0:
            trainer.save_checkpoint(self.path, weights_only=False)
        if step == self.pause or StepHook.taken == self.after:
            # wait for a signal: signal.pause() would wait on when the kernel hands the signal to
            # another thread (the queue's heartbeat), so wait instead on Python's wake-up byte
            r, w = os.pipe()
            os.set_blocking(w, False)
            previous = signal.set_wakeup_fd(w)
            try:
                with open(self.fifo, "w") as f:
                    f.write(f"{step}\n")
                os.read(r, 1)
            finally:
                signal.set_wakeup_fd(previous)
                os.close(r)
                os.close(w)


def resume_record(path: Path, n_steps: int) -> dict[str, Any]:
    """What is recorded of a resume from the checkpoint at ``path``: its step, of how many, when it
    was written (the file's time) and when the run resumed."""
    def utc(t: float) -> str:
        return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    return {"step": checkpoint_step(path), "of": int(n_steps), "checkpoint_written": utc(path.stat().st_mtime),
            "resumed_at": utc(time.time())}


def resume_line(run_id: str, record: dict[str, Any]) -> str:
    """``run R resumes from step S of N, from a checkpoint written 2026-01-02 03:04:05 UTC``."""
    written = record["checkpoint_written"].replace("T", " ").replace("Z", " UTC")
    return f"run {run_id} resumes from step {record['step']} of {record['of']}, from a checkpoint written {written}"
