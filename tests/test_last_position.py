"""The last position is trained and scored like every other, for every registered architecture.

An off-by-one at the end of the window (windows of T tokens instead of T + 1, a target dropped
from the loss, a scored position shifted) would show as one position much worse than the rest,
which is what results/reference's learned-position transformer shows at position 511 (there it
is the model, not the harness: results/reference/README.md). These tests pin the alignment down
from the raw token stream, independently of the harness's own windows.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mnemoscope.measure.evaluate import per_position_losses
from mnemoscope.contract.model import build
from mnemoscope.contract.sizing import size_for
from mnemoscope.registry import ARCHITECTURES
from mnemoscope.contract.task import TokenSplit
from mnemoscope.contract.windows import TrainBatches, eval_offsets, window_offset
from mnemoscope.training.train import sequence_loss

V, T, B = 37, 24, 4


def setup(name):
    cls = ARCHITECTURES.get(name)
    torch.manual_seed(0)
    model = build(cls, V, T, size_for(cls, 5000, V, T, {}))
    tokens = np.random.default_rng(0).integers(0, V, 3000).astype(np.uint8)
    return model, TokenSplit(tokens=tokens), tokens.astype(np.int64)


@pytest.mark.parametrize("name", ARCHITECTURES.names())
def test_the_last_position_is_trained_like_every_other(name):
    """The training batch's targets are the next tokens at every position, T-1 included, and the
    training loss's gradient reaches the logits of every position with the same weight."""
    model, split, tokens = setup(name)
    batches = TrainBatches(split, T, B, n_steps=1, seed=0)
    x, y, m = batches[0]
    offsets = window_offset(split, T, np.random.default_rng([0, 0]).integers(0, batches.n_offsets, B))
    assert np.array_equal(x.numpy(), tokens[offsets[:, None] + np.arange(T)])
    assert np.array_equal(y.numpy(), tokens[offsets[:, None] + np.arange(1, T + 1)])  # position T-1 -> token T
    seen = []

    def keep(module, inputs, out):  # the logits the loss is taken from, with their gradient kept
        out.retain_grad()
        seen.append(out)

    hook = model.register_forward_hook(keep)
    try:
        model.train()
        sequence_loss(model, x, y, m).backward()
    finally:
        hook.remove()
    logits = seen[-1]
    # d(mean cross-entropy)/d(logit of the target) = (p_target - 1) / (B * T), at every position
    p = torch.softmax(logits.detach().float(), -1).gather(-1, y[..., None])[..., 0]
    got = logits.grad.gather(-1, y[..., None])[..., 0]
    assert torch.allclose(got, (p - 1) / (B * T), atol=1e-7), "some position's target does not count in training"
    assert (got[:, -1] < 0).all()


@pytest.mark.parametrize("name", ARCHITECTURES.names())
def test_the_last_position_is_scored_like_every_other(name):
    """The per-position loss at T-1 is the loss of window token T given window tokens 0..T-1,
    computed here from the raw stream; and position t's loss is what the prefix 0..t alone gives."""
    model, split, tokens = setup(name)
    model.eval()
    losses, mask = per_position_losses(model, split, T, n_sequences=6, batch_size=3)
    offsets = eval_offsets(split, T, 6)
    w = torch.from_numpy(tokens[offsets[:, None] + np.arange(T + 1)])
    with torch.no_grad():
        full = F.cross_entropy(model(w[:, :T]).transpose(1, 2), w[:, 1:], reduction="none").numpy()
        for t in (0, T // 2, T - 1):
            prefix = F.cross_entropy(model(w[:, :t + 1])[:, -1], w[:, t + 1], reduction="none").numpy()
            assert np.allclose(losses[:, t], prefix, atol=1e-4), f"position {t} is not scored from tokens 0..{t}"
    assert mask.all() and np.allclose(losses, full, atol=1e-4)
