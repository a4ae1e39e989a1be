"""R's data files read in pure Python, no R needed: the part of R's serialization format (XDR,
versions 2 and 3) that holds character vectors, and R's lazy-load databases (``Rdata.rdb`` with its
index ``Rdata.rdx``), as Debian ships R packages' data. The ``books`` task reads Jane Austen's
novels with it (``r-cran-janeaustenr``).
"""
from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import zlib
from pathlib import Path


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
