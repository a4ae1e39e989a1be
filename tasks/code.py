"""``code``: Python source from the CPython standard library, split by file; as bytes by
default (``code:bpe=4096`` for subwords, see :mod:`mnemoscope.contract.text_task`).

The standard library that every Python installation carries (``sysconfig``'s ``stdlib``
path), without ``site-packages`` and without the test suites (which repeat themselves).
``--task code:path/to/dir`` uses your own ``.py`` files instead.
"""
from __future__ import annotations

import sysconfig
from pathlib import Path

from mnemoscope.registry import register_task
from mnemoscope.contract.task import read_user_documents
from mnemoscope.contract.text_task import TextTask

SKIP = {"site-packages", "test", "tests", "idle_test", "__pycache__"}


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py") if not SKIP.intersection(p.relative_to(root).parts))


@register_task("code")
class Code(TextTask):
    """Python source files as bytes or subwords (the standard library by default; code:PATH for your own)."""

    vocab_size = 256
    default_context = 256
    example = {"source": "{documents}", "context_length": 32}

    def documents(self):
        if self.source:
            return read_user_documents(self.source, suffixes=(".py",))
        root = Path(sysconfig.get_paths()["stdlib"])
        return [(str(p.relative_to(root)), p.read_bytes()) for p in stdlib_files()]
