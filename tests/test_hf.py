"""Hugging Face families as architectures (``--arch hf:FAMILY[:key=value,...]``): names, options,
sizing, errors, `study.py list`. The contract itself (causality, sizing, no state between calls)
is checked for every family in tests/test_contract.py."""
from __future__ import annotations

import importlib.util
import json
import os

import pytest
import torch

from mnemoscope.architectures import hf
from mnemoscope.cli import main
from mnemoscope.errors import RegistryError, UserError
from mnemoscope.contract.model import Architecture, build, check_contract
from mnemoscope.contract.sizing import count_params, size_for, solve_width
from mnemoscope.registry import ARCHITECTURES
from mnemoscope.specs import parse_count, parse_spec

needs_transformers = pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                                        reason="transformers is not installed (pip install -e '.[hf]')")
V, T = 37, 24


def test_hf_specs_resolve_to_one_class_per_family_with_options():
    cls, label, options = parse_spec("hf:llama:num_key_value_heads=1,rms_norm_eps=1e-5", ARCHITECTURES)
    assert label == "hf:llama:num_key_value_heads=1,rms_norm_eps=1e-5"
    assert options == {"num_key_value_heads": 1, "rms_norm_eps": 1e-5}
    assert cls is ARCHITECTURES.get("hf:llama") and cls.registered_name == "hf:llama"
    assert parse_spec("hf:mamba2", ARCHITECTURES)[1:] == ("hf:mamba2", {})
    assert cls.width_key == "hidden_size" and ARCHITECTURES.get("hf:gpt2").width_key == "n_embd"
    assert ARCHITECTURES.get("hf:gpt2").extrapolates is False  # learned positions
    with pytest.raises(UserError, match="malformed option"):
        parse_spec("hf:llama:num_hidden_layers", ARCHITECTURES)


def test_unknown_family_fails_in_one_line_listing_the_families():
    with pytest.raises(RegistryError) as err:
        parse_spec("hf:no_such_family", ARCHITECTURES)
    message = str(err.value)
    assert "\n" not in message and "'no_such_family'" in message
    assert "llama" in message and "mamba2" in message and "xlstm" in message


def test_every_family_has_a_shape_space_and_depths_per_size():
    for name, family in hf.FAMILIES.items():
        cls = ARCHITECTURES.get(f"hf:{name}")
        assert list(cls.shape_space) == [family.depth] and min(cls.shape_space[family.depth]) >= family.min_depth
        small, large = (list(cls.shape_candidates(n, 256)) for n in (2e4, 5e7))
        assert small[0][family.depth] < large[0][family.depth], name  # deeper when larger, like the built-ins
        assert all(c[family.depth] >= family.min_depth for c in small + large)


def test_width_step_keeps_solved_widths_on_its_grid():
    """A width whose heads must be even: the solver's finer pass keeps to steps of ``width_step``."""

    class Quadratic(Architecture):
        width_key = "d"
        width_multiple = 8

        def __init__(self, vocab_size, context_length, d=8):
            super().__init__()
            self.w = torch.nn.Parameter(torch.empty(d, d))

    target = 11 * 11  # 11 x 11 is the exact width; multiples of 8 land far from it
    assert solve_width(Quadratic, target, V, T, {})["d"] == 11
    Quadratic.width_step = 2
    assert solve_width(Quadratic, target, V, T, {})["d"] in (10, 12)


@needs_transformers
def test_a_wrong_config_key_fails_naming_the_valid_ones(tmp_path, capsys):
    cls = ARCHITECTURES.get("hf:llama")
    with pytest.raises(UserError) as err:
        size_for(cls, 20_000, V, T, {"no_such_key": 1})
    assert "no_such_key" in str(err.value) and "num_key_value_heads" in str(err.value) and "\n" not in str(err.value)
    out = tmp_path / "study"
    rc = main(["--arch", "hf:llama:no_such_key=1", "lstm", "--task", "copy", "--params", "3k", "--out", str(out)])
    assert rc == 2 and not out.exists()  # refused before anything is written
    assert "no_such_key" in capsys.readouterr().err


@needs_transformers
def test_offline_by_construction():
    tf = hf.transformers()
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["USE_HUB_KERNELS"] == "NO"
    from mnemoscope.storage.study_folder import environment

    assert environment()["packages"]["transformers"] == tf.__version__  # a study records the version


@needs_transformers
def test_embeddings_and_head_are_embedding_parameters():
    gpt2 = build(ARCHITECTURES.get("hf:gpt2"), V, T, {"n_embd": 32, "n_layer": 1})
    wte, wpe = gpt2.hf.transformer.wte.weight, gpt2.hf.transformer.wpe.weight
    assert gpt2.hf.lm_head.weight is wte  # tied, as every built-in
    assert count_params(gpt2, non_embedding=False) - count_params(gpt2) == wte.numel() + wpe.numel()
    xlstm = build(ARCHITECTURES.get("hf:xlstm"), V, T, {"hidden_size": 32, "num_hidden_layers": 1})
    assert xlstm.hf.get_output_embeddings().weight is xlstm.hf.get_input_embeddings().weight  # tied here
    untied = build(ARCHITECTURES.get("hf:llama"), V, T, {"hidden_size": 32, "num_hidden_layers": 1,
                                                           "tie_word_embeddings": False})
    assert count_params(untied, non_embedding=False) - count_params(untied) == 2 * V * 32  # head counted out too


@needs_transformers
def test_width_sets_heads_and_sizes_consistently():
    llama = build(ARCHITECTURES.get("hf:llama"), V, T, size_for(ARCHITECTURES.get("hf:llama"), 300_000, V, T, {}))
    c = llama.config
    assert c.num_attention_heads * c.head_dim == c.hidden_size and c.head_dim % 2 == 0
    assert c.intermediate_size % 8 == 0 and abs(c.intermediate_size / c.hidden_size - 8 / 3) < 0.2
    mamba2 = build(ARCHITECTURES.get("hf:mamba2"), V, T, {"hidden_size": 72, "num_hidden_layers": 1})
    assert mamba2.config.num_heads * mamba2.config.head_dim == 2 * 72
    wide = build(ARCHITECTURES.get("hf:llama"), V, T, {"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4})
    assert wide.config.head_dim == 16  # a given head count sets the head size


@needs_transformers
def test_mixture_of_experts_reports_active_parameters():
    model = build(ARCHITECTURES.get("hf:mixtral"), V, T, {"hidden_size": 32, "num_hidden_layers": 1})
    experts = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    assert experts > 0
    assert model.num_active_params() == count_params(model) - round(experts * (1 - 2 / 8))


@needs_transformers
def test_study_names_runs_by_their_specs(tmp_path, text_dir):
    out = tmp_path / "study"
    rc = main(["--arch", "hf:llama", "hf:mamba2", "hf:lfm2", "lstm", "--task", f"text:{text_dir}", "--params", "5k",
               "--context", "16", "--tokens", "3000", "--eval-sequences", "8", "--no-progress", "--no-analysis",
               "--out", str(out)])
    assert rc == 0
    import pandas as pd

    runs = pd.read_parquet(out / "runs.parquet").set_index("arch")
    assert sorted(runs.index) == ["hf:lfm2", "hf:llama", "hf:mamba2", "lstm"]
    assert ((runs.achieved_params / 5000 - 1).abs() <= 0.10).all()
    assert (runs.status == "ok").all()
    assert set(json.loads(runs.loc["hf:llama", "arch_config"])) == {"hidden_size", "num_hidden_layers"}
    # a hybrid's run records its depth and layer types, and the report shows them
    assert json.loads(runs.loc["hf:lfm2", "arch_config"])["layer_types"] == ["conv", "conv", "full_attention"]
    from mnemoscope.report.page import layers_of

    assert layers_of(runs.loc["hf:lfm2", "arch_config"]) == "3 (2 conv, 1 full_attention)"
    assert layers_of(runs.loc["hf:llama", "arch_config"]) == "2"


@needs_transformers
def test_list_shows_the_families_and_caches_the_check(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("MNEMOSCOPE_CACHE", str(tmp_path))  # this test's own cache of the checks

    def failing(name):
        return "RuntimeError: no kernel for this" if name == "rwkv" else ""
    monkeypatch.setattr(hf, "check_family", failing)
    assert main(["list"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("hf:")}
    assert set(lines) == {f"hf:{name}" for name in hf.causal_families()}
    assert "cannot run here: RuntimeError: no kernel" in lines["hf:rwkv"] and "cannot run" not in lines["hf:llama"]
    assert "slow" in lines["hf:mamba"]  # Mamba-1's token-by-token path is said
    monkeypatch.setattr(hf, "check_family", lambda name: pytest.fail("checked again instead of cached"))
    assert main(["list"]) == 0
    assert "cannot run here" in capsys.readouterr().out


@needs_transformers
def test_a_family_is_checked_by_building_and_training_one_tiny_model(monkeypatch):
    assert hf.check_family("llama") == ""

    def broken(model, *args):
        raise RuntimeError("causality\nbroken")
    monkeypatch.setattr(hf, "check_contract", broken)
    assert hf.check_family("llama") == "RuntimeError: causality broken"  # one line


# -- every causal family of the installed transformers (issue 25, item 12) ------------------------
ASKED = ["qwen2", "mistral", "gemma2", "gemma3", "phi3", "gpt_neox"]  # refused before: not hand-listed


@needs_transformers
def test_every_causal_family_of_transformers_is_offered():
    names = hf.causal_families()
    assert len(names) > 150 and set(ASKED) <= set(names) and set(hf.FAMILIES) <= set(names)
    for name in ASKED:
        assert ARCHITECTURES.get(f"hf:{name}").registered_name == f"hf:{name}"


@needs_transformers
def test_a_model_that_is_not_causal_is_refused_in_one_line_pointing_to_plugins():
    for name in ("t5", "vit"):
        with pytest.raises(RegistryError) as err:
            parse_spec(f"hf:{name}", ARCHITECTURES)
        message = str(err.value)
        assert "\n" not in message and f"hf:{name} is not a causal language model" in message
        assert ".py:" in message  # the plugin route: --arch my_model.py:MyModel
    with pytest.raises(RegistryError, match="did you mean qwen2"):
        parse_spec("hf:qwen22", ARCHITECTURES)


@needs_transformers
@pytest.mark.parametrize("name", ASKED + ["deepseek_v3", "bloom", "falcon", "opt", "bert"])
def test_a_generic_family_is_sized_like_the_built_ins_and_keeps_the_contract(name):
    cls = ARCHITECTURES.get(f"hf:{name}")
    config = size_for(cls, 20_000, V, T, {})
    torch.manual_seed(0)
    model = build(cls, V, T, config)
    assert abs(count_params(model) / 20_000 - 1) <= 0.10, config
    check_contract(model, V, T, name)
    c = model.config
    if getattr(c, "num_key_value_heads", None):  # grouped heads divide the heads
        assert c.num_attention_heads % c.num_key_value_heads == 0
    assert count_params(model, non_embedding=False) > count_params(model)  # the embedding is left out


# families of transformers 5.25 that do not build or break the contract at a tiny size (the reasons, one
# line each, in docs/architectures.md); every other causal family must build, pass the contract check
# and take a backward pass, so that a release that breaks one fails here
DOES_NOT_BUILD = {
    "blt", "emu3", "fuyu", "got_ocr2", "mllama", "moss_transcribe_diarize", "musicgen", "musicgen_melody",
    "gemma4_unified_assistant", "longcat_flash", "nemotron_h", "prophetnet", "reformer",  # no width/depth keys
    "dots3_note", "dots3_note_text",  # per-layer heads
    "cohere_compass_text", "dbrx", "deepseek_v2", "diffllama", "dory", "dots1", "falcon_h1", "gemma3n", "gemma3n_text",
    "gemma4_assistant", "gpt_neo", "hunyuan_v1_dense", "hunyuan_v1_moe", "kolibri1_1", "lfm2_moe", "mimo_v2_flash",
    "ministral", "nemotron", "qwen4_exp", "qwen4_exp_text", "rembert", "zamba",  # the scaled-down config is refused
    "git", "phi4_multimodal",  # vision or audio encoders at their full size
    "cpmant", "moshi", "xmod",  # other outputs or inputs than a causal LM's
    "xlm", "xlnet",  # not causal
}
EVERY_FAMILY = hf.causal_families() if importlib.util.find_spec("transformers") else ()


@needs_transformers
@pytest.mark.parametrize("name", [n for n in EVERY_FAMILY if n not in DOES_NOT_BUILD])
def test_every_causal_family_builds_keeps_the_contract_and_trains(name):
    assert hf.check_family(name) == ""  # a tiny model: built, contract-checked, one backward pass


@needs_transformers
def test_the_generic_recipe_keeps_a_family_s_proportions():
    mistral = build(ARCHITECTURES.get("hf:mistral"), V, T, {"hidden_size": 128, "num_hidden_layers": 1}).config
    assert (mistral.num_attention_heads, mistral.num_key_value_heads, mistral.head_dim) == (4, 1, 32)  # 4 per kv head
    assert mistral.intermediate_size == 448  # 14336 / 4096 x 128
    neox = build(ARCHITECTURES.get("hf:gpt_neox"), V, T, {"hidden_size": 64, "num_hidden_layers": 1}).config
    assert neox.intermediate_size == 256 and neox.max_position_embeddings == T + 2  # room for offsets
    assert ARCHITECTURES.get("hf:gpt_neox").extrapolates and not ARCHITECTURES.get("hf:opt").extrapolates


# -- a hybrid stays a hybrid (issue 25, item 13) ----------------------------------------------------
@needs_transformers
@pytest.mark.parametrize("target", [20_000, 100_000, 300_000])
def test_a_hybrid_keeps_its_layer_mix_at_every_size(target):
    for name, kinds, unit in (("qwen3_next", {"linear_attention": 3, "full_attention": 1}, 4),
                              ("lfm2", {"conv": 2, "full_attention": 1}, 3),
                              ("gemma3", {"sliding_attention": 5, "full_attention": 1}, 6)):
        cls = ARCHITECTURES.get(f"hf:{name}")
        config = size_for(cls, target, 256, 256, {})
        with torch.device("meta"):
            model = build(cls, 256, 256, config)
        types = model.layer_types
        assert len(types) == model.depth and model.depth % unit == 0, (name, config)
        assert {k: types.count(k) * unit // len(types) for k in set(types)} == kinds, (name, types)
        assert config["layer_types"] == types  # recorded in the run's arch_config
        assert abs(count_params(model) / target - 1) <= 0.10


@needs_transformers
def test_mixtures_of_experts_keep_the_preferred_depth():
    for name in ("olmoe", "mixtral"):
        cls = ARCHITECTURES.get(f"hf:{name}")
        config = size_for(cls, 100_000, 256, 256, {})
        assert config["num_hidden_layers"] == 2, config  # as the table in docs/architectures.md says
        with torch.device("meta"):
            assert abs(count_params(build(cls, 256, 256, config)) / 100_000 - 1) <= 0.05


@needs_transformers
def test_a_size_below_the_smallest_hybrid_is_refused_naming_the_smallest(tmp_path):
    cls = ARCHITECTURES.get("hf:qwen3_next")
    with pytest.raises(UserError) as err:
        size_for(cls, 2_000, 256, 256, {})
    message = str(err.value)
    assert "\n" not in message and "3 linear_attention + 1 full_attention" in message and "or more" in message
    smallest = parse_count(message.split("use --params ")[1].split()[0])
    config = size_for(cls, smallest, 256, 256, {})  # the size it names does fit
    with torch.device("meta"):
        assert abs(count_params(build(cls, 256, 256, config)) / smallest - 1) <= 0.10
    out = tmp_path / "study"
    assert main(["--arch", "hf:qwen3_next", "--task", "copy", "--params", "2k", "--out", str(out)]) == 2
    assert not out.exists()


@needs_transformers
def test_list_shows_the_layer_mix_of_hybrids(monkeypatch, tmp_path):
    monkeypatch.setenv("MNEMOSCOPE_CACHE", str(tmp_path))
    monkeypatch.setattr(hf, "check_family", lambda name: "")
    lines = dict(hf.listing())
    assert "3 linear_attention + 1 full_attention per 4 layers" in lines["hf:qwen3_next"]
    assert "at least 4 layers" in lines["hf:qwen3_next"] and "sliding_attention" in lines["hf:gemma2"]


@needs_transformers
def test_a_depth_that_cannot_hold_the_layer_mix_is_refused():
    with pytest.raises(UserError, match="at least 4 layer.*3 linear_attention"):
        build(ARCHITECTURES.get("hf:qwen3_next"), V, T, {"hidden_size": 16, "num_hidden_layers": 2})
    with pytest.raises(UserError, match="at least 1 layer"):
        build(ARCHITECTURES.get("hf:llama"), V, T, {"hidden_size": 16, "num_hidden_layers": 0})


def test_state_size_counts_the_cache():
    """Attention's state is its keys and values at every position; Mamba-2's does not grow with the
    sequence; a family that returns no cache here says nothing (None)."""
    V, T = 64, 32
    llama = build(ARCHITECTURES.get("hf:llama"), V, T, {"hidden_size": 32, "num_hidden_layers": 2,
                                                        "num_attention_heads": 4, "num_key_value_heads": 2})
    assert llama.state_size(T) == 2 * 2 * T * 2 * 8 and llama.training  # layers x (k, v) x T x kv heads x head size
    mamba2 = build(ARCHITECTURES.get("hf:mamba2"), V, T, {"hidden_size": 72, "num_hidden_layers": 1})
    assert mamba2.state_size(16) == mamba2.state_size(T) > 0
    gemma = build(ARCHITECTURES.get("hf:recurrent_gemma"), V, T, size_for(ARCHITECTURES.get("hf:recurrent_gemma"),
                                                                          20_000, V, T, {}))
    assert gemma.state_size(T) is None
