"""Decoder-only transformers: pre-LayerNorm blocks, causal scaled_dot_product_attention.

``transformer`` adds to GPT-2's block two things. Primer's depthwise causal convolution (So et al.
2021, "multi-dconv-head attention") over the last ``conv`` = 3 positions of each query, key and
value channel: with it the key of a pair reaches the position of its value inside one layer, so
associative recall becomes a single attention lookup instead of the two-layer induction circuit.
And its query, key and value projections start at N(0, 1/width) (``init="width"``) instead of
GPT-2's N(0, 0.02): attention logits of order 1 at the start rather than about 0.03, so the lookup
is found within the first thousand steps on every seed instead of late or never on some
(docs/architectures.md has the ablation and its numbers, results/recall-ablation the runs). The
convolution sees 2 tokens back per layer; every longer reach is still attention's.
``transformer_gpt2`` (``conv=0``, ``init="gpt2"``) is GPT-2's recipe unchanged, the one Kaplan et
al. 2020 used and every study committed before version 2 trained under the name ``transformer``.

Positions are rotary by default, which also lets the model score sequences longer than its
training context; ``pos="learned"`` gives GPT-2's learned absolute embeddings (as in Kaplan et
al. 2020). Rotary is the default because it is the one that trains well at CPU budgets: the
reference study (results/reference, its README has the numbers and the command) finds learned
positions far behind rotary at the same size and tokens.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mnemoscope.contract.model import Architecture
from mnemoscope.registry import register_architecture


def rotary_tables(seq_len: int, head_dim: int, device, base: float = 10000.0):
    """cos, sin of shape (T, head_dim // 2): one frequency per pair of dimensions."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim // 2, device=device, dtype=torch.float32) * 2 / head_dim))
    angles = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)  # (T, hd/2)
    return angles.cos(), angles.sin()


def apply_rotary(x, cos, sin):  # x: (B, H, T, hd)
    """Rotate pairs of dimensions by position; an odd head size leaves its last dimension as it is."""
    r = 2 * cos.shape[-1]
    x1, x2 = x[..., 0:r:2], x[..., 1:r:2]
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
    if r < x.shape[-1]:
        out = torch.cat([out, x[..., r:]], dim=-1)
    return out.type_as(x)


class CausalSelfAttention(nn.Module):
    """Multi-head causal attention; ``conv`` > 0: Primer's depthwise causal convolution of that many
    positions over every query, key and value channel, after their projection (0: none, GPT-2)."""

    def __init__(self, d_model: int, n_head: int, conv: int = 0):
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.conv = nn.Conv1d(3 * d_model, 3 * d_model, conv, groups=3 * d_model, padding=conv - 1,
                              bias=False) if conv else None

    def forward(self, x, rotary=None, attn_mask=None):
        B, T, C = x.shape
        qkv = self.qkv(x)  # (B, T, 3C)
        if self.conv is not None:  # causal: the left padding's outputs are kept, the right ones dropped
            qkv = self.conv(qkv.transpose(1, 2))[..., :T].transpose(1, 2)
        q, k, v = qkv.split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, T, hd)
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        if attn_mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # a banded mask (truncated context) replaces the plain causal one
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    def __init__(self, d_model: int, n_head: int, mlp_ratio: int, conv: int = 0):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_head, conv)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc = nn.Linear(d_model, mlp_ratio * d_model)
        self.proj = nn.Linear(mlp_ratio * d_model, d_model)

    def forward(self, x, rotary=None, attn_mask=None):
        x = x + self.attn(self.ln1(x), rotary, attn_mask)
        return x + self.proj(F.gelu(self.fc(self.ln2(x))))


@register_architecture("transformer")
class Transformer(Architecture):
    """GPT-2 block with Primer's 3-tap convolutions on q, k, v, those started at N(0, 1/width); rotary.
    Non-embedding params ~ 12 * n_layer * d_model^2."""

    #: enters the run id (mnemoscope.study.config.RunSpec.run_id): runs of the GPT-2 recipe, trained under
    #: this name before the convolutions came, are not taken for runs of this one
    version = "3"  # "2": Primer's convolutions; "3": queries, keys and values initialised at N(0, 1/width)
    width_key = "d_model"
    width_multiple = 8
    shape_space = {"n_layer": [1, 2, 3, 4, 6]}  # depths `study.py tune` tries
    default_hparams = {"lr": 3e-3, "warmup_fraction": 0.05}  # best of 1e-3, 3e-3, 6e-3 at 300k params, 1M tokens

    def __init__(self, vocab_size: int, context_length: int, d_model: int = 128, n_layer: int = 4,
                 n_head: int | None = None, mlp_ratio: int = 4, pos: str = "rotary", conv: int = 3,
                 rotary_fraction: float = 1.0, init: str = "width"):
        super().__init__()
        if init not in ("width", "gpt2"):
            raise ValueError(f"init must be 'width' (q, k, v projections at N(0, 1/d_model)) or 'gpt2' (N(0, 0.02)), not {init!r}")
        if pos not in ("learned", "rotary"):
            raise ValueError(f"pos must be 'learned' or 'rotary', not {pos!r}")
        if isinstance(rotary_fraction, bool) or not isinstance(rotary_fraction, (int, float)) or not 0 <= rotary_fraction <= 1:
            raise ValueError(f"rotary_fraction must be in [0, 1] (the share of each head's dimensions rotated), not {rotary_fraction!r}")
        if isinstance(conv, bool) or not isinstance(conv, int) or conv < 0:
            raise ValueError(f"conv must be a whole number of positions (0: none), not {conv!r}")
        n_head = n_head or self.heads_for(d_model)
        if d_model % n_head:
            raise ValueError(f"d_model={d_model} is not divisible by n_head={n_head}")
        self.context_length, self.d_model, self.n_layer, self.n_head, self.pos = context_length, d_model, n_layer, n_head, pos
        self.conv, self.rotary_fraction, self.init = conv, float(rotary_fraction), init
        self.extrapolates = pos == "rotary"
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(context_length, d_model) if pos == "learned" else None
        self.blocks = nn.ModuleList(Block(d_model, n_head, mlp_ratio, conv) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight  # tied
        self.apply(self._init)
        for block in self.blocks:  # GPT-2: residual projections scaled by depth
            for lin in (block.attn.proj, block.proj):
                nn.init.normal_(lin.weight, std=0.02 / math.sqrt(2 * n_layer))
        if init == "width":  # attention logits of order 1 at the start, not GPT-2's ~0.03 (docs/architectures.md)
            for block in self.blocks:
                nn.init.normal_(block.attn.qkv.weight, std=1 / math.sqrt(d_model))

    @staticmethod
    def heads_for(d_model: int) -> int:
        n = max(1, round(d_model / 32))
        while d_model % n:
            n -= 1
        return n

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    @classmethod
    def shape_candidates(cls, target, context_length):
        # depth grows slowly with size (Kaplan: loss is insensitive to the aspect ratio over a wide range)
        preferred = 2 if target < 2e5 else 4 if target < 2e6 else 6 if target < 2e7 else 8
        for n_layer in (preferred, preferred + 1, preferred - 1, preferred + 2):
            if n_layer >= 1:
                yield {"n_layer": n_layer}

    def forward(self, tokens: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.features(tokens, attn_mask))  # (B, T, V)

    def features(self, tokens: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The final hidden states (B, T, C): the logits are ``head(features(tokens))``."""
        B, T = tokens.shape  # (B, T)
        x = self.tok_emb(tokens)  # (B, T, C)
        rotary = None
        if self.pos_emb is not None:
            if T > self.context_length:
                raise ValueError(f"learned positions cover {self.context_length} tokens, got {T}; use pos='rotary' to extrapolate")
            x = x + self.pos_emb(torch.arange(T, device=tokens.device))
        else:
            head = self.d_model // self.n_head  # the first rotary_fraction of each head's dimensions rotate
            rotary = rotary_tables(T, 2 * int(head * self.rotary_fraction / 2), tokens.device)
        for block in self.blocks:
            x = block(x, rotary, attn_mask)
        return self.ln_f(x)  # (B, T, C)

    def embedding_parameters(self):
        return [self.tok_emb.weight] + ([self.pos_emb.weight] if self.pos_emb is not None else [])

    def state_size(self, seq_len: int) -> int:
        # keys and values, every layer, every position; the convolutions' last conv - 1 inputs of q, k, v
        return self.n_layer * self.d_model * (2 * seq_len + 3 * max(0, self.conv - 1))


@register_architecture("transformer_gpt2")
class TransformerGPT2(Transformer):
    """GPT-2's decoder as Kaplan et al. 2020 trained it (no convolution); rotary unless pos=learned."""

    version = None  # its runs' ids are those of `transformer` before version 2, under this name

    def __init__(self, vocab_size: int, context_length: int, d_model: int = 128, n_layer: int = 4,
                 n_head: int | None = None, mlp_ratio: int = 4, pos: str = "rotary", conv: int = 0,
                 init: str = "gpt2"):
        super().__init__(vocab_size, context_length, d_model, n_layer, n_head, mlp_ratio, pos, conv, init=init)
