"""Build the committed leaderboard (results/leaderboard) with the settings of ``study.py leaderboard``
(mnemoscope.settings.LeaderboardSettings): every built-in and the Hugging Face families below, each
trained on recall (the default study's settings) and on books in BPE tokens.

    python results/leaderboard/build.py --cost     # cost per 100k training tokens of each family (cost.csv)
    python results/leaderboard/build.py            # the build: resumable, rows and table written as it goes

``--cost`` times a few optimizer steps of each family at the committed sizes with one torch thread,
in CPU seconds (so a shared machine gives what an idle one takes; run it under ``nice -n 10``), and
writes cost.csv: seconds per 100k training tokens, and the estimated training time of its row. The build leaves out the families whose row
would take over MAX_ROW_SECONDS, listing them as not measured with that cost. A stopped build
continues where it stopped (each part is a study; finished runs are kept).
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from mnemoscope.api import leaderboard_study, run_leaderboard
from mnemoscope.contract.model import token_losses
from mnemoscope.errors import UserError
from mnemoscope.registry import ARCHITECTURES
from mnemoscope.report.leaderboard import PARTS
from mnemoscope.study.config import plan
from mnemoscope.study.runner import Study

HERE = Path(__file__).resolve().parent
HF = ["hf:llama", "hf:gpt2", "hf:gpt_neox", "hf:mamba2", "hf:rwkv", "hf:xlstm", "hf:recurrent_gemma", "hf:jamba",
      "hf:bamba"]
MAX_ROW_SECONDS = 7200  # a row estimated to train longer than this on one thread is listed, not trained
STEPS, WARMUP = 8, 2  # timed optimizer steps of --cost, after the warm-up ones


def architectures() -> list[str]:
    """Every built-in (``study.py list``), then the Hugging Face families."""
    return [*ARCHITECTURES.names(), *HF]


def step_seconds(part: str, arch: str) -> tuple[float, int]:
    """(seconds per 100k training tokens, the part's training tokens) of ``arch`` at the committed size."""
    config = leaderboard_study(part, arch)
    with tempfile.TemporaryDirectory() as tmp:
        study = Study(config, Path(tmp))
        run = plan(config)[0]
        task = study.task(run.task)
        cls, _, model = study.model(run)
        cfg = study.hparams(cls, arch, task.context_length)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
        x = torch.randint(0, task.vocab_size, (cfg.batch_size, task.context_length + 1))
        for i in range(WARMUP + STEPS):
            if i == WARMUP:
                start = time.process_time()  # CPU time: on a shared machine, what an idle one takes
            token_losses(model, x[:, :-1], x[:, 1:]).mean().backward()
            opt.step()
            opt.zero_grad()
        per_token = (time.process_time() - start) / STEPS / (cfg.batch_size * task.context_length)
    return per_token * 1e5, config.tokens


def measure_costs(archs: list[str]) -> pd.DataFrame:
    """cost.csv: each family's seconds per 100k training tokens on each part, one torch thread."""
    torch.set_num_threads(1)
    rows = []
    for arch in archs:
        row = {"arch": arch}
        for part in PARTS:
            try:
                seconds, tokens = step_seconds(part, arch)
                row[f"{part}_s_per_100k"] = round(seconds, 2)
                row[f"{part}_train_s"] = round(seconds * tokens / 1e5)
            except UserError as exc:
                row[f"{part}_error"] = " ".join(str(exc).split())
        row["row_train_s"] = sum(row.get(f"{p}_train_s", math.nan) for p in PARTS)
        print(row, flush=True)
        rows.append(row)
    table = pd.DataFrame(rows)
    table.to_csv(HERE / "cost.csv", index=False)
    ok = table["row_train_s"] <= MAX_ROW_SECONDS
    print(f"estimated training, one thread: {table.loc[ok, 'row_train_s'].sum() / 3600:.1f} h for {int(ok.sum())} rows; "
          f"over {MAX_ROW_SECONDS} s a row: {', '.join(table.loc[~ok, 'arch']) or 'none'}")
    return table


def prohibitive() -> list[dict]:
    """The families cost.csv puts over MAX_ROW_SECONDS, as not-measured lines with their cost."""
    if not (HERE / "cost.csv").is_file():
        return []
    cost = pd.read_csv(HERE / "cost.csv")
    out = []
    for r in cost.to_dict("records"):
        if pd.notna(r["row_train_s"]) and r["row_train_s"] > MAX_ROW_SECONDS:
            parts = ", ".join(f"{p} {r[f'{p}_s_per_100k']:.0f} s per 100k tokens" for p in PARTS)
            out.append({"arch": r["arch"], "part": "recall and books", "seconds": f"{r['row_train_s']:.0f} s estimated",
                        "reason": f"too slow on this CPU in its PyTorch path ({parts}, one thread; over "
                                  f"{MAX_ROW_SECONDS} s a row)"})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cost", action="store_true", help="measure each family's cost (cost.csv) and stop")
    p.add_argument("--arch", nargs="+", help="only these architectures (default: all of the board's)")
    args = p.parse_args(argv)
    archs = args.arch or architectures()
    if args.cost:
        measure_costs(archs)
        return 0
    skipped = prohibitive()
    todo = [a for a in archs if a not in {s["arch"] for s in skipped}]
    run_leaderboard(todo, HERE, HERE, progress="lines", committed=True, not_measured=skipped)
    return 0


if __name__ == "__main__":
    sys.exit(main())
