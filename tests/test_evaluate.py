import math

import numpy as np
import torch
from torch import nn

from mnemoscope.measure.evaluate import bootstrap_ci, per_position_losses
from mnemoscope.contract.task import TokenSplit


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


def test_our_bootstrap_draws_what_seaborns_drew():
    """Studies made when the per-position intervals came from seaborn's ``algorithms.bootstrap`` keep
    them: our resampling is the same draw, replicate by replicate, so the intervals are equal to the bit."""
    import seaborn as sns

    from mnemoscope.measure.evaluate import _masked_mean
    from mnemoscope.measure.bootstrap import bootstrap_indices

    rng = np.random.default_rng(5)
    for n in (7, 64, 255):
        idx = bootstrap_indices(n, 30, seed=3)
        loop = np.random.default_rng(3)
        assert np.array_equal(idx, np.stack([loop.integers(0, n, n, dtype=np.intp) for _ in range(30)]))
        losses = rng.gamma(2.0, 1.0, (n, 12)).astype(np.float32)
        mask = rng.random((n, 12)) < 0.3
        theirs = sns.algorithms.bootstrap(losses, mask.astype(np.float32), func=_masked_mean, n_boot=200, axis=0, seed=n)
        with np.errstate(all="ignore"):
            want = np.nanpercentile(theirs, [2.5, 97.5], axis=0)
        _, lo, hi, count = bootstrap_ci(losses, mask, n_boot=200, seed=n)
        keep = count > 0
        assert np.array_equal(lo[keep], want[0][keep]) and np.array_equal(hi[keep], want[1][keep])


def test_one_percentile_interval_at_any_level():
    from mnemoscope.measure.bootstrap import percentile_interval

    draws = np.random.default_rng(0).normal(size=(400, 3))
    draws[:10, 1] = np.nan  # left out
    draws[:, 2] = np.nan  # no finite draw: no interval
    lo, hi = percentile_interval(draws, level=90)
    assert np.allclose([lo[0], hi[0]], np.percentile(draws[:, 0], [5, 95]))
    assert np.allclose([lo[1], hi[1]], np.percentile(draws[10:, 1], [5, 95]))
    assert np.isnan(lo[2]) and np.isnan(hi[2])
    narrow, wide = percentile_interval(draws[:, 0], 50, axis=None), percentile_interval(draws[:, 0], 99, axis=None)
    assert wide[0] < narrow[0] < narrow[1] < wide[1]
    steps = np.array([1, 2, 4, 8, 16] * 20)
    low, high = percentile_interval(steps, 95, axis=None, discrete=True)
    assert low in steps and high in steps and (low, high) == (1, 16)
    assert np.isnan(percentile_interval(np.full((5, 0), np.nan))[0]).all()


def test_the_report_says_how_many_first_positions_its_bins_keep_single():
    """The per-position figure's quarter-octave bins keep positions 0-6 single and merge 7 with 8;
    the report's sentence takes the number from the same bins."""
    from mnemoscope.report.page import BINS_PER_OCTAVE
    from mnemoscope.measure.statistics import position_bins, single_positions

    n = single_positions(BINS_PER_OCTAVE)
    key = np.floor(np.log2(np.arange(64) + 1) * BINS_PER_OCTAVE)  # per_position_figure's bins
    assert n == 7 and len(set(key[:n])) == n and key[n] == key[n + 1]
    assert position_bins(64, BINS_PER_OCTAVE)[n] == (n, n + 2)
