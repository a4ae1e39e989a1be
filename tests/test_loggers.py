"""study.py --logger: a study's runs in the trackers people use, besides the CSV log that stays."""
import importlib.util

import pytest

from mnemoscope.cli import main
from mnemoscope.study.queue import worker_command

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


HAS_MLFLOW = importlib.util.find_spec("mlflow") is not None


@pytest.mark.skipif(not HAS_MLFLOW, reason="mlflow is not installed (pip install -e '.[mlflow]')")
def test_mlflow_logger_writes_runs_that_mlflows_client_reads_back(text_dir, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory (./mlruns)
    out = tmp_path / "s"
    assert main(["--arch", "lstm", "--task", f"text:{text_dir}", "--out", str(out), "--name", "tracked",
                 "--logger", "mlflow", *TINY]) == 0
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tracked")
    (run,) = client.search_runs([experiment.experiment_id])
    (run_id,) = [p.name for p in (out / "runs").iterdir()]
    assert run.info.run_name == run_id and run.info.status == "FINISHED"
    assert {"test_loss", "final_val_loss", "train_loss"} <= set(run.data.metrics)
    assert run.data.tags["arch"] == "lstm" and run.data.params["size"] == "8k"
    assert not (tmp_path / "mlruns").exists() and not (out / "mlruns").exists()


@pytest.mark.skipif(not HAS_MLFLOW, reason="mlflow is not installed (pip install -e '.[mlflow]')")
def test_a_tracker_that_cannot_record_fails_before_anything_is_written(text_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "nosuchstore://nowhere")
    out = tmp_path / "s"
    assert main(["--arch", "lstm", "--task", f"text:{text_dir}", "--out", str(out), "--logger", "mlflow", *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert "--logger mlflow cannot open its store nosuchstore://nowhere" in err and "\n" not in err
    assert not out.exists()
