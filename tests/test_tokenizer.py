"""Subword tokenization of the text-like tasks (mnemoscope.contract.text_task) and context counted in bytes."""
from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest

from mnemoscope.cli import main
from mnemoscope.errors import UserError
from mnemoscope.registry import TASKS
from mnemoscope.contract.task import split_documents

pytest.importorskip("tokenizers")


@pytest.fixture
def word_docs(tmp_path):
    """Twelve documents, each repeating a word of its own: a BPE trained on the training split
    alone makes each training document's word one token and leaves the others in pieces."""
    folder = tmp_path / "words"
    folder.mkdir()
    rng = np.random.default_rng(0)
    common = "the of and to a in that is was he for it with as his on be at by".split()
    for i in range(12):
        word = "".join("qxzjvk"[j] for j in rng.integers(0, 6, 7))
        body = " ".join(word if k % 3 == 0 else common[k % len(common)] for k in range(600))
        (folder / f"doc{i:02d}.txt").write_text(f"{body}\n")
    return folder


def text(source, **options):
    return TASKS.get("text")(source=str(source), context_length=32, **options)


def test_bpe_is_trained_on_the_training_split_only(word_docs):
    task = text(word_docs, bpe=400)
    splits = task.splits()
    assert task.vocab_size == 400 and splits["train"].tokens.dtype == np.uint16
    word = {p.name: p.read_text().split()[0] for p in word_docs.iterdir()}
    pieces = {name: len(task.encode(" " + word[name])) for name in word}
    assert all(pieces[n] == 1 for n in splits["train"].documents), pieces
    assert all(pieces[n] > 1 for s in ("validation", "test") for n in splits[s].documents), pieces
    # the splits are the documents' own, by name, exactly as at byte level
    parts = split_documents([(p.name, p.read_bytes()) for p in word_docs.iterdir()])
    assert {s: splits[s].documents for s in parts} == {s: [n for n, _ in d] for s, d in parts.items()}


def test_bpe_tokens_decode_to_the_text_and_count_its_bytes(word_docs):
    task = text(word_docs, bpe=400)
    tokens = np.asarray(task.splits()["test"].tokens)
    byte_level = np.asarray(text(word_docs).splits()["test"].tokens)
    assert task.decode(tokens).encode() == byte_level.tobytes()  # the same text, joined the same way
    assert task.token_bytes()[tokens].sum() == len(byte_level)  # bytes per token are exact
    assert len(tokens) < 0.7 * len(byte_level)
    assert text(word_docs).token_bytes().tolist() == [1] * 256


def test_tokenizer_is_cached_checksummed_and_identified(word_docs, tmp_path, monkeypatch):
    task = text(word_docs, bpe=400)
    first = task.splits()
    cached = task.prepared_path("tokenizer.json")
    assert json.loads(cached.read_text())["model"]["type"] == "BPE"
    fp = task.tokenizer_fingerprint
    assert fp and text(word_docs).tokenizer_fingerprint is None
    assert len({text(word_docs).fingerprint(), task.fingerprint(), text(word_docs, bpe=500).fingerprint()}) == 3
    cached.write_text(cached.read_text().replace('"BPE"', '"BPE" '))  # damaged: prepared again
    again = text(word_docs, bpe=400)
    assert np.array_equal(np.asarray(again.splits()["train"].tokens), np.asarray(first["train"].tokens))
    assert again.tokenizer_fingerprint == fp
    # a fresh cache trains the same tokenizer again (deterministic)
    monkeypatch.setenv("MNEMOSCOPE_CACHE", str(tmp_path / "fresh"))
    assert text(word_docs, bpe=400).tokenizer_fingerprint == fp


def test_a_users_tokenizer_file(word_docs, tmp_path):
    trained = text(word_docs, bpe=350)
    path = tmp_path / "mine.json"
    path.write_bytes(trained.prepared_path("tokenizer.json").read_bytes())
    task = text(word_docs, tokenizer=str(path))
    assert task.vocab_size == trained.tokenizer.get_vocab_size() <= 350  # a tiny corpus runs out of merges
    assert np.array_equal(np.asarray(task.splits()["test"].tokens), np.asarray(trained.splits()["test"].tokens))
    path.write_text(path.read_text().replace('"vocab"', '"vocab_"'))  # an edited file is another cache entry
    with pytest.raises(UserError, match="is not a tokenizer file"):
        text(word_docs, tokenizer=str(path))
    with pytest.raises(UserError, match="no tokenizer file"):
        text(word_docs, tokenizer=str(tmp_path / "absent.json"))


@pytest.mark.parametrize("options, fragment", [
    ({"bpe": 100}, "above 256"), ({"bpe": "many"}, "above 256"), ({"bpe": 300, "tokenizer": "x.json"}, "not both"),
    ({"windows": "sometimes"}, "windows must be one of"), ({"vocab": 3}, "unknown option"),
])
def test_bad_tokenization_options_are_one_line(word_docs, options, fragment):
    with pytest.raises(UserError, match=fragment):
        text(word_docs, **options)


def test_without_the_tokenizers_package_bpe_names_the_install(word_docs, monkeypatch):
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # import fails as if not installed
    with pytest.raises(UserError, match="pip install tokenizers"):
        text(word_docs, bpe=400)
    assert text(word_docs).vocab_size == 256  # bytes need nothing


def test_a_study_of_bytes_and_bpe_records_bytes_of_context(word_docs, tmp_path):
    """The tokenizer goes into the study folder; per_position.parquet and losses.npz hold bytes of
    context; both tokenizations of one corpus share one panel of the bytes figure."""
    from mnemoscope.report.page import bytes_figure, load_tables

    out = tmp_path / "study"
    assert main(["--arch", "lstm", "--task", f"text:{word_docs}", f"text:source={word_docs},bpe=400",
                 "--params", "3k", "--tokens", "4k", "--context", "32", "--eval-sequences", "8", "--batch-size", "8",
                 "--no-progress", "--no-analysis", "--out", str(out)]) == 0
    bpe = text(word_docs, bpe=400)
    saved = out / "tokenizers" / f"{bpe.fingerprint()}.json"
    assert saved.read_bytes() == bpe.prepared_path("tokenizer.json").read_bytes()
    pp = pd.read_parquet(out / "per_position.parquet")
    by = pp[pp["task"] == f"text:{word_docs}"]
    sub = pp[pp["task"] != f"text:{word_docs}"]
    assert np.array_equal(by["context_bytes"], by["position"] + 1) and (by["target_bytes"] == 1).all()
    assert (np.diff(sub["context_bytes"]) > 0).all() and sub["context_bytes"].iloc[-1] > 1.5 * 32
    run = next(p for p in (out / "runs").iterdir() if json.loads((p / "result.json").read_text())["task"].endswith("bpe=400"))
    with np.load(run / "losses.npz") as z:
        assert z["bytes"].shape == z["losses"].shape == z["target_bytes"].shape
        assert np.allclose(z["bytes"].mean(0), sub["context_bytes"])
    fig = bytes_figure(load_tables(out)[1])
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == 1 and len(panels[0].get_lines()) >= 2
    labels = [t.get_text() for t in fig.legends[0].get_texts()]  # one legend, under the panels
    assert "bytes" in labels and "bpe=400" in labels
    assert (out / "per_position_bytes.png").stat().st_size > 0


def test_tables_from_before_the_bytes_columns_still_load(tmp_path, text_dir):
    """A committed study's per_position.parquet has no bytes columns: byte-level text counts a
    byte per token; other tasks stay unknown (NaN)."""
    from mnemoscope.report.page import load_tables

    out = tmp_path / "old"
    out.mkdir()
    rows = [{"run_id": r, "arch": "lstm", "task": task, "params": 1000, "seed": 0, "position": t, "loss": 1.0,
             "ci_low": 0.9, "ci_high": 1.1, "n_sequences": 4} for r, task in (("a", "text"), ("b", "copy"))
            for t in range(4)]
    pd.DataFrame(rows).to_parquet(out / "per_position.parquet")
    pd.DataFrame({"run_id": ["a", "b"]}).to_parquet(out / "runs.parquet")
    pp = load_tables(out)[1]
    text_rows, copy_rows = pp[pp["task"] == "text"], pp[pp["task"] == "copy"]
    assert text_rows["context_bytes"].tolist() == [1, 2, 3, 4] and (text_rows["target_bytes"] == 1).all()
    assert copy_rows["context_bytes"].isna().all()
