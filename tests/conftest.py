"""Shared fixtures: tiny data made by the tests themselves, a private cache folder."""
from __future__ import annotations

import os

import pytest
import torch

# one thread: the tests' models are tiny, and on a busy machine (CI runners, a study running
# beside the suite) spinning OpenMP threads made one analysis test 15x slower (772 s against 50 s)
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Every test prepares data into its own cache, never the user's."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n: the workers share one (writes are atomic)
        base = base.parent
    monkeypatch.setenv("MNEMOSCOPE_CACHE", str(base / "cache"))


@pytest.fixture
def text_dir(tmp_path):
    """A folder of small English-like documents (enough for tiny contexts)."""
    import random

    rng = random.Random(0)
    words = "the quick brown fox jumps over lazy dog and then runs far away from home again".split()
    folder = tmp_path / "texts"
    folder.mkdir()
    for i in range(12):
        body = " ".join(rng.choice(words) for _ in range(400 + 40 * i))
        (folder / f"doc{i:02d}.txt").write_text(f"Document {i}.\n{body}\n")
    return folder


@pytest.fixture
def tiny_lstm(text_dir, tmp_path):
    """(model, splits): a 3000-parameter LSTM built by a Study on ``text_dir`` at context 16,
    and that task's token splits, for tests that call ``fit`` directly."""
    from mnemoscope.study.config import StudyConfig
    from mnemoscope.study.runner import Study

    config = StudyConfig(archs=["lstm"], tasks=[f"text:{text_dir}"], params=[3000], context=16).normalized()
    study = Study(config, tmp_path / "study")
    splits = study.task(config.tasks[0]).splits()
    return study.model(study.prepare()[0])[2], splits
