"""Fair tuning: an Optuna smoke test, pruning, and how tuned values reach later studies."""
import math

import optuna
import pytest
import yaml

from mnemoscope.cli import main
from mnemoscope.errors import UserError
from mnemoscope.study.config import StudyConfig
from mnemoscope.study.runner import Study
from mnemoscope.study.tune import OptunaPruning, apply_tuned, shape_space, tune, write_tuned

TINY = dict(params=3000, tokens=12_000, context=16, batch_size=8)


def test_tune_smoke(tmp_path, text_dir):
    """3 trials of a tiny LSTM: an SQLite study optuna (and optuna-dashboard) can load, and tuned.yaml."""
    task = f"text:{text_dir}"
    out = tmp_path / "tune"
    entry = tune("lstm", task, trials=3, out=out, log=lambda *a: None, **TINY)
    studies = optuna.get_all_study_summaries(f"sqlite:///{out / 'optuna.db'}")
    assert len(studies) == 1 and studies[0].n_trials == 3
    assert entry["tuning"]["trials"] == 3 and entry["tuning"]["complete"] >= 1
    assert set(entry) == {"lr", "warmup_fraction", "weight_decay", "shape", "tuning"}
    assert entry["shape"]["n_layer"] in (1, 2, 3)
    assert 1e-4 <= entry["lr"] <= 3e-2 and math.isfinite(entry["tuning"]["best_val_loss"])
    saved = yaml.safe_load((out / "tuned.yaml").read_text())
    assert saved[task]["lstm"] == entry
    # a rerun with the same budget resumes: nothing more to do
    again = tune("lstm", task, trials=3, out=out, log=lambda *a: None, **TINY)
    assert again["tuning"]["trials"] == 3

    # --hparams: the tuned values, and the shape, reach a later study at every size
    config = apply_tuned(StudyConfig(archs=["lstm"], tasks=[task], params=[3000, 6000], context=16).normalized(),
                         str(out / "tuned.yaml"))
    assert config.hparams["lstm"]["lr"] == entry["lr"]
    study = Study(config, tmp_path / "s")
    for run in study.prepare():
        _, arch_config, _ = study.model(run)
        assert arch_config["n_layer"] == entry["shape"]["n_layer"]
    assert study.hparams(*study.model(run)[:1], "lstm").lr == entry["lr"]


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial):
        return True


def test_pruning_stops_training_at_the_first_validation_point(tiny_lstm, tmp_path):
    from mnemoscope.training.callbacks import LogSpacedValidation
    from mnemoscope.training.train import TrainConfig, fit

    model, splits = tiny_lstm
    cfg = TrainConfig(tokens=20_000, batch_size=8)
    study = optuna.create_study(pruner=AlwaysPrune())
    trial = study.ask()
    curve = LogSpacedValidation(splits["validation"], 16, cfg.steps(16), 8 * 16, 8)
    with pytest.raises(optuna.TrialPruned):
        fit(model, splits["train"], splits["validation"], 16, cfg, tmp_path / "logs",
            callbacks=[curve, OptunaPruning(trial, curve)], progress=False)
    assert len(curve.history) == 1
    assert trial.storage.get_trial(trial._trial_id).intermediate_values == {128: pytest.approx(curve.last_loss)}


def fake_entry(trials, lr=1e-3):
    return {"lr": lr, "warmup_fraction": 0.05, "weight_decay": 0.1, "shape": {"n_layer": 2},
            "tuning": {"trials": trials, "searched": ["lr"]}}


def test_apply_tuned_refuses_unfair_or_missing_tuning(tmp_path):
    write_tuned(tmp_path, "text", "lstm", fake_entry(30))
    write_tuned(tmp_path, "text", "transformer", fake_entry(10))
    path = str(tmp_path / "tuned.yaml")
    base = StudyConfig(archs=["lstm", "transformer"], tasks=["text"]).normalized()
    with pytest.raises(UserError, match="unequal tuning budgets"):
        apply_tuned(base, path)
    with pytest.raises(UserError, match="no tuned hyperparameters for cnn"):
        apply_tuned(StudyConfig(archs=["cnn"], tasks=["text"]).normalized(), path)
    with pytest.raises(UserError, match="no tuned hyperparameters at"):
        apply_tuned(base, str(tmp_path / "missing.yaml"))
    tuned = apply_tuned(StudyConfig(archs=["lstm"], tasks=["text"]).normalized(), path)
    assert tuned.hparams["lstm"]["lr"] == 1e-3
    assert tuned.name != StudyConfig(archs=["lstm"], tasks=["text"]).normalized().name  # the name follows the values


def test_shape_space_of_builtins_and_plugins():
    from mnemoscope.registry import ARCHITECTURES

    assert shape_space(ARCHITECTURES.get("transformer")) == {"n_layer": [1, 2, 3, 4, 6]}
    assert "kernel_size" in shape_space(ARCHITECTURES.get("cnn"))


def test_cli_tune_errors_are_one_line(capsys):
    assert main(["tune", "--arch", "lstm", "--trials", "0"]) == 2
    assert "--trials must be at least 1" in capsys.readouterr().err
    assert main(["tune"]) == 2
