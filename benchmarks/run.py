#!/usr/bin/env python3
"""Benchmarks: the harness against reference implementations measured in the same run.

    python -m benchmarks.run                        the full table (about 30 minutes on 2 CPU cores)
    python -m benchmarks.run --tiny --out /tmp/b    every row at tiny sizes, in seconds (the tests run this)
    bash benchmarks/gpu.sh                          the same table on one CUDA machine

Prints the table and writes ``benchmarks.csv`` and ``benchmarks.md`` under ``--out`` (default
``results/benchmarks``). Measurements come in **rounds**: one timed chunk of the harness, then
one chunk of every reference (in an order that rotates from round to round), so a machine
shared with other work, or one whose speed drifts, slows both sides of a round alike. Each ratio
is the median over rounds of the per-round ratio, with a 95% bootstrap interval over rounds;
rounds continue (past ``--reps``, up to ``--max-reps`` or ``--cell-seconds``) until every
interval of the cell is within ``--precision`` of its ratio. An A/A row per cell times the bare
loop against an identical copy of itself: the noise floor of the measurement, whose interval
should contain 1. A target is met ("yes") when the ratio reaches it, missed ("no") when the
whole interval lies below it, and otherwise "within noise". Ratios are ours / reference: above 1
is faster than the reference.

The sections, each a measurement in its own file (``--only``/``--skip`` take their names; they run
in this order):

    fixed, train, default, variants, flops   benchmarks/train_speed.py
    eval, truncation                         benchmarks/eval_speed.py
    study                                    benchmarks/default_study.py
    hf                                       benchmarks/hf_families.py
    output                                   benchmarks/output_memory.py

and what they share (paired rounds, the clock, ratios and their intervals, the table's rows) is in
benchmarks/common.py.
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import lightning as L

from benchmarks import default_study, eval_speed, hf_families, output_memory, train_speed
from benchmarks.common import ARCHS, CLOCK, GPU_STEP_TOKENS, PRECISION, REPO, SHAPES, Bench, Rounds, markdown, synthetic_split
from benchmarks.train_speed import study_step
from mnemoscope.measure.bootstrap import LEVEL
from mnemoscope.settings import STUDY
from mnemoscope.specs import format_count

#: the table of sections, in the order they run: name -> (what it measures, the function that does)
SECTIONS = {
    "fixed": ("the harness's fixed per-step cost", train_speed.section_fixed),
    "train": ("training throughput against a bare loop and GPT-2", train_speed.section_train),
    "default": ("the harness's overhead at the default study's shape", train_speed.section_default),
    "variants": ("what each of the harness's extras costs", train_speed.section_variants),
    "eval": ("per-position evaluation against a bare forward pass", eval_speed.section_eval),
    "truncation": ("the truncation ablation's cost", eval_speed.section_truncation),
    "flops": ("achieved FLOP/s against the measured matmul peak", train_speed.section_flops),
    "study": ("the default study end to end: wall time, peak memory", default_study.section_study),
    "hf": ("the Hugging Face families against the built-in transformer", hf_families.section_hf),
    "output": ("the output layer: chunked loss against full logits", output_memory.section_output),
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny sizes and data: every row in seconds (for tests)")
    p.add_argument("--out", default=str(REPO / "results" / "benchmarks"), help="folder for benchmarks.csv/.md")
    p.add_argument("--reps", type=int, help="fewest rounds per cell (default 2 tiny, 8 full)")
    p.add_argument("--max-reps", type=int, help="most rounds per cell (default 3 tiny, 80 full)")
    p.add_argument("--cell-seconds", type=float, help="stop a cell's rounds after this long (default 90; 150 on CPU)")
    p.add_argument("--precision", type=float, default=PRECISION,
                   help=f"stop a cell's rounds once every {LEVEL:g}%% interval is within this fraction of its ratio "
                        "(default %(default)s)")
    p.add_argument("--chunk", type=int, help="training steps per timed round (default 2 on CPU, 10 on GPU)")
    p.add_argument("--warmup", type=int, help="untimed training steps first (default 1 on CPU, 5 on GPU)")
    p.add_argument("--tokens-per-step", type=int, help=f"B x T of each training step (default on CPU: the default study's, "
                                                       f"{study_step()}; on GPU: {GPU_STEP_TOKENS})")
    p.add_argument("--archs", nargs="+", default=ARCHS, choices=ARCHS, help="built-ins to measure")
    p.add_argument("--sizes", nargs="+", type=int, help="non-embedding parameter targets (default 1M 5M)")
    p.add_argument("--contexts", nargs="+", type=int, help="context lengths (default 256 1024)")
    p.add_argument("--skip", nargs="+", default=[], choices=list(SECTIONS), help="sections to leave out")
    p.add_argument("--only", nargs="+", choices=list(SECTIONS),
                   help="run only these sections (e.g. --only hf, or --only output: the output layer's rows, about "
                        "5 minutes on a CPU)")
    p.add_argument("--append", action="store_true",
                   help="keep the other sections' rows already in --out: replace only the rows (in benchmarks.csv) "
                        "and the block (in benchmarks.md) of the sections run")
    p.add_argument("--compile", action="store_true", help="torch.compile the harness's model and the references")
    p.add_argument("--threads", type=int, help="torch threads on a CPU (default 1: CPU seconds then measure one core)")
    p.add_argument("--study-tokens", help="training tokens per run of the default study (default: its own, "
                                          f"{format_count(STUDY.tokens)})")
    p.add_argument("--note", default="", help="a line written under the table (e.g. what else the machine ran)")
    return p


def setup(args, log) -> Bench:
    """The flags resolved on this machine (CUDA or CPU, tiny or full), the synthetic data made."""
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    mode = "tiny" if args.tiny else "full"
    if not cuda:
        torch.set_num_threads(args.threads or 1)
    CLOCK["index"] = 0 if cuda else 1
    args.reps = args.reps or (2 if args.tiny else 8)
    args.max_reps = max(args.reps, args.max_reps or (3 if args.tiny else 80))
    args.cell_seconds = args.cell_seconds or (90.0 if cuda or args.tiny else 150.0)
    args.rounds = Rounds(args.reps, args.max_reps, args.cell_seconds, args.precision)
    args.chunk = args.chunk or (1 if args.tiny else 10 if cuda else 2)
    args.warmup = args.warmup or (5 if cuda and not args.tiny else 1)
    folder = Path(tempfile.mkdtemp(prefix="mnemoscope-bench-"))
    split = synthetic_split(folder, 200_000 if args.tiny else 4_000_000, seed=0)
    L.seed_everything(0, verbose=False)
    return Bench(args, device, mode, split, folder, sizes=args.sizes or SHAPES[mode][0],
                 contexts=args.contexts or SHAPES[mode][1],
                 tokens_per_step=args.tokens_per_step or (256 if args.tiny else GPU_STEP_TOKENS if cuda else study_step()), log=log)


def header(b: Bench, run: list[str], argv, earlier: str, block: str, started: float, load0) -> list[str]:
    """The lines above the table: how to regenerate it, the machine, how the figures were measured."""
    args = b.args
    load1 = os.getloadavg()
    clock = "wall-clock seconds" if b.cuda else "CPU seconds of this process (the wall-clock ratio is given beside)"
    device_name = (torch.cuda.get_device_name(0) if b.cuda else
                   f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads "
                   f"(OMP_NUM_THREADS {os.environ.get('OMP_NUM_THREADS', 'unset')}, inherited by the default study)")
    command = "python -m benchmarks.run " + shlex.join(argv if argv is not None else sys.argv[1:])
    title = f"Benchmarks ({b.mode} mode{', torch.compile' if args.compile else ''})"
    lines = [
        (f"{block}\n## {title}: {', '.join(run)}, appended" if earlier else f"# {title}"), "",
        f"Regenerate: `{command}`  ",
        f"Device: {device_name}; torch {torch.__version__}. Training steps of {b.tokens_per_step} tokens (B x T); "
        f"Each training figure comes from rounds of {args.chunk} step(s) of the harness then {args.chunk} of each "
        f"reference (after {args.warmup} warm-up step(s)); {args.reps} to {args.max_reps} rounds per cell, stopping "
        f"once every ratio's {LEVEL:g}% interval is within {args.precision:.0%} of it or after {args.cell_seconds:.0f} s. "
        f"Ratios are ours / reference (above 1: faster than the reference), the median over rounds of the "
        f"per-round ratio with its bootstrap interval over rounds; meets: yes (ratio reaches the target), **no** "
        f"(the whole interval below it), within noise (otherwise). Rates are per {clock}.  ",
        f"Load average (1 min) {load0[0]:.1f} at the start, {load1[0]:.1f} at the end "
        f"(above {os.cpu_count()}: the machine was shared with other work); total {time.time() - started:.0f} s.  ",
    ]
    if "output" in run:
        lines.append(output_memory.header_line(b.mode))
    if args.note:
        lines.append(args.note + "  ")
    return lines


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    started, load0 = time.time(), os.getloadavg()

    def log(msg):
        print(f"[{time.time() - started:6.1f}s] {msg}", flush=True)

    b = setup(args, log)
    run = [s for s in SECTIONS if s not in args.skip and (args.only is None or s in args.only)]
    rows = []
    for name in run:
        rows += SECTIONS[name][1](b)
    df = pd.DataFrame(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    block = f"<!-- sections: {' '.join(run)} -->"  # where --append finds this run's block again
    kept, earlier = pd.DataFrame(), ""
    if args.append and (out / "benchmarks.csv").exists():  # other sections' rows stay as they were
        kept = pd.read_csv(out / "benchmarks.csv")
        kept = kept[~kept.section.isin(set(df.section))]
        earlier = (out / "benchmarks.md").read_text() if (out / "benchmarks.md").exists() else ""
        earlier = earlier.split("\n" + block)[0].rstrip() + "\n\n"
    pd.concat([kept, df], ignore_index=True).to_csv(out / "benchmarks.csv", index=False)
    text = "\n".join(header(b, run, argv, earlier, block, started, load0)) + "\n\n" + markdown(df) + "\n"
    (out / "benchmarks.md").write_text(earlier + text)
    print(text)
    shutil.rmtree(b.folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
