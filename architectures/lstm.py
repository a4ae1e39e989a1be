"""Stacked LSTM on the library's fused kernel (``nn.LSTM``, no Python loop over time)."""
from __future__ import annotations

import torch
from torch import nn

from mnemoscope.model import Architecture
from mnemoscope.registry import register_architecture


@register_architecture("lstm")
class LSTM(Architecture):
    """Embedding -> ``nn.LSTM`` (n_layer, hidden d_model) -> LayerNorm -> tied head.

    Non-embedding parameters: the LSTM's 8 * d^2 + 8 * d per layer, plus the final norm.
    """

    width_key = "d_model"
    width_multiple = 8
    shape_space = {"n_layer": [1, 2, 3]}  # depths `study.py tune` tries
    default_hparams = {"lr": 3e-3, "warmup_fraction": 0.02}
    extrapolates = True

    def __init__(self, vocab_size: int, context_length: int, d_model: int = 256, n_layer: int = 2):
        super().__init__()
        self.d_model, self.n_layer = d_model, n_layer
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.rnn = nn.LSTM(d_model, d_model, num_layers=n_layer, batch_first=True)
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight
        nn.init.normal_(self.tok_emb.weight, std=0.02)
        with torch.no_grad():  # forget-gate bias 1: remember by default (Jozefowicz et al. 2015)
            for name, p in self.rnn.named_parameters():
                if name.startswith("bias_ih"):
                    p[d_model:2 * d_model].fill_(1.0)

    @classmethod
    def shape_candidates(cls, target, context_length):
        yield {"n_layer": 1 if target < 5e4 else 2 if target < 5e6 else 3}

    def features(self, tokens: torch.Tensor) -> torch.Tensor:
        """The final hidden states (B, T, C): the logits are ``head(features(tokens))``."""
        x = self.tok_emb(tokens)  # (B, T, C)
        y, _ = self.rnn(x)  # zero initial state: fresh for every sequence
        return self.ln_f(y)  # (B, T, C)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(tokens))  # (B, T, V)

    def state_size(self, seq_len: int) -> int:
        return 2 * self.n_layer * self.d_model  # h and c per layer, independent of length
