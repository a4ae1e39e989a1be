"""Hugging Face model families as architectures: ``--arch hf:FAMILY[:key=value,...]``.

``transformers`` builds Llama, GPT-2, Mamba, Mamba-2, RWKV, RecurrentGemma (Griffin), xLSTM and
hybrids such as Jamba, Bamba or Zamba2 from their configuration classes. Each family here is a
recipe: how its width (hidden size) sets its heads, head size and intermediate sizes, which
config key is its depth, and the depths to try per size. The model is built with random weights
by ``AutoModelForCausalLM.from_config``; nothing is downloaded: hub access is switched off before
``transformers`` is imported and ``from_pretrained`` is never called. ``transformers`` is an
optional extra (``pip install -e ".[hf]"``), imported only when an ``hf:`` architecture is used.

Config keys after the family pass through to its config class (``hf:llama:num_key_value_heads=1``);
a key the class does not take fails in one line naming the ones it does. Defaults that differ from
the library's are those the built-ins share: no dropout, a tied output head, no cache.
The input embedding, position table and output head are embedding parameters (left out of
``--params``), as for the built-ins.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import inspect
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from mnemoscope.errors import RegistryError, UserError
from mnemoscope.model import Architecture, check_contract, count_params, solve_width
from mnemoscope.registry import ARCHITECTURES
from mnemoscope.task import cache_root

PREFIX = "hf"
# keys every transformers config takes; not worth listing in an error message
_GENERIC_KEYS = {"transformers_version", "architectures", "output_hidden_states", "return_dict", "dtype",
                 "chunk_size_feed_forward", "is_encoder_decoder", "id2label", "label2id", "problem_type"}


def transformers():
    """The ``transformers`` module, imported with hub access off (no download, no hub kernels)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ["USE_HUB_KERNELS"] = "NO"
    try:
        import transformers as tf  # optional heavy dependency: the `hf` extra
    except ImportError as exc:
        raise UserError(f"hf: architectures need transformers ({exc}): pip install -e \".[hf]\"") from None
    return tf


# -- shapes ---------------------------------------------------------------------------------
def heads(width: int, head_dim: int = 32, even: bool = True) -> int:
    """The number of heads nearest ``width / head_dim`` that divides ``width`` (with an even head
    size where rotary positions need one, if the width allows)."""
    best = None
    for n in range(1, width + 1):
        if width % n or (even and (width // n) % 2 and width % 2 == 0):
            continue
        if best is None or abs(math.log(width / n / head_dim)) < abs(math.log(width / best / head_dim)):
            best = n
    return best or 1


def mult(x: float, m: int = 8) -> int:
    """``x`` rounded to a multiple of ``m`` (at least ``m``)."""
    return max(m, int(round(x / m)) * m)


def spaced(n_layer: int, period: int) -> list[int]:
    """Layers of a hybrid that get the rarer block: one per ``period`` layers, in the middle of each
    period, and at least one (the middle layer of a short stack)."""
    ids = [i for i in range(n_layer) if i % period == period // 2]
    return ids or [n_layer // 2]


def depth_schedule(steps: tuple[tuple[float, int], ...], last: int):
    """Depths to try at a size: the preferred depth for the size, then one more, one fewer, two more."""
    def candidates(target: float, minimum: int = 1) -> list[int]:
        preferred = next((d for bound, d in steps if target < bound), last)
        return [d for d in dict.fromkeys((preferred, preferred + 1, preferred - 1, preferred + 2)) if d >= minimum]
    return candidates


ATTENTION_DEPTHS = depth_schedule(((2e5, 2), (2e6, 4), (2e7, 6)), 8)  # the built-in transformer's
SSM_DEPTHS = depth_schedule(((1e5, 2), (1e6, 4), (1e7, 8)), 12)  # the built-in ssm's (no MLP: twice as deep)
SSM_HPARAMS = {"lr": 3e-3, "warmup_fraction": 0.02}  # the built-in ssm's


def attention(o: dict, width: int, key_heads="num_attention_heads", key_kv="num_key_value_heads",
              key_head_dim="head_dim", head_dim: int = 32) -> dict:
    """Heads of about ``head_dim`` dimensions (or as many as the options give), as many key/value
    heads (no grouping unless asked), and the head size where the family takes one."""
    h = o.get(key_heads) or heads(width, head_dim)
    out = {key_heads: h}
    if key_kv:
        out[key_kv] = o.get(key_kv, h)
    if key_head_dim:
        out[key_head_dim] = width // h
    return out


def mamba2_heads(width: int, expand: int = 2, head_dim: int = 32) -> tuple[int, int]:
    n = heads(expand * width, head_dim, even=False)
    return n, expand * width // n


# -- the families ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Family:
    model_type: str  # transformers' name, the FAMILY of hf:FAMILY
    doc: str  # one line for `study.py list`
    width: str  # the config key of the hidden size: --params solves for it
    depth: str  # the config key of the number of layers
    recipe: Callable[[int, int, int, dict], dict]  # (width, depth, context, options) -> config keys
    depths: Callable = ATTENTION_DEPTHS  # (target, minimum) -> depths to try, preferred first
    shape_space: tuple[int, ...] = (1, 2, 3, 4, 6)  # depths `study.py tune` tries
    min_depth: int = 1
    width_step: int = 2  # widths are multiples of this (even: rotary positions rotate pairs)
    extrapolates: bool = True  # False where positions are a learned table
    note: str = ""  # speed or caveat, shown by `study.py list`
    defaults: dict = field(default_factory=dict)  # settings that differ from the library's
    hparams: dict = field(default_factory=lambda: {"lr": 3e-3, "warmup_fraction": 0.05})  # the built-in transformer's


_FAMILIES = [
    Family("llama", "Llama: RMSNorm, rotary, SwiGLU MLP (8/3 x width), no biases", "hidden_size",
           "num_hidden_layers", lambda w, n, t, o: {
               **attention(o, w), "intermediate_size": mult(8 * w / 3), "max_position_embeddings": t}),
    Family("gpt2", "GPT-2: LayerNorm, learned positions, GELU MLP (4 x width)", "n_embd", "n_layer",
           lambda w, n, t, o: {**attention(o, w, "n_head", None, None), "n_inner": 4 * w, "n_positions": t},
           extrapolates=False, defaults={"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}),
    Family("mamba2", "Mamba-2: SSD scan (PyTorch path), heads of 32, state 16, as the built-in ssm", "hidden_size",
           "num_hidden_layers", lambda w, n, t, o: {
               "expand": 2, "num_heads": (m := mamba2_heads(w))[0], "head_dim": m[1], "n_groups": 1,
               "state_size": 16, "chunk_size": 64},
           depths=SSM_DEPTHS, shape_space=(2, 3, 4, 6, 8), hparams=SSM_HPARAMS),
    Family("mamba", "Mamba-1: selective scan, state 16", "hidden_size", "num_hidden_layers",
           lambda w, n, t, o: {"expand": 2, "state_size": 16}, depths=SSM_DEPTHS, shape_space=(2, 3, 4, 6, 8),
           hparams=SSM_HPARAMS, note="slow: its PyTorch path scans token by token (about 1/25 of Mamba-2's speed at "
                "100k parameters, context 256; use_mambapy=True with the mambapy package is faster)"),
    Family("falcon_mamba", "Falcon-Mamba: Mamba-1 with RMS-normalised B, C and dt", "hidden_size",
           "num_hidden_layers", lambda w, n, t, o: {"expand": 2, "state_size": 16}, depths=SSM_DEPTHS,
           shape_space=(2, 3, 4, 6, 8), hparams=SSM_HPARAMS, note="slow: Mamba-1's token-by-token PyTorch path"),
    Family("rwkv", "RWKV-4: time mixing (WKV recurrence) and channel mixing (4 x width)", "hidden_size",
           "num_hidden_layers", lambda w, n, t, o: {
               "attention_hidden_size": w, "intermediate_size": 4 * w, "context_length": t},
           defaults={"rescale_every": 0},  # no rescaling of the weights in eval mode: same model in both modes
           min_depth=2, shape_space=(2, 3, 4, 6),  # its initialisation divides by depth - 1
           note="its PyTorch WKV loops over tokens"),
    Family("recurrent_gemma", "RecurrentGemma (Griffin): 2 RG-LRU blocks per local-attention block",
           "hidden_size", "num_hidden_layers", lambda w, n, t, o: {
               # the MLP halves intermediate_size per branch: 6 x width gives Griffin's expansion of 3
               **attention(o, w, head_dim=64), "intermediate_size": 6 * w, "lru_width": w,
               "attention_window_size": min(t, 2048)},
           depths=depth_schedule(((2e6, 3), (2e7, 6)), 9), shape_space=(3, 4, 6, 9), min_depth=3,
           width_step=4),  # rotary positions on half of each head: a head size divisible by 4
    Family("xlstm", "xLSTM (mLSTM blocks, chunkwise PyTorch kernel), FFN 8/3 x width", "hidden_size",
           "num_hidden_layers", lambda w, n, t, o: {
               "embedding_dim": w, "num_blocks": n, "num_heads": o.get("num_heads") or heads(w // 2, 16),
               "ffn_round_up_to_multiple_of": 8, "chunk_size": min(64, t)},
           defaults={"use_cache": False}),  # a cache breaks the backward pass
    Family("bamba", "Bamba: Mamba-2 layers with an attention layer every 4, each with a SwiGLU MLP",
           "hidden_size", "num_hidden_layers", lambda w, n, t, o: {
               **attention(o, w, "num_attention_heads", "num_key_value_heads", None),
               "intermediate_size": mult(8 * w / 3), "mamba_n_heads": (m := mamba2_heads(w))[0],
               "mamba_d_head": m[1], "mamba_n_groups": 1, "mamba_d_state": 16, "mamba_chunk_size": 64,
               "attn_layer_indices": spaced(n, 4), "max_position_embeddings": t}),
    Family("zamba2", "Zamba2: Mamba-2 layers and one shared attention+MLP block every 6 layers",
           "hidden_size", "num_hidden_layers", lambda w, n, t, o: {
               "num_attention_heads": o.get("num_attention_heads") or heads(2 * w, 32),
               "num_key_value_heads": o.get("num_key_value_heads") or o.get("num_attention_heads") or heads(2 * w, 32),
               "n_mamba_heads": mamba2_heads(w)[0], "mamba_d_state": 16, "mamba_expand": 2, "chunk_size": 64,
               "intermediate_size": 4 * w, "adapter_rank": max(8, w // 8), "max_position_embeddings": t,
               "layers_block_type": ["hybrid" if i in spaced(n, 6) else "mamba" for i in range(n)]},
           defaults={"use_mamba_kernels": False}),
    Family("jamba", "Jamba: Mamba-1 layers, attention every 8, MoE (4 experts, top 2) every other MLP",
           "hidden_size", "num_hidden_layers", lambda w, n, t, o: {
               **attention(o, w, "num_attention_heads", "num_key_value_heads", None),
               "intermediate_size": mult(8 * w / 3), "num_experts": 4, "num_experts_per_tok": 2,
               "attn_layer_period": min(8, n), "attn_layer_offset": min(8, n) // 2, "mamba_d_state": 16,
               "max_position_embeddings": t},
           width_step=4,  # the experts' grouped matmul needs rows of 16 bytes
           defaults={"use_mamba_kernels": False}, note="slow: Mamba-1's token-by-token PyTorch path"),
    Family("mixtral", "Mixtral: Llama with 8 SwiGLU experts per layer, top 2", "hidden_size", "num_hidden_layers",
           lambda w, n, t, o: {**attention(o, w), "intermediate_size": mult(4 * w / 3), "num_local_experts": 8,
                               "num_experts_per_tok": 2, "max_position_embeddings": t},
           width_step=4),  # the experts' grouped matmul needs rows of 16 bytes
    Family("olmoe", "OLMoE: 8 small SwiGLU experts per layer, top 2, QK-norm", "hidden_size", "num_hidden_layers",
           lambda w, n, t, o: {**attention(o, w, "num_attention_heads", "num_key_value_heads", None),
                               "intermediate_size": mult(4 * w / 3), "num_experts": 8, "num_experts_per_tok": 2,
                               "max_position_embeddings": t},
           width_step=4),  # the experts' grouped matmul needs rows of 16 bytes
    Family("qwen3_next", "Qwen3-Next: 3 gated DeltaNet layers per gated-attention layer, MoE (8 experts, top 2, "
           "a shared expert)", "hidden_size", "num_hidden_layers", lambda w, n, t, o: {
               **attention(o, w, head_dim=64), "linear_num_key_heads": (k := heads(w, 32)),
               "linear_num_value_heads": 2 * k, "linear_key_head_dim": w // k, "linear_value_head_dim": w // k,
               "num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": mult(w / 2),
               "shared_expert_intermediate_size": mult(w / 2), "max_position_embeddings": t,
               "layer_types": ["full_attention" if i in spaced(n, 4) else "linear_attention" for i in range(n)]},
           width_step=8),  # rotary positions on a quarter of each head: a head size divisible by 8
    Family("lfm2", "LFM2: short gated convolutions with an attention layer every 3", "hidden_size",
           "num_hidden_layers", lambda w, n, t, o: {
               **attention(o, w, "num_attention_heads", "num_key_value_heads", None), "intermediate_size": 4 * w,
               "block_multiple_of": 8, "full_attn_idxs": spaced(n, 3), "max_position_embeddings": t}),
]
FAMILIES: dict[str, Family] = {f.model_type: f for f in _FAMILIES}
for _family in FAMILIES.values():
    _family.defaults.setdefault("tie_word_embeddings", True)  # as every built-in
    _family.defaults.setdefault("attention_dropout", 0.0)


def config_class(family: Family):
    return transformers().CONFIG_MAPPING[family.model_type]


@functools.cache
def valid_keys(model_type: str) -> tuple[str, ...]:
    """The keys a family's config class takes."""
    sig = inspect.signature(config_class(FAMILIES[model_type]).__init__)
    return tuple(k for k, p in sig.parameters.items() if k != "self" and p.kind is not p.VAR_KEYWORD)


def check_keys(family: Family, options: dict) -> None:
    keys = set(valid_keys(family.model_type))
    bad = sorted(set(options) - keys)
    if bad:
        shown = ", ".join(k for k in valid_keys(family.model_type) if k not in _GENERIC_KEYS)
        raise UserError(f"hf:{family.model_type} has no config key {', '.join(bad)} (its keys: {shown})")


# -- the architecture -----------------------------------------------------------------------
class HFArchitecture(Architecture):
    """A Hugging Face causal LM as an architecture: ``(B, T)`` ids -> ``(B, T, V)`` logits, no cache."""

    family: Family
    width_multiple = 8

    def __init__(self, vocab_size: int, context_length: int, **options: Any):
        super().__init__()
        f = self.family
        check_keys(f, options)
        width = options.pop(f.width, 64)
        depth = options.pop(f.depth, f.depths(0, f.min_depth)[0])
        config = {**f.defaults, **f.recipe(width, depth, context_length, options), **options,
                  f.width: width, f.depth: depth, "vocab_size": vocab_size}
        config.update({k: None for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in valid_keys(f.model_type)})
        tf = transformers()
        hf_logger = logging.getLogger("transformers")
        level = hf_logger.level
        hf_logger.setLevel(logging.ERROR)  # deprecation notes of keys set for older releases, fallbacks to PyTorch paths
        try:
            self.config = config_class(f)(**{k: v for k, v in config.items() if k in valid_keys(f.model_type)})
            self.hf = tf.AutoModelForCausalLM.from_config(self.config, dtype=torch.float32)
        finally:
            hf_logger.setLevel(level)
        head, emb = self.hf.get_output_embeddings(), self.hf.get_input_embeddings()
        if self.config.tie_word_embeddings and head is not None and head.weight is not emb.weight:
            head.weight = emb.weight  # a family that does not tie by itself (xLSTM)
        self.width, self.depth = width, depth

    @classmethod
    def shape_candidates(cls, target, context_length):
        for depth in cls.family.depths(target, cls.family.min_depth):
            yield {cls.family.depth: depth}

    @classmethod
    def config_for_params(cls, target, vocab_size, context_length, **fixed):
        """The built-ins' width solver, after checking the config keys given."""
        check_keys(cls.family, fixed)
        return solve_width(cls, target, vocab_size, context_length, fixed)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=tokens, use_cache=False).logits  # (B, T, V)

    def embedding_parameters(self):
        """The output head (the same tensor as the input embedding when tied); nn.Embedding
        tables (tokens, GPT-2's positions) are left out of the count anyway."""
        head = self.hf.get_output_embeddings()
        return [head.weight] if head is not None else []

    def num_active_params(self, non_embedding: bool = True) -> int:
        """Parameters one token uses: a mixture of experts' experts count top-k / n_experts."""
        total = self.num_params(non_embedding)
        for mod in self.hf.modules():
            n = getattr(mod, "num_experts", None)
            if type(mod).__name__.endswith("Experts") and n:
                k = getattr(self.config, "num_experts_per_tok", n)
                total -= round(sum(p.numel() for p in mod.parameters(recurse=False)) * (1 - k / n))
        return total


@functools.cache
def family_class(name: str) -> type:
    """The architecture class of ``hf:name`` (one class per family, made once)."""
    family = FAMILIES.get(name)
    if family is None:
        raise RegistryError(f"unknown Hugging Face family {name!r} (families: {', '.join(sorted(FAMILIES))})")
    cls = type(f"HF_{name}", (HFArchitecture,), {
        "family": family, "width_key": family.width, "width_step": family.width_step,
        "default_hparams": dict(family.hparams),
        "extrapolates": family.extrapolates,
        "shape_space": {family.depth: list(family.shape_space)},
        "__doc__": f"{family.doc} (transformers){'; ' + family.note if family.note else ''}",
        "__module__": __name__})
    cls.registered_name = f"{PREFIX}:{name}"
    return cls


# -- which families this installation can build -----------------------------------------------
def check_family(name: str) -> str:
    """'' if a tiny model of the family builds, passes the contract check and trains one step here,
    else why not (one line)."""
    cls = family_class(name)
    try:
        torch.manual_seed(0)
        model = cls(vocab_size=11, context_length=16, **{cls.width_key: 16, cls.family.depth: cls.family.min_depth})
        check_contract(model, 11, 16, cls.registered_name)
        model(torch.randint(0, 11, (1, 16))).square().mean().backward()
        return ""
    except Exception as exc:  # whatever the library raises, shown as one line
        return " ".join(f"{type(exc).__name__}: {exc}".split())[:300]


def installed_version() -> str | None:
    """transformers' version, or None where it is not installed (read without importing it)."""
    try:
        return importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        return None


def available() -> dict[str, str]:
    """Family -> '' (builds here) or why not. Checked once per installation (transformers and torch
    versions, this file) and cached under the data cache."""
    stamp = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]
    path = cache_root() / f"hf-families-{installed_version()}-{torch.__version__}-{stamp}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    status = {name: check_family(name) for name in FAMILIES}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(status, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache: check again next time
    return status


def listing() -> list[tuple[str, str]]:
    """(name, line) per family for `study.py list`: what it is, and whether it can run here."""
    version = installed_version()
    if version is None:
        return [(f"{PREFIX}:FAMILY", f"Hugging Face families ({', '.join(sorted(FAMILIES))}): "
                                     "need transformers, pip install -e \".[hf]\"")]
    status = available()
    return [(f"{PREFIX}:{name}", f"{f.doc}{'; ' + f.note if f.note else ''}  [transformers {version}"
             + (f"; cannot run here: {status[name]}]" if status.get(name) else "]"))
            for name, f in sorted(FAMILIES.items())]


ARCHITECTURES.add_prefix(PREFIX, family_class, listing)
