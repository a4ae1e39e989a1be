"""The task contract, checked for every registered task and the one-file example task (as the
architecture contract is for every architecture). A plugin task that passes these works in
every study. Each task is built from its ``example`` options: a small instance."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mnemoscope import Task
from mnemoscope.registry import TASKS, load_object

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = f"{REPO / 'examples' / 'my_task.py'}:Echo"
SPECS = TASKS.names() + [EXAMPLE]


def task_class(spec: str) -> type:
    return load_object(spec, "task") if spec == EXAMPLE else TASKS.get(spec)


@pytest.fixture
def example_sources(tmp_path, text_dir):
    """What the placeholders of a task's ``example`` options stand for."""
    docs = tmp_path / "documents"
    docs.mkdir()
    for i, f in enumerate(sorted(text_dir.iterdir())):
        (docs / f.name).write_text(f.read_text())
        (docs / f"mod{i:02d}.py").write_text("".join(f"def f{j}(x):\n    return x * {j} + {i}\n\n" for j in range(60)))
    rng = np.random.default_rng(0)
    images = tmp_path / "images.npz"
    np.savez(images, train=rng.integers(0, 256, (60, 8, 8), dtype=np.uint8),
             test=rng.integers(0, 256, (12, 8, 8), dtype=np.uint8))
    return {"{documents}": str(docs), "{images}": str(images)}


def build(spec: str, sources: dict) -> Task:
    cls = task_class(spec)
    options = {k: sources.get(v, v) if isinstance(v, str) else v for k, v in cls.example.items()}
    return cls(**options)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: Path(s.split(":")[0]).stem if "/" in s else s)
def test_task_contract(spec, example_sources, tmp_path, monkeypatch):
    task = build(spec, example_sources)
    T, V = task.context_length, task.vocab_size
    splits = task.splits()
    assert {"train", "validation", "test"} <= set(splits)  # a task may add its own (math: extrapolation)
    # splits are disjoint by document
    docs = {k: set(s.documents) for k, s in splits.items()}
    assert all(docs.values()), "every split names its documents"
    for a in docs:
        for b in docs:
            assert a == b or not docs[a] & docs[b], f"{a} and {b} share documents {sorted(docs[a] & docs[b])[:3]}"
    for name, s in splits.items():
        tokens = np.asarray(s.tokens)
        assert tokens.ndim == 1 and len(tokens) >= T + 1, name
        assert tokens.min() >= 0 and tokens.max() < V, f"{name}: token ids outside the vocabulary of {V}"
        if s.mask is not None:
            assert len(s.mask) == len(tokens) and np.asarray(s.mask).any(), f"{name}: mask must match the tokens"
        if s.starts is not None:
            starts = np.asarray(s.starts)
            assert len(starts) and (np.diff(starts) > 0).all(), f"{name}: starts must increase"
            assert starts.min() >= 0 and (starts + T + 1 <= len(tokens)).any(), f"{name}: no window fits"
    # decode of encode: the task's text of a test window reads back to the same text
    window = np.asarray(splits["test"].tokens[:T + 1])
    text = task.decode(window)
    again = task.encode(text)
    assert task.decode(again) == text
    assert np.asarray(again).max() < V
    # deterministic preparation: a fresh instance and an empty cache give the same arrays
    monkeypatch.setenv("MNEMOSCOPE_CACHE", str(tmp_path / "fresh-cache"))
    fresh = build(spec, example_sources).splits()
    for name in splits:
        assert np.array_equal(np.asarray(splits[name].tokens), np.asarray(fresh[name].tokens)), name
        assert splits[name].documents == fresh[name].documents, name
        for field in ("mask", "starts"):
            a, b = getattr(splits[name], field), getattr(fresh[name], field)
            assert (a is None) == (b is None) and (a is None or np.array_equal(a, b)), f"{name}.{field}"


def test_example_task_trains_and_draws_its_own_report_section(tmp_path):
    """The one-file example task, end to end through the command line, with its own view."""
    from mnemoscope.cli import main

    out = tmp_path / "study"
    assert main(["--arch", "lstm", "--task", EXAMPLE, "--params", "3000", "--context", "16",
                 "--tokens", "8000", "--eval-sequences", "16", "--no-progress", "--no-analysis", "--out", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert "Echo" in page and ": loss on the echo</h2>" in page and "loss on the echo (nats)" in page


def test_every_hook_the_harness_reads_off_a_task_is_listed_with_its_default():
    from test_contract import hooks_read

    read = hooks_read("task")
    assert {"tokenizer_fingerprint", "token_bytes"} <= read  # the scan finds them
    assert read <= {n for n in dir(Task) if not n.startswith("_")}
