"""study.py --logger: a study's runs in the trackers people use, besides the CSV log that stays."""
import importlib.util

import pytest

from mnemoscope.cli import main
from mnemoscope.queue import worker_command

TINY = ["--params", "8k", "--tokens", "6k", "--context", "32", "--eval-sequences", "8", "--batch-size", "8",
        "--no-progress", "--no-analysis"]
HAS_TENSORBOARD = any(importlib.util.find_spec(p) for p in ("tensorboard", "tensorboardX"))


@pytest.mark.skipif(not HAS_TENSORBOARD, reason="neither tensorboard nor tensorboardX is installed "
                                                "(pip install -e '.[dev]' installs tensorboardX)")
def test_tensorboard_logger_writes_event_files(text_dir, tmp_path):
    out = tmp_path / "s"
    assert main(["--arch", "lstm", "--task", f"text:{text_dir}", "--out", str(out), "--logger", "tensorboard", *TINY]) == 0
    (run,) = [p.name for p in (out / "runs").iterdir()]
    assert (out / "runs" / run / "metrics.csv").stat().st_size > 0  # CSV is kept
    events = sorted((out / "tensorboard" / run).glob("events.out.tfevents.*"))
    assert len(events) == 2  # the training curves, then the results with the hyperparameters
    curves, results = (p.read_bytes() for p in events)
    assert b"train_loss" in curves
    for word in (b"test_loss", b"arch", b"lstm", b"task", b"size", b"8k", b"seed"):
        assert word in results, word


def test_a_missing_or_unknown_logger_is_one_line(text_dir, tmp_path, capsys):
    args = ["--arch", "lstm", "--task", f"text:{text_dir}", "--out", str(tmp_path / "s"), *TINY]
    assert main([*args, "--logger", "neptune"]) == 2
    assert "unknown logger 'neptune'" in capsys.readouterr().err
    if importlib.util.find_spec("wandb") is None:
        assert main([*args, "--logger", "wandb"]) == 2
        err = capsys.readouterr().err.strip()
        assert "mnemoscope[wandb]" in err and "\n" not in err
    assert not (tmp_path / "s").exists()  # refused before anything is written


def test_workers_log_as_the_study_does(tmp_path):
    assert worker_command(tmp_path, "sqlite:///q.db", 10, ["csv", "tensorboard"])[-3:] == ["--logger", "csv", "tensorboard"]
    assert "--logger" not in worker_command(tmp_path, "sqlite:///q.db", 10, ["csv"])
