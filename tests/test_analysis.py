"""How much history is used: power-law fits, octave gains, truncation ablation, extrapolation."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mnemoscope.settings import ANALYSIS
from mnemoscope.architectures.cnn import CNN
from mnemoscope.architectures.lstm import LSTM
from mnemoscope.architectures.transformer import Transformer
from mnemoscope.analysis import analyze as analysis
from mnemoscope.report import context_use as report_history
from mnemoscope.measure import statistics
from mnemoscope.analysis.analyze import extrapolation, truncation_ablation
from mnemoscope.measure.statistics import bootstrap_fit, effective_context, fit_power_law, octave_gain, octave_gains
from mnemoscope.contract.task import TokenSplit
from mnemoscope.tasks.probes import Lag, lag_entropy


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: torch's second thread only spins (20-30x the CPU time on a busy 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- power-law fits -------------------------------------------------------------------------------------
def synthetic_losses(T, N, L_inf, A, alpha, rel_std, seed):
    """(N, T) per-token losses around L_inf + A t^-alpha: gamma noise with std rel_std x the mean
    (per-token losses are skewed and never negative)."""
    rng = np.random.default_rng(seed)
    curve = L_inf + A * np.arange(1, T + 1) ** -alpha
    shape = 1 / rel_std ** 2
    return rng.gamma(shape, curve[None, :] / shape, size=(N, T))


@pytest.mark.parametrize("L_inf,A,alpha", [(4.0, 3.2, 0.47), (2.3, 5.4, 0.62), (1.5, 2.0, 0.5)])
def test_fit_recovers_known_parameters(L_inf, A, alpha):
    # Kaplan's smallest and largest per-token fits (nats, t up to 1024) and a byte-level-like curve,
    # as a mean over 256 sequences whose per-token losses spread by a quarter of their mean
    losses = synthetic_losses(1024, 256, L_inf, A, alpha, 0.25, seed=1)
    fit = bootstrap_fit(losses, None, n_boot=30, seed=0)
    assert fit["fit_status"] == "ok" and fit["converged"]
    assert abs(fit["alpha"] - alpha) < 0.03
    assert abs(fit["L_inf"] - L_inf) < 0.05 * L_inf
    assert fit["alpha_low"] < fit["alpha"] < fit["alpha_high"]
    assert fit["n_points"] == 1024
    assert 0.5 < fit["chi2_reduced"] < 2  # residuals the size of the noise: the form fits


def test_fit_interval_is_honest_at_realistic_noise():
    # per-token losses spread about as much as their mean (byte-level text): 256 sequences of 256
    # positions pin alpha only to about +-0.1, and the interval must say so and cover the truth
    losses = synthetic_losses(256, 256, 1.5, 2.0, 0.5, 1.0, seed=3)
    fit = bootstrap_fit(losses, None, n_boot=60, seed=0)
    assert fit["alpha_low"] < 0.5 < fit["alpha_high"]
    assert fit["alpha_high"] - fit["alpha_low"] > 0.1


def test_fit_refuses_three_points():
    t = np.array([1.0, 2.0, 3.0])
    fit = fit_power_law(t, 2 + t ** -0.5)
    assert fit.status == "too few points" and fit.n_points == 3 and math.isnan(fit.alpha)
    boot = bootstrap_fit(np.tile(2 + t ** -0.5, (8, 1)), None, n_boot=10)
    assert boot["fit_status"] == "too few points" and math.isnan(boot["alpha_low"])


def test_fit_drops_the_standard_errors_of_points_it_leaves_out():
    # a sparse-mask task (answers only) leaves positions with no loss: t, y and their errors must
    # stay aligned when those are dropped
    t = np.arange(1, 65, dtype=float)
    y = 1.5 + 2.0 * t ** -0.5
    y[::7] = np.nan
    stderr = np.full_like(t, 0.01)
    stderr[3] = np.nan
    fit = fit_power_law(t, y, stderr)
    assert fit.n_points == 64 - len(range(0, 64, 7)) - 1
    assert fit.status == "ok" and abs(fit.alpha - 0.5) < 0.01


def test_fit_flags_a_curve_of_the_wrong_form():
    # an image-like curve: loss set by where the pixel sits in its row, not by how much came before
    T, N = 128, 256
    rng = np.random.default_rng(0)
    curve = 2.0 + 0.6 * np.sin(2 * np.pi * np.arange(T) / 16) ** 2
    losses = rng.gamma(4.0, curve[None, :] / 4.0, size=(N, T))
    fit = bootstrap_fit(losses, None, n_boot=50)
    assert fit["fit_status"] == "wrong form" and fit["chi2_reduced"] > 4
    assert math.isnan(fit["alpha_low"])  # no interval on a law that does not hold


# -- context gain per octave ----------------------------------------------------------------------------
def test_octave_gains_find_where_the_loss_stops_falling():
    T, N = 64, 200
    t = np.arange(1, T + 1)
    curve = np.where(t <= 8, 3.0 - 0.25 * t, 1.0)  # falls through position 7, flat after
    rng = np.random.default_rng(0)
    offset = rng.normal(0, 0.5, size=(N, 1))  # sequences differ in difficulty
    mask = np.ones((N, T), bool)
    # without per-position noise the flat octaves gain exactly 0 in every replicate: never significant
    g = octave_gains(curve[None, :] + offset, mask, n_boot=300)
    assert list(zip(g["octave_start"], g["octave_end"])) == [(1, 2), (2, 4), (4, 8), (8, 16), (16, 32), (32, 64)]
    assert list(g["significant"]) == [True, True, True, True, False, False]
    assert statistics.last_significant_octave(g) == (8, 16)  # [4, 8) -> [8, 16) still falls; nothing after
    assert g["gain"].iloc[3] == pytest.approx(np.mean(curve[4:8]) - 1.0)
    # with noise at every position: the falling octaves stay significant, the flat ones gain ~0
    losses = curve[None, :] + offset + rng.normal(0, 0.3, size=(N, T))
    g = octave_gains(losses, mask, n_boot=300)
    assert g["significant"].iloc[:4].all()
    assert (g["gain"].iloc[4:].abs() < 0.03).all()
    # the runs table's last-octave gain is the last row of the same computation
    last = octave_gain(losses, mask, T // 4, T // 2, T, n_boot=300)
    assert last[0] == pytest.approx(g["gain"].iloc[-1])
    assert last[1] < last[0] < last[2]


# -- truncation ablation --------------------------------------------------------------------------------
def random_split(n_tokens, vocab, seed=0):
    return TokenSplit(tokens=np.random.default_rng(seed).integers(0, vocab, n_tokens).astype(np.int64))


@torch.no_grad()
def naive_truncation(model, windows, position, contexts):
    """Reference: every target, every n, one sequence at a time from fresh state."""
    out = np.zeros((len(windows), len(contexts)))
    for i, (w, p) in enumerate(zip(windows, position)):
        for k, n in enumerate(contexts):
            n = min(n, p + 1)
            x = torch.tensor(w[p + 1 - n:p + 1])[None]
            out[i, k] = F.cross_entropy(model(x)[0, -1], torch.tensor(w[p + 1])).item()
    return out


@pytest.mark.parametrize("cls,config", [(Transformer, {"d_model": 16, "n_layer": 2}),
                                        (Transformer, {"d_model": 16, "n_layer": 2, "pos": "rotary"}),
                                        (LSTM, {"d_model": 16, "n_layer": 1}),
                                        (CNN, {"channels": 16})])
def test_truncation_ablation_equals_naive_reference(cls, config):
    torch.manual_seed(0)
    V, T = 11, 16
    model = cls(vocab_size=V, context_length=T, **config).eval()
    split = random_split(400, V)
    ab = truncation_ablation(model, split, T, n_targets=7, max_tokens=40)  # several batches per length
    windows, position = analysis.ablation_targets(split, T, 7)
    ref = naive_truncation(model, windows, position, ab.contexts)
    assert list(ab.contexts) == [1, 2, 4, 8, 16]
    np.testing.assert_allclose(ab.losses["truncate"], ref, rtol=1e-5, atol=1e-5)
    for variant in ("shuffle", "replace"):  # full context: the same unmodified window
        np.testing.assert_array_equal(ab.losses[variant][:, -1], ab.losses["truncate"][:, -1])
    assert ab.forward_tokens["truncate"] == 7 * sum(ab.contexts)
    assert ab.forward_tokens["shuffle"] == 7 * T * (len(ab.contexts) - 1)


def test_replace_variant_uses_the_other_windows_text():
    torch.manual_seed(0)
    V, T, M = 11, 16, 6
    model = LSTM(vocab_size=V, context_length=T, d_model=16, n_layer=1).eval()
    split = random_split(400, V, seed=1)
    ab = truncation_ablation(model, split, T, n_targets=M, variants=("replace",), contexts=[4, T])
    windows, _ = analysis.ablation_targets(split, T, M)
    with torch.no_grad():
        for i in range(M):
            x = windows[i, :T].copy()
            x[:T - 4] = windows[(i + M // 2) % M, :T - 4]  # farther than 4 back: the donor's tokens
            ref = F.cross_entropy(model(torch.tensor(x)[None])[0, -1], torch.tensor(windows[i, T])).item()
            assert ab.losses["replace"][i, 0] == pytest.approx(ref, abs=1e-5)


class CopyBack(nn.Module):
    """Knows the lag task exactly: predicts token t+1 as the token k back with probability p (the
    optimal predictor), uniform when that token is not in view."""

    def __init__(self, vocab, k, p):
        super().__init__()
        self.vocab, self.k, self.p = vocab, k, p
        self.dummy = nn.Parameter(torch.zeros(()))  # gives the module a device

    def forward(self, tokens):  # (B, T) -> (B, T, V)
        B, T = tokens.shape
        V, k = self.vocab, self.k
        logits = torch.zeros(B, T, V)
        hit, miss = math.log(self.p + (1 - self.p) / V), math.log((1 - self.p) / V)
        if T >= k:
            src = tokens[:, :T - k + 1]  # position t reads token t+1-k
            logits[:, k - 1:] = miss
            logits[:, k - 1:].scatter_(2, src[..., None], hit)
        return logits + self.dummy


@pytest.fixture
def lag_task(tmp_path, monkeypatch):
    monkeypatch.setenv("MNEMOSCOPE_CACHE", str(tmp_path / "cache"))
    return Lag(context_length=32, k=8, p=0.8, vocab=16, eval_sequences=128, train_tokens=40_000)


def test_effective_context_recovers_the_lag(lag_task):
    T, k = 32, 8
    split = lag_task.splits()["test"]
    ab = truncation_ablation(CopyBack(16, k, 0.8), split, T, n_targets=128, variants=("truncate",))
    eff = effective_context(ab.losses["truncate"], ab.contexts, tolerance=0.01, n_boot=200)
    assert eff == (k, k, k)
    mean = ab.losses["truncate"].mean(0)
    assert mean[list(ab.contexts).index(k // 2)] == pytest.approx(math.log(16), abs=1e-4)  # k not in view: chance
    assert mean[-1] == pytest.approx(lag_entropy(16, 0.8), abs=0.15)  # in view: near the floor


def test_cnn_whose_receptive_field_is_below_the_lag_is_unable(lag_task):
    T, k = 32, 8
    torch.manual_seed(0)
    cnn = CNN(vocab_size=16, context_length=T, channels=16, n_layer=2)  # receptive field 4 < k
    assert cnn.receptive_field == 4
    train = lag_task.splits()["train"]
    windows = torch.from_numpy(np.asarray(train.tokens, np.int64).reshape(-1, T + 1))
    opt = torch.optim.Adam(cnn.parameters(), lr=3e-3)
    for step in range(40):  # it learns all it can: the unigram, nothing from 8 back
        batch = windows[torch.randint(0, len(windows), (32,))]
        loss = F.cross_entropy(cnn(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    cnn.eval()
    ab = truncation_ablation(cnn, lag_task.splits()["test"], T, n_targets=128, variants=("truncate",))
    losses = ab.losses["truncate"]
    eff, _, high = effective_context(losses, ab.contexts, tolerance=0.01, n_boot=200)
    assert high <= cnn.receptive_field < k
    # n >= the receptive field: the very same prediction; and never better than chance
    rf_col = list(ab.contexts).index(4)
    np.testing.assert_allclose(losses[:, rf_col:], np.repeat(losses[:, -1:], losses.shape[1] - rf_col, 1), atol=1e-5)
    assert losses[:, -1].mean() > math.log(16) - 0.05


# -- extrapolation ----------------------------------------------------------------------------------------
def test_extrapolation_only_for_models_that_accept_longer_sequences():
    V, T = 11, 8
    split = random_split(400, V)
    torch.manual_seed(0)
    lstm = LSTM(vocab_size=V, context_length=T, d_model=8, n_layer=1)
    ext = extrapolation(lstm, split, T, factors=(2, 4), n_sequences=8)
    assert set(ext["factor"]) == {2, 4}
    assert (ext[ext["factor"] == 4]["position"] == np.arange(4 * T)).all()
    assert extrapolation(Transformer(vocab_size=V, context_length=T, d_model=16, n_layer=1, pos="learned"), split, T).empty
    rotary = Transformer(vocab_size=V, context_length=T, d_model=16, n_layer=1, pos="rotary")
    assert rotary.extrapolates and len(extrapolation(rotary, split, T, factors=(2,), n_sequences=4)) == 2 * T


# -- paired gaps ----------------------------------------------------------------------------------------
def test_paired_gap_cancels_shared_noise_and_finds_a_growing_gap():
    # sequences differ a lot in difficulty (shared by both models); the model falls behind the
    # baseline by 0.1 nats per band of context: unpaired intervals would drown it, paired ones do not
    rng = np.random.default_rng(0)
    N, T = 128, 64
    difficulty = rng.normal(0, 1.0, size=(N, 1))
    base = 2.0 + difficulty + rng.normal(0, 0.05, size=(N, T))
    band_of = np.searchsorted([8, 32], np.arange(T), side="right")  # 0, 1, 2 for [0,8), [8,32), [32,64)
    model = base + 0.1 * band_of + rng.normal(0, 0.05, size=(N, T))
    g = statistics.paired_gap(model, base, None, n_boot=400).set_index("band")
    assert list(g.index) == ["0-7", "8-31", "32-63", "all", "growth"]
    for band, truth in (("0-7", 0.0), ("8-31", 0.1), ("32-63", 0.2), ("growth", 0.2)):
        assert g.loc[band, "gap_low"] < truth + 0.01 and truth - 0.01 < g.loc[band, "gap_high"], band
        assert g.loc[band, "gap_high"] - g.loc[band, "gap_low"] < 0.03  # paired: the difficulty cancels
    assert not g.loc["0-7", "significant"] and g.loc["growth", "significant"]
    mask = np.ones((N, T), bool)
    mask[:, :8] = False  # answers only: nothing counted in the first band; growth from the next one
    g = statistics.paired_gap(model, base, mask, n_boot=200).set_index("band")
    assert np.isnan(g.loc["0-7", "gap"]) and abs(g.loc["growth", "gap"] - 0.1) < 0.01
    with pytest.raises(statistics.UserError, match="same test sequences"):
        statistics.paired_gap(model[:, :32], base, None)


# -- a whole study ------------------------------------------------------------------------------------------
def test_analyze_command_on_a_tiny_study(text_dir, tmp_path, capsys):
    from mnemoscope.cli import main

    out = tmp_path / "study"
    assert main(["--arch", "lstm", "cnn", "--task", f"text:{text_dir}", "--out", str(out), "--params", "8k",
                 "--tokens", "3k", "--context", "32", "--eval-sequences", "8", "--batch-size", "8", "--no-progress"]) == 0
    assert (out / "fits.csv").exists()  # the study analyses itself at the end
    for name in ("fits.csv", "context.parquet", "extrapolation.parquet", "report.html"):
        (out / name).unlink()
    for run in (out / "runs").iterdir():  # `analyze` recomputes from the models, not from what is kept
        (run / "analysis" / "fit.json").write_text("{}")
    assert main(["analyze", str(out), "--targets", "6", "--variants", "shuffle", "--recompute"]) == 0
    fits = pd.read_csv(out / "fits.csv")
    context = pd.read_parquet(out / "context.parquet")
    assert sorted(fits["arch"]) == ["cnn", "lstm"] and (fits["n_points"] == 32).all()
    assert set(context["variant"]) == {"truncate", "shuffle"} and set(context["context"]) == {1, 2, 4, 8, 16, 32}
    assert (context["n_targets"] == 6).all() and len(context) == 2 * 2 * 6
    gaps = pd.read_csv(out / "gaps.csv")  # cnn against the study's first architecture, same sequences
    assert set(gaps["arch"]) == {"cnn"} and set(gaps["baseline"]) == {"lstm"}
    assert list(gaps["band"]) == ["0-7", "8-31", "all", "growth"]
    assert (gaps["gap_low"] <= gaps["gap"]).all() and (gaps["gap"] <= gaps["gap_high"]).all()
    assert main(["analyze", str(out), "--baseline", "cnn"]) == 0  # stored analyses reused, only the pairing changes
    assert set(pd.read_csv(out / "gaps.csv")["arch"]) == {"lstm"}
    assert fits["effective_context"].between(1, 32).all()
    ext = pd.read_parquet(out / "extrapolation.parquet")
    assert set(ext["factor"]) == {2, 4} and len(ext) == 2 * (2 * 32 + 4 * 32)
    html = (out / "report.html").read_text()
    assert "How much history does each architecture use?" in html and "effective context (tokens)" in html
    assert "Gap to cnn, paired, by position" in html
    capsys.readouterr()
    assert main(["analyze", str(out), "--baseline", "gru"]) == 2  # not in the study: one line
    assert capsys.readouterr().err.count("\n") == 1
    assert main(["analyze", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    # a committed study keeps its runs' analysis, not their weights: the same settings reuse it, others say how
    for run in (out / "runs").iterdir():
        (run / "model.pt").unlink()
    assert main(["analyze", str(out), "--variants", "shuffle"]) == 0
    said, default = capsys.readouterr().out, " ".join(ANALYSIS.variants)
    assert said.count(f"its weights are not kept and its stored analysis was made with --variants {default}:") == 2
    assert f"`study.py analyze {out} --variants {default}` reuses it" in said
    assert main(["analyze", str(out)]) == 0
    assert sorted(pd.read_csv(out / "fits.csv")["arch"]) == ["cnn", "lstm"]
    # stored before a setting existed: read as its default, still reused (the weights are gone)
    for fit in (out / "runs").glob("*/analysis/fit.json"):
        stored = json.loads(fit.read_text())
        del stored["settings"]["extrapolation_sequences"]
        fit.write_text(json.dumps(stored))
    (out / "fits.csv").unlink()
    assert main(["analyze", str(out)]) == 0
    assert sorted(pd.read_csv(out / "fits.csv")["arch"]) == ["cnn", "lstm"]


def test_effective_context_is_not_reported_when_truncation_beats_the_full_context():
    # learned positions past the length they trained well at: the full context scores worst, so
    # every n would count as "within 1%" of it
    rows = [{"variant": "truncate", "context": n, "loss": v} for n, v in [(1, 2.8), (64, 1.95), (256, 1.98), (512, 2.36)]]
    check = statistics.truncation_check(pd.DataFrame(rows), 0.01)
    assert check == {"full_context_worse": True, "best_truncated_context": 64}
    fit = {"arch": "transformer:pos=learned", "task": "text", "params": 1_000_000, "seed": 0, "context": 512,
           "effective_context": 4, "effective_context_low": 2, "effective_context_high": 4, **check}
    cell = report_history.history_table(pd.DataFrame([fit]))["effective context (tokens)"].iloc[0]
    assert cell == "not meaningful: 64 tokens beat the full context"
    rows[-1]["loss"] = 1.94  # the usual case: the full context is best
    assert statistics.truncation_check(pd.DataFrame(rows), 0.01)["full_context_worse"] is False


def test_a_solved_probe_is_not_beaten_by_float_noise_below_its_full_context():
    """The default study's transformer recalls every pair: 3.3e-8 nats with 256 tokens, 2.0e-8 with
    129, 0.9 with 128. 129 tokens "beat" the full context by 40% of nothing: its effective context
    is 129, not "not meaningful"; a real gain of more than NEGLIGIBLE_NATS still counts."""
    losses = [(64, 2.667), (128, 0.898), (129, 1.96e-8), (136, 1.91e-8), (256, 3.31e-8)]
    rows = [{"variant": "truncate", "context": n, "loss": v} for n, v in losses]
    assert statistics.truncation_check(pd.DataFrame(rows), 0.01) == {"full_context_worse": False,
                                                                      "best_truncated_context": 136}
    fit = {"effective_context": 129, "effective_context_low": 129, "effective_context_high": 129,
           **statistics.truncation_check(pd.DataFrame(rows), 0.01)}
    assert statistics.format_effective_context(fit) == "129 [129, 129]"
    rows[-1]["loss"] = 0.0021  # a near-zero loss a truncated context does beat by more than noise
    assert statistics.truncation_check(pd.DataFrame(rows), 0.01)["full_context_worse"] is True
    # the through-training analysis applies the same rule to each kept step's mean losses
    contexts = np.array([n for n, _ in losses])
    mean = np.array([v for _, v in losses])
    assert statistics.full_context_check(contexts, mean, 0.01) == {"full_context_worse": False,
                                                                   "best_truncated_context": 136}
    mean[-1] = 0.0021
    assert statistics.full_context_check(contexts, mean, 0.01)["full_context_worse"] is True
