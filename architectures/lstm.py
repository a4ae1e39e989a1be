"""Stacked LSTM on the library's fused kernel (``nn.LSTM``, no Python loop over time), and the
recurrent language model the built-in ``gru`` and ``memory_lstm`` share with it."""
from __future__ import annotations

import torch
from torch import nn

from mnemoscope.contract.model import Architecture
from mnemoscope.registry import register_architecture


class RecurrentLM(Architecture):
    """Embedding -> a fused recurrent stack (``cell``: ``nn.LSTM``, ``nn.GRU``; n_layer, hidden
    d_model) -> [``read``: what a subclass adds over the states] -> LayerNorm -> tied head.

    Modules are made in this order (token embedding, recurrence, the subclass's, final norm, head),
    the embedding initialised N(0, 0.02) after them: the order of parameter names and of draws
    from the seed that the trained models of the committed studies hold.
    """

    cell: type[nn.RNNBase] = nn.LSTM
    #: numbers of the state each layer carries per step (LSTM: h and c; GRU: h)
    states_per_layer: int = 2
    width_key = "d_model"
    width_multiple = 8
    shape_space = {"n_layer": [1, 2, 3]}  # depths `study.py tune` tries
    default_hparams = {"lr": 3e-3, "warmup_fraction": 0.02}
    extrapolates = True  # no positions: any length can be scored

    def __init__(self, vocab_size: int, context_length: int, d_model: int = 256, n_layer: int = 2):
        super().__init__()
        self.d_model, self.n_layer = d_model, n_layer
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.rnn = self.cell(d_model, d_model, num_layers=n_layer, batch_first=True)
        self.add_read(d_model)
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight  # tied
        nn.init.normal_(self.tok_emb.weight, std=0.02)
        self.init_read()
        if self.cell is nn.LSTM:
            with torch.no_grad():  # forget-gate bias 1: remember by default (Jozefowicz et al. 2015)
                for name, p in self.rnn.named_parameters():
                    if name.startswith("bias_ih"):
                        p[d_model:2 * d_model].fill_(1.0)

    def add_read(self, d_model: int) -> None:
        """Modules a subclass reads the states with, made between the recurrence and the final norm."""

    def init_read(self) -> None:
        """Their initialisation, after the embedding's."""

    def read(self, h: torch.Tensor) -> torch.Tensor:
        """(B, T, C) states -> (B, T, C); the plain recurrent model reads nothing more."""
        return h

    @classmethod
    def shape_candidates(cls, target, context_length):
        # one depth schedule for every recurrent model, so they differ only in the cell (and the read)
        yield {"n_layer": 1 if target < 5e4 else 2 if target < 5e6 else 3}

    def features(self, tokens: torch.Tensor) -> torch.Tensor:
        """The final hidden states (B, T, C): the logits are ``head(features(tokens))``."""
        x = self.tok_emb(tokens)  # (B, T, C)
        h, _ = self.rnn(x)  # zero initial state: fresh for every sequence
        return self.ln_f(self.read(h))  # (B, T, C)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(tokens))  # (B, T, V)

    def state_size(self, seq_len: int) -> int:
        return self.states_per_layer * self.n_layer * self.d_model  # independent of length


@register_architecture("lstm")
class LSTM(RecurrentLM):
    """Embedding -> ``nn.LSTM`` (n_layer, hidden d_model) -> LayerNorm -> tied head.

    Non-embedding parameters: the LSTM's 8 * d^2 + 8 * d per layer, plus the final norm.
    """
