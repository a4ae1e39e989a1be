"""An LSTM with an external memory of its own past: causal attention over the LSTM's outputs.

The stacked LSTM (as the built-in ``lstm``) writes one hidden state per token into a memory;
a multi-head attention layer then reads, at every position, from all the states written so far
(itself included) and adds what it reads to the current state (residual), before the output
head. This is the attention-augmented recurrent language model of Daniluk et al. (2017,
"Frustratingly short attention spans in neural language modeling"): the recurrence stays a
fixed-size summary; the memory grows with the context, like a transformer's KV cache. The read
does not feed back into the recurrence, which keeps training on the fused ``nn.LSTM`` kernel.
Positions need no embedding: the LSTM states already carry order.
"""
from __future__ import annotations

import torch
from torch import nn

from mnemoscope import register_architecture
from mnemoscope.architectures.lstm import RecurrentLM
from mnemoscope.architectures.transformer import CausalSelfAttention, Transformer


@register_architecture("memory_lstm")
class MemoryLSTM(RecurrentLM):
    """LSTM plus causal attention over its own past hidden states (an external memory).

    Non-embedding parameters: the LSTM's 8 * d^2 + 8 * d per layer, the memory read's 4 * d^2 + 4 * d, norms.
    """

    def __init__(self, vocab_size: int, context_length: int, d_model: int = 256, n_layer: int = 2,
                 n_head: int | None = None):
        n_head = n_head or Transformer.heads_for(d_model)
        if d_model % n_head:
            raise ValueError(f"d_model={d_model} is not divisible by n_head={n_head}")
        self._n_head = n_head  # a plain int, read by add_read during the base's construction
        super().__init__(vocab_size, context_length, d_model, n_layer)
        self.n_head = n_head

    def add_read(self, d_model: int) -> None:
        self.ln_mem = nn.LayerNorm(d_model)
        self.memory = CausalSelfAttention(d_model, self._n_head)  # queries, keys and values all from LSTM states

    def init_read(self) -> None:
        self.memory.apply(Transformer._init)

    def read(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.memory(self.ln_mem(h))  # read from states 0..t at each t

    def state_size(self, seq_len: int) -> int:
        # h and c per layer, plus the memory's keys and values for every past position
        return super().state_size(seq_len) + 2 * self.d_model * seq_len
