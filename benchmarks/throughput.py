"""Training throughput (tokens/s) of architectures at a matched size: forward, backward, AdamW step.

    nice -n 19 python benchmarks/throughput.py --params 300k --context 256 --steps 5

Random tokens (speed does not depend on the data); the first step is a warm-up and is not timed.
Both wall-clock and CPU-time rates are printed: on a shared, busy machine the wall clock measures
the neighbours, while tokens per CPU-second (``time.process_time``, all threads summed) with
``--threads 1`` is the rate of one free core.
"""
from __future__ import annotations

import argparse
import time

import torch

from mnemoscope.contract.model import build
from mnemoscope.contract.sizing import count_params, size_for
from mnemoscope.registry import ARCHITECTURES
from mnemoscope.specs import parse_count, parse_spec
from mnemoscope.training.train import masked_cross_entropy


def throughput(spec: str, params: int, context: int, batch_size: int, steps: int, vocab_size: int = 256) -> dict:
    cls, _, options = parse_spec(spec, ARCHITECTURES)
    config = size_for(cls, params, vocab_size, context, options)
    torch.manual_seed(0)
    model = build(cls, vocab_size, context, config).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, vocab_size, (batch_size, context + 1))
    mask = torch.ones(batch_size, context, dtype=torch.bool)
    for step in range(steps + 1):
        if step == 1:
            start, cpu_start = time.perf_counter(), time.process_time()
        loss = masked_cross_entropy(model(x[:, :-1]), x[:, 1:], mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    tokens = steps * batch_size * context
    return {"arch": spec, "config": config, "params": count_params(model), "tokens_per_s": tokens / seconds,
            "tokens_per_cpu_s": tokens / cpu_seconds}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", nargs="+", default=None, help="default: every registered architecture")
    p.add_argument("--params", default="300k")
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    for spec in args.arch or ARCHITECTURES.names():
        r = throughput(spec, parse_count(args.params), args.context, args.batch_size, args.steps)
        print(f"{r['arch']:<22} {r['params']:>9,d} params  {r['tokens_per_s']:>9,.0f} tokens/s wall  "
              f"{r['tokens_per_cpu_s']:>9,.0f} tokens/CPU-s  {r['config']}", flush=True)


if __name__ == "__main__":
    main()
