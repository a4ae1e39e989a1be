"""The architecture contract, and the helpers the harness uses on any architecture.

An architecture is a plain ``nn.Module``:

* built as ``cls(vocab_size=V, context_length=T, **config)`` (the task supplies V and T);
* ``forward(tokens)``: ``(B, T)`` int64 token ids in, ``(B, T, V)`` logits out, causal, one
  prediction at every position, fresh state for every sequence, nothing kept on ``self``;
* ``num_params(non_embedding=True)``: parameters, without (or with) the token/position
  embeddings, as in Kaplan et al. 2020;
* ``state_size(seq_len)``: numbers carried forward per step when generating (KV cache,
  hidden state, receptive-field buffer), or ``None`` if unknown;
* optionally ``features(tokens)`` -> ``(B, T, C)`` and ``head`` (``C -> V``) with
  ``forward(tokens) == head(features(tokens))``: the harness then takes the loss in chunks of
  positions (:func:`token_losses`), never holding ``(B, T, V)`` logits at a large vocabulary.

Subclassing :class:`Architecture` gives sensible defaults for the last two and a generic
``config_for_params`` that solves for a width to match a target non-embedding parameter count.
A plain ``nn.Module`` works too: the harness falls back on counting ``nn.Embedding`` weights as
embedding parameters and on a ``width_key`` attribute (or no sizing at all).
"""
from __future__ import annotations

import math
import os
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .errors import ContractError, UserError
from .specs import format_count

SIZE_TOLERANCE = 0.10  # achieved non-embedding params must land within 10% of the target
TRAINING_BYTES_PER_PARAM = 16  # fp32 weights, gradients and AdamW's two moments


class Architecture(nn.Module):
    """Optional base class for architectures (built-ins and plugins)."""

    #: config key that scales width; ``config_for_params`` solves for it.
    width_key: str | None = None
    #: widths tried are multiples of this.
    width_multiple: int = 8
    #: the finest width step tried when a small target needs one (2: a width whose heads must be even).
    width_step: int = 1
    #: training hyperparameters this architecture prefers (the study may override them).
    default_hparams: dict[str, Any] = {}
    #: True if the model accepts sequences longer than ``context_length`` at evaluation time.
    extrapolates: bool = False

    def num_params(self, non_embedding: bool = True) -> int:
        return count_params(self, non_embedding, _use_method=False)

    def state_size(self, seq_len: int) -> int | None:
        return None

    @classmethod
    def shape_candidates(cls, target: int, context_length: int) -> Iterable[dict[str, Any]]:
        """Depth-like settings to try, most preferred first; the width is solved for each."""
        yield {}

    @classmethod
    def config_for_params(cls, target: int, vocab_size: int, context_length: int, **fixed) -> dict[str, Any]:
        """A config whose non-embedding parameter count is as close as possible to ``target``."""
        return solve_width(cls, target, vocab_size, context_length, fixed)


#: logits computed at once (rows x vocabulary) when the loss is taken in chunks: 8M floats (32 MB in fp32)
LOSS_CHUNK_ELEMENTS = 1 << 23


def has_features(model: nn.Module) -> bool:
    """Whether a model exposes the optional ``features(tokens)`` -> (B, T, C) and ``head`` (C -> V)
    whose composition is its forward pass, so that the loss can be taken in chunks of positions."""
    return callable(getattr(model, "features", None)) and callable(getattr(model, "head", None))


def _chunk_losses(head: nn.Module, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(h).float(), y, reduction="none")


def token_losses(model: nn.Module, tokens: torch.Tensor, targets: torch.Tensor,
                 chunk_elements: int | None = LOSS_CHUNK_ELEMENTS) -> torch.Tensor:
    """Next-token losses (B, T) in nats, fp32, of ``targets`` given ``tokens`` (both (B, T)).

    Where the whole (B, T, V) logits fit in ``chunk_elements``, or the model has no
    ``features``/``head`` pair, one forward pass gives them all (the plain path). Otherwise the
    output layer and the cross-entropy run over chunks of positions, so that no more than
    ``chunk_elements`` logits exist at once; with gradients on, each chunk is checkpointed (its
    logits are recomputed in the backward pass instead of kept), so training's peak memory does not
    hold (B, T, V) either. ``chunk_elements=None``: always the plain path.
    """
    B, T = tokens.shape
    head = getattr(model, "head", None)
    vocab = getattr(head, "out_features", None)
    if (chunk_elements is None or not has_features(model)
            or (vocab is not None and B * T * vocab <= chunk_elements)):
        logits = model(tokens)  # (B, T, V)
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none").view(B, T)
    h = model.features(tokens).flatten(0, 1)  # (B*T, C)
    y = targets.flatten()
    if vocab is None:  # a head that is not one nn.Linear: its width from one row
        vocab = head(h[:1]).shape[-1]
    rows = max(1, chunk_elements // vocab)
    grad = torch.is_grad_enabled()
    out = []
    # torch.split, not slicing: one backward node gathers the chunks' gradients (a slice's backward
    # would make a zero tensor of h's whole shape for every chunk)
    for h_i, y_i in zip(torch.split(h, rows), torch.split(y, rows)):
        if grad:
            out.append(checkpoint(_chunk_losses, head, h_i, y_i, use_reentrant=False))
        else:
            out.append(_chunk_losses(head, h_i, y_i))
    return torch.cat(out).view(B, T)


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


def active_params(model: nn.Module) -> int:
    """Non-embedding parameters used for one token: ``num_active_params()`` where an architecture
    routes (a mixture of experts), else all of them."""
    fn = getattr(model, "num_active_params", None)
    return int(fn(non_embedding=True)) if fn is not None else count_params(model, non_embedding=True)


def state_size(model: nn.Module, seq_len: int) -> int | None:
    fn = getattr(model, "state_size", None)
    return None if fn is None else fn(seq_len)


def build(cls: type, vocab_size: int, context_length: int, config: dict[str, Any]) -> nn.Module:
    """Instantiate an architecture; a plugin that raises gives one clear line."""
    try:
        model = cls(vocab_size=vocab_size, context_length=context_length, **config)
    except TypeError as exc:
        raise UserError(f"cannot build architecture {_name(cls)} with config {config}: {exc}") from exc
    except Exception as exc:
        raise UserError(f"architecture {_name(cls)} raised while being built: {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise UserError(f"architecture {_name(cls)} is not an nn.Module")
    return model


def _name(cls) -> str:
    return getattr(cls, "registered_name", getattr(cls, "__name__", repr(cls)))


def _count_on_meta(cls, vocab_size, context_length, config, non_embedding: bool = True) -> int:
    """Parameters of the model ``config`` builds, counted on the meta device (nothing allocated)."""
    with torch.device("meta"):
        model = cls(vocab_size=vocab_size, context_length=context_length, **config)
    return count_params(model, non_embedding=non_embedding)


def solve_width(cls, target: int, vocab_size: int, context_length: int, fixed: dict[str, Any]) -> dict[str, Any]:
    """Try each of ``cls.shape_candidates`` and, for each, the width closest to ``target``.

    Returns the first candidate within 5% of the target, else the closest found. Parameter
    counts are taken on the ``meta`` device, so no memory is spent.
    """
    key = getattr(cls, "width_key", None)
    if key is None:
        raise UserError(
            f"architecture {_name(cls)} cannot be sized to --params: give it a width_key attribute "
            "or a config_for_params classmethod"
        )
    if key in fixed:  # the user fixed the width: nothing to solve
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


#: option names that count an architecture's blocks (layers): 0 would leave a model without one,
#: whose embeddings and final norm alone then "are" the parameter target
DEPTH_KEYS = ("n_layer", "n_layers", "num_layers", "num_hidden_layers", "depth", "n_blocks", "num_blocks")
#: option names of a width (channels, hidden units, heads): each must be at least 1
WIDTH_KEYS = ("d_model", "hidden_size", "n_embd", "channels", "intermediate_size", "num_attention_heads", "n_head")
#: what the harness gives every architecture from the task: never an option
TASK_KEYS = ("vocab_size", "context_length")


def check_shape_options(cls, name: str, options: dict[str, Any]) -> None:
    """Refuse, in one line, options no model can be built from: a vocabulary or context length
    (the task's), zero blocks, a width below 1."""
    for key in TASK_KEYS:
        if key in options:
            raise UserError(f"architecture {name}: {key} is not an option, the task sets it (its vocabulary, "
                            f"--context); drop {key}={options[key]}")
    width = getattr(cls, "width_key", None)
    for key, value in options.items():
        if key not in DEPTH_KEYS and key not in WIDTH_KEYS and key != width:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            what = ("a model needs at least one block (layer): with none, its embeddings and output alone would "
                    "be sized to --params" if key in DEPTH_KEYS else "a width must be a whole number, at least 1")
            raise UserError(f"architecture {name}: {key}={value!r} refused; {what}")


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
        raise UserError(f"architecture {_name(cls)} failed to size itself to {target} parameters: {exc}") from exc


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


def check_contract(model: torch.nn.Module, vocab_size: int, context_length: int, name: str) -> None:
    """A quick check of the architecture contract before any training: shape, finiteness, no state
    carried between calls (the same input twice gives the same output), causality."""
    T = min(context_length, 24)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, vocab_size, (2, T), generator=g)
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            y = model(x)
            if not isinstance(y, torch.Tensor) or tuple(y.shape) != (2, T, vocab_size):
                shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
                raise ContractError(f"architecture {name} returned {shape} for input (2, {T}); expected (2, {T}, {vocab_size})")
            if not torch.isfinite(y).all():
                raise ContractError(f"architecture {name} produced NaN or inf logits")
            if not torch.allclose(model(x), y, atol=1e-5, rtol=1e-4):
                raise ContractError(f"architecture {name} keeps state between calls: the same input twice gave "
                                    "different outputs (a hidden state or cache kept on self?); every call must "
                                    "start from fresh state")
            x2 = x.clone()
            x2[:, T // 2:] = (x2[:, T // 2:] + 1) % vocab_size
            y2 = model(x2)
            if not torch.allclose(y[:, :T // 2], y2[:, :T // 2], atol=1e-5, rtol=1e-4):
                raise ContractError(f"architecture {name} is not causal: changing tokens from position {T // 2} "
                                    f"changed earlier outputs")
    except ContractError:
        raise
    except Exception as exc:
        raise ContractError(f"architecture {name} failed in forward: {type(exc).__name__}: {exc}") from exc
    finally:
        model.train(was)
