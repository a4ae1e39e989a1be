"""Sizing an architecture to a parameter count, and the memory bound on that size.

Runs are compared at equal non-embedding parameter counts (Kaplan et al. 2020): ``count_params``
counts them (embeddings left out), ``size_for`` resolves an architecture's config for a target
(its own ``config_for_params``, else the width solver ``solve_width`` on its ``width_key``, else
the config as given), and ``check_memory`` refuses, before any allocation, a size whose weights,
gradients and optimizer state alone exceed the memory. Parameters are counted on the ``meta``
device: no memory is spent.
"""
from __future__ import annotations

import math
import os
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ..specs import format_count

SIZE_TOLERANCE = 0.10  # achieved non-embedding params must land within 10% of the target
TRAINING_BYTES_PER_PARAM = 16  # fp32 weights, gradients and AdamW's two moments


def count_params(model: nn.Module, non_embedding: bool = True, _use_method: bool = True) -> int:
    """Parameters of ``model``; with ``non_embedding`` the ``nn.Embedding`` weights are left out.

    A tied output head shares its tensor with the embedding, so it is not counted twice.
    """
    if _use_method and hasattr(model, "num_params"):
        return int(model.num_params(non_embedding=non_embedding))
    seen: set[int] = set()
    excluded: set[int] = set()
    if non_embedding:
        for mod in model.modules():
            if isinstance(mod, nn.Embedding):
                excluded.add(id(mod.weight))
        excluded.update(id(p) for p in getattr(model, "embedding_parameters", lambda: [])())
    total = 0
    for p in model.parameters():
        if id(p) in seen or id(p) in excluded:
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def arch_name(cls) -> str:
    return getattr(cls, "registered_name", getattr(cls, "__name__", repr(cls)))


_COUNTS: dict[tuple, int] = {}  # (class, vocab, context, config, non_embedding) -> count, this process's


def _count_on_meta(cls, vocab_size, context_length, config, non_embedding: bool = True) -> int:
    """Parameters of the model ``config`` builds, counted on the meta device (nothing allocated).
    Each count is kept for the process: the width solver asks for the same widths again, and a
    study sizes every seed of an architecture alike (building a model on ``meta`` still runs
    its initialisation, some 50 ms a transformer)."""
    try:
        key = (cls, vocab_size, context_length, repr(sorted(config.items())), non_embedding)
        hash(key)
    except TypeError:  # a class that cannot be a key: counted every time
        key = None
    if key is not None and key in _COUNTS:
        return _COUNTS[key]
    with torch.device("meta"):
        model = cls(vocab_size=vocab_size, context_length=context_length, **config)
    n = count_params(model, non_embedding=non_embedding)
    if key is not None:
        if len(_COUNTS) >= 1 << 14:
            _COUNTS.clear()
        _COUNTS[key] = n
    return n


def solve_width(cls, target: int, vocab_size: int, context_length: int, fixed: dict[str, Any]) -> dict[str, Any]:
    """Try each of ``cls.shape_candidates`` and, for each, the width closest to ``target``.

    Returns the first candidate within 5% of the target, else the closest found. Parameter
    counts are taken on the ``meta`` device, so no memory is spent. Without a ``width_key`` (or
    with the width among ``fixed``) nothing is solved: ``fixed`` is returned as given, and the
    study checks the count it builds against ``SIZE_TOLERANCE`` like any other.
    """
    key = getattr(cls, "width_key", None)
    if key is None or key in fixed:  # no width to solve for, or the user fixed it: the config as given
        return dict(fixed)
    best: tuple[float, dict] | None = None
    # preferred width multiple first; small models may need finer widths to land near the target
    for step in sorted({int(getattr(cls, "width_multiple", 8)), int(getattr(cls, "width_step", 1))}, reverse=True):
        best = _solve_width_step(cls, key, step, target, vocab_size, context_length, fixed, best)
        if best[0] < math.log(1.05):
            break
    return best[1]


def _solve_width_step(cls, key, step, target, vocab_size, context_length, fixed, best):
    candidates = getattr(cls, "shape_candidates", lambda t, c: [{}])(target, context_length)
    for shape in candidates:
        base = {**shape, **fixed}

        def n(w):
            return _count_on_meta(cls, vocab_size, context_length, {**base, key: w * step})

        lo, hi = 1, 1
        while n(hi) < target and hi < 1 << 16:
            lo, hi = hi, hi * 2
        while hi - lo > 1:  # n is increasing in the width: bisect
            mid = (lo + hi) // 2
            if n(mid) < target:
                lo = mid
            else:
                hi = mid
        for w in (lo, hi):
            err = abs(math.log(n(w) / target))
            cfg = {**base, key: w * step}
            if best is None or err < best[0]:
                best = (err, cfg)
        if best[0] < math.log(1.05):
            break
    return best


def size_for(cls, target: int | None, vocab_size: int, context_length: int, config: dict[str, Any]) -> dict[str, Any]:
    """Resolve an architecture's config for a target non-embedding parameter count (or none)."""
    if target is None:
        return dict(config)
    solver = getattr(cls, "config_for_params", None)
    if solver is None:
        return solve_width(cls, target, vocab_size, context_length, dict(config))
    try:
        return solver(target, vocab_size, context_length, **config)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"architecture {arch_name(cls)} failed to size itself to {target} parameters: {exc}") from exc


def memory_bytes() -> int | None:
    """Memory a run can use: the GPU's when training runs on one, else the machine's (None: unknown)."""
    if torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(0).total_memory)
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def check_memory(cls, vocab_size: int, context_length: int, config: dict[str, Any] | None, name: str,
                 target: int) -> None:
    """Refuse, before any allocation, a model whose weights, gradients and optimizer state alone
    (TRAINING_BYTES_PER_PARAM per parameter) exceed the memory, in one line naming the largest size
    that fits. ``config`` None: the plain bound of ``target`` parameters (checked before sizing);
    else the parameters of the model that config builds, counted on the meta device (an
    architecture that cannot be built there is not checked)."""
    have = memory_bytes()
    if have is None:
        return
    if config is None:
        need = TRAINING_BYTES_PER_PARAM * target
    else:
        try:
            need = TRAINING_BYTES_PER_PARAM * _count_on_meta(cls, vocab_size, context_length, config, non_embedding=False)
        except Exception:
            return
    if need <= have:
        return
    size = _rough(target) if target < 10**12 else f"{target:.3g}"
    raise UserError(f"--params {size}: architecture {name} at that size needs {need / 2**30:.3g} GiB for its weights, "
                    f"gradients and optimizer state alone, more than the {have / 2**30:.3g} GiB here; the largest that "
                    f"could fit has about {_rough(have // TRAINING_BYTES_PER_PARAM)} parameters in all, "
                    "embeddings included (fewer with the activations)")


def _rough(n: int) -> str:
    return f"{n / 1e9:.3g}G" if n >= 10**9 else format_count(int(float(f"{n:.3g}")))
