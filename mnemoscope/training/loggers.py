"""``study.py --logger``: a study's runs in the trackers people use (TensorBoard, MLflow, Weights &
Biases) besides the CSV log every run keeps. Names are checked, and a tracker that cannot record
is refused, before a study writes anything (:func:`check_loggers`, :func:`check_stores`)."""
from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path
from typing import Any

import lightning as L

from ..errors import UserError

#: --logger choices: Lightning's loggers, and the package each needs (any one of them)
LOGGERS = {"csv": (), "tensorboard": ("tensorboard", "tensorboardX"), "mlflow": ("mlflow",), "wandb": ("wandb",)}

#: MLflow's store in a study folder: a SQLite database (MLflow 3 keeps its file store, ``mlruns/``,
#: in maintenance mode and refuses to write to it by default); run artifacts, if any, beside it
MLFLOW_DB = "mlflow.db"
MLFLOW_ARTIFACTS = "mlartifacts"


def check_loggers(names) -> list[str]:
    """``--logger`` names, checked: known, and their package installed (one line naming the extra
    to install otherwise). CSV is always kept (a run's metrics.csv comes from it)."""
    names = list(dict.fromkeys(["csv", *(names or [])]))
    for name in names:
        if name not in LOGGERS:
            raise UserError(f"unknown logger {name!r} (known: {', '.join(LOGGERS)})")
        if LOGGERS[name] and not any(importlib.util.find_spec(pkg) for pkg in LOGGERS[name]):
            raise UserError(f"--logger {name} needs the {LOGGERS[name][0]} package: pip install 'mnemoscope[{name}]'")
    return names


def mlflow_uri(folder: Path) -> str:
    """Where a study's MLflow runs go: the server of ``MLFLOW_TRACKING_URI`` when it is set, else
    the SQLite store ``STUDY/mlflow.db`` (browse with ``mlflow ui --backend-store-uri`` it)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(Path(folder) / MLFLOW_DB).resolve()}"


def mlflow_artifacts(folder: Path) -> str | None:
    """Where a run's artifacts go: beside the study's SQLite store (None: the server's own place)."""
    return None if os.environ.get("MLFLOW_TRACKING_URI") else (Path(folder) / MLFLOW_ARTIFACTS).resolve().as_uri()


def check_stores(names) -> None:
    """Open each tracker's store as a run will, once, away from the study (MLflow: a SQLite store
    in a temporary folder, or the server of ``MLFLOW_TRACKING_URI``): a tracker that cannot record
    fails here, in one line, before the study writes anything."""
    if "mlflow" not in names:
        return
    with tempfile.TemporaryDirectory(prefix="mnemoscope-mlflow-") as tmp:
        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(tmp) / MLFLOW_DB}"
        try:
            from mlflow.tracking import MlflowClient  # optional heavy dependency (the mlflow extra)

            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            shown = uri if os.environ.get("MLFLOW_TRACKING_URI") else f"sqlite:///STUDY/{MLFLOW_DB}"
            raise UserError(f"--logger mlflow cannot open its store {shown}: {type(exc).__name__}: {first}") from None


def open_stores(names, folder: Path, experiment: str) -> None:
    """Create the study's tracker stores once, before any run (MLflow: its SQLite schema and the
    study's experiment), so that the workers of ``--workers N`` do not all create them at once."""
    if "mlflow" in names:
        from mlflow.tracking import MlflowClient  # optional heavy dependency (the mlflow extra)

        client = MlflowClient(tracking_uri=mlflow_uri(folder))
        if client.get_experiment_by_name(experiment) is None:
            client.create_experiment(experiment, artifact_location=mlflow_artifacts(folder))


def tracker_loggers(names, folder: Path, experiment: str, run_name: str, hparams: dict[str, Any]) -> list:
    """Lightning loggers besides CSV for one run, in their offline modes, writing under the study
    folder ``folder``: TensorBoard event files in ``tensorboard/<run>/``, an MLflow SQLite store
    ``mlflow.db`` (:func:`mlflow_uri`), W&B offline runs in ``wandb/`` (``WANDB_MODE=online`` to send
    them). ``hparams`` (architecture, task, size, seed, ...) become each tracker's hyperparameters,
    and its tags where it has them."""
    tags = {k: str(hparams[k]) for k in ("arch", "task", "size", "seed") if k in hparams}
    out = []
    for name in names:
        if name == "tensorboard":
            lg = L.pytorch.loggers.TensorBoardLogger(str(folder / "tensorboard"), name="", version=run_name,
                                                     default_hp_metric=False)
        elif name == "mlflow":
            lg = L.pytorch.loggers.MLFlowLogger(experiment_name=experiment, run_name=run_name,
                                                tracking_uri=mlflow_uri(folder), tags=tags,
                                                artifact_location=mlflow_artifacts(folder))
        elif name == "wandb":
            lg = L.pytorch.loggers.WandbLogger(name=run_name, project=experiment, save_dir=str(folder),
                                               offline=os.environ.get("WANDB_MODE") != "online",
                                               tags=[f"{k}={v}" for k, v in tags.items()])
        else:
            continue
        lg.log_hyperparams(hparams)
        out.append(lg)
    return out


def log_results(loggers, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
    """A finished run's numbers (its test loss, ...) into the trackers of :func:`tracker_loggers`
    (CSV: the run's result.json holds them), with its hyperparameters: TensorBoard shows
    hyperparameters only beside a metric."""
    for lg in loggers:
        if isinstance(lg, L.pytorch.loggers.CSVLogger):
            continue
        if isinstance(lg, L.pytorch.loggers.TensorBoardLogger):
            # a second event file beside the training's (closed by fit; reopened, it would be overwritten)
            lg = L.pytorch.loggers.TensorBoardLogger(lg.save_dir, name=lg.name, version=lg.version,
                                                     default_hp_metric=False, filename_suffix=".results")
            lg.log_hyperparams(hparams, metrics)
        else:
            lg.log_metrics(metrics)
        lg.finalize("success")
