"""The architecture contract, and the loss the harness takes through it.

An architecture is a plain ``nn.Module`` built as ``cls(vocab_size=V, context_length=T, **config)``
(the task supplies V and T) whose ``forward(tokens)`` maps ``(B, T)`` int64 token ids to ``(B, T, V)``
logits: causal, one prediction at every position, fresh state for every sequence, nothing kept on
``self``. Everything else is an optional hook; :class:`Architecture` lists each with the default
the harness assumes where a class leaves it out (a plain ``nn.Module`` is read the same way, with
``getattr`` and that default). ``tests/test_contract.py`` checks that every hook the harness reads
is listed there, and every registered architecture against the contract.

Sizing to a parameter count and the memory bound are :mod:`mnemoscope.contract.sizing`; this module takes
the loss through the optional ``features``/``head`` pair in chunks of positions (:func:`token_losses`)
and checks a built model against the contract (:func:`check_contract`).
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import ContractError, UserError
from .sizing import arch_name, count_params, solve_width
# sizing's names the runner and architectures/hf.py import from here (they moved to .sizing)
from .sizing import SIZE_TOLERANCE, check_memory, size_for  # noqa: F401


class Architecture(nn.Module):
    """Optional base class for architectures (built-ins and plugins): every optional hook of the
    contract with its default. A plain ``nn.Module`` gets the same defaults.

    Hooks that are absent by default (defining them changes what the harness does):

    * ``features(tokens)`` -> ``(B, T, C)`` with ``head`` (``C -> V``) and ``forward(tokens) ==
      head(features(tokens))``: the loss is then taken in chunks of positions (:func:`token_losses`),
      never holding ``(B, T, V)`` logits at a large vocabulary. Absent: the whole logits of ``forward``.
    * ``num_active_params(non_embedding=True)``: for a model that routes (a mixture of experts),
      the parameters one token uses, recorded as ``active_params``. Absent: all of them.
    """

    #: hooks :class:`Architecture` leaves out on purpose (see above); the contract test checks that the
    #: harness reads no other hook than these and the attributes below
    ABSENT_HOOKS = ("features", "head", "num_active_params")

    #: config key that scales width, which :func:`mnemoscope.contract.sizing.solve_width` bisects. None: no
    #: solver; the model is built at its given config, which must then land within
    #: ``SIZE_TOLERANCE`` of ``--params`` itself (the study refuses it naming the count reached)
    width_key: str | None = None
    #: widths tried are multiples of this.
    width_multiple: int = 8
    #: the finest width step tried when a small target needs one (2: a width whose heads must be even).
    width_step: int = 1
    #: shape choices ``study.py tune`` searches, e.g. ``{"n_layer": [1, 2, 3]}``. None: ``n_layer``
    #: in 1..4 where the constructor takes it.
    shape_space: dict[str, list] | None = None
    #: training hyperparameters this architecture prefers (the study may override them).
    default_hparams: dict[str, Any] = {}
    #: True if the model accepts sequences longer than ``context_length`` at evaluation time.
    extrapolates: bool = False
    #: an architecture changed under the same name (the built-in transformer's version "2": Primer's
    #: convolutions; "3": q, k, v started at N(0, 1/width)) says so here; it enters the run id, so a study made before trains the new one
    #: instead of taking the old run for it. None: run ids as they always were.
    version: str | None = None

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameters without (``non_embedding``) or with the token and position embeddings. Default:
        every ``nn.Embedding`` weight and ``embedding_parameters()`` left out, a tied head counted once."""
        return count_params(self, non_embedding, _use_method=False)

    def embedding_parameters(self) -> list[nn.Parameter]:
        """Embedding-like tensors besides ``nn.Embedding`` weights (a position table) to leave out of
        the non-embedding count. Default: none."""
        return []

    def state_size(self, seq_len: int) -> int | None:
        """Numbers carried forward per step when generating (KV cache, hidden state, receptive-field
        buffer) after ``seq_len`` tokens. Default: None, unknown."""
        return None

    @classmethod
    def shape_candidates(cls, target: int, context_length: int) -> Iterable[dict[str, Any]]:
        """Depth-like settings to try, most preferred first; the width is solved for each. Default: one, empty."""
        yield {}

    @classmethod
    def config_for_params(cls, target: int, vocab_size: int, context_length: int, **fixed) -> dict[str, Any]:
        """A config whose non-embedding parameter count is as close as possible to ``target``.
        Default: :func:`mnemoscope.contract.sizing.solve_width` on ``width_key`` (none: ``fixed`` as given)."""
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
        raise UserError(f"cannot build architecture {arch_name(cls)} with config {config}: {exc}") from exc
    except Exception as exc:
        raise UserError(f"architecture {arch_name(cls)} raised while being built: {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise UserError(f"architecture {arch_name(cls)} is not an nn.Module")
    return model


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
