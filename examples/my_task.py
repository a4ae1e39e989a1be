"""A task in one file: ``python study.py --arch transformer lstm --task examples/my_task.py:Echo``.

Each sequence is m random symbols, a separator, then the same m symbols again. Only the echo
counts as targets, so the loss falls to zero exactly where a model can reach back m + 1 tokens.
The task brings its own report section (``report_view``), as any task may.

What a task provides (see docs/tasks.md): ``vocab_size``, ``default_context``, and
``build_splits()`` returning train / validation / test :class:`mnemoscope.TokenSplit`s made from
disjoint documents; everything else (caching with a checksum, windows, scoring) is the harness's.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from mnemoscope import Task
from mnemoscope.render.figures import html_table, paragraph
from mnemoscope.contract.task import check_options, sequences_split, token_dtype

SEEDS = {"train": 0, "validation": 1, "test": 2}  # one generator per split: no sequence is shared


class Echo(Task):
    """m random symbols, a separator, the same m symbols again; loss on the echo only."""

    default_context = 64  # a sequence is context + 1 tokens: m = context // 2 symbols, the separator, the echo
    version = "1"
    example = {"context_length": 32, "symbols": 8, "train_tokens": 4000, "eval_sequences": 16}
    view_title = "loss on the echo"

    def __init__(self, source=None, context_length=None, symbols: int = 16, train_tokens: int = 1_000_000,
                 eval_sequences: int = 256, **options):
        check_options("echo", options, set())
        super().__init__(source=source, context_length=context_length, symbols=int(symbols),
                         train_tokens=int(train_tokens), eval_sequences=int(eval_sequences))
        self.vocab_size = int(symbols) + 1  # the symbols and the separator

    def build_splits(self):
        length = self.context_length + 1
        m = (length - 1) // 2
        sep = self.vocab_size - 1
        out = {}
        for split, seed in SEEDS.items():
            rng = np.random.default_rng([seed, 7])
            n = max(1, self.options["train_tokens"] // length) if split == "train" else self.options["eval_sequences"]
            first = rng.integers(0, sep, size=(n, m))
            rest = length - 1 - m  # the echo (the last sequence token may fall one short of a full echo)
            tokens = np.concatenate([first, np.full((n, 1), sep), first[:, :rest]], axis=1)
            mask = np.zeros_like(tokens, dtype=bool)
            mask[:, m + 1:] = True
            out[split] = sequences_split(tokens.astype(token_dtype(self.vocab_size)), [f"echo:{split}"], mask)
        return out

    def decode(self, tokens):
        return " ".join("|" if int(t) == self.vocab_size - 1 else str(int(t)) for t in tokens)

    def encode(self, text: str) -> np.ndarray:
        return np.array([self.vocab_size - 1 if t == "|" else int(t) for t in text.split()], dtype=np.int64)

    def report_view(self, folder, runs, pp) -> str:
        """A table: each run's mean loss on the echo (from its stored per-sequence losses)."""
        rows = []
        for r in runs.itertuples():
            losses, mask = folder.run_losses(r.run_id)
            rows.append({"arch": r.arch, "params": r.params, "seed": r.seed,
                         "loss on the echo (nats)": float((losses * mask).sum() / max(mask.sum(), 1))})
        return (paragraph(f"Chance is log({self.options['symbols']}) = {np.log(self.options['symbols']):.3f} nats; "
                          "a model that reaches back far enough scores near 0.") + html_table(pd.DataFrame(rows)))
