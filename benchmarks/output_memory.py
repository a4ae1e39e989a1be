"""The output layer at large vocabularies: the loss in chunks against full logits, in paired
rounds, and the peak memory of each (section ``output``)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import torch

from benchmarks import output_layer as ol
from benchmarks.common import alternate, Bench, compared, fmt_count, paired_ratio, REPO, row
from benchmarks.references import stamp
from mnemoscope.contract.sizing import count_params
from mnemoscope.training.train import fit


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


def section_output(b: Bench) -> list[dict]:
    """The output layer at large vocabularies: chunked loss against full logits."""
    rows = bench_output_layer(b.args, b.device, b.mode)
    b.log("output layer: " + ", ".join(f"{r['ratio']:.3f}" for r in rows if r["section"] == "output layer"))
    return rows


def header_line(mode: str) -> str:
    """The line under the table that gives the output-layer rows' own shape."""
    vocabs, T_out, B_out, params_out, chunk_out = OUTPUT_SHAPES[mode]
    return (f"The output-layer rows have their own shape: the transformer at {fmt_count(params_out)} "
            f"parameters, T={T_out}, {B_out} sequences per step ({B_out * T_out} tokens), "
            f"V = {' / '.join(map(str, vocabs))}, chunks of at most "
            f"{fmt_count(chunk_out or ol.LOSS_CHUNK_ELEMENTS)} logits; each round is one step of each "
            f"side (chunked, full logits, the output layer alone), after one untimed round.  ")
