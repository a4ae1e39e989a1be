"""Every default a user can change, written once.

Each group of settings is a dataclass; each field holds its default and, in its metadata, what
the command line shows of it: the flag, its help text (``{default}`` stands for the default as
shown) and how argparse reads it. The command line (:func:`add_arguments`), its ``--help``, the
study's ``config.yaml`` (:class:`mnemoscope.study.config.StudyConfig` is :class:`StudySettings` with
its checks), ``tune``, ``analyze``, ``score`` and the report's prose all take their defaults from
here; ``tests/test_settings.py`` fails when one is written a second time elsewhere.

The training hyperparameters of each architecture (``hparams`` of a study: lr, warmup, ...) are
the fields of :class:`mnemoscope.training.train.TrainConfig`, the one place they are typed.
"""
from __future__ import annotations

import argparse
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from .specs import format_count

#: validation windows (the same ones, from ``eval_offsets``) scored after each log-spaced step
#: (callbacks), by training's own validation (train.fit) and for a run's ``final_val_loss``
#: (runner; there at most ``eval_sequences`` of them)
VALIDATION_WINDOWS = 64
TOLERANCE = 0.01  # effective context: the shortest context within this fraction of the full-context loss
VARIANTS = ("truncate", "shuffle", "replace")  # the truncation ablation's variants (analysis)
N_BOOT = 1000  # bootstrap replicates of an interval of means (losses, gaps, gains, effective contexts)
EVAL_BATCH = 32  # windows per forward pass when a model is scored (no gradients)
ABLATION_TOKENS = 1 << 16  # tokens per forward pass of analyze's truncation ablation (score's: ScoreSettings)
BUCKET_BOOT = 200  # bootstrap replicates of the extrapolation's intervals per position bucket
ALPHA_BOOT = 100  # bootstrap replicates of the interval of each alpha(N) (the scaling section)
STILL_LEARNING = 0.02  # a run whose loss still falls by more than this fraction per octave of training tokens
# batch_size "auto": the largest power of two in [MIN_AUTO_BATCH, MAX_AUTO_BATCH] that leaves a run
# at least MIN_STEPS optimizer steps (mnemoscope.training.train.auto_batch_size)
MIN_AUTO_BATCH, MAX_AUTO_BATCH, MIN_STEPS = 4, 32, 1000


def whole_number(text: str) -> int:
    """argparse ``type`` of a whole-number flag: its error is one short line."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def setting(default: Any = None, help: str | None = None, flag: str | None = None, show: Callable = str,
            text: bool = False, **argparse_kwargs) -> Any:
    """A dataclass field with its command-line face: ``flag`` (None: no flag), ``help`` (with
    ``{default}``), ``show`` (the default as help shows it), ``text`` (argparse's default is the
    shown text, read again like what a user types, e.g. ``100k``), and argparse's own arguments
    (``nargs``, ``type``, ``action``, ``metavar``, ``required``)."""
    meta = {"flag": flag, "help": help, "show": show, "text": text, "argparse": argparse_kwargs}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def words(values) -> str:
    return " ".join(map(str, values))


def counts(values) -> str:
    return " ".join(format_count(v) for v in values)


def default_of(cls, name: str) -> Any:
    f = {f.name: f for f in fields(cls)}[name]
    return f.default_factory() if f.default is MISSING else f.default


def help_text(cls, name: str) -> str | None:
    f = {f.name: f for f in fields(cls)}[name]
    return f.metadata["help"].format(default=f.metadata["show"](default_of(cls, name)))


def add_arguments(parser: argparse.ArgumentParser, cls, names, defaults: bool = True) -> None:
    """Add the flags of ``cls``'s fields ``names`` (in that order) to ``parser``. ``defaults``:
    a flag left out takes the field's default; else None (a study's flags, which its config
    file may fill)."""
    by_name = {f.name: f for f in fields(cls)}
    for name in names.split():
        meta = by_name[name].metadata
        kwargs = dict(meta["argparse"])
        if defaults and kwargs.get("action") != "store_true" and not kwargs.get("required"):
            value = default_of(cls, name)
            kwargs["default"] = (meta["show"](value) if meta["text"] else
                                 list(value) if isinstance(value, tuple) else value)
        parser.add_argument(meta["flag"], help=help_text(cls, name), **kwargs)


@dataclass
class StudySettings:
    """What defines a study (its ``config.yaml``), with the defaults of the command line."""

    name: str | None = setting(None, "study name (default: derived from the config)", "--name")
    archs: list[str] = setting(["transformer", "lstm", "cnn"], "architectures: names, module:Class or file.py:Class "
                               "(options: transformer:pos=rotary; default: {default})", "--arch", words, nargs="+")
    # the recall probe: the transformer recalls at every distance to 128, the LSTM and CNN fall with
    # distance (docs/protocol.md, "The default study"; results/recall-ablation for why this budget)
    tasks: list[str] = setting(["recall"], "tasks: names, or name:PATH for your own files (default: {default})",
                               "--task", words, nargs="+")
    params: list[int] = setting([300_000], "target non-embedding parameter counts, e.g. 100k 1M (default: {default})",
                                "--params", counts, nargs="+")
    context: int | None = setting(None, "context length in tokens (default: each task's natural length)", "--context")
    tokens: int = setting(4_000_000, "training tokens per run, e.g. 2M (default: {default})", "--tokens", format_count)
    seeds: list[int] = setting([0], "random seeds (default: {default})", "--seeds", words, nargs="+", type=whole_number)
    # 4, not auto (8 at 4M tokens): at CPU budgets the number of steps, not the batch, limits what a
    # model learns, and recall's lookup appears after about 500-750 steps (results/recall-ablation)
    batch_size: int | str = setting(4, "sequences per training batch (default {default}), or auto: the largest "
                                    f"power of two from {MIN_AUTO_BATCH} to {MAX_AUTO_BATCH} that leaves about "
                                    f"{MIN_STEPS} optimizer steps", "--batch-size")
    eval_sequences: int = setting(256, "held-out sequences scored per run (default {default})", "--eval-sequences")
    hparams: dict[str, dict[str, Any]] = setting({})  # per arch: TrainConfig's lr, warmup_fraction, ...
    val_every_tokens: int | None = None
    # how a run is executed and what it keeps; none of these changes a run's numbers (nor its id)
    history: int = setting(8, "kept steps per run for context use through training: the test windows scored at "
                           "every position and the weights kept, one per octave of training tokens (default "
                           "{default}; 0: none)", "--history", type=whole_number)
    keep_weights: bool = setting(True, "keep no weights at the kept steps (the per-position curves and in-context "
                                 "learning score stay; the effective context through training needs the weights)",
                                 "--no-keep-weights", action="store_true")
    # a kill loses at most this much training; a save costs well under a second at 1M parameters
    checkpoint_every: str | None = setting("5m", "save a mid-run checkpoint every this much training, e.g. 30s, 10m, "
                                           "1h, or off (default {default}); a stopped study resumes each run from "
                                           "its last checkpoint", "--checkpoint-every", metavar="DURATION")


@dataclass
class ExecutionSettings:
    """How runs are executed; they change neither what a study is nor its config.yaml."""

    storage: str | None = setting(None, "Optuna storage URL holding the queue of runs (default: "
                                  "sqlite:///STUDY_DIR/queue.db; postgresql://user:pw@host/db for many machines)",
                                  "--storage")
    heartbeat: int = setting(10, "seconds between a worker's heartbeats; a run whose worker is silent for twice "
                             "this goes to another worker (default {default})", "--heartbeat", type=whole_number)
    devices: str | None = setting(None, "devices for each run, as Lightning takes them: 4, auto, or 0,1", "--devices")
    num_nodes: str | None = setting(None, "machines for each run (Lightning num_nodes; launch with srun/torchrun)",
                                    "--num-nodes")
    strategy: str | None = setting(None, "Lightning strategy for multi-device runs: ddp, fsdp, deepspeed_stage_2, ...",
                                   "--strategy")
    logger: list[str] | None = setting(
        None, "also log each run's training curves to: tensorboard (STUDY/tensorboard), mlflow (STUDY/mlflow.db), "
        "wandb (STUDY/wandb, offline), with arch, task, size and seed as hyperparameters; csv (runs/<id>/metrics.csv) "
        "is always kept. Extras: pip install 'mnemoscope[tensorboard]'", "--logger", nargs="+", metavar="NAME")
    workers: int = setting(1, "worker processes on this machine draining the study's queue (default {default}; 0: "
                           "only fill the queue, for `study.py worker` processes started elsewhere)", "--workers",
                           type=whole_number)


@dataclass
class TuneSettings:
    """``study.py tune``: one architecture's trials."""

    arch: list[str] = setting([], "architectures to tune, each with --trials trials", "--arch", nargs="+",
                              required=True)
    task: str = setting("text", "task to tune on (validation split; default {default})", "--task")
    trials: int = setting(30, "finished trials per architecture (default {default})", "--trials", type=int)
    params: int = setting(100_000, "non-embedding parameters of every trial (default {default})", "--params",
                          format_count, text=True)
    tokens: int = setting(1_000_000, "training tokens per trial (default {default})", "--tokens", format_count, text=True)
    context: int | None = setting(None, "context length (default: the task's)", "--context")
    batch_size: int | str = setting("auto", "sequences per batch (default {default}: a power of two from "
                                    f"{MIN_AUTO_BATCH} to {MAX_AUTO_BATCH} leaving about {MIN_STEPS} steps)",
                                    "--batch-size")
    out: Path = setting(Path("results") / "tune", "folder for optuna.db and tuned.yaml (default {default})", "--out",
                        text=True)
    storage: str | None = setting(None, "any Optuna storage URL (default sqlite:///OUT/optuna.db)", "--storage")
    seed: int = setting(0, "sampler and training seed (default {default})", "--seed", type=int)


@dataclass
class AnalysisSettings:
    """What ``analyze`` measures, and how much it spends on it."""

    # target tokens of the truncation ablation (one per evaluation window)
    n_targets: int = setting(256, "target tokens of the truncation ablation (default {default})", "--targets",
                             type=whole_number)
    tolerance: float = setting(TOLERANCE, "effective context: within this fraction of the full-context loss "
                               "(default {default})", "--tolerance", type=float)
    variants: tuple[str, ...] = setting(VARIANTS, "ablation variants (default: {default})", "--variants", words,
                                        nargs="+")
    n_boot: int = N_BOOT  # bootstrap replicates for intervals of means and effective contexts
    fit_boot: int = 200  # bootstrap refits of the power law
    factors: tuple[int, ...] = (2, 4)  # extrapolation lengths, in training contexts
    extrapolation_sequences: int = 64


@dataclass
class ScoreSettings:
    """``study.py score``'s defaults (what :class:`mnemoscope.score.scoring.Settings` measures and spends)."""

    sequences: int = setting(256, "test windows per model (default {default})", "--sequences", type=whole_number)
    targets: int = setting(256, "targets of the truncation ablation (default {default}; 0: no ablation, no "
                           "effective context)", "--targets", type=whole_number)
    batch_size: int = setting(8, "windows per forward pass (default {default})", "--batch-size", type=whole_number)
    variants: tuple[str, ...] = ("truncate",)
    n_boot: int = N_BOOT
    tolerance: float = TOLERANCE
    max_tokens: int = 1 << 14
    bisect: bool = True


@dataclass
class LeaderboardSettings:
    """``study.py leaderboard``: the committed settings of results/leaderboard, one row per
    architecture. Each part is a study of one architecture: ``recall`` holds what differs from the
    default study (:class:`StudySettings`, read at run time: empty means exactly its settings),
    ``books`` what differs from it for books in BPE tokens. Tests pass smaller parts."""

    recall: dict[str, Any] = setting({})
    # 100k non-embedding parameters, 1M tokens of context 256 (the batch: the default study's): the README's
    # Elman RNN took 8.6 CPU minutes for both parts, recall most of them (results/leaderboard/README.md)
    books: dict[str, Any] = setting({"tasks": ["books:bpe=1024"], "params": [100_000], "tokens": 1_000_000,
                                     "context": 256})
    history: int = 0  # no kept steps: a row needs the final model only
    # the committed runs whose paired gaps each new row gets (`compare`'s --baseline), where present
    baselines: tuple[str, ...] = ("transformer", "lstm")
    board: Path = setting(Path("results") / "leaderboard", "the committed leaderboard whose rows yours join, only "
                          "read (default {default})", "--board", text=True)
    out: Path = setting(Path("results") / "leaderboard-mine", "folder for your rows, table and figure (default "
                        "{default}); never the committed one", "--out", text=True)
    # the scale reference under the table: a pretrained model scored on books, not trained here
    reference: Path = Path("results") / "pretrained-smollm2"


STUDY, EXECUTION, TUNE, ANALYSIS, SCORE, LEADERBOARD = (StudySettings(), ExecutionSettings(), TuneSettings(),
                                                        AnalysisSettings(), ScoreSettings(), LeaderboardSettings())
