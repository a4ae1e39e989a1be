"""Recall against state: the distance at which each run's recall falls below half, against the
numbers of state it carries per sequence at 256 tokens (runs.parquet's ``state_size``), with a
log-log fit per family and task where one holds; ``recall`` (half the pairs are queries) drawn
solid, ``recall:queries=0.25`` (three pairs stored per query: more pairs held at once) dashed.

    python results/recall-state/figure.py     # half_distance.csv, recall_vs_state.png (after the study)
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from mnemoscope.render.figures import arch_palette, label_runs
from mnemoscope.storage.study_folder import StudyFolder
from mnemoscope.study.runner import Study
from mnemoscope.tasks.probe_views import recall_half_table, recall_queries

HERE = Path(__file__).resolve().parent


def main() -> None:
    folder = StudyFolder(HERE)
    runs = folder.runs()
    study = Study.from_folder(HERE)
    halves = []
    for spec, part in runs.groupby("task", sort=True):
        half = recall_half_table(recall_queries(study.task(spec), folder, part))
        part = label_runs(part)
        halves.append(half.merge(part[["model", "run_id", "task", "state_size", "achieved_params"]], on="model"))
    table = pd.concat(halves, ignore_index=True)
    table.to_csv(HERE / "half_distance.csv", index=False)
    colors = arch_palette(table["arch"])
    fig, ax = plt.subplots(figsize=(7.5, 5))
    fits = []
    for (task, arch), g in table.groupby(["task", "arch"], sort=False):
        g = g.sort_values("state_size")
        more_pairs = task != "recall"
        y = g["half_distance"].where(~g["never_below_half"], g["longest_distance"] * 2)
        low = np.minimum(g["half_low"], y)
        high = np.maximum(g["half_high"], y)
        attention = "transformer" in arch  # attention: its runs are not one curve in state
        ax.errorbar(g["state_size"], y, yerr=[y - low, high - y], marker="s" if more_pairs else "o", capsize=3,
                    color=colors[arch], mfc="white" if more_pairs else colors[arch],
                    label=f"{arch}{', more pairs' if more_pairs else ''}",
                    ls="none" if attention else ("--" if more_pairs else "-"))
        never = g[g["never_below_half"]]
        ax.scatter(never["state_size"], never["longest_distance"] * 2, marker="^", s=80, color=colors[arch])
        ok = g[~g["never_below_half"] & (g["accuracy_shortest"] >= 0.5)]
        if len(ok) >= 3:
            slope, icpt = np.polyfit(np.log2(ok["state_size"]), np.log2(ok["half_distance"]), 1)
            fits.append({"task": task, "arch": arch, "exponent": slope, "points": len(ok)})
    ax.axhline(128, color="0.4", ls=":", lw=1)
    ax.text(30, 150, "longest distance measured (128); triangles: never below half", fontsize=7, color="0.3")
    ax.set_xscale("log")
    ax.set_yscale("log", base=2)
    ax.set_xlabel("numbers of state carried per sequence at 256 tokens")
    ax.set_ylabel("distance at which recall falls below half (tokens)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(HERE / "recall_vs_state.png", dpi=110)
    pd.DataFrame(fits, columns=["task", "arch", "exponent", "points"]).to_csv(HERE / "fits_half_vs_state.csv", index=False)
    print(table[["task", "model", "state_size", "half_distance", "half_low", "half_high", "never_below_half",
                 "accuracy_shortest", "lowest_accuracy"]].to_string(index=False))
    print(pd.DataFrame(fits).to_string(index=False) if fits else "no family with 3 sizes that fall below half in range")


if __name__ == "__main__":
    main()
