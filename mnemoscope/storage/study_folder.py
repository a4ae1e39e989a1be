"""The storage layer: every file of a study folder is read and written here, and nowhere else.

:class:`StudyFolder` owns a study's folder (``config.yaml``, ``environment.json``, ``data.json``,
the tables rebuilt from the runs, ``runs/``), :class:`mnemoscope.storage.run_folder.RunFolder` one run's
folder (``runs/<run_id>/``: its result row, losses, per-position table, validation curve, model, kept
steps, checkpoints, stored analysis, task views). The layout, the ``format`` number
(:data:`mnemoscope.storage.migrations.FORMAT`) and the older layouts read through
:mod:`mnemoscope.storage.migrations`: docs/design.md, "The storage layer".
"""
from __future__ import annotations

import importlib.metadata as md
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
import yaml

from . import files
from ..errors import UserError
from .migrations import FORMAT, file_format, score_config, with_bytes, without_format
# a run's folder: its own module; read through this one as well
from ..settings import STUDY
from .run_folder import RunFolder, disk_error, jsonable, model_from_checkpoint  # noqa: F401

REPO_ROOT = Path(__file__).resolve().parent.parent


class StudyFolder:
    """A study folder: its files (``config.yaml``, ``environment.json``, ``data.json``, the tables),
    and its runs (:class:`RunFolder`), read and written through this class."""

    CONFIG, ENVIRONMENT, DATA, RUNS = "config.yaml", "environment.json", "data.json", "runs"
    RUNS_TABLE, POSITIONS_TABLE = "runs.parquet", "per_position.parquet"
    RUN_TABLES = (RUNS_TABLE, POSITIONS_TABLE)  # rebuilt from the run folders
    # runs/ entries of runs under way or stopped: .partial-<id> (resumable), .tmp-<id>[-<pid>] (one process's)
    PARTIAL, WORK = ".partial-", ".tmp-"
    UNDER_WAY = (PARTIAL + "*", WORK + "*")  # their glob patterns: not part of a finished study

    def __init__(self, out: Path):
        self.out = Path(out)

    @property
    def runs_dir(self) -> Path:
        return self.out / self.RUNS

    def run(self, run_id: str) -> RunFolder:
        return RunFolder(self.runs_dir / run_id)

    def work(self, run_id: str, pid: int | None = None) -> RunFolder:
        """A working folder of a run: ``runs/.tmp-<id>`` (``study.py score`` keeps a model's finished
        stages there, so a stopped command resumes) or ``runs/.tmp-<id>-<pid>`` (a folder assembled by
        one process, then moved into place whole)."""
        return RunFolder(self.runs_dir / (f"{self.WORK}{run_id}" + ("" if pid is None else f"-{pid}")))

    def partial(self, run_id: str) -> RunFolder:
        """``runs/.partial-<id>``: where a run works; it outlives a stop, and the next process resumes from it."""
        return RunFolder(self.runs_dir / f"{self.PARTIAL}{run_id}")

    def leftovers(self, run_id: str) -> list[Path]:
        """``runs/.tmp-<id>-<pid>`` folders of a run, left by killed processes."""
        return sorted(self.runs_dir.glob(f"{self.WORK}{run_id}-*")) if self.runs_dir.is_dir() else []

    def finished(self) -> list[str]:
        """The ids of the finished runs, sorted (``.partial-*``, ``.tmp-*``: runs under way, or stopped)."""
        if not self.runs_dir.is_dir():
            return []
        return sorted(p.name for p in self.runs_dir.iterdir() if not p.name.startswith(".") and RunFolder(p).finished)

    # -- config, environment, data -------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.out / self.CONFIG

    @property
    def exists(self) -> bool:
        """The folder holds a study (its ``config.yaml``)."""
        return self.config_path.is_file()

    @property
    def started(self) -> bool:
        """A study has started here: its environment was written or it has runs (so a
        ``config.yaml`` here is the study's own, not a config to start one from)."""
        return (self.out / self.ENVIRONMENT).exists() or self.runs_dir.is_dir()

    def config(self) -> dict[str, Any]:
        """The study ``config.yaml`` describes, without its ``format`` (an empty dict when missing or
        unreadable)."""
        try:
            d = yaml.safe_load(self.config_path.read_text())
        except (OSError, yaml.YAMLError):
            return {}
        return without_format(d) if isinstance(d, dict) else {}

    def read_config(self, missing_hint: str = "") -> Any:
        """``config.yaml`` as a study is built from it (without ``format``): one clear line where there
        is none (``missing_hint`` appended) or it is not YAML."""
        if not self.config_path.is_file():
            raise UserError(f"no study at {self.out} (no config.yaml){missing_hint}")
        d = files.read_yaml(self.config_path)
        return without_format(d) if isinstance(d, dict) else d

    def format(self) -> int:
        try:
            d = yaml.safe_load(self.config_path.read_text())
        except (OSError, yaml.YAMLError):
            return 0
        return file_format(d) if isinstance(d, dict) else 0

    def score_config(self) -> dict[str, Any] | None:
        """A scored folder's ``config.yaml`` (``study.py score``) as the current layout reads it
        (:func:`mnemoscope.storage.migrations.score_config`); None where the folder holds none, or a study's."""
        d = self.config()
        return score_config(d) if d.get("score") else None

    def write_config(self, config: dict[str, Any]) -> None:
        files.write_text(self.config_path, yaml.safe_dump({**config, "format": FORMAT}, sort_keys=False))

    def environment(self) -> dict[str, Any]:
        """The study's ``environment.json`` (versions, device, commit); empty when missing or unreadable."""
        try:
            d = json.loads((self.out / self.ENVIRONMENT).read_text())
        except (OSError, ValueError):
            return {}
        return d if isinstance(d, dict) else {}

    def write_environment(self) -> None:
        """``environment.json``, once: the environment the study started in."""
        if not (self.out / self.ENVIRONMENT).exists():
            files.write_text(self.out / self.ENVIRONMENT, json.dumps(environment(), indent=1))

    def data(self) -> dict[str, Any]:
        """``data.json``: each task's data per data fingerprint; empty when missing or unreadable."""
        try:
            d = json.loads((self.out / self.DATA).read_text())
        except (OSError, ValueError):
            return {}
        return d if isinstance(d, dict) else {}

    def write_data(self, data: dict[str, Any]) -> None:
        files.write_text(self.out / self.DATA, json.dumps(data, indent=1))

    def keep_file(self, rel: str, src: Path) -> None:
        """A task's file the study keeps (``Task.study_files``: e.g. a trained tokenizer, to decode the
        runs' tokens), copied to ``rel`` unless the same bytes are there."""
        path = self.out / rel
        if not path.exists() or path.read_bytes() != Path(src).read_bytes():
            files.atomic_write(path, lambda p: shutil.copyfile(src, p))

    # -- the tables ---------------------------------------------------------------------------------------
    def has_table(self, name: str) -> bool:
        return (self.out / name).is_file()

    def runs(self) -> pd.DataFrame:
        """``runs.parquet``, which must exist: one line where it is missing or corrupt."""
        return self.read_table(self.RUNS_TABLE)

    def table(self, name: str) -> pd.DataFrame:
        """A table of the study (``NAME.parquet`` or ``NAME.csv``); empty when it does not exist yet."""
        return files.read_optional(self.out / name)

    def read_table(self, name: str) -> pd.DataFrame:
        """A parquet table that must exist: one line where it is missing or corrupt."""
        return files.read_parquet(self.out / name)

    def write_table(self, name: str, df: pd.DataFrame) -> None:
        """``NAME.parquet`` (untouched when its bytes would not change) or ``NAME.csv``."""
        if name.endswith(".csv"):
            files.write_text(self.out / name, df.to_csv(index=False))
        else:
            files.write_table(self.out / name, df)

    def write_file(self, name: str, data: bytes | str) -> None:
        """A figure (PNG) or a page (HTML) of the study, written atomically."""
        files.atomic_write(self.out / name, lambda p: p.write_bytes(data.encode() if isinstance(data, str) else data))

    def per_position(self) -> pd.DataFrame:
        """``per_position.parquet``, its bytes columns filled for a table from before them
        (:func:`mnemoscope.storage.migrations.with_bytes`)."""
        pp = self.read_table(self.POSITIONS_TABLE)
        missing = {"run_id", "arch", "task", "params", "position", "loss", "ci_low", "ci_high"} - set(pp.columns)
        if missing:
            raise UserError(f"corrupt table {self.out / self.POSITIONS_TABLE}: missing columns "
                            f"{', '.join(sorted(missing))}")
        return with_bytes(pp)

    # -- what a report section or a task's view reads --------------------------------------------------
    @property
    def eval_sequences(self) -> int:
        """Test sequences each run was scored on."""
        return int(self.config().get("eval_sequences", STUDY.eval_sequences))

    def run_losses(self, run_id: str) -> tuple[np.ndarray, np.ndarray]:
        """A run's stored per-sequence losses (N, T) in nats and target mask (N, T)."""
        return self.run(run_id).losses()

    def stored_losses(self, runs: pd.DataFrame):
        """(row, losses, mask) for each run of ``runs`` whose losses are stored (rows as dicts)."""
        for r in runs.to_dict("records"):
            try:
                losses, mask = self.run_losses(r["run_id"])
            except FileNotFoundError:
                continue
            yield r, losses, mask

    def load_model(self, run_id: str, device: str = "cpu") -> torch.nn.Module:
        return self.run(run_id).load_model(device)[0]

    def cached_table(self, run_id: str, name: str, compute: Callable[[], pd.DataFrame]) -> pd.DataFrame:
        """``runs/<id>/view_<name>.parquet``, computed once (e.g. from the stored model) and kept."""
        return self.run(run_id).cached_table(name, compute)


def load_run_model(folder: Path, device: str = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a finished run's trained model from ``runs/<run_id>/``: :meth:`RunFolder.load_model`.
    Returns (model in eval mode, result row)."""
    return RunFolder(folder).load_model(device)


def environment() -> dict[str, Any]:
    """Package versions, device, git commit: written once into a study folder."""
    versions = {}
    for pkg in ("torch", "lightning", "numpy", "pandas", "pyarrow", "seaborn", "matplotlib", "optuna", "scipy",
                "transformers", "tokenizers"):  # optional: the hf: families; bpe= and tokenizer=
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
