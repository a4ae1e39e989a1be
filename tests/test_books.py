"""The books task: R's serialization read in Python, split by book, windows inside one document,
and scoring past the training length in position buckets."""
from __future__ import annotations

import gzip
import struct
import zlib

import numpy as np
import pytest
import torch

from mnemoscope.errors import UserError
from mnemoscope.registry import TASKS
from mnemoscope.registry import ARCHITECTURES
from mnemoscope.contract.task import TokenSplit
from mnemoscope.contract.windows import TrainBatches, eval_offsets, n_windows, window_offset
from mnemoscope.tasks import books


# -- a tiny writer of R's XDR serialization, to make an R data file without R ----------------------
def _int(i):
    return struct.pack(">i", i)


def _char(s, utf8=True):
    if s is None:
        return _int(9) + _int(-1)
    raw = s.encode("utf-8")
    return _int(9 | ((1 << 3) << 12 if utf8 else 0)) + _int(len(raw)) + raw


def _strsxp(values):
    return _int(16) + _int(len(values)) + b"".join(_char(v) for v in values)


def _named_list(items):
    """VECSXP with a names attribute (a pairlist holding the tag 'names')."""
    body = _int(19 | (1 << 9)) + _int(len(items)) + b"".join(v for _, v in items)
    names = _int(2 | (1 << 10)) + _int(1) + _char("names") + _strsxp([k for k, _ in items]) + _int(254)
    return body + names


def _serialize(obj):
    return b"X\n" + _int(3) + _int(0x040202) + _int(0x030500) + _int(5) + b"UTF-8" + obj


def write_rdb(folder, objects):
    """``folder/Rdata.rdb`` and ``.rdx`` as R writes a package's data (zlib, compressed = TRUE)."""
    folder.mkdir(parents=True, exist_ok=True)
    data, index = b"", []
    for name, values in objects.items():
        raw = _serialize(_strsxp(values))
        blob = struct.pack(">I", len(raw)) + zlib.compress(raw)
        index.append((name, _int(13) + _int(2) + _int(len(data)) + _int(len(blob))))
        data += blob
    (folder / "Rdata.rdb").write_bytes(data)
    rdx = _named_list([("variables", _named_list(index)), ("references", _int(19) + _int(0)),
                       ("compressed", _int(10) + _int(1) + _int(1))])
    (folder / "Rdata.rdx").write_bytes(gzip.compress(_serialize(rdx)))
    return folder / "Rdata.rdb"


def test_r_data_files_read_without_r(tmp_path):
    rdb = write_rdb(tmp_path, {"a": ["Chapter 1", "", None, "Mrs. Dashwood’s café"], "b": ["one"]})
    assert books.read_rdb(rdb) == {"a": ["Chapter 1", "", None, "Mrs. Dashwood’s café"], "b": ["one"]}


@pytest.fixture
def fake_austen(tmp_path, monkeypatch):
    """An R library holding a janeaustenr with six short 'novels'."""
    rng = np.random.default_rng(0)
    words = "the of and to a in that is was her she for it with as his on be at by".split()
    novels = {name: [" ".join(rng.choice(words, 12)) for _ in range(80 + 20 * i)]
              for i, name in enumerate(books.AUSTEN_TITLES)}
    write_rdb(tmp_path / "rlib" / "janeaustenr" / "data", novels)
    monkeypatch.setenv("R_LIBS", str(tmp_path / "rlib"))
    monkeypatch.setattr(books, "R_LIBRARIES", ())
    return novels


def test_books_split_by_book_and_windows_stay_inside_one(fake_austen):
    task = TASKS.get("books")(context_length=64, corpus="austen")
    assert task.windows == "document"
    splits = task.splits()
    docs = {k: set(s.documents) for k, s in splits.items()}
    assert set().union(*docs.values()) == {f"austen/{n}" for n in fake_austen}
    assert not docs["train"] & docs["test"] and not docs["train"] & docs["validation"] and not docs["validation"] & docs["test"]
    for s in splits.values():
        assert s.spans is not None and len(s.spans) == len(s.documents)
    # the text of each novel is its lines joined
    first = splits["test"].documents[0]
    a, b = splits["test"].spans[0]
    assert task.decode(np.asarray(splits["test"].tokens[a:b])) == "\n".join(fake_austen[first.split("/")[1]])


def test_books_are_refused_in_one_line_without_the_debian_package(tmp_path, monkeypatch):
    monkeypatch.setenv("R_LIBS", str(tmp_path / "empty"))
    monkeypatch.setattr(books, "R_LIBRARIES", ())
    with pytest.raises(UserError, match="apt-get install --no-install-recommends r-cran-janeaustenr"):
        TASKS.get("books")(context_length=64, corpus="austen").splits()
    with pytest.raises(UserError, match="corpus must be one of"):
        TASKS.get("books")(corpus="milton")


@pytest.mark.skipif(books.janeaustenr_data() is None, reason="r-cran-janeaustenr not installed")
def test_the_six_novels_from_debians_package():
    """Byte counts as R gives them: sum(nchar(x, type = "bytes")) + length(x) - 1."""
    novels = dict(books.austen_novels())
    assert len(novels["austen/emma"]) == 883027 and len(novels["austen/persuasion"]) == 466853
    assert novels["austen/prideprejudice"].startswith(b"PRIDE AND PREJUDICE")


# -- windows and document boundaries ----------------------------------------------------------------
def spans_split(lengths, sep=2):
    spans, at = [], 0
    for n in lengths:
        spans.append((at, at + n))
        at += n + sep
    tokens = np.arange(at - sep, dtype=np.int64) % 256
    return TokenSplit(tokens=tokens.astype(np.uint8), spans=np.array(spans))


def crosses(offsets, T, spans):
    """Whether a window [o, o + T] holds tokens of two documents (or of the separator)."""
    inside = [(spans[:, 0] <= o) & (o + T + 1 <= spans[:, 1]) for o in offsets]
    return ~np.array([x.any() for x in inside])


@pytest.mark.parametrize("T", [8, 31, 64])
def test_windows_never_cross_a_document_boundary_when_asked(T):
    split = spans_split([40, 5, 200, 64, 65, 300, 10])
    spans = np.asarray(split.spans)
    assert n_windows(split, T) == sum(max(0, b - a - T) for a, b in spans)
    offsets = eval_offsets(split, T, 1000)
    assert len(offsets) == n_windows(split, T) and len(set(offsets)) == len(offsets)
    assert not crosses(offsets, T, spans).any()
    batches = TrainBatches(split, T, batch_size=16, n_steps=50, seed=0)
    assert batches.n_offsets == n_windows(split, T)
    tokens = np.asarray(split.tokens, dtype=np.int64)
    for step in range(50):  # the training windows: those offsets, and only those
        idx = np.random.default_rng([0, step]).integers(0, batches.n_offsets, 16)
        offsets = window_offset(split, T, idx)
        assert not crosses(offsets, T, spans).any()
        x, y, _ = batches[step]
        assert np.array_equal(x.numpy(), tokens[offsets[:, None] + np.arange(T)])
    # the same stream without spans: windows run across the boundaries
    plain = TokenSplit(tokens=split.tokens)
    assert crosses(eval_offsets(plain, T, 1000), T, spans).any()


def test_books_long_windows_are_scored_in_buckets(fake_austen):
    """A model that accepts longer sequences is scored on windows 4x its training length inside
    one book, in buckets of the training length."""
    from mnemoscope.analysis.analyze import long_context
    from mnemoscope.contract.model import build
    from mnemoscope.contract.sizing import size_for

    task = TASKS.get("books")(context_length=16, corpus="austen")
    split = task.splits()["test"]
    cls = ARCHITECTURES.get("lstm")
    torch.manual_seed(0)
    model = build(cls, task.vocab_size, 16, size_for(cls, 3000, task.vocab_size, 16, {})).eval()
    per_position, buckets = long_context(model, split, 16, factors=(2, 4), n_sequences=8)
    assert set(per_position["length"]) == {32, 64}
    b4 = buckets[buckets["factor"] == 4]
    assert list(b4["bucket_start"]) == [0, 16, 32, 48] and list(b4["bucket_end"]) == [16, 32, 48, 64]
    assert ((b4["ci_low"] <= b4["loss"]) & (b4["loss"] <= b4["ci_high"])).all()
    pos = per_position[per_position["factor"] == 4]
    assert np.isclose(b4["loss"].iloc[1], pos[(pos.position >= 16) & (pos.position < 32)]["loss"].mean(), atol=1e-5)
