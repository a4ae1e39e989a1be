"""Causal linear attention with decay (the RetNet "retention" of Sun et al. 2023, RWKV's relative).

Each head keeps a (head_dim x head_dim) state that decays by a factor gamma per token::

    S_t = gamma S_{t-1} + k_t^T v_t        o_t = q_t S_t

so attention's softmax is replaced by an exponentially decaying, unnormalised sum: memory is
fixed-size, and old tokens fade at a rate each head learns (initialised at spans from a few
tokens to the whole context). Training uses the equivalent parallel form
``O = (Q K^T * D) V`` with ``D[t, s] = gamma^(t - s)`` for s <= t. Queries and keys are rotated
(rotary, RetNet's xPos without its scaling); outputs go through a per-head GroupNorm and a SiLU
gate as in RetNet. Blocks are the transformer's otherwise (pre-LayerNorm, GELU MLP).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mnemoscope.architectures.transformer import Transformer, apply_rotary, rotary_tables
from mnemoscope import Architecture, register_architecture


def rotate(x: torch.Tensor, rotary) -> torch.Tensor:
    """Rotary on the first even number of dims of each head (an odd head keeps its last dim as is)."""
    if rotary is None:
        return x
    r = 2 * (x.shape[-1] // 2)
    return torch.cat([apply_rotary(x[..., :r], *rotary), x[..., r:]], dim=-1)


def decay_matrix(log_gamma: torch.Tensor, T: int) -> torch.Tensor:
    """(H,) log decays -> (H, T, T) with gamma^(t - s) at s <= t and 0 above the diagonal."""
    pos = torch.arange(T, device=log_gamma.device)
    dist = (pos[:, None] - pos[None, :]).clamp_min(0)  # clamp first: exp of a positive power would overflow
    return torch.where(pos[:, None] >= pos[None, :], torch.exp(log_gamma[:, None, None] * dist), 0.0)


def retention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_gamma: torch.Tensor) -> torch.Tensor:
    """Parallel form: (B, H, T, hd) q, k, v and (H,) log decays -> (B, H, T, hd) outputs
    o_t = sum_{s<=t} gamma^(t-s) (q_t . k_s / sqrt(hd)) v_s, i.e. the recurrence in the module docstring."""
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])  # (B, H, T, T)
    return (scores * decay_matrix(log_gamma, q.shape[2])) @ v


class Retention(nn.Module):
    def __init__(self, d_model: int, n_head: int, context_length: int):
        super().__init__()
        self.n_head, self.head_dim = n_head, d_model // n_head
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.gate = nn.Linear(d_model, d_model, bias=False)
        self.proj = nn.Linear(d_model, d_model, bias=False)
        self.group_norm = nn.GroupNorm(n_head, d_model)  # one norm per head: heads decay at different scales
        # decay spans 1 / (1 - gamma) spread log-uniformly from 4 tokens to the context (one head: the context)
        spans = torch.logspace(2, math.log2(max(8, context_length)), n_head, base=2) if n_head > 1 \
            else torch.full((1,), float(max(8, context_length)))
        self.decay_logit = nn.Parameter(torch.log(spans - 1))  # gamma = sigmoid(logit) = 1 - 1 / span

    def log_gamma(self) -> torch.Tensor:
        return F.logsigmoid(self.decay_logit)  # (H,), < 0

    def forward(self, x, rotary):  # x: (B, T, C)
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, self.head_dim).transpose(1, 2) for t in (q, k, v))  # (B, H, T, hd)
        q, k = rotate(q, rotary), rotate(k, rotary)
        with torch.autocast(x.device.type, enabled=False):  # decays over hundreds of steps need fp32
            y = retention(q.float(), k.float(), v.float(), self.log_gamma())  # (B, H, T, hd)
        y = self.group_norm(y.transpose(1, 2).reshape(B * T, C)).view(B, T, C).to(x.dtype)
        return self.proj(F.silu(self.gate(x)) * y)


class Block(nn.Module):
    def __init__(self, d_model: int, n_head: int, mlp_ratio: int, context_length: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.retention = Retention(d_model, n_head, context_length)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc = nn.Linear(d_model, mlp_ratio * d_model)
        self.proj = nn.Linear(mlp_ratio * d_model, d_model)

    def forward(self, x, rotary):
        x = x + self.retention(self.ln1(x), rotary)
        return x + self.proj(F.gelu(self.fc(self.ln2(x))))


@register_architecture("linear_attention")
class LinearAttention(Architecture):
    """Causal linear attention with learned per-head decay (RetNet retention), parallel form.

    Non-embedding parameters ~ 13 * n_layer * d_model^2 (q, k, v, gate, output and a 4x MLP).
    """

    width_key = "d_model"
    width_multiple = 8
    default_hparams = {"lr": 2e-3, "warmup_fraction": 0.05}
    extrapolates = True  # rotary positions and a recurrent state: any length can be scored
    shape_space = {"n_layer": [1, 2, 3, 4, 6]}  # depths `study.py tune` tries, as for the transformer

    def __init__(self, vocab_size: int, context_length: int, d_model: int = 128, n_layer: int = 4,
                 n_head: int | None = None, mlp_ratio: int = 4):
        super().__init__()
        n_head = n_head or Transformer.heads_for(d_model)
        if d_model % n_head:
            raise ValueError(f"d_model={d_model} is not divisible by n_head={n_head}")
        self.d_model, self.n_layer, self.n_head = d_model, n_layer, n_head
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_head, mlp_ratio, context_length) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight  # tied
        self.apply(Transformer._init)
        for block in self.blocks:  # GPT-2: residual projections scaled by depth
            for lin in (block.retention.proj, block.proj):
                nn.init.normal_(lin.weight, std=0.02 / math.sqrt(2 * n_layer))

    # the transformer's depth schedule, so the two differ only in the token mixer
    shape_candidates = Transformer.shape_candidates

    def features(self, tokens: torch.Tensor) -> torch.Tensor:
        """The final hidden states (B, T, C): the logits are ``head(features(tokens))``."""
        B, T = tokens.shape  # (B, T)
        x = self.tok_emb(tokens)  # (B, T, C)
        rotated = 2 * (self.d_model // self.n_head // 2)
        rotary = rotary_tables(T, rotated, tokens.device) if rotated else None
        for block in self.blocks:
            x = block(x, rotary)
        return self.ln_f(x)  # (B, T, C)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(tokens))  # (B, T, V)

    def state_size(self, seq_len: int) -> int:
        return self.n_layer * self.n_head * (self.d_model // self.n_head) ** 2  # one hd x hd state per head
