"""Stacked GRU on the library's fused kernel (``nn.GRU``): the LSTM's lighter sibling.

Written as an outsider would: the public plugin API (``from mnemoscope import ...``) and the
built-in ``lstm``'s recurrent model, whose cell it swaps.
"""
from __future__ import annotations

from torch import nn

from mnemoscope import register_architecture
from mnemoscope.architectures.lstm import RecurrentLM


@register_architecture("gru")
class GRU(RecurrentLM):
    """Stacked GRU: embedding -> ``nn.GRU`` (n_layer, hidden d_model) -> LayerNorm -> tied head.

    Non-embedding parameters: the GRU's 6 * d^2 + 6 * d per layer, plus the final norm.
    """

    cell = nn.GRU
    states_per_layer = 1  # one hidden vector per layer
