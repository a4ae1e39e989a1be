"""The transformer with each attention layer limited to the last ``window`` tokens (sliding window,
as in Longformer / Mistral): the controlled ablation of how far attention reaches.

It is ``architectures.transformer.Transformer`` unchanged, given a banded causal mask: same
blocks, same parameters, same size matching. One layer's attention sees ``window`` tokens (itself
included) and its convolutions (the transformer's ``conv``, 3) mix each query, key and value with
the ``conv - 1`` before it; information can so hop back ``window + conv - 2`` tokens per layer, and
the whole stack's receptive field is ``n_layer * (window + conv - 2) + 1`` tokens.
"""
from __future__ import annotations

import torch

from mnemoscope.architectures.transformer import Transformer
from mnemoscope import register_architecture


def banded_causal_mask(T: int, window: int, device=None) -> torch.Tensor:
    """(T, T) bool, True where query t may attend to key s: t - window < s <= t."""
    pos = torch.arange(T, device=device)
    dist = pos[:, None] - pos[None, :]  # t - s
    return (dist >= 0) & (dist < window)


@register_architecture("window_transformer")
class WindowTransformer(Transformer):
    """Transformer whose attention sees only the last `window` tokens per layer (default 32)."""

    shape_space = {"n_layer": [1, 2, 3, 4, 6]}  # depths `study.py tune` tries, as for the transformer

    def __init__(self, vocab_size: int, context_length: int, window: int = 32, **transformer):
        if not isinstance(window, int) or isinstance(window, bool) or window < 1:
            raise ValueError(f"window must be a positive integer, got {window!r}")
        super().__init__(vocab_size, context_length, **transformer)
        self.window = window

    @property
    def receptive_field(self) -> int:
        """Tokens that can influence one prediction through the whole stack, the current one included."""
        return self.n_layer * (self.window - 1 + max(0, self.conv - 1)) + 1

    def features(self, tokens: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        T = tokens.shape[1]
        if attn_mask is not None or T <= self.window:  # a mask given, or the band covers everything (plain causal)
            return super().features(tokens, attn_mask)
        return super().features(tokens, attn_mask=banded_causal_mask(T, self.window, tokens.device))

    def state_size(self, seq_len: int) -> int:
        # a KV cache of the last `window` tokens, and the convolutions' last inputs (Transformer.state_size)
        return self.n_layer * self.d_model * (2 * min(seq_len, self.window) + 3 * max(0, self.conv - 1))
