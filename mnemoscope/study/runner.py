"""The study runner: prepares a study, trains and scores each run, and collects the tables.

A run's folder is written under ``runs/.tmp-<id>-<pid>`` and moved into place at once, so a
run is either absent or complete; every file is read and written through :mod:`mnemoscope.storage.study_folder`,
and a trained run is scored and written by :mod:`mnemoscope.study.finish`. The queue of runs and its
workers live in :mod:`mnemoscope.study.queue`; the analysis and the report come after, from the
stored tables (:mod:`mnemoscope.analysis.analyze`, :mod:`mnemoscope.report.page`).
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import shutil
import signal
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
import torch

from ..contract.model import SIZE_TOLERANCE, active_params, build, check_contract, check_memory, check_shape_options, count_params, size_for
from ..contract.task import Task
from ..errors import ContractError, UserError
from ..measure.evaluate import bits_per_byte
from ..measure.flops import flops_per_token
from ..measure.history import history_steps
from ..registry import ARCHITECTURES, TASKS
from ..settings import EVAL_BATCH
from ..specs import format_count, parse_spec
from ..storage.migrations import (arch_before_convolutions, fill_active_params, fill_bits_per_byte,
                                  predates_data_fingerprint, trained_version)
from ..storage.study_folder import RunFolder, StudyFolder, disk_error
from ..training.callbacks import DivergenceGuard, LogSpacedValidation, ProgressLines, TrainingHistory
from ..training.checkpoints import Elapsed, latest_checkpoint, resume_line, resume_record
from ..training.loggers import check_loggers, check_stores, open_stores, tracker_loggers
from ..training.train import MAX_AUTO_BATCH, TrainConfig, auto_batch_size, fit
from .config import RunSpec, StudyConfig, plan
from .finish import POSITION_COLUMNS, RUN_COLUMNS, finish_run
from .queue import run_study

@dataclass
class Trained:
    """What :meth:`Study.train` returns: the trained model and how it got there."""

    model: torch.nn.Module
    arch_config: dict[str, Any]
    cfg: TrainConfig
    guard: DivergenceGuard
    curve: LogSpacedValidation
    trainer: L.Trainer
    wall_seconds: float
    flops_per_token: float
    hparams: dict[str, Any] = dataclasses.field(default_factory=dict)  # what the trackers record of the run
    history: TrainingHistory | None = None  # the through-training scoring (None: not kept)
    resumes: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # every resume (RunFolder.resumes)

    @property
    def resumed_from(self) -> int | None:
        """The step the last resume continued from (None: trained in one go)."""
        return self.resumes[-1]["step"] if self.resumes else None


class Study:
    """A study folder: its config, its finished runs, its tables."""

    @classmethod
    def from_folder(cls, out: Path, missing_hint: str = "", **kwargs) -> "Study":
        """The study whose ``config.yaml`` lies in ``out``; one clear line where there is none
        (``missing_hint`` appended) or it is not YAML. ``kwargs`` go to the constructor."""
        return cls(StudyConfig.from_dict(StudyFolder(out).read_config(missing_hint)), out, **kwargs)

    def __init__(self, config: StudyConfig, out: Path, trainer_kwargs: dict[str, Any] | None = None,
                 tasks: dict[str, Task] | None = None, loggers: list[str] | None = None):
        self.config, self.out = config, Path(out)
        self.folder = StudyFolder(self.out)  # every file of the study is read and written through it
        # built tasks by spec; another Study of the same tasks and context may share them (tune's trials)
        self.tasks: dict[str, Task] = tasks if tasks is not None else {}
        # devices / num_nodes / strategy for Lightning: one run on many GPUs or nodes
        self.trainer_kwargs = dict(trainer_kwargs or {})
        # Lightning loggers of every run: csv always, tensorboard / mlflow / wandb (study.py --logger)
        self.loggers = check_loggers(loggers)
        self.rank = 0  # this process's global rank in a multi-process run (0: the one that writes)

    @property
    def multi_process(self) -> bool:
        """True when one run spans several processes (Lightning DDP/FSDP): runs then go in plan order
        in every process, without the queue, and only rank 0 writes."""
        devices = self.trainer_kwargs.get("devices", 1)
        return devices not in (1, "1", [0], None) or int(self.trainer_kwargs.get("num_nodes", 1)) > 1

    @property
    def runs_dir(self) -> Path:
        return self.folder.runs_dir

    # -- building tasks and models -------------------------------------------------------------
    def task(self, spec: str) -> Task:
        if spec not in self.tasks:
            cls, _, options = parse_spec(spec, TASKS)
            try:
                self.tasks[spec] = cls(context_length=self.config.context, **options)
            except UserError:
                raise
            except Exception as exc:
                raise UserError(f"task {spec!r} failed to build: {type(exc).__name__}: {exc}") from exc
        return self.tasks[spec]

    def model(self, run: RunSpec):
        task = self.task(run.task)
        cls, _, options = parse_spec(run.arch, ARCHITECTURES)
        # a tuned shape (e.g. depth) is fixed at every size; the width is solved for each
        options = {**self.config.hparams.get(run.arch, {}).get("shape", {}), **options}
        check_shape_options(cls, run.arch, options)  # no block, no width, the task's own keys: one line
        # sizes that cannot fit in memory are refused before sizing (a plain bound) and before allocating
        check_memory(cls, task.vocab_size, task.context_length, None, run.arch, run.params)
        config = size_for(cls, run.params, task.vocab_size, task.context_length, options)
        check_memory(cls, task.vocab_size, task.context_length, config, run.arch, run.params)
        model = build(cls, task.vocab_size, task.context_length, config)
        achieved = count_params(model, non_embedding=True)
        if abs(achieved / run.params - 1) > SIZE_TOLERANCE:
            raise UserError(f"architecture {run.arch} reached {achieved} non-embedding parameters for target "
                            f"{run.params} (more than {SIZE_TOLERANCE:.0%} off); change --params or its config")
        return cls, config, model

    def run_id(self, run: RunSpec) -> str:
        """The run's folder name in ``runs/``: :meth:`RunSpec.run_id` with its task's data fingerprint.
        A run finished before ids held the data keeps the id it had then
        (:func:`mnemoscope.storage.migrations.predates_data_fingerprint`)."""
        cls = parse_spec(run.arch, ARCHITECTURES)[0]
        version = getattr(cls, "version", None)
        if version is None:  # a changed architecture (a version) never reuses a run from before ids held data
            legacy = self.folder.run(run.run_id(self.config))
            try:
                if predates_data_fingerprint(legacy.row()):
                    return legacy.run_id
            except (OSError, ValueError):
                pass
        return run.run_id(self.config, self.task(run.task).data_fingerprint(), version)

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
        check_stores(self.loggers)  # a tracker that cannot record fails before anything is written
        checked = set()
        for run in runs:
            task = self.task(run.task)
            if self.config.tokens < task.context_length:  # not one training window: refused before any work
                raise UserError(f"--context {task.context_length} (task {run.task}): one training window holds more "
                                f"tokens than the whole budget, --tokens {format_count(self.config.tokens)}; give a "
                                f"shorter --context, or --tokens of at least {format_count(task.context_length)}")
            task.splits()
            if (run.arch, run.task, run.params) in checked:
                continue
            checked.add((run.arch, run.task, run.params))
            cls, _, model = self.model(run)
            self.hparams(cls, run.arch)  # unknown hyperparameters fail before anything is written
            check_contract(model, task.vocab_size, task.context_length, run.arch)
        self.write_config()
        self.write_data()
        open_stores(self.loggers, self.out, self.config.name)
        for spec in dict.fromkeys(r.task for r in runs):  # e.g. a trained tokenizer, to decode the runs' tokens
            for rel, src in self.task(spec).study_files().items():
                self.folder.keep_file(rel, src)
        return runs

    def write_config(self) -> None:
        path = self.folder.config_path
        mine = self.config.to_dict()
        if path.exists():
            theirs = self.folder.config() or None
            try:  # a config written before a key existed holds that key's default
                theirs = StudyConfig.from_dict(theirs).identity() if isinstance(theirs, dict) else None
            except UserError:
                theirs = None
            if isinstance(theirs, dict) and theirs != self.config.identity():
                mine = self.config.identity()
                diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
                raise UserError(f"{self.out} holds a different study (differs in {', '.join(diff)}); to continue "
                                f"it run `study.py --config {path}` with no flag that changes it; for this study "
                                f"give a new folder with --out")
        self.folder.write_config(mine)
        self.folder.write_environment()

    def write_data(self) -> None:
        """``data.json``: what each task's data are (splits, documents, tokens), per data version,
        for the report; a version the study used before is kept beside the new one."""
        data = self.folder.data()
        for spec in self.config.tasks:
            described = self.task(spec).describe_data()
            data.setdefault(spec, {})[described["data_fingerprint"]] = described
        self.folder.write_data(data)

    def finished(self) -> set[str]:
        return set(self.folder.finished())

    def run(self, progress: bool = True, log=print, storage: str | None = None, workers: int = 1,
            heartbeat: int | None = None) -> bool:
        """Prepare, then drain the study's queue of runs (:mod:`mnemoscope.study.queue`) with ``workers``
        processes, and collect the tables. Returns False when ``workers`` is 0 (the queue is only
        filled, for workers started elsewhere) or this process is not the one that writes."""
        runs = self.prepare()
        if self.multi_process:
            done = self.finished()
            todo = [r for r in runs if self.run_id(r) not in done]
            log(f"study {self.config.name}: {len(runs)} runs, {len(runs) - len(todo)} already finished -> {self.out}")
            for i, run in enumerate(todo, 1):
                log(f"[{i}/{len(todo)}] {run.arch} on {run.task}, {format_count(run.params)} params, seed {run.seed}")
                self.execute(run, progress=progress)
            if self.rank != 0:
                return False
        elif not run_study(self, runs, storage, workers, heartbeat, progress, log):
            if workers == 0:
                return False
            missing = len({self.run_id(r) for r in runs} - self.finished())
            raise UserError(f"{missing} of {len(runs)} runs did not finish (their workers died repeatedly); "
                            f"rerun the same command to retry them")
        self.collect()
        return True

    def train(self, run: RunSpec, folder: Path, callbacks=(), progress: bool = True,
              reraise: tuple[type[BaseException], ...] = (), work: Path | None = None) -> "Trained":
        """Build the run's model (seeded) and train it, logging into ``folder``: the one training
        path of a study's runs and of ``study.py tune``'s trials (which add a pruning callback).
        Errors become one-line UserErrors; a ContractError, an OSError and the ``reraise`` types
        (e.g. a trial pruned by a callback) pass unchanged; an interruption (Ctrl-C, SIGTERM) stays
        a KeyboardInterrupt. ``progress``: True for Lightning's bar, "lines" for a plain line every
        tenth of the run or 30 s (output that is no terminal), False for nothing.

        ``work``: the run's working folder (a study's run, not a tuning trial): its mid-run
        checkpoints go to ``work/checkpoints`` (resumed from when present) and the kept steps of
        its history to ``work/history`` (:mod:`mnemoscope.measure.history`)."""
        task = self.task(run.task)
        splits = task.splits()
        torch.manual_seed(run.seed)  # initialisation depends on the seed only
        cls, arch_config, model = self.model(run)
        cfg = self.hparams(cls, run.arch, task.context_length)
        cfg.seed = run.seed
        fpt = flops_per_token(model, task.vocab_size, task.context_length)
        guard = DivergenceGuard()
        curve = LogSpacedValidation(splits["validation"], task.context_length, cfg.steps(task.context_length),
                                    cfg.batch_size * task.context_length, max(cfg.batch_size, EVAL_BATCH))
        run_id = self.run_id(run)
        n_steps = cfg.steps(task.context_length)
        history, checkpoints, start, resumes = None, None, 0, []
        if work is not None:
            checkpoints = RunFolder(work).checkpoints_dir
            resume = latest_checkpoint(checkpoints)
            if resume is not None:
                record = resume_record(resume, n_steps)
                print(resume_line(run_id, record), flush=True)
                RunFolder(work).add_resume(record)
                start = record["step"]
            resumes = RunFolder(work).resumes()
            if self.config.history:
                history = TrainingHistory(splits["test"], task.context_length, self.config.eval_sequences,
                                          history_steps(n_steps, self.config.history),
                                          cfg.batch_size * task.context_length, Path(work), self.config.keep_weights,
                                          max(cfg.batch_size, EVAL_BATCH))
                callbacks = [*callbacks, history]
        elapsed = Elapsed()
        callbacks = [*callbacks, elapsed]
        if progress == "lines":
            callbacks = [*callbacks, ProgressLines(run_id, n_steps, start=start)]
        hparams = {"arch": run.arch, "task": run.task, "size": format_count(run.params), "params": run.params,
                   "seed": run.seed, "study": self.config.name, "run_id": run_id, "context": task.context_length,
                   "tokens": cfg.tokens, "batch_size": cfg.batch_size, "lr": cfg.lr}
        sigint = signal.getsignal(signal.SIGINT)
        try:
            trackers = tracker_loggers(self.loggers, self.out, self.config.name, run_id, hparams)
            _, trainer = fit(model, splits["train"], splits["validation"], task.context_length, cfg, folder,
                             callbacks=[guard, curve, *callbacks], progress=progress is True,
                             trainer_kwargs=self.trainer_kwargs, loggers=trackers, checkpoint_dir=checkpoints,
                             checkpoint_every=self.config.checkpoint_seconds if checkpoints is not None else None)
        except (ContractError, OSError, *reraise):
            raise
        except SystemExit as exc:
            # Lightning ends a fit interrupted by Ctrl-C (or by SIGTERM, which queue.sigterm_as_interrupt
            # raises as KeyboardInterrupt) with sys.exit(1), SIGINT left ignored: give the interruption
            # back as what it is, so the command line says so and exits with 130
            if isinstance(exc.__context__, KeyboardInterrupt) or type(exc).__name__ == "SIGTERMException":
                raise KeyboardInterrupt from None
            raise
        except Exception as exc:
            raise UserError(f"run {run_id} failed in training: {type(exc).__name__}: {exc}") from exc
        finally:
            if sigint is not None and threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, sigint)
        if checkpoints is not None and guard.step is None and trainer.global_step < n_steps and not self.multi_process:
            # stopped early without diverging: Lightning's Slurm handler (requeue signal) or a callback
            # asked it to stop; the checkpoint holds the run, which is not finished
            raise KeyboardInterrupt
        return Trained(model, arch_config, cfg, guard, curve, trainer, elapsed.seconds, fpt, hparams, history,
                       resumes)

    def execute(self, run: RunSpec, progress: bool | str = True) -> dict[str, Any]:
        """Train and evaluate one run; move its folder into place atomically.

        The run works in ``runs/.partial-<run_id>/``, which outlives a stop (an error in the run
        removes it; Ctrl-C, SIGTERM, SIGKILL or a lost machine leave it): its mid-run checkpoint and
        the kept steps of its history are there, and whoever runs the run next resumes from them.
        A process holds the folder's lock while it works; should another still hold it (a worker
        wrongly taken for dead), the run starts afresh in ``runs/.tmp-<run_id>-<pid>/`` instead."""
        run_id = self.run_id(run)
        # leftovers of this run from a killed process of an older version: whoever holds the run's trial owns its files
        for leftover in self.folder.leftovers(run_id):
            shutil.rmtree(leftover, ignore_errors=True)
        work = self.folder.partial(run_id).path
        try:
            work.mkdir(parents=True, exist_ok=True)
            lock = open(work / RunFolder.LOCK, "a+")
        except OSError as exc:
            raise disk_error(exc, work) from exc
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            lock, work = None, self.folder.work(run_id, os.getpid()).path
            try:
                work.mkdir(parents=True)
            except OSError as exc:
                raise disk_error(exc, work) from exc
        finished = False
        try:
            row = self._execute_in(run, run_id, work, progress)
            finished = True
            return row
        except OSError as exc:
            raise disk_error(exc, work) from exc
        except (KeyboardInterrupt, SystemExit):
            raise  # a stop: the partial folder keeps the run for the next one to resume
        except BaseException:
            finished = True  # a run that failed would fail again from its checkpoint: start it afresh next time
            raise
        finally:
            if finished or lock is None:
                shutil.rmtree(work, ignore_errors=True)  # gone already when the run was moved into place
            if lock is not None:
                lock.close()

    def _execute_in(self, run: RunSpec, run_id: str, tmp: Path, progress: bool | str) -> dict[str, Any]:
        work = RunFolder(tmp)
        trained = self.train(run, work.logs_dir, progress=progress, work=tmp)
        self.rank = trained.trainer.global_rank
        if self.rank != 0:  # other ranks of a multi-process run: rank 0 evaluates and writes
            return {}
        row = finish_run(self, run, run_id, trained, work)
        # the whole folder appears at once: a run is either absent or complete, never half-written
        theirs = work.move_to(self.runs_dir / run_id)
        return row if theirs is None else theirs

    def trained_version(self, folder: RunFolder, row: dict) -> str | None:
        """The architecture version a stored run was trained as (:func:`mnemoscope.storage.migrations.trained_version`)."""
        weights = (lambda: folder.checkpoint()["state_dict"]) if folder.has_model else None
        spec = RunSpec(row["arch"], row["task"], int(row["params"]), int(row["seed"]))
        return trained_version(row, weights, lambda: spec.run_id(self.config, row.get("data_fingerprint"), "2"))

    def tabled_archs(self, rows: list[dict]) -> list[str]:
        """Each stored run's name in the tables: as it was trained, except where a rerun holds two
        versions of one run (the same arch, task, size and seed): the earlier one gets the name of
        what it was (:func:`mnemoscope.storage.migrations.arch_before_convolutions`). runs.parquet and
        ``compare`` both name runs so."""
        key = lambda r: (r["arch"], r["task"], r["params"], r["seed"])  # noqa: E731
        counts = Counter(map(key, rows))
        return [arch_before_convolutions(r["arch"], lambda r=r: self.trained_version(self.folder.run(r["run_id"]), r))
                if counts[key(r)] > 1 else r["arch"] for r in rows]

    def collect(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Rebuild runs.parquet and per_position.parquet from the finished runs' folders."""
        rows, tables = [], []
        finished = [self.folder.run(run_id) for run_id in self.folder.finished()]
        for folder in finished:
            row = fill_active_params(folder.row(), lambda arch: hasattr(parse_spec(arch, ARCHITECTURES)[0],
                                                                        "num_active_params"),
                                     lambda: active_params(folder.load_model()[0]))
            rows.append(fill_bits_per_byte(row, folder.loss_arrays, bits_per_byte))
            tables.append(folder.per_position())
        for row, arch in zip(rows, self.tabled_archs(rows)):
            row["arch"] = arch
        names = {row["run_id"]: row["arch"] for row in rows}
        for row in rows:  # a list in result.json, JSON text in the table (one value per cell)
            if isinstance(row.get("resumes"), list):
                row["resumes"] = json.dumps(row["resumes"])
        runs = pd.DataFrame(rows, columns=RUN_COLUMNS)
        pp = name_runs(pd.concat(tables, ignore_index=True), names) if tables else pd.DataFrame(columns=POSITION_COLUMNS)
        self.folder.write_table(StudyFolder.RUNS_TABLE, runs)
        self.folder.write_table(StudyFolder.POSITIONS_TABLE, pp)
        for name in RunFolder.HISTORY_TABLES:  # context use through training, where the runs kept it
            parts = [p for p in (folder.table(name) for folder in finished) if not p.empty]
            if parts:
                self.folder.write_table(f"{name}.parquet", name_runs(pd.concat(parts, ignore_index=True), names))
        return runs, pp


def name_runs(table: pd.DataFrame, names: dict[str, str]) -> pd.DataFrame:
    """``table`` with each run's ``arch`` as runs.parquet names it (:meth:`Study.tabled_archs`), by
    ``run_id``: a run's own tables and stored analysis keep the name it was trained as."""
    if table.empty or "run_id" not in table or "arch" not in table:
        return table
    return table.assign(arch=table["run_id"].map(names).fillna(table["arch"]))


def mixed_data(runs: pd.DataFrame) -> list[str]:
    """One line for each task whose runs were trained on different versions of its data (different
    ``data_fingerprint``s: its files changed between runs); runs recorded before fingerprints were
    are not counted."""
    if "data_fingerprint" not in runs or runs.empty:
        return []
    notes = []
    for task, group in runs.dropna(subset=["data_fingerprint"]).groupby("task", sort=False):
        versions = list(dict.fromkeys(group["data_fingerprint"]))
        if len(versions) > 1:
            counts = ", ".join(f"{v} ({int((group['data_fingerprint'] == v).sum())} runs)" for v in versions)
            notes.append(f"the runs of task {task} were trained on {len(versions)} versions of its data: {counts}; "
                         "its tables and report mix them (move the runs of the old data out of runs/, or use a "
                         "new --out)")
    return notes
