#!/usr/bin/env python3
"""Benchmarks: the harness against reference implementations measured in the same run.

    python benchmarks/run.py                        the full table (about 10 minutes on 2 CPU cores)
    python benchmarks/run.py --tiny --out /tmp/b    every row at tiny sizes, in seconds (the tests run this)
    bash benchmarks/gpu.sh                          the same table on one CUDA machine

Prints the table and writes ``benchmarks.csv`` and ``benchmarks.md`` under ``--out`` (default
``results/benchmarks``). Every figure is the median of ``--reps`` repetitions, and harness and
reference repetitions alternate (a reference chunk runs between two harness chunks), so a
machine shared with other work slows both alike and the ratios stay fair even when the
absolute numbers do not. Ratios are ours / reference: above 1 is faster than the reference.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import lightning as L

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import architectures  # noqa: E402,F401  (registers the built-ins)
from benchmarks.references import BareLoop, gpt2_like, stamp  # noqa: E402
from mnemoscope.evaluate import per_position_losses  # noqa: E402
from mnemoscope.model import build, count_params, size_for  # noqa: E402
from mnemoscope.registry import ARCHITECTURES  # noqa: E402
from mnemoscope.study import DivergenceGuard  # noqa: E402
from mnemoscope.task import TokenSplit, eval_offsets, window_batch  # noqa: E402
from mnemoscope.train import TrainConfig, fit  # noqa: E402

ARCHS = ["transformer", "lstm", "cnn"]
VOCAB = 256
#: (sizes in non-embedding parameters, context lengths) per mode
SHAPES = {"full": ([1_000_000, 5_000_000], [256, 1024]), "tiny": ([20_000, 50_000], [32, 64])}
OVERHEAD_TARGET = 0.05  # harness at most 5% slower than a bare loop
EVAL_TARGET = 0.9  # per-position evaluation at least 0.9x a bare forward pass


# -- measurement helpers ---------------------------------------------------------------------
def synthetic_split(folder: Path, n_tokens: int, seed: int) -> TokenSplit:
    """Uniform random bytes, memory-mapped from disk as a task's cached split is."""
    path = folder / f"tokens-{seed}.npy"
    np.save(path, np.random.default_rng(seed).integers(0, VOCAB, n_tokens, dtype=np.uint8))
    return TokenSplit(tokens=np.load(path, mmap_mode="r"))


def make_model(arch: str, params: int, T: int, seed: int = 0):
    cls = ARCHITECTURES.get(arch)
    torch.manual_seed(seed)
    # GPT-2 has learned positions: the transformer is benchmarked in that shape, to compare like with like
    options = {"pos": "learned"} if arch == "transformer" else {}
    return cls, build(cls, VOCAB, T, size_for(cls, params, VOCAB, T, options))


def device_batches(split: TokenSplit, T: int, B: int, n: int, device, seed: int = 1):
    """``n`` training batches (x, y), gathered once and moved to the device (the bare loop's data)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x, y, _ = window_batch(split, rng.integers(0, len(split) - T - 1, B), T)
        out.append((x.to(device), y.to(device)))
    return out


class Interleaved(L.Callback):
    """Times the harness in chunks of ``chunk`` steps and, after each chunk, times one chunk of
    every reference, so contention from other work hits both alike. The first ``warmup`` harness
    steps are not timed; the references run their own warm-up at that point."""

    def __init__(self, warmup: int, chunk: int, references: dict[str, BareLoop], device):
        self.warmup, self.chunk, self.references, self.device = warmup, chunk, references, device
        self.times: dict[str, list[np.ndarray]] = {"harness": [], **{k: [] for k in references}}
        self.t0 = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        done = batch_idx + 1
        if done < self.warmup or (done - self.warmup) % self.chunk:
            return
        now = stamp(self.device)
        if self.t0 is not None:
            self.times["harness"].append(now - self.t0)
        for name, ref in self.references.items():
            seconds = ref.run(self.chunk if self.t0 is not None else self.warmup)
            if self.t0 is not None:
                self.times[name].append(seconds)
        self.t0 = stamp(self.device)


def alternate(reps: int, **fns) -> dict[str, list[np.ndarray]]:
    """Run each function once to warm up, then ``reps`` rounds of all of them in turn; each
    function returns its (wall, CPU) seconds."""
    for fn in fns.values():
        fn()
    times: dict[str, list[np.ndarray]] = {k: [] for k in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            times[name].append(fn())
    return times


#: which clock the figures use: 0 wall (CUDA), 1 CPU seconds (a CPU, where the wall clock of a
#: shared machine measures the neighbours too); set in main()
CLOCK = {"index": 0}


def seconds(times: list[np.ndarray]) -> float:
    """Median over repetitions, on the clock in use."""
    return float(np.median(np.stack(times)[:, CLOCK["index"]])) if times else float("nan")


def wall_seconds(times: list[np.ndarray]) -> float:
    return float(np.median(np.stack(times)[:, 0])) if times else float("nan")


def fmt_count(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def row(section, name, value, unit, reference="", ref_value=float("nan"), ratio=float("nan"), target="",
        ok=None, arch="", params=None, context=None, batch=None, reps=None, detail="", wall_ratio=float("nan"),
        target_params=None):
    """One line of the table. ``ratio`` is on the clock in use; ``wall_ratio`` the same on the wall clock."""
    return {"section": section, "row": name, "arch": arch, "target_params": target_params, "params": params,
            "context": context, "batch": batch,
            "value": value, "unit": unit, "reference": reference, "reference_value": ref_value, "ratio": ratio,
            "wall_ratio": wall_ratio, "target": target, "meets_target": ok, "reps": reps, "detail": detail}


# -- the benchmarks --------------------------------------------------------------------------
def matmul_peak(device, dtype, n: int, reps: int) -> float:
    """Measured FLOP/s of an n x n matmul in ``dtype`` (median of ``reps``)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    inner = 20 if device.type == "cuda" else 1

    def once():
        start = stamp(device)
        for _ in range(inner):
            a @ b
        return stamp(device) - start

    times = alternate(reps, matmul=once)["matmul"]
    return 2 * n ** 3 * inner / seconds(times)


def bench_training(arch, params, T, B, args, device, split, folder, variant=None):
    """Harness fit() against a bare loop over the same module (and GPT-2 for the transformer)."""
    cls, model = make_model(arch, params, T)
    hp = dict(getattr(cls, "default_hparams", {}))
    batches = device_batches(split, T, B, 4, device)
    refs = {"bare": BareLoop(make_model(arch, params, T)[1], batches, device, hp.get("lr", 2e-3), compile=args.compile)}
    gpt2_error = None
    if arch == "transformer" and variant is None:
        try:
            refs["gpt2"] = BareLoop(gpt2_like(model), batches, device, hp.get("lr", 2e-3), compile=args.compile)
        except ImportError as exc:
            gpt2_error = f"transformers not installed ({exc.name}): pip install -e '.[bench]'"
    steps = args.warmup + args.reps * args.chunk
    cfg = TrainConfig(tokens=steps * B * T, batch_size=B, seed=0, compile=args.compile, **hp)
    timer = Interleaved(args.warmup, args.chunk, refs, device)
    callbacks = [timer] if variant == "no DivergenceGuard" else [DivergenceGuard(), timer]
    kwargs = {"deterministic": False} if variant == "deterministic=False" else {}
    progress = variant == "progress bar on"
    quiet = io.StringIO()
    with contextlib.redirect_stderr(quiet), contextlib.redirect_stdout(quiet):  # progress bars stay out of the table
        fit(model, split, split, T, cfg, Path(tempfile.mkdtemp(dir=folder)), callbacks=callbacks, progress=progress, trainer_kwargs=kwargs)
    tok = {k: B * T * args.chunk / seconds(v) for k, v in timer.times.items()}
    wall = {k: B * T * args.chunk / wall_seconds(v) for k, v in timer.times.items()}
    n = count_params(model)
    shape = dict(arch=arch, target_params=params, params=n, context=T, batch=B, reps=args.reps)
    over_wall = wall["harness"] / wall["bare"]
    # the harness's extra time per step: fixed costs that matter most where steps are short (a GPU)
    extra_ms = 1e3 * B * T * (1 / tok["harness"] - 1 / tok["bare"])
    label = f"{arch} {fmt_count(n)} T={T}"
    out = []
    over = tok["harness"] / tok["bare"]
    target = f">= {1 / (1 + OVERHEAD_TARGET):.3f} (overhead <= {OVERHEAD_TARGET:.0%})"
    if variant is not None:
        return [row("harness variant", f"harness ({variant}) vs bare loop, {label}", tok["harness"], "tokens/s",
                    "bare loop, same module", tok["bare"], over, target, over >= 1 / (1 + OVERHEAD_TARGET),
                    detail=f"overhead {1 / over - 1:+.1%}, {extra_ms:+.1f} ms per step", wall_ratio=over_wall, **shape)], tok["harness"]
    if arch == "transformer":
        if "gpt2" in tok:
            ratio = tok["harness"] / tok["gpt2"]
            out.append(row("train", f"train {label}", tok["harness"], "tokens/s", "HF GPT-2, same shape, bare loop",
                           tok["gpt2"], ratio, ">= 1.0", ratio >= 1.0, wall_ratio=wall["harness"] / wall["gpt2"],
                           **shape))
            module = tok["bare"] / tok["gpt2"]
            n_gpt2 = count_params(refs["gpt2"].model.hf.transformer.h) + count_params(refs["gpt2"].model.hf.transformer.ln_f)
            out.append(row("module", f"our transformer vs GPT-2, both bare loop, {label}", tok["bare"], "tokens/s",
                           "HF GPT-2, same shape, bare loop", tok["gpt2"], module, "", None,
                           detail=f"GPT-2 non-embedding params {fmt_count(n_gpt2)}",
                           wall_ratio=wall["bare"] / wall["gpt2"], **shape))
        else:
            out.append(row("train", f"train {label}", tok["harness"], "tokens/s", "HF GPT-2: " + gpt2_error,
                           detail=gpt2_error, **shape))
            out.append(row("module", f"our transformer vs GPT-2, both bare loop, {label}", tok["bare"], "tokens/s",
                           "HF GPT-2: " + gpt2_error, detail=gpt2_error, **shape))
    else:
        out.append(row("train", f"train {label}", tok["harness"], "tokens/s", "bare loop, same module", tok["bare"],
                       over, ">= 1.0", over >= 1.0, wall_ratio=over_wall, **shape))
    out.append(row("overhead", f"harness vs bare loop, {label}", tok["harness"], "tokens/s", "bare loop, same module",
                   tok["bare"], over, target, over >= 1 / (1 + OVERHEAD_TARGET), detail=f"overhead {1 / over - 1:+.1%}, {extra_ms:+.1f} ms per step",
                   wall_ratio=over_wall, **shape))
    return out, tok["harness"]


def bench_eval(arch, params, T, B, n_seq, args, device, split):
    """per_position_losses against a bare forward pass over the same windows, batches made beforehand."""
    _, model = make_model(arch, params, T)
    model.to(device).eval()
    offsets = eval_offsets(split, T, n_seq)
    xs = [window_batch(split, offsets[i:i + B], T)[0].to(device) for i in range(0, len(offsets), B)]

    def bare():
        start = stamp(device)
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            for x in xs:
                model(x)
        return stamp(device) - start

    def harness():
        start = stamp(device)
        per_position_losses(model, split, T, n_seq, B)
        return stamp(device) - start

    times = alternate(args.reps, harness=harness, bare=bare)
    tok = {k: len(offsets) * T / seconds(v) for k, v in times.items()}
    ratio = tok["harness"] / tok["bare"]
    wall_ratio = wall_seconds(times["bare"]) / wall_seconds(times["harness"])
    return row("eval", f"per-position eval {arch} {fmt_count(count_params(model))} T={T}", tok["harness"], "tokens/s",
               "bare forward pass, same windows", tok["bare"], ratio, f">= {EVAL_TARGET}", ratio >= EVAL_TARGET,
               arch=arch, params=count_params(model), context=T, batch=B, reps=args.reps,
               detail=f"{len(offsets)} sequences", wall_ratio=wall_ratio)


def bench_truncation(arch, params, T, n_targets, reps, device, split):
    """Cost of the truncation ablation (Khandelwal et al.; mnemoscope.analysis), all its variants,
    in seconds and in forward tokens against one full-context pass over the same windows."""
    try:
        from mnemoscope import analysis
    except ImportError:
        analysis = None
    fn = getattr(analysis, "truncation_ablation", None)
    if fn is None:
        return row("truncation", f"truncation ablation {arch}", float("nan"), "seconds", arch=arch, context=T,
                   detail="not available: mnemoscope.analysis has no truncation_ablation")
    _, model = make_model(arch, params, T)
    model.to(device).eval()
    times = []
    for _ in range(reps):
        start = stamp(device)
        ablation = fn(model, split, T, n_targets, device=device)
        times.append(stamp(device) - start)
    forward = sum(ablation.forward_tokens.values())
    full = len(ablation.available) * T  # one full-context pass over the same windows
    per_variant = ", ".join(f"{k} {fmt_count(v)}" for k, v in ablation.forward_tokens.items())
    return row("truncation", f"truncation ablation {arch} {fmt_count(count_params(model))} T={T}", seconds(times),
               "seconds", "forward tokens of one full-context pass", full, forward / full, "", None, arch=arch,
               params=count_params(model), context=T, reps=reps,
               detail=f"{fmt_count(forward)} forward tokens ({per_variant}) for {len(ablation.available)} targets; "
                      f"ratio = forward tokens / full pass; cost is linear in the targets",
               wall_ratio=float("nan"))


def bench_flops(arch, params, T, harness_tok_s, peak, peak_name, device):
    try:
        from mnemoscope.flops import count_training_step
    except ImportError:
        return row("flops", f"achieved FLOP/s {arch}", float("nan"), "FLOP/s", arch=arch, context=T,
                   detail="not available: no mnemoscope.flops")
    _, model = make_model(arch, params, T)
    count = count_training_step(model.to(device), VOCAB, T)
    flops = count.per_token
    note = "FlopCounterMode" + (f", formula for {', '.join(count.formula_modules)}" if count.formula_modules else "")
    achieved = flops * harness_tok_s
    return row("flops", f"achieved FLOP/s {arch} {fmt_count(count_params(model))} T={T}", achieved, "FLOP/s",
               f"measured {peak_name} matmul peak", peak, achieved / peak, "", None, arch=arch,
               params=count_params(model), context=T,
               detail=f"{fmt_count(flops)} FLOPs/token ({note}) x harness tokens/s")


def bench_study(args, folder: Path):
    """The default study (``python study.py``) in a subprocess: wall time and peak host memory."""
    out = folder / "study"
    cmd = [sys.executable, str(REPO / "study.py"), "--out", str(out), "--no-progress", "--name", "benchmark-default"]
    env = dict(os.environ)
    if args.tiny:  # shrunk: tiny models and tokens, on a text file made here (nothing downloaded)
        text = folder / "corpus.txt"
        words = np.array("the of and to a in that is was he for it with as his on be at by".split())
        rng = np.random.default_rng(0)
        text.write_text("\n".join(" ".join(rng.choice(words, 12)) for _ in range(3000)))
        cmd += ["--arch", "transformer", "--task", f"text:{text}", "--params", "5k", "--tokens", "8k",
                "--context", "32", "--batch-size", "8", "--eval-sequences", "8"]
        env["MNEMOSCOPE_CACHE"] = str(folder / "cache")
    elif args.study_tokens:
        cmd += ["--tokens", args.study_tokens]
    # a fresh interpreter waits for the study, so RUSAGE_CHILDREN holds the study alone
    probe = ("import json, resource, subprocess, sys, time; t = time.perf_counter(); "
             "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
             "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
             "print(json.dumps({'rc': r.returncode, 'seconds': time.perf_counter() - t, 'cpu': u.ru_utime + u.ru_stime, "
             "'maxrss_kib': u.ru_maxrss, 'stderr': r.stderr[-2000:]}))")
    result = subprocess.run([sys.executable, "-c", probe, *cmd], capture_output=True, text=True, cwd=REPO, env=env)
    info = json.loads(result.stdout.strip().splitlines()[-1])
    shown = " ".join(["study.py", *cmd[2:]]).replace(str(folder), "TMP")
    if info["rc"] != 0:
        raise RuntimeError(f"the default study failed (exit {info['rc']}): {info['stderr']}")
    runs = pd.read_parquet(out / "runs.parquet")
    return [
        row("study", "default study wall time", info["seconds"], "seconds", detail=f"`{shown}`; {len(runs)} runs, "
            f"{fmt_count(runs.tokens_trained.sum())} training tokens; {info['cpu']:.0f} CPU seconds"),
        row("study", "default study peak memory", info["maxrss_kib"] / 1024, "MiB",
            detail="peak resident set size of the study process (host memory)"),
    ]


# -- the table -------------------------------------------------------------------------------
def format_value(v, unit):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if unit == "tokens/s":
        return f"{fmt_count(v)} tok/s"
    if unit == "FLOP/s":
        return f"{fmt_count(v)}FLOP/s"
    if unit == "seconds":
        return f"{v:.1f} s"
    if unit == "MiB":
        return f"{v:.0f} MiB"
    return fmt_count(v)


def markdown(df: pd.DataFrame) -> str:
    lines = ["| row | value | reference | reference value | ratio | target | meets | wall-clock ratio | detail |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in df.itertuples():
        ratio = "-" if pd.isna(r.ratio) else f"{r.ratio:.3f}"
        wall = "-" if pd.isna(r.wall_ratio) else f"{r.wall_ratio:.3f}"
        ok = {True: "yes", False: "**no**"}.get(r.meets_target, "")
        ref_unit = "tokens" if r.section == "truncation" else r.unit
        lines.append(f"| {r.row} | {format_value(r.value, r.unit)} | {r.reference} | "
                     f"{format_value(r.reference_value, ref_unit)} | {ratio} | {r.target} | {ok} | {wall} | {r.detail} |")
    return "\n".join(lines)


SECTIONS = ["train", "variants", "eval", "truncation", "flops", "study"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny sizes and data: every row in seconds (for tests)")
    p.add_argument("--out", default=str(REPO / "results" / "benchmarks"), help="folder for benchmarks.csv/.md")
    p.add_argument("--reps", type=int, help="repetitions per figure, median taken (default 2 tiny, 5 full)")
    p.add_argument("--chunk", type=int, help="training steps per timed repetition (default 1 on CPU, 10 on GPU)")
    p.add_argument("--warmup", type=int, help="untimed training steps first (default 1 on CPU, 5 on GPU)")
    p.add_argument("--tokens-per-step", type=int, help="B x T of each training step (default 2048 on CPU, 32768 on GPU)")
    p.add_argument("--archs", nargs="+", default=ARCHS, choices=ARCHS, help="built-ins to measure")
    p.add_argument("--sizes", nargs="+", type=int, help="non-embedding parameter targets (default 1M 5M)")
    p.add_argument("--contexts", nargs="+", type=int, help="context lengths (default 256 1024)")
    p.add_argument("--skip", nargs="+", default=[], choices=SECTIONS, help="sections to leave out")
    p.add_argument("--compile", action="store_true", help="torch.compile the harness's model and the references")
    p.add_argument("--threads", type=int, help="torch threads on a CPU (default 1: CPU seconds then measure one core)")
    p.add_argument("--study-tokens", help="training tokens per run of the default study (default: its own, 2M)")
    p.add_argument("--note", default="", help="a line written under the table (e.g. what else the machine ran)")
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    mode = "tiny" if args.tiny else "full"
    if not cuda:
        torch.set_num_threads(args.threads or 1)
    CLOCK["index"] = 0 if cuda else 1
    clock = "wall-clock seconds" if cuda else "CPU seconds of this process (the wall-clock ratio is given beside)"
    args.reps = args.reps or (2 if args.tiny else 5)
    args.chunk = args.chunk or (10 if cuda and not args.tiny else 1)
    args.warmup = args.warmup or (5 if cuda and not args.tiny else 1)
    tokens_per_step = args.tokens_per_step or (256 if args.tiny else 32768 if cuda else 2048)
    sizes = args.sizes or SHAPES[mode][0]
    contexts = args.contexts or SHAPES[mode][1]
    run = [s for s in SECTIONS if s not in args.skip]
    started, load0 = time.time(), os.getloadavg()
    folder = Path(tempfile.mkdtemp(prefix="mnemoscope-bench-"))
    split = synthetic_split(folder, 200_000 if args.tiny else 4_000_000, seed=0)
    L.seed_everything(0, verbose=False)
    rows, harness_speed = [], {}
    small_batch = 8 if args.tiny else 32  # evaluation batches, as the study evaluates

    def log(msg):
        print(f"[{time.time() - started:6.1f}s] {msg}", flush=True)

    if "train" in run:  # training throughput, harness overhead, our transformer against GPT-2
        for arch in args.archs:
            for params in sizes:
                for T in contexts:
                    out, tok_s = bench_training(arch, params, T, max(1, tokens_per_step // T), args, device, split, folder)
                    harness_speed[(arch, params, T)] = tok_s
                    rows += out
                    log(f"train {arch} {fmt_count(params)} T={T}: " + ", ".join(
                        f"{r['section']} {r['ratio']:.3f}" for r in out if not math.isnan(r["ratio"])))
    if "variants" in run:  # what each of the harness's extras costs, one at a time (smallest transformer)
        T = contexts[0]
        for variant in ("no DivergenceGuard", "deterministic=False", "progress bar on"):
            rows += bench_training("transformer", sizes[0], T, max(1, tokens_per_step // T), args, device, split,
                                   folder, variant=variant)[0]
            log(f"variant {variant}: {rows[-1]['ratio']:.3f}")
    if "eval" in run:
        for arch in args.archs:
            rows.append(bench_eval(arch, sizes[0], contexts[0], small_batch, 16 if args.tiny else 64, args, device, split))
            log(f"eval {arch}: {rows[-1]['ratio']:.3f}")
    if "truncation" in run:
        for arch in args.archs:
            rows.append(bench_truncation(arch, sizes[0], contexts[0], 8 if args.tiny else 32, min(args.reps, 2),
                                         device, split))
            log(f"truncation {arch}: {rows[-1]['detail']}")
    if "flops" in run:  # achieved FLOP/s against the measured matmul peak (larger size, shorter context)
        peak_dtype = torch.bfloat16 if cuda else torch.float32  # the harness trains in bf16 autocast on CUDA
        peak_name = str(peak_dtype).replace("torch.", "")
        n = 256 if args.tiny else 8192 if cuda else 2048
        peak = matmul_peak(device, peak_dtype, n, args.reps)
        rows.append(row("flops", f"measured {peak_name} matmul peak", peak, "FLOP/s", reps=args.reps,
                        detail=f"{n} x {n} matmul"))
        for arch in args.archs:
            key = (arch, sizes[-1], contexts[0])
            if key not in harness_speed:  # the train section was skipped: measure this one setting
                harness_speed[key] = bench_training(arch, sizes[-1], contexts[0], max(1, tokens_per_step // contexts[0]),
                                                    args, device, split, folder)[1]
            rows.append(bench_flops(arch, sizes[-1], contexts[0], harness_speed[key], peak, peak_name, device))
        log("flops done")
    if "study" in run:  # the default study, end to end, in its own process
        rows += bench_study(args, folder)
        log(f"study: {rows[-2]['value']:.1f} s, {rows[-1]['value']:.0f} MiB")

    df = pd.DataFrame(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "benchmarks.csv", index=False)
    load1 = os.getloadavg()
    device_name = (torch.cuda.get_device_name(0) if cuda else
                   f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads")
    command = " ".join(["python benchmarks/run.py", *(argv if argv is not None else sys.argv[1:])])
    header = [
        f"# Benchmarks ({mode} mode{', torch.compile' if args.compile else ''})", "",
        f"Regenerate: `{command}`  ",
        f"Device: {device_name}; torch {torch.__version__}. Training steps of {tokens_per_step} tokens (B x T); "
        f"each figure the median of {args.reps} repetitions of {args.chunk} step(s) after {args.warmup} warm-up "
        f"step(s), harness and reference repetitions alternating. Rates are per {clock}. "
        f"Ratios are ours / reference (above 1: faster than the reference).  ",
        f"Load average (1 min) {load0[0]:.1f} at the start, {load1[0]:.1f} at the end "
        f"(above {os.cpu_count()}: the machine was shared with other work); total {time.time() - started:.0f} s.  ",
    ]
    if args.note:
        header.append(args.note + "  ")
    text = "\n".join(header) + "\n\n" + markdown(df) + "\n"
    (out / "benchmarks.md").write_text(text)
    print(text)
    shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
