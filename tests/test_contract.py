"""The architecture contract, checked for every registered architecture (as timm does).

A plugin that passes these works in every study.
"""
import functools
import importlib.util
import os

import pytest
import torch

from mnemoscope.architectures.hf import FAMILIES

from mnemoscope.contract.model import Architecture, build, state_size
from mnemoscope.registry import ARCHITECTURES
from mnemoscope.contract.sizing import SIZE_TOLERANCE, count_params, size_for

V, T = 37, 24
# the Hugging Face families too where transformers is installed (the `hf` extra, part of `dev`): a
# release that breaks one's causality or sizing fails here. One family of each kind (attention,
# attention with learned positions, state space, recurrent, hybrid with experts) by default, every
# hand-listed family with MNEMOSCOPE_TEST_EVERY_FAMILY=1 (a few minutes more); every causal family
# of transformers is built, contract-checked and trained one step by tests/test_hf.py either way
EVERY = os.environ.get("MNEMOSCOPE_TEST_EVERY_FAMILY") == "1"
KINDS = ["llama", "gpt2", "mamba2", "rwkv", "jamba"]
HF_FAMILIES = ([f"hf:{name}" for name in FAMILIES if EVERY or name in KINDS]
               if importlib.util.find_spec("transformers") else [])
ARCHS = ARCHITECTURES.names() + HF_FAMILIES


@functools.lru_cache(maxsize=None)
def _shape(name, target, context):
    """The solver's config, found once per architecture and size (several tests build the same)."""
    return size_for(ARCHITECTURES.get(name), target, V, context, {})


def small(name, target=20_000, context=T):
    cls = ARCHITECTURES.get(name)
    torch.manual_seed(0)
    return build(cls, V, context, dict(_shape(name, target, context))).eval()


@pytest.mark.parametrize("name", ARCHS)
def test_shape_and_finite(name):
    model = small(name)
    x = torch.randint(0, V, (3, T))
    y = model(x)
    assert y.shape == (3, T, V)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", ARCHS)
def test_causal(name):
    """Changing token k leaves the logits at positions before k unchanged."""
    model = small(name)
    x = torch.randint(0, V, (2, T))
    y = model(x)
    for k in (1, T // 2, T - 1):
        x2 = x.clone()
        x2[:, k] = (x2[:, k] + 1) % V
        y2 = model(x2)
        assert torch.allclose(y[:, :k], y2[:, :k], atol=1e-5), f"position < {k} saw token {k}"
        assert not torch.allclose(y[:, k:], y2[:, k:], atol=1e-6), f"token {k} changed nothing at or after {k}"


@pytest.mark.parametrize("name", ARCHS)
def test_no_leakage_across_rows_or_calls(name):
    model = small(name)
    a, b = torch.randint(0, V, (1, T)), torch.randint(0, V, (1, T))
    alone = model(a)
    together = model(torch.cat([a, b]))[:1]
    assert torch.allclose(alone, together, atol=1e-5), "batch rows influence each other"
    model(b)  # a call in between must leave no state behind
    assert torch.allclose(model(a), alone, atol=1e-6), "state kept between calls"


@pytest.mark.parametrize("name", ARCHS)
def test_every_parameter_gets_a_gradient(name):
    """... at the first step or, where an initialisation starts a gate at zero (xLSTM's FFN gate
    silences its FFN until it moves), after one step."""
    model = small(name).train()
    x = torch.randint(0, V, (4, T))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), torch.roll(x, -1, 1).flatten())
        loss.backward()
        missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
        if not missing:
            break
        opt.step()
    assert not missing, f"no gradient for {missing}"


@pytest.mark.parametrize("name", ARCHS)
@pytest.mark.parametrize("target", [20_000, 300_000, 2_000_000])
def test_size_matching(name, target):
    cls = ARCHITECTURES.get(name)
    config = size_for(cls, target, 256, 256, {})
    with torch.device("meta"):
        model = build(cls, 256, 256, config)
    achieved = count_params(model, non_embedding=True)
    assert abs(achieved / target - 1) <= SIZE_TOLERANCE, (config, achieved)
    assert count_params(model, non_embedding=False) > achieved


@pytest.mark.parametrize("name", ARCHS)
def test_reports_state_size(name):
    model = small(name)
    s = state_size(model, T)
    assert s is None or (isinstance(s, int) and s > 0)
    if name in ("transformer", "lstm", "cnn"):
        assert s > 0


def test_state_sizes_of_builtins_follow_their_kind():
    tr, lstm, cnn = small("transformer"), small("lstm"), small("cnn")
    kv = 2 * tr.n_layer * tr.d_model  # keys and values of one position, every layer
    assert tr.state_size(2 * T) - tr.state_size(T) == kv * T  # the KV cache grows with length
    assert tr.state_size(T) == kv * T + 3 * tr.n_layer * tr.d_model * (tr.conv - 1)  # + the convolutions' inputs
    assert lstm.state_size(2 * T) == lstm.state_size(T) == 2 * lstm.n_layer * lstm.d_model
    assert cnn.state_size(T) == (cnn.receptive_field - 1) * cnn.channels


def test_cnn_receptive_field_covers_context():
    for context in (24, 256, 1024):
        cls = ARCHITECTURES.get("cnn")
        with torch.device("meta"):
            model = build(cls, V, context, size_for(cls, 20_000, V, context, {}))
        assert model.receptive_field >= context


def test_transformer_rotary_option_and_learned_limit():
    cls = ARCHITECTURES.get("transformer")
    rot = build(cls, V, T, {"d_model": 32, "n_layer": 1, "pos": "rotary"}).eval()
    assert rot.extrapolates and rot(torch.randint(0, V, (1, 2 * T))).shape == (1, 2 * T, V)
    assert build(cls, V, T, {"d_model": 32, "n_layer": 1}).extrapolates  # rotary by default
    learned = build(cls, V, T, {"d_model": 32, "n_layer": 1, "pos": "learned"})
    assert not learned.extrapolates
    with pytest.raises(ValueError, match="learned positions"):
        learned(torch.randint(0, V, (1, 2 * T)))


def test_non_embedding_count_excludes_embeddings():
    tr = small("transformer")
    assert tr.pos_emb is None  # rotary by default: the token embedding is the only embedding
    emb = tr.tok_emb.weight.numel()
    assert count_params(tr, non_embedding=False) - count_params(tr, non_embedding=True) == emb
    n, d = tr.n_layer, tr.d_model
    assert abs(count_params(tr) / (12 * n * d * d) - 1) < 0.1  # Kaplan's 12 n d^2


def test_rotary_with_an_odd_head_size():
    # 8 heads of 17 dimensions: a shape the tuner can pick; the last dimension of each head is not rotated
    cls = ARCHITECTURES.get("transformer")
    model = build(cls, V, T, {"d_model": 136, "n_layer": 1, "n_head": 8}).eval()
    x = torch.randint(0, V, (2, T))
    assert model(x).shape == (2, T, V)
    from mnemoscope.architectures.transformer import apply_rotary, rotary_tables

    q = torch.randn(1, 1, 5, 17)
    out = apply_rotary(q, *rotary_tables(5, 17, "cpu"))
    assert torch.equal(out[..., 16], q[..., 16]) and torch.allclose(out[0, 0, 0], q[0, 0, 0])  # position 0: no turn
    assert torch.allclose(out.norm(dim=-1), q.norm(dim=-1), atol=1e-5)  # a rotation keeps lengths


@pytest.mark.parametrize("name", ARCHS)
def test_loss_in_chunks_matches_the_whole_logits_and_never_holds_them(name):
    """Where an architecture exposes features/head, head(features(x)) is its forward pass, and the
    harness's chunked loss gives the same losses and gradients while the output layer never sees
    more than a chunk of positions at once."""
    from mnemoscope.contract.model import has_features, token_losses

    model = small(name)
    if not has_features(model):
        pytest.skip("no features/head pair: the harness takes the whole logits")
    x, y = torch.randint(0, V, (3, T)), torch.randint(0, V, (3, T))
    assert torch.allclose(model.head(model.features(x)), model(x), atol=1e-6)
    chunk = 7 * V  # 7 positions' logits at a time
    seen = []
    hook = model.head.register_forward_hook(lambda m, i, o: seen.append(o.shape[:-1].numel()))
    try:
        model.train()
        full = token_losses(model, x, y, None)
        g_full = torch.autograd.grad(full.sum(), list(model.parameters()), allow_unused=True)
        seen.clear()
        chunked = token_losses(model, x, y, chunk)
        g_chunked = torch.autograd.grad(chunked.sum(), list(model.parameters()), allow_unused=True)
    finally:
        hook.remove()
    assert seen and max(seen) <= 7 and sum(seen) >= 3 * T  # every position, a chunk at a time (recomputed too)
    assert torch.allclose(full, chunked, atol=1e-5)
    for a, b in zip(g_full, g_chunked):
        assert (a is None) == (b is None) and (a is None or torch.allclose(a, b, atol=1e-5))


def hooks_read(*variables: str) -> set[str]:
    """Names the machinery reads off an object with ``getattr``/``hasattr`` (the optional hooks)."""
    import re
    from pathlib import Path

    pattern = re.compile(r'(?:getattr|hasattr)\((?:%s), "(\w+)"' % "|".join(map(re.escape, variables)))
    return {m for f in (Path(__file__).parent.parent / "mnemoscope").rglob("*.py") for m in pattern.findall(f.read_text())}


def test_every_hook_the_harness_reads_is_listed_with_its_default():
    """The contract says what the harness reads: each hook it looks up on an architecture (class or
    model) is an attribute of Architecture, with its default, or one of the hooks it leaves absent."""
    read = hooks_read("cls", "model", "type(model)") - {"registered_name", "__name__"}  # the registry's own
    assert {"width_key", "features", "num_active_params", "state_size"} <= read  # the scan finds them
    assert read <= {n for n in dir(Architecture) if not n.startswith("_")} | set(Architecture.ABSENT_HOOKS)
    assert not any(hasattr(Architecture, n) for n in Architecture.ABSENT_HOOKS)


def test_an_architecture_without_a_width_key_is_built_at_its_config():
    """Sizing is optional: without width_key or config_for_params the config is used as given (the
    study then checks the count it builds against --params like any other)."""

    class Fixed(torch.nn.Module):
        def __init__(self, vocab_size, context_length, width=8):
            super().__init__()
            self.emb, self.out = torch.nn.Embedding(vocab_size, width), torch.nn.Linear(width, vocab_size)

        def forward(self, tokens):
            return self.out(self.emb(tokens))

    class FixedArch(Architecture):
        def __init__(self, vocab_size, context_length, width=8):
            super().__init__()
            self.out = torch.nn.Linear(width, vocab_size)

    for cls in (Fixed, FixedArch):
        assert size_for(cls, 10_000, V, T, {"width": 12}) == {"width": 12}
        assert size_for(cls, 10_000, V, T, {}) == {}
