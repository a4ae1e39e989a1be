"""``books``: whole books, split by book, windows inside one book.

Default corpus: Jane Austen's six novels, as Debian ships them for R
(``apt-get install --no-install-recommends r-cran-janeaustenr``: ``janeaustenr/data/Rdata.rdb``,
the novels as zlib-compressed R character vectors, one line per element, read here in pure
Python, no R needed), and Shakespeare's 37 plays and poems (the ``text`` task's corpus). That is
all the long prose found offline for this project: no Milton text ships in Debian or in the
Python packages at hand. ``books:corpus=austen`` or ``books:corpus=shakespeare`` takes one of the
two; ``books:PATH`` your own books (each file one book).

Bytes by default; ``books:bpe=4096`` for subwords (:mod:`mnemoscope.contract.text_task`). Every window
lies inside one book (``windows=document``), so no context runs from one book into the next.
"""
from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

from mnemoscope.errors import UserError
from mnemoscope.registry import register_task
from mnemoscope.contract.task import read_user_documents
from mnemoscope.tasks.rdata import read_rdb
from mnemoscope.tasks.text import shakespeare_files
from mnemoscope.contract.text_task import TextTask

CORPORA = ("all", "austen", "shakespeare")
AUSTEN_INSTALL = "apt-get install --no-install-recommends r-cran-janeaustenr"
#: R's library folders on Debian and Ubuntu, after any named in R_LIBS, R_LIBS_SITE, R_LIBS_USER
R_LIBRARIES = ("/usr/local/lib/R/site-library", "/usr/lib/R/site-library", "/usr/lib/R/library")
AUSTEN_TITLES = {"sensesensibility": "Sense & Sensibility", "prideprejudice": "Pride & Prejudice",
                 "mansfieldpark": "Mansfield Park", "emma": "Emma", "northangerabbey": "Northanger Abbey",
                 "persuasion": "Persuasion"}


def janeaustenr_data() -> Path | None:
    """``janeaustenr/data/Rdata.rdb`` in R's libraries, or None."""
    folders = [f for var in ("R_LIBS", "R_LIBS_SITE", "R_LIBS_USER") for f in os.environ.get(var, "").split(":") if f]
    for folder in [*folders, *R_LIBRARIES]:
        path = Path(folder).expanduser() / "janeaustenr" / "data" / "Rdata.rdb"
        if path.is_file() and path.with_suffix(".rdx").is_file():
            return path
    return None


def austen_novels() -> list[tuple[str, bytes]]:
    """Jane Austen's six novels as (name, UTF-8 text), one document each."""
    path = janeaustenr_data()
    if path is None:
        raise UserError(f"Jane Austen's novels are missing: `{AUSTEN_INSTALL}` (Debian/Ubuntu), or use "
                        "books:corpus=shakespeare, or give your own books with books:PATH")
    try:
        objects = read_rdb(path)
    except (OSError, ValueError, KeyError, zlib.error, struct.error) as exc:
        raise UserError(f"cannot read Jane Austen's novels from {path}: {exc}") from None
    novels = [(f"austen/{name}", "\n".join(line or "" for line in objects[name]).encode())
              for name in AUSTEN_TITLES if isinstance(objects.get(name), list)]
    if len(novels) != len(AUSTEN_TITLES):
        raise UserError(f"{path} does not hold the six novels of janeaustenr ({', '.join(AUSTEN_TITLES)})")
    return novels


@register_task("books")
class Books(TextTask):
    """Whole books, split by book, windows inside one book (Austen's novels and Shakespeare's plays)."""

    vocab_size = 256
    default_context = 1024
    default_windows = "document"
    extra_options = {"corpus"}
    example = {"source": "{documents}", "context_length": 32, "bpe": 300}

    def __init__(self, source=None, context_length=None, **options):
        corpus = options.get("corpus", "all")
        if corpus not in CORPORA:
            raise UserError(f"books: corpus must be one of {', '.join(CORPORA)}, not {corpus!r}")
        if source and "corpus" in options:
            raise UserError("books: give a PATH or a corpus, not both")
        super().__init__(source, context_length, **options)

    def documents(self):
        if self.source:
            return read_user_documents(self.source)
        corpus = self.options.get("corpus", "all")
        docs = austen_novels() if corpus in ("all", "austen") else []
        if corpus in ("all", "shakespeare"):
            docs += [(p.name, p.read_bytes()) for p in shakespeare_files()]
        return docs
