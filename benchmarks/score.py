"""``study.py score``'s speed and memory on a Hugging Face model at a large vocabulary.

    python -m benchmarks.score                       rows in results/benchmarks/score.md and score.csv
    python -m benchmarks.score --tiny --out /tmp/b   the same at tiny sizes, in seconds

The model is a **random Hugging Face Llama** of vocabulary 49152 (SmolLM2's) at context 2048,
small in its body (width 64, 2 layers by default) so that a CPU measures it in minutes; the
output layer and the loss, what scoring adds to a forward pass, are at full size. Rows:

* **tokens per second** of the score path (``mnemoscope.score.scoring.window_losses`` through the
  ``CausalLM`` wrapper ``score`` loads a Hugging Face model into: hidden states, then the output
  layer and cross-entropy in chunks of positions) against a bare forward pass of the same model
  over the same windows (``model(input_ids).logits``, no loss at all), in alternating rounds as
  ``benchmarks/run.py`` times them (target >= 0.9);
* **peak memory** of one window's scoring, each way and with the model's own loss
  (``model(input_ids, labels=...)``), one fresh process per way (the resident set's high-water
  mark above what the process held after a first, untimed window; CUDA: the allocator's peak).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from benchmarks import output_layer as ol
from benchmarks.references import stamp
from benchmarks.common import CLOCK, EVAL_TARGET, Rounds, alternate, compared, markdown, row
from mnemoscope.contract.model import count_params
from mnemoscope.score.scoring import window_losses
from mnemoscope.storage.study_folder import StudyFolder
from mnemoscope.score.models import CausalLM
from mnemoscope.contract.task import sequences_split
from mnemoscope.contract.windows import eval_offsets, window_batch

REPO = Path(__file__).resolve().parent.parent
MODES = ("score", "bare", "own")


#: SmolLM2-135M's body, as its GGUF file declares it (block_count, embedding_length,
#: feed_forward_length, head_count, head_count_kv): ``--smollm2`` times this shape, random weights
SMOLLM2 = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
           "num_key_value_heads": 3}


def make(vocab: int, T: int, width: int, layers: int, seed: int = 0, smollm2: bool = False):
    """A random Llama (eval mode) and the score wrapper around it: ``width`` x ``layers`` with 4
    heads, or SmolLM2-135M's whole shape."""
    import transformers  # optional heavy dependency (the score extra)
    transformers.logging.set_verbosity_error()
    torch.manual_seed(seed)
    shape = SMOLLM2 if smollm2 else {"hidden_size": width, "intermediate_size": width * 3, "num_hidden_layers": layers,
                                     "num_attention_heads": 4, "num_key_value_heads": 2}
    cfg = transformers.LlamaConfig(vocab_size=vocab, max_position_embeddings=T, tie_word_embeddings=True, **shape)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    return hf, CausalLM(hf)


def windows(vocab: int, T: int, n: int, seed: int = 1):
    g = np.random.default_rng(seed)
    return sequences_split(g.integers(0, vocab, size=(n, T + 1)), [f"w{i}" for i in range(n)])


def probe(mode: str, vocab: int, T: int, width: int, layers: int, smollm2: bool = False) -> dict:
    """Peak memory (MiB) of scoring one window ``mode``'s way, above what the process held before."""
    hf, model = make(vocab, T, width, layers, smollm2=smollm2)
    split = windows(vocab, T, 1)
    x = window_batch(split, eval_offsets(split, T, 1), T)[0]

    @torch.no_grad()
    def once():
        if mode == "score":
            with tempfile.TemporaryDirectory() as tmp:  # a fresh work folder: nothing resumed
                window_losses(model, split, T, 1, 1, StudyFolder(Path(tmp)).work("bench"))
        elif mode == "bare":
            hf(input_ids=x, use_cache=False).logits
        else:
            hf(input_ids=x, labels=x, use_cache=False).loss  # the model shifts its labels itself

    once()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = ol._rss_kib("VmRSS") * 1024
    once()
    peak = ol._rss_kib("VmHWM") * 1024
    return {"mode": mode, "vocab": vocab, "context": T, "step_mib": (peak - before) / 2**20,
            "logits_mib": T * vocab * 4 / 2**20}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="vocabulary 4096, context 256: seconds (for tests)")
    p.add_argument("--out", default=str(REPO / "results" / "benchmarks"), help="folder for score.md and score.csv")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--smollm2", action="store_true",
                   help="SmolLM2-135M's whole shape (30 layers, width 576), random weights, 1 window per round")
    p.add_argument("--windows", type=int, help="windows per round (default 2; 1 with --smollm2)")
    p.add_argument("--probe", choices=MODES, help=argparse.SUPPRESS)  # one memory probe, in its own process
    p.add_argument("--note", default="", help="a line under the table (what else the machine ran)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    vocab, T = (4096, 256) if a.tiny else (49152, 2048)
    if a.probe:
        print(json.dumps(probe(a.probe, vocab, T, a.width, a.layers, a.smollm2)))
        return 0
    CLOCK["index"] = 1  # CPU seconds of this process: a shared machine's wall clock measures its neighbours
    n = a.windows or (1 if a.smollm2 else 2)
    hf, model = make(vocab, T, a.width, a.layers, smollm2=a.smollm2)
    split = windows(vocab, T, n)
    offsets = eval_offsets(split, T, n)
    xs = [window_batch(split, offsets[i:i + 1], T)[0] for i in range(n)]
    def score_path():
        with tempfile.TemporaryDirectory(prefix="mnemoscope-bench-score-") as tmp:  # nothing resumed
            work = StudyFolder(Path(tmp)).work("bench")
            start = stamp(torch.device("cpu"))
            window_losses(model, split, T, n, 1, work)
            return stamp(torch.device("cpu")) - start

    @torch.no_grad()
    def bare():
        start = stamp(torch.device("cpu"))
        for x in xs:
            hf(input_ids=x, use_cache=False).logits
        return stamp(torch.device("cpu")) - start

    started, load0 = time.time(), os.getloadavg()
    rounds = Rounds(2, 3, 30, 0.02) if a.tiny else Rounds(3, 6 if a.smollm2 else 12, 600 if a.smollm2 else 120, 0.02)
    times = alternate(rounds, score=score_path, bare=bare)
    name = "SmolLM2-135M's shape" if a.smollm2 else f"w{a.width} x{a.layers}"
    shape = dict(arch=f"hf llama {name}", params=count_params(model, non_embedding=True), context=T, batch=1)
    rows = [compared("score", f"study.py score, random Llama ({name}), V={vocab}, T={T}", times["score"], times["bare"],
                     "bare forward pass (logits only), same windows", EVAL_TARGET, f">= {EVAL_TARGET}",
                     work=n * T, detail=f"{n} windows of {T} tokens, one per forward; chunked output layer and loss",
                     **shape)]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "OMP_NUM_THREADS": "1"}
    for mode in MODES:
        cmd = [sys.executable, "-m", "benchmarks.score", "--probe", mode, "--width", str(a.width),
               "--layers", str(a.layers)] + (["--tiny"] if a.tiny else []) + (["--smollm2"] if a.smollm2 else [])
        r = json.loads(subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
        words = {"score": "score's path (chunked output layer and loss)", "bare": "bare forward pass (whole logits)",
                 "own": "the model's own loss (labels=)"}[mode]
        rows.append(row("score memory", f"peak memory of one window: {words}", r["step_mib"], "MiB",
                        detail=f"V={vocab}, T={T}; the whole logits are {r['logits_mib']:.0f} MiB", **shape))
    df = pd.DataFrame(rows)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "score.csv", index=False)
    load1 = os.getloadavg()
    header = (f"# study.py score: speed and memory\n\n`python -m benchmarks.score {' '.join(argv if argv is not None else sys.argv[1:])}`: "
              f"{os.cpu_count()} CPU cores, 1 torch thread, ratios on CPU seconds of the process, load average "
              f"{load0[0]:.1f} at the start and {load1[0]:.1f} at the end, {time.time() - started:.0f} s.\n\n")
    (out / "score.md").write_text(header + markdown(df) + ("\n\n" + a.note if a.note else "") + "\n")
    print(markdown(df))
    return 0


if __name__ == "__main__":
    sys.exit(main())
