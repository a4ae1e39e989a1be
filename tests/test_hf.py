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
from mnemoscope.model import Architecture, build, count_params, size_for, solve_width
from mnemoscope.registry import ARCHITECTURES
from mnemoscope.specs import parse_spec

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
    from mnemoscope.store import environment

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
    rc = main(["--arch", "hf:llama", "hf:mamba2", "lstm", "--task", f"text:{text_dir}", "--params", "5k",
               "--context", "16", "--tokens", "3000", "--eval-sequences", "8", "--no-progress", "--no-analysis",
               "--out", str(out)])
    assert rc == 0
    import pandas as pd

    runs = pd.read_parquet(out / "runs.parquet").set_index("arch")
    assert sorted(runs.index) == ["hf:llama", "hf:mamba2", "lstm"]
    assert ((runs.achieved_params / 5000 - 1).abs() <= 0.10).all()
    assert (runs.status == "ok").all()
    assert set(json.loads(runs.loc["hf:llama", "arch_config"])) == {"hidden_size", "num_hidden_layers"}


@needs_transformers
def test_list_shows_the_families_and_caches_the_check(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("MNEMOSCOPE_CACHE", str(tmp_path))  # this test's own cache of the checks

    def failing(name):
        return "RuntimeError: no kernel for this" if name == "rwkv" else ""
    monkeypatch.setattr(hf, "check_family", failing)
    assert main(["list"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("hf:")}
    assert set(lines) == {f"hf:{name}" for name in hf.FAMILIES}
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
