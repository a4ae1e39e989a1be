"""What a study says must be true: changed data means new runs, an interrupted study says so and
leaves nothing half-made, a study's own advice works, effective context is resolved to the token
and never claims more precision than it measured, console and report agree, plugins are named by
their class, and the report says what was done with the data."""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mnemoscope.cli import main
from test_analysis import CopyBack
from test_faults import TINY, cli_process

REPO = Path(__file__).resolve().parent.parent


# -- 4. effective context to the token, honest about the grid ----------------------------------------------
def test_lag_k12_reads_12_tokens_of_effective_context(tmp_path, monkeypatch):
    """Position t sees t+1 tokens; its target repeats the token k back, which is in view with n >= k
    tokens of context: the lag k=12 at context 64 must read 12, where the powers of two gave 16 [16, 16]."""
    from mnemoscope.analysis import ablation_table, truncation_ablation
    from mnemoscope.statistics import context_resolution, format_effective_context
    from mnemoscope.tasks.probes import Lag

    monkeypatch.setenv("MNEMOSCOPE_CACHE", str(tmp_path / "cache"))
    task = Lag(context_length=64, k=12, p=0.8, vocab=16, eval_sequences=128, train_tokens=4000)
    ab = truncation_ablation(CopyBack(16, 12, 0.8), task.splits()["test"], 64, n_targets=128)
    table = ablation_table(ab, 0.01, n_boot=200)
    trunc = table[table["variant"] == "truncate"].iloc[0]
    assert (trunc["effective_context"], trunc["effective_context_low"], trunc["effective_context_high"]) == (12, 12, 12)
    tried = sorted(table[table["variant"] == "truncate"]["context"])
    assert {11, 12} <= set(tried) and set(tried) - {1, 2, 4, 8, 16, 32, 64} <= set(range(9, 16))  # bisected in (8, 16]
    assert ab.forward_tokens["truncate"] == 128 * sum(tried)  # the bisection is counted in the cost
    fit = {"effective_context": 12, "effective_context_low": 12, "effective_context_high": 12,
           **context_resolution(table)}
    assert fit["effective_context_step"] == 1 and fit["effective_context_min"] == 12
    assert format_effective_context(fit) == "12 [12, 12]"


def test_an_effective_context_on_a_coarse_grid_is_no_narrower_than_the_grid():
    """A synthetic loss table through the same functions: the loss falls within 1% from 12 tokens on,
    scored on powers of two only (as analyses made before the bisection were)."""
    from mnemoscope.analysis import Ablation, ablation_table
    from mnemoscope.statistics import context_resolution, format_effective_context

    contexts = np.array([1, 2, 4, 8, 16, 32, 64])
    rng = np.random.default_rng(0)
    losses = np.where(contexts[None, :] >= 12, 1.0, 2.77) + rng.normal(0, 0.01, (200, len(contexts)))
    ab = Ablation(contexts, {"truncate": losses.astype(np.float32)}, np.full(200, 64), {"truncate": 0})
    table = ablation_table(ab, 0.01, n_boot=200)
    fit = {k: table[k].iloc[0] for k in ("effective_context", "effective_context_low", "effective_context_high")}
    fit.update(context_resolution(table))
    assert (fit["effective_context"], fit["effective_context_step"], fit["effective_context_min"]) == (16, 8, 9)
    assert format_effective_context(fit) == "9-16 [9, 16]"  # not "16 [16, 16]": the truth is anywhere in 9-16


def test_not_meaningful_is_the_one_string_for_a_worse_full_context():
    from mnemoscope import report_history
    from mnemoscope.statistics import format_effective_context

    fit = {"arch": "x.py:Net", "task": "text", "params": 1000, "seed": 0, "context": 512, "effective_context": 4,
           "effective_context_low": 2, "effective_context_high": 256, "full_context_worse": True,
           "best_truncated_context": 16}
    text = "not meaningful: 16 tokens beat the full context"
    assert format_effective_context(fit) == text
    assert report_history.history_table(pd.DataFrame([fit]))["effective context (tokens)"].iloc[0] == text
