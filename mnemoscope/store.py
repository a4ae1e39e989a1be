"""A study folder on disk, as the analysis, the report and the tasks' views read it.

Layout::

    config.yaml            the fully resolved study (``--config`` on it resumes the study, in this folder)
    environment.json       package versions, device, git commit
    data.json              each task's splits, documents and tokens, per version of its data
    runs/<run_id>/         one folder per finished run, moved into place atomically:
        result.json        its row of runs.parquet
        per_position.parquet
        losses.npz         per-sequence, per-position losses (N, T) and the target mask
        val_curve.npz      validation loss per sequence at log-spaced steps (loss against compute)
        model.pt           the trained weights (state_dict; load with weights_only=True)
        metrics.csv        Lightning's CSV log
        analysis/          the run's stored analysis (reused by a later ``analyze``)
        view_<name>.parquet  a task view's table computed from the model, kept
    runs.parquet           one row per run, rebuilt from runs/*/result.json
    per_position.parquet   tidy rows, rebuilt from runs/*/per_position.parquet
    per_position.png, report.html, fits.csv, gaps.csv, ...
"""
from __future__ import annotations

import errno
import importlib.metadata as md
import json
import os
import platform
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
from .errors import UserError
from .model import build
from .registry import ARCHITECTURES
from .settings import STUDY
from .specs import parse_spec

REPO_ROOT = Path(__file__).resolve().parent.parent


class StudyFolder:
    """Read access to a study folder's runs: what a report section or a task's view needs."""

    def __init__(self, out: Path):
        self.out = Path(out)

    @property
    def runs_dir(self) -> Path:
        return self.out / "runs"

    def config(self) -> dict[str, Any]:
        """The raw ``config.yaml`` (an empty dict when missing or unreadable)."""
        try:
            d = yaml.safe_load((self.out / "config.yaml").read_text())
        except (OSError, yaml.YAMLError):
            return {}
        return d if isinstance(d, dict) else {}

    def environment(self) -> dict[str, Any]:
        """The study's ``environment.json`` (versions, device, commit); empty when missing or unreadable."""
        try:
            d = json.loads((self.out / "environment.json").read_text())
        except (OSError, ValueError):
            return {}
        return d if isinstance(d, dict) else {}

    @property
    def eval_sequences(self) -> int:
        """Test sequences each run was scored on."""
        return int(self.config().get("eval_sequences", STUDY.eval_sequences))

    def run_losses(self, run_id: str) -> tuple[np.ndarray, np.ndarray]:
        """A run's stored per-sequence losses (N, T) in nats and target mask (N, T)."""
        with np.load(self.runs_dir / run_id / "losses.npz") as z:
            return z["losses"], z["mask"]

    def stored_losses(self, runs: pd.DataFrame):
        """(row, losses, mask) for each run of ``runs`` whose losses are stored (rows as dicts)."""
        for r in runs.to_dict("records"):
            try:
                losses, mask = self.run_losses(r["run_id"])
            except FileNotFoundError:
                continue
            yield r, losses, mask

    def load_model(self, run_id: str, device: str = "cpu") -> torch.nn.Module:
        return load_run_model(self.runs_dir / run_id, device)[0]

    def cached_table(self, run_id: str, name: str, compute: Callable[[], pd.DataFrame]) -> pd.DataFrame:
        """``runs/<id>/view_<name>.parquet``, computed once (e.g. from the stored model) and kept."""
        path = self.runs_dir / run_id / f"view_{name}.parquet"
        if path.exists():
            return pd.read_parquet(path)
        df = compute()
        files.write_parquet(path, df)
        return df


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


def disk_error(exc: OSError, path: Path) -> UserError:
    """One clear line for a full disk or a folder we may not write."""
    if exc.errno == errno.ENOSPC:
        return UserError(f"disk full while writing {path}; finished runs and tables are intact")
    return UserError(f"cannot write {path}: {exc.strerror or exc}")


def jsonable(o):
    """``json.dumps(default=...)`` for numpy scalars."""
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(type(o))


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
