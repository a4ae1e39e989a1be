"""``video``: bouncing sprites cut from real images, several frames per sequence.

Each clip shows ``objects`` sprites (real images shrunk to ``sprite`` x ``sprite`` pixels) on a
black ``size`` x ``size`` canvas, each moving with its own random integer velocity (at most
``speed`` pixels per frame on each axis) and bouncing off the walls; where sprites overlap the
brighter pixel wins. A clip is one sequence in frame-major raster order after a BOS token, so
the same pixel of the previous frame is exactly ``size * size`` tokens back: a controlled
long-range dependency that a model must reach to predict later frames cheaply.

Grey levels are quantized to ``levels`` (default 4); BOS is token ``levels``. The sequence
length is fixed by the clip (``--context`` is refused; change ``frames`` or ``size``).
Sprites for train, validation and test come from the disjoint image sets of the ``images``
task (same ``source`` option: fashion, digits, or a .npz file).

``--task video:frames=6,size=12,objects=2`` etc.; defaults keep one clip at 4 x 16 x 16 =
1,024 tokens, a length a CPU can train on.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
import torch.nn.functional as F

from mnemoscope.measure.bootstrap import LEVEL
from mnemoscope.errors import UserError
from mnemoscope.render.figures import figure_png, html_table, img_tag, label_runs, model_palette, paragraph
from mnemoscope.registry import register_task
from mnemoscope.settings import N_BOOT
from mnemoscope.storage.study_folder import StudyFolder
from mnemoscope.contract.task import Task, check_options, sequences_split, token_dtype

from .images import image_source_digest, load_images, parse_levels

SPLIT_SEEDS = {"train": 0, "validation": 1, "test": 2}


def make_sprites(images: np.ndarray, max_value: int, side: int) -> np.ndarray:
    """(N, H, W) grey images -> (N, side, side) float sprites in [0, 1], by area averaging."""
    x = torch.from_numpy(np.asarray(images, dtype=np.float32) / max_value)[:, None]  # (N, 1, H, W)
    return F.adaptive_avg_pool2d(x, side)[:, 0].numpy()


def bounce(position: np.ndarray, velocity: np.ndarray, high: int) -> tuple[np.ndarray, np.ndarray]:
    """One step of motion inside [0, high] with elastic reflection off both walls (integers)."""
    p, v = position + velocity, velocity.copy()
    low_hit, high_hit = p < 0, p > high
    p = np.where(low_hit, -p, p)
    p = np.where(high_hit, 2 * high - p, p)
    v = np.where(low_hit | high_hit, -v, v)
    return p, v


def sprite_clips(sprites: np.ndarray, n_clips: int, frames: int, size: int, objects: int, speed: int,
                 rng: np.random.Generator):
    """Render bouncing-sprite clips.

    Returns ``clips`` (n, frames, size, size) float in [0, 1], ``positions`` (n, frames, objects, 2)
    top-left (row, column) of each sprite in each frame, ``velocities`` (n, frames, objects, 2)
    the step that led to frame f (after any bounce; frame 0: the initial velocity), and ``choice``
    (n, objects) the index of each object's sprite.
    """
    side = sprites.shape[-1]
    high = size - side  # largest top-left coordinate
    choice = rng.integers(0, len(sprites), size=(n_clips, objects))
    pos = rng.integers(0, high + 1, size=(n_clips, objects, 2))
    vel = rng.integers(-speed, speed + 1, size=(n_clips, objects, 2))
    still = (vel == 0).all(-1)
    while still.any():  # every object moves
        vel[still] = rng.integers(-speed, speed + 1, size=(int(still.sum()), 2))
        still = (vel == 0).all(-1)
    clips = np.zeros((n_clips, frames, size, size), dtype=np.float32)
    positions = np.zeros((n_clips, frames, objects, 2), dtype=np.int64)
    velocities = np.zeros((n_clips, frames, objects, 2), dtype=np.int64)
    rows_of = np.arange(n_clips)[:, None, None]
    offs = np.arange(side)
    for f in range(frames):
        if f > 0:
            pos, vel = bounce(pos, vel, high)
        positions[:, f], velocities[:, f] = pos, vel
        for o in range(objects):
            r = pos[:, o, 0, None, None] + offs[None, :, None]  # (n, side, 1)
            c = pos[:, o, 1, None, None] + offs[None, None, :]  # (n, 1, side)
            frame = clips[:, f]
            frame[rows_of, r, c] = np.maximum(frame[rows_of, r, c], sprites[choice[:, o]])
    return clips, positions, velocities, choice


def quantize_unit(x: np.ndarray, levels: int) -> np.ndarray:
    """Values in [0, 1] -> levels 0..levels-1, equal-width bins."""
    return np.minimum((x * levels).astype(np.int64), levels - 1)


def clip_sequences(clips: np.ndarray, levels: int) -> np.ndarray:
    """(n, F, H, W) clips in [0, 1] -> (n, 1 + F*H*W) tokens: BOS (= levels), then frame-major raster order."""
    n = len(clips)
    q = quantize_unit(clips, levels).reshape(n, -1)
    return np.concatenate([np.full((n, 1), levels), q], axis=1).astype(token_dtype(levels + 1))


def _int_option(name: str, value, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise UserError(f"video option {name} must be an integer {bound}, got {value!r}")
    return value


@register_task("video")
class Video(Task):
    """Bouncing sprites cut from real images; frame-major pixel sequences (4 frames of 16x16)."""

    view_title = "frames"

    def report_view(self, folder, runs, pp) -> str:
        return video_view(self, folder, runs, pp)

    fixed_context = True
    version = "1"
    example = {"source": "{images}", "frames": 3, "size": 6, "objects": 2, "sprite": 2, "speed": 1, "clips": 30,
               "eval_clips": 10}

    def __init__(self, source: str | None = None, context_length: int | None = None, frames: int = 4, size: int = 16,
                 objects: int = 2, sprite: int = 8, speed: int = 2, levels: int = 4, clips: int = 20000,
                 eval_clips: int = 1000, **options):
        check_options("video", options, set())
        self.frames = _int_option("frames", frames, 2, 64)
        self.size = _int_option("size", size, 2, 128)
        self.objects = _int_option("objects", objects, 1, 16)
        self.sprite = _int_option("sprite", sprite, 1, self.size - 1)
        self.speed = _int_option("speed", speed, 1, self.size - self.sprite)
        self.levels = parse_levels(levels)
        self.clips = _int_option("clips", clips, 1)
        self.eval_clips = _int_option("eval_clips", eval_clips, 1)
        self.vocab_size = self.levels + 1
        self.frame_length = self.size * self.size  # tokens per frame: the distance to the same pixel one frame back
        self.default_context = self.frames * self.frame_length
        super().__init__(source=source, context_length=context_length, frames=self.frames, size=self.size,
                         objects=self.objects, sprite=self.sprite, speed=self.speed, levels=self.levels,
                         clips=self.clips, eval_clips=self.eval_clips)

    @property
    def bos(self) -> int:
        return self.levels

    def fingerprint_inputs(self) -> dict:
        return {**super().fingerprint_inputs(), "source": image_source_digest(self.source)}

    def frame_of_position(self, position):
        """Position i predicts pixel i of the clip: (frame, row, column)."""
        position = np.asarray(position)
        frame, rest = np.divmod(position, self.frame_length)
        return frame, rest // self.size, rest % self.size

    def build_splits(self):
        images, max_value, name = load_images(self.source)
        out = {}
        for split, seed in SPLIT_SEEDS.items():
            sprites = make_sprites(images[split], max_value, self.sprite)
            n = self.clips if split == "train" else self.eval_clips
            clips, _, _, _ = sprite_clips(sprites, n, self.frames, self.size, self.objects, self.speed,
                                       np.random.default_rng([seed, 7]))
            out[split] = sequences_split(clip_sequences(clips, self.levels),
                                         [f"{name}:{split}:{len(sprites)} sprite images:{n} clips"])
        return out

    def decode(self, tokens):
        return " ".join("BOS" if int(t) == self.bos else str(int(t)) for t in tokens)

    def encode(self, text: str) -> np.ndarray:
        return np.array([self.bos if t == "BOS" else int(t) for t in text.split()], dtype=np.int64)


# -- the task's report section ------------------------------------------------------------------
def frame_means(losses: np.ndarray, mask: np.ndarray, frame_length: int) -> np.ndarray:
    """(N, F) mean loss of each sequence over each frame's positions."""
    N, T = losses.shape
    F = T // frame_length
    m = mask[:, :F * frame_length].reshape(N, F, frame_length)
    l = losses[:, :F * frame_length].reshape(N, F, frame_length)
    return (l * m).sum(-1) / np.maximum(m.sum(-1), 1)


def video_view(task, folder: StudyFolder, runs: pd.DataFrame, pp: pd.DataFrame) -> str:
    spec = str(runs["task"].iloc[0])
    L = task.frame_length
    pp = label_runs(pp)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.2), gridspec_kw={"width_ratios": [2, 1]})
    g = pp.groupby(["model", "position"], as_index=False)[["loss", "ci_low", "ci_high"]].mean()
    palette = model_palette(pp)
    for m, part in g.groupby("model", sort=False):
        # a rolling mean over a row of pixels keeps the curve readable at 1,000+ positions
        smooth = part["loss"].rolling(task.size, min_periods=1, center=True).mean()
        ax1.plot(part["position"], smooth, color=palette[m], lw=1.2, label=m)
        ax1.fill_between(part["position"], part["ci_low"].rolling(task.size, min_periods=1, center=True).mean(),
                         part["ci_high"].rolling(task.size, min_periods=1, center=True).mean(), color=palette[m],
                         alpha=0.15, lw=0)
    for f in range(1, task.frames):
        ax1.axvline(f * L - 0.5, color="k", ls=":", lw=1)
    ax1.set_xlabel(f"position (frame boundaries every {L} tokens)")
    ax1.set_ylabel("test loss (nats/token)")
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    rows = []
    for r, losses, mask in folder.stored_losses(label_runs(runs)):
        fm = frame_means(losses, mask, L)
        for i, row in enumerate(fm):
            for f, v in enumerate(row):
                rows.append({"model": r["model"], "seed": r["seed"], "sequence": i, "frame": f + 1, "loss": v})
    frames = pd.DataFrame(rows)
    sns.pointplot(data=frames, x="frame", y="loss", hue="model", palette=palette, errorbar=("ci", LEVEL),
                  n_boot=N_BOOT, seed=0, dodge=0.3 if frames["model"].nunique() > 1 else False, ax=ax2)  # seaborn divides by (levels - 1)
    ax2.set_ylabel("mean test loss over the frame (nats/token)")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    table = frames.groupby(["model", "frame"])["loss"].mean().unstack("frame").add_prefix("frame ").reset_index()
    return (img_tag(figure_png(fig), f"video per-position and per-frame loss of {spec}") +
            paragraph(f"Clips of {task.frames} frames of {task.size}x{task.size} pixels, frame-major, so the same pixel one "
               f"frame back is {L} tokens back. Left: per-position loss (smoothed over {task.size} positions, 95% "
               "bands over sequences), dotted lines at frame boundaries. Right: mean loss per frame, 95% bootstrap "
               "intervals over clips; a model that uses the previous frame pays less for frames 2 onwards.") +
            html_table(table))
