"""Shapes of Hugging Face families (helpers of ``architectures/hf.py``): heads and MLP widths set by
the width, depth schedules, the layer mix of hybrids, and the generic recipe that scales any causal
family's default configuration down to a given width and depth.

The generic recipe reads the family's config class with its defaults (the released model's shape)
and keeps its proportions: heads of about 32 dimensions (the width divided among them), the same
query heads per key/value head where it groups them, every MLP, expert and low-rank width at the
same multiple of the width, per-head sizes at the same multiple of the head size, at most 8
experts and top 2, and the default stack's layer pattern (``layer_types``) one period at a time.
"""
from __future__ import annotations

import math
import re
from collections import Counter

import torch

from mnemoscope.errors import UserError
from mnemoscope.contract.sizing import SIZE_TOLERANCE, _count_on_meta, solve_width
from mnemoscope.specs import format_count

# keys of the context length (set to the task's context)
CONTEXT_KEYS = {"max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length",
                "max_seq_len", "context_length"}
# keys left as they are (ids, vocabularies, tables that are not widths)
KEEP_KEYS = {"vocab_size", "type_vocab_size", "bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id",
             "sep_token_id", "cls_token_id", "mask_token_id", "num_labels", "chunk_size_feed_forward"}
PATTERN_MAX = 8  # a layer pattern longer than this is summarised (its rarest kind once per PATTERN_MAX layers)


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


def in_periods(depths, period: int):
    """A depth schedule in whole periods of a layer pattern: each depth rounded up to a multiple of
    ``period`` (the smallest stack that holds the pattern is one period)."""
    if period <= 1:
        return depths

    def candidates(target: float, minimum: int = 1) -> list[int]:
        out = [max(period, -(-d // period) * period) for d in depths(target, 1)]
        return [d for d in dict.fromkeys(out + [out[0] + period]) if d >= minimum]
    return candidates


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


def kv_heads(h: int, group: int) -> int:
    """Key/value heads for ``h`` query heads at about ``group`` query heads each (a divisor of ``h``)."""
    return max(d for d in range(1, h + 1) if h % d == 0 and d <= max(1, h // max(group, 1)))


# -- layer patterns ---------------------------------------------------------------------------
def period_of(types: list[str]) -> tuple[str, ...]:
    """One period of a stack's layer types: () for a uniform stack; the shortest repeating unit
    (up to PATTERN_MAX layers); else the commonest kind with the rarest once per its share."""
    types = [str(t) for t in types or []]
    if len(set(types)) < 2:
        return ()
    for p in range(2, min(PATTERN_MAX, len(types)) + 1):
        if all(types[i] == types[i % p] for i in range(len(types))):
            return tuple(types[:p])
    counts = Counter(types).most_common()
    if len(counts) > 2:
        return tuple(dict.fromkeys(types))
    (common, n_common), (rare, n_rare) = counts
    p = min(PATTERN_MAX, max(2, round(len(types) / n_rare)))
    return (common,) * (p - 1) + (rare,)


def repeat(pattern, n: int) -> list:
    """``pattern`` repeated to ``n`` layers."""
    return [pattern[i % len(pattern)] for i in range(n)]


def describe(pattern: tuple[str, ...]) -> str:
    """'3 linear_attention + 1 full_attention per 4 layers'."""
    counts = Counter(pattern)
    return " + ".join(f"{c} {kind}" for kind, c in counts.items()) + f" per {len(pattern)} layers"


def layer_types(config) -> list[str]:
    """The kinds of a config's layers, in order (transformers' ``layer_types``), or []."""
    try:
        types = getattr(config, "layer_types", None)
    except Exception:
        return []
    return [str(t) for t in types] if isinstance(types, (list, tuple)) else []


def has_position_table(cls) -> bool:
    """Whether a family's model holds a table as long as its context (learned or fixed absolute
    positions): then it cannot score sequences longer than it was trained on."""
    context = 37  # a length no other dimension of a tiny model has
    try:
        with torch.device("meta"):
            model = cls(vocab_size=11, context_length=context,
                        **{cls.family.width: 32, cls.family.depth: cls.family.min_depth})
    except Exception:
        return True
    tensors = list(model.parameters()) + list(model.buffers())
    return any(t.dim() and context <= t.shape[0] <= context + 4 for t in tensors)


# -- the generic recipe ------------------------------------------------------------------------
def scaled(key: str, value: int, width_scale: float, head_scale: float, head_ratio: float, context: int,
           windows: bool) -> int:
    """One integer of a default config at the new size (see the module's docstring)."""
    k = key.lower()
    if key in CONTEXT_KEYS:
        return context + 2  # room for the offset some add to positions (RoBERTa's: its padding index + 1)
    if re.search(r"experts_per_tok|experts_per_token|top_?k$|topk$|moe_topk", k):
        return min(value, 2)
    if re.search(r"n_group$|topk_group$|num_expert_group", k):
        return 1
    if re.search(r"shared_experts?$", k) and "size" not in k:
        return min(value, 1)
    if re.search(r"experts$", k):
        return min(value, 8)
    if k in ("first_k_dense_replace", "num_dense_layers", "first_k_dense"):
        return min(value, 1)
    if "window" in k or re.search(r"attention_chunk", k):
        return min(value, max(2, context // 2)) if windows else value
    if re.search(r"head_dim$|d_head$|head_size$|head_dim_", k):
        return max(2, 2 * round(value * head_scale / 2))
    if re.search(r"heads$", k):
        return max(1, round(value * head_ratio))
    if value >= 32 and re.search(r"(size|dim|rank|inner|width|channels|hidden|ffn|ff)$|hidden_size", k):
        return mult(value * width_scale)
    return value


def generic_recipe(config_class, keys: tuple[str, ...], width_key: str, depth_key: str, pattern: tuple[str, ...]):
    """(width, depth, context, options) -> config keys, from the family's defaults (its released
    shape) scaled to ``width`` and ``depth``; the layer pattern repeated to the depth."""
    d0 = config_class().to_dict()
    c0 = config_class()
    attribute_map = getattr(config_class, "attribute_map", {}) or {}

    def real(name):
        k = attribute_map.get(name, name)
        return k if k in keys else None

    w0, n0 = int(getattr(c0, "hidden_size")), int(getattr(c0, "num_hidden_layers"))
    hk, kvk = real("num_attention_heads"), real("num_key_value_heads")
    h0 = getattr(c0, "num_attention_heads", None) if hk else None
    kv0 = d0.get(kvk) if kvk else None
    hd0 = d0.get("head_dim") or (w0 // h0 if h0 else 32)
    windows = any("sliding" in t or "chunk" in t for t in pattern)

    def recipe(w: int, n: int, t: int, o: dict) -> dict:
        out: dict = {}
        h = None
        if hk:
            h = o.get(hk) or heads(w, 32)
            out[hk] = h
            if kvk and isinstance(kv0, int) and h0:
                out[kvk] = o.get(kvk) or kv_heads(h, h0 // max(kv0, 1))
            if "head_dim" in keys and d0.get("head_dim") is not None:
                out["head_dim"] = w // h
        head_scale = (w // h) / hd0 if h else w / w0
        head_ratio = h / h0 if h and h0 else w / w0
        for k, v in d0.items():
            if k in out or k not in keys or k in KEEP_KEYS or k in (width_key, depth_key, hk, kvk):
                continue
            if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                out[k] = scaled(k, v, w / w0, head_scale, head_ratio, t, windows)
            elif (isinstance(v, list) or "pattern" in k) and len(v) == n0 and n0 > 1 and k != "layer_types":
                per_layer = repeat(v, n)  # a per-layer setting: the default stack's, repeated
                out[k] = per_layer if isinstance(v, list) else "".join(per_layer)
                if isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in v):
                    out[k] = [scaled(k, x, w / w0, head_scale, head_ratio, t, windows) if x > 0 else x for x in per_layer]
            elif "dropout" in k and isinstance(v, float):
                out[k] = 0.0
        if pattern and "layer_types" in keys:
            out["layer_types"] = repeat(pattern, n)
        return out

    intermediate = d0.get(real("intermediate_size") or "intermediate_size")
    ratio = intermediate / w0 if isinstance(intermediate, int) else None
    return recipe, ratio, (h0 // kv0 if isinstance(kv0, int) and kv0 and h0 else 1)


# -- the solver ---------------------------------------------------------------------------------
def _count(cls, vocab_size: int, context_length: int, config: dict) -> int | None:
    try:
        return _count_on_meta(cls, vocab_size, context_length, config)
    except Exception:  # a shape the family's config refuses
        return None


def _err(n: int | None, target: float) -> float:
    return math.inf if not n else abs(math.log(n / target))


def _with_mlp(cls, target, vocab_size, context_length, base: dict) -> tuple[float, dict]:
    """At one depth: the widths on the family's grid around the one that reaches the target, each
    with the MLP (or expert) width that brings the count closest to the target (a multiple of 4,
    up to 4 times the recipe's)."""
    f, step = cls.family, max(1, int(cls.width_step))

    def n(w, extra=None):
        return _count(cls, vocab_size, context_length, {**base, f.width: w * step, **(extra or {})})

    lo, hi = 1, 2
    while (n(hi) or 0) < target and hi < 1 << 14:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if (n(mid) or 0) < target else (lo, mid)
    best = (math.inf, {})
    for w in (lo - 1, lo, hi, hi + 1):
        m0 = f.recipe(w * step, base[f.depth], context_length, base).get(f.mlp) if w > 0 else None
        if not isinstance(m0, int):
            continue
        a, b = 1, max(2, m0)  # multiples of 4: from 4 to 4 x the recipe's
        while b - a > 1:
            mid = (a + b) // 2
            a, b = (mid, b) if (n(w, {f.mlp: 4 * mid}) or 0) < target else (a, mid)
        for m in (a, b):
            e = _err(n(w, {f.mlp: 4 * m}), target)
            if e < best[0]:
                best = (e, {**base, f.width: w * step, f.mlp: 4 * m})
    return best


def solve(cls, target: int, vocab_size: int, context_length: int, fixed: dict) -> dict:
    """The built-ins' width solver over the family's depths; where it lands off the preferred depth
    or more than 5% off, the MLP width is solved too, the preferred depth first. A target below the
    family's smallest model (its smallest stack that keeps its layer mix) is refused in one line."""
    f = cls.family
    cfg = solve_width(cls, target, vocab_size, context_length, fixed)
    if f.width in fixed:
        return cfg
    good = math.log(1.05)
    shapes = [{**shape, **fixed} for shape in cls.shape_candidates(target, context_length)]
    err = _err(_count(cls, vocab_size, context_length, cfg), target)
    if f.mlp and f.mlp not in fixed and (err > good or cfg.get(f.depth) != shapes[0].get(f.depth)):
        closest = (err, cfg)
        for base in shapes:
            if base.get(f.depth) == cfg.get(f.depth) and err <= good:
                break  # the built-ins' answer is as preferred as any left
            e, c = _with_mlp(cls, target, vocab_size, context_length, base)
            if e <= good:
                closest = (e, c)
                break
            closest = min(closest, (e, c), key=lambda x: x[0])
        err, cfg = closest
    if err > math.log(1 + SIZE_TOLERANCE):
        smallest = _smallest(cls, vocab_size, context_length, fixed)
        if smallest and smallest[0] > target:
            n, shape = smallest
            mix = f"; {describe(f.pattern)} is its layer mix" if f.pattern else ""
            raise UserError(f"--params {format_count(target)} is below the smallest {cls.registered_name} "
                            f"({shape}{mix}): {format_count(_round_up(n))} non-embedding parameters; use --params "
                            f"{format_count(_round_up(n / (1 + SIZE_TOLERANCE)))} or more")
    return cfg


def _smallest(cls, vocab_size, context_length, fixed) -> tuple[int, str] | None:
    """Non-embedding parameters of the family's smallest model here: its least depth, the narrowest
    width on its grid that builds."""
    f = cls.family
    depth = fixed.get(f.depth, f.min_depth)
    for k in range(1, 9):
        w = k * max(8, int(cls.width_step))
        n = _count(cls, vocab_size, context_length, {**fixed, f.depth: depth, f.width: w})
        if n:
            return n, f"width {w}, {depth} layer{'s' if depth > 1 else ''}"
    return None


def _round_up(n: float) -> int:
    """``n`` rounded up to two significant digits."""
    scale = 10 ** max(0, int(math.log10(max(n, 1))) - 1)
    return int(math.ceil(n / scale) * scale)
