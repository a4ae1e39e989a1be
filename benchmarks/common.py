"""What every section of the benchmarks shares: the defaults, synthetic data and models, paired
rounds against references, the clock, ratios with their bootstrap interval, the table's rows."""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import seaborn as sns
import torch
import lightning as L

from benchmarks.references import BareLoop, stamp
from mnemoscope.measure.bootstrap import LEVEL
from mnemoscope.contract.model import build
from mnemoscope.registry import ARCHITECTURES
from mnemoscope.contract.sizing import size_for
from mnemoscope.contract.task import TokenSplit
from mnemoscope.contract.windows import window_batch


REPO = Path(__file__).resolve().parent.parent

ARCHS = ["transformer", "lstm", "cnn"]
VOCAB = 256
#: (sizes in non-embedding parameters, context lengths) per mode
SHAPES = {"full": ([1_000_000, 5_000_000], [256, 1024]), "tiny": ([20_000, 50_000], [32, 64])}
OVERHEAD_TARGET = 0.05  # harness at most 5% slower than a bare loop
EVAL_TARGET = 0.9  # per-position evaluation at least 0.9x a bare forward pass
GPU_STEP_TOKENS = 32768  # B x T of a training step on a GPU
PRECISION = 0.02  # a cell's rounds stop once every interval is within this fraction of its ratio
ROUND_BOOT = 2000  # bootstrap replicates of a ratio's interval over rounds


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
    precision: float = PRECISION

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


def paired_ratio(ours: list[np.ndarray], reference: list[np.ndarray], level: float = LEVEL, n_boot: int = ROUND_BOOT):
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


# -- shared by the sections --------------------------------------------------------------------------
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


@dataclasses.dataclass
class Bench:
    """What every section reads: the flags, and the machine, data and shapes they resolve to. The
    training sections leave here what later ones use (``fixed_ms``, ``harness_speed``)."""
    args: Any
    device: torch.device
    mode: str  # "tiny" or "full"
    split: TokenSplit
    folder: Path  # a temporary folder for the sections' files
    sizes: list[int]
    contexts: list[int]
    tokens_per_step: int
    log: Callable[[str], None]
    fixed_ms: float | None = None  # the harness's fixed extra cost per step (section fixed)
    harness_speed: dict = dataclasses.field(default_factory=dict)  # (arch, params, T) -> tokens/s (section train)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"
