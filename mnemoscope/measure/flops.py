"""Training FLOPs per token, counted on a real step with ``torch.utils.flop_counter.FlopCounterMode``.

One forward + backward pass of a (B, T) batch is run under the counter; the total over B*T
targets is the cost of one training token (the optimizer's few FLOPs per parameter per step are
left out, as Kaplan et al. 2020 do).

The stock counter knows matmuls, convolutions and the CUDA attention kernels only. Fused kernels
it does not know count as zero, and on a CPU two of ours are hidden (checked in
tests/test_scaling.py):

* ``nn.LSTM`` runs as oneDNN's ``mkldnn_rnn_layer`` (CPU) or cuDNN's ``_cudnn_rnn`` (GPU);
* ``scaled_dot_product_attention`` runs as ``_scaled_dot_product_flash_attention_for_cpu``.

``HIDDEN_KERNELS`` gives those ops formulas (the attention ones are torch's own formulas for the
CUDA kernels, so CPU and GPU counts agree; like torch, causal masking is not discounted). As a
last guard, a recurrent module (``nn.RNNBase``) whose counted FLOPs are still under half its
formula gets the formula added; ``FlopCount.formula_modules`` names them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

aten = torch.ops.aten


def _rnn_forward_flops(input_shape, weight_shapes) -> int:
    """2 FLOPs per multiply-add of every token with every 2-D weight (input-to-gates, hidden-to-gates)."""
    tokens = math.prod(input_shape[:-1])  # (T, B, in), (B, T, in) or packed (sum of lengths, in)
    return 2 * tokens * sum(math.prod(s) for s in weight_shapes if len(s) == 2)


def _mkldnn_rnn_layer(input_shape, w_ih, w_hh, *args, out_shape=None, **kwargs) -> int:
    return _rnn_forward_flops(input_shape, [w_ih, w_hh])


def _mkldnn_rnn_layer_backward(input_shape, w_ih, w_hh, *args, out_shape=None, **kwargs) -> int:
    return 2 * _rnn_forward_flops(input_shape, [w_ih, w_hh])  # grad of inputs and of weights


def _cudnn_rnn(input_shape, weights, *args, out_shape=None, **kwargs) -> int:
    return _rnn_forward_flops(input_shape, weights)  # weights: every layer's (and direction's) tensors


def _cudnn_rnn_backward(input_shape, weights, *args, out_shape=None, **kwargs) -> int:
    return 2 * _rnn_forward_flops(input_shape, weights)


def _sdpa_cpu(q, k, v, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(q, k, v)


def _sdpa_cpu_backward(grad_out, q, k, v, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out, q, k, v)


def _conv_backward(grad_out, x, w, bias, stride, padding, dilation, transposed, output_padding, groups, output_mask,
                   out_shape=None, **kwargs) -> int:
    """A convolution's backward: each gradient asked for (input, weight) costs what the forward did,
    2 * B * positions out * the weight's size (whose second dimension is already in / groups).
    torch's own formula builds the weight gradient as a dense convolution and so counts a depthwise
    one (the transformer's q, k, v convolutions) ``groups`` times over."""
    forward = 2 * grad_out[0] * math.prod(grad_out[2:]) * math.prod(w)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


_FORMULAS = {
    "convolution_backward": _conv_backward,
    "mkldnn_rnn_layer": _mkldnn_rnn_layer,
    "mkldnn_rnn_layer_backward": _mkldnn_rnn_layer_backward,
    "_cudnn_rnn": _cudnn_rnn,
    "_cudnn_rnn_backward": _cudnn_rnn_backward,
    "_scaled_dot_product_flash_attention_for_cpu": _sdpa_cpu,
    "_scaled_dot_product_flash_attention_for_cpu_backward": _sdpa_cpu_backward,
}
#: fused ops the stock counter misses -> FLOP formula from their argument shapes
HIDDEN_KERNELS = {getattr(aten, name): f for name, f in _FORMULAS.items() if hasattr(aten, name)}


def rnn_training_flops(module: nn.RNNBase, tokens: int) -> int:
    """Forward + backward FLOPs of a recurrent layer stack over ``tokens`` tokens: 3x the forward's
    2 * tokens * (every 2-D weight's size), e.g. 3 * 2 * 8 d^2 per token per LSTM layer of width d."""
    weights = [tuple(p.shape) for p in module.parameters() if p.dim() == 2]
    return 3 * _rnn_forward_flops((tokens, 1), weights)


@dataclass
class FlopCount:
    per_token: float  # training FLOPs (forward + backward) per target token
    counted: int  # total FLOPs of the step as counted (hidden kernels by HIDDEN_KERNELS)
    tokens: int  # B * T targets in the counted step
    by_op: dict[str, int] = field(default_factory=dict)
    formula_modules: list[str] = field(default_factory=list)  # recurrent modules added by formula


def count_training_step(model: nn.Module, vocab_size: int, context_length: int, batch_size: int = 1,
                        custom_mapping: dict | None = None) -> FlopCount:
    """Count one real training step (forward, cross-entropy, backward) of ``model`` on random tokens.

    Gradients are cleared afterwards; the model's weights are not changed. ``custom_mapping``
    replaces ``HIDDEN_KERNELS`` (``{}`` counts with the stock counter only).
    """
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, vocab_size, (batch_size, context_length + 1), generator=g).to(device)  # (B, T+1)
    mapping = HIDDEN_KERNELS if custom_mapping is None else custom_mapping
    was_training = model.training
    model.train()
    counter = FlopCounterMode(display=False, custom_mapping=mapping)
    try:
        with counter:
            logits = model(x[:, :-1])  # (B, T, V)
            F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten()).backward()
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    tokens = batch_size * context_length
    counts = counter.get_flop_counts()
    total = counter.get_total_flops()
    by_op = {str(k): int(v) for k, v in counts.get("Global", {}).items()}
    added = []
    root = type(model).__name__
    for name, module in model.named_modules():
        if isinstance(module, nn.RNNBase):
            # the counter names modules "<RootClass>.<path>"; a kernel still hidden counts ~0 there
            key = f"{root}.{name}" if name else root
            seen = sum(counts.get(key, {}).values())
            expected = rnn_training_flops(module, tokens)
            if seen < 0.5 * expected:
                total += expected - seen
                added.append(name or root)
    return FlopCount(per_token=total / tokens, counted=int(total), tokens=tokens, by_op=by_op, formula_modules=added)


def flops_per_token(model: nn.Module, vocab_size: int, context_length: int) -> float:
    """Training FLOPs per token (forward + backward) of ``model`` at context ``context_length``."""
    return count_training_step(model, vocab_size, context_length).per_token
