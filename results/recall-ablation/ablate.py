"""Which part of a transformer makes it learn associative recall at CPU budgets: one run per variant
and seed, trained by the harness's own loop (``mnemoscope.train.fit``: the same data order,
optimizer, schedule and clipping as a study), with the recall accuracy at each key-query distance
measured on the validation split every ``--every`` steps.

    python results/recall-ablation/ablate.py                 # every variant, seed 0 (resumes)
    python results/recall-ablation/ablate.py --variant transformer --seed 1 2
    python results/recall-ablation/ablate.py --summarize     # curves.parquet, the figure, table.md

Each run writes ``curves/<variant>-s<seed>.csv`` when it ends; a finished one is skipped.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from mnemoscope.measure.evaluate import greedy_hits  # noqa: E402
from mnemoscope.contract.model import build  # noqa: E402
from mnemoscope.registry import ARCHITECTURES, TASKS  # noqa: E402
from mnemoscope.contract.sizing import count_params, size_for  # noqa: E402
from mnemoscope.specs import format_count, parse_count  # noqa: E402
from mnemoscope.tasks.probe_views import recall_distances  # noqa: E402
from mnemoscope.training.train import TrainConfig, fit  # noqa: E402
from mnemoscope.contract.windows import eval_offsets, window_tokens  # noqa: E402
from variants import Switched  # noqa: E402

# variant: (architecture, fixed config, hyperparameters other than the transformer's own)
VARIANTS = {
    "transformer_gpt2": ("transformer_gpt2", {"n_layer": 4}, {}),
    "no biases": (Switched, {"n_layer": 4, "bias": False}, {}),
    "llama init": (Switched, {"n_layer": 4, "init": "llama"}, {}),
    "rmsnorm + swiglu": (Switched, {"n_layer": 4, "norm": "rms", "mlp": "swiglu"}, {}),
    "all llama parts": (Switched, {"n_layer": 4, "norm": "rms", "mlp": "swiglu", "bias": False, "init": "llama"}, {}),
    "2 layers": ("transformer_gpt2", {"n_layer": 2}, {}),
    "lr 1e-3": ("transformer_gpt2", {"n_layer": 4}, {"lr": 1e-3}),
    "qk-norm": (Switched, {"n_layer": 4, "qknorm": True}, {}),
    "hf:llama": ("hf:llama", {"num_hidden_layers": 4}, {}),
    # GPT-2 + Primer's convolutions (the built-in's version 2: GPT-2's N(0, 0.02) start)
    "convolutions": ("transformer", {"n_layer": 4, "init": "gpt2"}, {}),
    "convolutions, rotary on 1/4": ("transformer", {"n_layer": 4, "rotary_fraction": 0.25, "init": "gpt2"}, {}),
    "convolutions, no positions": ("transformer", {"n_layer": 4, "rotary_fraction": 0.0, "init": "gpt2"}, {}),
    "convolutions, lr 6e-3": ("transformer", {"n_layer": 4, "init": "gpt2"}, {"lr": 6e-3}),
    # the built-in transformer (version 3): q, k, v started at N(0, 1/width); the same draws as the
    # runs made before it was the default (GPT-2's start, then q, k, v drawn again)
    "convolutions, qkv init 1/width": ("transformer", {"n_layer": 4}, {}),
}
SLUG = {name: name.replace(" + ", "-").replace(", ", "-").replace(" ", "-").replace(":", "-").replace("/", "of")
        for name in VARIANTS}


class RecallAccuracy(L.Callback):
    """Accuracy of the greedy answer at every query distance, on the validation split."""

    def __init__(self, split, context_length: int, every: int, sequences: int):
        self.split, self.T, self.every, self.n = split, context_length, every, sequences
        offsets = eval_offsets(split, context_length, sequences)
        self.rows, self.train_seconds, self._t = [], 0.0, None

    def measure(self, model, step: int, tokens: int):
        _, hits, _, mask, _ = greedy_hits(model, self.split, self.T, self.n)
        windows = window_tokens(self.split, eval_offsets(self.split, self.T, self.n), self.T)
        dist = recall_distances(windows, mask)
        for d in sorted(set(dist[mask].tolist())):
            sel = mask & (dist == d)
            self.rows.append({"step": step, "tokens": tokens, "distance": int(d), "accuracy": float(hits[sel].mean()),
                              "queries": int(sel.sum()), "train_seconds": round(self.train_seconds, 1)})

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.train_seconds += time.perf_counter() - self._t
        step = trainer.global_step
        if step % self.every == 0 or step == trainer.max_steps:
            self.measure(pl_module.model, step, step * len(batch[0]) * self.T)


def run(variant: str, seed: int, tokens: int, batch: int, params: int, every: int, out: Path) -> None:
    arch, fixed, hp = VARIANTS[variant]
    task = TASKS.get("recall")(context_length=256)
    splits = task.splits()
    cls = ARCHITECTURES.get(arch) if isinstance(arch, str) else arch
    config = size_for(cls, params, task.vocab_size, task.context_length, dict(fixed))
    torch.manual_seed(seed)
    model = build(cls, task.vocab_size, task.context_length, config)
    own = {k: v for k, v in getattr(cls, "default_hparams", {}).items() if k in ("lr", "warmup_fraction")}
    cfg = TrainConfig(tokens=tokens, batch_size=batch, seed=seed, **{**own, **hp})
    acc = RecallAccuracy(splits["validation"], task.context_length, every, 256)
    acc.measure(model, 0, 0)
    with tempfile.TemporaryDirectory() as logs:
        fit(model, splits["train"], splits["validation"], task.context_length, cfg, Path(logs), callbacks=[acc],
            progress=False)
    df = pd.DataFrame(acc.rows).assign(variant=variant, seed=seed, tokens_budget=tokens, arch=str(arch if isinstance(arch, str) else arch.__name__),
                                        config=str(config), params=count_params(model), lr=cfg.lr, batch=batch)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / curve_name(variant, seed, params, tokens), index=False)
    final = df[df.step == df.step.max()].set_index("distance")["accuracy"].round(2).to_dict()
    print(f"{variant} seed {seed}: {final} ({acc.train_seconds:.0f} s of training)", flush=True)


def curve_name(variant: str, seed: int, params: int, tokens: int) -> str:
    """curves/<variant>-s<seed>.csv at the default budget (300k parameters, 2M tokens), else with it."""
    budget = "" if (params, tokens) == (300_000, 2_000_000) else f"-{format_count(params)}-{format_count(tokens)}"
    return f"{SLUG[variant]}{budget}-s{seed}.csv"


def summarize(out: Path) -> None:
    import matplotlib.pyplot as plt
    import seaborn as sns

    parts = []
    for path in sorted((out / "curves").glob("*.csv")):
        d = pd.read_csv(path)
        budget = path.stem.rsplit("-s", 1)[0].removeprefix(SLUG[d["variant"].iloc[0]]).strip("-")  # '' or '100k-4M'
        parts.append(d.assign(budget=budget.replace("-", ", ") or "300k, 2M"))
    df = pd.concat(parts, ignore_index=True).drop(columns=["tokens_budget"], errors="ignore")
    df["variant"] = df["variant"] + df["budget"].map(lambda b: "" if b == "300k, 2M" else f" ({b})")
    df.to_parquet(out / "curves.parquet", index=False)
    order = [v for base in VARIANTS for v in sorted(set(df.variant), key=lambda x: (x != base, x))
             if v == base or v.startswith(base + " (")]
    df["distance d"] = df["distance"].astype(str)
    df["training tokens (M)"] = df["tokens"] / 1e6
    grid = sns.relplot(df, x="training tokens (M)", y="accuracy", hue="distance d", style="seed", col="variant",
                       col_order=order, col_wrap=min(4, len(order)), kind="line", palette="viridis",
                       hue_order=[str(d) for d in sorted(df["distance"].unique())], height=2.6, aspect=1.2)
    grid.set_titles("{col_name}")
    grid.set_axis_labels("training tokens (millions)", "recall accuracy")
    grid.figure.savefig(out / "accuracy_vs_steps.png", dpi=110)
    last = df[df.step == df.groupby(["variant", "seed"]).step.transform("max")]
    table = last.pivot_table(index=["variant", "seed"], columns="distance", values="accuracy").round(2)
    table = table.reindex([(v, s) for v in order for s in sorted(set(last[last.variant == v].seed))])
    table.columns = [f"d={c}" for c in table.columns]
    table["batch"] = last.groupby(["variant", "seed"]).batch.first().reindex(table.index)
    secs = last.groupby(["variant", "seed"]).train_seconds.first()
    table["train s (loaded machine)"] = secs.reindex(table.index).round(0).astype(int)
    flat = table.reset_index()
    rows = ["| " + " | ".join(map(str, flat.columns)) + " |", "|" + " --- |" * len(flat.columns)]
    rows += ["| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in r) + " |" for r in flat.itertuples(index=False)]
    (out / "table.md").write_text("\n".join(rows) + "\n")
    print(table.to_string())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--seed", nargs="+", type=int, default=[0])
    ap.add_argument("--tokens", default="2M", help="training tokens per run (default 2M: the default study's)")
    ap.add_argument("--batch", type=int, default=4, help="sequences per step (default 4: the default study's auto batch)")
    ap.add_argument("--params", default="300k")
    ap.add_argument("--every", type=int, default=125, help="steps between measurements")
    ap.add_argument("--summarize", action="store_true")
    a = ap.parse_args()
    if a.summarize:
        return summarize(HERE)
    torch.set_num_threads(1)
    for v in a.variant:
        for s in a.seed:
            if (HERE / "curves" / curve_name(v, s, parse_count(a.params), parse_count(a.tokens))).exists():
                continue
            run(v, s, parse_count(a.tokens), a.batch, parse_count(a.params), a.every, HERE / "curves")


if __name__ == "__main__":
    main()
