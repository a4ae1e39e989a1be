import math

import numpy as np
import torch
from torch import nn

from mnemoscope.evaluate import bootstrap_ci, per_position_losses
from mnemoscope.task import TokenSplit


class Bigram(nn.Module):
    """logits[b, t] = table[token[b, t]]: a model whose loss we can compute by hand."""

    def __init__(self, table):
        super().__init__()
        self.table = nn.Parameter(table)

    def forward(self, x):
        return self.table[x]


def test_per_position_loss_matches_hand_computation():
    V, T = 4, 5
    table = torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 3.0], [1.0, 1.0, 1.0, 1.0]])
    tokens = np.array([0, 1, 2, 3, 0, 0, 3, 2, 1, 1, 0, 2], dtype=np.uint8)
    split = TokenSplit(tokens=tokens)
    losses, mask = per_position_losses(Bigram(table), split, T, n_sequences=2, batch_size=1)
    assert losses.shape == (2, T) and mask.all()
    offsets = [0, len(tokens) - T - 1]  # evenly spread: first and last window
    for i, o in enumerate(offsets):
        for t in range(T):
            prev, nxt = tokens[o + t], tokens[o + t + 1]
            row = table[prev].tolist()
            expected = -(row[nxt] - math.log(sum(math.exp(v) for v in row)))
            assert abs(losses[i, t] - expected) < 1e-5


def test_bootstrap_over_sequences_with_mask():
    rng = np.random.default_rng(0)
    losses = rng.normal(2.0, 0.5, size=(200, 8)).astype(np.float32)
    mask = np.ones_like(losses, dtype=bool)
    mask[:, 0] = False  # position 0 never counts
    mask[:100, 3] = False
    mean, lo, hi, n = bootstrap_ci(losses, mask, n_boot=500)
    assert np.isnan(mean[0]) and n[0] == 0 and n[3] == 100 and n[1] == 200
    assert abs(mean[3] - losses[100:, 3].mean()) < 1e-5
    assert (lo[1:] < mean[1:]).all() and (mean[1:] < hi[1:]).all()
    # the interval has the width of a mean of n normal samples: ~ 2 * 1.96 * 0.5 / sqrt(n)
    width = hi[1] - lo[1]
    assert 0.6 * 3.92 * 0.5 / math.sqrt(200) < width < 1.4 * 3.92 * 0.5 / math.sqrt(200)


def test_bootstrap_of_a_sparse_mask_ignores_resamples_without_a_target():
    # answer tokens of a math or probe task: a position counted in only 3 of 200 sequences is often
    # missing from a resample; such a replicate has no mean there (it must not count as a loss of 0)
    rng = np.random.default_rng(0)
    losses = rng.normal(2.0, 0.1, size=(200, 4)).astype(np.float32)
    mask = np.zeros_like(losses, dtype=bool)
    mask[:, 1] = True
    mask[:3, 2] = True
    mean, lo, hi, n = bootstrap_ci(losses, mask, n_boot=500)
    assert n[2] == 3 and np.isnan(mean[0]) and np.isnan(lo[0])
    assert 1.5 < lo[2] <= mean[2] <= hi[2] < 2.5
