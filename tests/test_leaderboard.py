"""``study.py leaderboard``: a row per architecture beside the committed board's, at tiny scale (a
test-only LeaderboardSettings); the committed folder only read; rows that cannot be measured
listed with why; ranking with ties; bad input in one line."""
from __future__ import annotations

import hashlib
import math

import numpy as np
import pandas as pd
import pytest

import mnemoscope.api
from mnemoscope.api import run_leaderboard
from mnemoscope.cli import main
from mnemoscope.report.leaderboard import COLUMNS, NOT_MEASURED, _bits_per_byte, markdown_table, ranked
from mnemoscope.settings import LeaderboardSettings

BROKEN = '''
import torch
from torch import nn
from mnemoscope import Architecture


class Broken(Architecture):
    """Logits of the wrong width: its contract check fails before any training."""
    width_key = "d"

    def __init__(self, vocab_size, context_length, d=8):
        super().__init__()
        self.emb = nn.Embedding(vocab_size, d)
        self.lin = nn.Linear(d, d)

    def forward(self, tokens):
        return self.lin(self.emb(tokens))
'''


def tiny(text_dir) -> LeaderboardSettings:
    return LeaderboardSettings(
        recall={"params": [3000], "tokens": 12_000, "eval_sequences": 8, "checkpoint_every": "off"},
        books={"tasks": [f"text:source={text_dir},bpe=300"], "params": [3000], "tokens": 8_000, "context": 32,
               "eval_sequences": 8, "checkpoint_every": "off"}, reference=text_dir / "no-reference")


def digest(folder) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def board(text_dir, tmp_path):
    """A committed board of two rows (lstm, transformer) and two not measured (an unknown name, one too slow)."""
    folder = tmp_path / "board"
    slow = {"arch": "hf:slow", "part": "recall and books", "reason": "too slow on this CPU", "seconds": "9999 s estimated"}
    run_leaderboard(["lstm", "transformer", "nosuch"], folder, folder, settings=tiny(text_dir), progress=False,
                    committed=True, not_measured=[slow], log=lambda line: None)
    return folder


def test_board_and_a_row_of_yours(board, text_dir, tmp_path, monkeypatch, capsys):
    table = pd.read_parquet(board / "table.parquet")
    assert list(table.columns) == COLUMNS
    assert set(table["arch"]) == {"lstm", "transformer"} and set(table["source"]) == {"committed"}
    assert table["bits_per_byte_low"].le(table["bits_per_byte"]).all() and table["state_size"].gt(0).all()
    assert table["effective_context"].notna().all() and table["recall_half_low"].notna().all()
    text = (board / "table.md").read_text()
    assert "- nosuch (recall and books): unknown architecture 'nosuch'" in text
    assert "- hf:slow (recall and books): too slow on this CPU (measured cost: 9999 s estimated)" in text
    assert (board / "recall_vs_state.png").read_bytes()[:4] == b"\x89PNG"

    before = digest(board)
    (tmp_path / "broken.py").write_text(BROKEN)
    monkeypatch.setattr(mnemoscope.api, "LEADERBOARD", tiny(text_dir))
    out = tmp_path / "mine"
    rc = main(["leaderboard", "--arch", "gru", f"{tmp_path / 'broken.py'}:Broken", "--out", str(out),
               "--board", str(board), "--no-progress"])
    assert rc == 0
    assert digest(board) == before  # the committed folder is only read
    mine = pd.read_parquet(out / "table.parquet")
    assert list(mine.columns) == COLUMNS
    assert dict(zip(mine["arch"], mine["source"])) == {"lstm": "committed", "transformer": "committed", "gru": "yours"}
    gru = mine[mine["arch"] == "gru"].iloc[0]
    assert "recall vs lstm" in gru["paired"] and "books vs transformer" in gru["paired"]  # scored alike: paired
    text = (out / "table.md").read_text()
    assert "**gru** (yours)" in text and "Broken (recall): " in text and "Broken (books): " in text
    assert "nosuch (recall and books)" in text  # the board's not-measured rows are listed too
    assert "Scale reference: none found at" in text
    assert (out / "compare-recall" / "compare.html").is_file()


def test_unknown_arch_is_one_line(tmp_path, capsys):
    rc = main(["leaderboard", "--arch", "nosuch", "--out", str(tmp_path / "mine"), "--board", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: unknown architecture 'nosuch'") and err.count("\n") == 1
    assert not (tmp_path / "mine").exists()


def test_out_inside_the_board_is_refused(tmp_path, capsys):
    board = tmp_path / "board"
    rc = main(["leaderboard", "--arch", "lstm", "--out", str(board / "mine"), "--board", str(board)])
    err = capsys.readouterr().err
    assert rc == 2 and "lies in the committed leaderboard" in err and err.count("\n") == 1
    assert not board.exists()


def row(arch, point, low, high, bpb=1.0, never=False):
    return {"arch": arch, "source": "committed", "recall_half": math.inf if never else point, "recall_half_low": low,
            "recall_half_high": high, "never_below_half": never, "longest_distance": 128, "bits_per_byte": bpb}


def test_ranking_and_ties(tmp_path):
    t = ranked(pd.DataFrame([row("a", 3.0, 2.8, 3.2), row("b", 8.0, 6.0, 9.0), row("c", 3.1, 2.9, 3.3, bpb=0.5),
                             row("d", math.nan, 200, 256, never=True), row("e", math.nan, math.nan, math.nan)],
                            columns=COLUMNS))
    assert list(t["arch"]) == ["d", "b", "c", "a", "e"]  # never below half first, unmeasured last
    assert list(t["rank"].astype(object).where(t["rank"].notna(), None)) == [1, 2, 3, 3, None]
    assert dict(zip(t["arch"], t["tied"])) == {"d": "", "b": "", "c": "a", "a": "c", "e": ""}
    t.to_parquet(tmp_path / "table.parquet")  # as the committed rows are read back
    lines = markdown_table(pd.read_parquet(tmp_path / "table.parquet")).splitlines()
    assert lines[2].startswith("| 1 | d | never below half up to 128 |")
    assert lines[4].startswith("| 3= | c | 3.1 [2.9, 3.3] |") and lines[6].startswith("| - | e | not measured |")


def test_bits_per_byte_weighs_bytes():
    arrays = {"losses": np.full((4, 3), math.log(2)), "mask": np.ones((4, 3), bool),
              "target_bytes": np.array([[1, 1, 2]] * 4)}
    point, low, high = _bits_per_byte(arrays)
    assert point == pytest.approx(3 / 4) and low == pytest.approx(3 / 4) and high == pytest.approx(3 / 4)
    assert NOT_MEASURED == ["arch", "part", "reason", "seconds"]
