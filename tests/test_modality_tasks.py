"""Images, video, math and the probes: shapes, vocabularies, splits, masks, closed forms, views.

Everything runs on small data made here (no Debian dataset, no download)."""
import math
import random
import re
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mnemoscope.measure.bootstrap import cluster_ci
from mnemoscope.cli import main
from mnemoscope.errors import UserError
from mnemoscope.registry import TASKS
from mnemoscope.specs import parse_spec
from mnemoscope.contract.windows import eval_offsets, window_batch
from mnemoscope.tasks import images as images_mod
from mnemoscope.tasks.images import Images, pixel_loss_map
from mnemoscope.tasks.math import KINDS, Math, answer_accuracy, answer_spans, hash_fraction, own_problems, pack
from mnemoscope.tasks.probe_views import copy_distances, recall_distances
from mnemoscope.tasks.probes import Copy, Lag, Recall, copy_sequences, lag_entropy, lag_sequences, recall_sequences
from mnemoscope.tasks.video import Video, bounce, clip_sequences, frame_means, quantize_unit, sprite_clips


@pytest.fixture
def image_npz(tmp_path):
    """40 train and 8 test images of 4x5 pixels, every one different."""
    rng = np.random.default_rng(0)
    path = tmp_path / "tiny.npz"
    np.savez(path, train=rng.integers(0, 256, (40, 4, 5), dtype=np.uint8),
             test=rng.integers(0, 256, (8, 4, 5), dtype=np.uint8))
    return path


def _rows(split, length):
    return np.asarray(split.tokens).reshape(-1, length)


# -- images ------------------------------------------------------------------------------------
def test_images_tokens_splits_and_geometry(image_npz, tmp_path, monkeypatch):
    task = Images(source=str(image_npz), levels=4)
    assert (task.vocab_size, task.context_length, task.height, task.width) == (5, 20, 4, 5)
    s = task.splits()
    train_src, test_src = np.load(image_npz)["train"], np.load(image_npz)["test"]
    rows = {k: _rows(v, 21) for k, v in s.items()}
    assert [len(rows[k]) for k in ("train", "validation", "test")] == [36, 4, 8]
    for k, r in rows.items():
        assert (r[:, 0] == 4).all() and (r[:, 1:] < 4).all()  # BOS then grey levels
        assert np.array_equal(np.asarray(s[k].starts), np.arange(len(r)) * 21)
    # the test split is the test set, in order, quantized to equal-width bins
    assert np.array_equal(rows["test"][:, 1:], (test_src.reshape(8, -1).astype(int) * 4) // 256)
    # train and validation partition the training images, sharing none
    q = lambda a: {bytes(x) for x in ((a.reshape(len(a), -1).astype(int) * 4) // 256).astype(np.uint8)}
    tr, va = {bytes(x.astype(np.uint8)) for x in rows["train"][:, 1:]}, {bytes(x.astype(np.uint8)) for x in rows["validation"][:, 1:]}
    assert not tr & va and tr | va == q(train_src)
    # geometry: position i predicts pixel (i // W, i % W) of the image
    x, y, m = window_batch(s["test"], np.asarray(s["test"].starts[:2]), 20)
    img = (test_src[:2].astype(int) * 4) // 256
    for i in (0, 4, 5, 13, 19):
        r, c = task.pixel_of_position(i)
        assert (r, c) == (i // 5, i % 5) and (y[:, i].numpy() == img[:, r, c]).all()
    assert m.all()
    # deterministic: a fresh cache prepares the same arrays
    monkeypatch.setenv("MNEMOSCOPE_CACHE", str(tmp_path / "other"))
    again = Images(source=str(image_npz), levels=4).splits()
    assert all(np.array_equal(np.asarray(again[k].tokens), np.asarray(s[k].tokens)) for k in s)


def test_pixel_loss_map_geometry():
    H, W = 3, 7  # not square, so a row/column mix-up shows
    m = pixel_loss_map(np.arange(H * W), np.arange(H * W, dtype=float), H, W)
    assert m.shape == (H, W)
    for r in range(H):
        for c in range(W):
            assert m[r, c] == r * W + c
    partial = pixel_loss_map(np.array([0, 8]), np.array([1.0, 2.0]), H, W)
    assert partial[0, 0] == 1 and partial[1, 1] == 2 and np.isnan(partial).sum() == H * W - 2


def test_images_errors(image_npz, tmp_path, monkeypatch):
    with pytest.raises(UserError, match="fixed sequence length of 20"):
        Images(source=str(image_npz), context_length=10)
    with pytest.raises(UserError, match="levels must be an integer from 2 to 256"):
        Images(source=str(image_npz), levels=1)
    with pytest.raises(UserError, match="unknown option"):
        Images(source=str(image_npz), level=4)
    with pytest.raises(UserError, match="unknown image source"):
        Images(source="nope")
    monkeypatch.setattr(images_mod, "FASHION_DIR", tmp_path / "absent")
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist"):
        Images().splits()
    monkeypatch.setitem(__import__("sys").modules, "sklearn.datasets", None)  # as if scikit-learn were missing
    with pytest.raises(UserError, match="needs scikit-learn"):
        Images(source="digits").splits()


def test_levels_256_uses_a_wider_dtype(image_npz):
    s = Images(source=str(image_npz), levels=256).splits()
    assert s["test"].tokens.dtype == np.uint16 and int(np.asarray(s["test"].tokens).max()) == 256


# -- video -------------------------------------------------------------------------------------
def test_video_frames_follow_the_sprite_motion():
    rng = np.random.default_rng(3)
    sprites = rng.random((6, 3, 3)).astype(np.float32) * 0.9 + 0.1  # never black, so each sprite shows
    clips, pos, vel, chosen = sprite_clips(sprites, n_clips=20, frames=6, size=10, objects=2, speed=2, rng=rng)
    assert clips.shape == (20, 6, 10, 10) and pos.shape == vel.shape == (20, 6, 2, 2)
    assert (pos >= 0).all() and (pos <= 7).all() and (np.abs(vel) <= 2).all() and (np.abs(vel).sum(-1) > 0).all()
    for f in range(1, 6):  # each step is the previous velocity, reflected off the walls
        p, v = bounce(pos[:, f - 1], vel[:, f - 1], 7)
        assert np.array_equal(p, pos[:, f]) and np.array_equal(v, vel[:, f])
    # every frame is exactly the sprites drawn at the recorded positions (brighter pixel wins)
    for n in range(20):
        for f in range(6):
            canvas = np.zeros((10, 10), np.float32)
            for o in range(2):
                r, c = pos[n, f, o]
                canvas[r:r + 3, c:c + 3] = np.maximum(canvas[r:r + 3, c:c + 3], sprites[chosen[n, o]])
            assert np.array_equal(canvas, clips[n, f])


def test_video_one_sprite_moves_by_its_velocity():
    sprite = np.ones((1, 2, 2), np.float32)
    clips, pos, vel, _ = sprite_clips(sprite, 50, 3, 12, 1, 1, np.random.default_rng(0))
    shifts = 0
    for n in range(50):
        for f in range(2):
            step = vel[n, f + 1, 0]
            if np.array_equal(step, vel[n, f, 0]):  # no bounce: the frame is the previous one shifted by the velocity
                shifted = np.roll(clips[n, f], tuple(step), axis=(0, 1))
                assert np.array_equal(shifted, clips[n, f + 1])
                shifts += 1
    assert shifts > 50


def test_video_token_layout_and_disjoint_sprites(tmp_path):
    # each image is one flat grey value; train and test values differ, so every lit token names its image set
    train = np.repeat(np.arange(10, 30, dtype=np.uint8)[:, None, None], 8, 1).repeat(8, 2)
    test = np.repeat(np.arange(100, 106, dtype=np.uint8)[:, None, None], 8, 1).repeat(8, 2)
    path = tmp_path / "flat.npz"
    np.savez(path, train=train, test=test)
    task = Video(source=str(path), frames=3, size=6, objects=2, sprite=2, speed=1, levels=256, clips=30, eval_clips=10)
    assert (task.vocab_size, task.context_length, task.frame_length) == (257, 108, 36)
    s = task.splits()
    seen = {}
    for k, split in s.items():
        rows = _rows(split, 109)
        assert (rows[:, 0] == 256).all() and (rows[:, 1:] < 256).all()
        seen[k] = set(np.unique(rows[:, 1:])) - {0}
    assert seen["test"] <= set(range(100, 106)) and seen["train"] | seen["validation"] <= set(range(10, 30))
    assert not seen["train"] & seen["validation"] and seen["train"] and seen["validation"]
    # frame-major raster order: pixel (f, r, c) sits at 1 + f*36 + r*6 + c, the same pixel one frame back 36 earlier
    clips = np.random.default_rng(0).random((2, 3, 6, 6))
    toks = clip_sequences(clips, 4)
    q = quantize_unit(clips, 4)
    assert toks[1, 1 + 2 * 36 + 4 * 6 + 5] == q[1, 2, 4, 5] and toks[1, 1 + 1 * 36 + 4 * 6 + 5] == q[1, 1, 4, 5]
    assert task.frame_of_position(2 * 36 + 4 * 6 + 5) == (2, 4, 5)
    with pytest.raises(UserError, match="fixed sequence length of 108"):
        Video(source=str(path), frames=3, size=6, sprite=2, context_length=64)
    with pytest.raises(UserError, match="sprite must be an integer from 1 to 5"):
        Video(source=str(path), size=6, sprite=6)


def test_frame_means():
    losses = np.arange(12, dtype=float).reshape(1, 12)
    mask = np.ones_like(losses, bool)
    mask[0, 0] = False
    assert np.allclose(frame_means(losses, mask, 4), [[2.0, 5.5, 9.5]])


# -- math --------------------------------------------------------------------------------------
def _check_answer(q: str, a: str) -> bool:
    """Recompute an answer from its question text."""
    if q.startswith("What is "):
        expr = q[len("What is "):-1]
        assert re.fullmatch(r"[0-9+\-*()]+", expr)
        return str(eval(expr)) == a  # digits, + - * and parentheses only (checked above)
    if q.startswith("Solve "):
        eq, var = re.fullmatch(r"Solve (.+) for (\w)\.", q).groups()
        left, right = eq.split("=")
        side = lambda s: eval(s.replace(var, f"({a})"))
        other = str(int(a) + 1)  # linear with distinct coefficients: the root is unique
        return side(left) == side(right) and eval(left.replace(var, f"({other})")) != eval(right.replace(var, f"({other})"))
    m = re.fullmatch(r"Which is (greater|smaller): (\S+) or (\S+)\?", q)
    if m:
        x, y = Decimal(m.group(2)), Decimal(m.group(3))
        return a == (m.group(2) if (x > y) == (m.group(1) == "greater") else m.group(3))
    m = re.fullmatch(r"Is (\S+) greater than (\S+)\?", q)
    return a == ("yes" if Decimal(m.group(1)) > Decimal(m.group(2)) else "no")


def test_math_generator_answers_are_right_at_every_difficulty():
    rng = random.Random(0)
    for d in range(1, 6):
        for kind, gen in KINDS.items():
            for _ in range(40):
                q, a = gen(rng, d)
                assert _check_answer(q, a), (kind, d, q, a)


def _problems(split):
    text = bytes(np.asarray(split.tokens)).decode()
    return re.findall(r"Q: (.*)\nA: (.*)\n", text)


def test_math_splits_mask_and_difficulty(tmp_path, monkeypatch):
    task = Math(train_tokens=20_000, eval_tokens=4_000)
    s = task.splits()
    assert set(s) == {"train", "validation", "test", "extrapolation"} and task.vocab_size == 128
    questions = {k: {q for q, _ in _problems(v)} for k, v in s.items()}
    for a in questions:
        for b in questions:
            if a < b and {a, b} != {"validation", "extrapolation"}:
                assert not questions[a] & questions[b], (a, b)
    assert not questions["train"] & questions["extrapolation"]
    for k, split in s.items():
        toks, mask = np.asarray(split.tokens), np.asarray(split.mask)
        assert bytes(toks[mask]).decode() == "".join(a + "\n" for _, a in _problems(split))  # answers only
        assert all(bytes(toks[st:st + 3]) == b"Q: " for st in np.asarray(split.starts)[:50])
    # windows start at problems and their mask scores only answer characters
    x, y, m = window_batch(s["test"], eval_offsets(s["test"], 64, 4), 64)
    assert set(bytes(y[m].numpy().astype(np.uint8)).decode()) <= set("0123456789-.yesno\n")
    # extrapolation is harder: more operators per arithmetic question
    n_ops = lambda k: np.mean([len(re.findall(r"(?<=[0-9)])[+\-*]", q)) for q in questions[k] if q.startswith("What")])
    assert n_ops("extrapolation") > n_ops("test") + 1
    # deterministic
    monkeypatch.setenv("MNEMOSCOPE_CACHE", str(tmp_path / "other"))
    again = Math(train_tokens=20_000, eval_tokens=4_000).splits()
    assert all(np.array_equal(np.asarray(again[k].tokens), np.asarray(s[k].tokens)) for k in s)


def test_math_deepmind_source(tmp_path, monkeypatch):
    import importlib.util

    if importlib.util.find_spec("mathematics_dataset") is None:
        with pytest.raises(UserError, match="pip install mathematics-dataset"):
            Math(source="deepmind", train_tokens=2000, eval_tokens=1000).splits()
        return
    s = Math(source="deepmind", train_tokens=3000, eval_tokens=1000).splits()
    questions = {k: {q for q, _ in _problems(v)} for k, v in s.items()}
    assert all(questions.values()) and not questions["validation"] & questions["test"]
    assert not questions["train"] & (questions["test"] | questions["extrapolation"])
    for split in s.values():
        toks, mask = np.asarray(split.tokens), np.asarray(split.mask)
        assert bytes(toks[mask]).decode() == "".join(a + "\n" for _, a in _problems(split))
    monkeypatch.setenv("MNEMOSCOPE_CACHE", str(tmp_path / "other"))  # prepared again: the same problems
    again = Math(source="deepmind", train_tokens=3000, eval_tokens=1000).splits()
    assert all(np.array_equal(np.asarray(again[k].tokens), np.asarray(s[k].tokens)) for k in s)


def test_math_hash_split_is_exclusive():
    for split in ("train", "test"):
        for q, _ in own_problems(split, range(1, 3), 2000, seed=5):
            frac = hash_fraction(q)
            assert (frac < 0.8) if split == "train" else (frac >= 0.9)


class _Oracle(torch.nn.Module):
    """Knows every window: puts its largest logit on the true next token, except where told not to."""

    def __init__(self, split, T, wrong=()):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        toks = np.asarray(split.tokens).astype(np.int64)
        self.next = {tuple(toks[o:o + T]): toks[o + 1:o + T + 1] for o in np.asarray(split.starts) if o + T < len(toks)}
        self.wrong = set(wrong)

    def forward(self, x):
        out = torch.zeros(*x.shape, 128)
        for i, row in enumerate(x.tolist()):
            y = self.next[tuple(row)]
            out[i, np.arange(len(y)), y] = 10.0
            for t in range(len(y)):
                if (tuple(row), t) in self.wrong:
                    out[i, t, (y[t] + 1) % 128] = 20.0
        return out + self.w


def test_answer_accuracy_is_greedy_exact_match():
    problems = [("What is 1+2?", "3"), ("Solve x+1=12 for x.", "11"), ("Is 5 greater than 7?", "no")] * 6
    split = pack(problems, ["t"])
    T = 48
    perfect = answer_accuracy(_Oracle(split, T), split, T, n_sequences=5)
    assert len(perfect) > 0 and perfect["correct"].all()
    assert set(perfect["kind"]) == {"arithmetic", "linear", "compare"}
    # spans: every counted run is a whole answer with its newline; an answer cut by the window's end is left out
    off = eval_offsets(split, T, 5)
    _, y, m = window_batch(split, off, T)
    for i in range(len(off)):
        spans = answer_spans(m[i].numpy(), y[i].numpy())
        for a, b in spans:
            assert y[i, b - 1] == ord("\n") and m[i, a:b].all()
        assert len(spans) == (perfect["sequence"] == i).sum()
    # one wrong character (here the closing newline) makes that answer wrong, and only that one
    first = perfect.iloc[0]
    windows = window_batch(split, off, T)[0]
    wrong = answer_accuracy(_Oracle(split, T, wrong={(tuple(windows[0].tolist()), int(first["position"] + first["length"]) - 1)}),
                            split, T, n_sequences=5)
    bad = wrong[~wrong["correct"]]
    assert len(bad) >= 1 and (bad["position"] == first["position"]).all()
    assert set(bad["sequence"]) == {i for i in range(len(off)) if torch.equal(windows[i], windows[0])}  # identical windows
    assert not np.allclose(wrong["loss"], perfect["loss"])  # the wrong character also costs loss


# -- probes ------------------------------------------------------------------------------------
@pytest.mark.parametrize("V,p", [(16, 0.8), (2, 0.5), (7, 0.0), (5, 1.0)])
def test_lag_entropy_closed_form(V, p):
    q = np.full(V, (1 - p) / V)
    q[0] += p
    explicit = -sum(x * math.log(x) for x in q if x > 0)
    assert lag_entropy(V, p) == pytest.approx(explicit, abs=1e-12)
    task = Lag(vocab=V, k=4, p=p, context_length=10)
    h = task.entropy_per_position()
    assert h.shape == (10,) and np.allclose(h[:3], math.log(V)) and np.allclose(h[3:], explicit)


def test_lag_data_meets_its_floor():
    V, k, p = 8, 5, 0.7
    x = lag_sequences(4000, 40, V, k, p, np.random.default_rng(0))
    hit = x[:, k:] == x[:, :-k]
    assert hit.mean() == pytest.approx(p + (1 - p) / V, abs=0.01)
    # the oracle's loss: -log q(x_i | x_{i-k}), whose expectation is the closed-form entropy
    nll = -np.log(np.where(hit, p + (1 - p) / V, (1 - p) / V))
    se = nll.std() / math.sqrt(nll.size / 4)  # positions of one sequence are not independent: be generous
    assert abs(nll.mean() - lag_entropy(V, p)) < 4 * se
    assert (x < V).all() and (x >= 0).all()


def test_recall_queries_have_unique_answers_at_power_of_two_distances():
    n, length, K, Vv = 300, 65, 40, 8
    tokens, mask, dist = recall_sequences(n, length, K, Vv, 0.5, np.random.default_rng(1))
    assert tokens.shape == mask.shape == (n, length) and tokens.max() < K + Vv
    assert (tokens[:, 0:64:2] < K).all() and (tokens[:, 1:64:2] >= K).all()  # keys then values
    assert not mask[:, 0::2].any()  # only values are scored
    d = dist[mask]
    assert set(np.unique(d)) == {2, 4, 8, 16, 32} and (d & (d - 1) == 0).all()
    for i, j in zip(*np.nonzero(mask)):
        key, d_ij = tokens[i, j - 1], dist[i, j]
        earlier = np.flatnonzero(tokens[i, :j - 1] == key)
        assert list(earlier) == [j - 1 - d_ij]  # the key's only earlier occurrence, d back
        assert tokens[i, j] == tokens[i, j - d_ij]  # its value: the answer is determined (floor 0)
    # distances recovered from the tokens alone, as the report does (position t predicts token t+1)
    rec = recall_distances(tokens, mask[:, 1:])
    assert np.array_equal(rec, dist[:, 1:])


def test_copy_repeats_at_distance():
    tokens, mask, d = copy_sequences(200, 129, 10, 4, np.random.default_rng(2))
    assert set(np.unique(d)) == {8, 16, 32, 64}  # powers of two from segment + 1 up to what fits
    assert ((tokens == 10).sum(1) == 2).all() and mask.sum(1).tolist() == [4] * 200
    assert np.array_equal(copy_distances(tokens, 10), d)
    for i in range(200):
        rep = np.flatnonzero(mask[i])
        assert np.array_equal(tokens[i, rep], tokens[i, rep - d[i]])  # the repeat is its source, d back
        assert tokens[i, rep[0] - 1] == 10  # opened by the marker


def test_probe_tasks_splits_options_and_context(tmp_path, monkeypatch):
    cls, _, opts = parse_spec("lag:k=16,p=0.8", TASKS)
    assert cls is Lag and opts == {"k": 16, "p": 0.8}
    for task in (Lag(context_length=64, train_tokens=5000, eval_sequences=20, **opts),
                 Recall(context_length=64, train_tokens=5000, eval_sequences=20),
                 Copy(context_length=64, train_tokens=5000, eval_sequences=20)):
        s = task.splits()
        rows = {k: _rows(v, 65) for k, v in s.items()}
        assert len(rows["validation"]) == len(rows["test"]) == 20 and len(rows["train"]) == 5000 // 65
        assert all((r < task.vocab_size).all() for r in rows.values())
        as_set = {k: {bytes(r.astype(np.uint16)) for r in v} for k, v in rows.items()}
        assert not as_set["train"] & as_set["test"] and not as_set["validation"] & as_set["test"]
        monkeypatch.setenv("MNEMOSCOPE_CACHE", str(tmp_path / task.name))  # fresh cache: same data
        again = type(task)(context_length=64, **task.options).splits()
        assert all(np.array_equal(np.asarray(again[k].tokens), np.asarray(s[k].tokens)) for k in s)
    assert Recall(context_length=64).fingerprint() != Recall(context_length=128).fingerprint()
    with pytest.raises(UserError, match="k=300 must be below the context"):
        Lag(k=300)
    with pytest.raises(UserError, match="unknown option"):
        Lag(lag=3)
    with pytest.raises(UserError, match="takes options"):
        Copy(source="somefile")


def test_cluster_ci_resamples_whole_units():
    values = np.array([1.0, 1.0, 0.0, 0.0])
    mean, lo, hi = cluster_ci(values, np.ones(4), np.array([0, 0, 1, 1]))
    assert mean == 0.5 and lo == 0.0 and hi == 1.0  # two units: each resample is 0, 0.5 or 1


# -- end to end: a tiny study shows every view --------------------------------------------------
def test_tiny_study_report_has_each_view(image_npz, tmp_path):
    out = tmp_path / "study"
    tasks = [f"images:{image_npz}", "math:train_tokens=4000,eval_tokens=2000", "lag:k=4,train_tokens=3000",
             "recall:train_tokens=3000", "copy:segment=2,train_tokens=3000",
             f"video:source={image_npz},frames=2,size=4,sprite=2,speed=1,clips=50,eval_clips=8"]
    args = ["--arch", "lstm", "--task", *tasks, "--params", "4k", "--tokens", "1500", "--eval-sequences", "8",
            "--batch-size", "4", "--no-progress", "--out", str(out)]
    assert main(args) == 0  # no --context: each task at its natural length
    html = (out / "report.html").read_text()
    for title in ("per-pixel loss map", "frames", "answers, interpolation and extrapolation", "recall against distance",
                  "copy against distance", "distance from the exact floor"):
        assert f": {title}</h2>" in html, title
    assert "view not drawn" not in html
    runs = pd.read_parquet(out / "runs.parquet")
    assert dict(zip(runs["task"], runs["context"])) == {tasks[0]: 20, tasks[1]: 256, tasks[2]: 256, tasks[3]: 256,
                                                         tasks[4]: 256, tasks[5]: 32}
    math_run = runs.loc[runs["task"] == tasks[1], "run_id"].item()
    answers = pd.read_parquet(out / "runs" / math_run / "view_math.parquet")
    assert set(answers["split"]) == {"interpolation (test)", "extrapolation"} and len(answers) > 0
    # the report is rebuilt from the stored tables, model-based views included
    for run in (out / "runs").iterdir():
        (run / "model.pt").unlink()
    assert main(["report", str(out)]) == 0
    assert "view not drawn" not in (out / "report.html").read_text()
