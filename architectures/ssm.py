"""Selective state-space model in the Mamba-2 style, in pure PyTorch (runs on the CPU).

Each layer is a Mamba-2 mixer: input-dependent step sizes ``dt`` (the "selection"), a scalar
decay per head ``exp(dt * A)``, input and output maps ``B``, ``C`` computed from the token, a
short causal convolution before the scan and a SiLU gate after it. The recurrence per head,
with state ``h`` of shape (head_dim, d_state)::

    h_t = exp(dt_t * A) h_{t-1} + dt_t x_t B_t^T        y_t = h_t C_t + D x_t

is computed for training by the chunked "state-space duality" scan of Dao & Gu (2024): within a
chunk it is a masked, decayed attention-like product; between chunks only the chunk-end states
are carried. No custom kernels; ``ssd_scan`` is checked against the plain recurrence in the tests.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mnemoscope import Architecture, register_architecture


def ssd_scan(x: torch.Tensor, log_decay: torch.Tensor, b: torch.Tensor, c: torch.Tensor, chunk_size: int = 64):
    """The linear recurrence ``h_t = exp(log_decay_t) h_{t-1} + x_t b_t^T``, ``y_t = h_t c_t``, from h_{-1} = 0.

    Args:
        x: (B, T, H, P) inputs per head (already multiplied by the step size).
        log_decay: (B, T, H) log of the per-step decay, <= 0.
        b, c: (B, T, N) input and output maps, shared by the heads.
        chunk_size: tokens per chunk; cost is O(T * chunk_size) within chunks plus O((T / chunk_size)^2) across.
    Returns:
        y: (B, T, H, P).
    """
    Bsz, T, H, P = x.shape
    N = b.shape[-1]
    L = min(chunk_size, T)
    pad = (-T) % L
    if pad:  # zeros after the end: the scan is causal, so outputs before T are unchanged
        x, log_decay = F.pad(x, (0, 0, 0, 0, 0, pad)), F.pad(log_decay, (0, 0, 0, pad))
        b, c = F.pad(b, (0, 0, 0, pad)), F.pad(c, (0, 0, 0, pad))
    nc = (T + pad) // L
    x = x.view(Bsz, nc, L, H, P).permute(0, 3, 1, 2, 4)  # (B, H, nc, L, P)
    a_cum = log_decay.view(Bsz, nc, L, H).permute(0, 3, 1, 2).cumsum(-1)  # (B, H, nc, L) decay from chunk start
    b, c = b.view(Bsz, nc, L, N), c.view(Bsz, nc, L, N)

    # 1. within each chunk: y_i = sum_{j<=i} (c_i . b_j) exp(a_cum_i - a_cum_j) x_j
    causal = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
    decay = (a_cum[..., :, None] - a_cum[..., None, :]).masked_fill(~causal, float("-inf")).exp()  # (B, H, nc, L, L)
    scores = (c @ b.transpose(-1, -2))[:, None]  # (B, 1, nc, L, L)
    y = (scores * decay) @ x  # (B, H, nc, L, P)

    # 2. the state each chunk leaves behind from its own inputs
    to_end = (a_cum[..., -1:] - a_cum).exp()  # (B, H, nc, L)
    states = torch.einsum("bcln,bhcl,bhclp->bchpn", b, to_end, x)  # (B, nc, H, P, N)

    # 3. the state entering chunk k: sum_{j<k} exp(decay of chunks j+1 .. k-1) states_j
    cum = F.pad(a_cum[..., -1].cumsum(-1), (1, 0))  # (B, H, nc + 1): total decay of the chunks before k
    earlier = torch.ones(nc, nc, dtype=torch.bool, device=x.device).tril(-1)
    carry = (cum[..., :nc, None] - cum[..., None, 1:]).masked_fill(~earlier, float("-inf")).exp()  # (B, H, nc, nc)
    entering = torch.einsum("bhkj,bjhpn->bkhpn", carry, states)  # (B, nc, H, P, N)

    # 4. what the entering state contributes inside each chunk
    y = y + torch.einsum("bcln,bchpn,bhcl->bhclp", c, entering, a_cum.exp())
    return y.permute(0, 2, 3, 1, 4).reshape(Bsz, nc * L, H, P)[:, :T]


def heads_for(width: int, head_dim: int) -> int:
    """The number of heads nearest width / head_dim that divides width."""
    n = max(1, round(width / head_dim))
    while width % n:
        n -= 1
    return n


class MambaMixer(nn.Module):
    """Mamba-2 mixer: in_proj -> [gate z | causal conv -> (x, B, C) | dt] -> SSD scan -> gated RMSNorm -> out_proj."""

    def __init__(self, d_model: int, d_state: int, expand: int, head_dim: int, conv_kernel: int, chunk_size: int):
        super().__init__()
        d_inner = expand * d_model
        self.d_inner, self.d_state, self.chunk_size = d_inner, d_state, chunk_size
        self.n_head = heads_for(d_inner, head_dim)
        self.conv_dim = d_inner + 2 * d_state
        self.in_proj = nn.Linear(d_model, d_inner + self.conv_dim + self.n_head, bias=False)
        self.conv = nn.Conv1d(self.conv_dim, self.conv_dim, conv_kernel, groups=self.conv_dim)  # depthwise
        self.conv_pad = conv_kernel - 1
        # Mamba's initialisation: step sizes log-uniform in [1e-3, 1e-1], decay rates A uniform in [1, 16]
        dt = torch.exp(torch.empty(self.n_head).uniform_(math.log(1e-3), math.log(1e-1))).clamp_min(1e-4)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus
        self.A_log = nn.Parameter(torch.log(torch.empty(self.n_head).uniform_(1, 16)))
        self.D = nn.Parameter(torch.ones(self.n_head))  # skip connection around the scan
        self.norm = nn.RMSNorm(d_inner, eps=1e-5)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def forward(self, u):  # (B, T, C)
        Bsz, T, _ = u.shape
        z, xbc, dt = self.in_proj(u).split([self.d_inner, self.conv_dim, self.n_head], dim=-1)
        xbc = F.silu(self.conv(F.pad(xbc.transpose(1, 2), (self.conv_pad, 0))).transpose(1, 2))  # left pad: causal
        x, b, c = xbc.split([self.d_inner, self.d_state, self.d_state], dim=-1)
        x = x.reshape(Bsz, T, self.n_head, -1)  # (B, T, H, P)
        with torch.autocast(u.device.type, enabled=False):  # cumulative decays need fp32
            dt = F.softplus(dt.float() + self.dt_bias)  # (B, T, H)
            log_decay = -torch.exp(self.A_log) * dt  # (B, T, H), <= 0
            y = ssd_scan(x.float() * dt[..., None], log_decay, b.float(), c.float(), self.chunk_size)
            y = y + self.D[:, None] * x.float()
        y = y.reshape(Bsz, T, self.d_inner).to(z.dtype)
        return self.out_proj(self.norm(y * F.silu(z)))


class Block(nn.Module):
    def __init__(self, d_model: int, **mixer):
        super().__init__()
        self.ln = nn.LayerNorm(d_model)
        self.mixer = MambaMixer(d_model, **mixer)

    def forward(self, x):
        return x + self.mixer(self.ln(x))


@register_architecture("ssm")
class SSM(Architecture):
    """Selective state-space model (Mamba-2 style; chunked SSD scan in pure PyTorch).

    Non-embedding parameters ~ 6 * n_layer * d_model^2 with expand=2 (Mamba stacks mixers only,
    no MLP, so it takes about twice a transformer's depth at equal size).
    """

    width_key = "d_model"
    width_multiple = 8
    default_hparams = {"lr": 3e-3, "warmup_fraction": 0.02}
    extrapolates = True  # no positions: the recurrence runs on at any length
    shape_space = {"n_layer": [2, 3, 4, 6, 8]}  # depths `study.py tune` tries

    def __init__(self, vocab_size: int, context_length: int, d_model: int = 128, n_layer: int = 4,
                 d_state: int = 16, expand: int = 2, head_dim: int = 32, conv_kernel: int = 4, chunk_size: int = 64):
        super().__init__()
        self.d_model, self.n_layer = d_model, n_layer
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.blocks = nn.ModuleList(
            Block(d_model, d_state=d_state, expand=expand, head_dim=head_dim, conv_kernel=conv_kernel,
                  chunk_size=chunk_size)
            for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight  # tied
        nn.init.normal_(self.tok_emb.weight, std=0.02)
        for block in self.blocks:
            nn.init.normal_(block.mixer.in_proj.weight, std=0.02)
            nn.init.normal_(block.mixer.out_proj.weight, std=0.02 / math.sqrt(n_layer))  # residual scaled by depth

    @classmethod
    def shape_candidates(cls, target, context_length):
        preferred = 2 if target < 1e5 else 4 if target < 1e6 else 8 if target < 1e7 else 12
        for n_layer in (preferred, preferred + 1, preferred - 1, preferred + 2):
            if n_layer >= 1:
                yield {"n_layer": n_layer}

    def features(self, tokens: torch.Tensor) -> torch.Tensor:
        """The final hidden states (B, T, C): the logits are ``head(features(tokens))``."""
        x = self.tok_emb(tokens)  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x)  # (B, T, C)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(tokens))  # (B, T, V)

    def state_size(self, seq_len: int) -> int:
        m = self.blocks[0].mixer
        # per layer: the scan state (H * P * N = d_inner * d_state) and the conv's last k-1 inputs
        return self.n_layer * (m.d_inner * m.d_state + m.conv_pad * m.conv_dim)
