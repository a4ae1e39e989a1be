"""Run a study from Python: :func:`run` takes the settings of ``study.py`` as keyword arguments
(their defaults: :mod:`mnemoscope.settings`, the one source) and returns the loaded study
(:func:`mnemoscope.report.view.load`). The command line runs a study through the same functions
(:func:`resolve_study`, :func:`study_folder`, :func:`run_study`), so the two write the same folder.

Progress is Lightning's bar (``tqdm.auto`` where ipywidgets is installed: a widget in a notebook).
Interrupting (Ctrl-C, the notebook's stop button) stops at once and keeps every finished run and
the checkpoint of the run under way; calling :func:`run` again with the same settings resumes there.
Bad input raises :class:`mnemoscope.errors.UserError` with the command line's message.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from tqdm import tqdm  # Lightning's progress bars (a dependency of lightning)

from .analysis.analyze import analyze
from .analysis.growth import analyze_growth
from .errors import UserError
from .registry import ARCHITECTURES
from .report.leaderboard import NOT_MEASURED, PARTS, read_not_measured, write_board
from .report.leaderboard import slug as board_slug
from .report.page import summary_lines, write_report
from .report.view import StudyResults, load
from .settings import EXECUTION, LEADERBOARD, AnalysisSettings, LeaderboardSettings
from .specs import format_count, parse_spec
from .storage import files
from .storage.study_folder import StudyFolder
from .study.config import StudyConfig, default_name, legacy_default_name
from .study.queue import check_url
from .study.runner import Study, mixed_data
from .study.tune import apply_tuned
from .training.train import distributed_settings

#: what a KeyboardInterrupt ends with, on the command line and in a notebook
INTERRUPTED = ("interrupted; finished runs are kept and a run under way resumes from its checkpoint: rerun the "
               "same command")


def execution_settings(storage: str | None = None, heartbeat: int | None = None, devices: str | None = None,
                       num_nodes: str | None = None, strategy: str | None = None) -> dict:
    """Check how runs are to execute (``--storage``, ``--heartbeat``, ``--devices``, ...); returns
    Lightning Trainer arguments."""
    if storage is not None:
        check_url(storage)
    if heartbeat is not None and heartbeat < 1:
        raise UserError(f"--heartbeat must be at least 1 second, got {heartbeat}")
    return distributed_settings(devices, num_nodes, strategy)


def resolve_study(settings: dict[str, Any], config: str | Path | None = None, hparams: str | None = None) -> StudyConfig:
    """The study ``settings`` (fields of :class:`mnemoscope.settings.StudySettings`; None: not given)
    describe, over the study file ``config`` where one is given (settings override it; a changed
    study gets its own name); ``hparams``: ``tuned`` or a tuned.yaml."""
    base = {}
    if config:
        path = Path(config)
        if not path.is_file():
            raise UserError(f"no such config file: {config}")
        base = files.read_yaml(path, str(config)) or {}
        if not isinstance(base, dict):
            raise UserError(f"{config} is not a YAML mapping")
    overrides = {k: v for k, v in settings.items() if v is not None}
    study = StudyConfig.from_dict({**base, **overrides})
    if overrides and config and "name" not in overrides and base.get("name") is not None:
        try:  # how runs execute and what they keep (history, checkpoints) changes no study
            changed = study.identity() != StudyConfig.from_dict(base).identity()
        except UserError:
            changed = True
        if changed:  # a changed study gets its own name (flags that change nothing keep the study's)
            study = StudyConfig.from_dict({**base, **overrides, "name": None})
    if hparams:
        study = apply_tuned(study, hparams)
    return study


def study_folder(study: StudyConfig, out: str | Path | None = None, config: str | Path | None = None,
                 named: bool = False) -> Path:
    """``out``; else the folder of ``config`` when that is a study's own config.yaml (so the study
    continues where it is); else results/NAME (or results/<the name of a study made before default
    names were kept whole>, where that study lies). ``named``: the user gave the name."""
    if out:
        return Path(out)
    folder = Path(config).parent if config else None
    if folder and Path(config).name == StudyFolder.CONFIG and StudyFolder(folder).started:
        return folder
    path = Path("results") / study.name
    if not config and not named and study.name == default_name(study) and not path.exists():
        legacy = Path("results") / legacy_default_name(study)
        if StudyFolder(legacy).exists:
            study.name = legacy.name
            return legacy
    return path


def run_study(study: StudyConfig, out: Path, trainer_kwargs: dict | None = None, loggers: list[str] | None = None,
              progress: bool | str = True, storage: str | None = None, workers: int = EXECUTION.workers,
              heartbeat: int | None = None, analysis: bool = True, log: Callable[[str], None] = print) -> Path | None:
    """Train the study's runs not finished yet, analyse them (unless ``analysis`` is False), write
    the report and ``log`` its summary; returns the report's path (None where this process only
    filled the queue, or is not the one that writes)."""
    if workers < 0:
        raise UserError(f"--workers must be 0 or more, got {workers}")
    s = Study(study, out, trainer_kwargs=trainer_kwargs or {}, loggers=loggers)
    if s.multi_process and (workers != 1 or storage):
        raise UserError("a run on several devices or nodes runs the study's runs in order, one at a time: "
                        "drop --workers and --storage, or use --devices 1 with many workers")
    if not s.run(progress=progress, storage=storage, workers=workers, heartbeat=heartbeat, log=log):
        return None  # the queue is filled for workers elsewhere, or another rank of a multi-process run writes
    if analysis:
        analyze(s)  # effective context, fits, extrapolation (runs analysed before are reused)
        analyze_growth(s)  # the effective context at each kept step, and its law
    report = write_report(s.out)
    for line in summary_lines(s.out):
        log(line)
    for note in mixed_data(StudyFolder(s.out).runs()):
        log(f"note: {note}")
    log(f"wrote {report}")
    return report


def close_bars() -> None:
    """Close the progress bars still open (one closed later would redraw under the next line)."""
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def run(arch: str | list[str] | None = None, task: str | list[str] | None = None, params=None, context=None,
        tokens=None, seeds=None, batch_size=None, eval_sequences=None, name: str | None = None,
        history: int | None = None, keep_weights: bool | None = None, checkpoint_every: str | None = None,
        out: str | Path | None = None, config: str | Path | None = None, hparams: str | None = None,
        analysis: bool = True, progress: bool = True, workers: int = EXECUTION.workers, storage: str | None = None,
        heartbeat: int | None = None, devices: str | None = None, num_nodes: str | None = None,
        strategy: str | None = None, logger: list[str] | None = None, quiet: bool = False) -> StudyResults:
    """Run a study as ``study.py`` does, and return it loaded (:func:`mnemoscope.load`).

    Each argument is the flag of the same name (``arch`` is ``--arch``, ``task`` ``--task``, ...;
    ``analysis=False`` is ``--no-analysis``, ``progress=False`` ``--no-progress``,
    ``keep_weights=False`` ``--no-keep-weights``); one not given takes the study's default
    (``mnemoscope.settings.StudySettings``), or ``config``'s value. Sizes may be numbers or text
    (``params="100k"``, ``tokens=2_000_000``). ``quiet``: print nothing but the bars.

    A second call with the same settings resumes: finished runs are kept, a stopped run goes on
    from its checkpoint. Raises :class:`~mnemoscope.errors.UserError` on bad input."""
    settings = {"archs": arch, "tasks": task, "params": params, "context": context, "tokens": tokens,
                "seeds": seeds, "batch_size": batch_size, "eval_sequences": eval_sequences, "name": name,
                "history": history, "keep_weights": keep_weights, "checkpoint_every": checkpoint_every}
    try:
        trainer_kwargs = execution_settings(storage, heartbeat, devices, num_nodes, strategy)
        study = resolve_study(settings, config, hparams)
        folder = study_folder(study, out, config, named=name is not None)
        report = run_study(study, folder, trainer_kwargs, logger, progress, storage, workers, heartbeat, analysis,
                           log=(lambda line: None) if quiet else print)
    except KeyboardInterrupt:
        close_bars()
        raise KeyboardInterrupt(INTERRUPTED.replace("the same command", "the same call")) from None
    if report is None:
        raise UserError(f"no study to load at {folder}: its runs are queued for workers elsewhere "
                        "(workers=0), or another process of a multi-device run writes it")
    return load(folder)


def leaderboard_study(part: str, arch: str, settings: LeaderboardSettings | None = None) -> StudyConfig:
    """The study of one architecture on one part of the leaderboard: the default study's settings
    (:class:`mnemoscope.settings.StudySettings`) with the part's own over them. ``settings``:
    :data:`mnemoscope.settings.LEADERBOARD` when not given (read at call time, so a test may swap it)."""
    settings = settings or LEADERBOARD
    overrides = dict(getattr(settings, part))
    return StudyConfig.from_dict({**overrides, "archs": [arch], "history": settings.history,
                                  "name": f"leaderboard-{part}-{board_slug(arch)}"})


def _measure_part(part: str, arch: str, out: Path, settings: LeaderboardSettings, progress, log) -> dict | None:
    """Train (or resume) one part of one row; its not-measured line (reason, seconds spent) on failure."""
    start = time.perf_counter()
    folder = out / part / board_slug(arch)
    try:
        study = Study(leaderboard_study(part, arch, settings), folder)
        if not study.run(progress=progress, log=log):
            raise UserError("its run did not finish")
        rows = [study.folder.run(run_id).row() for run_id in study.finished()]
        if not any(r.get("status", "ok") in (None, "ok") for r in rows):  # no row to measure: say why
            r = rows[0] if rows else {}
            raise UserError(f"its training diverged (step {r.get('diverged_step')}, after {r.get('wall_seconds')} s of training)")
        if part == "books":  # effective context: the truncation ablation only (as results/books-bpe)
            analyze(study, AnalysisSettings(variants=("truncate",)), log=log)
    except UserError as exc:
        seconds = time.perf_counter() - start
        log(f"leaderboard: {arch} not measured on {part}: {exc}")
        return {"arch": arch, "part": part, "reason": " ".join(str(exc).split()), "seconds": f"{seconds:.0f} s"}
    return None


def run_leaderboard(archs: list[str], out: str | Path | None = None, board: str | Path | None = None,
                    settings: LeaderboardSettings | None = None, progress: bool | str = True, log: Callable = print,
                    committed: bool = False, not_measured: list[dict] | None = None) -> Path:
    """Train each architecture with the leaderboard's settings (recall and books, a study each, in
    ``out/recall/<slug>/`` and ``out/books/<slug>/``; a second call resumes), then write the table
    and figure into ``out``: every row measured there (this call's and earlier ones') beside the
    committed rows of ``board``. Returns table.md's path.

    ``out`` never lies in ``board`` (the committed folder is only read), unless ``committed``: the
    build of the committed board itself (results/leaderboard/build.py), which rewrites the table
    after each row, and lists architectures that do not resolve as not measured instead of
    refusing them; ``not_measured``: rows left out before training, with why and their cost.
    ``settings``: :data:`mnemoscope.settings.LEADERBOARD` when not given."""
    settings = settings or LEADERBOARD
    out = Path(out or settings.out)
    board = Path(board or settings.board)
    if not committed and (out.resolve() == board.resolve() or board.resolve() in out.resolve().parents):
        raise UserError(f"--out {out} lies in the committed leaderboard {board}, which is only read: give another "
                        f"folder, e.g. --out {settings.out}")
    if not archs and not not_measured:
        raise UserError("leaderboard needs at least one architecture (--arch)")
    missing, good = list(not_measured or []), []
    for arch in dict.fromkeys(archs):
        try:
            parse_spec(arch, ARCHITECTURES)  # an unknown name or a missing file: one line, before any training
            good.append(arch)
        except UserError as exc:
            if not committed:
                raise
            missing.append({"arch": arch, "part": "recall and books", "reason": str(exc), "seconds": "0 s"})
    header = board_header(settings, committed) + ("" if committed else board_differences(board, settings))
    asked = set(archs) | {m["arch"] for m in missing}

    def write(done: list[str]) -> None:
        earlier = _earlier_not_measured(out, asked)
        nm = pd.concat([earlier, pd.DataFrame(missing, columns=NOT_MEASURED)], ignore_index=True)
        write_board(out, _measured_archs(out, done), nm, settings, None if committed else board,
                    "committed" if committed else "yours", header=header)

    for i, arch in enumerate(good):
        for part in PARTS:
            line = _measure_part(part, arch, out, settings, progress, log)
            if line:
                missing.append(line)
        if committed and i < len(good) - 1:
            write(good[:i + 1])  # the committed build: the table as it goes
    write(good)
    log(f"wrote {out / 'table.md'}")
    return out / "table.md"


def _measured_archs(out: Path, archs: list[str]) -> list[str]:
    """``archs``, and before them every architecture measured in ``out`` by an earlier call."""
    found = []
    for config in sorted(out.glob("*/*/config.yaml")):
        if config.parent.parent.name in PARTS:
            found += (StudyFolder(config.parent).read_config() or {}).get("archs") or []
    return list(dict.fromkeys([*found, *archs]))


def _earlier_not_measured(out: Path, asked: set[str]) -> pd.DataFrame:
    """The not-measured lines an earlier call wrote into ``out`` for architectures not asked for now."""
    earlier = read_not_measured(out)
    return earlier[~earlier["arch"].isin(asked)]


def board_header(settings: LeaderboardSettings, committed: bool) -> str:
    """The lines above the table: what each part trained."""
    parts = []
    for part in PARTS:
        c = leaderboard_study(part, "x", settings)
        parts.append(f"{part}: task {c.tasks[0]}, {format_count(c.params[0])} non-embedding parameters, "
                     f"{format_count(c.tokens)} training tokens, batch {c.batch_size}, context "
                     f"{c.context or 'the task’s own'}, seed {c.seeds[0]}, {c.eval_sequences} test windows")
    return ("# Leaderboard\n\n" + ("" if committed else "Your rows (in bold) beside the committed ones. ")
            + "Settings: " + "; ".join(parts) + ".\n")


def board_differences(board: Path, settings: LeaderboardSettings) -> str:
    """A line per part whose committed rows were trained with other settings than these (the
    default study's changed since the board was built, say): their rows and yours are then not
    measured alike. Empty when they agree or there is no board."""
    lines = []
    for part in PARTS:
        for config in sorted((board / part).glob("*/config.yaml")) if (board / part).is_dir() else []:
            theirs = StudyConfig.from_dict(StudyFolder(config.parent).read_config()).identity()
            mine = leaderboard_study(part, theirs["archs"][0], settings).identity()
            diff = [f"{k} {theirs.get(k)} (yours {mine.get(k)})" for k in mine if k != "name" and mine[k] != theirs.get(k)]
            if diff:
                lines.append(f"\n**Not alike:** the committed {part} rows were trained with {', '.join(diff)}.\n")
            break
    return "".join(lines)
