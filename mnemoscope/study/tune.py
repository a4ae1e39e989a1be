"""Fair tuning with Optuna: every architecture gets the same trial budget (``study.py tune``).

Each trial trains one model at a small size for a fixed token budget with a TPE-sampled learning
rate, warm-up fraction, weight decay and shape (depth, or the architecture's ``shape_space``); the
width is then solved to match the size, so every trial has the same non-embedding parameter
count. The objective is the validation loss at the end of training (test data are never seen).
Trials are pruned by Optuna's median rule on the validation loss measured at log-spaced steps
(:class:`OptunaPruning`).

The Optuna study lives in ``--storage`` (default ``sqlite:///OUT/optuna.db``), an RDB storage
that ``optuna-dashboard sqlite:///OUT/optuna.db`` opens; its name says arch, task, size and
tokens, and ``--trials N`` means "until the study holds N finished trials", so a rerun resumes.
The best values are exported to ``OUT/tuned.yaml``; ``study.py ... --hparams tuned`` reads them
into the new study's config.yaml (with how they were found), refusing unequal budgets.
"""
from __future__ import annotations

import inspect
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import optuna
import yaml

from ..errors import UserError
from ..registry import ARCHITECTURES
from ..settings import TUNE
from ..specs import format_count, parse_spec
from ..storage import files
from ..training.callbacks import LogSpacedValidation
from .config import RunSpec, StudyConfig, default_name
from .queue import redact
from .runner import Study

DEFAULT_OUT = TUNE.out
SEARCHED = ["lr", "warmup_fraction", "weight_decay"]
def shape_space(cls) -> dict[str, list]:
    """The shape knobs tried for an architecture: its class's ``shape_space``, or the depth
    ``n_layer`` in 1..4 when its constructor takes one (else nothing)."""
    space = getattr(cls, "shape_space", None)
    if space is None and "n_layer" in inspect.signature(cls.__init__).parameters:
        space = {"n_layer": [1, 2, 3, 4]}
    return dict(space or {})


class OptunaPruning(L.Callback):
    """Reports each new point of a :class:`~mnemoscope.training.callbacks.LogSpacedValidation` to the trial
    (step = tokens seen) and stops a trial the pruner rejects.

    Why not ``optuna_integration.PyTorchLightningPruningCallback``: it installs and imports
    ``lightning.pytorch`` fine, but reports at ``step=current_epoch``; our runs are one epoch
    of many steps, so every report would land on step 0 and Optuna ignores repeated steps: the
    pruner would only ever see the first validation. Must come after the validation callback.
    """

    def __init__(self, trial: optuna.Trial, curve: LogSpacedValidation | None = None):
        self.trial, self.curve, self.reported = trial, curve, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.curve is None:  # the run's own curve: the trainer's LogSpacedValidation
            self.curve = next(c for c in trainer.callbacks if isinstance(c, LogSpacedValidation))
        if len(self.curve.history) == self.reported:
            return
        self.reported = len(self.curve.history)
        step, tokens, _ = self.curve.history[-1]
        value = self.curve.last_loss
        if not math.isfinite(value):
            return
        self.trial.report(value, step=int(tokens))
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after {tokens} tokens at validation loss {value:.4f}")


def sqlite_url(out: Path) -> str:
    return f"sqlite:///{(Path(out) / 'optuna.db').resolve()}"


def study_name(arch: str, task: str, params: int, tokens: int, context: int, batch_size: int) -> str:
    return f"{arch}|{task}|{format_count(params)} params|{format_count(tokens)} tokens|T{context}|B{batch_size}"


def tune(arch: str, task: str = TUNE.task, trials: int = TUNE.trials, params: int = TUNE.params,
         tokens: int = TUNE.tokens, context: int | None = None, batch_size: int | str = TUNE.batch_size,
         out: Path = DEFAULT_OUT, storage: str | None = None, seed: int = TUNE.seed, progress: bool = False,
         log=print) -> dict[str, Any]:
    """Tune one architecture on one task until its Optuna study holds ``trials`` finished trials.
    Returns the entry written to ``out/tuned.yaml``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    url = storage or sqlite_url(out)
    cls, _, _ = parse_spec(arch, ARCHITECTURES)
    space = shape_space(cls)
    base = StudyConfig(name="tune", archs=[arch], tasks=[task], params=[params], context=context, tokens=tokens,
                       batch_size=batch_size, seeds=[seed]).normalized()
    probe = Study(base, out)
    data = probe.task(task)
    data.splits()
    T = data.context_length
    batch = probe.batch_size(T)
    name = study_name(arch, task, base.params[0], base.tokens, T, batch)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(
            study_name=name, storage=url, direction="minimize", load_if_exists=True,
            sampler=optuna.samplers.TPESampler(seed=seed),
            # no pruning before a quarter of the tokens: early losses mostly rank warm-up lengths
            pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=base.tokens // 4))
    except (ImportError, ValueError, optuna.exceptions.StorageInternalError) as exc:
        raise UserError(f"cannot open Optuna storage {redact(url)}: {type(exc).__name__}: {exc}") from exc
    finished = [t for t in study.trials if t.state.is_finished()]
    todo = max(0, trials - len(finished))
    log(f"tune {arch} on {task}: {len(finished)} trials done, {todo} to go -> {redact(url)} (study {name!r})")

    def objective(trial: optuna.Trial) -> float:
        hp = {"lr": trial.suggest_float("lr", 1e-4, 3e-2, log=True),
              "warmup_fraction": trial.suggest_float("warmup_fraction", 0.0, 0.2),
              "weight_decay": trial.suggest_float("weight_decay", 0.0, 0.3)}
        shape = {k: trial.suggest_categorical(k, v) for k, v in space.items()}
        config = StudyConfig(**{**base.to_dict(), "hparams": {arch: {**hp, "shape": shape}}}).normalized()
        trial_study = Study(config, out, tasks=probe.tasks)  # the task's splits are already loaded
        run = RunSpec(arch, task, base.params[0], seed)
        tmp = Path(tempfile.mkdtemp(prefix=".trial-", dir=out))
        try:
            # the study's own training path; the pruner watches its log-spaced validation curve
            trained = trial_study.train(run, tmp, callbacks=[OptunaPruning(trial)], progress=progress,
                                        reraise=(optuna.TrialPruned,))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        trial.set_user_attr("arch_config", trained.arch_config)
        curve, guard = trained.curve, trained.guard
        value = curve.last_loss
        if guard.step is not None or not math.isfinite(value):
            trial.set_user_attr("status", f"diverged at step {guard.step}")
            # no better than knowing nothing: the uniform prediction's loss. Finite on purpose:
            # older optuna-dashboard versions fail to load a study holding an inf value
            return max(math.log(data.vocab_size), value if math.isfinite(value) else 0.0)
        trial.set_user_attr("status", "ok")
        return value

    def report(study, trial):
        v = f"{trial.value:.4f}" if trial.value is not None else "-"
        log(f"  trial {trial.number}: {trial.state.name.lower()} val_loss {v} "
            + " ".join(f"{k}={_short(x)}" for k, x in trial.params.items()))

    if todo:
        study.optimize(objective, n_trials=todo, catch=(UserError, RuntimeError, ValueError), callbacks=[report])
    entry = tuned_entry(study, arch, task, base, url, name, space, batch)
    write_tuned(out, task, arch, entry)
    log(f"tuned {arch} on {task}: {entry['tuning']['trials']} trials, best val_loss "
        f"{entry['tuning']['best_val_loss']:.4f} -> {out / 'tuned.yaml'}")
    return entry


def _short(x):
    return f"{x:.3g}" if isinstance(x, float) else str(x)


def tuned_entry(study, arch, task, base, url, name, space, batch) -> dict[str, Any]:
    trials = [t for t in study.trials if t.state.is_finished()]
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and math.isfinite(t.value)]
    if not complete:
        raise UserError(f"no trial of {arch} on {task} finished with a finite loss; see {redact(url)}")
    best = min(complete, key=lambda t: t.value)
    count = lambda s: sum(t.state == s for t in trials)
    return {
        **{k: float(best.params[k]) for k in SEARCHED},
        "shape": {k: best.params[k] for k in space},
        "tuning": {"trials": len(trials), "complete": count(optuna.trial.TrialState.COMPLETE),
                   "pruned": count(optuna.trial.TrialState.PRUNED), "failed": count(optuna.trial.TrialState.FAIL),
                   "searched": SEARCHED + list(space), "best_val_loss": float(best.value), "best_trial": best.number,
                   "task": task, "params": base.params[0], "tokens": base.tokens, "batch_size": batch,
                   "context": base.context, "sampler": "TPE", "pruner": "median",
                   "storage": redact(url), "study_name": name},
    }


def write_tuned(out: Path, task: str, arch: str, entry: dict) -> None:
    path = Path(out) / "tuned.yaml"
    data = load_tuned(path) if path.exists() else {}
    data.setdefault(task, {})[arch] = entry
    files.write_text(path, yaml.safe_dump(data, sort_keys=False))


def load_tuned(path: Path) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise UserError(f"cannot read tuned hyperparameters {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"corrupt YAML in {path}: {files.yaml_error(exc)}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a mapping of task -> arch -> hyperparameters")
    return data


def apply_tuned(config, source: str):
    """A copy of a StudyConfig whose hparams are the tuned ones of every (arch, task) it holds.

    ``source``: ``tuned`` (``results/tune/tuned.yaml``) or the path of a tuned.yaml. Refuses
    an architecture without tuned values, values that differ between the study's tasks, and
    trial budgets that differ between architectures (the comparison would not be fair).
    """
    path = DEFAULT_OUT / "tuned.yaml" if source == "tuned" else Path(source)
    if not path.exists():
        raise UserError(f"no tuned hyperparameters at {path}: run `study.py tune --arch ARCH --task TASK` first")
    data = load_tuned(path)
    hparams = dict(config.hparams)
    budgets = {}
    for arch in config.archs:
        chosen = None
        for task in config.tasks:
            entry = (data.get(task) or {}).get(arch)
            if entry is None:
                raise UserError(f"{path} has no tuned hyperparameters for {arch} on {task}; run "
                                f"`study.py tune --arch {arch} --task {task}`")
            if chosen is not None and {k: v for k, v in entry.items() if k != "tuning"} != \
                    {k: v for k, v in chosen.items() if k != "tuning"}:
                raise UserError(f"{arch} was tuned to different values on {', '.join(config.tasks)}; "
                                "run one task per study with --hparams tuned")
            chosen = entry
        hparams[arch] = chosen
        budgets[arch] = chosen.get("tuning", {}).get("trials")
    if len(set(budgets.values())) > 1:
        shown = ", ".join(f"{a} {n}" for a, n in budgets.items())
        raise UserError(f"unequal tuning budgets ({shown} trials): tune every architecture with the same --trials")
    d = {**config.to_dict(), "hparams": hparams}
    explicit_name = config.name != default_name(config)
    if not explicit_name:
        d["name"] = None  # the name follows the config, now with its tuned values
    return StudyConfig.from_dict(d)
