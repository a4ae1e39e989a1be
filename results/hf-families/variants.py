"""The built-in transformer with Llama's parts, one at a time: where does hf:llama's lead come from?

Plugins by file path (nothing registered, no edit to the harness):

    python study.py --arch transformer results/hf-families/variants.py:SwiGLUTransformer \
        results/hf-families/variants.py:RMSSwiGLUTransformer hf:llama ...

``SwiGLUTransformer``: each block's GELU MLP (4 x width) replaced by Llama's SwiGLU MLP
(8/3 x width, no biases), everything else the built-in's (LayerNorm, attention with biases,
rotary positions, initialisation with the residual projections scaled by depth).
``RMSSwiGLUTransformer``: the same with RMSNorm in place of LayerNorm (Llama's norm), final
norm included.
"""
from __future__ import annotations

import math

import torch.nn.functional as F
from torch import nn

from mnemoscope.architectures.transformer import CausalSelfAttention, Transformer


class SwiGLUBlock(nn.Module):
    def __init__(self, d_model: int, n_head: int, hidden: int, norm):
        super().__init__()
        self.ln1, self.attn, self.ln2 = norm(d_model), CausalSelfAttention(d_model, n_head), norm(d_model)
        self.gate = nn.Linear(d_model, hidden, bias=False)
        self.up = nn.Linear(d_model, hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x, rotary=None, attn_mask=None):
        x = x + self.attn(self.ln1(x), rotary, attn_mask)
        h = self.ln2(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class SwiGLUTransformer(Transformer):
    """The built-in transformer with Llama's SwiGLU MLP (8/3 x width)."""

    norm = nn.LayerNorm

    def __init__(self, vocab_size: int, context_length: int, d_model: int = 128, n_layer: int = 4, **options):
        super().__init__(vocab_size, context_length, d_model=d_model, n_layer=n_layer, **options)
        hidden = max(8, round(8 * d_model / 3 / 8) * 8)  # Llama's width, rounded to 8 as hf:llama's recipe does
        self.blocks = nn.ModuleList(SwiGLUBlock(d_model, self.n_head, hidden, self.norm) for _ in range(n_layer))
        self.ln_f = self.norm(d_model)
        self.apply(self._init)
        for block in self.blocks:  # as the built-in: residual projections scaled by depth
            for lin in (block.attn.proj, block.down):
                nn.init.normal_(lin.weight, std=0.02 / math.sqrt(2 * n_layer))


class RMSSwiGLUTransformer(SwiGLUTransformer):
    """The built-in transformer with Llama's SwiGLU MLP and RMSNorm."""

    norm = nn.RMSNorm
