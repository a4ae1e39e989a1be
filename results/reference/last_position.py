"""Why does transformer:pos=learned score 2.357 nats at position 511? An off-by-one in training or
scoring, or the model itself? Reads the committed weights; prints what README.md quotes.

    python results/reference/last_position.py      (about a minute on one CPU core)
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mnemoscope.registry import TASKS
from mnemoscope.storage.study_folder import RunFolder, load_run_model
from mnemoscope.contract.windows import eval_offsets

HERE = Path(__file__).resolve().parent
RUN = HERE / "runs" / "transformerposlearned-text-1M-s0-0d5f04e3"
T = 512


def losses_at(model, windows: np.ndarray) -> np.ndarray:
    """(N, T) losses of windows (N, T+1), one forward pass each batch, computed here from the raw
    tokens (not through the harness's scoring)."""
    out = []
    with torch.no_grad():
        for i in range(0, len(windows), 32):
            w = torch.from_numpy(windows[i:i + 32])
            logits = model(w[:, :-1])
            out.append(F.cross_entropy(logits.transpose(1, 2), w[:, 1:], reduction="none").numpy())
    return np.concatenate(out)


def main() -> None:
    torch.set_num_threads(1)
    model, _ = load_run_model(RUN, "cpu")
    model.eval()
    splits = TASKS.get("text")(context_length=T).splits()
    stored, _ = RunFolder(RUN).losses()
    test = np.asarray(splits["test"].tokens, dtype=np.int64)
    offsets = eval_offsets(splits["test"], T, len(stored))
    windows = test[offsets[:, None] + np.arange(T + 1)]
    mid = slice(64, T - 1)
    report = {"stored: position 511 / mean of 64-510": [float(stored[:, -1].mean()), float(stored[:, mid].mean())]}
    again = losses_at(model, windows)
    report["rescored from raw tokens: max difference to stored"] = float(np.abs(again - stored).max())
    # the same targets (window token 512) predicted one position earlier: drop the window's first token
    shifted = losses_at(model, windows[:, 1:])  # (N, T-1): its last position is 510
    report["same targets at position 510 instead of 511"] = float(shifted[:, -1].mean())
    report["same targets at 511 and 510, by position: 509 / 510 / 511"] = [float(again[:, p].mean()) for p in (509, 510, 511)]
    # training data: is the model just as bad at 511 on the windows it trained on?
    train = np.asarray(splits["train"].tokens, dtype=np.int64)
    toff = eval_offsets(splits["train"], T, 256)
    tl = losses_at(model, train[toff[:, None] + np.arange(T + 1)])
    report["training windows: position 511 / mean of 64-510"] = [float(tl[:, -1].mean()), float(tl[:, mid].mean())]
    # the position table: how far each of the last rows lies from its neighbours
    pe = model.pos_emb.weight.detach()
    cos = F.cosine_similarity(pe[1:], pe[:-1], dim=1)
    report["cosine(pos_emb[t], pos_emb[t-1]): median over t < 500, t = 509, 510, 511"] = [
        float(cos[:499].median()), *(float(cos[t - 1]) for t in (509, 510, 511))]
    report["norm of pos_emb rows: median, 511"] = [float(pe.norm(dim=1).median()), float(pe[-1].norm())]
    # where the training signal reaches each position's row: gradient of the training loss
    model.train()
    model.zero_grad()
    w = torch.from_numpy(train[toff[:32, None] + np.arange(T + 1)])
    F.cross_entropy(model(w[:, :-1]).transpose(1, 2), w[:, 1:]).backward()
    g = model.pos_emb.weight.grad.norm(dim=1)
    report["gradient norm of pos_emb rows, relative to row 0: rows 255, 500, 510, 511"] = [
        float(g[t] / g[0]) for t in (255, 500, 510, 511)]
    model.eval()
    # surgery: give position 511 its neighbour's row, and the last rows those of 400-403
    with torch.no_grad():
        saved = pe.clone()
        model.pos_emb.weight[511] = saved[510]
        report["position 511 with pos_emb[511] := pos_emb[510]"] = float(losses_at(model, windows)[:, -1].mean())
        model.pos_emb.weight[508:512] = saved[400:404]
        ll = losses_at(model, windows)
        report["positions 508-511 with the rows of 400-403"] = [float(ll[:, p].mean()) for p in range(508, 512)]
        model.pos_emb.weight.copy_(saved)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
