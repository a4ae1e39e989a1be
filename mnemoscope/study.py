"""The study runner: every architecture x task x size x seed is a run.

Layout of a study folder::

    config.yaml            the fully resolved study (``--config`` on it reruns the same study)
    environment.json       package versions, device, git commit
    runs/<run_id>/         one folder per finished run, moved into place atomically:
        result.json        its row of runs.parquet
        per_position.parquet
        losses.npz         per-sequence, per-position losses (N, T) and the target mask
        val_curve.npz      validation loss per sequence at log-spaced steps (loss against compute)
        model.pt           the trained weights (state_dict; load with weights_only=True)
        metrics.csv        Lightning's CSV log
    runs.parquet           one row per run, rebuilt from runs/*/result.json
    per_position.parquet   tidy rows, rebuilt from runs/*/per_position.parquet
    per_position.png, report.html
"""
from __future__ import annotations

import copy
import dataclasses
import errno
import hashlib
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
import yaml

from . import io
from .analysis import octave_gain
from .errors import ContractError, UserError
from .evaluate import bootstrap_ci, per_position_losses
from .model import SIZE_TOLERANCE, active_params, build, count_params, size_for, state_size
from .registry import ARCHITECTURES, TASKS
from .specs import format_count, parse_count, parse_spec
from .task import Task
from .train import MAX_AUTO_BATCH, TrainConfig, auto_batch_size, fit

EVAL_BATCH = 32  # sequences per evaluation forward
from .flops import flops_per_token
from .scaling import LogSpacedValidation

REPO_ROOT = Path(__file__).resolve().parent.parent

RUN_COLUMNS = ["run_id", "arch", "task", "params", "seed", "context", "arch_config", "target_params",
               "achieved_params", "active_params", "total_params", "state_size", "batch_size", "tokens_trained", "wall_seconds",
               "torch_threads",
               "final_val_loss", "test_loss", "last_octave_gain", "last_octave_gain_low",
               "last_octave_gain_high", "status", "diverged_step", "flops_per_token"]
POSITION_COLUMNS = ["run_id", "arch", "task", "params", "seed", "position", "loss", "ci_low", "ci_high", "n_sequences"]


@dataclass
class StudyConfig:
    """Everything that defines a study. Written to config.yaml, fully resolved."""

    name: str | None = None
    archs: list[str] = field(default_factory=lambda: ["transformer", "lstm", "cnn"])
    tasks: list[str] = field(default_factory=lambda: ["text"])
    params: list[int] = field(default_factory=lambda: [300_000])  # target non-embedding parameters
    context: int | None = None  # None: each task's natural length
    tokens: int = 2_000_000  # training tokens per run
    seeds: list[int] = field(default_factory=lambda: [0])
    batch_size: int | str = "auto"  # sequences per batch; auto: see train.auto_batch_size
    eval_sequences: int = 256
    hparams: dict[str, dict[str, Any]] = field(default_factory=dict)  # per arch: lr, warmup_fraction, ...
    val_every_tokens: int | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StudyConfig":
        if not isinstance(d, dict):
            raise UserError("a study config must be a YAML mapping")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"unknown config key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return cls(**d).normalized()

    def normalized(self) -> "StudyConfig":
        c = copy.deepcopy(self)
        for key in ("archs", "tasks", "params", "seeds"):
            value = getattr(c, key)
            if not isinstance(value, (list, tuple)):
                value = [value]
            if not value:
                raise UserError(f"{key} is empty")
            setattr(c, key, list(value))
        c.params = [parse_count(p, "parameter count") for p in c.params]
        c.tokens = parse_count(c.tokens, "token budget")
        if c.batch_size in (None, "auto"):
            c.batch_size = "auto"
        else:
            c.batch_size = parse_count(c.batch_size, "batch size")
        c.eval_sequences = parse_count(c.eval_sequences, "eval_sequences")
        if c.context is not None:
            c.context = parse_count(c.context, "context length", minimum=2)
        if c.val_every_tokens is not None:
            c.val_every_tokens = parse_count(c.val_every_tokens, "val_every_tokens")
        for s in c.seeds:
            if isinstance(s, bool) or not isinstance(s, int) or s < 0:
                raise UserError(f"seeds must be non-negative integers, got {s!r}")
        if not isinstance(c.hparams, dict):
            raise UserError("hparams must be a mapping of architecture -> settings")
        for key in ("archs", "tasks"):
            for v in getattr(c, key):
                if not isinstance(v, str):
                    raise UserError(f"{key} must be names, got {v!r}")
        if c.name is None:
            c.name = default_name(c)
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", c.name):
            raise UserError(f"study name {c.name!r} may use letters, digits, '.', '_' and '-' only")
        return c

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def default_name(c: StudyConfig) -> str:
    d = c.to_dict()
    d.pop("name")
    digest = hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:6]
    slug = lambda xs: "-".join(re.sub(r"[^A-Za-z0-9]+", "", Path(str(x).split(":")[-1]).stem or str(x))[:12] for x in xs)
    return f"{slug(c.archs)}_{slug(c.tasks)}_{digest}"


@dataclass
class RunSpec:
    arch: str
    task: str
    params: int
    seed: int

    def run_id(self, study: StudyConfig) -> str:
        key = json.dumps([self.arch, self.task, self.params, self.seed, study.context, study.tokens, study.batch_size,
                          study.eval_sequences, study.hparams.get(self.arch, {}), study.val_every_tokens])
        digest = hashlib.sha256(key.encode()).hexdigest()[:8]
        safe = lambda s: re.sub(r"[^A-Za-z0-9]+", "", Path(s.split(":")[0]).stem if s.endswith(".py") or "/" in s else s.replace(":", "_"))[:24]
        return f"{safe(self.arch)}-{safe(self.task)}-{format_count(self.params)}-s{self.seed}-{digest}"


def plan(study: StudyConfig) -> list[RunSpec]:
    return [RunSpec(a, t, p, s) for t in study.tasks for a in study.archs for p in study.params for s in study.seeds]


class Study:
    """A study folder: its config, its finished runs, its tables."""

    @classmethod
    def from_folder(cls, out: Path, missing_hint: str = "", **kwargs) -> "Study":
        """The study whose ``config.yaml`` lies in ``out``; one clear line where there is none
        (``missing_hint`` appended) or it is not YAML. ``kwargs`` go to the constructor."""
        out = Path(out)
        path = out / "config.yaml"
        if not path.is_file():
            raise UserError(f"no study at {out} (no config.yaml){missing_hint}")
        try:
            config = StudyConfig.from_dict(yaml.safe_load(path.read_text()))
        except yaml.YAMLError as exc:
            raise UserError(f"corrupt YAML in {path}: {str(exc).splitlines()[0]}") from None
        return cls(config, out, **kwargs)

    def __init__(self, config: StudyConfig, out: Path, trainer_kwargs: dict[str, Any] | None = None):
        self.config, self.out = config, Path(out)
        self._tasks: dict[str, Task] = {}
        # devices / num_nodes / strategy for Lightning: one run on many GPUs or nodes
        self.trainer_kwargs = dict(trainer_kwargs or {})
        self.rank = 0  # this process's global rank in a multi-process run (0: the one that writes)

    @property
    def multi_process(self) -> bool:
        """True when one run spans several processes (Lightning DDP/FSDP): runs then go in plan order
        in every process, without the queue, and only rank 0 writes."""
        devices = self.trainer_kwargs.get("devices", 1)
        return devices not in (1, "1", [0], None) or int(self.trainer_kwargs.get("num_nodes", 1)) > 1

    @property
    def runs_dir(self) -> Path:
        return self.out / "runs"

    # -- building tasks and models -------------------------------------------------------------
    def task(self, spec: str) -> Task:
        if spec not in self._tasks:
            cls, _, options = parse_spec(spec, TASKS)
            try:
                self._tasks[spec] = cls(context_length=self.config.context, **options)
            except UserError:
                raise
            except Exception as exc:
                raise UserError(f"task {spec!r} failed to build: {type(exc).__name__}: {exc}") from exc
        return self._tasks[spec]

    def model(self, run: RunSpec):
        task = self.task(run.task)
        cls, _, options = parse_spec(run.arch, ARCHITECTURES)
        # a tuned shape (e.g. depth) is fixed at every size; the width is solved for each
        options = {**self.config.hparams.get(run.arch, {}).get("shape", {}), **options}
        config = size_for(cls, run.params, task.vocab_size, task.context_length, options)
        model = build(cls, task.vocab_size, task.context_length, config)
        achieved = count_params(model, non_embedding=True)
        if abs(achieved / run.params - 1) > SIZE_TOLERANCE:
            raise UserError(f"architecture {run.arch} reached {achieved} non-embedding parameters for target "
                            f"{run.params} (more than {SIZE_TOLERANCE:.0%} off); change --params or its config")
        return cls, config, model

    def batch_size(self, context_length: int) -> int:
        """The study's batch size for a task of this context length (auto: about 1000 steps)."""
        if self.config.batch_size == "auto":
            return auto_batch_size(self.config.tokens, context_length)
        return self.config.batch_size

    def hparams(self, cls, arch: str, context_length: int | None = None) -> TrainConfig:
        hp = {**getattr(cls, "default_hparams", {}), **self.config.hparams.get(arch, {})}
        hp = {k: v for k, v in hp.items() if k not in ("shape", "tuning")}  # architecture shape; provenance
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        bad = set(hp) - known
        if bad:
            raise UserError(f"unknown hyperparameter(s) for {arch}: {', '.join(sorted(bad))}")
        batch = self.batch_size(context_length) if context_length else (
            self.config.batch_size if self.config.batch_size != "auto" else MAX_AUTO_BATCH)
        return TrainConfig(tokens=self.config.tokens, batch_size=batch,
                           val_every_tokens=self.config.val_every_tokens, **hp)

    # -- the study -------------------------------------------------------------------------------
    def prepare(self) -> list[RunSpec]:
        """Check everything that can be checked before training: names, sizes, data, contracts."""
        runs = plan(self.config)
        checked = set()
        for run in runs:
            task = self.task(run.task)
            task.splits()
            if (run.arch, run.task, run.params) in checked:
                continue
            checked.add((run.arch, run.task, run.params))
            cls, _, model = self.model(run)
            self.hparams(cls, run.arch)  # unknown hyperparameters fail before anything is written
            check_contract(model, task.vocab_size, task.context_length, run.arch)
        self.write_config()
        return runs

    def write_config(self) -> None:
        path = self.out / "config.yaml"
        mine = self.config.to_dict()
        if path.exists():
            try:
                theirs = yaml.safe_load(path.read_text())
            except yaml.YAMLError:
                theirs = None
            if isinstance(theirs, dict) and theirs != mine:
                diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
                raise UserError(f"{self.out} holds a different study (differs in {', '.join(diff)}); "
                                f"use --out for a new folder or --config {path} to continue it")
        io.write_text(path, yaml.safe_dump(mine, sort_keys=False))
        if not (self.out / "environment.json").exists():
            io.write_text(self.out / "environment.json", json.dumps(environment(), indent=1))

    def finished(self) -> set[str]:
        if not self.runs_dir.exists():
            return set()
        return {p.name for p in self.runs_dir.iterdir() if (p / "result.json").exists()}

    def run(self, progress: bool = True, log=print, storage: str | None = None, workers: int = 1,
            heartbeat: int | None = None, analysis: bool = True) -> None:
        """Prepare, then drain the study's queue of runs (mnemoscope.queue) with ``workers`` processes
        (0: only fill the queue, for workers started elsewhere); collect the tables; analyse them
        (unless ``analysis`` is False); write the report."""
        runs = self.prepare()
        if self.multi_process:
            done = self.finished()
            todo = [r for r in runs if r.run_id(self.config) not in done]
            log(f"study {self.config.name}: {len(runs)} runs, {len(runs) - len(todo)} already finished -> {self.out}")
            for i, run in enumerate(todo, 1):
                log(f"[{i}/{len(todo)}] {run.arch} on {run.task}, {format_count(run.params)} params, seed {run.seed}")
                self.execute(run, progress=progress)
            if self.rank != 0:
                return
        else:
            from .queue import run_study

            if not run_study(self, runs, storage, workers, heartbeat, progress, log):
                if workers == 0:
                    return
                missing = len({r.run_id(self.config) for r in runs} - self.finished())
                raise UserError(f"{missing} of {len(runs)} runs did not finish (their workers died repeatedly); "
                                f"rerun the same command to retry them")
        self.collect()
        from .analysis import analyze
        from .report import write_report
        if analysis:
            analyze(self, log=log)  # effective context, fits, extrapolation (runs analysed before are reused)
        write_report(self.out)
        log(f"wrote {self.out / 'report.html'}")

    def execute(self, run: RunSpec, progress: bool = True) -> dict[str, Any]:
        """Train and evaluate one run; move its folder into place atomically."""
        run_id = run.run_id(self.config)
        task = self.task(run.task)
        splits = task.splits()
        torch.manual_seed(run.seed)  # initialisation depends on the seed only
        cls, arch_config, model = self.model(run)
        cfg = self.hparams(cls, run.arch, task.context_length)
        cfg.seed = run.seed
        # leftovers of this run from a killed process: whoever holds the run's trial owns its files
        for leftover in self.runs_dir.glob(f".tmp-{run_id}-*") if self.runs_dir.exists() else []:
            shutil.rmtree(leftover, ignore_errors=True)
        tmp = self.runs_dir / f".tmp-{run_id}-{os.getpid()}"
        try:
            tmp.mkdir(parents=True)
        except OSError as exc:
            raise _disk_error(exc, tmp) from exc
        guard = DivergenceGuard()
        fpt = flops_per_token(model, task.vocab_size, task.context_length)
        curve = LogSpacedValidation(splits["validation"], task.context_length, cfg.steps(task.context_length),
                                    cfg.batch_size * task.context_length, max(cfg.batch_size, EVAL_BATCH))
        start = time.time()
        try:
            _, trainer = fit(model, splits["train"], splits["validation"], task.context_length, cfg, tmp / "logs",
                             callbacks=[guard, curve], progress=progress, trainer_kwargs=self.trainer_kwargs)
        except ContractError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise _disk_error(exc, tmp) from exc
        except Exception as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise UserError(f"run {run_id} failed in training: {type(exc).__name__}: {exc}") from exc
        self.rank = trainer.global_rank
        if self.rank != 0:  # other ranks of a multi-process run: rank 0 evaluates and writes
            shutil.rmtree(tmp, ignore_errors=True)
            return {}
        wall = time.time() - start
        model = model.float()
        T = task.context_length
        eval_batch = max(cfg.batch_size, EVAL_BATCH)  # no gradients: larger batches than training are free
        losses, mask = per_position_losses(model, splits["test"], T, self.config.eval_sequences, eval_batch)
        val_losses, val_mask = per_position_losses(model, splits["validation"], T, min(64, self.config.eval_sequences), eval_batch)
        mean, lo, hi, n = bootstrap_ci(losses, mask, seed=run.seed)
        gain = octave_gain(losses, mask, T // 4, T // 2, T, seed=run.seed)
        status = "diverged" if guard.step is not None or not np.isfinite(losses).all() else "ok"
        params_nonemb = count_params(model, non_embedding=True)
        row = {
            "run_id": run_id, "arch": run.arch, "task": run.task, "params": run.params, "seed": run.seed, "context": T,
            "arch_config": json.dumps(arch_config, sort_keys=True), "target_params": run.params,
            "achieved_params": params_nonemb, "active_params": active_params(model), "total_params": count_params(model, non_embedding=False),
            "state_size": state_size(model, T), "batch_size": cfg.batch_size, "tokens_trained": cfg.steps(T) * cfg.batch_size * T,
            "wall_seconds": round(wall, 2), "torch_threads": torch.get_num_threads(),
            "final_val_loss": float((val_losses * val_mask).sum() / max(val_mask.sum(), 1)),
            "test_loss": float((losses * mask).sum() / max(mask.sum(), 1)),
            "last_octave_gain": gain[0], "last_octave_gain_low": gain[1], "last_octave_gain_high": gain[2],
            "status": status, "diverged_step": guard.step, "flops_per_token": fpt,
        }
        pp = pd.DataFrame({"run_id": run_id, "arch": run.arch, "task": run.task, "params": run.params,
                           "seed": run.seed, "position": np.arange(T), "loss": mean, "ci_low": lo, "ci_high": hi,
                           "n_sequences": n.astype(np.int64)})
        try:
            pp.to_parquet(tmp / "per_position.parquet", index=False)
            np.savez_compressed(tmp / "losses.npz", losses=losses, mask=mask)
            curve.save(tmp / "val_curve.npz")
            torch.save({"arch": run.arch, "task": run.task, "arch_config": arch_config, "vocab_size": task.vocab_size,
                        "context_length": T, "state_dict": model.state_dict()}, tmp / "model.pt")
            metrics = tmp / "logs" / "metrics.csv"
            if metrics.exists():
                shutil.move(metrics, tmp / "metrics.csv")
            shutil.rmtree(tmp / "logs", ignore_errors=True)
            (tmp / "result.json").write_text(json.dumps(row, indent=1, default=_jsonable))
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise _disk_error(exc, tmp) from exc
        final = self.runs_dir / run_id
        # the whole folder appears at once: a run is either absent or complete, never half-written
        for attempt in range(2):
            if (final / "result.json").exists():  # someone finished it first (a retried run): keep theirs
                shutil.rmtree(tmp, ignore_errors=True)
                return json.loads((final / "result.json").read_text())
            if final.exists():
                shutil.rmtree(final, ignore_errors=True)  # a folder without result.json is no run
            try:
                os.replace(tmp, final)
                return row
            except OSError as exc:
                if attempt:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise _disk_error(exc, final) from exc
        return row

    def collect(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Rebuild runs.parquet and per_position.parquet from the finished runs' folders."""
        rows, tables = [], []
        for run_id in sorted(self.finished()):
            folder = self.runs_dir / run_id
            row = json.loads((folder / "result.json").read_text())
            if "active_params" not in row:  # a run from before the column existed
                cls, _, _ = parse_spec(row["arch"], ARCHITECTURES)
                row["active_params"] = (active_params(load_run_model(folder)[0]) if hasattr(cls, "num_active_params")
                                        else row["achieved_params"])
            rows.append(row)
            tables.append(pd.read_parquet(folder / "per_position.parquet"))
        runs = pd.DataFrame(rows, columns=RUN_COLUMNS)
        pp = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=POSITION_COLUMNS)
        _write_table(self.out / "runs.parquet", runs)
        _write_table(self.out / "per_position.parquet", pp)
        return runs, pp


def _write_table(path: Path, df: pd.DataFrame) -> None:
    """Atomic, and untouched when its bytes would not change (a failed rerun alters nothing)."""
    buf = BytesIO()
    df.to_parquet(buf, index=False)
    data = buf.getvalue()
    if path.exists() and path.read_bytes() == data:
        return
    io.atomic_write(path, lambda p: p.write_bytes(data))


def load_run_model(folder: Path, device: str = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a finished run's trained model from ``runs/<run_id>/``.

    ``model.pt`` is read with ``weights_only=True``: tensors and plain containers only, so a
    tampered file cannot run code. Returns (model in eval mode, result row).
    """
    folder = Path(folder)
    try:
        row = json.loads((folder / "result.json").read_text())
        ckpt = torch.load(folder / "model.pt", map_location=device, weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{folder} is not a finished run (no result.json or model.pt)") from None
    except Exception as exc:
        raise UserError(f"cannot load the model of {folder}: {type(exc).__name__}: {exc}") from None
    cls, _, _ = parse_spec(ckpt["arch"], ARCHITECTURES)
    model = build(cls, int(ckpt["vocab_size"]), int(ckpt["context_length"]), ckpt["arch_config"])
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval(), row


def _disk_error(exc: OSError, path: Path) -> UserError:
    """One clear line for a full disk or a folder we may not write."""
    if exc.errno == errno.ENOSPC:
        return UserError(f"disk full while writing {path}; finished runs and tables are intact")
    return UserError(f"cannot write {path}: {exc.strerror or exc}")


def _jsonable(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    raise TypeError(type(o))


class DivergenceGuard(L.Callback):
    """Stop when the training loss is NaN/inf or explodes; remember the step (status ``diverged``).

    Reading a loss on the host waits for the device. On a CPU that costs nothing and every step
    is checked as it ends; on an accelerator the losses stay on the device and are read together
    every ``every`` steps (one synchronisation instead of ``every``), so a divergence stops the run
    at most ``every - 1`` steps late, and the step recorded is still the first bad one."""

    def __init__(self, factor: float = 4.0, every: int = 16, every_step: bool | None = None):
        self.step: int | None = None
        self.factor, self.first, self.every = factor, None, every
        self.every_step = every_step  # None: on a CPU only
        self.pending: list[tuple[int, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.pending.append((int(trainer.global_step), loss.detach()))
        every_step = loss.device.type == "cpu" if self.every_step is None else self.every_step
        if every_step or len(self.pending) >= self.every:
            self._check(trainer)

    def on_train_end(self, trainer, pl_module):
        self._check(trainer)

    def _check(self, trainer) -> None:
        if not self.pending:
            return
        steps = [s for s, _ in self.pending]
        values = torch.stack([v.float() for _, v in self.pending]).tolist()  # one wait for the device
        self.pending = []
        for step, value in zip(steps, values):
            if self.step is not None:
                return
            if self.first is None and math.isfinite(value):
                self.first = value
            if not math.isfinite(value) or (self.first is not None and value > self.factor * self.first + 5):
                self.step = step
                trainer.should_stop = True


def check_contract(model: torch.nn.Module, vocab_size: int, context_length: int, name: str) -> None:
    """A quick check of the architecture contract before any training: shape, finiteness, causality."""
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


def environment() -> dict[str, Any]:
    import importlib.metadata as md

    versions = {}
    for pkg in ("torch", "lightning", "numpy", "pandas", "pyarrow", "seaborn", "matplotlib", "optuna", "scipy"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"
    return {"python": sys.version.split()[0], "platform": platform.platform(), "device": device,
            "torch_threads": torch.get_num_threads(), "packages": versions, "git_commit": commit,
            "git_dirty": dirty, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
