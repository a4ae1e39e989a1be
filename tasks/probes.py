"""Probes: synthetic tasks whose answer is known exactly, at controlled distances.

Each probe instance is one sequence of ``context + 1`` tokens (windows start only at instance
starts), generated for the context it is asked for, so ``--context`` applies. Options go in
the task spec: ``recall:keys=128,values=32``, ``copy:segment=4``, ``lag:k=16,p=0.8``.

* ``recall``: a stream of key-value pairs; some pairs repeat the key of an earlier pair at a
  distance of exactly 2, 4, 8, ... tokens (powers of two below the context), and the model must
  give that pair's value. Keys are never reused otherwise and each stored pair is queried at
  most once, so the answer is unique and the only earlier occurrence of the key is at that
  distance. Only query values are scored (their floor is 0 nats).
* ``copy``: random tokens in which a marker opens a random segment that appears again, after a
  second marker, exactly d tokens later (d a power of two; the induction pattern). Only the
  repeated segment is scored (floor 0 nats).
* ``lag``: each token equals the token k places back with probability p, else is uniform over
  the ``vocab`` symbols. Every target counts; its optimal loss is known in closed form
  (:meth:`Lag.entropy_per_position`), so a study shows each architecture's distance from the
  floor, and a model that cannot see k tokens back stays at log(vocab).

This module generates the instances; their report sections are :mod:`mnemoscope.tasks.probe_views`.
"""
from __future__ import annotations

import math

import numpy as np

from mnemoscope.measure.bootstrap import cluster_ci
from mnemoscope.errors import UserError
from mnemoscope.registry import register_task
from mnemoscope.contract.task import Task, check_options, sequences_split, token_dtype
from mnemoscope.tasks.probe_views import (copy_view, lag_view, phase_sentence, phase_table, phase_view, recall_findings,
                                          recall_headline, recall_view)

SPLIT_SEEDS = {"train": 0, "validation": 1, "test": 2}


def powers_of_two(low: int, high: int) -> np.ndarray:
    """Powers of two d with low <= d <= high."""
    return np.array([2 ** j for j in range(1, 31) if low <= 2 ** j <= high], dtype=np.int64)


def _int(task: str, name: str, value, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise UserError(f"{task} option {name} must be an integer {bound}, got {value!r}")
    return value


class Probe(Task):
    """Shared by the probes: options, one instance per sequence, generation per split."""

    default_context = 256
    version = "1"
    known_options: dict[str, object] = {}

    def __init__(self, source: str | None = None, context_length: int | None = None, **options):
        if source is not None:
            raise UserError(f"task {self.name} is generated; it takes options (key=value), not a source {source!r}")
        check_options(self.name, options, set(self.known_options) | {"train_tokens", "eval_sequences"})
        options = {**self.known_options, "train_tokens": 2_000_000, "eval_sequences": 512, **options}
        _int(self.name, "train_tokens", options["train_tokens"], 1)
        _int(self.name, "eval_sequences", options["eval_sequences"], 1)
        super().__init__(source=None, context_length=context_length, **options)
        self.check()

    def check(self) -> None:
        """Validate options against the context (subclasses)."""

    def fingerprint_inputs(self) -> dict:
        return {**super().fingerprint_inputs(), "context": self.context_length}  # instances are made for this length

    def generate(self, n: int, length: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
        """(n, length) tokens and (n, length) mask of counted tokens (None: all count)."""
        raise NotImplementedError

    def build_splits(self):
        length = self.context_length + 1
        out = {}
        for split, seed in SPLIT_SEEDS.items():
            n = max(1, self.options["train_tokens"] // length) if split == "train" else self.options["eval_sequences"]
            tokens, mask = self.generate(n, length, np.random.default_rng([seed, 11]))
            out[split] = sequences_split(tokens.astype(token_dtype(self.vocab_size)), [f"{self.name}:{split}:{n} sequences"],
                                         mask)
        return out

    example = {"context_length": 32, "train_tokens": 4000, "eval_sequences": 16}

    def decode(self, tokens):
        return " ".join(str(int(t)) for t in tokens)

    def encode(self, text: str) -> np.ndarray:
        return np.array([int(t) for t in text.split()], dtype=np.int64)


# -- recall ----------------------------------------------------------------------------------
def recall_sequences(n: int, length: int, n_keys: int, n_values: int, query_fraction: float,
                     rng: np.random.Generator):
    """Key-value pair streams with queries at power-of-two distances.

    Token ids: keys 0..n_keys-1, values n_keys..n_keys+n_values-1. Pair slot s holds a key at
    offset 2s and its value at 2s+1. A query slot repeats the key (and value) of a stored slot
    s - d/2, that is d tokens back. Returns tokens (n, length), mask (n, length) True on query
    values, and distance (n, length): d at query values, else 0.
    """
    slots = length // 2
    distances = powers_of_two(2, length - 2)
    if len(distances) == 0:
        raise UserError(f"recall needs a context of at least 3 tokens, got {length - 1}")
    rows = np.arange(n)
    key_order = np.argsort(rng.random((n, n_keys)), axis=1)  # each row's fresh keys, in order of use
    used = np.zeros(n, dtype=np.int64)
    is_store = np.zeros((n, slots), dtype=bool)
    queried = np.zeros((n, slots), dtype=bool)
    keys = np.zeros((n, slots), dtype=np.int64)
    values = rng.integers(n_keys, n_keys + n_values, size=(n, slots))
    dist = np.zeros((n, slots), dtype=np.int64)
    for s in range(slots):
        src = s - distances // 2  # (D,) source slot for each distance
        valid = src >= 0
        srcc = np.clip(src, 0, None)
        feasible = valid[None, :] & is_store[:, srcc] & ~queried[:, srcc]  # (n, D)
        want = (rng.random(n) < query_fraction) | (used >= n_keys)  # out of fresh keys: must query
        can = feasible.any(1)
        query = want & can
        if ((used >= n_keys) & ~can).any():
            raise UserError(f"recall: {n_keys} keys are too few for a context of {length - 1}; raise keys=")
        # a distance uniformly among the feasible ones
        pick = np.argmax(np.where(feasible, rng.random(feasible.shape), -1.0), axis=1)
        d = distances[pick]
        q_rows = rows[query]
        source = s - d[query] // 2
        keys[q_rows, s] = keys[q_rows, source]
        values[q_rows, s] = values[q_rows, source]
        queried[q_rows, source] = True
        dist[q_rows, s] = d[query]
        st = rows[~query]
        keys[st, s] = key_order[st, used[st]]
        used[st] += 1
        is_store[st, s] = True
    tokens = np.zeros((n, length), dtype=np.int64)
    tokens[:, 0:2 * slots:2], tokens[:, 1:2 * slots:2] = keys, values
    if length % 2:  # one lone fresh-or-random key closes an odd-length sequence; never scored
        tokens[:, -1] = rng.integers(0, n_keys, size=n)
    mask = np.zeros((n, length), dtype=bool)
    distance = np.zeros((n, length), dtype=np.int64)
    mask[:, 1:2 * slots:2] = ~is_store
    distance[:, 1:2 * slots:2] = dist
    return tokens, mask, distance


@register_task("recall")
class Recall(Probe):
    """Key-value recall at power-of-two key-query distances; loss on query values only."""

    view_title = "recall against distance"

    def report_view(self, folder, runs, pp) -> str:
        return recall_view(self, folder, runs, pp)

    def report_headline(self, folder, runs):
        return recall_headline(self, folder, runs)

    def report_findings(self, folder, runs) -> str:
        return " ".join(t for t in (recall_findings(self, folder, runs), phase_sentence(self, phase_table(self, folder, runs))) if t)

    def report_through_training(self, folder, runs) -> str:
        return phase_view(self, folder, runs)

    @property
    def no_history_loss(self) -> float:
        """The loss on a query's value of a model that does not find its key: ln(values)."""
        return math.log(self.options["values"])

    no_history_name = "ln(values), the loss of a model that does not find the key"

    known_options = {"keys": 128, "values": 32, "queries": 0.5}

    def check(self):
        o = self.options
        _int("recall", "keys", o["keys"], 2, 4096)
        _int("recall", "values", o["values"], 2, 4096)
        if isinstance(o["queries"], bool) or not isinstance(o["queries"], (int, float)) or not 0 < o["queries"] < 1:
            raise UserError(f"recall option queries (fraction of pairs that are queries) must be in (0, 1), got {o['queries']!r}")

    @property
    def vocab_size(self) -> int:
        return self.options["keys"] + self.options["values"]

    def generate(self, n, length, rng):
        o = self.options
        tokens, mask, _ = recall_sequences(n, length, o["keys"], o["values"], float(o["queries"]), rng)
        return tokens, mask


# -- copy --------------------------------------------------------------------------------------
def copy_sequences(n: int, length: int, n_symbols: int, segment: int, rng: np.random.Generator):
    """Random symbols with a marked segment repeated d tokens later (d a power of two).

    Token ids: symbols 0..n_symbols-1, marker n_symbols. The marker at offset a opens the
    segment a+1..a+segment; the marker at a+d opens its repeat. Returns tokens (n, length),
    mask (n, length) True on the repeated segment, and d (n,).
    """
    distances = powers_of_two(segment + 1, length - 1 - segment)
    if len(distances) == 0:
        raise UserError(f"copy: a segment of {segment} needs a context of at least {2 * segment + 2} tokens")
    tokens = rng.integers(0, n_symbols, size=(n, length))
    d = distances[rng.integers(0, len(distances), size=n)]
    a = (rng.random(n) * (length - d - segment)).astype(np.int64)  # a + d + segment <= length - 1
    rows = np.arange(n)[:, None]
    seg = a[:, None] + 1 + np.arange(segment)[None, :]  # (n, segment) offsets of the source segment
    tokens[rows[:, 0], a] = n_symbols
    tokens[rows[:, 0], a + d] = n_symbols
    tokens[rows, seg + d[:, None]] = tokens[rows, seg]
    mask = np.zeros((n, length), dtype=bool)
    mask[rows, seg + d[:, None]] = True
    return tokens, mask, d


@register_task("copy")
class Copy(Probe):
    """A marked random segment repeated d tokens later (d = 2^j); loss on the repeat only."""

    view_title = "copy against distance"

    def report_view(self, folder, runs, pp) -> str:
        return copy_view(self, folder, runs, pp)

    def report_findings(self, folder, runs) -> str:
        return phase_sentence(self, phase_table(self, folder, runs))

    def report_through_training(self, folder, runs) -> str:
        return phase_view(self, folder, runs)

    @property
    def no_history_loss(self) -> float:
        """The loss on the repeat of a model that does not copy: ln(symbols)."""
        return math.log(self.options["symbols"])

    no_history_name = "ln(symbols), the loss of a model that does not copy"

    known_options = {"symbols": 16, "segment": 4}

    def check(self):
        _int("copy", "symbols", self.options["symbols"], 2, 4096)
        seg = _int("copy", "segment", self.options["segment"], 1)
        if len(powers_of_two(seg + 1, self.context_length - seg)) == 0:
            raise UserError(f"copy: a segment of {seg} needs a context of at least {2 * seg + 2} tokens; "
                            f"got {self.context_length}")

    @property
    def vocab_size(self) -> int:
        return self.options["symbols"] + 1  # symbols + marker

    @property
    def marker(self) -> int:
        return self.options["symbols"]

    def generate(self, n, length, rng):
        tokens, mask, _ = copy_sequences(n, length, self.options["symbols"], self.options["segment"], rng)
        return tokens, mask


# -- lag ---------------------------------------------------------------------------------------
def lag_sequences(n: int, length: int, n_symbols: int, k: int, p: float, rng: np.random.Generator) -> np.ndarray:
    """x_i = x_{i-k} with probability p, else uniform over n_symbols (also for i < k)."""
    x = rng.integers(0, n_symbols, size=(n, length))
    copy = rng.random((n, length)) < p
    for i in range(k, length):  # left to right: x_{i-k} is final when x_i reads it
        x[:, i] = np.where(copy[:, i], x[:, i - k], x[:, i])
    return x


def lag_entropy(n_symbols: int, p: float) -> float:
    """Entropy in nats of p * delta(x_{i-k}) + (1 - p) * uniform: the repeated symbol has
    probability p + (1-p)/V, each of the other V-1 has (1-p)/V."""
    V = n_symbols
    hit, miss = p + (1 - p) / V, (1 - p) / V
    return float(-hit * math.log(hit) - ((V - 1) * miss * math.log(miss) if miss > 0 else 0.0))


@register_task("lag")
class Lag(Probe):
    """x_i = x_{i-k} with probability p, else uniform; the optimal loss per position is known exactly."""

    view_title = "distance from the exact floor"

    def report_view(self, folder, runs, pp) -> str:
        return lag_view(self, folder, runs, pp)

    known_options = {"vocab": 16, "k": 16, "p": 0.8}

    def check(self):
        o = self.options
        _int("lag", "vocab", o["vocab"], 2, 4096)
        _int("lag", "k", o["k"], 1)
        if o["k"] >= self.context_length:
            raise UserError(f"lag: k={o['k']} must be below the context ({self.context_length}) for any target to depend on it")
        if isinstance(o["p"], bool) or not isinstance(o["p"], (int, float)) or not 0 <= o["p"] <= 1:
            raise UserError(f"lag option p must be a probability in [0, 1], got {o['p']!r}")

    @property
    def vocab_size(self) -> int:
        return self.options["vocab"]

    def entropy_per_position(self, context_length: int | None = None) -> np.ndarray:
        """(T,) optimal expected loss in nats at each position: position t predicts token t+1,
        which depends on token t+1-k: log(vocab) while that lies before the sequence (t+1 < k),
        :func:`lag_entropy` once it is in view."""
        T = context_length or self.context_length
        o = self.options
        out = np.full(T, math.log(o["vocab"]))
        out[max(0, o["k"] - 1):] = lag_entropy(o["vocab"], float(o["p"]))
        return out

    def generate(self, n, length, rng):
        o = self.options
        return lag_sequences(n, length, o["vocab"], o["k"], float(o["p"]), rng), None

    def floor_excess(self, losses, mask, seed=0):
        """The exact floor from position k-1 on (where the lagged token is in view: :func:`lag_entropy`)
        and the run's mean excess over it, with a 95% bootstrap interval over sequences; fits.csv and
        the lag view both show it."""
        k = self.options["k"]
        floor = self.entropy_per_position(losses.shape[1])
        excess = losses[:, k - 1:] - floor[None, k - 1:]  # positions whose target depends on a token in view
        mean, lo, hi = cluster_ci(excess.ravel(), np.asarray(mask)[:, k - 1:].ravel().astype(float),
                                  np.repeat(np.arange(len(excess)), excess.shape[1]), seed=seed)
        return {"loss_floor": float(floor[k - 1]), "excess_over_floor": mean, "excess_over_floor_low": lo,
                "excess_over_floor_high": hi}
