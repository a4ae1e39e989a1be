"""The truncation ablation (Khandelwal et al. 2018): how much context a model uses.

The same target tokens scored with exactly n tokens of context, fresh state, n = 1, 2, 4, ..., T
(``truncate``), or with the tokens farther than n back shuffled (``shuffle``) or replaced by
unrelated text (``replace``); :func:`ablation_table` gives each variant's mean loss with its
bootstrap interval over targets and its effective context
(:func:`mnemoscope.measure.statistics.effective_context`); :func:`context_bytes` the same contexts in
bytes of text. Used by :mod:`mnemoscope.analysis.analyze` (a run's end), :mod:`mnemoscope.analysis.growth` (its
kept steps) and ``study.py score``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..contract.model import has_features
from ..contract.windows import TokenSplit, eval_offsets, window_index
from ..errors import UserError
from ..settings import ABLATION_TOKENS, ANALYSIS, N_BOOT, TOLERANCE, VARIANTS
from .bootstrap import LEVEL, bootstrap_indices, percentile_interval
from .statistics import effective_context



@dataclass
class Ablation:
    """Loss of the same M target tokens under each variant and context budget n (nats).

    ``losses[variant]`` is (M, K) for ``contexts`` (K,); column -1 is the full context, where
    every variant is the unmodified window. ``refined[variant]``: (contexts (J,), losses (M, J)) of
    the lengths bisected between the last two of the grid (:func:`truncation_ablation`);
    :meth:`scored` merges both. ``available`` (M,) is each target's full context (T for text;
    less for a target early in a fixed-length instance). ``forward_tokens`` counts the tokens
    fed to the model per variant, bisection included: the cost.
    """

    contexts: np.ndarray
    losses: dict[str, np.ndarray]
    available: np.ndarray
    forward_tokens: dict[str, int]
    refined: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def scored(self, variant: str) -> tuple[np.ndarray, np.ndarray]:
        """Every context the variant was scored at, ascending, and its (M, K + J) losses."""
        extra_n, extra = self.refined.get(variant, (np.zeros(0, np.int64), self.losses[variant][:, :0]))
        n = np.concatenate([self.contexts, extra_n])
        order = np.argsort(n, kind="stable")
        return n[order], np.concatenate([self.losses[variant], extra], axis=1)[:, order]


def ablation_targets(split: TokenSplit, context_length: int, n_targets: int):
    """(windows (M, T+1) token ids, position (M,)) of the targets: in each evaluation window
    (``eval_offsets``: the same windows the per-position curve scores), its last counted target.
    Position p predicts window token p+1 from p+1 tokens of context."""
    T = context_length
    offsets = eval_offsets(split, T, n_targets)
    index = window_index(offsets, T)
    windows = np.asarray(split.tokens[index], dtype=np.int64)  # (M, T+1)
    counted = np.ones((len(offsets), T), bool) if split.mask is None else np.asarray(split.mask[index[:, 1:]], bool)
    has = counted.any(1)
    position = T - 1 - np.argmax(counted[:, ::-1], axis=1)  # last counted position
    return windows[has], position[has]


@torch.no_grad()
def _last_position_loss(model: nn.Module, inputs: np.ndarray, targets: np.ndarray, device, max_tokens: int,
                        counter: list[int]) -> np.ndarray:
    """Loss (nats) of predicting ``targets`` (R,) after the windows ``inputs`` (R, n), each scored
    alone from fresh state, many windows per forward pass (at most ``max_tokens`` tokens)."""
    R, n = inputs.shape
    step = max(1, max_tokens // max(n, 1))
    out = np.empty(R, np.float32)
    for i in range(0, R, step):
        x = torch.from_numpy(inputs[i:i + step]).to(device)
        y = torch.from_numpy(targets[i:i + step]).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            # only the last position's logits: (B, V), not (B, n, V), where the model exposes features/head
            logits = model.head(model.features(x)[:, -1]) if has_features(model) else model(x)[:, -1]
        out[i:i + step] = F.cross_entropy(logits.float(), y, reduction="none").cpu().numpy()
        counter[0] += x.numel()
    return out


def _variant_losses(model, windows, available, target, variant: str, n: int, rng, device, max_tokens: int,
                    counter: list[int]) -> np.ndarray:
    """(M,) losses of every target of ``windows`` under ``variant`` with n tokens of context (see
    :func:`truncation_ablation`); ``rng`` shuffles, ``counter`` counts the forward tokens."""
    M, T = windows.shape[0], windows.shape[1] - 1
    if variant == "truncate" or n == T:
        keep = np.minimum(n, available)  # a target with fewer tokens available keeps them all
        starts = available - keep
    else:  # the full context, tokens farther than n back altered
        keep = available
        starts = np.zeros(M, np.int64)
    rows = np.empty(M, np.float32)
    for length in np.unique(keep):  # one batch shape per window length
        sel = np.flatnonzero(keep == length)
        idx = starts[sel, None] + np.arange(length)[None, :]
        x = windows[sel[:, None], idx]  # (R, length)
        cut = length - np.minimum(n, length)  # tokens farther than n back: x[:, :cut]
        if variant == "shuffle" and n < T and cut > 1:
            x = x.copy()
            perm = np.argsort(rng.random((len(sel), cut)), axis=1)
            x[:, :cut] = np.take_along_axis(x[:, :cut], perm, axis=1)
        elif variant == "replace" and n < T and cut > 0:
            x = x.copy()
            donor = (sel + M // 2) % M  # the window half the split away
            x[:, :cut] = windows[donor][:, :cut]
        rows[sel] = _last_position_loss(model, x, target[sel], device, max_tokens, counter)
    return rows


def truncation_ablation(model: nn.Module, split: TokenSplit, context_length: int, n_targets: int = ANALYSIS.n_targets,
                        batch_size: int | None = None, variants=VARIANTS, contexts=None, seed: int = 0,
                        device=None, max_tokens: int = ABLATION_TOKENS, tolerance: float = TOLERANCE,
                        refine=("truncate",)) -> Ablation:
    """Khandelwal et al.'s ablation: the same targets scored with n tokens of context, n in ``contexts``
    (default 1, 2, 4, ..., T).

    * ``truncate``: the model sees exactly the last n tokens before the target, from fresh state.
    * ``shuffle``: the whole available context, its tokens farther than n back randomly permuted
      (does their order matter?).
    * ``replace``: the whole context, its tokens farther than n back replaced by the same
      positions of another evaluation window, far away in the same split (does their identity matter?).

    Every (target, n) pair is its own window: exactly what a single forward pass over a fresh
    sequence gives, for any architecture. (A banded attention mask would not do: with L layers a
    position reaches L(n-1)+1 tokens back, not n.) Windows of one length are batched, up to
    ``max_tokens`` tokens per forward (``batch_size`` sequences, if given, caps it instead).

    For the variants in ``refine``, the grid's effective context (within ``tolerance`` of the full
    context: :func:`mnemoscope.measure.statistics.effective_context`) is then bisected on whole n between
    the last two lengths tried, the same targets scored at each midpoint, down to one token: a lag
    of 12 reads 12, not the 16 of the grid (``Ablation.refined``). Cost, in forward tokens, about
    M * 2T for ``truncate`` (plus at most M * n* for the bisection, n* the effective context) and
    M * T * log2(T) for each other variant.
    """
    device = torch.device(device or next(model.parameters()).device)
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise UserError(f"unknown ablation variant(s) {', '.join(sorted(unknown))} (known: {', '.join(VARIANTS)})")
    T = context_length
    windows, position = ablation_targets(split, T, n_targets)
    M = len(windows)
    if M == 0:
        raise UserError("the test split has no counted target for the truncation ablation")
    if "replace" in variants and M < 2:
        raise UserError("the replace variant needs at least two evaluation windows")
    if contexts is None:
        contexts = [2 ** j for j in range(int(math.log2(T)) + 1)] + ([T] if T & (T - 1) else [])
    contexts = np.array(sorted({int(c) for c in contexts if 1 <= int(c) <= T} | {T}), dtype=np.int64)
    if batch_size is not None:
        max_tokens = max(1, batch_size) * T
    available = position + 1  # (M,) tokens of context the target has in its window
    target = windows[np.arange(M), available]  # (M,) token ids
    rng = np.random.default_rng(seed)

    def score(variant: str, n: int, counter: list[int]) -> np.ndarray:
        return _variant_losses(model, windows, available, target, variant, n, rng, device, max_tokens, counter)

    was_training = model.training
    model.eval()
    out, cost, refined = {}, {}, {}
    full = None
    try:
        for variant in variants:
            counter = [0]
            losses = np.empty((M, len(contexts)), np.float32)
            for k, n in enumerate(contexts):
                if n == T and full is not None:  # every variant's full context is the same window
                    losses[:, k] = full
                    continue
                losses[:, k] = score(variant, int(n), counter)
                if n == T:
                    full = losses[:, k]
            if variant in refine:
                refined[variant] = _bisect(lambda n: score(variant, n, counter), contexts, losses, tolerance)
            out[variant], cost[variant] = losses, counter[0]
    finally:
        model.train(was_training)
    return Ablation(contexts, out, available, cost, refined)


def _bisect(score, contexts: np.ndarray, losses: np.ndarray, tolerance: float):
    """Lengths between the grid's effective context and the length tried before it, bisected on
    whole n (each midpoint within ``tolerance`` of the full context or not, as
    :func:`mnemoscope.measure.statistics.effective_context` decides), with their (M, J) losses."""
    mean = losses.astype(np.float64).mean(0)
    limit = mean[-1] * (1 + tolerance)
    tail = np.flip(np.logical_and.accumulate(np.flip(mean <= limit)))
    k = int(np.argmax(tail))
    lo, hi = (int(contexts[k - 1]), int(contexts[k])) if k > 0 else (0, 0)
    tried, rows = [], []
    while hi - lo > 1:
        mid = (lo + hi) // 2
        r = score(mid)
        tried.append(mid)
        rows.append(r)
        if r.astype(np.float64).mean() <= limit:
            hi = mid
        else:
            lo = mid
    return np.array(tried, np.int64), (np.stack(rows, 1) if rows else losses[:, :0])


def ablation_table(ab: Ablation, tolerance: float = TOLERANCE, n_boot: int = N_BOOT, seed: int = 0,
                   level: float = LEVEL) -> pd.DataFrame:
    """Tidy rows: one per variant and context n, mean loss with its bootstrap interval over
    targets, the loss's excess over full context, and the variant's effective context and cost."""
    rows = []
    rng = np.random.default_rng(seed)  # one stream: each variant draws the next n_boot resamples
    for variant in ab.losses:
        contexts, losses = ab.scored(variant)
        M = len(losses)
        idx = bootstrap_indices(M, n_boot, rng)
        boots = losses[idx].astype(np.float64).mean(1)  # (B, K)
        lo, hi = percentile_interval(boots, level)
        mean = losses.astype(np.float64).mean(0)
        eff = effective_context(losses, contexts, tolerance, n_boot, seed)
        for k, n in enumerate(contexts):
            rows.append({"variant": variant, "context": int(n), "loss": mean[k], "ci_low": lo[k], "ci_high": hi[k],
                         "excess": mean[k] / mean[-1] - 1, "n_targets": M, "effective_context": eff[0],
                         "effective_context_low": eff[1], "effective_context_high": eff[2],
                         "tolerance": tolerance, "forward_tokens": ab.forward_tokens[variant]})
    return pd.DataFrame(rows)


def context_bytes(split: TokenSplit, context_length: int, n_targets: int, contexts, token_bytes) -> dict[int, float]:
    """Mean bytes of text in the n tokens before each truncation-ablation target, for each n of
    ``contexts``: the effective context in bytes (empty when the task's tokens are not text)."""
    if token_bytes is None:
        return {}
    windows, position = ablation_targets(split, context_length, n_targets)
    b = np.asarray(token_bytes, np.int64)[windows]  # (M, T+1)
    cum = np.concatenate([np.zeros((len(b), 1), np.int64), np.cumsum(b, axis=1)], axis=1)
    end = position + 1  # the target's context is window tokens [end - n, end)
    return {int(n): float((cum[np.arange(len(b)), end] - cum[np.arange(len(b)), np.maximum(end - n, 0)]).mean())
            for n in contexts}


def ablation_fields(ab: Ablation, split: TokenSplit, context_length: int, n_targets: int, token_bytes,
                    tolerance: float = TOLERANCE, n_boot: int = N_BOOT, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """A run's ablation as ``analyze`` and ``score`` both report it: the table of
    :func:`ablation_table` with each context in bytes of text (``context_bytes``: every n, not only
    the grid's, since the effective context may be a bisected length; NaN where tokens are not text),
    and the fields of its fit row: the full-context loss, the targets and forward tokens, and each
    variant's effective context with its interval (``effective_context[_VARIANT][_low|_high]``;
    the ``truncate`` one in bytes too, ``effective_context_bytes[_low|_high]``)."""
    T = context_length
    variants = list(ab.losses)
    context = ablation_table(ab, tolerance, n_boot, seed)
    nbytes = context_bytes(split, T, n_targets, range(1, T + 1), token_bytes)
    context["context_bytes"] = context["context"].map(nbytes) if nbytes else np.nan
    fields = {"full_context_loss": float(ab.losses[variants[0]][:, -1].mean()),
              "ablation_targets": int(len(ab.available)), "ablation_forward_tokens": int(sum(ab.forward_tokens.values()))}
    for variant in variants:
        first = context[context["variant"] == variant].iloc[0]
        name = "effective_context" + ("" if variant == "truncate" else f"_{variant}")
        for suffix in ("", "_low", "_high"):
            fields[name + suffix] = int(first["effective_context" + suffix])
            if variant == "truncate":
                fields[f"{name}_bytes{suffix}"] = nbytes.get(int(first["effective_context" + suffix]), math.nan)
    return context, fields
