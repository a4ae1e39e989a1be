"""minGRU (Feng et al. 2024, "Were RNNs All We Needed?") as a mnemoscope architecture plugin.

The GRU with its gates computed from the current token only::

    z_t = sigmoid(W_z x_t)        h~_t = g(W_h x_t)        h_t = (1 - z_t) * h_{t-1} + z_t * h~_t

Because z and h~ do not depend on h_{t-1}, h_t = sum_{s<=t} (prod_{r=s+1..t} (1 - z_r)) z_s h~_s
is computed for the whole sequence at once, in log space (Heinsen's scan: a cumsum and a
logcumsumexp), with g keeping h~ positive so its log exists.

Registered by the entry point in this package's pyproject.toml; nothing in the harness names it.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mnemoscope import Architecture


def log_g(x: torch.Tensor) -> torch.Tensor:
    """log of g(x) = x + 1/2 for x >= 0, sigmoid(x) below: positive, continuous, linear for large x."""
    return torch.where(x >= 0, (F.relu(x) + 0.5).log(), -F.softplus(-x))


class MinGRULayer(nn.Module):
    def __init__(self, d_model: int):
        super().__init__()
        self.to_gate_and_candidate = nn.Linear(d_model, 2 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x):  # (B, T, C)
        k, h = self.to_gate_and_candidate(x).float().chunk(2, dim=-1)  # fp32: the scan runs in log space
        log_keep = -F.softplus(k)  # log(1 - z)
        log_write = -F.softplus(-k) + log_g(h)  # log(z * h~)
        decay = log_keep.cumsum(dim=1)  # (B, T, C): log prod_{r<=t} (1 - z_r)
        log_h = decay + torch.logcumsumexp(log_write - decay, dim=1)  # h_{-1} = 0: fresh for every sequence
        return self.out(log_h.exp().to(x.dtype))


class MinGRU(Architecture):
    """minGRU (example plugin): residual minGRU layers, trained by a parallel log-space scan."""

    width_key = "d_model"  # the harness solves for this to match --params
    default_hparams = {"lr": 3e-3, "warmup_fraction": 0.02}
    extrapolates = True  # no positions: any length can be scored

    def __init__(self, vocab_size: int, context_length: int, d_model: int = 128, n_layer: int = 3):
        super().__init__()
        self.d_model, self.n_layer = d_model, n_layer
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(n_layer))
        self.layers = nn.ModuleList(MinGRULayer(d_model) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight  # tied: counted once, as an embedding
        nn.init.normal_(self.tok_emb.weight, std=0.02)
        for layer in self.layers:
            nn.init.normal_(layer.to_gate_and_candidate.weight, std=1 / math.sqrt(d_model))
            nn.init.normal_(layer.out.weight, std=0.02 / math.sqrt(n_layer))

    @classmethod
    def shape_candidates(cls, target, context_length):
        yield {"n_layer": 2 if target < 1e5 else 3 if target < 1e6 else 4}  # depth; the width is solved for

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.tok_emb(tokens)  # (B, T, C)
        for norm, layer in zip(self.norms, self.layers):
            x = x + layer(norm(x))
        return self.head(self.ln_f(x))  # (B, T, V)

    def state_size(self, seq_len: int) -> int:
        return self.n_layer * self.d_model  # one hidden vector per layer, whatever the length
