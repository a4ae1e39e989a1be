"""The output layer at large vocabularies: one training step (or one evaluation batch) of the
transformer with the loss over the whole (B, T, V) logits against the loss in chunks of
positions (``mnemoscope.contract.model.token_losses``), and the output layer's share of a step.

``benchmarks/run.py`` times these in paired rounds (its ``output`` section). Peak memory is
measured here, one process per setting, so that nothing else lives in it:

    MALLOC_MMAP_THRESHOLD_=131072 python -m benchmarks.output_layer --vocab 50257 --context 1024 --batch 4 --params 1000000

prints a JSON line per measurement (training steps, then evaluation batches; chunked, then
full logits): the peak memory above what the process held just before, after a first, untimed
step (CUDA: ``torch.cuda.max_memory_allocated``; CPU: the
resident set's high-water mark, VmHWM, reset through ``/proc/self/clear_refs``; Linux only).
"""
from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F

from mnemoscope.contract.model import LOSS_CHUNK_ELEMENTS, build, token_losses
from mnemoscope.contract.sizing import size_for
from mnemoscope.registry import ARCHITECTURES
from mnemoscope.training.train import masked_mean


def make(vocab: int, T: int, B: int, params: int, device, seed: int = 0):
    """(model, optimizer, (x, y, mask)): the transformer sized to ``params`` at this vocabulary
    (learned positions, as the other benchmark rows), AdamW, one random batch on the device."""
    cls = ARCHITECTURES.get("transformer")
    torch.manual_seed(seed)
    model = build(cls, vocab, T, size_for(cls, params, vocab, T, {"pos": "learned"})).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(0, vocab, (B, T + 1), generator=g).to(device)
    return model, opt, (w[:, :-1], w[:, 1:], torch.ones(B, T, dtype=torch.bool, device=device))


def autocast(device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def train_step(model, opt, batch, chunk_elements, device) -> None:
    """Forward, loss (chunked or over the whole logits), backward, AdamW step."""
    x, y, m = batch
    opt.zero_grad(set_to_none=True)
    with autocast(device):
        loss = masked_mean(token_losses(model, x, y, chunk_elements), m)
    loss.backward()
    opt.step()


@torch.no_grad()
def eval_step(model, batch, chunk_elements, device) -> None:
    x, y, _ = batch
    with autocast(device):
        token_losses(model, x, y, chunk_elements)


def head_inputs(model, batch, device):
    """The final hidden states of the batch, detached, as the output layer's input."""
    with torch.no_grad(), autocast(device):
        h = model.features(batch[0])
    return h.detach().float().requires_grad_()


def head_step(model, h, y, device) -> None:
    """The output layer alone: logits of the whole batch, cross-entropy, backward (what the
    unchunked step spends on it)."""
    model.zero_grad(set_to_none=True)
    h.grad = None
    with autocast(device):
        loss = F.cross_entropy(model.head(h).float().flatten(0, 1), y.flatten())
    loss.backward()


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def probe(vocab: int, T: int, B: int, params: int, chunk_elements: int = LOSS_CHUNK_ELEMENTS, steps: int = 2) -> list[dict]:
    """Peak memory (MiB) of ``steps`` training steps, then of ``steps`` evaluation batches, each
    with the chunked loss and then with the full logits, above what the process held before."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, opt, batch = make(vocab, T, B, params, device)
    out = []
    for mode in ("train", "eval"):
        for chunked in (True, False):
            chunk = chunk_elements if chunked else None

            def step(b):
                if mode == "train":
                    train_step(model, opt, b, chunk, device)
                else:
                    eval_step(model, b, chunk, device)

            # one step first: the kernels' code, the allocator's pools and the optimizer's state are
            # then in place, and the peak below is the steady step's own memory (on a CPU the resident
            # set's high-water mark is reset by writing 5 to /proc/self/clear_refs)
            step(batch)
            if device.type == "cuda":
                torch.cuda.synchronize()
                before = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
            else:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
                # the high-water mark just reset, not the resident set read a moment later: the set can
                # lose a page in between (a test once saw -0.004 MiB), the mark never falls
                before = _rss_kib("VmHWM") * 1024
            for _ in range(steps):
                step(batch)
            if device.type == "cuda":
                torch.cuda.synchronize()
                peak = torch.cuda.max_memory_allocated()
            else:
                peak = _rss_kib("VmHWM") * 1024
            out.append({"vocab": vocab, "context": T, "batch": B, "mode": mode, "chunked": chunked,
                        "device": device.type, "before_mib": before / 2**20, "peak_mib": peak / 2**20,
                        "step_mib": (peak - before) / 2**20, "logits_mib": B * T * vocab * 4 / 2**20})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", type=int, required=True)
    p.add_argument("--context", type=int, required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--params", type=int, required=True)
    p.add_argument("--chunk-elements", type=int, default=LOSS_CHUNK_ELEMENTS, help="logits per chunk")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    for result in probe(a.vocab, a.context, a.batch, a.params, a.chunk_elements):
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
