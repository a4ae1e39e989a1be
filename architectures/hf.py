"""Hugging Face model families as architectures: ``--arch hf:FAMILY[:key=value,...]``.

Every family for which ``transformers`` has a causal language model (its auto mapping) is offered.
Fifteen have a recipe written here (FAMILIES: Llama, GPT-2, the Mamba and RWKV recurrences, the
hybrids): how the width (hidden size) sets heads, head size and intermediate sizes, which config
key is the depth, the depths to try per size and the smallest stack that keeps a hybrid's layer
mix. Every other family gets the generic recipe of ``hf_sizing.py``, which scales the family's own
default configuration down to the width and depth asked for. The model is built with random weights
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

import difflib
import functools
import hashlib
import importlib.metadata
import inspect
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from mnemoscope.errors import RegistryError, UserError
from mnemoscope.contract.model import Architecture, check_contract
from mnemoscope.registry import ARCHITECTURES
from mnemoscope.contract.task import cache_root

from .hf_sizing import (ATTENTION_DEPTHS, SSM_DEPTHS, attention, depth_schedule, describe, generic_recipe, heads,
                        has_position_table, in_periods, layer_types, mamba2_heads, mult, period_of, repeat,
                        solve, spaced)

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


SSM_HPARAMS = {"lr": 3e-3, "warmup_fraction": 0.02}  # the built-in ssm's


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
    alias: str | None = None  # the family whose config class builds it (a multimodal model's text model)
    pattern: tuple[str, ...] = ()  # a hybrid's layer types, one period: its smallest stack that keeps the mix
    mlp: str | None = "intermediate_size"  # the MLP (or expert) width the solver may adjust; None: none

    @property
    def config_type(self) -> str:
        return self.alias or self.model_type


QWEN3_NEXT = ("linear_attention",) * 3 + ("full_attention",)  # the library's layout: attention closes each 4
LFM2 = ("conv", "conv", "full_attention")  # LFM2's attention layers come about one in three
_FAMILIES = [
    Family("llama", "Llama: RMSNorm, rotary, SwiGLU MLP (8/3 x width), no biases", "hidden_size",
           "num_hidden_layers", lambda w, n, t, o: {
               **attention(o, w), "intermediate_size": mult(8 * w / 3), "max_position_embeddings": t}),
    Family("gpt2", "GPT-2: LayerNorm, learned positions, GELU MLP (4 x width)", "n_embd", "n_layer",
           lambda w, n, t, o: {**attention(o, w, "n_head", None, None), "n_inner": 4 * w, "n_positions": t},
           extrapolates=False, mlp="n_inner", defaults={"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}),
    Family("mamba2", "Mamba-2: SSD scan (PyTorch path), heads of 32, state 16, as the built-in ssm", "hidden_size",
           "num_hidden_layers", lambda w, n, t, o: {
               "expand": 2, "num_heads": (m := mamba2_heads(w))[0], "head_dim": m[1], "n_groups": 1,
               "state_size": 16, "chunk_size": 64},
           depths=SSM_DEPTHS, shape_space=(2, 3, 4, 6, 8), hparams=SSM_HPARAMS, mlp=None),
    Family("mamba", "Mamba-1: selective scan, state 16", "hidden_size", "num_hidden_layers",
           lambda w, n, t, o: {"expand": 2, "state_size": 16}, depths=SSM_DEPTHS, shape_space=(2, 3, 4, 6, 8),
           hparams=SSM_HPARAMS, mlp=None, note="slow: its PyTorch path scans token by token (about 1/25 of Mamba-2's speed at "
                "100k parameters, context 256; use_mambapy=True with the mambapy package is faster)"),
    Family("falcon_mamba", "Falcon-Mamba: Mamba-1 with RMS-normalised B, C and dt", "hidden_size",
           "num_hidden_layers", lambda w, n, t, o: {"expand": 2, "state_size": 16}, depths=SSM_DEPTHS,
           shape_space=(2, 3, 4, 6, 8), hparams=SSM_HPARAMS, mlp=None, note="slow: Mamba-1's token-by-token PyTorch path"),
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
           defaults={"use_cache": False}, mlp=None),  # a cache breaks the backward pass
    Family("bamba", "Bamba: Mamba-2 layers with an attention layer every 4, each with a SwiGLU MLP",
           "hidden_size", "num_hidden_layers", lambda w, n, t, o: {
               **attention(o, w, "num_attention_heads", "num_key_value_heads", None),
               "intermediate_size": mult(8 * w / 3), "mamba_n_heads": (m := mamba2_heads(w))[0],
               "mamba_d_head": m[1], "mamba_n_groups": 1, "mamba_d_state": 16, "mamba_chunk_size": 64,
               "attn_layer_indices": spaced(n, 4), "max_position_embeddings": t},
           min_depth=2, shape_space=(2, 3, 4, 6)),  # the smallest stack with both kinds
    Family("zamba2", "Zamba2: Mamba-2 layers and one shared attention+MLP block every 6 layers",
           "hidden_size", "num_hidden_layers", lambda w, n, t, o: {
               "num_attention_heads": o.get("num_attention_heads") or heads(2 * w, 32),
               "num_key_value_heads": o.get("num_key_value_heads") or o.get("num_attention_heads") or heads(2 * w, 32),
               "n_mamba_heads": mamba2_heads(w)[0], "mamba_d_state": 16, "mamba_expand": 2, "chunk_size": 64,
               "intermediate_size": 4 * w, "adapter_rank": max(8, w // 8), "max_position_embeddings": t,
               "layers_block_type": ["hybrid" if i in spaced(n, 6) else "mamba" for i in range(n)]},
           defaults={"use_mamba_kernels": False}, min_depth=2, shape_space=(2, 3, 4, 6)),
    Family("jamba", "Jamba: Mamba-1 layers, attention every 8, MoE (4 experts, top 2) every other MLP",
           "hidden_size", "num_hidden_layers", lambda w, n, t, o: {
               **attention(o, w, "num_attention_heads", "num_key_value_heads", None),
               "intermediate_size": mult(8 * w / 3), "num_experts": 4, "num_experts_per_tok": 2,
               "attn_layer_period": min(8, n), "attn_layer_offset": min(8, n) // 2, "mamba_d_state": 16,
               "max_position_embeddings": t},
           width_step=4,  # the experts' grouped matmul needs rows of 16 bytes
           defaults={"use_mamba_kernels": False}, min_depth=2, shape_space=(2, 3, 4, 6),
           note="slow: Mamba-1's token-by-token PyTorch path"),
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
               "layer_types": repeat(QWEN3_NEXT, n)},
           width_step=8, pattern=QWEN3_NEXT, depths=in_periods(ATTENTION_DEPTHS, 4), min_depth=4,
           shape_space=(4, 8), mlp="moe_intermediate_size"),  # rotary on a quarter of each head: head size % 8 == 0
    Family("lfm2", "LFM2: short gated convolutions, 2 per attention layer", "hidden_size",
           "num_hidden_layers", lambda w, n, t, o: {
               **attention(o, w, "num_attention_heads", "num_key_value_heads", None), "intermediate_size": 4 * w,
               "block_multiple_of": 8, "full_attn_idxs": [i for i in range(n) if LFM2[i % 3] == "full_attention"],
               "max_position_embeddings": t},
           pattern=LFM2, depths=in_periods(ATTENTION_DEPTHS, 3), min_depth=3, shape_space=(3, 6, 9)),
]
FAMILIES: dict[str, Family] = {f.model_type: f for f in _FAMILIES}
for _family in FAMILIES.values():
    _family.defaults.setdefault("tie_word_embeddings", True)  # as every built-in
    _family.defaults.setdefault("attention_dropout", 0.0)


def config_class(family: Family):
    return transformers().CONFIG_MAPPING[family.config_type]


@functools.cache
def valid_keys(model_type: str) -> tuple[str, ...]:
    """The keys a family's config class takes."""
    sig = inspect.signature(transformers().CONFIG_MAPPING[model_type].__init__)
    return tuple(k for k, p in sig.parameters.items() if k != "self" and p.kind is not p.VAR_KEYWORD)


def check_keys(family: Family, options: dict) -> None:
    keys = set(valid_keys(family.config_type)) | {"layer_types"}  # layer_types: recorded for every hybrid
    bad = sorted(set(options) - keys)
    if bad:
        shown = ", ".join(k for k in valid_keys(family.config_type) if k not in _GENERIC_KEYS)
        raise UserError(f"hf:{family.model_type} has no config key {', '.join(bad)} (its keys: {shown})")


# -- every causal family of the installed transformers -------------------------------------------
@functools.cache
def causal_families() -> tuple[str, ...]:
    """The model types transformers builds a causal language model for (its auto mapping)."""
    transformers()
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    return tuple(sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES))


@functools.cache
def family(name: str) -> Family:
    """The recipe of ``hf:name``: a hand-written one (FAMILIES), else the generic recipe from the
    family's default configuration (architectures/hf_sizing.py). Raises RegistryError for a name
    that is not a causal family here, or one whose configuration cannot be read, in one line."""
    try:
        return _family(name)
    except RegistryError:
        raise
    except Exception as exc:  # a configuration the generic recipe cannot read
        raise RegistryError(f"hf:{name} cannot be sized here: " + " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
                            + "; a plugin of your own can build it") from None


def _family(name: str) -> Family:
    if name in FAMILIES:
        return FAMILIES[name]
    tf = transformers()
    if name not in causal_families():
        if name in tf.CONFIG_MAPPING:
            raise RegistryError(f"hf:{name} is not a causal language model (transformers has no causal-LM class for "
                                f"it: an encoder or an encoder-decoder); train it through a plugin of your own, "
                                f"--arch my_model.py:MyModel (docs/architectures.md)")
        close = difflib.get_close_matches(name, causal_families(), n=3, cutoff=0.6)
        raise RegistryError(f"unknown Hugging Face family {name!r}" + (f"; did you mean {' or '.join(close)}?" if close
                            else f" (families with recipes of their own: {', '.join(sorted(FAMILIES))}; "
                            f"{len(causal_families())} causal families in all: `study.py list` shows them)"))
    config = tf.CONFIG_MAPPING[name]
    subs = list(getattr(config, "sub_configs", {}) or {})
    if "text_config" in subs and f"{name}_text" in causal_families():
        text = family(f"{name}_text")  # a multimodal model's language model
        return Family(name, f"the language model of {name} (= hf:{name}_text): {text.doc}", **{
            k: getattr(text, k) for k in ("width", "depth", "recipe", "depths", "shape_space", "min_depth",
                                          "width_step", "defaults", "pattern", "mlp")}, alias=text.model_type)
    if any("vision" in k or "audio" in k for k in subs):
        raise RegistryError(f"hf:{name} builds its {' and '.join(k for k in subs if 'vision' in k or 'audio' in k)} "
                            "encoders at their full size: not sized here; a plugin of your own can build it")
    c0, keys = config(), valid_keys(name)
    attribute_map = getattr(config, "attribute_map", {}) or {}
    width, depth = (attribute_map.get(k, k) for k in ("hidden_size", "num_hidden_layers"))
    if width not in keys or depth not in keys:
        raise RegistryError(f"hf:{name} cannot be sized here: its configuration has no {width} and {depth} of its own"
                            + (f" (it nests {', '.join(subs)})" if subs else "") + "; a plugin of your own can build it")
    pattern = period_of(getattr(c0, "layer_types", None) or [])
    recipe, ratio, group = generic_recipe(config, keys, width, depth, pattern)
    heads_doc = "heads of 32" + (f", {group} per key/value head" if group > 1 else "")
    mlp_doc = f", MLP {ratio:.3g} x width" if ratio else ""
    defaults = {k: v for k, v in (("is_decoder", True), ("use_cache", False), ("add_cross_attention", False))
                if k in keys}
    defaults.update({k: getattr(c0, k, None) for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in keys})
    return Family(name, f"{tf.models.auto.modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[name]} with the library's "
                  f"defaults scaled down ({heads_doc}{mlp_doc})", width, depth, recipe,
                  depths=in_periods(ATTENTION_DEPTHS, len(pattern)), min_depth=max(1, len(pattern)),
                  shape_space=tuple(sorted({len(pattern) * k for k in (1, 2, 3, 4)})) if pattern else (1, 2, 3, 4, 6),
                  defaults={**defaults, "tie_word_embeddings": True, "attention_dropout": 0.0}, pattern=pattern,
                  mlp="intermediate_size" if "intermediate_size" in keys and ratio else None,
                  width_step=4 if any(k in keys for k in ("num_experts", "num_local_experts", "n_routed_experts")) else 2)


# -- the architecture -----------------------------------------------------------------------
class HFArchitecture(Architecture):
    """A Hugging Face causal LM as an architecture: ``(B, T)`` ids -> ``(B, T, V)`` logits, no cache."""

    family: Family
    width_multiple = 8

    def __init__(self, vocab_size: int, context_length: int, **options: Any):
        super().__init__()
        f = self.family
        check_keys(f, options)
        self.config = self.make_config(vocab_size, context_length, options)
        hf_logger = logging.getLogger("transformers")
        level = hf_logger.level
        hf_logger.setLevel(logging.ERROR)  # deprecation notes of keys set for older releases, fallbacks to PyTorch paths
        try:
            self.hf = transformers().AutoModelForCausalLM.from_config(self.config, dtype=torch.float32)
        finally:
            hf_logger.setLevel(level)
        head, emb = self.hf.get_output_embeddings(), self.hf.get_input_embeddings()
        if getattr(self.config, "tie_word_embeddings", False) and head is not None and head.weight is not emb.weight:
            head.weight = emb.weight  # a family that does not tie by itself (xLSTM)
        self.width, self.depth = getattr(self.config, f.width), getattr(self.config, f.depth)
        self.layer_types = layer_types(self.config)

    @classmethod
    def make_config(cls, vocab_size: int, context_length: int, options: dict):
        """The family's config object for these options (the recipe's keys, then the options')."""
        f, options = cls.family, dict(options)
        keys = valid_keys(f.config_type)
        width = options.pop(f.width, 64)
        depth = options.pop(f.depth, f.depths(0, f.min_depth)[0])
        if depth < max(1, len(f.pattern)) or width < 1:
            raise UserError(f"{cls.registered_name}: {f.depth}={depth}, {f.width}={width}: it needs a positive width and "
                            f"at least {max(1, len(f.pattern))} layer(s)" + (f" ({describe(f.pattern)})" if f.pattern else ""))
        recorded = options.pop("layer_types", None) if "layer_types" not in keys else None
        config = {**f.defaults, **f.recipe(width, depth, context_length, options), **options,
                  f.width: width, f.depth: depth, "vocab_size": vocab_size}
        config.update({k: vocab_size for k in keys if "vocab_size" in k and k not in ("vocab_size", "type_vocab_size")})
        for k in ("bos_token_id", "eos_token_id", "pad_token_id"):  # no special tokens (a generic family keeps
            v = config.get(k)  # the ids within the vocabulary: some need one, 0 where its own is not)
            if k in keys and (f.model_type in FAMILIES or not isinstance(v, int) or not 0 <= v < vocab_size):
                config[k] = None if f.model_type in FAMILIES or v is None else 0
        hf_logger = logging.getLogger("transformers")
        level = hf_logger.level
        hf_logger.setLevel(logging.ERROR)
        try:
            out = config_class(f)(**{k: v for k, v in config.items() if k in keys})
        finally:
            hf_logger.setLevel(level)
        if recorded is not None and list(recorded) != layer_types(out):
            raise UserError(f"{cls.registered_name} sets its layer types from its own keys, not layer_types: "
                            f"{recorded} differs from the {layer_types(out)} they give")
        return out

    @classmethod
    def shape_candidates(cls, target, context_length):
        for depth in cls.family.depths(target, cls.family.min_depth):
            yield {cls.family.depth: depth}

    @classmethod
    def config_for_params(cls, target, vocab_size, context_length, **fixed):
        """The width (and, where that is not enough, MLP width) for ``target`` at the family's
        preferred depths (hf_sizing.solve); a hybrid's layer types are recorded in the config."""
        check_keys(cls.family, fixed)
        config = solve(cls, target, vocab_size, context_length, fixed)
        types = layer_types(cls.make_config(vocab_size, context_length, config))
        if len(set(types)) > 1:
            config["layer_types"] = types
        return config

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=tokens, use_cache=False).logits  # (B, T, V)

    def state_size(self, seq_len: int) -> int | None:
        """Numbers in the cache transformers returns after ``seq_len`` tokens of one sequence (keys
        and values for attention, convolution and scan states for Mamba, RWKV's state), counted
        from one forward pass; None where the family returns none (RecurrentGemma) or fails to (xLSTM)."""
        training = self.training
        try:
            with torch.no_grad():
                out = self.eval().hf(input_ids=torch.zeros(1, seq_len, dtype=torch.long), use_cache=True)
        except Exception:  # a family whose cache path fails here: unknown, as for any architecture that does not say
            return None
        finally:
            self.train(training)
        n = _numbers([v for k, v in out.items() if k != "logits"], set())
        return n or None

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


def _numbers(obj, seen: set[int]) -> int:
    """Numbers in the tensors an object holds (lists, dicts and a cache object's attributes), each tensor once."""
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return obj.numel()
    if isinstance(obj, dict):
        return sum(_numbers(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_numbers(v, seen) for v in obj)
    if hasattr(obj, "__dict__") and not isinstance(obj, (torch.nn.Module, type)):
        return sum(_numbers(v, seen) for v in vars(obj).values())
    return 0


@functools.cache
def family_class(name: str) -> type:
    """The architecture class of ``hf:name`` (one class per family, made once)."""
    f = family(name)
    cls = type(f"HF_{name}", (HFArchitecture,), {
        "family": f, "width_key": f.width, "width_step": f.width_step,
        "default_hparams": dict(f.hparams),
        "extrapolates": f.extrapolates,
        "shape_space": {f.depth: list(f.shape_space)},
        "__doc__": f"{f.doc} (transformers){'; ' + f.note if f.note else ''}",
        "__module__": __name__})
    cls.registered_name = f"{PREFIX}:{name}"
    if name not in FAMILIES:
        cls.extrapolates = not has_position_table(cls)
    return cls


# -- which families this installation can build -----------------------------------------------
def check_family(name: str) -> str:
    """'' if a tiny model of the family builds, passes the contract check and trains one step here,
    else why not (one line)."""
    try:
        cls = family_class(name)
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
    code = b"".join(Path(__file__).with_name(n).read_bytes() for n in ("hf.py", "hf_sizing.py"))
    stamp = hashlib.sha256(code).hexdigest()[:12]
    path = cache_root() / f"hf-families-{installed_version()}-{torch.__version__}-{stamp}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    print(f"checking which of transformers' {len(causal_families())} causal families build here (once per "
          "installation, a minute or two)...", file=sys.stderr, flush=True)
    status = {name: check_family(name) for name in causal_families()}
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
    lines = []
    for name in causal_families():
        try:
            f = family(name)
            line = f"{f.doc}{'; ' + f.note if f.note else ''}"
            if f.pattern:
                line += f"; layers: {describe(f.pattern)}, at least {len(f.pattern)} layers"
        except RegistryError as exc:
            line = transformers().models.auto.modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[name]  # its class
            status = {**status, name: status.get(name) or str(exc)}
        why = status.get(name)
        lines.append((f"{PREFIX}:{name}",
                      f"{line}  [transformers {version}" + (f"; cannot run here: {why}]" if why else "]")))
    return lines


ARCHITECTURES.add_prefix(PREFIX, family_class, listing)
