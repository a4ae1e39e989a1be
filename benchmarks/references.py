"""What the harness is measured against: a bare training loop, and Hugging Face GPT-2.

The bare loop is the loop a user would write by hand around the same model: bf16 autocast on
CUDA, cross-entropy, backward, gradient clipping, AdamW (fused where torch has the kernel). No
Lightning, no logging, no data loading (batches are made once and sit on the device), no determinism flags.
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mnemoscope.training.train import TrainConfig, fused_adamw


def stamp(device: torch.device) -> np.ndarray:
    """(wall-clock seconds, CPU seconds of this process, all threads), taken after the device has
    finished what was queued. On a machine shared with other work, CPU seconds measure our own
    work; the wall clock also measures the neighbours."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return np.array([time.perf_counter(), time.process_time()])


class BareLoop:
    """Trains ``model`` on ``batches`` (a list of (x, y) on the device), one step at a time."""

    def __init__(self, model: nn.Module, batches: list, device: torch.device, lr: float = TrainConfig.lr,
                 grad_clip: float = 1.0, compile: bool = False):
        self.model, self.batches, self.device, self.grad_clip = model.to(device).train(), batches, device, grad_clip
        self.forward = torch.compile(self.model) if compile else self.model
        self.params = [p for p in model.parameters() if p.requires_grad]
        # the fastest AdamW torch has for this device, as the harness uses (a strong reference)
        self.opt = torch.optim.AdamW(self.params, lr=lr, betas=(0.9, 0.95), weight_decay=0.1,
                                     fused=fused_adamw(self.params))
        self.i = 0

    def step(self) -> None:
        x, y = self.batches[self.i % len(self.batches)]
        self.i += 1
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            logits = self.forward(x)  # (B, T, V)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def run(self, steps: int) -> np.ndarray:
        """(wall, CPU) seconds for ``steps`` steps. Determinism is switched off while it runs (a bare loop
        would not ask for it), whatever the harness around it has switched on."""
        was = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(False)
        try:
            with torch.enable_grad():
                start = stamp(self.device)
                for _ in range(steps):
                    self.step()
                return stamp(self.device) - start
        finally:
            torch.use_deterministic_algorithms(was)


class LogitsOnly(nn.Module):
    """A Hugging Face causal LM as a ``(B, T) -> (B, T, V)`` module (no cache, no loss inside)."""

    def __init__(self, hf_model: nn.Module):
        super().__init__()
        self.hf = hf_model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=tokens, use_cache=False).logits


def gpt2_like(model: nn.Module) -> nn.Module:
    """``GPT2LMHeadModel`` with the shape of one of our transformers: same width, depth, heads,
    MLP width, vocabulary, context and tied head; exact GELU and no dropout, as ours. Randomly
    initialised from a ``GPT2Config`` (nothing is downloaded). Needs ``pip install transformers``
    (the ``bench`` extra); raises ImportError without it."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=model.tok_emb.num_embeddings, n_positions=model.context_length, n_embd=model.d_model,
        n_layer=model.n_layer, n_head=model.n_head, n_inner=model.blocks[0].fc.out_features,
        activation_function="gelu", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False,
        tie_word_embeddings=True, bos_token_id=None, eos_token_id=None,
        attn_implementation="sdpa",  # the library's fast path, as ours uses
    )
    return LogitsOnly(GPT2LMHeadModel(config))
