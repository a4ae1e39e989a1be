"""One generic LightningModule trains any architecture (the architecture knows nothing of training)."""
from __future__ import annotations

import datetime
import logging
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.strategies import StrategyRegistry
import torch
import torch.nn.functional as F
from torch import nn

from ..contract.model import token_losses
from ..contract.windows import TokenSplit, TrainBatches, eval_offsets, window_batch
from ..errors import UserError
from ..settings import MAX_AUTO_BATCH, MIN_AUTO_BATCH, MIN_STEPS, VALIDATION_WINDOWS
from ..storage.run_folder import RunFolder
from .checkpoints import (LAST, STEP_HOOK, AtomicCheckpointIO, GracefulStop, LoggedRows, ResumableBatches, RowsCSVLogger,
                          StepHook, checkpoint_step, latest_checkpoint)

for _name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda", "lightning.fabric",
              "lightning.pytorch.trainer.connectors.signal_connector"):  # "Received SIGTERM": the CLI says it in one line
    logging.getLogger(_name).setLevel(logging.WARNING)
warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*validation_step.*but have no.*val_dataloader.*")
warnings.filterwarnings("ignore", ".*GPU available but not used.*")
warnings.filterwarnings("ignore", ".*`isinstance\\(treespec, LeafSpec\\)` is deprecated.*")
# a resumed run: its checkpoint and log folders hold the first sitting's files on purpose
warnings.filterwarnings("ignore", ".*Checkpoint directory .* exists and is not empty.*")
warnings.filterwarnings("ignore", ".*Experiment logs directory .* exists and is not empty.*")


PROGRESS_REFRESH_STEPS = 10  # the progress bar redraws every this many steps (each redraw ~1 ms of CPU)


def auto_batch_size(tokens: int, context_length: int) -> int:
    """Sequences per batch when none is given: the largest power of two up to 32 that still leaves
    the run about MIN_STEPS optimizer steps, and at least MIN_AUTO_BATCH.

    At CPU budgets the number of steps, not the batch, limits what a model learns: 100k-parameter
    models on Shakespeare bytes (context 256, 1M tokens, default learning rates) reached 2.51 / 2.10
    / 2.00 nats/byte (rotary transformer) and 3.10 / 2.39 / 2.12 (LSTM) with batches of 32 / 8 / 4
    sequences, i.e. 122 / 488 / 976 steps.
    """
    per_step = tokens / max(1, MIN_STEPS * context_length)
    b = 2 ** int(math.floor(math.log2(per_step))) if per_step >= 1 else 1
    return int(min(MAX_AUTO_BATCH, max(MIN_AUTO_BATCH, b)))


@dataclass
class TrainConfig:
    tokens: int = 1_000_000  # training tokens (targets seen, counting masked ones)
    batch_size: int = 32
    lr: float = 2e-3
    warmup_fraction: float = 0.05  # of the steps, linear from 0
    min_lr_fraction: float = 0.1  # cosine decays to this fraction of lr
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    seed: int = 0
    val_every_tokens: int | None = None  # validation loss at these intervals (None: only at the end)
    compile: bool = False  # torch.compile the model (in place: weights and state_dict keys unchanged)
    extra: dict[str, Any] = field(default_factory=dict)

    def steps(self, context_length: int) -> int:
        return max(1, self.tokens // (self.batch_size * context_length))


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean nats per counted target, computed in fp32."""
    loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")
    return masked_mean(loss, mask)


def masked_mean(losses: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of per-target losses over the counted targets."""
    m = mask.flatten().to(losses.dtype)
    return (losses.flatten() * m).sum() / m.sum().clamp_min(1)


def sequence_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean nats per counted target; at a large vocabulary the output layer and the loss run in
    chunks of positions (:func:`mnemoscope.contract.model.token_losses`), so the (B, T, V) logits are never held."""
    return masked_mean(token_losses(model, x, y), mask)


class LanguageModel(L.LightningModule):
    """Wraps any ``(B, T) -> (B, T, V)`` module: AdamW, linear warm-up then cosine decay."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, n_steps: int):
        super().__init__()
        self.model, self.cfg, self.n_steps = model, cfg, n_steps

    def __setattr__(self, name, value):
        # Lightning names the running hook on the module before and after every hook call, 46 times
        # per training step; nn.Module.__setattr__ checks each value against parameters, buffers and
        # submodules first (3.7 us a call here, 0.6 us stored directly: 0.14 ms per step). The name
        # is always a str or None, so store it directly.
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def forward(self, tokens):
        return self.model(tokens)

    def training_step(self, batch, batch_idx):
        x, y, m = batch
        loss = sequence_loss(self.model, x, y, m)
        # only on the steps the logger writes (same metrics.csv): Lightning's self.log costs 1-3 ms
        # of CPU per call (cProfile), as much as a small model's whole forward pass
        if (self.global_step + 1) % self.trainer.log_every_n_steps == 0:
            self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y, m = batch
        loss = sequence_loss(self.model, x, y, m)
        self.log("val_loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=len(x))
        return loss

    def configure_optimizers(self):
        decay, no_decay = [], []
        for p in {id(p): p for p in self.model.parameters() if p.requires_grad}.values():
            (decay if p.dim() >= 2 else no_decay).append(p)
        # embeddings are 2-D too; GPT practice decays them, and tied heads make them one tensor
        groups = [{"params": decay, "weight_decay": self.cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        opt = torch.optim.AdamW(groups, lr=self.cfg.lr, betas=self.cfg.betas,
                                fused=fused_adamw(self.model.parameters()))
        warm = max(1, int(self.cfg.warmup_fraction * self.n_steps))
        floor = self.cfg.min_lr_fraction

        def schedule(step):
            if step < warm:
                return (step + 1) / warm
            progress = min(1.0, (step - warm) / max(1, self.n_steps - warm))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def fused_adamw(params) -> bool | None:
    """True where torch has a fused AdamW kernel for the parameters' device (CUDA; CPU from torch
    2.4): one kernel for all tensors instead of a Python loop over them, several times faster."""
    device = next(iter(params)).device.type
    major, minor = (int(v) for v in torch.__version__.split(".")[:2])
    return True if device == "cuda" or (device == "cpu" and (major, minor) >= (2, 4)) else None


def accelerator_settings() -> dict[str, Any]:
    """CUDA with bf16 autocast when present, else the CPU in fp32."""
    if torch.cuda.is_available():
        return {"accelerator": "gpu", "devices": 1, "precision": "bf16-mixed"}
    return {"accelerator": "cpu", "devices": 1, "precision": "32-true"}


def distributed_settings(devices: str | None = None, num_nodes: str | None = None,
                         strategy: str | None = None) -> dict[str, Any]:
    """Check ``--devices``, ``--num-nodes`` and ``--strategy`` and turn them into Trainer arguments.

    devices: a count (``4``), ``-1``/``auto`` (all), or a list of indices (``0,2``);
    num_nodes: machines, each running ``devices`` processes; strategy: a Lightning strategy
    name (``ddp``, ``fsdp``, ``deepspeed_stage_2``, ...)."""
    out: dict[str, Any] = {}
    if devices is not None:
        text = str(devices).strip()
        if text == "auto" or text == "-1":
            out["devices"] = text if text == "auto" else -1
        elif text.isdigit() and int(text) >= 1:
            out["devices"] = int(text)
        elif "," in text and all(p.strip().isdigit() for p in text.split(",") if p.strip()):
            out["devices"] = [int(p) for p in text.split(",") if p.strip()]
        else:
            raise UserError(f"malformed --devices {devices!r}: a count such as 4, auto, or indices such as 0,1")
    if num_nodes is not None:
        if not str(num_nodes).strip().isdigit() or int(num_nodes) < 1:
            raise UserError(f"malformed --num-nodes {num_nodes!r}: a whole number of machines, at least 1")
        out["num_nodes"] = int(num_nodes)
    if strategy is not None:
        known = sorted(set(StrategyRegistry.available_strategies()) | {"auto", "ddp", "fsdp"})
        if strategy not in known:
            raise UserError(f"unknown --strategy {strategy!r} (Lightning knows: {', '.join(known)})")
        out["strategy"] = strategy
    return out


def fit(model: nn.Module, train: TokenSplit, validation: TokenSplit, context_length: int, cfg: TrainConfig,
        log_dir: Path, callbacks: list | None = None, progress: bool = True, trainer_kwargs: dict | None = None,
        loggers: list | None = None, checkpoint_dir: Path | None = None, checkpoint_every: float | None = None):
    """Train ``model`` for ``cfg.tokens`` tokens. Returns the Lightning module and trainer.

    ``trainer_kwargs`` go to Lightning's Trainer as they are, e.g. ``devices=8, num_nodes=4,
    strategy="ddp"`` for one run on many GPUs (see :func:`distributed_settings`). ``loggers``:
    Lightning loggers to log into besides the CSV one in ``log_dir`` (:func:`tracker_loggers`).

    ``checkpoint_dir``: where ``last.ckpt`` is written every ``checkpoint_every`` seconds of
    training and on Ctrl-C/SIGTERM (:mod:`mnemoscope.training.checkpoints`); a checkpoint found there is
    resumed from, the data continuing with the batch of the next step. None: no checkpoints."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    n_steps = cfg.steps(context_length)
    resume = latest_checkpoint(checkpoint_dir)
    start = checkpoint_step(resume) if resume is not None else 0
    # pinned batches: the copy to a GPU is then truly asynchronous (from pageable memory CUDA
    # synchronizes the stream before copying, i.e. once per step)
    data = ResumableBatches(TrainBatches(train, context_length, cfg.batch_size, n_steps, cfg.seed), start,
                            pin_memory=torch.cuda.is_available())
    offsets = eval_offsets(validation, context_length, VALIDATION_WINDOWS)
    val_batches = [window_batch(validation, offsets[i:i + cfg.batch_size], context_length)
                   for i in range(0, len(offsets), cfg.batch_size)]
    val_every = None
    if cfg.val_every_tokens:
        val_every = max(1, cfg.val_every_tokens // (cfg.batch_size * context_length))
    if cfg.compile:
        model.compile()
    lm = LanguageModel(model, cfg, n_steps)
    rows = LoggedRows()  # metrics.csv's rows, kept in every checkpoint: a resumed run's log is whole
    if resume is not None:
        (Path(log_dir) / RunFolder.METRICS).unlink(missing_ok=True)  # an earlier sitting's: the checkpoint has its rows
    logger = [RowsCSVLogger(str(log_dir), name="", version="", rows=rows.rows), *(loggers or [])]
    # deterministic kernels on the CPU; trainer_kwargs may override it
    settings = {"deterministic": not torch.cuda.is_available(), **accelerator_settings(), **(trainer_kwargs or {})}
    if settings["deterministic"]:
        # Deterministic mode also fills every torch.empty with NaN (to expose reads of uninitialised
        # memory), which costs time in proportion to the activations: 2.3 ms of a 57 ms step (4%)
        # for the default study's 300k LSTM. No kernel here reads uninitialised memory, so results
        # are unchanged and still deterministic without it (PyTorch's torch.utils.deterministic docs).
        torch.utils.deterministic.fill_uninitialized_memory = False
    callbacks = [*(callbacks or []), rows]
    if progress:
        # Lightning's default bar redraws after every step: 1.0 ms per step on this CPU (a near-zero
        # model, 3.7-4.3 ms per step with it, 2.6-3.2 without, 2.7-3.1 redrawing every 10 steps),
        # 2% of the default study's LSTM step
        callbacks.append(L.pytorch.callbacks.TQDMProgressBar(refresh_rate=PROGRESS_REFRESH_STEPS))
    plugins = []
    if os.environ.get(STEP_HOOK):  # tests: stop at a chosen step (checkpoints.StepHook)
        callbacks.append(StepHook(os.environ[STEP_HOOK], Path(checkpoint_dir) / LAST if checkpoint_dir else None))
    if checkpoint_dir is not None:
        last = Path(checkpoint_dir) / LAST
        callbacks.append(GracefulStop(last))
        if checkpoint_every:
            callbacks.append(L.pytorch.callbacks.ModelCheckpoint(
                dirpath=str(checkpoint_dir), filename=last.stem, save_top_k=1, enable_version_counter=False,
                train_time_interval=datetime.timedelta(seconds=checkpoint_every), save_on_train_epoch_end=False))
        plugins.append(AtomicCheckpointIO())
        trainer_kwargs = {"default_root_dir": str(checkpoint_dir), **(trainer_kwargs or {})}  # Slurm's hpc_ckpt_N.ckpt
        settings.update(trainer_kwargs)
    trainer = L.Trainer(
        max_steps=n_steps, max_epochs=1, gradient_clip_val=cfg.grad_clip, logger=logger, plugins=plugins or None,
        callbacks=callbacks, enable_checkpointing=bool(checkpoint_dir is not None and checkpoint_every),
        enable_progress_bar=progress,
        enable_model_summary=False, log_every_n_steps=max(1, min(50, n_steps // 20)),
        val_check_interval=val_every if val_every and val_every < n_steps else None,
        limit_val_batches=len(val_batches) if val_every else 0, num_sanity_val_steps=0, **settings,
    )
    # with N processes (DDP) each sees 1/N of the batches: the schedule spans the steps actually taken
    lm.n_steps = math.ceil(n_steps / trainer.world_size)
    trainer.fit(lm, train_dataloaders=data, val_dataloaders=val_batches if val_every else None,
                ckpt_path=str(resume) if resume is not None else None, weights_only=True)
    if rows.before and trainer.is_global_zero:  # resumed: the checkpoint's rows, then this sitting's
        rows.write(Path(log_dir) / RunFolder.METRICS)
    return lm, trainer
