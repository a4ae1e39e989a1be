"""``code``: byte-level Python source from the CPython standard library, split by file.

The standard library that every Python installation carries (``sysconfig``'s ``stdlib``
path), without ``site-packages`` and without the test suites (which repeat themselves).
``--task code:path/to/dir`` uses your own ``.py`` files instead.
"""
from __future__ import annotations

import sysconfig
from pathlib import Path

from mnemoscope.registry import register_task
from mnemoscope.task import Task, byte_splits, read_user_documents

SKIP = {"site-packages", "test", "tests", "idle_test", "__pycache__"}


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py") if not SKIP.intersection(p.relative_to(root).parts))


@register_task("code")
class Code(Task):
    """Python source files as bytes (the standard library by default; code:PATH for your own)."""

    vocab_size = 256
    default_context = 256
    example = {"source": "{documents}", "context_length": 32}

    def fingerprint(self) -> str:
        self.options["_root"] = self.source or sysconfig.get_paths()["stdlib"]
        fp = super().fingerprint()
        self.options.pop("_root")
        return fp

    def build_splits(self):
        if self.source:
            docs = read_user_documents(self.source, suffixes=(".py",))
        else:
            root = Path(sysconfig.get_paths()["stdlib"])
            docs = [(str(p.relative_to(root)), p.read_bytes()) for p in stdlib_files()]
        return byte_splits(docs)
