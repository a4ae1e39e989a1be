"""Training speed: the harness's fixed per-step cost, its training throughput against a bare loop
(and GPT-2 for the transformer), what each of its extras costs, achieved FLOP/s against the
measured matmul peak (sections ``fixed``, ``train``, ``default``, ``variants``, ``flops``)."""
from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import tempfile
import time
from pathlib import Path

import torch
import lightning as L

from benchmarks.common import (Bench, compared, device_batches, fmt_count, Interleaved, label_of, make_model,
                              matmul_peak, OVERHEAD_TARGET, paired_ratio, row, seconds, VOCAB)
from benchmarks.references import BareLoop, gpt2_like
from mnemoscope.training.callbacks import DivergenceGuard
from mnemoscope.study.config import StudyConfig
from mnemoscope.settings import STUDY
from mnemoscope.registry import TASKS
from mnemoscope.contract.sizing import count_params
from mnemoscope.training.train import TrainConfig, auto_batch_size, fit


def _gpt2_rows(t, refs, gpt2_error, label, work, shape) -> list[dict]:
    """The transformer's rows against Hugging Face's GPT-2 (or rows that say why it is missing):
    the harness against GPT-2's bare loop, and the two modules, both in a bare loop."""
    out = []
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
    return out


def bench_training(arch, params, T, B, args, device, split, folder, variant=None, fixed_ms=None, section="train"):
    """Harness fit() against a bare loop over the same module (and GPT-2 for the transformer), with
    an A/A row: the bare loop against an identical copy of itself, the measurement's noise floor.
    ``fixed_ms``: the harness's fixed extra cost per step (bench_fixed_cost), to say what overhead
    it predicts at this cell's step time."""
    cls, model = make_model(arch, params, T)
    hp = dict(getattr(cls, "default_hparams", {}))
    batches = device_batches(split, T, B, 4, device)
    lr = hp.get("lr", TrainConfig.lr)
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
            out += _gpt2_rows(t, refs, gpt2_error, label, work, shape)
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
    refs = {"bare": BareLoop(Null(), batches, device, TrainConfig.lr)}
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


def bench_flops(arch, params, T, harness_tok_s, peak, peak_name, device):
    try:
        from mnemoscope.measure.flops import count_training_step
    except ImportError:
        return row("flops", f"achieved FLOP/s {arch}", float("nan"), "FLOP/s", arch=arch, context=T,
                   detail="not available: no mnemoscope.measure.flops")
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


def section_fixed(b: Bench) -> list[dict]:
    """The harness's fixed per-step cost, measured where compute is next to nothing."""
    r, b.fixed_ms = bench_fixed_cost(b.args, b.device, b.split, b.folder)
    b.log(f"fixed cost: harness {r['value']:.2f} ms, bare {r['reference_value']:.2f} ms per step")
    return [r]


def section_train(b: Bench) -> list[dict]:
    """Training throughput, harness overhead, our transformer against GPT-2, at every size and context."""
    rows = []
    for arch in b.args.archs:
        for params in b.sizes:
            for T in b.contexts:
                out, tok_s = bench_training(arch, params, T, max(1, b.tokens_per_step // T), b.args, b.device,
                                            b.split, b.folder, fixed_ms=b.fixed_ms)
                b.harness_speed[(arch, params, T)] = tok_s
                rows += out
                b.log(f"train {arch} {fmt_count(params)} T={T}: " + ", ".join(
                    f"{r['section']} {r['ratio']:.3f} [{r['ratio_low']:.3f}, {r['ratio_high']:.3f}] ({r['reps']} rounds)"
                    for r in out if not math.isnan(r["ratio"])))
    return rows


def study_step() -> int:
    """Tokens per training step (B x T) of the default study: its batch at text's context."""
    T = TASKS.get("text").default_context
    return auto_batch_size(STUDY.tokens, T) * T


def default_shape(b: Bench) -> tuple[int, int, int]:
    """The default study's shape (its size, text's context, its automatic batch), where users
    train: (params, T, B), from StudyConfig and the text task, never retyped."""
    defaults = StudyConfig()
    T = b.contexts[0] if b.args.tiny else TASKS.get("text").default_context
    params = b.sizes[0] if b.args.tiny else defaults.params[0]
    B = max(1, b.tokens_per_step // T) if b.args.tiny else auto_batch_size(defaults.tokens, T)
    return params, T, B


def section_default(b: Bench) -> list[dict]:
    """The harness's overhead at the default study's shape."""
    params, T, B = default_shape(b)
    rows = []
    for arch in b.args.archs:
        out, _ = bench_training(arch, params, T, B, b.args, b.device, b.split, b.folder, fixed_ms=b.fixed_ms,
                                section="default shape")
        rows += out
        b.log(f"default shape {arch}: {out[0]['ratio']:.3f} [{out[0]['ratio_low']:.3f}, {out[0]['ratio_high']:.3f}]")
    return rows


def section_variants(b: Bench) -> list[dict]:
    """What each of the harness's extras costs, one at a time, at the default study's shape."""
    params, T, B = default_shape(b)
    arch = "lstm" if "lstm" in b.args.archs else b.args.archs[0]  # the shortest steps: extras weigh most
    rows = []
    for variant in VARIANTS:
        rows += bench_training(arch, params, T, B, b.args, b.device, b.split, b.folder, variant=variant,
                               section="train" if b.args.tiny else "default shape")[0]
        b.log(f"variant {variant}: {rows[-1]['ratio']:.3f} [{rows[-1]['ratio_low']:.3f}, {rows[-1]['ratio_high']:.3f}]")
    return rows


def section_flops(b: Bench) -> list[dict]:
    """Achieved FLOP/s against the measured matmul peak (the largest size, the shortest context)."""
    peak_dtype = torch.bfloat16 if b.cuda else torch.float32  # the harness trains in bf16 autocast on CUDA
    peak_name = str(peak_dtype).replace("torch.", "")
    n = 256 if b.args.tiny else 8192 if b.cuda else 2048
    peak, peak_rounds = matmul_peak(b.device, peak_dtype, n, b.args.rounds)
    rows = [row("flops", f"measured {peak_name} matmul peak", peak, "FLOP/s", reps=peak_rounds,
                detail=f"{n} x {n} matmul, best round")]
    params, T = b.sizes[-1], b.contexts[0]
    for arch in b.args.archs:
        key = (arch, params, T)
        if key not in b.harness_speed:  # the train section was skipped: measure this one setting
            b.harness_speed[key] = bench_training(arch, params, T, max(1, b.tokens_per_step // T), b.args, b.device,
                                                  b.split, b.folder)[1]
        rows.append(bench_flops(arch, params, T, b.harness_speed[key], peak, peak_name, b.device))
    b.log("flops done")
    return rows
