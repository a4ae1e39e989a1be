"""Stacked GRU on the library's fused kernel (``nn.GRU``): the LSTM's lighter sibling.

Written through the public plugin API only (``from mnemoscope import ...``), as an outsider would.
"""
from __future__ import annotations

import torch
from torch import nn

from mnemoscope import Architecture, register_architecture


@register_architecture("gru")
class GRU(Architecture):
    """Stacked GRU: embedding -> ``nn.GRU`` (n_layer, hidden d_model) -> LayerNorm -> tied head.

    Non-embedding parameters: the GRU's 6 * d^2 + 6 * d per layer, plus the final norm.
    """

    width_key = "d_model"
    width_multiple = 8
    default_hparams = {"lr": 3e-3, "warmup_fraction": 0.02}
    extrapolates = True  # no positions: any length can be scored
    shape_space = {"n_layer": [1, 2, 3]}  # depths `study.py tune` tries

    def __init__(self, vocab_size: int, context_length: int, d_model: int = 256, n_layer: int = 2):
        super().__init__()
        self.d_model, self.n_layer = d_model, n_layer
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.rnn = nn.GRU(d_model, d_model, num_layers=n_layer, batch_first=True)
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight  # tied
        nn.init.normal_(self.tok_emb.weight, std=0.02)

    @classmethod
    def shape_candidates(cls, target, context_length):
        # same depth schedule as the built-in lstm, so the two recurrent nets differ only in the cell
        yield {"n_layer": 1 if target < 5e4 else 2 if target < 5e6 else 3}

    def features(self, tokens: torch.Tensor) -> torch.Tensor:
        """The final hidden states (B, T, C): the logits are ``head(features(tokens))``."""
        x = self.tok_emb(tokens)  # (B, T, C)
        y, _ = self.rnn(x)  # zero initial state: fresh for every sequence
        return self.ln_f(y)  # (B, T, C)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(tokens))  # (B, T, V)

    def state_size(self, seq_len: int) -> int:
        return self.n_layer * self.d_model  # one hidden vector per layer, independent of length
