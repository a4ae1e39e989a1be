"""Per-position evaluation: the loss at every position of held-out sequences, per sequence.

Losses are kept per sequence (an (N, T) array), so confidence intervals bootstrap over
sequences, never over positions (positions within one sequence are correlated).
"""
from __future__ import annotations

import hashlib
import json
import math
import warnings

import numpy as np
import torch
from torch import nn

from ..contract.model import token_losses
from ..contract.task import Task
from ..contract.windows import TokenSplit, eval_offsets, window_batch, window_tokens
from ..settings import EVAL_BATCH, N_BOOT, STUDY
from .bootstrap import LEVEL, bootstrap_indices, cluster_ci, percentile_interval


@torch.no_grad()
def per_position_losses(model: nn.Module, split: TokenSplit, context_length: int,
                        n_sequences: int = STUDY.eval_sequences, batch_size: int = EVAL_BATCH,
                        device: torch.device | str | None = None, offsets: np.ndarray | None = None):
    """Loss in nats at every position of up to ``n_sequences`` held-out windows (or of the windows
    starting at ``offsets``, when given).

    Returns ``(losses, mask)``, both (N, T): ``losses[i, t]`` is -log p(token t+1 | tokens 0..t)
    of sequence i, computed in fp32 from one forward pass per batch; ``mask`` marks the targets
    that count. Position t therefore has t+1 tokens of context.
    """
    device = torch.device(device or next(model.parameters()).device)
    was_training = model.training
    model.eval()
    offsets = eval_offsets(split, context_length, n_sequences) if offsets is None else np.asarray(offsets)
    # every window gathered at once and moved in one copy; losses stay on the device until the
    # end, so a GPU never waits on the host between batches (one sync, not one per batch)
    x_all, y_all, mask = window_batch(split, offsets, context_length)  # (N, T) each
    x_all, y_all = x_all.to(device, non_blocking=True), y_all.to(device, non_blocking=True)
    losses = []
    for i in range(0, len(offsets), batch_size):
        x, y = x_all[i:i + batch_size], y_all[i:i + batch_size]  # (B, T)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            # (B*T, V) rows, the class dimension last and contiguous, as the kernel is fastest; in
            # chunks of positions at a large vocabulary, so (B, T, V) logits are never held at once
            losses.append(token_losses(model, x, y))  # (B, T)
    model.train(was_training)
    return torch.cat(losses).cpu().numpy().astype(np.float32), mask.numpy()


def window_bytes(split: TokenSplit, context_length: int, n_sequences: int, token_bytes: np.ndarray | None):
    """Bytes of text in the same windows ``per_position_losses`` scores: ``(context, target)``, both
    (N, T) int64, ``context[i, t]`` the bytes of tokens 0..t of window i (position t's context),
    ``target[i, t]`` the bytes of token t+1 (its target). None when ``token_bytes`` is None (the
    task's tokens are not text)."""
    if token_bytes is None:
        return None
    window = window_tokens(split, eval_offsets(split, context_length, n_sequences), context_length)
    b = np.asarray(token_bytes, dtype=np.int64)[window]
    return np.cumsum(b[:, :-1], axis=1), b[:, 1:]


def bits_per_byte(losses: np.ndarray, mask: np.ndarray, target_bytes: np.ndarray, n_boot: int = 0,
                  seed: int = 0, level: float = LEVEL) -> tuple[float, float, float]:
    """Bits per byte of text of (N, T) losses in nats: the counted targets' summed loss over ln 2,
    over the bytes of those targets (``target_bytes``, (N, T)), comparable across tokenizers; with
    ``n_boot`` a bootstrap interval over windows (:func:`mnemoscope.measure.bootstrap.cluster_ci`,
    windows resampled whole), else NaN. Returns (bits per byte, low, high); NaN where no byte counts."""
    m = np.asarray(mask, bool) & (np.asarray(target_bytes) > 0)
    nbytes = np.asarray(target_bytes, np.float64)[m]
    if nbytes.sum() == 0:
        return (math.nan,) * 3
    bits = np.asarray(losses, np.float64)[m] / math.log(2)
    point = float(bits.sum() / nbytes.sum())
    if n_boot <= 0:
        return point, math.nan, math.nan
    _, lo, hi = cluster_ci(bits / nbytes, nbytes, np.nonzero(m)[0], seed, n_boot, level)
    return point, lo, hi


def _masked_mean(losses, mask, axis=0):
    """Mean of the counted entries; NaN where nothing was counted (a resample of a sparse mask
    may hold no target at a position: that replicate says nothing there, it is not a loss of 0)."""
    count = mask.sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, (losses * mask).sum(axis=axis) / np.maximum(count, 1), np.nan)


def bootstrap_ci(losses: np.ndarray, mask: np.ndarray | None = None, n_boot: int = N_BOOT, level: float = LEVEL,
                 seed: int = 0):
    """Mean over sequences at each position with a bootstrap interval over **sequences**.

    Rows of losses and mask are resampled together (:func:`mnemoscope.measure.statistics.bootstrap_indices`),
    one replicate at a time so that (n_boot, N, T) is never held. Returns (mean, low, high, n), each
    of length T; positions with no counted target are NaN.
    """
    losses = np.asarray(losses)
    if mask is None:
        mask = np.ones_like(losses, dtype=bool)
    m = mask.astype(np.float32)
    boots = np.array([_masked_mean(losses[i], m[i]) for i in bootstrap_indices(len(losses), n_boot, seed)])  # (n_boot, T)
    n = mask.sum(axis=0)
    mean = _masked_mean(losses, m)
    empty = n == 0
    with warnings.catch_warnings():  # all-NaN columns are the empty positions, set to NaN below
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, hi = percentile_interval(boots, level)
    for a in (mean, lo, hi):
        a[empty] = np.nan
    return mean, lo, hi, n


@torch.no_grad()
def greedy_hits(model: torch.nn.Module, split: TokenSplit, context_length: int,
                n_sequences: int = STUDY.eval_sequences, batch_size: int = EVAL_BATCH):
    """One teacher-forced pass over the evaluation windows (the same ``eval_offsets`` as the study).

    Returns ``(offsets, hits, losses, mask, targets)``, the last four (N, T): ``hits[i, t]`` is True
    where the most likely next token equals the true one, ``losses`` in nats.
    """
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    offsets = eval_offsets(split, context_length, n_sequences)
    hits, losses, masks, targets = [], [], [], []
    for i in range(0, len(offsets), batch_size):
        x, y, m = window_batch(split, offsets[i:i + batch_size], context_length)
        logits = model(x.to(device)).float()  # (B, T, V)
        losses.append(torch.nn.functional.cross_entropy(logits.transpose(1, 2), y.to(device), reduction="none").cpu())
        hits.append((logits.argmax(-1) == y.to(device)).cpu())
        masks.append(m)
        targets.append(y)
    model.train(was)
    cat = lambda xs: torch.cat(xs).numpy()
    return offsets, cat(hits), cat(losses).astype(np.float32), cat(masks), cat(targets)


# -- what a run was scored on ------------------------------------------------------------------
#: the parts of a scoring fingerprint, as a refusal to pair two runs names them
SCORING_PARTS = {"task": "task data", "tokenizer": "tokenizer", "context": "context length",
                 "windows": "test windows", "mask": "target mask"}


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(json.dumps([str(a.dtype), list(a.shape)]).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def scoring_parts(task: Task, n_sequences: int, mask: np.ndarray) -> dict[str, str]:
    """What a run's per-sequence losses were scored on, part by part: the task's data fingerprint
    (:meth:`Task.data_fingerprint`, the content of its prepared data: the same data pair wherever
    their files lie), its tokenizer (a task's ``tokenizer_fingerprint``, attribute or method; "none" without one),
    the context length, a hash of the test windows (their offsets and tokens, the same
    ``eval_offsets`` every run uses) and a hash of the target mask (``mask``, (N, T), as stored in
    ``losses.npz``). Two runs with equal parts were scored on the same targets: their losses pair."""
    split, T = task.splits()["test"], task.context_length
    offsets = eval_offsets(split, T, n_sequences)
    windows = window_tokens(split, offsets, T).astype(np.int64)
    tokenizer = getattr(task, "tokenizer_fingerprint", None)
    tokenizer = tokenizer() if callable(tokenizer) else tokenizer
    return {"task": str(task.data_fingerprint()), "tokenizer": str(tokenizer or "none"), "context": str(T),
            "windows": _digest(offsets.astype(np.int64), windows), "mask": _digest(np.asarray(mask, bool))}


def scoring_fingerprint(parts: dict[str, str]) -> str:
    """One hash of :func:`scoring_parts`."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def scoring_difference(a: dict[str, str], b: dict[str, str]) -> str:
    """Which parts differ, in words: 'context length (32 vs 64), test windows, target mask'."""
    out = []
    for key, words in SCORING_PARTS.items():
        if a.get(key) != b.get(key):
            out.append(f"{words} ({a.get(key)} vs {b.get(key)})" if key in ("context", "tokenizer") else words)
    return ", ".join(out)
