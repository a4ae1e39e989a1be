"""The recall probe's measures (where recall falls below half, with its interval), the phase
change found from kept steps, and the transformer's convolutions: a new version with its own run
ids, and stored runs of the GPT-2 recipe still loading as what they were."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from mnemoscope.study.config import RunSpec, StudyConfig
from mnemoscope.measure.history import phase_change, scored_per_window
from mnemoscope.storage.migrations import transformer_before_convolutions
from mnemoscope.registry import ARCHITECTURES
from mnemoscope.storage.run_folder import model_from_checkpoint
from mnemoscope.tasks.probe_views import format_half, half_distance, recall_half_table

D = np.array([2, 4, 8, 16, 32, 64, 128])


def test_half_distance_interpolates_on_log2_and_says_never_and_from_the_start():
    acc = np.array([[1.0, 1.0, 0.9, 0.7, 0.3, 0.1, 0.0],  # crosses between 16 (0.7) and 32 (0.3): midway
                    [1.0] * 7,  # never below half
                    [0.2] * 7])  # below from the shortest distance
    got = half_distance(D, acc)
    assert got[0] == pytest.approx(2 ** 4.5)
    assert math.isinf(got[1])
    assert got[2] == 2


def _queries(model: str, acc_by_distance: dict[int, float], n_seq: int = 40, rng=None) -> pd.DataFrame:
    rng = rng or np.random.default_rng(0)
    rows = []
    for s in range(n_seq):
        for d, p in acc_by_distance.items():
            for _ in range(4):
                rows.append({"model": model, "arch": model.split()[0], "params": 1000, "unit": f"{model}:{s}",
                             "distance": d, "accuracy": float(rng.random() < p)})
    return pd.DataFrame(rows)


def test_recall_half_table_gives_an_interval_around_the_point_and_reads_in_words():
    q = pd.concat([_queries("lstm 1k", {2: 0.95, 4: 0.9, 8: 0.8, 16: 0.2, 32: 0.05}),
                   _queries("transformer 1k", {2: 1.0, 4: 1.0, 8: 1.0, 16: 0.99, 32: 0.98})], ignore_index=True)
    t = recall_half_table(q, n_boot=200).set_index("model")
    lstm, tr = t.loc["lstm 1k"], t.loc["transformer 1k"]
    assert 8 < lstm["half_distance"] < 16 and lstm["half_low"] <= lstm["half_distance"] <= lstm["half_high"]
    assert lstm["half_high"] - lstm["half_low"] > 0  # 40 sequences: a real interval, not a point
    assert tr["never_below_half"] and format_half(tr).startswith("never below half up to 32 (lowest 0.9")
    assert format_half(lstm).count("[") == 1 and not format_half(lstm).startswith("never")


def _steps(means: list[float], tokens: list[int], n: int = 64, T: int = 8, noise: float = 0.05, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for m, t in zip(means, tokens):
        losses = np.clip(m + noise * rng.standard_normal((n, T)), 0, None).astype(np.float32)
        mask = np.zeros((n, T), bool)
        mask[:, -2:] = True  # a probe scores some targets only
        out.append({"losses": losses, "mask": mask, "tokens": t, "step": t // 10})
    return out


def test_phase_change_is_placed_between_the_kept_steps_around_the_jump():
    tokens = [1000, 2000, 4000, 8000, 16000]
    ch = phase_change(scored_per_window(_steps([2.7, 2.7, 2.6, 0.2, 0.05], tokens)), threshold=1.35, n_boot=200)
    assert ch["status"] == "crossed" and (ch["low"], ch["high"]) == (4000, 8000)
    assert 4000 < ch["tokens"] < 8000


def test_no_phase_change_within_the_budget_and_one_before_the_first_kept_step():
    tokens = [1000, 2000, 4000]
    none = phase_change(scored_per_window(_steps([2.7, 2.7, 2.69], tokens)), threshold=1.35, n_boot=200)
    assert none["status"] == "none" and math.isnan(none["tokens"]) and none["final_loss"] > 2.6
    early = phase_change(scored_per_window(_steps([0.3, 0.2, 0.1], tokens)), threshold=1.35, n_boot=200)
    assert early["status"] == "before" and early["high"] == 1000


def test_the_transformer_has_convolutions_and_transformer_gpt2_is_the_old_recipe():
    new, old = ARCHITECTURES.get("transformer"), ARCHITECTURES.get("transformer_gpt2")
    a, b = new(32, 16, d_model=16, n_layer=2), old(32, 16, d_model=16, n_layer=2)
    assert any(k.endswith("attn.conv.weight") for k in a.state_dict())
    assert not any(".conv." in k for k in b.state_dict())
    assert new.version == "3" and old.version is None


def test_a_new_version_of_an_architecture_is_a_new_run():
    study = StudyConfig.from_dict({"archs": ["transformer"], "tasks": ["recall"], "params": [1000], "seeds": [0]})
    run = RunSpec("transformer", "recall", 1000, 0)
    assert len({run.run_id(study, "fp"), run.run_id(study, "fp", "2"), run.run_id(study, "fp", "3")}) == 3
    assert run.run_id(study, "fp", "2").startswith("transformer-recall-1k-s0-")


def test_a_stored_transformer_without_convolutions_loads_as_the_gpt2_recipe():
    torch.manual_seed(0)
    old = ARCHITECTURES.get("transformer_gpt2")(32, 16, d_model=16, n_layer=2)
    ckpt = {"arch": "transformer", "vocab_size": 32, "context_length": 16, "arch_config": {"d_model": 16, "n_layer": 2},
            "state_dict": old.state_dict()}
    model = model_from_checkpoint(ckpt)
    x = torch.randint(0, 32, (2, 16))
    assert torch.equal(model(x), old.eval()(x))
    assert transformer_before_convolutions({"conv": 3}, ckpt["state_dict"]) == {"conv": 3}  # said: left alone
    new = ARCHITECTURES.get("transformer")(32, 16, d_model=16, n_layer=2)
    assert transformer_before_convolutions({}, new.state_dict()) == {}  # has them: the new recipe


def test_a_rerun_study_tables_the_old_recipe_under_its_own_name():
    old = ARCHITECTURES.get("transformer_gpt2")(32, 16, d_model=16, n_layer=2).state_dict()
    new = ARCHITECTURES.get("transformer")(32, 16, d_model=16, n_layer=2).state_dict()
    from mnemoscope.storage.migrations import arch_before_convolutions, trained_version
    v = lambda row, weights: lambda: trained_version(row, weights, lambda: "id-as-v2")
    assert arch_before_convolutions("transformer", v({}, lambda: old)) == "transformer:conv=0,init=gpt2"
    assert arch_before_convolutions("transformer:pos=learned", v({}, lambda: old)) == "transformer:pos=learned,conv=0,init=gpt2"
    assert arch_before_convolutions("transformer", v({"arch_version": "3"}, lambda: 1 / 0)) == "transformer"
    # version 2 (convolutions, GPT-2's initialisation) recorded no arch_version
    assert arch_before_convolutions("transformer", v({}, lambda: new)) == "transformer:init=gpt2"
    assert arch_before_convolutions("window_transformer:window=8", v({}, lambda: new)) == "window_transformer:window=8,init=gpt2"
    # no weights kept (a clone of a committed study): the run id tells version 2 from before it
    assert arch_before_convolutions("transformer", v({"run_id": "id-as-v2"}, None)) == "transformer:init=gpt2"
    assert arch_before_convolutions("transformer", v({"run_id": "older"}, None)) == "transformer:conv=0,init=gpt2"
    assert arch_before_convolutions("lstm", lambda: 1 / 0) == "lstm"  # other architectures: never asked
    cls, _, options = __import__("mnemoscope.specs", fromlist=["parse_spec"]).parse_spec("transformer:conv=0,init=gpt2", ARCHITECTURES)
    gpt2 = ARCHITECTURES.get("transformer_gpt2")
    torch.manual_seed(0)
    a = cls(32, 16, d_model=16, n_layer=2, **options)
    torch.manual_seed(0)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), gpt2(32, 16, d_model=16, n_layer=2).state_dict().values()))
    assert a.conv == 0  # the name builds the recipe it names: transformer_gpt2, weights and all


def test_the_transformer_starts_attention_at_order_one_and_gpt2_at_its_own_scale():
    """Version 3: q, k, v projections at N(0, 1/width) (the recall lookup is found on every seed);
    ``init=gpt2`` and ``transformer_gpt2`` keep GPT-2's N(0, 0.02)."""
    torch.manual_seed(0)
    width = ARCHITECTURES.get("transformer")(32, 16, d_model=64, n_layer=2)
    gpt2 = ARCHITECTURES.get("transformer")(32, 16, d_model=64, n_layer=2, init="gpt2")
    assert abs(width.blocks[0].attn.qkv.weight.std().item() - 1 / 8) < 0.01
    assert abs(gpt2.blocks[0].attn.qkv.weight.std().item() - 0.02) < 0.003
    assert abs(width.blocks[0].fc.weight.std().item() - 0.02) < 0.003  # the rest is GPT-2's
    with pytest.raises(ValueError, match="init must be"):
        ARCHITECTURES.get("transformer")(32, 16, d_model=64, n_layer=2, init="xavier")
