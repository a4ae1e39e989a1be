"""The default study (``python study.py``), end to end in its own process: wall time and peak
host memory (section ``study``)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from mnemoscope.storage.study_folder import StudyFolder

from benchmarks.common import Bench, fmt_count, REPO, row, seconds


def bench_study(args, folder: Path):
    """The default study (``python study.py``) in a subprocess: wall time and peak host memory."""
    out = folder / "study"
    cmd = [sys.executable, str(REPO / "study.py"), "--out", str(out), "--no-progress", "--name", "benchmark-default"]
    env = dict(os.environ)
    if args.tiny:  # shrunk: tiny models and tokens, on a text file made here (nothing downloaded)
        text = folder / "corpus.txt"
        words = np.array("the of and to a in that is was he for it with as his on be at by".split())
        rng = np.random.default_rng(0)
        text.write_text("\n".join(" ".join(rng.choice(words, 12)) for _ in range(3000)))
        cmd += ["--arch", "transformer", "--task", f"text:{text}", "--params", "5k", "--tokens", "8k",
                "--context", "32", "--batch-size", "8", "--eval-sequences", "8"]
        env["MNEMOSCOPE_CACHE"] = str(folder / "cache")
    elif args.study_tokens:
        cmd += ["--tokens", args.study_tokens]
    # a fresh interpreter waits for the study, so RUSAGE_CHILDREN holds the study alone
    probe = ("import json, resource, subprocess, sys, time; t = time.perf_counter(); "
             "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
             "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
             "print(json.dumps({'rc': r.returncode, 'seconds': time.perf_counter() - t, 'cpu': u.ru_utime + u.ru_stime, "
             "'maxrss_kib': u.ru_maxrss, 'stderr': r.stderr[-2000:]}))")
    result = subprocess.run([sys.executable, "-c", probe, *cmd], capture_output=True, text=True, cwd=REPO, env=env)
    info = json.loads(result.stdout.strip().splitlines()[-1])
    shown = " ".join(["study.py", *cmd[2:]]).replace(str(folder), "TMP")
    if info["rc"] != 0:
        raise RuntimeError(f"the default study failed (exit {info['rc']}): {info['stderr']}")
    runs = StudyFolder(out).runs()
    return [
        row("study", "default study wall time", info["seconds"], "seconds", detail=f"`{shown}`; {len(runs)} runs, "
            f"{fmt_count(runs.tokens_trained.sum())} training tokens; {info['cpu']:.0f} CPU seconds"),
        row("study", "default study peak memory", info["maxrss_kib"] / 1024, "MiB",
            detail="peak resident set size of the study process (host memory)"),
    ]


#: the reference study's shape (results/hf-families): non-embedding parameters, context, batch


def section_study(b: Bench) -> list[dict]:
    """The default study, end to end, in its own process."""
    rows = bench_study(b.args, b.folder)
    b.log(f"study: {rows[-2]['value']:.1f} s, {rows[-1]['value']:.0f} MiB")
    return rows
