"""The ablation's intervals resample through mnemoscope.measure.bootstrap: the same draws as the
resampling it had of its own (one stream, rng.integers per variant), so no interval moved."""
from __future__ import annotations

import numpy as np
import pandas as pd

from mnemoscope.measure.ablation import Ablation, ablation_table
from mnemoscope.measure.bootstrap import percentile_interval


def _own_resampling(ab: Ablation, n_boot: int, seed: int) -> pd.DataFrame:
    """ablation_table's intervals as computed before it used bootstrap_indices."""
    rows, rng = [], np.random.default_rng(seed)
    for variant in ab.losses:
        contexts, losses = ab.scored(variant)
        M = len(losses)
        boots = losses[rng.integers(0, M, size=(n_boot, M))].astype(np.float64).mean(1)
        lo, hi = percentile_interval(boots)
        rows += [{"variant": variant, "context": int(n), "ci_low": lo[k], "ci_high": hi[k]} for k, n in enumerate(contexts)]
    return pd.DataFrame(rows)


def test_ablation_intervals_are_the_draws_of_before():
    rng = np.random.default_rng(3)
    contexts = np.array([1, 2, 4, 8])
    M = 37  # odd, and an odd n_boot below: the draws of one stream, variant after variant
    losses = {v: (rng.gamma(2.0, 1.0, (M, 4)) + np.array([3, 2, 1.5, 1.4])).astype(np.float32)
              for v in ("truncate", "shuffle", "replace")}
    ab = Ablation(contexts, losses, np.full(M, 8), {v: 1 for v in losses})
    for n_boot in (200, 201):
        new = ablation_table(ab, n_boot=n_boot, seed=5)
        old = _own_resampling(ab, n_boot, seed=5)
        assert np.array_equal(new[["ci_low", "ci_high"]].to_numpy(), old[["ci_low", "ci_high"]].to_numpy())
