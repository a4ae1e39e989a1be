"""A trained run finished: scored on the test split, its row and files written into its working
folder (:class:`mnemoscope.storage.study_folder.RunFolder`), which :class:`mnemoscope.study.runner.Study` then moves into
place whole.

The row (``result.json``, one row of ``runs.parquet``: :data:`RUN_COLUMNS`), the per-position
table (:data:`POSITION_COLUMNS`) with a bootstrap interval over sequences at each position, the
per-sequence losses, the validation curve, the model, and the tables of the kept steps where the
run kept a history (:mod:`mnemoscope.measure.history`).
"""
from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..contract.model import active_params, count_params, state_size
from ..measure.evaluate import bits_per_byte, bootstrap_ci, per_position_losses, scoring_fingerprint, scoring_parts, window_bytes
from ..measure.history import run_tables, window_stride
from ..measure.statistics import octave_gain
from ..registry import ARCHITECTURES
from ..settings import EVAL_BATCH, N_BOOT, VALIDATION_WINDOWS
from ..specs import parse_spec
from ..storage.study_folder import RunFolder
from ..training.loggers import log_results


RUN_COLUMNS = ["run_id", "arch", "task", "params", "seed", "context", "arch_config", "target_params",
               "achieved_params", "active_params", "total_params", "state_size", "batch_size", "tokens_trained", "wall_seconds",
               "torch_threads",
               "final_val_loss", "test_loss", "bits_per_byte", "last_octave_gain", "last_octave_gain_low",
               "last_octave_gain_high", "status", "diverged_step", "flops_per_token", "data_fingerprint",
               "scoring_fingerprint", "scoring_parts",  # what the test losses were scored on (evaluate.scoring_parts)
               "resumes"]  # every resume of the run after a stop: JSON, [{step, of, checkpoint_written, resumed_at}]
POSITION_COLUMNS = ["run_id", "arch", "task", "params", "seed", "position", "loss", "ci_low", "ci_high", "n_sequences",
                    "context_bytes", "target_bytes"]


def finish_run(study, run, run_id: str, trained, work: RunFolder) -> dict[str, Any]:
    """Score the ``trained`` run (:class:`mnemoscope.study.runner.Trained`) of ``study`` and write its
    files into ``work``, its row last; returns the row."""
    task = study.task(run.task)
    splits = task.splits()
    eval_sequences = study.config.eval_sequences
    model, arch_config, cfg, guard, curve = (trained.model, trained.arch_config, trained.cfg, trained.guard,
                                             trained.curve)
    fpt, wall = trained.flops_per_token, trained.wall_seconds
    model = model.float()
    T = task.context_length
    eval_batch = max(cfg.batch_size, EVAL_BATCH)  # no gradients: larger batches than training are free
    losses, mask = per_position_losses(model, splits["test"], T, eval_sequences, eval_batch)
    val_losses, val_mask = per_position_losses(model, splits["validation"], T, min(VALIDATION_WINDOWS, eval_sequences), eval_batch)
    # bytes of text in each window's context and in each target (None: the task's tokens are not text)
    nbytes = window_bytes(splits["test"], T, eval_sequences, task.token_bytes())
    label = {"run_id": run_id, "arch": run.arch, "task": run.task, "params": run.params, "seed": run.seed}
    scored, pp, stored = run_results(losses, mask, nbytes, label, seed=run.seed)
    status = "diverged" if guard.step is not None or not np.isfinite(losses).all() else "ok"
    params_nonemb = count_params(model, non_embedding=True)
    parts = scoring_parts(task, eval_sequences, mask)
    row = {
        "run_id": run_id, "arch": run.arch, "task": run.task, "params": run.params, "seed": run.seed, "context": T,
        "arch_config": json.dumps(arch_config, sort_keys=True), "target_params": run.params,
        "achieved_params": params_nonemb, "active_params": active_params(model), "total_params": count_params(model, non_embedding=False),
        "state_size": state_size(model, T), "batch_size": cfg.batch_size, "tokens_trained": cfg.steps(T) * cfg.batch_size * T,
        "wall_seconds": round(wall, 2), "torch_threads": torch.get_num_threads(),
        "final_val_loss": float((val_losses * val_mask).sum() / max(val_mask.sum(), 1)),
        **scored,
        "status": status, "diverged_step": guard.step, "flops_per_token": fpt,
        "data_fingerprint": task.data_fingerprint(),
        "scoring_fingerprint": scoring_fingerprint(parts), "scoring_parts": json.dumps(parts, sort_keys=True),
        # the architecture's version where it has one (result.json only: migrations.arch_before_convolutions)
        "arch_version": getattr(parse_spec(run.arch, ARCHITECTURES)[0], "version", None),
    }
    try:
        log_results(trained.trainer.loggers, trained.hparams, {k: row[k] for k in ("test_loss", "final_val_loss")})
    except Exception as exc:  # a tracker's failure costs the run nothing: its files are what counts
        print(f"warning: run {run_id}: a logger failed to record the results: {type(exc).__name__}: {exc}")
    work.write_per_position(pp)
    work.write_losses(**stored)
    work.write_val_curve(curve)
    work.write_model(run.arch, run.task, arch_config, task.vocab_size, T, model.state_dict())
    if trained.history is not None:  # the last kept step is the run's end: its losses, its model.pt
        stride = window_stride(eval_sequences)  # the windows the kept steps scored
        work.write_step(cfg.steps(T), row["tokens_trained"], losses[::stride], mask[::stride], None)
        positions, steps = run_tables(work.path, label, None if nbytes is None else nbytes[0][::stride].mean(0),
                                      seed=run.seed)
        work.write_table("history", positions)
        work.write_table("history_steps", steps)
        row["history_seconds"] = round(trained.history.seconds, 2)
    if trained.resumes:  # every resume, oldest first; runs.parquet holds the list as JSON text
        row["resumed_from_step"] = trained.resumed_from
        row["resumes"] = trained.resumes
    work.keep_metrics()
    work.write_row(row)
    return row


def run_results(losses: np.ndarray, mask: np.ndarray, nbytes, label: dict[str, Any], n_boot: int = N_BOOT,
                 seed: int = 0) -> tuple[dict[str, Any], pd.DataFrame, dict[str, np.ndarray]]:
    """What a model's (N, T) test losses give, the same for a study's run and a scored model
    (``study.py score``): the fields of its row (``test_loss``, ``bits_per_byte`` where its tokens are
    text, ``last_octave_gain`` with its interval), its per-position table (:data:`POSITION_COLUMNS`: the mean over windows with a
    bootstrap interval at each position, bytes of context and of target where tokens are text)
    and the arrays of its ``losses.npz``. ``nbytes``: :func:`mnemoscope.measure.evaluate.window_bytes`
    (None: the tokens are not text)."""
    T = losses.shape[1]
    mean, lo, hi, n = bootstrap_ci(losses, mask, n_boot=n_boot, seed=seed)
    gain = octave_gain(losses, mask, T // 4, T // 2, T, n_boot=n_boot, seed=seed)
    fields = {"test_loss": float((losses * mask).sum() / max(mask.sum(), 1)),
              "bits_per_byte": bits_per_byte(losses, mask, nbytes[1])[0] if nbytes is not None else math.nan,
              "last_octave_gain": gain[0], "last_octave_gain_low": gain[1], "last_octave_gain_high": gain[2]}
    pp = pd.DataFrame({**label, "position": np.arange(T), "loss": mean, "ci_low": lo, "ci_high": hi,
                       "n_sequences": n.astype(np.int64), "context_bytes": np.nan, "target_bytes": np.nan})
    stored = {"losses": losses, "mask": mask}
    if nbytes is not None:
        pp["context_bytes"] = nbytes[0].mean(0)
        with np.errstate(invalid="ignore", divide="ignore"):  # NaN where no target counts
            pp["target_bytes"] = (nbytes[1] * mask).sum(0) / mask.sum(0)
        stored.update(bytes=nbytes[0].astype(np.int32), target_bytes=nbytes[1].astype(np.int32))
    return fields, pp, stored
