"""Atomic writes and table I/O: a killed process leaves the old file or the new one, never half of one."""
from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from io import BytesIO
from pathlib import Path
from typing import Callable

import pandas as pd
import yaml

from ..errors import UserError

_UMASK = os.umask(0)
os.umask(_UMASK)


def file_digest(path: Path) -> str:
    """The sha256 of a file's bytes, read in 8 MiB pieces (a model's weights: what decides its
    numbers, wherever the file lies and whenever it was copied there)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while piece := f.read(1 << 23):
            h.update(piece)
    return h.hexdigest()


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file over ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as exc:
        raise UserError(f"cannot write to {path.parent}: {exc.strerror or exc}") from exc
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; results are for sharing
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.errno == errno.ENOSPC:
            raise UserError(f"disk full while writing {path}; results already written are intact") from exc
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text))


def write_parquet(path: Path, df: pd.DataFrame) -> None:
    atomic_write(path, lambda p: df.to_parquet(p, index=False))


def read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except FileNotFoundError:
        raise UserError(f"missing table {path}") from None
    except Exception as exc:
        raise UserError(f"corrupt table {path}: {type(exc).__name__}: {exc}") from exc


def write_table(path: Path, df: pd.DataFrame) -> None:
    """Atomic, and untouched when its bytes would not change (a failed rerun alters nothing)."""
    buf = BytesIO()
    df.to_parquet(buf, index=False)
    data = buf.getvalue()
    if path.exists() and path.read_bytes() == data:
        return
    atomic_write(path, lambda p: p.write_bytes(data))


def read_optional(path: Path) -> pd.DataFrame:
    """A table that may not exist yet (an empty frame then); an empty CSV reads as an empty frame."""
    path = Path(path)
    if not path.exists():
        return pd.DataFrame()
    if path.suffix != ".csv":
        return read_parquet(path)
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:  # an analysis that found no run to fit writes an empty table
        return pd.DataFrame()


def read_yaml(path: Path, label: str | None = None):
    """A YAML file's contents; a syntax error becomes one line with its line and column."""
    try:
        return yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"corrupt YAML in {label or path}: {yaml_error(exc)}") from None


def yaml_error(exc: yaml.YAMLError) -> str:
    """``line L, column C: problem`` (1-based, as editors count) of a YAML parse error."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark is not None else problem
