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
* Slurm's preemption signal is Lightning's: under Slurm, ``SLURMEnvironment(auto_requeue=True)``
  saves ``hpc_ckpt_N.ckpt`` on the requeue signal (SIGUSR1) and requeues the job; the rerun
  resumes from the newest checkpoint (:func:`latest_checkpoint`).
"""
from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import lightning as L
import torch
from lightning.fabric.utilities.cloud_io import _atomic_save
from lightning.pytorch.plugins.io import TorchCheckpointIO

from .errors import UserError
from .settings import STUDY

DEFAULT_CHECKPOINT_EVERY = STUDY.checkpoint_every
LAST = "last.ckpt"

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
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            _atomic_save(checkpoint, tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


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
