"""Models trained elsewhere, measured as a study measures its own (``study.py score``).

A MODEL is a run folder of a study (``runs/<id>/``: its architecture, ``model.pt`` and the
study's tokenizer), a local Hugging Face model folder or a GGUF file (loaded by ``transformers``,
nothing downloaded, the tokenizer from the same folder or file), or a plugin architecture with a
state dict (``SPEC@WEIGHTS``). Each reads the task's test documents through its own tokenizer:

* **Windows.** A model whose tokenizer is the task's own (a run folder scored on its study's task)
  gets the study's test windows (``eval_offsets``): its numbers reproduce the study's and pair
  with its runs in ``compare``. Every other model gets **byte-aligned windows**: the same byte
  offsets of the same test documents for every tokenizer (spread evenly over the documents, each
  at the start of a line), the window's text tokenized from that byte on and cut after T + 1
  tokens, so every window lies inside one document and its bytes are known. Two models of one
  score folder thus start every window at the same byte; their losses pair over the bytes both
  scored (``byte_gaps.csv``, :mod:`mnemoscope.score.pairs`).
* **Measurements**, as ``analyze`` makes them: per-position loss with bootstrap intervals over
  windows, octave gains, the power-law fit, the truncation ablation's effective context in
  tokens and bytes, and the loss in buckets of the model's training length (past it only with
  ``--extrapolate``).

The output is a study-like folder (``config.yaml``, ``runs/<id>/result.json``, ``losses.npz``,
``per_position.parquet``, ``runs.parquet``, ``fits.csv``, ``context.parquet``, ...) that
``report`` and ``compare`` read. Each model's folder is moved into place whole; its finished
stages are kept in ``runs/.tmp-<id>/`` meanwhile, so a stopped command resumes where it stood.
Loading models: :mod:`mnemoscope.score.models`.
"""
from __future__ import annotations

import codecs
import hashlib
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..analysis.analyze import FIT_COLUMNS, labelled
from ..contract.model import count_params, token_losses
from ..contract.task import Task, TokenSplit, sequences_split, split_documents
from ..contract.windows import eval_offsets, window_batch
from ..errors import UserError
from ..measure.ablation import Ablation, ablation_fields, truncation_ablation
from ..measure.bootstrap import bootstrap_indices
from ..measure.evaluate import _digest, bits_per_byte, scoring_fingerprint, scoring_parts, window_bytes
from ..measure.statistics import MIN_WINDOWS, context_resolution, curve_shape, loss_buckets, truncation_check
from ..registry import TASKS
from ..settings import ANALYSIS, N_BOOT, SCORE
from ..specs import parse_spec
from ..storage.migrations import fill_bits_per_byte
from ..storage.study_folder import RunFolder, StudyFolder
from ..study.finish import POSITION_COLUMNS, RUN_COLUMNS, run_results
from .models import Loaded, load_model, text_reader
from .pairs import byte_gaps

#: bytes of text reserved per token when cutting a byte-aligned window (more than any tokenizer's mean)
BYTES_PER_TOKEN_RESERVE = 8


def byte_starts(docs: list[tuple[str, bytes]], T: int, n: int) -> list[tuple[int, int]]:
    """(document, byte offset) of up to ``n`` windows spread evenly over the test documents' bytes,
    each moved to the start of a line (the next, else the one before), leaving room for T + 1 tokens of any tokenizer
    (``BYTES_PER_TOKEN_RESERVE`` bytes each). The same for every model: it depends on the text only."""
    reserve = (T + 1) * BYTES_PER_TOKEN_RESERVE
    room = np.array([max(len(d) - reserve, 0) for _, d in docs], np.int64)
    total = int(room.sum())
    if total == 0:
        return []
    ends = np.cumsum(room)
    out = []
    for k in np.unique(np.linspace(0, total - 1, min(n, total)).round().astype(np.int64)):
        doc = int(np.searchsorted(ends, k, side="right"))
        at = int(k - (ends[doc] - room[doc]))
        nl = docs[doc][1].find(b"\n", at, at + reserve // 4)
        if nl < 0 or nl + 1 >= room[doc]:  # no line starts ahead within reach: the one before
            nl = docs[doc][1].rfind(b"\n", 0, at)
        out.append((doc, nl + 1))
    return list(dict.fromkeys(out))


def byte_windows(docs, starts, T: int, loaded: Loaded) -> tuple[TokenSplit, np.ndarray]:
    """The byte-aligned windows as the model's tokens: a split of fixed-length sequences
    ((N, T + 1) tokens, the targets that exist counted) and each window's bytes actually tokenized."""
    reserve = (T + 1) * BYTES_PER_TOKEN_RESERVE
    rows, masks, names = [], [], []
    for doc, at in starts:
        raw = docs[doc][1][at:at + reserve]
        cut = raw.rfind(b"\n")
        raw = raw[:cut + 1] if cut > len(raw) // 2 else raw
        # the document is UTF-8 (utf8_documents): only a character cut at the window's end is left out
        ids = loaded.encode(codecs.getincrementaldecoder("utf-8")().decode(raw, final=False))[:T + 1]
        row, m = _token_row(ids, T, loaded, docs[doc][0])
        rows.append(row)
        masks.append(m)
        names.append(f"{docs[doc][0]}@{at}")
    windows, mask = np.stack(rows), np.stack(masks)
    return sequences_split(windows, names, mask), windows


def _token_row(ids: list[int], T: int, loaded: Loaded, where: str) -> tuple[np.ndarray, np.ndarray]:
    """A window of up to T + 1 of the model's tokens, zero-padded to T + 1, and its target mask (the
    targets that exist); refused where the tokenizer gave an id the model has no row for."""
    if len(ids) and max(ids) >= loaded.vocab_size:
        raise UserError(f"{loaded.label}: its tokenizer gave token {max(ids)} for the text of {where}, "
                        f"past the model's {loaded.vocab_size} rows (a special token written in the text?)")
    row = np.zeros(T + 1, np.int64)
    row[:len(ids)] = ids
    m = np.zeros(T + 1, bool)
    m[1:len(ids)] = True
    return row, m


def whole_windows(docs: list[tuple[str, bytes]], T: int, loaded: Loaded) -> TokenSplit | None:
    """Every document whole, from its first byte (``score --whole``): the model's tokens of the
    document in consecutive windows of T + 1 tokens, each starting at the last token of the one
    before, so that every token but the document's first is a target exactly once; the last window
    holds what is left (its missing targets masked). Each window is named ``DOCUMENT@BYTE``, the
    byte its first token starts at (bytes per token: the model's tokenizer). None: no document
    holds two tokens."""
    rows, masks, names = [], [], []
    nbytes = np.asarray(loaded.token_bytes, np.int64)
    for name, data in docs:
        ids = loaded.encode(data.decode("utf-8"))  # the document is UTF-8 (utf8_documents): every byte is read
        at = np.concatenate([[0], np.cumsum(nbytes[np.asarray(ids, np.int64)])]) if len(ids) else [0]
        for k in range(0, len(ids) - 1, T):
            row, m = _token_row(ids[k:k + T + 1], T, loaded, name)
            rows.append(row)
            masks.append(m)
            names.append(f"{name}@{int(at[k])}")
    if not rows:
        return None
    return sequences_split(np.stack(rows), names, np.stack(masks))


def build_task(task: str, T: int) -> Task:
    cls, _, options = parse_spec(task, TASKS)
    try:
        return cls(context_length=T, **options)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"task {task!r} failed to build: {type(exc).__name__}: {exc}") from exc


def test_documents(task: Task, whole: bool = False) -> list[tuple[str, bytes]]:
    """The task's test documents as text (a task made of documents: ``text``, ``code``, ``books``);
    ``whole``: every document of the task, not split."""
    if not callable(getattr(task, "documents", None)):
        raise UserError(f"task {task.name} is not made of text documents; score a model of another tokenizer "
                        "on a text task (text, code, books)" + (", or without --whole" if whole else ""))
    docs = task.documents()
    return [d for d in docs if d[1]] if whole else split_documents(docs)["test"]


def utf8_documents(docs: list[tuple[str, bytes]], label: str) -> None:
    """A tokenizer other than the task's reads text: each document must be UTF-8, scored as its
    bytes are, or refused in one line naming the document and the byte (never a byte dropped or
    replaced: the text scored and the bytes reported would no longer be the file's)."""
    for name, data in docs:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UserError(f"{name} is not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}; perhaps "
                            f"Latin-1 or Windows-1252): {label}'s tokenizer reads UTF-8 text and score scores a "
                            "file's bytes as they are: convert it first (e.g. iconv -f latin1 -t utf-8)") from None


def score_windows(loaded: Loaded, task: Task, s: "Settings") -> tuple[TokenSplit, np.ndarray | None]:
    """The windows ``loaded`` reads (the study's own with the task's tokenizer, else byte-aligned
    ones) and the bytes of each of its tokens; every refusal of the text comes from here, before
    anything is written."""
    if s.whole:  # every document from its first byte, in consecutive windows
        docs = test_documents(task, whole=True)
        utf8_documents(docs, loaded.label)
        split = whole_windows(docs, s.context, loaded)
        if split is None:
            raise UserError(f"the documents of {s.task} hold fewer than two tokens of {loaded.label}: nothing to score")
        return split, loaded.token_bytes
    if loaded.task_tokens:  # the task's own tokenizer: the study's windows, its numbers reproduced
        return task.splits()["test"], task.token_bytes()
    docs = test_documents(task)
    utf8_documents(docs, loaded.label)
    starts = byte_starts(docs, s.context, s.sequences)
    if not starts:
        raise UserError(f"the test documents of {s.task} are too short for windows of {s.context} tokens")
    return byte_windows(docs, starts, s.context, loaded)[0], loaded.token_bytes


class Settings:
    """What ``score`` measures and how much it spends (part of each model's run id)."""

    def __init__(self, task: str, context: int, sequences: int = SCORE.sequences, targets: int = SCORE.targets,
                 variants=SCORE.variants, extrapolate: bool = False, n_boot: int = SCORE.n_boot,
                 tolerance: float = SCORE.tolerance, batch_size: int = SCORE.batch_size,
                 max_tokens: int = SCORE.max_tokens, bisect: bool = SCORE.bisect, whole: bool = False):
        self.task, self.context, self.sequences, self.targets = task, int(context), int(sequences), int(targets)
        self.whole = whole
        self.variants, self.extrapolate, self.n_boot, self.tolerance = tuple(variants), extrapolate, n_boot, tolerance
        self.batch_size, self.max_tokens, self.bisect = batch_size, max_tokens, bisect

    def key(self) -> dict:
        """The settings a model's numbers depend on (``whole`` only when set: the ids of models scored
        before the option existed stay as they were)."""
        key = {k: getattr(self, k) for k in ("task", "context", "sequences", "targets", "variants", "extrapolate",
                                             "n_boot", "tolerance", "bisect")}
        return {**key, "whole": True} if self.whole else key


def _data_identity(task: Task, s: Settings) -> str:
    """What identifies the text scored: the task's data fingerprint (its prepared splits), or with
    ``--whole`` the task's fingerprint (its documents' content: a single file is never split)."""
    return str(task.fingerprint()) if s.whole else task.data_fingerprint()


def _run_id(loaded: Loaded, s: Settings, data: str) -> str:
    digest = hashlib.sha256(json.dumps([loaded.identity, s.key(), data], default=str).encode()).hexdigest()[:8]
    slug = lambda x: "".join(c for c in x if c.isalnum())[:24]  # noqa: E731
    return f"{slug(loaded.label)}-{slug(s.task)}-ctx{s.context}-{digest}"


def _stage(work: RunFolder, name: str, compute):
    """A stage's arrays kept in the work folder, computed once (a stopped command resumes here)."""
    done = work.stage(name)
    if done is not None:
        return done
    out = compute()
    work.write_stage(name, out)
    return out


@torch.no_grad()
def window_losses(model, split: TokenSplit, T: int, n: int, batch_size: int, work: RunFolder) -> dict:
    """``per_position_losses`` of the same windows, the batches finished so far kept in ``work``'s
    ``losses.partial`` stage: a stopped command resumes at the next batch. Returns {"losses": (N, T), "mask": (N, T)}."""
    offsets = eval_offsets(split, T, n)
    partial = work.stage("losses.partial")
    done = list(partial["losses"]) if partial is not None else []
    model.eval()
    for i in range(len(done), len(offsets), batch_size):
        x, y, _ = window_batch(split, offsets[i:i + batch_size], T)
        done += list(token_losses(model, x, y).float().numpy())
        work.write_stage("losses.partial", {"losses": np.stack(done).astype(np.float32)})
    mask = window_batch(split, offsets, T)[2].numpy()
    return {"losses": np.stack(done).astype(np.float32), "mask": mask}


def _ablation(model, split, T: int, s: Settings, token_bytes, work: RunFolder, seed: int, log, label: str):
    """The truncation ablation's table (with bytes of context) and its fields of the fit row; with
    ``s.targets`` 0, none (an empty table: the effective context is not measured)."""
    if s.targets == 0:
        return pd.DataFrame(), {"full_context_loss": math.nan, "ablation_targets": 0, "ablation_forward_tokens": 0,
                                **{f"effective_context{b}{x}": math.nan for b in ("", "_bytes") for x in ("", "_low", "_high")}}

    def ablated():
        ab = truncation_ablation(model, split, T, s.targets, variants=s.variants, seed=seed,
                                 tolerance=s.tolerance, max_tokens=s.max_tokens,
                                 refine=("truncate",) if s.bisect else ())
        out = {"contexts": ab.contexts, "available": ab.available,
               "cost": np.array([ab.forward_tokens[v] for v in s.variants], np.int64)}
        for v in s.variants:
            out[f"loss_{v}"] = ab.losses[v]
            if v in ab.refined:
                out[f"refined_n_{v}"], out[f"refined_{v}"] = ab.refined[v]
        return out

    t1 = time.time()
    a = _stage(work, "ablation", ablated)
    log(f"score: {label}: truncation ablation on {len(a['available'])} targets, {time.time() - t1:.0f} s")
    ab = Ablation(a["contexts"], {v: a[f"loss_{v}"] for v in s.variants}, a["available"],
                  {v: int(c) for v, c in zip(s.variants, a["cost"])},
                  {v: (a[f"refined_n_{v}"], a[f"refined_{v}"]) for v in s.variants if f"refined_n_{v}" in a})
    context, fit = ablation_fields(ab, split, T, s.targets, token_bytes, s.tolerance, s.n_boot, seed)
    return context, {**fit, **truncation_check(context, s.tolerance), **context_resolution(context)}


def measure(loaded: Loaded, task: Task, s: Settings, work: RunFolder, log=print, windows=None) -> dict:
    """Every number of one model, its stages kept in ``work``: the result row, the per-position
    table, the stored losses, and the fit, context, octave and bucket tables. ``windows``: what
    :func:`score_windows` gave for the model (made here when None)."""
    T = s.context
    t0 = time.time()
    split, token_bytes = windows if windows is not None else score_windows(loaded, task, s)
    model = loaded.model
    n = len(split.starts) if s.whole else s.sequences  # --whole: every window

    z = _stage(work, "losses", lambda: window_losses(model, split, T, n, s.batch_size, work))
    losses, mask = z["losses"], z["mask"]
    log(f"score: {loaded.label}: {int(mask.sum()):,} targets of {len(losses)} windows, "
        f"{(losses * mask).sum() / max(mask.sum(), 1):.4f} nats/token, {time.time() - t0:.0f} s")
    seed = 0
    nbytes = window_bytes(split, T, n, token_bytes)
    parts = (scoring_parts(task, n, mask) if loaded.task_tokens else
             {"task": str(task.fingerprint()), "tokenizer": loaded.tokenizer_fingerprint, "context": str(T),
              "windows": _digest(np.asarray(split.starts, np.int64), np.asarray(split.tokens, np.int64)),
              "mask": _digest(np.asarray(mask, bool))})

    context, ablation_fit = _ablation(model, split, T, s, token_bytes, work, seed, log, loaded.label)
    octaves, shape = curve_shape(losses, mask, s.n_boot, ANALYSIS.fit_boot, seed)
    buckets = length_buckets(losses, mask, loaded.training_context, s.n_boot, seed)
    label = {"run_id": "", "arch": loaded.label, "task": s.task, "params": loaded.params, "seed": seed}
    scored, pp, stored = run_results(losses, mask, nbytes, label, s.n_boot, seed)
    row = {**label, "context": T, "arch_config": json.dumps(loaded.describe, sort_keys=True, default=str),
           "target_params": loaded.params, "achieved_params": loaded.params, "active_params": loaded.params,
           "total_params": count_params(model, non_embedding=False), "state_size": None,
           "batch_size": s.batch_size, "tokens_trained": loaded.tokens_trained, "wall_seconds": None,
           "torch_threads": torch.get_num_threads(), "final_val_loss": None, **scored,
           "status": "ok" if np.isfinite(losses[mask]).all() else "diverged", "diverged_step": None,
           "flops_per_token": None, "data_fingerprint": _data_identity(task, s),
           "scoring_fingerprint": scoring_fingerprint(parts), "scoring_parts": json.dumps(parts, sort_keys=True),
           "source": loaded.source, "kind": loaded.kind, "training_context": loaded.training_context,
           "windows": "whole" if s.whole else "task" if loaded.task_tokens else "byte-aligned", "score_seconds": round(time.time() - t0, 1),
           "n_windows": int((mask.sum(1) > 0).sum())}
    if not loaded.task_tokens:
        stored["window_starts"] = np.array([int(d.rpartition("@")[2]) for d in split.documents], np.int64)
        stored["window_documents"] = np.array([d.rpartition("@")[0] for d in split.documents])
    fit_row = {**label, "context": T, **{k: v for k, v in shape.items() if k in FIT_COLUMNS},
               "tolerance": s.tolerance, "extrapolates": s.extrapolate,
               "training_context": loaded.training_context, **ablation_fit}
    if int((mask.sum(1) > 0).sum()) < MIN_WINDOWS:  # a bootstrap over one window: intervals of zero width
        no_intervals(row, pp, fit_row, context, octaves, buckets)
        log(f"score: {loaded.label}: one window scored: no interval and no claim of significance (an interval "
            f"needs at least {MIN_WINDOWS} windows; raise --sequences)")
    tables = labelled({"context": context, "octaves": octaves, "extrapolation_buckets": buckets}, label)
    return {"row": row, "pp": pp, "stored": stored, "fit": fit_row, **tables}


def no_intervals(row: dict, pp: pd.DataFrame, fit: dict, context: pd.DataFrame, octaves: pd.DataFrame,
                 buckets: pd.DataFrame) -> None:
    """Fewer than MIN_WINDOWS windows: every interval blank (NaN), no octave significant, no fit of
    the curve's form (it rests on the significant octaves), in place."""
    for d in (row, fit):
        for k in [k for k in d if k.endswith(("_low", "_high", "_min"))]:
            d[k] = math.nan
    fit["last_significant_octave_start"] = fit["last_significant_octave_end"] = None
    fit["fit_status"] = "too few windows"
    for df in (pp, buckets):
        for col in ("ci_low", "ci_high"):
            if col in df:
                df[col] = np.nan
    for col in [c for c in context if c.endswith(("_low", "_high"))]:
        context[col] = np.nan
    for col in ("gain_low", "gain_high"):
        if col in octaves:
            octaves[col] = np.nan
    if "significant" in octaves:
        octaves["significant"] = False


def length_buckets(losses, mask, training: int | None, n_boot: int = N_BOOT, seed: int = 0) -> pd.DataFrame:
    """Mean loss in buckets of the model's training length, [0, L), [L, 2L), ... (one bucket when
    the context is within it), each with a bootstrap interval over windows."""
    T = losses.shape[1]
    L = int(training) if training else T
    idx = bootstrap_indices(len(losses), n_boot, seed)
    return pd.DataFrame([{"factor": T / L, "length": T, "bucket_start": b["bucket_start"], "bucket_end": b["bucket_end"],
                          "past_training_length": b["bucket_start"] >= L, **b}
                         for b in loss_buckets(losses, mask, L, idx)])


ANALYSIS_TABLES = ("context", "octaves", "extrapolation_buckets")  # a scored model's runs/<id>/analysis/NAME.parquet


def _write_run(out: Path, run_id: str, work: RunFolder, result: dict) -> None:
    """The model's finished folder, assembled in a folder of this process and moved into place whole;
    the stages kept in ``work`` then go."""
    row = {**result["row"], "run_id": run_id}
    study = StudyFolder(out)
    tmp = study.work(run_id, os.getpid())
    tmp.remove()
    tmp.write_per_position(result["pp"].assign(run_id=run_id))
    tmp.write_losses(**result["stored"])
    tmp.write_analysis("fit", {**result["fit"], "run_id": run_id},
                       {name: result[name].assign(run_id=run_id) for name in ANALYSIS_TABLES})
    tmp.write_row(row)
    tmp.move_to(study.run(run_id).path)
    work.remove()


def collect(out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """runs.parquet, per_position.parquet, fits.csv, context.parquet, octaves.parquet,
    extrapolation_buckets.parquet and byte_gaps.csv, rebuilt from the finished models' folders."""
    study = StudyFolder(out)
    rows, pps, fits, tables = [], [], [], {name: [] for name in ANALYSIS_TABLES}
    for folder in (study.run(run_id) for run_id in study.finished()):
        rows.append(fill_bits_per_byte(folder.row(), folder.loss_arrays, bits_per_byte))
        pps.append(folder.per_position())
        fits.append(folder.analysis_json("fit"))
        for name in tables:
            tables[name].append(folder.analysis_table(name))
    runs = pd.DataFrame(rows)
    runs = runs[[c for c in RUN_COLUMNS if c in runs] + [c for c in runs if c not in RUN_COLUMNS]]
    pp = pd.concat(pps, ignore_index=True)[POSITION_COLUMNS]
    study.write_table(StudyFolder.RUNS_TABLE, runs)
    study.write_table(StudyFolder.POSITIONS_TABLE, pp)
    fit_df = pd.DataFrame(fits)
    fit_df = fit_df[[c for c in FIT_COLUMNS if c in fit_df] + [c for c in fit_df if c not in FIT_COLUMNS]]
    study.write_table("fits.csv", fit_df)
    for name, parts in tables.items():
        study.write_table(f"{name}.parquet", pd.concat(parts, ignore_index=True))
    study.write_table("byte_gaps.csv", byte_gaps(out, runs))
    return runs, pp


def score(models: list[str], s: Settings, out: Path, log=print) -> pd.DataFrame:
    """Score every model on the task's test documents into the study-like folder ``out``; a model
    already finished there with the same settings is skipped. Every model is loaded and checked
    (file, causality, vocabulary, context) before anything is written."""
    task = build_task(s.task, s.context)
    if not s.whole:  # --whole reads the documents, never the task's splits (a single file is not split)
        task.splits()
    loaded = [load_model(m, task, s.task, s.context, s.extrapolate) for m in models]
    for x in loaded if s.whole else ():  # a model of the task's own tokens reads the text through them
        if x.encode is None:
            text_reader(x, task, x.source)
            x.task_tokens = False
    labels = [x.label for x in loaded]
    for i, x in enumerate(loaded):  # one label per model: a second "transformer" becomes "transformer-2"
        if labels.count(x.label) > 1:
            x.label = f"{x.label}-{labels[:i + 1].count(x.label)}"
    windows = [score_windows(x, task, s) for x in loaded]  # every check of the text, before anything is written
    study = StudyFolder(out)
    config = {"name": study.out.resolve().name, "archs": [x.label for x in loaded], "tasks": [s.task],
              "params": list(dict.fromkeys(x.params for x in loaded)), "context": s.context, "seeds": [0],
              "eval_sequences": s.sequences,
              "score": {**s.key(), "variants": list(s.variants), "models": {x.label: x.source for x in loaded}}}
    old = study.score_config()
    if old is not None:  # models scored earlier into this folder stay listed, once each
        config["archs"] = list(dict.fromkeys(old.get("archs", []) + config["archs"]))
        config["score"]["models"] = {**old["score"]["models"], **config["score"]["models"]}
        config["params"] = list(dict.fromkeys(old.get("params", []) + config["params"]))
    study.write_config(config)
    study.write_environment()
    data = _data_identity(task, s)
    for x, w in zip(loaded, windows):
        run_id = _run_id(x, s, data)
        if study.run(run_id).finished:
            log(f"score: {x.label}: already scored ({run_id})")
            continue
        work = study.work(run_id)
        _write_run(out, run_id, work, measure(x, task, s, work, log, w))
    return collect(out)[0]
