"""Lightning callbacks every run uses: stop on divergence, and validation at log-spaced steps
(the loss-against-compute curve of a run, and what ``study.py tune`` prunes on); plain progress
lines where the output is no terminal."""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch

from ..contract.windows import TokenSplit, eval_offsets
from ..measure.evaluate import per_position_losses
from ..measure.history import window_stride
from ..settings import EVAL_BATCH, VALIDATION_WINDOWS
from ..storage.study_folder import RunFolder

POINTS_PER_DECADE = 5  # validation points per decade of training steps

class DivergenceGuard(L.Callback):
    """Stop when the training loss is NaN/inf or explodes; remember the step (status ``diverged``).

    Reading a loss on the host waits for the device. On a CPU that costs nothing and every step
    is checked as it ends; on an accelerator the losses stay on the device and are read together
    every ``every`` steps (one synchronisation instead of ``every``), so a divergence stops the run
    at most ``every - 1`` steps late, and the step recorded is still the first bad one."""

    def __init__(self, factor: float = 4.0, every: int = 16, every_step: bool | None = None):
        self.step: int | None = None
        self.factor, self.first, self.every = factor, None, every
        self.every_step = every_step  # None: on a CPU only
        self.pending: list[tuple[int, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.pending.append((int(trainer.global_step), loss.detach()))
        every_step = loss.device.type == "cpu" if self.every_step is None else self.every_step
        if every_step or len(self.pending) >= self.every:
            self._check(trainer)

    def on_train_end(self, trainer, pl_module):
        self._check(trainer)

    def state_dict(self):  # kept in a mid-run checkpoint: a resumed run compares with the same first loss
        return {"first": self.first, "step": self.step}

    def load_state_dict(self, state):
        self.first, self.step = state.get("first"), state.get("step")

    def _check(self, trainer) -> None:
        if not self.pending:
            return
        steps = [s for s, _ in self.pending]
        values = torch.stack([v.float() for _, v in self.pending]).tolist()  # one wait for the device
        self.pending = []
        for step, value in zip(steps, values):
            if self.step is not None:
                return
            if self.first is None and math.isfinite(value):
                self.first = value
            if not math.isfinite(value) or (self.first is not None and value > self.factor * self.first + 5):
                self.step = step
                trainer.should_stop = True


def log_spaced_steps(n_steps: int, per_decade: int = POINTS_PER_DECADE) -> list[int]:
    """Steps 1..n_steps at ``per_decade`` points per decade, the last step always included."""
    k = max(2, int(math.ceil(per_decade * math.log10(max(n_steps, 10)))) + 1)
    return sorted({int(s) for s in np.unique(np.round(np.geomspace(1, n_steps, k)))} | {n_steps})


class LogSpacedValidation(L.Callback):
    """Scores the same validation windows after log-spaced training steps, for loss-vs-compute curves.

    After step s (s optimizer steps done, s * tokens_per_step tokens seen) it records each
    sequence's summed loss (nats) and logs the mean as ``val_loss_logspaced``. ``save(path)`` writes
    ``val_curve.npz``: steps (P,), tokens (P,), loss_sum (P, N) and targets (N,) per sequence,
    so intervals can resample sequences.
    """

    def __init__(self, validation: TokenSplit, context_length: int, n_steps: int, tokens_per_step: int,
                 batch_size: int = EVAL_BATCH, n_sequences: int = VALIDATION_WINDOWS, per_decade: int = POINTS_PER_DECADE):
        self.validation, self.T, self.batch_size, self.n_sequences = validation, context_length, batch_size, n_sequences
        self.steps = log_spaced_steps(n_steps, per_decade)
        self.tokens_per_step = tokens_per_step
        self.history: list[tuple[int, int, np.ndarray]] = []  # (step, tokens, per-sequence loss sums)
        self.targets: np.ndarray | None = None
        self.resumed = False  # restored from a checkpoint, the latest value not logged again yet

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = int(trainer.global_step)
        if self.resumed and step not in self.steps:
            # Lightning writes the value last logged on every later row of metrics.csv; a resumed
            # sitting starts without it: log it again, as the uninterrupted run still holds it
            self.resumed = False
            pl_module.log("val_loss_logspaced", self.last_loss, on_step=True, on_epoch=False)
        if step not in self.steps or (self.history and self.history[-1][0] == step):
            return
        self.resumed = False
        losses, mask = per_position_losses(pl_module.model, self.validation, self.T, self.n_sequences, self.batch_size)
        m = mask.astype(np.float64)
        sums = (losses.astype(np.float64) * m).sum(1)  # (N,) nats per sequence
        self.targets = m.sum(1)
        self.history.append((step, step * self.tokens_per_step, sums))
        pl_module.log("val_loss_logspaced", float(sums.sum() / max(self.targets.sum(), 1)), on_step=True, on_epoch=False)

    def state_dict(self):  # kept in a mid-run checkpoint: the curve of a resumed run is whole
        return {"history": [(s, t, v.tolist()) for s, t, v in self.history],
                "targets": None if self.targets is None else self.targets.tolist()}

    def load_state_dict(self, state):
        self.history = [(int(s), int(t), np.asarray(v, np.float64)) for s, t, v in state.get("history", [])]
        self.targets = None if state.get("targets") is None else np.asarray(state["targets"], np.float64)
        self.resumed = bool(self.history)

    @property
    def last_loss(self) -> float:
        """Mean validation loss (nats/token) at the latest point, NaN before the first."""
        if not self.history:
            return math.nan
        return float(self.history[-1][2].sum() / max(self.targets.sum(), 1))

    def save(self, path: Path) -> None:
        if not self.history:
            return
        np.savez_compressed(path, steps=np.array([h[0] for h in self.history]),
                            tokens=np.array([h[1] for h in self.history], dtype=np.int64),
                            loss_sum=np.stack([h[2] for h in self.history]), targets=self.targets)


class TrainingHistory(L.Callback):
    """Per-position loss through training (:mod:`mnemoscope.measure.history`): after each kept step but the
    last (the run's final evaluation is that one), every k-th test window of the final evaluation
    (:func:`mnemoscope.measure.history.window_stride`) scored at every position, and the weights kept unless ``keep_weights`` is False, written into
    ``folder/history/``. Only the process that writes (rank 0) scores."""

    def __init__(self, split: TokenSplit, context_length: int, n_sequences: int, steps: list[int],
                 tokens_per_step: int, folder: Path, keep_weights: bool = True, batch_size: int = EVAL_BATCH):
        self.split, self.T, self.batch_size = split, context_length, batch_size
        # every k-th window of the final evaluation's: the same windows at every kept step, the last included
        self.offsets = eval_offsets(split, context_length, n_sequences)[::window_stride(n_sequences)]
        self.steps, self.tokens_per_step, self.folder, self.keep_weights = set(steps[:-1]), tokens_per_step, folder, keep_weights
        self.seconds = 0.0  # time spent scoring: the cost of the history (benchmarks)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = int(trainer.global_step)
        if step not in self.steps or not trainer.is_global_zero:
            return
        t0 = time.perf_counter()
        losses, mask = per_position_losses(pl_module.model, self.split, self.T, batch_size=self.batch_size,
                                           offsets=self.offsets)
        RunFolder(self.folder).write_step(step, step * self.tokens_per_step, losses, mask,
                                          pl_module.model.state_dict() if self.keep_weights else None)
        self.seconds += time.perf_counter() - t0

    def state_dict(self):
        return {"seconds": self.seconds}

    def load_state_dict(self, state):
        self.seconds = float(state.get("seconds", 0.0))


class ProgressLines(L.Callback):
    """Plain progress lines for output that is no terminal (a file, a pipe, a batch job's log),
    where a progress bar prints nothing readable: ``label: step s/n (p%), loss L, M:SS left`` every
    tenth of the run or every ``seconds``, whichever comes first, and at the last step."""

    def __init__(self, label: str, n_steps: int, fraction: float = 0.1, seconds: float = 30.0, stream=None,
                 start: int = 0):
        self.label, self.n_steps, self.seconds = label, max(1, n_steps), seconds
        self.every = max(1, int(round(fraction * self.n_steps)))
        self.stream = stream
        self.start = self.last = None
        self.first_step = start  # a resumed run starts here: the time left is measured from it
        self.next_step = (start // self.every + 1) * self.every

    def on_train_start(self, trainer, pl_module):
        self.start = self.last = time.time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step, now = int(trainer.global_step), time.time()
        if step < self.next_step and now - self.last < self.seconds and step < self.n_steps:
            return
        while self.next_step <= step:
            self.next_step += self.every
        self.last = now
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        left = (now - self.start) / max(step - self.first_step, 1) * (self.n_steps - step)
        print(f"{self.label}: step {step}/{self.n_steps} ({100 * step / self.n_steps:.0f}%), loss "
              f"{float(loss):.4f}, {int(left // 60)}:{int(left % 60):02d} left", file=self.stream or sys.stdout,
              flush=True)
