"""Checks specific to the plugin architectures (the contract itself is in test_contract.py),
and the example plugin package installed and used as a third party would."""
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from mnemoscope.architectures.linear_attention import retention
from mnemoscope.architectures.moe_transformer import MoE
from mnemoscope.architectures.ssm import ssd_scan
from mnemoscope.architectures.transformer import Transformer
from mnemoscope.architectures.window_transformer import WindowTransformer
from mnemoscope.contract.model import build
from mnemoscope.registry import ARCHITECTURES
from mnemoscope.specs import parse_spec

REPO = Path(__file__).resolve().parent.parent
V = 37


@pytest.mark.parametrize("T,chunk", [(37, 1), (37, 8), (37, 64), (64, 16)])
def test_ssd_chunked_scan_equals_sequential_recurrence(T, chunk):
    g = torch.Generator().manual_seed(0)
    B, H, P, N = 2, 3, 4, 5
    x = torch.randn(B, T, H, P, generator=g, dtype=torch.float64)
    log_decay = -2 * torch.rand(B, T, H, generator=g, dtype=torch.float64)
    b, c = (torch.randn(B, T, N, generator=g, dtype=torch.float64) for _ in range(2))
    h, ys = torch.zeros(B, H, P, N, dtype=torch.float64), []
    for t in range(T):  # h_t = exp(a_t) h_{t-1} + x_t b_t^T ; y_t = h_t c_t
        h = h * log_decay[:, t].exp()[..., None, None] + x[:, t, :, :, None] * b[:, t, None, None, :]
        ys.append((h * c[:, t, None, None, :]).sum(-1))
    torch.testing.assert_close(ssd_scan(x, log_decay, b, c, chunk), torch.stack(ys, 1), rtol=1e-10, atol=1e-10)


def test_retention_parallel_form_equals_recurrence():
    g = torch.Generator().manual_seed(0)
    B, H, T, hd = 2, 3, 20, 4
    q, k, v = (torch.randn(B, H, T, hd, generator=g, dtype=torch.float64) for _ in range(3))
    log_gamma = torch.log(torch.tensor([0.5, 0.9, 0.99], dtype=torch.float64))
    S, outs = torch.zeros(B, H, hd, hd, dtype=torch.float64), []
    for t in range(T):  # S_t = gamma S_{t-1} + k_t^T v_t ; o_t = q_t S_t / sqrt(hd)
        S = log_gamma.exp()[:, None, None] * S + k[:, :, t, :, None] * v[:, :, t, None, :]
        outs.append((q[:, :, t, :, None] * S).sum(-2) / math.sqrt(hd))
    torch.testing.assert_close(retention(q, k, v, log_gamma), torch.stack(outs, 2))


@pytest.mark.parametrize("n_layer", [1, 2])
def test_window_transformer_ignores_tokens_beyond_its_reach(n_layer):
    T, w, k = 40, 5, 10
    torch.manual_seed(0)
    model = WindowTransformer(V, T, window=w, d_model=32, n_layer=n_layer).eval()
    x = torch.randint(0, V, (1, T))
    x2 = x.clone()
    x2[0, k] = (x2[0, k] + 1) % V
    changed = (model(x) - model(x2)).abs().amax(-1)[0] > 1e-6  # (T,)
    reach = n_layer * (w - 1 + 2)  # each layer looks back w - 1 tokens, and its 3-tap convolutions 2 more
    assert model.receptive_field == reach + 1
    assert not changed[:k].any() and changed[k:k + reach + 1].all() and not changed[k + reach + 1:].any()


def test_window_transformer_is_the_transformer_when_the_window_covers_the_context():
    torch.manual_seed(0)
    dense = Transformer(V, 16, d_model=32, n_layer=2).eval()
    windowed = WindowTransformer(V, 16, window=16, d_model=32, n_layer=2).eval()
    windowed.load_state_dict(dense.state_dict())  # same parameters: nothing added
    x = torch.randint(0, V, (2, 16))
    torch.testing.assert_close(windowed(x), dense(x))
    cls, _, options = parse_spec("window_transformer:window=8", ARCHITECTURES)  # what --arch accepts
    assert cls is WindowTransformer and build(cls, V, 16, {**options, "d_model": 32}).window == 8
    assert windowed.state_size(64) == dense.state_size(16)  # KV cache capped at the window


def test_moe_sparse_dispatch_equals_dense_mixture():
    torch.manual_seed(0)
    moe = MoE(d_model=8, n_expert=4, top_k=2, hidden=16, balance_coef=0.01).eval()
    for p in moe.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(3, 7, 8)
    probs = moe.router(x).softmax(-1)
    weight, chosen = probs.topk(2, dim=-1)
    weight = weight / weight.sum(-1, keepdim=True)
    every = torch.stack([torch.nn.functional.gelu(x @ moe.w_in[e] + moe.b_in[e]) @ moe.w_out[e] + moe.b_out[e]
                         for e in range(4)], dim=-2)  # (B, T, E, C): every expert on every token
    expected = (every.gather(-2, chosen[..., None].expand(-1, -1, -1, 8)) * weight[..., None]).sum(-2)
    torch.testing.assert_close(moe(x), expected)


def test_moe_active_params_and_balance_loss():
    cls = ARCHITECTURES.get("moe_transformer")
    model = build(cls, V, 16, {"d_model": 32, "n_layer": 2, "n_expert": 4, "top_k": 1})
    expert = 2 * 32 * 64 + 64 + 32  # one expert: w_in, b_in, w_out, b_out (hidden = 2 * d_model)
    assert model.num_active_params() == model.num_params() - 2 * 3 * expert  # 3 of 4 experts skipped, 2 layers
    dense_k = build(cls, V, 16, {"d_model": 32, "n_layer": 2, "n_expert": 4, "top_k": 4})
    assert dense_k.num_active_params() == dense_k.num_params()
    # the balance loss reaches the router even when the model's own loss ignores the output
    (0 * model.train()(torch.randint(0, V, (2, 16))).sum()).backward()
    assert all(b.moe.router.weight.grad.abs().sum() > 0 for b in model.blocks)


def test_state_sizes_follow_each_kind():
    T = 24
    fixed = ["gru", "ssm", "linear_attention"]  # recurrent: state independent of length
    growing = ["memory_lstm", "moe_transformer"]  # keep something per past token
    for name in fixed + growing:
        model = build(ARCHITECTURES.get(name), V, T, {"d_model": 32, "n_layer": 1})
        a, b = model.state_size(T), model.state_size(2 * T)
        assert a > 0 and (a == b if name in fixed else b > a), name


def test_example_plugin_package_installs_lists_and_runs(tmp_path, text_dir):
    """Install examples/plugin-package (offline, into a private folder, not the shared venv) and use it."""
    pkg = tmp_path / "pkg"
    shutil.copytree(REPO / "examples" / "plugin-package", pkg)  # the build writes next to the sources
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "--target", str(site), str(pkg)], check=True, capture_output=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(site)}  # where pip put the plugin package
    listed = subprocess.run([sys.executable, str(REPO / "study.py"), "list"], env=env, capture_output=True,
                            text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr
    assert "mingru" in listed.stdout and "entry point mnemoscope_mingru:MinGRU" in listed.stdout
    out = tmp_path / "study"
    run = subprocess.run([sys.executable, str(REPO / "study.py"), "--arch", "mingru", "--task", f"text:{text_dir}",
                          "--params", "20k", "--tokens", "1k", "--context", "16", "--batch-size", "8",
                          "--eval-sequences", "8", "--out", str(out), "--no-progress", "--no-analysis"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    runs = pd.read_parquet(out / "runs.parquet")
    assert list(runs["arch"]) == ["mingru"] and list(runs["status"]) == ["ok"]
    assert abs(runs["achieved_params"][0] / 20_000 - 1) <= 0.10


def test_study_records_active_parameters_of_a_mixture_of_experts(text_dir, tmp_path):
    from mnemoscope.cli import main

    out = tmp_path / "study"
    assert main(["--arch", "moe_transformer:n_expert=4,top_k=1", "lstm", "--task", f"text:{text_dir}", "--params", "20k",
                 "--tokens", "1k", "--context", "16", "--batch-size", "8", "--eval-sequences", "8", "--out", str(out),
                 "--no-progress", "--no-analysis"]) == 0
    runs = pd.read_parquet(out / "runs.parquet").set_index("arch")
    moe = runs.loc["moe_transformer:n_expert=4,top_k=1"]
    assert moe["active_params"] < 0.7 * moe["achieved_params"]  # sized on all experts, runs on one of four
    assert runs.loc["lstm", "active_params"] == runs.loc["lstm", "achieved_params"]
