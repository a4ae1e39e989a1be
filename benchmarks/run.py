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
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
import torch
import lightning as L

from benchmarks import output_layer as ol
from benchmarks.references import BareLoop, gpt2_like, stamp
from mnemoscope.callbacks import DivergenceGuard
from mnemoscope.config import StudyConfig
from mnemoscope.evaluate import per_position_losses
from mnemoscope.model import build
from mnemoscope.sizing import count_params, size_for
from mnemoscope.registry import ARCHITECTURES, TASKS
from mnemoscope.task import TokenSplit
from mnemoscope.windows import eval_offsets, window_batch
from mnemoscope.train import TrainConfig, auto_batch_size, fit

REPO = Path(__file__).resolve().parent.parent

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


@dataclasses.dataclass
class Rounds:
    """When a cell has been measured enough: at least ``min`` rounds; then stop once every ratio's
    95% interval is within ``precision`` (relative) of the ratio, or after ``max`` rounds or
    ``seconds`` of measuring, whichever comes first."""
    min: int = 5
    max: int = 60
    seconds: float = 90.0
    precision: float = 0.02

    def done(self, times: dict[str, list[np.ndarray]], started: float, first: str) -> bool:
        n = len(times[first])
        if n < self.min:
            return False
        if n >= self.max or time.perf_counter() - started >= self.seconds:
            return True
        for name in times:
            if name == first:
                continue
            r, lo, hi = paired_ratio(times[first], times[name])[:3]
            if max(r - lo, hi - r) > self.precision * r:
                return False
        return True


def rotated(names: list[str], i: int) -> list[str]:
    """The references' order in round ``i``: shifted by one each round, so none always runs first."""
    shift = i % max(1, len(names))
    return names[shift:] + names[:shift]


class Interleaved(L.Callback):
    """Times the harness in chunks of ``chunk`` steps and, after each chunk, one chunk of every
    reference (their order rotating from round to round), so contention from other work hits both
    sides of a round alike. The first ``warmup`` harness steps are not timed; the references run
    their own warm-up at that point. Stops training once ``rounds`` says the cell is measured."""

    def __init__(self, warmup: int, chunk: int, references: dict[str, BareLoop], device, rounds: Rounds):
        self.warmup, self.chunk, self.references, self.device, self.rounds = warmup, chunk, references, device, rounds
        self.times: dict[str, list[np.ndarray]] = {"harness": [], **{k: [] for k in references}}
        self.t0 = None
        self.started = time.perf_counter()
        self.warmup_seconds = float("nan")  # the harness's untimed first steps (with compilation, if any)

    def on_train_start(self, trainer, pl_module):
        self.fit_started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        done = batch_idx + 1
        if done < self.warmup or (done - self.warmup) % self.chunk:
            return
        now = stamp(self.device)
        if self.t0 is None:
            self.warmup_seconds = time.perf_counter() - self.fit_started
        if self.t0 is not None:
            self.times["harness"].append(now - self.t0)
        for name in rotated(list(self.references), len(self.times["harness"])):
            seconds = self.references[name].run(self.chunk if self.t0 is not None else self.warmup)
            if self.t0 is not None:
                self.times[name].append(seconds)
        if self.t0 is None:
            self.started = time.perf_counter()
        elif self.rounds.done(self.times, self.started, "harness"):
            trainer.should_stop = True
        self.t0 = stamp(self.device)


def alternate(rounds: Rounds, **fns) -> dict[str, list[np.ndarray]]:
    """Run each function once to warm up, then rounds of all of them (the first, ours, then the
    others in rotating order) until ``rounds`` says enough; each returns its (wall, CPU) seconds."""
    for fn in fns.values():
        fn()
    names = list(fns)
    times: dict[str, list[np.ndarray]] = {k: [] for k in fns}
    started = time.perf_counter()
    while True:
        times[names[0]].append(fns[names[0]]())
        for name in rotated(names[1:], len(times[names[0]])):
            times[name].append(fns[name]())
        if rounds.done(times, started, names[0]):
            return times


#: which clock the figures use: 0 wall (CUDA), 1 CPU seconds (a CPU, where the wall clock of a
#: shared machine measures the neighbours too); set in main()
CLOCK = {"index": 0}


def seconds(times: list[np.ndarray]) -> float:
    """Median over repetitions, on the clock in use."""
    return float(np.median(np.stack(times)[:, CLOCK["index"]])) if times else float("nan")


def paired_ratio(ours: list[np.ndarray], reference: list[np.ndarray], level: float = 95, n_boot: int = 2000):
    """Our speed over the reference's, round by round (the reference's time over ours, same work):
    (median over rounds, low, high of its bootstrap interval over rounds (seaborn's bootstrap),
    the same median on the wall clock)."""
    a, b = np.stack(ours), np.stack(reference)
    n = min(len(a), len(b))
    ratios = b[:n] / a[:n]  # (rounds, clocks)
    r = ratios[:, CLOCK["index"]]
    if n < 2:
        return float(np.median(r)), float("nan"), float("nan"), float(np.median(ratios[:, 0]))
    boots = sns.algorithms.bootstrap(r, func=np.median, n_boot=n_boot, seed=0)
    lo, hi = np.percentile(boots, [(100 - level) / 2, 100 - (100 - level) / 2])
    return float(np.median(r)), float(lo), float(hi), float(np.median(ratios[:, 0]))


def verdict(ratio: float, high: float, target: float) -> tuple[bool | None, str]:
    """(meets, word): met when the ratio reaches the target, missed when the whole interval lies
    below it, otherwise the measurement cannot tell ("within noise")."""
    if ratio >= target:
        return True, "yes"
    if not math.isnan(high) and high >= target:
        return None, "within noise"
    return False, "no"


def fmt_count(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def row(section, name, value, unit, reference="", ref_value=float("nan"), ratio=float("nan"), target="",
        ok=None, arch="", params=None, context=None, batch=None, reps=None, detail="", wall_ratio=float("nan"),
        target_params=None, low=float("nan"), high=float("nan"), word=""):
    """One line of the table. ``ratio`` (with its interval ``low``-``high``) is on the clock in
    use; ``wall_ratio`` the same on the wall clock; ``word`` the verdict against the target."""
    return {"section": section, "row": name, "arch": arch, "target_params": target_params, "params": params,
            "context": context, "batch": batch,
            "value": value, "unit": unit, "reference": reference, "reference_value": ref_value, "ratio": ratio,
            "ratio_low": low, "ratio_high": high, "wall_ratio": wall_ratio, "target": target, "meets_target": ok,
            "verdict": word, "reps": reps, "detail": detail}


def compared(section, name, ours, reference, ref_name, target_value=None, target_text="", unit="tokens/s",
             work=1.0, detail="", **shape):
    """A row comparing two lists of per-round times of the same ``work`` (tokens per round)."""
    r, lo, hi, wall = paired_ratio(ours, reference)
    ok, word = (None, "") if target_value is None else verdict(r, hi, target_value)
    return row(section, name, work / seconds(ours), unit, ref_name, work / seconds(reference), r, target_text, ok,
               detail=detail, wall_ratio=wall, low=lo, high=hi, word=word, reps=len(ours), **shape)


# -- the benchmarks --------------------------------------------------------------------------
def matmul_peak(device, dtype, n: int, rounds: Rounds) -> tuple[float, int]:
    """Measured FLOP/s of an n x n matmul in ``dtype``: the best of 20 or more rounds (a peak is
    what the machine can do; a median of a few let a noisy moment report a 'peak' that the LSTM's
    training then exceeded, 1.08x), and the number of rounds."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    inner = 20 if device.type == "cuda" else 1

    def once():
        start = stamp(device)
        for _ in range(inner):
            a @ b
        return stamp(device) - start

    times = alternate(dataclasses.replace(rounds, min=max(rounds.min, 20), max=max(rounds.max, 20)), matmul=once)["matmul"]
    return 2 * n ** 3 * inner / float(np.min(np.stack(times)[:, CLOCK["index"]])), len(times)


def label_of(arch, n, T):
    return f"{arch} {fmt_count(n)} T={T}"


def bench_training(arch, params, T, B, args, device, split, folder, variant=None, fixed_ms=None, section="train"):
    """Harness fit() against a bare loop over the same module (and GPT-2 for the transformer), with
    an A/A row: the bare loop against an identical copy of itself, the measurement's noise floor.
    ``fixed_ms``: the harness's fixed extra cost per step (bench_fixed_cost), to say what overhead
    it predicts at this cell's step time."""
    cls, model = make_model(arch, params, T)
    hp = dict(getattr(cls, "default_hparams", {}))
    batches = device_batches(split, T, B, 4, device)
    lr = hp.get("lr", 2e-3)
    refs = {"bare": BareLoop(make_model(arch, params, T)[1], batches, device, lr, compile=args.compile)}
    if variant is None:
        refs["copy"] = BareLoop(make_model(arch, params, T)[1], batches, device, lr, compile=args.compile)
    gpt2_error = None
    if arch == "transformer" and variant is None and section == "train":
        try:
            refs["gpt2"] = BareLoop(gpt2_like(model), batches, device, lr, compile=args.compile)
        except ImportError as exc:
            gpt2_error = f"transformers not installed ({exc.name}): pip install -e '.[bench]'"
    rounds = args.rounds
    steps = args.warmup + rounds.max * args.chunk  # the timer stops the run once the cell is measured
    cfg = TrainConfig(tokens=steps * B * T, batch_size=B, seed=0, compile=args.compile, **hp)
    timer = Interleaved(args.warmup, args.chunk, refs, device, rounds)
    callbacks = [timer] if variant == "no DivergenceGuard" else [DivergenceGuard(), timer]
    if variant == FILL_VARIANT:
        callbacks.append(FillUninitializedMemory())
    kwargs = {"deterministic": False} if variant == "deterministic=False" else {}
    progress = variant == "progress bar on"
    quiet = io.StringIO()
    with contextlib.redirect_stderr(quiet), contextlib.redirect_stdout(quiet):  # progress bars stay out of the table
        fit(model, split, split, T, cfg, Path(tempfile.mkdtemp(dir=folder)), callbacks=callbacks, progress=progress, trainer_kwargs=kwargs)
    t = timer.times
    work = B * T * args.chunk
    n = count_params(model)
    shape = dict(arch=arch, target_params=params, params=n, context=T, batch=B)
    label = label_of(arch, n, T) + (" (the default study's shape)" if section == "default shape" else "")
    over_target = 1 / (1 + OVERHEAD_TARGET)
    over_text = f">= {over_target:.3f} (overhead <= {OVERHEAD_TARGET:.0%})"

    def overhead(section_name, name):
        """The harness-vs-bare row, its detail the harness's extra time per step from the row's own
        paired ratio (a difference of the two sides' medians would not match it on a noisy machine):
        fixed costs matter most where steps are short."""
        r = compared(section_name, name, t["harness"], t["bare"], "bare loop, same module", over_target, over_text,
                     work=work, **shape)
        step_ms, over = 1e3 * seconds(t["bare"]) / args.chunk, 1 / r["ratio"] - 1
        r["detail"] = f"overhead {over:+.1%} of a {step_ms:.1f} ms step ({step_ms * over:+.1f} ms)"
        if fixed_ms is not None:
            r["detail"] += f"; the fixed cost ({fixed_ms:+.1f} ms per step) predicts {fixed_ms / step_ms:+.1%}"
        return r

    if variant is not None:
        return [overhead("harness variant", f"harness ({variant}) vs bare loop, {label}")], work / seconds(t["harness"])
    out = []
    if section == "train":
        if arch == "transformer":
            if "gpt2" in t:
                out.append(compared("train", f"train {label}", t["harness"], t["gpt2"], "HF GPT-2, same shape, bare loop",
                                    1.0, ">= 1.0", work=work, **shape))
                n_gpt2 = count_params(refs["gpt2"].model.hf.transformer.h) + count_params(refs["gpt2"].model.hf.transformer.ln_f)
                out.append(compared("module", f"our transformer vs GPT-2, both bare loop, {label}", t["bare"], t["gpt2"],
                                    "HF GPT-2, same shape, bare loop", work=work,
                                    detail=f"GPT-2 non-embedding params {fmt_count(n_gpt2)}", **shape))
            else:
                out.append(row("train", f"train {label}", work / seconds(t["harness"]), "tokens/s", "HF GPT-2: " + gpt2_error,
                               detail=gpt2_error, reps=len(t["harness"]), **shape))
                out.append(row("module", f"our transformer vs GPT-2, both bare loop, {label}", work / seconds(t["bare"]),
                               "tokens/s", "HF GPT-2: " + gpt2_error, detail=gpt2_error, reps=len(t["bare"]), **shape))
        else:
            out.append(compared("train", f"train {label}", t["harness"], t["bare"], "bare loop, same module", 1.0,
                                ">= 1.0", work=work, **shape))
        if args.compile:  # what compilation costs before the first timed step
            out[0]["detail"] = (out[0]["detail"] + "; " if out[0]["detail"] else "") + (
                f"the harness's {args.warmup} warm-up step(s), compilation included: {timer.warmup_seconds:.1f} s")
    out.append(overhead("overhead" if section == "train" else section, f"harness vs bare loop, {label}"))
    r, lo, hi = paired_ratio(t["bare"], t["copy"])[:3]
    out.append(compared("noise", f"A/A: bare loop vs an identical copy, {label}", t["bare"], t["copy"],
                        "bare loop, identical copy", work=work,
                        detail=("interval contains 1, as it should" if lo <= 1 <= hi else
                                "interval misses 1: this cell's machine was noisier than its interval says"),
                        **shape))
    return out, work / seconds(t["harness"])


FILL_VARIANT = "filling uninitialised memory"
VARIANTS = ("no DivergenceGuard", "deterministic=False", "progress bar on", FILL_VARIANT)


class FillUninitializedMemory(L.Callback):
    """What the harness did before it turned this off: deterministic mode filling every
    torch.empty with NaN (PyTorch's default once deterministic algorithms are on)."""

    def on_train_start(self, trainer, pl_module):
        torch.utils.deterministic.fill_uninitialized_memory = True

    def on_train_end(self, trainer, pl_module):
        torch.utils.deterministic.fill_uninitialized_memory = False


class Null(torch.nn.Module):
    """A model with next to no compute (embedding -> linear head, width 8): its training step
    is almost all fixed per-step cost."""

    def __init__(self, vocab: int = VOCAB, width: int = 8):
        super().__init__()
        self.emb, self.head = torch.nn.Embedding(vocab, width), torch.nn.Linear(width, vocab)

    def forward(self, tokens):
        return self.head(self.emb(tokens))


def bench_fixed_cost(args, device, split, folder):
    """The harness's fixed cost per training step (Lightning's loop, hooks and logging, data
    loading, the scheduler, DivergenceGuard) against a bare loop's, both training the Null model
    on batches of 2 x 16 tokens, where the step's compute is next to nothing."""
    T, B = 16, 2
    batches = device_batches(split, T, B, 4, device)
    torch.manual_seed(0)
    refs = {"bare": BareLoop(Null(), batches, device, 2e-3)}
    rounds = dataclasses.replace(args.rounds, max=max(args.rounds.max, 30))
    chunk = 50
    steps = args.warmup + rounds.max * chunk
    timer = Interleaved(args.warmup, chunk, refs, device, rounds)
    quiet = io.StringIO()
    with contextlib.redirect_stderr(quiet), contextlib.redirect_stdout(quiet):
        fit(Null(), split, split, T, TrainConfig(tokens=steps * B * T, batch_size=B, seed=0),
            Path(tempfile.mkdtemp(dir=folder)), callbacks=[DivergenceGuard(), timer], progress=False)
    t = timer.times
    ours, bare = 1e3 * seconds(t["harness"]) / chunk, 1e3 * seconds(t["bare"]) / chunk
    return row("fixed cost", "fixed cost per training step, harness vs bare loop", ours, "ms", "bare loop, same model",
               bare, float("nan"), reps=len(t["harness"]), context=T, batch=B,
               detail=f"+{ours - bare:.2f} ms per step (a {count_params(Null())}-parameter model, {B} x {T} tokens "
                      f"per step, {chunk} steps per round): Lightning's loop, hooks and logging, data loading, "
                      f"the LR schedule, DivergenceGuard"), ours - bare


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

    times = alternate(args.rounds, harness=harness, bare=bare)
    return compared("eval", f"per-position eval {arch} {fmt_count(count_params(model))} T={T}", times["harness"],
                    times["bare"], "bare forward pass, same windows", EVAL_TARGET, f">= {EVAL_TARGET}",
                    work=len(offsets) * T, detail=f"{len(offsets)} sequences", arch=arch, params=count_params(model),
                    context=T, batch=B)


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


#: the output-layer rows: vocabularies, context, sequences per step and size, per mode
OUTPUT_SHAPES = {"full": ([256, 4096, 50257], 1024, 4, 1_000_000, None),
                 "tiny": ([256, 4096], 64, 4, 20_000, 1 << 14)}


def bench_output_layer(args, device, mode: str) -> list[dict]:
    """The transformer's training step with the loss over the whole (B, T, V) logits against the
    loss in chunks of positions (``token_losses``), in paired rounds; the output layer's share of
    the full-logits step; and the peak memory of a training step and of an evaluation batch each
    way, measured in a fresh process apiece (``benchmarks/output_layer.py``)."""
    vocabs, T, B, params, chunk = OUTPUT_SHAPES[mode]
    chunk = chunk or ol.LOSS_CHUNK_ELEMENTS
    out = []
    for V in vocabs:
        model, opt, batch = ol.make(V, T, B, params, device)
        n = count_params(model)
        h = ol.head_inputs(model, batch, device)

        def timed(fn):
            def run():
                start = stamp(device)
                fn()
                return stamp(device) - start
            return run

        times = alternate(args.rounds, chunked=timed(lambda: ol.train_step(model, opt, batch, chunk, device)),
                          full=timed(lambda: ol.train_step(model, opt, batch, None, device)),
                          head=timed(lambda: ol.head_step(model, h, batch[1], device)))
        shape = dict(arch="transformer", target_params=params, params=n, context=T, batch=B)
        label = f"transformer {fmt_count(n)} T={T} V={V}"
        rows_per_chunk = max(1, chunk // V)
        how = (f"one chunk: the whole logits fit in {fmt_count(chunk)} elements, both sides take the same path"
               if B * T * V <= chunk else f"{math.ceil(B * T / rows_per_chunk)} chunks of {rows_per_chunk} positions")
        out.append(compared("output layer", f"train step, chunked loss vs full logits, {label}", times["chunked"],
                            times["full"], "full (B, T, V) logits", work=B * T, detail=how, **shape))
        share, lo, hi, wall = paired_ratio(times["full"], times["head"])
        out.append(row("output layer", f"output layer's share of a full-logits training step, {label}", share, "share",
                       "the whole step", float("nan"), share, low=lo, high=hi, wall_ratio=wall, reps=len(times["head"]),
                       detail="output layer + cross-entropy, forward and backward, over the step (forward, loss, "
                              "backward, AdamW); median over rounds of the per-round ratio", **shape))
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "OMP_NUM_THREADS": str(torch.get_num_threads())}
        cmd = [sys.executable, "-m", "benchmarks.output_layer", "--vocab", str(V), "--context", str(T), "--batch",
               str(B), "--params", str(params), "--chunk-elements", str(chunk), "--threads", str(torch.get_num_threads())]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"memory probe failed: {done.stderr[-2000:]}")
        peaks = {(r["mode"], r["chunked"]): r for r in map(json.loads, done.stdout.strip().splitlines())}
        for what in ("train", "eval"):
            c, f = peaks[what, True], peaks[what, False]
            out.append(row("output layer", f"peak memory of a{' training step' if what == 'train' else 'n evaluation batch'}"
                           f", chunked loss vs full logits, {label}", c["step_mib"], "MiB", "full (B, T, V) logits",
                           f["step_mib"], c["step_mib"] / f["step_mib"] if f["step_mib"] > 0 else float("nan"), reps=1,
                           detail=f"{'GPU memory allocated' if c['device'] == 'cuda' else 'resident set'} above the "
                                  f"{c['before_mib']:.0f} MiB held before the step; ratio = chunked / full; the fp32 "
                                  f"logits alone are {c['logits_mib']:.0f} MiB", **shape))
    return out


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


#: the reference study's shape (results/hf-families): non-embedding parameters, context, batch
HF_SHAPE = {"full": (100_000, 256, 4), "tiny": (20_000, 32, 8)}
HF_BUILTINS = ["ssm", "lstm", "gru"]  # the built-ins the reference study sets beside the families


def bench_hf(args, device, split) -> list[dict]:
    """Training speed of each Hugging Face family (``--arch hf:FAMILY``), and of the built-in
    recurrent models, against the built-in transformer at the reference study's shape: both in a
    bare loop (the model's own cost; the harness adds the same to each), in alternating rounds."""
    params, T, B = HF_SHAPE["tiny" if args.tiny else "full"]
    try:
        from mnemoscope.architectures.hf import FAMILIES, installed_version
    except ImportError:
        FAMILIES, installed_version = {}, lambda: None
    version = installed_version()
    if version is None:
        return [row("hf", "Hugging Face families vs transformer", float("nan"), "tokens/s", context=T,
                    detail="skipped: transformers is not installed (pip install -e '.[hf]')")]
    batches = device_batches(split, T, B, 4, device)

    def loop(arch):
        cls = ARCHITECTURES.get(arch)
        torch.manual_seed(0)
        model = build(cls, VOCAB, T, size_for(cls, params, VOCAB, T, {}))
        return BareLoop(model, batches, device, getattr(cls, "default_hparams", {}).get("lr", 2e-3), compile=args.compile)

    reference = loop("transformer")
    out = []
    for arch in [f"hf:{name}" for name in FAMILIES] + HF_BUILTINS:
        try:
            ours = loop(arch)
        except Exception as exc:  # a family that cannot run here: the row says why
            out.append(row("hf", f"train {arch}, bare loop", float("nan"), "tokens/s", "built-in transformer",
                           arch=arch, target_params=params, context=T, batch=B,
                           detail=" ".join(f"cannot run here: {type(exc).__name__}: {exc}".split())[:300]))
            continue
        times = alternate(args.rounds, ours=lambda: ours.run(args.chunk), transformer=lambda: reference.run(args.chunk))
        n = count_params(ours.model)
        note = FAMILIES[arch[3:]].note if arch.startswith("hf:") else "built-in"
        out.append(compared("hf", f"train {arch} {fmt_count(n)} T={T}, bare loop", times["ours"], times["transformer"],
                            f"built-in transformer {fmt_count(count_params(reference.model))}, bare loop",
                            work=B * T * args.chunk, arch=arch, target_params=params, params=n, context=T, batch=B,
                            detail="; ".join(x for x in (f"transformers {version}" if arch.startswith("hf:") else "",
                                                         note) if x)))
    return out


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
    if unit == "ms":
        return f"{v:.2f} ms"
    if unit == "share":
        return f"{v:.1%}"
    return fmt_count(v)


def markdown(df: pd.DataFrame) -> str:
    lines = ["| row | value | reference | reference value | ratio [95% interval] | target | meets | wall-clock ratio | rounds | detail |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in df.itertuples():
        ratio = "-" if pd.isna(r.ratio) else f"{r.ratio:.3f}"
        if not pd.isna(r.ratio_low):
            ratio += f" [{r.ratio_low:.3f}, {r.ratio_high:.3f}]"
        wall = "-" if pd.isna(r.wall_ratio) else f"{r.wall_ratio:.3f}"
        ok = {"yes": "yes", "no": "**no**", "within noise": "within noise"}.get(r.verdict if isinstance(r.verdict, str) else "", "")
        ref_unit = "tokens" if r.section == "truncation" else r.unit
        reps = "" if pd.isna(r.reps) else f"{int(r.reps)}"
        lines.append(f"| {r.row} | {format_value(r.value, r.unit)} | {r.reference} | "
                     f"{format_value(r.reference_value, ref_unit)} | {ratio} | {r.target} | {ok} | {wall} | {reps} | {r.detail} |")
    return "\n".join(lines)


SECTIONS = ["fixed", "train", "default", "variants", "eval", "truncation", "flops", "study", "hf", "output"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny sizes and data: every row in seconds (for tests)")
    p.add_argument("--out", default=str(REPO / "results" / "benchmarks"), help="folder for benchmarks.csv/.md")
    p.add_argument("--reps", type=int, help="fewest rounds per cell (default 2 tiny, 8 full)")
    p.add_argument("--max-reps", type=int, help="most rounds per cell (default 3 tiny, 80 full)")
    p.add_argument("--cell-seconds", type=float, help="stop a cell's rounds after this long (default 90; 150 on CPU)")
    p.add_argument("--precision", type=float, default=0.02,
                   help="stop a cell's rounds once every 95%% interval is within this fraction of its ratio (default 0.02)")
    p.add_argument("--chunk", type=int, help="training steps per timed round (default 2 on CPU, 10 on GPU)")
    p.add_argument("--warmup", type=int, help="untimed training steps first (default 1 on CPU, 5 on GPU)")
    p.add_argument("--tokens-per-step", type=int, help="B x T of each training step (default 1024 on CPU, the default study's; 32768 on GPU)")
    p.add_argument("--archs", nargs="+", default=ARCHS, choices=ARCHS, help="built-ins to measure")
    p.add_argument("--sizes", nargs="+", type=int, help="non-embedding parameter targets (default 1M 5M)")
    p.add_argument("--contexts", nargs="+", type=int, help="context lengths (default 256 1024)")
    p.add_argument("--skip", nargs="+", default=[], choices=SECTIONS, help="sections to leave out")
    p.add_argument("--only", nargs="+", choices=SECTIONS,
                   help="run only these sections (e.g. --only hf, or --only output: the output layer's rows, about "
                        "5 minutes on a CPU)")
    p.add_argument("--append", action="store_true",
                   help="keep the other sections' rows already in --out: replace only the rows (in benchmarks.csv) "
                        "and the block (in benchmarks.md) of the sections run")
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
    args.reps = args.reps or (2 if args.tiny else 8)
    args.max_reps = max(args.reps, args.max_reps or (3 if args.tiny else 80))
    args.cell_seconds = args.cell_seconds or (90.0 if cuda or args.tiny else 150.0)
    args.rounds = Rounds(args.reps, args.max_reps, args.cell_seconds, args.precision)
    args.chunk = args.chunk or (1 if args.tiny else 10 if cuda else 2)
    args.warmup = args.warmup or (5 if cuda and not args.tiny else 1)
    tokens_per_step = args.tokens_per_step or (256 if args.tiny else 32768 if cuda else 1024)
    sizes = args.sizes or SHAPES[mode][0]
    contexts = args.contexts or SHAPES[mode][1]
    run = [s for s in SECTIONS if s not in args.skip and (args.only is None or s in args.only)]
    started, load0 = time.time(), os.getloadavg()
    folder = Path(tempfile.mkdtemp(prefix="mnemoscope-bench-"))
    split = synthetic_split(folder, 200_000 if args.tiny else 4_000_000, seed=0)
    L.seed_everything(0, verbose=False)
    rows, harness_speed = [], {}
    small_batch = 8 if args.tiny else 32  # evaluation batches, as the study evaluates

    def log(msg):
        print(f"[{time.time() - started:6.1f}s] {msg}", flush=True)

    fixed_ms = None
    if "fixed" in run:  # the harness's fixed per-step cost, measured where compute is next to nothing
        r, fixed_ms = bench_fixed_cost(args, device, split, folder)
        rows.append(r)
        log(f"fixed cost: harness {r['value']:.2f} ms, bare {r['reference_value']:.2f} ms per step")
    if "train" in run:  # training throughput, harness overhead, our transformer against GPT-2
        for arch in args.archs:
            for params in sizes:
                for T in contexts:
                    out, tok_s = bench_training(arch, params, T, max(1, tokens_per_step // T), args, device, split,
                                                folder, fixed_ms=fixed_ms)
                    harness_speed[(arch, params, T)] = tok_s
                    rows += out
                    log(f"train {arch} {fmt_count(params)} T={T}: " + ", ".join(
                        f"{r['section']} {r['ratio']:.3f} [{r['ratio_low']:.3f}, {r['ratio_high']:.3f}] ({r['reps']} rounds)"
                        for r in out if not math.isnan(r["ratio"])))
    # the default study's shape (its size, text's context, its automatic batch): where users train
    defaults = StudyConfig()
    T = contexts[0] if args.tiny else TASKS.get("text").default_context
    params = sizes[0] if args.tiny else defaults.params[0]
    B = max(1, tokens_per_step // T) if args.tiny else auto_batch_size(defaults.tokens, T)
    if "default" in run:  # the harness's overhead at that shape
        for arch in args.archs:
            out, _ = bench_training(arch, params, T, B, args, device, split, folder, fixed_ms=fixed_ms,
                                    section="default shape")
            rows += out
            log(f"default shape {arch}: {out[0]['ratio']:.3f} [{out[0]['ratio_low']:.3f}, {out[0]['ratio_high']:.3f}]")
    if "variants" in run:  # what each of the harness's extras costs, one at a time, at the default study's shape
        arch = "lstm" if "lstm" in args.archs else args.archs[0]  # the shortest steps: extras weigh most
        for variant in VARIANTS:
            rows += bench_training(arch, params, T, B, args, device, split, folder, variant=variant,
                                   section="train" if args.tiny else "default shape")[0]
            log(f"variant {variant}: {rows[-1]['ratio']:.3f} [{rows[-1]['ratio_low']:.3f}, {rows[-1]['ratio_high']:.3f}]")
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
        peak, peak_rounds = matmul_peak(device, peak_dtype, n, args.rounds)
        rows.append(row("flops", f"measured {peak_name} matmul peak", peak, "FLOP/s", reps=peak_rounds,
                        detail=f"{n} x {n} matmul, best round"))
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
    if "hf" in run:  # the Hugging Face families' training speed against the built-in transformer
        hf_rows = bench_hf(args, device, split)
        rows += hf_rows
        log("hf: " + ", ".join(f"{r['arch']} {r['ratio']:.3f}" for r in hf_rows if r["arch"]))

    if "output" in run:  # the output layer at large vocabularies: chunked loss against full logits
        rows += bench_output_layer(args, device, mode)
        log("output layer: " + ", ".join(f"{r['ratio']:.3f}" for r in rows if r["section"] == "output layer"))
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
    load1 = os.getloadavg()
    device_name = (torch.cuda.get_device_name(0) if cuda else
                   f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads "
                   f"(OMP_NUM_THREADS {os.environ.get('OMP_NUM_THREADS', 'unset')}, inherited by the default study)")
    command = "python -m benchmarks.run " + shlex.join(argv if argv is not None else sys.argv[1:])
    title = f"Benchmarks ({mode} mode{', torch.compile' if args.compile else ''})"
    header = [
        (f"{block}\n## {title}: {', '.join(run)}, appended" if earlier else f"# {title}"), "",
        f"Regenerate: `{command}`  ",
        f"Device: {device_name}; torch {torch.__version__}. Training steps of {tokens_per_step} tokens (B x T); "
        f"Each training figure comes from rounds of {args.chunk} step(s) of the harness then {args.chunk} of each "
        f"reference (after {args.warmup} warm-up step(s)); {args.reps} to {args.max_reps} rounds per cell, stopping "
        f"once every ratio's 95% interval is within {args.precision:.0%} of it or after {args.cell_seconds:.0f} s. "
        f"Ratios are ours / reference (above 1: faster than the reference), the median over rounds of the "
        f"per-round ratio with its bootstrap interval over rounds; meets: yes (ratio reaches the target), **no** "
        f"(the whole interval below it), within noise (otherwise). Rates are per {clock}.  ",
        f"Load average (1 min) {load0[0]:.1f} at the start, {load1[0]:.1f} at the end "
        f"(above {os.cpu_count()}: the machine was shared with other work); total {time.time() - started:.0f} s.  ",
    ]
    if "output" in run:
        vocabs, T_out, B_out, params_out, chunk_out = OUTPUT_SHAPES[mode]
        header.append(f"The output-layer rows have their own shape: the transformer at {fmt_count(params_out)} "
                      f"parameters, T={T_out}, {B_out} sequences per step ({B_out * T_out} tokens), "
                      f"V = {' / '.join(map(str, vocabs))}, chunks of at most "
                      f"{fmt_count(chunk_out or ol.LOSS_CHUNK_ELEMENTS)} logits; each round is one step of each "
                      f"side (chunked, full logits, the output layer alone), after one untimed round.  ")
    if args.note:
        header.append(args.note + "  ")
    text = "\n".join(header) + "\n\n" + markdown(df) + "\n"
    (out / "benchmarks.md").write_text(earlier + text)
    print(text)
    shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
