"""``math``: question/answer problems at character level, packed into the context (Henighan et al. 2020).

Each problem is written ``Q: <question>\\nA: <answer>\\n`` (ASCII; token = byte, vocabulary
128) and problems follow each other; a window starts at a problem's first character. Only
the answer's characters and the newline that ends it are targets (the mask): the model is
scored on answering, never on the questions.

Sources:

* default: the project's own generator at graded difficulty 1, 2, 3, ...: arithmetic with
  nested parentheses (more operators and larger numbers as difficulty grows), linear
  equations (one-sided, then unknowns on both sides), and comparisons (integers, then
  negatives and decimals). Train, validation and the interpolation test draw difficulty
  uniformly from 1..``difficulty`` (default 3); the ``extrapolation`` split is harder
  (``difficulty``+1 .. ``difficulty``+2).
* ``math:source=deepmind``: DeepMind's ``mathematics-dataset`` (Saxton et al. 2019) where it is
  installed (``pip install mathematics-dataset==1.0.1``): its train modules for train, its
  ``interpolate`` regime for validation and test, its ``extrapolate`` regime for extrapolation.

Splits never share a question: every question is assigned to a split by a hash of its text
(80% train, 10% validation, 10% test; the extrapolation split takes only questions whose hash
falls outside train), so one question can never appear in two splits, however often the
generator draws it.

:func:`answer_accuracy` gives exact-match accuracy under greedy decoding, per answer.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import random
import subprocess
import sys
from decimal import Decimal
from typing import Callable

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch

from mnemoscope.measure.bootstrap import LEVEL, cluster_ci
from mnemoscope.errors import UserError
from mnemoscope.measure.evaluate import greedy_hits
from mnemoscope.render.figures import figure_png, html_table, img_tag, label_runs, paragraph
from mnemoscope.registry import register_task
from mnemoscope.settings import EVAL_BATCH, N_BOOT, STUDY
from mnemoscope.storage.study_folder import StudyFolder
from mnemoscope.contract.task import Task, TokenSplit, check_options

NEWLINE = ord("\n")
#: fractions of the question-hash range: [0, .8) train, [.8, .9) validation, [.9, 1) test
HASH_BOUNDS = {"train": (0.0, 0.8), "validation": (0.8, 0.9), "test": (0.9, 1.0), "extrapolation": (0.8, 1.0)}


# -- the project's own generator -----------------------------------------------------------
def _expression(rng: random.Random, n_ops: int, high: int) -> tuple[str, int, int]:
    """A random expression tree with ``n_ops`` operators over integers 0..high.
    Returns (text with the parentheses it needs, value, precedence of its top operator)."""
    if n_ops == 0:
        v = rng.randint(0, high)
        return str(v), v, 3
    k = rng.randint(0, n_ops - 1)
    (lt, lv, lp), (rt, rv, rp) = _expression(rng, k, high), _expression(rng, n_ops - 1 - k, high)
    op = rng.choice("+-*")
    p = 2 if op == "*" else 1
    lt = f"({lt})" if lp < p else lt
    rt = f"({rt})" if rp < p or (rp == p and op == "-") else rt  # a-(b+c) needs them, a*(b*c) does not
    value = lv + rv if op == "+" else lv - rv if op == "-" else lv * rv
    return f"{lt}{op}{rt}", value, p


def arithmetic(rng: random.Random, d: int) -> tuple[str, str]:
    """d operators, operands with (d+1)//2 digits, |answer| below 10^(d+2)."""
    high = 10 ** ((d + 1) // 2) - 1
    while True:
        text, value, _ = _expression(rng, d, high)
        if abs(value) < 10 ** (d + 2):
            return f"What is {text}?", str(value)


def _linear_side(a: int, var: str, b: int) -> str:
    term = var if a == 1 else f"-{var}" if a == -1 else f"{a}*{var}"
    return term if b == 0 else f"{term}{b:+d}"


def linear(rng: random.Random, d: int) -> tuple[str, str]:
    """Solve for an integer unknown; from difficulty 3 the unknown is on both sides."""
    coef, root, const = d + 2, 3 * d, 5 * d
    var = rng.choice("abcdfghjkmnpqrstuvwxyz")
    x = rng.randint(-root, root)
    nonzero = [c for c in range(-coef, coef + 1) if c != 0]
    a, b = rng.choice(nonzero), rng.randint(-const, const)
    if d < 3:
        return f"Solve {_linear_side(a, var, b)}={a * x + b} for {var}.", str(x)
    c = rng.choice([v for v in nonzero if v != a])
    e = (a - c) * x + b
    return f"Solve {_linear_side(a, var, b)}={_linear_side(c, var, e)} for {var}.", str(x)


def _number(rng: random.Random, d: int) -> tuple[str, Decimal]:
    digits, decimals = d, max(0, d - 2)
    low = 0 if d == 1 else -(10 ** digits - 1)
    value = Decimal(rng.randint(low, 10 ** digits - 1)).scaleb(-rng.randint(0, decimals))
    text = format(value.normalize(), "f") if value else "0"
    return text, Decimal(text)


def compare(rng: random.Random, d: int) -> tuple[str, str]:
    """Integers at difficulty 1, negatives from 2, decimals (up to d-2 places) from 3."""
    while True:
        (a, av), (b, bv) = _number(rng, d), _number(rng, d)
        if av != bv:
            break
    form = rng.randrange(3)
    if form == 0:
        return f"Which is greater: {a} or {b}?", a if av > bv else b
    if form == 1:
        return f"Which is smaller: {a} or {b}?", a if av < bv else b
    return f"Is {a} greater than {b}?", "yes" if av > bv else "no"


KINDS: dict[str, Callable[[random.Random, int], tuple[str, str]]] = {
    "arithmetic": arithmetic, "linear": linear, "compare": compare}


def question_kind(question: str) -> str:
    """The generator kind of one of our questions ("other" for anything else)."""
    if question.startswith("Solve "):
        return "linear"
    if question.startswith(("Which is", "Is ")):
        return "compare"
    if question.startswith("What is "):
        return "arithmetic"
    return "other"


def hash_fraction(question: str) -> float:
    """A fixed number in [0, 1) for a question: where it falls decides its split."""
    return int(hashlib.sha256(question.encode()).hexdigest()[:12], 16) / 16 ** 12


def own_problems(split: str, difficulties: range, n_chars: int, seed: int = 0) -> list[tuple[str, str]]:
    """Problems of this split (by question hash) until they hold ``n_chars`` characters."""
    low, high = HASH_BOUNDS[split]
    rng = random.Random(f"{seed}:{split}")
    kinds = list(KINDS.values())
    out, size = [], 0
    while size < n_chars:
        q, a = rng.choice(kinds)(rng, rng.choice(difficulties))
        if low <= hash_fraction(q) < high:
            out.append((q, a))
            size += len(q) + len(a) + 8
    return out


# -- DeepMind's mathematics-dataset, optional ---------------------------------------------------
DEEPMIND_MODULES = {
    "train": ["arithmetic__add_or_sub", "arithmetic__add_sub_multiple", "arithmetic__mixed", "algebra__linear_1d",
              "comparison__pair", "comparison__sort"],
    "extrapolation": ["arithmetic__add_or_sub_big", "arithmetic__add_sub_multiple_longer", "arithmetic__mixed_longer",
                      "comparison__sort_more"],
}


def deepmind_modules(regime: str) -> dict[str, Callable]:
    """The package's problem generators of one regime (train, interpolate, extrapolate), flattened."""
    if importlib.util.find_spec("mathematics_dataset") is None:
        raise UserError("math:source=deepmind needs DeepMind's generator: pip install mathematics-dataset==1.0.1 "
                        "(or use the default source)")
    # recent sympy moved base_solution_linear; the package still imports it from the old place
    dio = importlib.import_module("sympy.solvers.diophantine")
    if not hasattr(dio, "base_solution_linear"):
        dio.base_solution_linear = sys.modules["sympy.solvers.diophantine.diophantine"].base_solution_linear
    from mathematics_dataset.modules import modules  # optional: the math extra

    tree = {"train": lambda: modules.train(lambda r: r), "interpolate": modules.test,
            "extrapolate": modules.test_extra}[regime]()
    flat = {}

    def walk(node, prefix):
        for key, value in node.items():
            name = f"{prefix}__{key}" if prefix else key
            walk(value, name) if isinstance(value, dict) else flat.__setitem__(name, value)

    walk(tree, "")
    return flat


def deepmind_problems(split: str, n_chars: int, seed: int = 0) -> list[tuple[str, str]]:
    """Problems of one split from DeepMind's generator, reproducibly.

    The package iterates over hash-ordered sets, so its problems depend on Python's string-hash
    seed; they are generated in a child process with ``PYTHONHASHSEED=0`` so that every machine
    prepares the same splits.
    """
    if importlib.util.find_spec("mathematics_dataset") is None:
        raise UserError("math:source=deepmind needs DeepMind's generator: pip install mathematics-dataset==1.0.1 "
                        "(or use the default source)")
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    code = ("import json, sys; from mnemoscope.tasks.math import _deepmind_generate; "
            "json.dump(_deepmind_generate(*json.loads(sys.argv[1])), sys.stdout)")
    done = subprocess.run([sys.executable, "-c", code, json.dumps([split, n_chars, seed])], env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise UserError(f"mathematics-dataset failed to generate the {split} split: {last}")
    return [tuple(p) for p in json.loads(done.stdout)]


def _deepmind_generate(split: str, n_chars: int, seed: int = 0) -> list[tuple[str, str]]:
    regime = {"train": "train", "validation": "interpolate", "test": "interpolate", "extrapolation": "extrapolate"}[split]
    available = deepmind_modules(regime)
    names = DEEPMIND_MODULES["extrapolation" if split == "extrapolation" else "train"]
    low, high = {"validation": (0.0, 0.5), "test": (0.5, 1.0)}.get(split, (0.0, 1.0))  # halve the interpolate regime
    # the package draws from the global random and numpy generators
    random.seed(f"{seed}:{split}")
    np.random.seed(int(hash_fraction(f"{seed}:{split}") * 2**32))
    out, size, i = [], 0, 0
    while size < n_chars:
        problem = available[names[i % len(names)]]()
        i += 1
        q, a = str(problem.question), str(problem.answer)
        if len(q) > 160 or len(a) > 30 or not (q + a).isascii() or not low <= hash_fraction(q) < high:
            continue  # the package's own length limits; our vocabulary is ASCII
        out.append((q, a))
        size += len(q) + len(a) + 8
    return out


# -- packing ---------------------------------------------------------------------------------
def pack(problems: list[tuple[str, str]], documents: list[str]) -> TokenSplit:
    """Problems -> one byte stream, mask on answer characters and their closing newline,
    window starts at each problem's first character."""
    parts, masks, starts, at = [], [], [], 0
    for q, a in problems:
        head, tail = f"Q: {q}\nA: ".encode(), f"{a}\n".encode()
        parts += [head, tail]
        masks += [np.zeros(len(head), bool), np.ones(len(tail), bool)]
        starts.append(at)
        at += len(head) + len(tail)
    tokens = np.frombuffer(b"".join(parts), dtype=np.uint8).copy()
    if tokens.max(initial=0) >= 128:
        raise UserError("a math problem holds a non-ASCII character")
    return TokenSplit(tokens=tokens, mask=np.concatenate(masks), starts=np.asarray(starts, dtype=np.int64),
                      documents=documents)


@register_task("math")
class Math(Task):
    """Question/answer problems, loss on answers only; interpolation (test) and extrapolation splits."""

    view_title = "answers, interpolation and extrapolation"

    def report_view(self, folder, runs, pp) -> str:
        return math_view(self, folder, runs, pp)

    vocab_size = 128
    default_context = 256
    version = "1"
    example = {"context_length": 64, "train_tokens": 20_000, "eval_tokens": 4_000}

    def __init__(self, source: str | None = None, context_length: int | None = None, difficulty: int = 3,
                 train_tokens: int = 4_000_000, eval_tokens: int = 150_000, **options):
        check_options("math", options, set())
        if source not in (None, "own", "deepmind"):
            raise UserError(f"unknown math source {source!r}: use own (the default) or deepmind")
        for name, value, low in (("difficulty", difficulty, 1), ("train_tokens", train_tokens, 1000),
                                 ("eval_tokens", eval_tokens, 1000)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise UserError(f"math option {name} must be an integer of at least {low}, got {value!r}")
        self.difficulty = difficulty
        super().__init__(source=None if source == "own" else source, context_length=context_length,
                         difficulty=difficulty, train_tokens=train_tokens, eval_tokens=eval_tokens)

    def build_splits(self):
        o = self.options
        out = {}
        for split in ("train", "validation", "test", "extrapolation"):
            n = o["train_tokens"] if split == "train" else o["eval_tokens"]
            if self.source == "deepmind":
                problems = deepmind_problems(split, n)
                doc = f"mathematics-dataset:{split}"
            else:
                d = self.difficulty
                levels = range(d + 1, d + 3) if split == "extrapolation" else range(1, d + 1)
                problems = own_problems(split, levels, n)
                doc = f"own:{split}:difficulty {levels.start}-{levels.stop - 1}"
            out[split] = pack(problems, [f"{doc}:{len(problems)} problems"])
        return out

    def decode(self, tokens):
        return bytes(int(t) for t in tokens).decode("ascii", errors="replace")


# -- evaluation: exact match under greedy decoding ------------------------------------------------
def answer_spans(mask_row: np.ndarray, target_row: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) of every complete answer in one window: a run of counted targets that ends
    with the newline closing the answer (an answer cut by the window's end is left out)."""
    m = np.concatenate([[False], mask_row.astype(bool), [False]])
    edges = np.flatnonzero(m[1:] != m[:-1])
    return [(a, b) for a, b in zip(edges[::2], edges[1::2]) if target_row[b - 1] == NEWLINE]


def answer_accuracy(model: torch.nn.Module, split: TokenSplit, context_length: int,
                    n_sequences: int = STUDY.eval_sequences, batch_size: int = EVAL_BATCH) -> pd.DataFrame:
    """One row per complete answer in the evaluation windows: ``correct`` (exact match under greedy
    decoding), ``loss`` (mean nats per answer token), ``length``, ``kind``, ``sequence``, ``position``.

    Greedy decoding reproduces the answer exactly if and only if, at every answer position, the
    most likely token given the true prefix is the true token (if all are, greedy decoding follows
    the true answer step by step; at the first one that is not, it leaves it). So one teacher-forced
    pass gives the exact-match accuracy of greedy decoding, newline (end of answer) included.
    """
    offsets, hits, losses, mask, targets = greedy_hits(model, split, context_length, n_sequences, batch_size)
    tokens = np.asarray(split.tokens)
    rows = []
    for i, offset in enumerate(offsets):
        for a, b in answer_spans(mask[i], targets[i]):
            # the question is the text between the last "Q: " before the answer and "\nA: "
            head = bytes(tokens[offset:offset + a + 1]).decode("ascii", errors="replace")
            question = head[head.rfind("Q: ") + 3:head.rfind("\nA: ")]
            rows.append({"sequence": i, "position": int(a), "length": int(b - a), "kind": question_kind(question),
                         "loss": float(losses[i, a:b].mean()), "correct": bool(hits[i, a:b].all())})
    return pd.DataFrame(rows, columns=["sequence", "position", "length", "kind", "loss", "correct"])


# -- the task's report section ------------------------------------------------------------------
def math_eval(folder: StudyFolder, run_id: str, task) -> pd.DataFrame:
    model = folder.load_model(run_id)
    n = folder.eval_sequences
    parts = []
    for split, label in (("test", "interpolation (test)"), ("extrapolation", "extrapolation")):
        df = answer_accuracy(model, task.splits()[split], task.context_length, n)
        df.insert(0, "split", label)
        parts.append(df)
    return pd.concat(parts, ignore_index=True)


def math_view(task, folder: StudyFolder, runs: pd.DataFrame, pp: pd.DataFrame) -> str:
    spec = str(runs["task"].iloc[0])
    parts = []
    for _, r in label_runs(runs).iterrows():
        df = folder.cached_table(r["run_id"], "math", lambda: math_eval(folder, r["run_id"], task))
        parts.append(df.assign(model=r["model"], seed=r["seed"], unit=r["run_id"] + ":" + df["sequence"].astype(str)))
    answers = pd.concat(parts, ignore_index=True)
    answers["accuracy"] = answers["correct"].astype(float)
    rows = []
    for (m, split), d in answers.groupby(["model", "split"], sort=False):
        acc = cluster_ci(d["accuracy"].to_numpy(), np.ones(len(d)), d["unit"].to_numpy())
        loss = cluster_ci(d["loss"].to_numpy(), d["length"].to_numpy(float), d["unit"].to_numpy())
        rows.append({"model": m, "split": split, "answers": len(d), "exact match": acc[0], "acc low": acc[1],
                     "acc high": acc[2], "answer loss (nats/char)": loss[0], "loss low": loss[1], "loss high": loss[2]})
    table = pd.DataFrame(rows)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
    sns.barplot(data=answers, x="model", y="accuracy", hue="split", errorbar=("ci", LEVEL), n_boot=N_BOOT, seed=0, ax=ax1)
    sns.barplot(data=answers, x="model", y="loss", hue="split", errorbar=("ci", LEVEL), n_boot=N_BOOT, seed=0, ax=ax2)
    ax1.set_ylabel("exact-match accuracy (greedy)")
    ax1.set_ylim(0, max(0.05, min(1.0, answers["accuracy"].groupby([answers["model"], answers["split"]]).mean().max() * 1.3)))
    ax2.set_ylabel("mean loss per answer character (nats)")
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", labelrotation=20)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    by_kind = (answers.groupby(["model", "split", "kind"])["accuracy"].mean().unstack("kind").reset_index())
    return (img_tag(figure_png(fig), f"math accuracy and answer loss of {spec}") +
            paragraph("Answers only (their characters and the closing newline). Interpolation: held-out questions of the "
               "training difficulties; extrapolation: harder ones. Exact match under greedy decoding. The table's "
               "intervals are 95% bootstrap intervals over evaluation windows (the plot's over answers).") +
            html_table(table) + paragraph("Exact-match accuracy by kind of problem:") + html_table(by_kind))
