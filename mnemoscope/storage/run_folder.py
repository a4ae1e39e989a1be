"""One run's folder, ``runs/<run_id>/``: :class:`RunFolder` reads and writes every file in it
(the storage layer's half for a run; the study's half: :mod:`mnemoscope.storage.study_folder`, the layout:
docs/design.md, "The storage layer").
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from . import files
from ..contract.model import build
from ..errors import UserError
from ..registry import ARCHITECTURES
from ..specs import parse_spec
from .migrations import ANALYSIS_TABLES_ADDED_LATER, FORMAT, file_format, transformer_before_convolutions, without_format

_STEP_FILE = re.compile(r"step-(\d+)\.npz$")


def _write_npz(path: Path, arrays: dict[str, Any]) -> None:
    files.atomic_write(path, lambda p: _savez(p, arrays))


def _savez(path: Path, arrays: dict[str, Any]) -> None:
    _save_to_file(path, lambda f: np.savez_compressed(f, **arrays))


def _save_to_file(path: Path, save: Callable[[Any], None]) -> None:
    with open(path, "wb") as f:  # a file object: numpy would add ".npz" to the temporary name
        save(f)


class RunFolder:
    """One run's folder, ``runs/<run_id>/`` (or the working folder a run is assembled in before it
    is moved into place whole): every file in it is read and written through this class."""

    RESULT = "result.json"  # the run's row of runs.parquet, and the folder's format
    LOSSES = "losses.npz"  # per-sequence, per-position losses (N, T) in nats, the target mask, bytes
    POSITIONS = "per_position.parquet"  # the run's rows of the study's per_position.parquet
    CURVE = "val_curve.npz"  # validation loss per sequence at log-spaced steps (loss against compute)
    MODEL = "model.pt"  # the trained weights and how to build the model (state_dict; weights_only)
    METRICS = "metrics.csv"  # Lightning's CSV log
    HISTORY = "history"  # the kept steps: step-NNNNNNN.npz (losses) and .pt (weights)
    HISTORY_TABLES = ("history", "history_steps")  # NAME.parquet made of the kept steps
    CHECKPOINTS = "checkpoints"  # mid-run checkpoints (a run under way only)
    LAST_CHECKPOINT = "last.ckpt"  # in CHECKPOINTS: the newest mid-run checkpoint, where a stopped run resumes
    LOGS = "logs"  # the loggers' folder (a run under way only)
    RESUMES = "resumes.json"  # every resume so far (a run under way only; result.json's "resumes" at the end)
    ANALYSIS = "analysis"  # the run's stored analysis: NAME.json, NAME.parquet, NAME.npz
    VIEW = "view_{}.parquet"  # a task view's table computed from the model, kept
    LOCK = ".lock"  # held by the process working on the run (a run under way only)

    def __init__(self, path: Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def finished(self) -> bool:
        return (self.path / self.RESULT).exists()

    @property
    def has_model(self) -> bool:
        return (self.path / self.MODEL).is_file()

    @property
    def has_losses(self) -> bool:
        return (self.path / self.LOSSES).exists()

    @property
    def history_dir(self) -> Path:
        return self.path / self.HISTORY

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / self.CHECKPOINTS

    @property
    def logs_dir(self) -> Path:
        return self.path / self.LOGS

    @property
    def model_path(self) -> Path:
        return self.path / self.MODEL

    def step_path(self, step: int, suffix: str = ".npz") -> Path:
        """A kept step's file: its losses (``.npz``) or its weights (``.pt``)."""
        return self.history_dir / f"step-{step:07d}{suffix}"

    # -- the result row ---------------------------------------------------------------------------
    def row(self) -> dict[str, Any]:
        """The run's row as runs.parquet holds it (``result.json`` without its ``format``)."""
        return without_format(json.loads((self.path / self.RESULT).read_text()))

    def format(self) -> int:
        return file_format(json.loads((self.path / self.RESULT).read_text()))

    def write_row(self, row: dict[str, Any]) -> None:
        files.write_text(self.path / self.RESULT, json.dumps({**row, "format": FORMAT}, indent=1, default=jsonable))

    # -- losses, per-position table, validation curve -----------------------------------------------
    def losses(self) -> tuple[np.ndarray, np.ndarray]:
        """The stored per-sequence losses (N, T) in nats and target mask (N, T)."""
        with np.load(self.path / self.LOSSES) as z:
            return z["losses"], z["mask"]

    def loss_arrays(self) -> dict[str, np.ndarray]:
        """Every array of ``losses.npz`` (losses, mask, and the bytes or windows where stored)."""
        with np.load(self.path / self.LOSSES) as z:
            return dict(z)

    def write_losses(self, **arrays: np.ndarray) -> None:
        _write_npz(self.path / self.LOSSES, arrays)

    def per_position(self) -> pd.DataFrame:
        return pd.read_parquet(self.path / self.POSITIONS)

    def write_per_position(self, pp: pd.DataFrame) -> None:
        files.write_parquet(self.path / self.POSITIONS, pp)

    def val_curve(self) -> dict[str, np.ndarray] | None:
        """steps (P,), tokens (P,), loss_sum (P, N), targets (N,); None where none is stored."""
        path = self.path / self.CURVE
        if not path.exists():
            return None
        with np.load(path) as z:
            return dict(z)

    def write_val_curve(self, curve) -> None:
        """A :class:`mnemoscope.training.callbacks.LogSpacedValidation`'s points (nothing when it has none)."""
        if curve.history:
            files.atomic_write(self.path / self.CURVE, lambda p: _save_to_file(p, curve.save))

    # -- the model ----------------------------------------------------------------------------------
    def checkpoint(self, device: str = "cpu") -> dict[str, Any]:
        """``model.pt`` read with ``weights_only=True``: tensors and plain containers only, so a
        tampered file cannot run code."""
        return torch.load(self.path / self.MODEL, map_location=device, weights_only=True)

    def write_model(self, arch: str, task: str, arch_config: dict, vocab_size: int, context_length: int,
                    state_dict: dict) -> None:
        """``model.pt``, saved in place: it is written into a run's working folder only, which is
        moved into place whole (:meth:`move_to`)."""
        ckpt = {"arch": arch, "task": task, "arch_config": arch_config, "vocab_size": vocab_size,
                "context_length": context_length, "state_dict": state_dict}
        torch.save(ckpt, self.path / self.MODEL)

    def load_model(self, device: str = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
        """The trained model (eval mode) and the result row; one line where the run has neither."""
        try:
            row = self.row()
            ckpt = self.checkpoint(device)
        except FileNotFoundError:
            raise UserError(f"{self.path} is not a finished run (no result.json or model.pt)") from None
        except Exception as exc:
            raise UserError(f"cannot load the model of {self.path}: {type(exc).__name__}: {exc}") from None
        return model_from_checkpoint(ckpt, device), row

    # -- the kept steps (mnemoscope.measure.history) --------------------------------------------------------
    def write_step(self, step: int, tokens: int, losses: np.ndarray, mask: np.ndarray,
                   state_dict: dict | None = None) -> None:
        """One kept step's per-window losses (and weights, unless None), each file written atomically."""
        if state_dict is not None:
            weights = {k: v.detach().to("cpu", copy=True) for k, v in state_dict.items()}
            files.atomic_write(self.step_path(step, ".pt"), lambda p: torch.save(weights, p))
        _write_npz(self.step_path(step), {"losses": losses.astype(np.float32), "mask": np.asarray(mask, bool),
                                          "step": step, "tokens": tokens})

    def steps(self) -> list[dict]:
        """The kept steps, in order: dicts of step, tokens, losses, mask, weights (a path or None)."""
        out = []
        folder = self.history_dir
        for p in sorted(folder.glob("step-*.npz")) if folder.is_dir() else []:
            if not _STEP_FILE.search(p.name):
                continue
            with np.load(p) as z:
                row = {"step": int(z["step"]), "tokens": int(z["tokens"]), "losses": z["losses"], "mask": z["mask"]}
            pt = p.with_suffix(".pt")
            row["weights"] = pt if pt.exists() else None
            out.append(row)
        return out

    @staticmethod
    def step_weights(path: Path, device: str = "cpu") -> dict:
        """A kept step's weights (``weights_only``), as :meth:`steps` names them."""
        try:
            return torch.load(path, map_location=device, weights_only=True)
        except Exception as exc:
            raise UserError(f"cannot load the kept weights {path}: {type(exc).__name__}: {exc}") from None

    def table(self, name: str) -> pd.DataFrame:
        """``NAME.parquet`` of the run (``history``, ``history_steps``); empty when missing."""
        return files.read_optional(self.path / f"{name}.parquet")

    def write_table(self, name: str, df: pd.DataFrame) -> None:
        files.write_parquet(self.path / f"{name}.parquet", df)

    # -- the stored analysis and the task views --------------------------------------------------------
    def analysis_json(self, name: str) -> Any:
        """``analysis/NAME.json`` (raises OSError or ValueError where missing or unreadable)."""
        return json.loads((self.path / self.ANALYSIS / f"{name}.json").read_text())

    def analysis_table(self, name: str) -> pd.DataFrame:
        """``analysis/NAME.parquet``; a table added after the run's analysis was stored reads as empty
        (:data:`mnemoscope.storage.migrations.ANALYSIS_TABLES_ADDED_LATER`), any other missing one raises."""
        path = self.path / self.ANALYSIS / f"{name}.parquet"
        return files.read_optional(path) if name in ANALYSIS_TABLES_ADDED_LATER else pd.read_parquet(path)

    def analysis_arrays(self, name: str) -> dict[str, np.ndarray]:
        with np.load(self.path / self.ANALYSIS / f"{name}.npz") as z:
            return dict(z)

    def has_analysis(self, name: str) -> bool:
        return (self.path / self.ANALYSIS / f"{name}.json").exists()

    def write_analysis(self, name: str, record: Any, tables: dict[str, pd.DataFrame] | None = None,
                       arrays: dict[str, np.ndarray] | None = None) -> None:
        """``analysis/NAME.json`` (``record``), after the tables (``analysis/KEY.parquet``) and the
        arrays (``analysis/NAME.npz``) it describes: a stored analysis is read from its json."""
        for key, df in (tables or {}).items():
            files.write_parquet(self.path / self.ANALYSIS / f"{key}.parquet", df)
        if arrays is not None:
            _write_npz(self.path / self.ANALYSIS / f"{name}.npz", arrays)
        files.write_text(self.path / self.ANALYSIS / f"{name}.json", json.dumps(record, indent=1, default=jsonable))

    def cached_table(self, name: str, compute: Callable[[], pd.DataFrame]) -> pd.DataFrame:
        """``view_<name>.parquet``, computed once (e.g. from the stored model) and kept."""
        path = self.path / self.VIEW.format(name)
        if path.exists():
            return pd.read_parquet(path)
        df = compute()
        files.write_parquet(path, df)
        return df

    # -- a run under way ---------------------------------------------------------------------------------
    def stage(self, name: str) -> dict[str, np.ndarray] | None:
        """``NAME.npz``, a finished stage kept in a working folder (``study.py score``'s ``runs/.tmp-<id>/``:
        a stopped command resumes from it), or None when it is not there yet."""
        path = self.path / f"{name}.npz"
        if not path.exists():
            return None
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def write_stage(self, name: str, arrays: dict[str, np.ndarray]) -> None:
        """``NAME.npz`` in a working folder, written atomically (uncompressed: it is rewritten batch by batch)."""
        files.atomic_write(self.path / f"{name}.npz", lambda p: _save_to_file(p, lambda f: np.savez(f, **arrays)))

    def remove(self) -> None:
        """The folder and everything in it (a working folder whose run was moved into place, or is redone)."""
        shutil.rmtree(self.path, ignore_errors=True)

    def resumes(self) -> list[dict[str, Any]]:
        """Every resume of the run under way so far, oldest first (:meth:`add_resume`)."""
        path = self.path / self.RESUMES
        return json.loads(path.read_text()) if path.exists() else []

    def add_resume(self, record: dict[str, Any]) -> None:
        """Record a resume (:func:`mnemoscope.training.checkpoints.resume_record`) of the run under way: the
        list is the folder's, so a sitting stopped before its first checkpoint is recorded too."""
        files.write_text(self.path / self.RESUMES, json.dumps([*self.resumes(), record], indent=1))

    def keep_metrics(self) -> None:
        """Lightning's CSV log moved out of the loggers' folder, which goes with the checkpoints."""
        metrics = self.logs_dir / self.METRICS
        if metrics.exists():
            shutil.move(metrics, self.path / self.METRICS)
        shutil.rmtree(self.logs_dir, ignore_errors=True)
        shutil.rmtree(self.checkpoints_dir, ignore_errors=True)  # the run is whole: nothing to resume from
        (self.path / self.RESUMES).unlink(missing_ok=True)  # in result.json now

    def move_to(self, final: Path) -> dict[str, Any] | None:
        """Move this (working) folder into place as ``final`` whole, without its lock: a run is either
        absent or complete. Returns the row of a run someone finished there first (theirs is kept),
        else None."""
        (self.path / self.LOCK).unlink(missing_ok=True)
        final = RunFolder(final)
        for attempt in range(2):
            if final.finished:  # someone finished it first (a retried run): keep theirs
                shutil.rmtree(self.path, ignore_errors=True)
                return final.row()
            if final.path.exists():
                shutil.rmtree(final.path, ignore_errors=True)  # a folder without result.json is no run
            try:
                os.replace(self.path, final.path)
                return None
            except OSError as exc:
                if attempt:
                    raise disk_error(exc, final.path) from exc
        return None


def model_from_checkpoint(ckpt: dict[str, Any], device: str = "cpu") -> torch.nn.Module:
    """The model a ``model.pt`` describes, with its weights, in eval mode."""
    cls, _, _ = parse_spec(ckpt["arch"], ARCHITECTURES)
    config = ckpt["arch_config"]
    if getattr(cls, "version", None) is not None:  # the transformer's convolutions (mnemoscope.storage.migrations)
        config = transformer_before_convolutions(config, ckpt["state_dict"])
    model = build(cls, int(ckpt["vocab_size"]), int(ckpt["context_length"]), config)
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval()


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
