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

from mnemoscope.architectures.transformer import CausalSelfAttention, Transformer
from mnemoscope import Architecture, register_architecture


@register_architecture("memory_lstm")
class MemoryLSTM(Architecture):
    """LSTM plus causal attention over its own past hidden states (an external memory).

    Non-embedding parameters: the LSTM's 8 * d^2 + 8 * d per layer, the memory read's 4 * d^2 + 4 * d, norms.
    """

    width_key = "d_model"
    width_multiple = 8
    default_hparams = {"lr": 3e-3, "warmup_fraction": 0.02}
    extrapolates = True
    shape_space = {"n_layer": [1, 2, 3]}  # depths `study.py tune` tries

    def __init__(self, vocab_size: int, context_length: int, d_model: int = 256, n_layer: int = 2,
                 n_head: int | None = None):
        super().__init__()
        n_head = n_head or Transformer.heads_for(d_model)
        if d_model % n_head:
            raise ValueError(f"d_model={d_model} is not divisible by n_head={n_head}")
        self.d_model, self.n_layer, self.n_head = d_model, n_layer, n_head
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.rnn = nn.LSTM(d_model, d_model, num_layers=n_layer, batch_first=True)
        self.ln_mem = nn.LayerNorm(d_model)
        self.memory = CausalSelfAttention(d_model, n_head)  # queries, keys and values all from LSTM states
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight  # tied
        nn.init.normal_(self.tok_emb.weight, std=0.02)
        self.memory.apply(Transformer._init)
        with torch.no_grad():  # forget-gate bias 1, as the built-in lstm
            for name, p in self.rnn.named_parameters():
                if name.startswith("bias_ih"):
                    p[d_model:2 * d_model].fill_(1.0)

    @classmethod
    def shape_candidates(cls, target, context_length):
        # the built-in lstm's depth schedule, so the two differ only by the memory
        yield {"n_layer": 1 if target < 5e4 else 2 if target < 5e6 else 3}

    def features(self, tokens: torch.Tensor) -> torch.Tensor:
        """The final hidden states (B, T, C): the logits are ``head(features(tokens))``."""
        x = self.tok_emb(tokens)  # (B, T, C)
        h, _ = self.rnn(x)  # (B, T, C); zero initial state: fresh for every sequence
        h = h + self.memory(self.ln_mem(h))  # read from states 0..t at each t
        return self.ln_f(h)  # (B, T, C)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(tokens))  # (B, T, V)

    def state_size(self, seq_len: int) -> int:
        # h and c per layer, plus the memory's keys and values for every past position
        return 2 * self.n_layer * self.d_model + 2 * self.d_model * seq_len
