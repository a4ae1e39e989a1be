"""The task contract: a task owns its vocabulary, tokenization, splits and target mask.

A task is a class registered with ``@register_task("name")`` (or an entry point, or a
``module:Class`` path), built as ``cls(source=None, context_length=None, **options)``. It
exposes ``vocab_size``, ``context_length`` and ``splits()`` -> ``{"train", "validation",
"test"}`` of :class:`TokenSplit`. Splits are by document, so validation never holds a
near-copy of training text. Prepared data is cached on disk with a checksum. A task may draw its
own section of the report (``report_view``), built-in or plugin alike.

Helpers any task can use live here too: ``split_documents`` and ``read_user_documents`` for
text-like data; ``sequences_split`` and ``token_dtype`` for fixed-length sequences;
``check_options`` and ``content_digest`` for a task's options and the files it reads.
:class:`TokenSplit` and the windows cut from it live in :mod:`mnemoscope.contract.windows` (``TokenSplit``
is imported here too, as the contract's type).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..errors import UserError
from .windows import TokenSplit, n_windows

SPLITS = ("train", "validation", "test")


def cache_root() -> Path:
    return Path(os.environ.get("MNEMOSCOPE_CACHE", Path.home() / ".cache" / "mnemoscope"))


class Task:
    """The task contract: a subclass implements ``build_splits()`` (the base caches what it returns)
    and sets ``vocab_size`` and ``default_context``; every other hook is optional and defined here
    with its default. ``tests/test_task_contract.py`` checks each registered task against it, and
    that the harness reads no hook of a task that is not defined here."""

    vocab_size: int = 256
    default_context: int = 256
    #: True when a sequence has a natural, fixed length (an image): --context is then refused.
    fixed_context: bool = False
    #: bumped when preparation changes, so stale caches are not reused.
    version: str = "1"
    #: options of a small instance (prepared in seconds) that the task contract tests build; the
    #: value "{documents}" stands for a folder of small text and Python files, "{images}" for a small
    #: .npz of train and test images, both made by the tests
    example: dict[str, Any] = {}

    def __init__(self, source: str | None = None, context_length: int | None = None, **options: Any):
        if self.fixed_context and context_length not in (None, self.default_context):
            raise UserError(
                f"task {self.name} has a fixed sequence length of {self.default_context} tokens; "
                f"--context {context_length} does not apply to it"
            )
        self.source = source
        self.context_length = int(context_length or self.default_context)
        if self.context_length < 2:
            raise UserError(f"context length must be at least 2, got {self.context_length}")
        self.options = options
        self._splits: dict[str, TokenSplit] | None = None
        self._data_fingerprint: str | None = None

    @property
    def name(self) -> str:
        return getattr(type(self), "registered_name", type(self).__name__.lower())

    # -- what subclasses provide ----------------------------------------------------------
    def fingerprint_inputs(self) -> dict[str, Any]:
        """What the prepared data depend on besides the task's name and ``version`` (default: source
        and options). A task that reads files gives their content (:func:`content_digest`), not where
        they lie: an edited file is prepared again, the same files elsewhere are the same data."""
        return {"source": self.source, "options": self.options}

    def fingerprint(self) -> str:
        """Identifies the prepared data (the cache key): a hash of the name, ``version`` and
        :meth:`fingerprint_inputs`. Same fingerprint, same cached arrays."""
        return hashlib.sha256(json.dumps([self.name, self.version, self.fingerprint_inputs()], sort_keys=True,
                                         default=str).encode()).hexdigest()[:16]

    def build_splits(self) -> dict[str, TokenSplit]:
        raise NotImplementedError

    def decode(self, tokens: Iterable[int]) -> str:
        """Text of token ids (UTF-8 bytes by default; undecodable bytes become U+FFFD)."""
        return bytes(int(t) for t in tokens).decode("utf-8", errors="replace")

    def encode(self, text: str) -> np.ndarray:
        """Token ids of ``text``, the inverse of ``decode`` (its UTF-8 bytes by default)."""
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)

    # -- cached access ------------------------------------------------------------------------
    def splits(self) -> dict[str, TokenSplit]:
        if self._splits is None:
            self._splits = load_or_prepare(self)
            for split_name in ("validation", "test"):
                if len(self._splits[split_name]) < self.context_length + 1:
                    raise UserError(
                        f"task {self.name}: the {split_name} split holds {len(self._splits[split_name])} tokens, "
                        f"fewer than one sequence of context {self.context_length}; use a shorter --context or more data"
                    )
            for split_name, split in self._splits.items():
                if split.spans is not None and split.starts is None and n_windows(split, self.context_length) < 1:
                    raise UserError(f"task {self.name}: no document of the {split_name} split holds "
                                    f"{self.context_length + 1} tokens, so no window fits inside one; use a shorter "
                                    f"--context, or let windows cross documents (windows=any)")
        return self._splits

    def data_fingerprint(self) -> str:
        """Identifies the prepared data by content (16 hex digits): the checksums of every split's
        arrays (their dtypes, shapes and bytes) and the vocabulary size. The same data give the same
        fingerprint wherever their files lie; an edited corpus gives another. A run's id includes it."""
        if getattr(self, "_data_fingerprint", None) is None:
            splits = self.splits()
            h = hashlib.sha256(f"vocab {int(self.vocab_size)}".encode())
            for name in sorted(splits):
                for part in ("tokens", "mask", "starts"):
                    arr = getattr(splits[name], part)
                    if arr is not None:
                        arr = np.ascontiguousarray(arr)
                        h.update(f"{name}.{part} {arr.dtype.str} {arr.shape}".encode())
                        h.update(memoryview(arr).cast("B"))
            self._data_fingerprint = h.hexdigest()[:16]
        return self._data_fingerprint

    def describe_data(self) -> dict[str, Any]:
        """What a study did with the data (for its report): per split, the documents (how many, their
        names) and tokens; whether an evaluation window may span two documents (a split's documents
        joined into one stream, windows starting anywhere)."""
        splits = self.splits()
        out: dict[str, Any] = {"data_fingerprint": self.data_fingerprint(), "vocab_size": int(self.vocab_size),
                               "context_length": self.context_length, "splits": {}}
        for name, s in splits.items():
            out["splits"][name] = {"documents": len(s.documents), "tokens": int(len(s.tokens)),
                                   "names": [str(d) for d in s.documents[:DESCRIBED_DOCUMENTS]],
                                   "names_listed": min(len(s.documents), DESCRIBED_DOCUMENTS),  # the first ones
                                   "windows_cross_documents": s.starts is None and s.spans is None
                                                              and len(s.documents) > 1}
        return out

    def floor_excess(self, losses: np.ndarray, mask: np.ndarray, seed: int = 0) -> dict[str, float] | None:
        """A run's distance from the task's exact optimal loss, for a task that knows it (a synthetic
        probe): ``loss_floor``, ``excess_over_floor`` with ``_low`` and ``_high`` (95% interval), from
        the run's (N, T) test losses and mask. ``study.py analyze`` puts them in fits.csv; the
        default, a task whose floor is unknown, gives None."""
        return None

    #: identifies the tokenization (a hash of the tokenizer file), attribute or property; None: no tokenizer
    tokenizer_fingerprint: str | None = None

    #: text-like tasks: a method returning the corpus as (name, bytes) documents, which ``study.py score``
    #: reads through each model's own tokenizer; None (the default): the task has no raw text to give
    documents = None

    def token_bytes(self) -> np.ndarray | None:
        """Bytes of text each token id stands for, a (vocab_size,) integer array, so that context can
        be counted in bytes as well as tokens; None (the default) when tokens are not text."""
        return None

    def prepared_files(self) -> dict[str, bytes]:
        """Files prepared with the arrays (e.g. a trained tokenizer), kept and checksummed in the
        cache beside them; read back with ``prepared_path(name)``."""
        return {}

    def prepared_path(self, name: str) -> Path:
        """Where the cached file ``name`` of ``prepared_files`` lies (prepares the data if needed)."""
        self.splits()
        return self._cache_folder / name

    def study_files(self) -> dict[str, Path]:
        """Files a study keeps in its folder for this task: relative path there -> file to copy."""
        return {}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "context_length": self.context_length,
                "vocab_size": self.vocab_size, **self.options}

    # -- the task's own report section (optional) ------------------------------------------------
    #: title of the section ``report_view`` draws (after "Task <spec>: ")
    view_title: str = ""

    def report_view(self, folder, runs, pp) -> str:
        """HTML of this task's own report section, drawn from a study's stored tables: ``folder``
        is a :class:`mnemoscope.storage.study_folder.StudyFolder`, ``runs`` and ``pp`` this task's rows of
        ``runs.parquet`` and ``per_position.parquet``. The default draws none ('')."""
        return ""

    def report_headline(self, folder, runs) -> tuple[bytes, str] | None:
        """(PNG, caption) of a figure the page opens with, beside the per-position loss (the recall
        probe's accuracy against distance); None: none (the default)."""
        return None

    def report_findings(self, folder, runs) -> str:
        """A sentence the study's findings add for this task (the recall probe's distance at which
        recall falls below half, and the state each model carries); '' (the default): none."""
        return ""

    def report_through_training(self, folder, runs) -> str:
        """HTML the page adds after its through-training section, from the runs' kept steps (the
        probes' phase change); '' (the default): none."""
        return ""


# -- caching with a checksum ----------------------------------------------------------------
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


DESCRIBED_DOCUMENTS = 50  # document names a study records per split (data.json)


def load_or_prepare(task: Task) -> dict[str, TokenSplit]:
    """Load the task's prepared arrays from the cache (checksums verified) or prepare them."""
    folder = cache_root() / task.name / task.fingerprint()
    task._cache_folder = folder
    meta_path = folder / "meta.json"
    if meta_path.exists():
        try:
            return _load(folder, json.loads(meta_path.read_text()))
        except (OSError, ValueError, KeyError):
            shutil.rmtree(folder, ignore_errors=True)  # corrupt cache: prepare again
    splits = task.build_splits()
    _save(folder, splits, task)
    return _load(folder, json.loads(meta_path.read_text()))


def _save(folder: Path, splits: dict[str, TokenSplit], task: Task) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".prepare-"))  # renamed into place when whole
    meta: dict[str, Any] = {"task": task.describe(), "splits": {}}
    missing = [name for name in SPLITS if name not in splits]
    if missing:
        raise UserError(f"task {task.name} built no {', '.join(missing)} split")
    # the three standard splits, then any extra held-out ones a task adds (e.g. math's "extrapolation")
    for name in [*SPLITS, *(n for n in splits if n not in SPLITS)]:
        s = splits[name]
        entry = {"documents": list(s.documents), "n_tokens": int(len(s.tokens)), "dtype": str(s.tokens.dtype), "files": {}}
        for part in ("tokens", "mask", "starts", "spans"):
            arr = getattr(s, part)
            if arr is None:
                continue
            path = tmp / f"{name}.{part}.npy"
            np.save(path, np.ascontiguousarray(arr))
            entry["files"][part] = {"file": path.name, "sha256": _sha256(path)}
        meta["splits"][name] = entry
    meta["files"] = {}
    for name, data in task.prepared_files().items():
        (tmp / name).write_bytes(data)
        meta["files"][name] = _sha256(tmp / name)
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    try:
        os.replace(tmp, folder)  # atomic: a concurrent or killed preparation leaves no half cache
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # someone else finished first


def _load(folder: Path, meta: dict) -> dict[str, TokenSplit]:
    for name, sha in meta.get("files", {}).items():
        if _sha256(folder / name) != sha:
            raise ValueError(f"checksum mismatch in {folder / name}")
    out = {}
    for name in [*SPLITS, *(n for n in meta["splits"] if n not in SPLITS)]:
        entry = meta["splits"][name]
        arrays = {}
        for part, f in entry["files"].items():
            path = folder / f["file"]
            if _sha256(path) != f["sha256"]:
                raise ValueError(f"checksum mismatch in {path}")
            arrays[part] = np.load(path, mmap_mode="r")
        out[name] = TokenSplit(documents=entry["documents"], **arrays)
    return out


# -- helpers for document corpora -------------------------------------------------------------
def split_documents(docs: list[tuple[str, bytes]], fractions=(0.1, 0.1)) -> dict[str, list[tuple[str, bytes]]]:
    """Assign whole documents to test, validation and train, deterministically.

    Documents are ordered by a hash of their name and taken for test until it holds
    ``fractions[0]`` of the bytes, then for validation, the rest for training. With fewer
    than three documents there is nothing to split by, so each is cut into three contiguous
    parts (80/10/10), named ``doc#train`` etc.
    """
    docs = [d for d in docs if d[1]]
    if len(docs) < 3:
        cut = []
        for name, data in docs:
            n = len(data)
            a, b = int(n * (1 - sum(fractions))), int(n * (1 - fractions[0]))
            cut += [(f"{name}#train", data[:a]), (f"{name}#validation", data[a:b]), (f"{name}#test", data[b:])]
        return {s: [d for d in cut if d[0].endswith("#" + s)] for s in SPLITS}
    total = sum(len(d) for _, d in docs)
    ordered = sorted(docs, key=lambda d: hashlib.sha256(d[0].encode()).hexdigest())
    out: dict[str, list] = {"test": [], "validation": [], "train": []}
    filled = {"test": 0, "validation": 0}
    for doc in ordered:
        split = next((s for s, frac in zip(("test", "validation"), fractions) if filled[s] < frac * total), "train")
        out[split].append(doc)
        if split != "train":
            filled[split] += len(doc[1])
    if not out["train"]:  # a few huge documents: training needs one more than validation does
        out["train"].append(out["validation"].pop())
    return out


def read_user_documents(source: str, suffixes: tuple[str, ...] | None = None) -> list[tuple[str, bytes]]:
    """A user's file or folder of files, each file one document. Refuses empty and binary files."""
    path = Path(source).expanduser()
    if not path.exists():
        raise UserError(f"no such file or folder: {source}")
    files = [path] if path.is_file() else sorted(
        p for p in path.rglob("*") if p.is_file() and (suffixes is None or p.suffix in suffixes)
    )
    if not files:
        raise UserError(f"no files found under {source}")
    docs = []
    for f in files:
        data = f.read_bytes()
        if not data.strip():
            if path.is_file():
                raise UserError(f"{f} is empty")
            continue
        if b"\0" in data[:8192]:
            raise UserError(f"{f} looks binary (it contains NUL bytes); give text files")
        docs.append((str(f.relative_to(path)) if path.is_dir() else f.name, data))
    if not docs:
        raise UserError(f"every file under {source} is empty")
    return docs


# -- helpers for fixed-length sequences and for options ----------------------------------------------
def token_dtype(vocab_size: int):
    """The smallest unsigned integer type that holds every token id."""
    return np.uint8 if vocab_size <= 256 else np.uint16 if vocab_size <= 1 << 16 else np.uint32


def sequences_split(sequences: np.ndarray, documents: list[str], mask: np.ndarray | None = None) -> TokenSplit:
    """(N, L) fixed-length sequences -> a flat TokenSplit whose windows start only at sequence starts."""
    n, length = sequences.shape
    return TokenSplit(tokens=sequences.reshape(-1), mask=None if mask is None else mask.reshape(-1),
                      starts=np.arange(n, dtype=np.int64) * length, documents=documents)


def check_options(task: str, options: dict, known: set[str]) -> None:
    """One line naming the unknown options and the known ones."""
    unknown = sorted(set(options) - known)
    if unknown:
        raise UserError(f"unknown option(s) {', '.join(unknown)} for task {task} (known: {', '.join(sorted(known)) or 'none'})")


def content_digest(documents: Iterable[tuple[str, bytes]]) -> str:
    """One hash of named contents (a task's documents, or a file's name and bytes): what a task's
    :meth:`Task.fingerprint_inputs` holds for the files it reads. The names count (they are the
    documents' names), the folder the files lie in does not."""
    h = hashlib.sha256()
    for name, data in sorted(documents, key=lambda d: d[0]):
        h.update(hashlib.sha256(str(name).encode()).digest())
        h.update(hashlib.sha256(data).digest())
    return h.hexdigest()
