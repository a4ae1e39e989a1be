"""``study.py`` (installed as ``mnemoscope``): run a study, list what is known, rebuild a report,
analyse, tune, join a study as a worker.

Every user error ends in one line on stderr and exit status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .analysis.analyze import analyze
from .analysis.compare import compare, parse_selection
from .analysis.growth import analyze_growth
from .api import INTERRUPTED, close_bars, execution_settings, resolve_study, run_leaderboard, run_study
from .api import study_folder as api_study_folder
from .errors import UserError
from .registry import ARCHITECTURES, TASKS
from .report.compare import summary_lines as comparison_lines
from .report.compare import write_comparison
from .report.page import write_report
from .score.scoring import Settings, build_task, score
from .settings import (VARIANTS, AnalysisSettings, ExecutionSettings, LeaderboardSettings, ScoreSettings, StudySettings,
                       TuneSettings, add_arguments)
from .specs import parse_count
from .study.config import StudyConfig
from .study.queue import RunQueue, sigterm_as_interrupt
from .study.runner import Study
from .study.tune import tune

EXAMPLES = """examples:
  PROG --arch transformer lstm cnn            the default study (text and recall, minutes on a CPU)
  python study.py --arch transformer lstm --task code --params 100k 1M --tokens 4M --context 512
  python study.py --arch my_model.py:MyModel transformer  your own architecture from a file
  python study.py --task text:path/to/my/texts            your own text files (one document each)
  python study.py --config results/NAME/config.yaml       resume a study, in its own folder
  python study.py list                                    architectures and tasks, plugins included
  python study.py report results/NAME                     rebuild plots and report from the tables
  python study.py analyze results/NAME                    effective context, power-law fits, extrapolation
  python study.py compare results/architectures:transformer,lstm results/my-study   runs of several studies, paired gaps
  python study.py score results/NAME/runs/ID model.gguf --task books --context 2048   models trained elsewhere
  python study.py tune --arch transformer lstm --task text --trials 30   same Optuna budget for each
  python study.py leaderboard --arch my_rnn.py:MyRNN         your row beside results/leaderboard's
  python study.py --arch transformer lstm --params 30k 100k 300k 1M 3M --hparams tuned   a scaling sweep
  python study.py ... --workers 4                         four worker processes drain the study's queue
  python study.py worker results/NAME --storage URL       join a study from another machine
"""


def run_parser(prog: str = "study.py") -> argparse.ArgumentParser:
    usage = (f"{prog} [--arch ARCH ...] [--task TASK ...] [--params N ...] [other flags]\n"
             f"       {prog} list | report DIR | analyze DIR | leaderboard --arch ARCH ... | compare DIR[:ARCH,...] ... | score MODEL ... --task TASK | worker DIR | tune --arch ARCH ... "
             "(each has --help)")
    p = argparse.ArgumentParser(
        prog=prog, usage=usage, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXAMPLES.replace("PROG", prog if prog != "study.py" else "python study.py"),
        description="Train every architecture on every task at matched sizes and measure the loss at "
                    "every context position; then analyse how much history each one uses and write a report.")
    # a flag left out is None, so that --config can fill it; else the study's default (settings.StudySettings)
    add_arguments(p, StudySettings, "archs tasks params context tokens seeds batch_size eval_sequences name", False)
    p.add_argument("--out", help="study folder (default results/NAME; with --config DIR/config.yaml of a study: DIR)")
    p.add_argument("--config", help="a study.yaml, or a study's DIR/config.yaml to continue that study in DIR; "
                                    "flags override it")
    p.add_argument("--hparams", help="'tuned': each architecture's values from results/tune/tuned.yaml "
                                     "(study.py tune), or the path of another tuned.yaml")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (nor the plain progress lines printed when the output is no terminal)")
    p.add_argument("--no-analysis", action="store_true",
                   help="skip the context analysis at the end (effective context, fits, extrapolation); "
                        "`study.py analyze DIR` adds it later")
    add_arguments(p, StudySettings, "history keep_weights checkpoint_every", False)
    add_execution_flags(p)
    add_arguments(p, ExecutionSettings, "workers")
    return p


def add_execution_flags(p: argparse.ArgumentParser) -> None:
    """How runs are executed; they do not change what a study is (nor its config.yaml)."""
    # None when left out: the queue then takes its default heartbeat (settings.ExecutionSettings)
    add_arguments(p, ExecutionSettings, "storage heartbeat devices num_nodes strategy logger", False)


def execution(args) -> dict:
    """Check the execution flags; returns Trainer arguments."""
    return execution_settings(args.storage, args.heartbeat, args.devices, args.num_nodes, args.strategy)


def _one_line_errors(parser: argparse.ArgumentParser) -> None:
    def error(message):
        raise UserError(f"{message} (see --help)")
    parser.error = error


def progress_mode(no_progress: bool) -> bool | str:
    """Lightning's bar on a terminal; plain lines (run, step, loss, time left) when the output is a
    file or a pipe; nothing with --no-progress."""
    if no_progress:
        return False
    return True if sys.stderr.isatty() else "lines"


def resolve_config(args):
    flags = {"archs": args.arch, "tasks": args.task, "params": args.params, "context": args.context,
             "tokens": args.tokens, "seeds": args.seeds, "batch_size": args.batch_size,
             "eval_sequences": args.eval_sequences, "name": args.name, "history": args.history,
             "keep_weights": False if args.no_keep_weights else None, "checkpoint_every": args.checkpoint_every}
    return resolve_study(flags, args.config, getattr(args, "hparams", None))


def study_folder(args, config: StudyConfig) -> Path:
    """The study's folder (:func:`mnemoscope.api.study_folder`): --out, --config's own folder, or results/NAME."""
    return api_study_folder(config, args.out, args.config, named=bool(args.name))


def cmd_run(argv: list[str], prog: str = "study.py") -> int:
    parser = run_parser(prog)
    _one_line_errors(parser)
    args = parser.parse_args(argv)
    trainer_kwargs = execution(args)
    config = resolve_config(args)
    out = study_folder(args, config)
    run_study(config, out, trainer_kwargs, args.logger, progress_mode(args.no_progress), args.storage, args.workers,
              args.heartbeat, analysis=not args.no_analysis)
    return 0


def cmd_worker(argv: list[str], prog: str = "study.py") -> int:
    p = argparse.ArgumentParser(prog=f"{prog} worker", description="Join a study: take its queued runs one at "
                                "a time until none is left. Start as many as you like, on any machine that sees "
                                "the study folder and the storage.")
    _one_line_errors(p)
    p.add_argument("dir", help="the study folder (holds config.yaml)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_execution_flags(p)
    args = p.parse_args(argv)
    trainer_kwargs = execution(args)
    out = Path(args.dir)
    study = Study.from_folder(out, f"; start one with study.py ... --out {out}", trainer_kwargs=trainer_kwargs,
                              loggers=args.logger)
    if study.multi_process:
        raise UserError("a worker trains each run in one process; for runs on several devices or nodes use "
                        "study.py --devices N [--num-nodes M] without the queue")
    sigterm_as_interrupt()
    queue = RunQueue(study, args.storage, args.heartbeat, create=False)
    n = queue.drain(progress=progress_mode(args.no_progress))
    study.collect()
    s = queue.summary()
    print(f"worker done: {n} runs trained here; study {s['finished']}/{s['planned']} runs finished")
    if s["finished"] == s["planned"]:
        write_report(out)
    return 0


def cmd_list(argv: list[str], prog: str = "study.py") -> int:
    p = argparse.ArgumentParser(prog=f"{prog} list", description="List the architectures and tasks a study can use: "
                                "the built-ins, installed plugins, and the families made on demand (hf:FAMILY).")
    _one_line_errors(p)
    p.parse_args(argv)
    # the hf: families are listed by building them: transformers' notes on its slower fallback kernels
    # (no mamba_ssm, no causal_conv1d) say nothing about the list, and would land in the middle of it
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    for registry in (ARCHITECTURES, TASKS):
        print(f"{registry.kind}s:")
        for name in registry.names():
            obj = registry.get(name)
            doc = (obj.__doc__ or "").strip().splitlines()
            print(f"  {name:<20} {doc[0] if doc else ''}  [{registry.origin(name)}]")
        for prefix in registry.prefixes():  # families made on demand, e.g. hf:llama
            for name, line in registry.listing(prefix):
                print(f"  {name:<20} {line}")
    return 0


def cmd_report(argv: list[str], prog: str = "study.py") -> int:
    p = argparse.ArgumentParser(prog=f"{prog} report", description="Rebuild every plot and the report of a "
                                "study from its stored tables alone.")
    _one_line_errors(p)
    p.add_argument("dir")
    args = p.parse_args(argv)
    print(write_report(Path(args.dir)))
    return 0


def cmd_tune(argv: list[str], prog: str = "study.py") -> int:
    p = argparse.ArgumentParser(
        prog=f"{prog} tune", description="Tune each architecture with Optuna (TPE, median pruning) at one "
        "small size, with the same trial budget for every one; later studies use the result with --hparams tuned.")
    _one_line_errors(p)
    add_arguments(p, TuneSettings, "arch task trials params tokens context batch_size out storage seed")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.trials < 1:
        raise UserError(f"--trials must be at least 1, got {args.trials}")
    for arch in args.arch:
        tune(arch, args.task, args.trials, parse_count(args.params, "parameter count"),
             parse_count(args.tokens, "token budget"), args.context and parse_count(args.context, "context length", 2),
             args.batch_size if args.batch_size == "auto" else parse_count(args.batch_size, "batch size"), Path(args.out), args.storage, args.seed,
             progress=progress_mode(args.no_progress))
    return 0


def cmd_analyze(argv: list[str], prog: str = "study.py") -> int:
    p = argparse.ArgumentParser(prog=f"{prog} analyze", description="Recompute how much history each run uses "
                                "(effective context by truncation ablation, per-position power-law fits, context gain "
                                "per octave, length extrapolation) from a finished study's stored models and tables; "
                                "write fits.csv, context.parquet, octaves.parquet, extrapolation.parquet; rebuild the report.")
    _one_line_errors(p)
    p.add_argument("dir")
    add_arguments(p, AnalysisSettings, "n_targets tolerance variants")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--recompute", action="store_true",
                   help="recompute every run (default: reuse a run's stored analysis made with the same settings)")
    p.add_argument("--baseline", help="architecture every other one is compared with on the same test sequences "
                                      "(gaps.csv; default: the study's first)")
    args = p.parse_args(argv)
    if args.targets < 1 or not 0 < args.tolerance < 1:
        raise UserError("--targets must be at least 1 and --tolerance between 0 and 1")
    bad = sorted(set(args.variants) - set(VARIANTS))
    if bad:
        raise UserError(f"unknown variant(s) {', '.join(bad)} (known: {', '.join(VARIANTS)})")
    variants = ("truncate",) + tuple(v for v in dict.fromkeys(args.variants) if v != "truncate")  # truncate: always
    settings = AnalysisSettings(n_targets=args.targets, tolerance=args.tolerance, variants=variants)
    analyze(Path(args.dir), settings, device=args.device, recompute=args.recompute, baseline=args.baseline)
    analyze_growth(Path(args.dir), settings, device=args.device, recompute=args.recompute)
    print(write_report(Path(args.dir)))
    return 0


#: `study.py compare`'s exit status when a pairing asked for with --baseline is refused (page written)
UNPAIRED_EXIT = 3


def cmd_compare(argv: list[str], prog: str = "study.py") -> int:
    p = argparse.ArgumentParser(
        prog=f"{prog} compare", description="Put runs of several study folders on one figure and one page, with "
        "paired gaps (bootstrap intervals over sequences) to a baseline for the runs scored on exactly the same test "
        "data as it; nothing is retrained, and the studies' folders are only read.")
    _one_line_errors(p)
    p.add_argument("dirs", nargs="+", metavar="DIR[:ARCH,...]",
                   help="study folders, each with the architectures to take from it (default: all)")
    p.add_argument("--baseline", nargs="+", metavar="DIR:ARCH",
                   help="the run(s) every other is compared with (default: the first folder's first architecture)")
    p.add_argument("--out", help="folder for compare.html, its figures and tables (default results/compare_NAMES); "
                                 "never inside a compared study, whose folder is only read")
    p.add_argument("--allow-unpaired", action="store_true",
                   help=f"exit 0 even when runs cannot pair with a baseline asked for with --baseline (default: exit "
                        f"{UNPAIRED_EXIT}, the page and tables written all the same)")
    args = p.parse_args(argv)
    selections = [parse_selection(d) for d in args.dirs]
    baselines = [parse_selection(b) for b in args.baseline] if args.baseline else None
    out = Path(args.out) if args.out else Path("results") / ("compare_" + "_".join(
        dict.fromkeys(s.folder.resolve().name for s in selections)))[:100]
    for s in [*selections, *(baselines or [])]:  # a study's own files (gaps.csv, figures) would be overwritten
        if out.resolve() == s.folder.resolve() or s.folder.resolve() in out.resolve().parents:
            raise UserError(f"--out {out} lies inside the compared study {s.folder}, which compare only reads: "
                            f"give a folder outside it, e.g. --out {Path(s.folder).parent / (s.folder.resolve().name + '-compare')}")
    c = compare(selections, baselines)
    command = " ".join([prog, "compare", *argv])
    page = write_comparison(c, out, command)
    print(f"compare: {len(c.runs)} runs of {len(c.studies)} studies; baseline {', '.join(c.baselines)}")
    print("\n".join(comparison_lines(c)))
    for line in c.refused:
        print(line, file=sys.stderr)
    print(f"wrote {page}")
    if c.refused and not args.allow_unpaired:
        print(f"compare: {len(c.refused)} pairing(s) asked for with --baseline refused (exit status {UNPAIRED_EXIT}; "
              "--allow-unpaired accepts them)", file=sys.stderr)
        return UNPAIRED_EXIT
    return 0


def cmd_score(argv: list[str], prog: str = "study.py") -> int:
    p = argparse.ArgumentParser(
        prog=f"{prog} score", description="Measure models trained elsewhere as a study measures its own: a run "
        "folder, a Hugging Face folder, a GGUF file or ARCH@WEIGHTS, each reading the task's test documents through "
        "its own tokenizer (docs/score.md). Nothing is trained or downloaded; the models' folders are only read.")
    _one_line_errors(p)
    p.add_argument("models", nargs="+", metavar="MODEL", help="run folder, Hugging Face folder, .gguf file, or "
                   "ARCH@WEIGHTS (a registered name or file.py:Class with a state dict)")
    p.add_argument("--task", required=True, help="the task whose test documents are scored (e.g. books)")
    p.add_argument("--context", help="tokens of context per window (default: the task's)")
    p.add_argument("--extrapolate", action="store_true",
                   help="allow a context longer than a model was made for (scored on purpose past its length)")
    add_arguments(p, ScoreSettings, "sequences targets")
    p.add_argument("--no-bisect", action="store_true", help="effective context on the grid 1, 2, 4, ... only, "
                   "without bisecting between its last two lengths (cheaper for a large model)")
    add_arguments(p, ScoreSettings, "batch_size")
    p.add_argument("--whole", action="store_true", help="score every document of the task's text whole, each from "
                   "its first byte, in consecutive windows of --context tokens (the last one shorter), instead of "
                   "--sequences windows of its test split: e.g. --task text:my.txt --whole scores one file")
    p.add_argument("--out", help="folder to write (default results/score_TASK_ctxN, with _whole for --whole)")
    args = p.parse_args(argv)
    if args.sequences < 1 or args.targets < 0 or args.batch_size < 1:
        raise UserError("--sequences and --batch-size must be at least 1, --targets at least 0")
    context = parse_count(args.context, "context length", 2) if args.context else None
    if context is None:
        context = build_task(args.task, None).context_length
    out = Path(args.out) if args.out else Path("results") / (
        f"score_{''.join(c if c.isalnum() else '-' for c in args.task)}_ctx{context}" + ("_whole" if args.whole else ""))
    runs = score(args.models, Settings(args.task, context, args.sequences, args.targets, extrapolate=args.extrapolate,
                                       batch_size=args.batch_size, bisect=not args.no_bisect, whole=args.whole), out)
    for r in runs.to_dict("records"):
        print(f"{r['arch']}: {r['test_loss']:.4f} nats/token over {r['context']} tokens of context ({r['run_id']})")
    print(write_report(out))
    return 0


def cmd_leaderboard(argv: list[str], prog: str = "study.py") -> int:
    p = argparse.ArgumentParser(
        prog=f"{prog} leaderboard", description="Train architectures with the leaderboard's committed settings "
        "(the recall probe at the default study's settings, and books in BPE tokens), and write the table and "
        "figure of their rows beside the committed ones (docs/leaderboard.md). The committed folder is only read; "
        "rerunning the command resumes.")
    _one_line_errors(p)
    p.add_argument("--arch", nargs="+", required=True, metavar="SPEC",
                   help="architectures: names, hf:FAMILY, module:Class or file.py:Class")
    add_arguments(p, LeaderboardSettings, "out board")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    run_leaderboard(args.arch, args.out, args.board, progress=progress_mode(args.no_progress))
    return 0


COMMANDS = {"list": cmd_list, "report": cmd_report, "worker": cmd_worker, "tune": cmd_tune, "analyze": cmd_analyze,
            "compare": cmd_compare, "score": cmd_score, "leaderboard": cmd_leaderboard}


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """The command line; ``prog``: the name it calls itself (default: ``mnemoscope`` when installed
    as that command, else ``study.py``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    prog = prog or ("mnemoscope" if Path(sys.argv[0]).name == "mnemoscope" else "study.py")
    try:
        if argv and argv[0] in COMMANDS:
            return COMMANDS[argv[0]](argv[1:], prog)
        if argv and not argv[0].startswith("-"):
            raise UserError(f"unknown command {argv[0]!r} (commands: {', '.join(COMMANDS)}, or flags; see --help)")
        return cmd_run(argv, prog)
    except UserError as exc:
        # one line, whatever the message holds (a plugin's or a library's text may span several)
        print("error: " + " ".join(line.strip() for line in str(exc).splitlines() if line.strip()), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        close_bars()
        print(INTERRUPTED, file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader of our output left (study.py list | head -1): stop quietly, as a command killed by
        # SIGPIPE does; stdout goes to /dev/null so that Python's own flush at exit cannot fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13
