"""A split's token stream and the windows cut from it: every training batch and every scored
window of a study is the one gather here (:func:`window_tokens`, :func:`window_batch`), at offsets
spread evenly over a split (:func:`eval_offsets`) or drawn per step (:class:`TrainBatches`); with
document ``spans``, no window crosses a document's end."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import UserError


@dataclass
class TokenSplit:
    """One split as a flat token stream.

    ``mask[i]`` is True where token i counts as a target (None: every token counts).
    ``starts`` lists the only offsets a window may start at (None: anywhere), for tasks whose
    sequences have a fixed length (an image, a clip, a probe instance). ``spans`` (D, 2), when
    given, holds each document's [start, end) in ``tokens``: every window then lies inside one
    document (None: windows may cross from one document into the next).
    """

    tokens: np.ndarray
    mask: np.ndarray | None = None
    starts: np.ndarray | None = None
    documents: list[str] = field(default_factory=list)
    spans: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.tokens)


class TrainBatches(torch.utils.data.Dataset):
    """Item i is the whole training batch of step i: windows of T+1 tokens at offsets drawn
    from a generator seeded by (seed, i), so the data order is fixed and a resumed run sees
    the same batches. Gathering is one numpy fancy-index; no per-step tokenization."""

    def __init__(self, split: TokenSplit, context_length: int, batch_size: int, n_steps: int, seed: int):
        self.split, self.T, self.B, self.n_steps, self.seed = split, context_length, batch_size, n_steps, seed
        self.n_offsets = len(split.starts) if split.starts is not None else n_windows(split, context_length)
        if self.n_offsets <= 0:
            raise UserError(f"training split ({len(split.tokens)} tokens) is shorter than one sequence of {context_length + 1}")

    def __len__(self) -> int:
        return self.n_steps

    def __getitem__(self, step: int):
        rng = np.random.default_rng([self.seed, step])
        idx = rng.integers(0, self.n_offsets, size=self.B)
        offsets = self.split.starts[idx] if self.split.starts is not None else window_offset(self.split, self.T, idx)
        return window_batch(self.split, np.asarray(offsets), self.T)


def window_index(offsets: np.ndarray, T: int) -> np.ndarray:
    """(N, T+1) positions in a split's token stream of the windows of T+1 tokens at ``offsets`` (N,)."""
    return np.asarray(offsets)[:, None] + np.arange(T + 1)[None, :]


def window_tokens(split: TokenSplit, offsets: np.ndarray, T: int) -> np.ndarray:
    """(N, T+1) tokens of the windows at ``offsets``: every window a study trains on or scores is this gather."""
    return np.asarray(split.tokens)[window_index(offsets, T)]


def window_batch(split: TokenSplit, offsets: np.ndarray, T: int):
    """(x, y, mask): inputs (B, T), next-token targets (B, T), and which targets count (B, T)."""
    index = window_index(offsets, T)
    w = torch.from_numpy(np.asarray(split.tokens[index], dtype=np.int64))
    if split.mask is None:
        m = torch.ones(len(offsets), T, dtype=torch.bool)
    else:
        m = torch.from_numpy(np.asarray(split.mask[index[:, 1:]], dtype=bool))
    return w[:, :-1], w[:, 1:], m


def scored_windows(task, n_rows: int, n_sequences: int) -> np.ndarray:
    """(N, T+1) tokens of the test windows a study scored (the same ``eval_offsets``), checked
    against the ``n_rows`` sequences of a run's stored losses."""
    split, T = task.splits()["test"], task.context_length
    offsets = eval_offsets(split, T, n_sequences)
    if len(offsets) != n_rows:
        raise UserError(f"stored losses hold {n_rows} sequences but the task's test split gives {len(offsets)}; "
                        "the task's data changed since the run")
    return window_tokens(split, offsets, T)


def eval_offsets(split: TokenSplit, T: int, n: int) -> np.ndarray:
    """Up to n window offsets spread evenly over the split (deterministic)."""
    if split.starts is not None:
        starts = np.asarray(split.starts)
        starts = starts[starts + T + 1 <= len(split.tokens)]
        if len(starts) <= n:
            return starts
        return starts[np.linspace(0, len(starts) - 1, n).round().astype(np.int64)]
    total = n_windows(split, T)
    n = min(n, total)
    return window_offset(split, T, np.linspace(0, total - 1, n).round().astype(np.int64))


def n_windows(split: TokenSplit, T: int) -> int:
    """How many windows of T+1 tokens the split holds (each inside one document with ``spans``)."""
    if split.spans is None:
        return max(0, len(split.tokens) - T)
    spans = np.asarray(split.spans, dtype=np.int64).reshape(-1, 2)
    return int(np.maximum(spans[:, 1] - spans[:, 0] - T, 0).sum())


def window_offset(split: TokenSplit, T: int, index: np.ndarray) -> np.ndarray:
    """Offsets of windows number ``index`` (0 <= index < n_windows): the index itself, or, with
    ``spans``, counted document by document so that no window crosses a document's end."""
    index = np.asarray(index, dtype=np.int64)
    if split.spans is None:
        return index
    spans = np.asarray(split.spans, dtype=np.int64).reshape(-1, 2)
    counts = np.maximum(spans[:, 1] - spans[:, 0] - T, 0)
    ends = np.cumsum(counts)
    doc = np.searchsorted(ends, index, side="right")
    return spans[doc, 0] + index - (ends[doc] - counts[doc])
