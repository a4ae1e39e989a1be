#!/usr/bin/env python3
"""What context use through training and mid-run checkpoints cost, at the shapes they run at.

    python -m benchmarks.history                  the default study's and books-long's shapes (minutes)
    python -m benchmarks.history --tiny --out DIR tiny shapes, in seconds (the tests run this)

Per shape, measured in one process, in rounds that alternate the parts (so a busy machine slows
them alike): the time of one training step (``fit``, the harness's own loop), of one kept step's
scoring (the test windows at every position and the weights written, as ``TrainingHistory`` does)
and of one mid-run checkpoint (``trainer.save_checkpoint`` through ``AtomicCheckpointIO``). From
them, the share of a run's wall time the through-training scoring takes with the default schedule
(``history`` kept steps, the last one being the final evaluation, which a run makes anyway):
(k - 1) * scoring / (steps * step + (k - 1) * scoring), and the disk of the kept weights. A kill
loses at most one checkpoint interval of training (the run resumes from the last checkpoint):
the time lost is bounded by ``--checkpoint-every``, plus the one step under way.

Writes ``history.csv`` and ``history.md`` under ``--out`` (default ``results/benchmarks``).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mnemoscope.training.checkpoints import AtomicCheckpointIO
from mnemoscope.measure.evaluate import per_position_losses
from mnemoscope.measure.history import HISTORY_POINTS, history_steps, window_stride, write_step
from mnemoscope.contract.model import build, count_params, size_for
from mnemoscope.registry import ARCHITECTURES, TASKS
from mnemoscope.settings import STUDY
from mnemoscope.storage.run_folder import RunFolder
from mnemoscope.contract.task import TokenSplit
from mnemoscope.training.train import TrainConfig, auto_batch_size, fit



def default_study(arch: str) -> tuple:
    """The default study's run of ``arch`` on recall, its shape taken from the settings (its size,
    recall's context, the automatic batch, its tokens, kept steps and test windows)."""
    T = TASKS.get("recall").default_context
    return (f"default study, {arch} on recall", arch, STUDY.params[0], 256, T, auto_batch_size(STUDY.tokens, T),
            STUDY.tokens, HISTORY_POINTS, STUDY.eval_sequences)


#: (name, arch, non-embedding params, vocabulary, context, batch, tokens of the run, kept steps, final test windows)
SHAPES = {
    "full": [default_study("transformer"), default_study("lstm"),
             ("books-long, transformer", "transformer", 1_000_000, 1024, 1024, 16, 20_000_000, 10, 256),
             ("books-long, lstm", "lstm", 1_000_000, 1024, 1024, 16, 20_000_000, 10, 256)],
    "tiny": [("tiny transformer", "transformer", 20_000, 64, 32, 4, 40_000, HISTORY_POINTS, 16),
             ("tiny lstm", "lstm", 20_000, 64, 32, 4, 40_000, HISTORY_POINTS, 16)],
}


def split_of(vocab: int, n: int, seed: int) -> TokenSplit:
    return TokenSplit(tokens=np.random.default_rng(seed).integers(0, vocab, n).astype(np.int64))


def measure(name, arch, params, vocab, T, B, tokens, points, windows, rounds: int, folder: Path) -> dict:
    cls = ARCHITECTURES.get(arch)
    torch.manual_seed(0)
    model = build(cls, vocab, T, size_for(cls, params, vocab, T, {}))
    windows = -(-windows // window_stride(windows))  # a kept step scores every k-th of the final windows
    train, test = split_of(vocab, 200 * T * B, 1), split_of(vocab, (windows + 1) * (T + 1), 2)
    # a step's time: the difference of two fits, so the fit's fixed cost cancels (tiny steps: many of them)
    few, more = (2, 6) if T >= 256 else (2, 42)
    step_s, score_s, ckpt_s = [], [], []
    for r in range(rounds):
        seconds = {}
        for n in (few, more):
            cfg = TrainConfig(tokens=n * B * T, batch_size=B, seed=r)
            t0 = time.perf_counter()
            lm, trainer = fit(model, train, train, T, cfg, folder / f"logs{r}-{n}", progress=False)
            seconds[n] = time.perf_counter() - t0
        step_s.append((seconds[more] - seconds[few]) / (more - few))
        t0 = time.perf_counter()
        losses, mask = per_position_losses(model, test, T, windows, max(B, 32))
        write_step(folder / "run", r, r, losses, mask, model.state_dict())
        score_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        AtomicCheckpointIO().save_checkpoint(trainer._checkpoint_connector.dump_checkpoint(False), folder / RunFolder.LAST_CHECKPOINT)
        ckpt_s.append(time.perf_counter() - t0)
    n_steps = max(1, tokens // (B * T))
    k = len(history_steps(n_steps, points))
    step, score, ckpt = float(np.median(step_s)), float(np.median(score_s)), float(np.median(ckpt_s))
    weights_mb = RunFolder(folder / "run").step_path(0, ".pt").stat().st_size / 1e6
    return {"shape": name, "params": count_params(model, non_embedding=True), "context": T, "batch": B,
            "run_steps": n_steps, "kept_steps": k, "windows": windows, "step_s": step, "scoring_s": score,
            "history_share": (k - 1) * score / (n_steps * step + (k - 1) * score),
            "checkpoint_s": ckpt, "checkpoint_mb": (folder / RunFolder.LAST_CHECKPOINT).stat().st_size / 1e6,
            "kept_weights_mb": weights_mb * (k - 1), "rounds": rounds}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", default="results/benchmarks")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, shape in enumerate(SHAPES["tiny" if args.tiny else "full"]):
            rows.append(measure(*shape, args.rounds, Path(tmp) / str(i)))
            print(rows[-1], flush=True)
    df = pd.DataFrame(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "history.csv", index=False)
    lines = ["# Through-training scoring and checkpoints: what they cost", "",
             f"`python -m benchmarks.history{' --tiny' if args.tiny else ''}`, one torch thread, "
             f"median of {args.rounds} rounds; a step's time is the difference of two fits of different lengths (2 and 6 steps; tiny: 2 and 42), over the steps between.", "",
             "| shape | params | T | batch | steps | kept steps | windows | s/step | s/kept step | history's share of the run | s/checkpoint | checkpoint MB | kept weights MB |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['shape']} | {r['params']:,} | {r['context']} | {r['batch']} | {r['run_steps']} | "
                     f"{r['kept_steps']} | {r['windows']} | {r['step_s']:.3f} | {r['scoring_s']:.2f} | "
                     f"{r['history_share']:.1%} | {r['checkpoint_s']:.3f} | {r['checkpoint_mb']:.1f} | "
                     f"{r['kept_weights_mb']:.0f} |")
    (out / "history.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
