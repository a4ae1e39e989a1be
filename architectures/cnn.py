"""Causal dilated convolutions, WaveNet/TCN style: gated residual blocks, dilations 1, 2, 4, ...

With kernel size k and dilations 1..2^(L-1) one stack sees 1 + (k-1)(2^L - 1) tokens. By
default the number of layers is the smallest whose receptive field covers the context.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mnemoscope.contract.model import Architecture
from mnemoscope.registry import register_architecture


class GatedBlock(nn.Module):
    """x + W_out (tanh(a) * sigmoid(b)), [a, b] = causal dilated conv(LayerNorm(x))."""

    def __init__(self, channels: int, kernel_size: int, dilation: int):
        super().__init__()
        self.pad = (kernel_size - 1) * dilation
        self.norm = nn.LayerNorm(channels)
        self.conv = nn.Conv1d(channels, 2 * channels, kernel_size, dilation=dilation)
        self.out = nn.Conv1d(channels, channels, 1)

    def forward(self, x):  # (B, C, T)
        h = self.norm(x.transpose(1, 2)).transpose(1, 2)
        a, b = self.conv(F.pad(h, (self.pad, 0))).chunk(2, dim=1)  # left padding only: causal
        return x + self.out(torch.tanh(a) * torch.sigmoid(b))


@register_architecture("cnn")
class CNN(Architecture):
    """Causal dilated CNN (WaveNet/TCN gated residual blocks); receptive field covers the context."""

    width_key = "channels"
    width_multiple = 8
    shape_space = {"kernel_size": [2, 3, 4], "n_stack": [1, 2]}  # shapes `study.py tune` tries
    default_hparams = {"lr": 2e-3, "warmup_fraction": 0.02}
    extrapolates = True

    def __init__(self, vocab_size: int, context_length: int, channels: int = 128, kernel_size: int = 2,
                 n_layer: int | None = None, n_stack: int = 1):
        super().__init__()
        if n_layer is None:  # smallest depth whose receptive field covers the context
            n_layer = max(1, math.ceil(math.log2((context_length - 1) / (kernel_size - 1) + 1)))
        self.channels, self.kernel_size, self.n_layer, self.n_stack = channels, kernel_size, n_layer, n_stack
        self.tok_emb = nn.Embedding(vocab_size, channels)
        self.blocks = nn.ModuleList(
            GatedBlock(channels, kernel_size, 2 ** i) for _ in range(n_stack) for i in range(n_layer)
        )
        self.ln_f = nn.LayerNorm(channels)
        self.head = nn.Linear(channels, vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight
        nn.init.normal_(self.tok_emb.weight, std=0.02)

    @property
    def receptive_field(self) -> int:
        """Tokens that can influence one prediction, the current token included."""
        return 1 + sum(b.pad for b in self.blocks)

    @classmethod
    def shape_candidates(cls, target, context_length):
        yield {"n_stack": 1 if target < 3e6 else 2}

    def features(self, tokens: torch.Tensor) -> torch.Tensor:
        """The final hidden states (B, T, C): the logits are ``head(features(tokens))``."""
        x = self.tok_emb(tokens).transpose(1, 2)  # (B, C, T)
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x.transpose(1, 2))  # (B, T, C)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(tokens))  # (B, T, V)

    def state_size(self, seq_len: int) -> int:
        return (self.receptive_field - 1) * self.channels  # past inputs each layer must keep
