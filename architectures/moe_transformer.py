"""The transformer with a mixture of experts in place of each MLP (Switch / Mixtral style).

A linear router scores ``n_expert`` small GELU MLPs per token; the token goes to its ``top_k``
best, whose outputs are summed with the router's softmax weights renormalised over the chosen
ones. There is no capacity limit, so no token is dropped and batch rows never influence each
other. Routing is balanced by the Switch Transformer's auxiliary loss (coefficient
``balance_coef``), added to the gradient during training through ``AddAuxiliaryLoss`` (as in
DeepSeek-MoE), so the harness's loss needs no change.

Each expert's hidden width is ``expert_ratio * d_model`` (default 2): with top_k=2 a token
passes through as many MLP weights as in the dense transformer's 4x MLP. Size matching counts
ALL parameters (``num_params``), as for every architecture; ``num_active_params`` counts those
one token uses. Everything else (attention, embeddings, depth schedule) is
``architectures.transformer``'s.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mnemoscope.architectures.transformer import CausalSelfAttention, Transformer
from mnemoscope import register_architecture


class AddAuxiliaryLoss(torch.autograd.Function):
    """Identity on ``x`` whose backward also sends gradient 1 into ``loss``: adds ``loss`` to the objective."""

    @staticmethod
    def forward(ctx, x, loss):
        ctx.dtype = loss.dtype
        return x

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output, torch.ones((), dtype=ctx.dtype, device=grad_output.device)


class MoE(nn.Module):
    def __init__(self, d_model: int, n_expert: int, top_k: int, hidden: int, balance_coef: float):
        super().__init__()
        if not 1 <= top_k <= n_expert:
            raise ValueError(f"top_k={top_k} must be between 1 and n_expert={n_expert}")
        self.n_expert, self.top_k, self.balance_coef = n_expert, top_k, balance_coef
        self.router = nn.Linear(d_model, n_expert, bias=False)
        # experts as stacked weights: (E, C, hidden) and (E, hidden, C)
        self.w_in = nn.Parameter(torch.empty(n_expert, d_model, hidden))
        self.b_in = nn.Parameter(torch.zeros(n_expert, hidden))
        self.w_out = nn.Parameter(torch.empty(n_expert, hidden, d_model))
        self.b_out = nn.Parameter(torch.zeros(n_expert, d_model))

    def forward(self, x):  # (B, T, C)
        B, T, C = x.shape
        flat = x.reshape(B * T, C)  # (N, C)
        probs = self.router(flat).float().softmax(-1)  # (N, E)
        weight, expert = probs.topk(self.top_k, dim=-1)  # (N, k)
        weight = weight / weight.sum(-1, keepdim=True)
        # dispatch: sort the N * k (token, expert) pairs by expert, run each expert on its slice
        order = expert.flatten().argsort(stable=True)
        token = order // self.top_k  # (N * k,) which token each sorted pair belongs to
        counts = torch.bincount(expert.flatten(), minlength=self.n_expert).tolist()
        out = torch.zeros_like(flat)
        start = 0
        for e, n in enumerate(counts):
            if n == 0:
                continue
            idx = token[start:start + n]
            h = F.gelu(flat[idx] @ self.w_in[e] + self.b_in[e]) @ self.w_out[e] + self.b_out[e]  # (n, C)
            w = weight.flatten()[order[start:start + n]]
            out.index_add_(0, idx, (h * w[:, None]).to(out.dtype))
            start += n
        out = out.view(B, T, C)
        if self.training and self.balance_coef > 0 and torch.is_grad_enabled():
            # Switch loss: E * sum_e (fraction of assignments to e) * (mean router prob of e); 1 when uniform
            load = torch.tensor(counts, dtype=probs.dtype, device=x.device) / (B * T * self.top_k)
            balance = self.n_expert * (load * probs.mean(0)).sum()
            out = AddAuxiliaryLoss.apply(out, self.balance_coef * balance)
        return out


class MoEBlock(nn.Module):
    def __init__(self, d_model: int, n_head: int, **moe):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_head)
        self.ln2 = nn.LayerNorm(d_model)
        self.moe = MoE(d_model, **moe)

    def forward(self, x, rotary=None, attn_mask=None):  # the dense Block's signature
        x = x + self.attn(self.ln1(x), rotary, attn_mask)
        return x + self.moe(self.ln2(x))


@register_architecture("moe_transformer")
class MoETransformer(Transformer):
    """Transformer with top-k routed expert MLPs (default 8 experts, top 2); reports active and total params."""

    version = None  # GPT-2's attention (no convolution), as before the transformer's version 2
    shape_space = {"n_layer": [1, 2, 3, 4, 6]}  # depths `study.py tune` tries, as for the transformer

    def __init__(self, vocab_size: int, context_length: int, d_model: int = 128, n_layer: int = 4,
                 n_head: int | None = None, n_expert: int = 8, top_k: int = 2, expert_ratio: int = 2,
                 balance_coef: float = 0.01, pos: str = "rotary"):
        # the transformer's embeddings, positions, final norm and forward; blocks replaced below
        super().__init__(vocab_size, context_length, d_model=d_model, n_layer=0, n_head=n_head, pos=pos, conv=0)
        self.n_layer, self.n_expert, self.top_k = n_layer, n_expert, top_k
        self.blocks = nn.ModuleList(
            MoEBlock(d_model, self.n_head, n_expert=n_expert, top_k=top_k, hidden=expert_ratio * d_model,
                     balance_coef=balance_coef)
            for _ in range(n_layer))
        for block in self.blocks:
            block.apply(self._init)
            moe = block.moe
            nn.init.normal_(moe.w_in, std=0.02)
            nn.init.normal_(moe.w_out, std=0.02 / math.sqrt(2 * n_layer))  # residual projections, as GPT-2
            nn.init.normal_(block.attn.proj.weight, std=0.02 / math.sqrt(2 * n_layer))

    def num_active_params(self, non_embedding: bool = True) -> int:
        """Parameters one token passes through: all but the (n_expert - top_k) experts it skips, per layer."""
        skipped = sum((self.n_expert - self.top_k) * (p.numel() // self.n_expert)
                      for block in self.blocks for p in (block.moe.w_in, block.moe.b_in, block.moe.w_out, block.moe.b_out))
        return self.num_params(non_embedding) - skipped
