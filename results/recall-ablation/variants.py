"""GPT-2's decoder (``transformer_gpt2``) with one switch per part that differs from Llama's, and
Primer's convolutions: the architectures of the recall ablation (``ablate.py``; README).

``Switched`` is ``transformer_gpt2`` when every switch is at its default (same blocks, init and
rotary positions); each switch moves one part: ``norm="rms"`` (RMSNorm), ``mlp="swiglu"`` (SwiGLU,
8/3 x width), ``bias=False`` (no biases), ``init="llama"`` (every linear N(0, 0.02), no GPT-2
scaling of the residual projections), ``shift=3`` (a depthwise causal convolution over the last 3
positions of q, k and v: the built-in ``transformer``'s), ``qknorm=True`` (RMS-normalised queries
and keys with a learned temperature). The rotary layout is not a switch: interleaved pairs and
Llama's half split differ by a fixed permutation of each head's dimensions, which the freshly
initialised q and k projections (i.i.d. entries) absorb, so the two are the same distribution of
models.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn
from mnemoscope.architectures.transformer import Transformer, apply_rotary, rotary_tables


class RMSNorm(nn.Module):
    def __init__(self, d, eps=1e-6):
        super().__init__(); self.weight = nn.Parameter(torch.ones(d)); self.eps = eps
    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Attn(nn.Module):
    def __init__(self, d, h, bias, shift, qknorm):
        super().__init__()
        self.h = h; self.qkv = nn.Linear(d, 3 * d, bias=bias); self.proj = nn.Linear(d, d, bias=bias)
        self.shift = shift
        if shift:  # causal depthwise conv on q, k, v (Primer's multi-dconv-head attention)
            self.conv = nn.Conv1d(3 * d, 3 * d, shift, groups=3 * d, padding=shift - 1)
        self.qknorm = qknorm
        if qknorm:
            self.qn = RMSNorm(d // h); self.kn = RMSNorm(d // h)
            self.scale = nn.Parameter(torch.tensor(math.log(10.0)))
    def forward(self, x, rotary):
        B, T, C = x.shape
        qkv = self.qkv(x)
        if self.shift:
            qkv = self.conv(qkv.transpose(1, 2))[..., :T].transpose(1, 2)
        q, k, v = qkv.split(C, 2)
        q, k, v = (t.view(B, T, self.h, C // self.h).transpose(1, 2) for t in (q, k, v))
        if self.qknorm:
            q, k = self.qn(q), self.kn(k)
        q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        if self.qknorm:
            y = F.scaled_dot_product_attention(q * self.scale.exp(), k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class Blk(nn.Module):
    def __init__(self, d, h, norm, mlp, bias, shift, qknorm):
        super().__init__()
        N = (lambda: nn.LayerNorm(d, bias=bias)) if norm == "ln" else (lambda: RMSNorm(d))
        self.n1, self.n2 = N(), N()
        self.attn = Attn(d, h, bias, shift, qknorm)
        self.mlp = mlp
        if mlp == "gelu":
            self.fc = nn.Linear(d, 4 * d, bias=bias); self.proj = nn.Linear(4 * d, d, bias=bias)
        else:
            hid = int(round(8 * d / 3 / 8)) * 8
            self.fc = nn.Linear(d, 2 * hid, bias=bias); self.proj = nn.Linear(hid, d, bias=bias)
    def forward(self, x, rotary):
        x = x + self.attn(self.n1(x), rotary)
        h = self.fc(self.n2(x))
        if self.mlp == "gelu":
            h = F.gelu(h)
        else:
            a, b = h.chunk(2, -1); h = F.silu(a) * b
        return x + self.proj(h)


class Switched(Transformer):
    version = None
    def __init__(self, vocab_size, context_length, d_model=128, n_layer=4, n_head=None, norm="ln", mlp="gelu",
                 bias=True, init="gpt2", shift=0, qknorm=False, emb_std=0.02):
        nn.Module.__init__(self)
        n_head = n_head or self.heads_for(d_model)
        self.context_length, self.d_model, self.n_layer, self.n_head, self.pos = context_length, d_model, n_layer, n_head, "rotary"
        self.extrapolates = True
        self.tok_emb = nn.Embedding(vocab_size, d_model); self.pos_emb = None
        self.blocks = nn.ModuleList(Blk(d_model, n_head, norm, mlp, bias, shift, qknorm) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model, bias=bias) if norm == "ln" else RMSNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False); self.head.weight = self.tok_emb.weight
        self.apply(self._init)
        nn.init.normal_(self.tok_emb.weight, std=emb_std)
        if init == "gpt2":
            for b in self.blocks:
                for lin in (b.attn.proj, b.proj):
                    nn.init.normal_(lin.weight, std=0.02 / math.sqrt(2 * n_layer))
    def features(self, tokens, attn_mask=None):
        B, T = tokens.shape
        x = self.tok_emb(tokens)
        rot = rotary_tables(T, self.d_model // self.n_head, tokens.device)
        for b in self.blocks:
            x = b(x, rot)
        return self.ln_f(x)

