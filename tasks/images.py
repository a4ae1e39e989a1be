"""``images``: real greyscale images as pixel sequences in raster order (Henighan et al. 2020).

One image is one sequence: a BOS token, then every pixel row by row, so that position ``i``
of a window predicts pixel ``i`` = (row ``i // W``, column ``i % W``) and every pixel is
predicted. Grey levels are quantized to ``levels`` values (token = level); BOS is token
``levels``, so the vocabulary is ``levels + 1``. The sequence length is fixed by the image
(``--context`` is refused).

Sources (``--task images``, ``images:digits``, ``images:source=PATH.npz,levels=256``):

* ``fashion`` (default): Fashion-MNIST, 28x28, from Debian's ``dataset-fashion-mnist``
  (gzip idx files under ``/usr/share/datasets/fashion-mnist/``). The official 10k test set is
  the test split; validation is a fixed random 10% of the 60k training images.
* ``digits``: scikit-learn's 8x8 digits (1,797 images, grey values 0-16), the resolution of
  Henighan's smallest image task; needs the optional extra ``pip install mnemoscope[images]``.
  No official test set: a fixed random 20% is test, 10% validation.
* a ``.npz`` file of your own with uint8 arrays ``train`` and ``test`` of shape (N, H, W).
"""
from __future__ import annotations

import gzip
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from mnemoscope.errors import UserError
from mnemoscope.render.figures import figure_png, html_table, img_tag, label_runs, paragraph
from mnemoscope.registry import register_task
from mnemoscope.storage.study_folder import StudyFolder
from mnemoscope.contract.task import Task, check_options, content_digest, sequences_split, token_dtype

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_INSTALL = "apt-get install dataset-fashion-mnist"


# -- sources: each gives uint8-ish (N, H, W) arrays per split and the largest grey value --------
def read_idx_images(path: Path) -> np.ndarray:
    """A gzip idx3 file (magic 0x00000803, three big-endian int32 dims, then bytes) -> (N, H, W) uint8."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, n, h, w = np.frombuffer(data[:16], dtype=">i4")
    if magic != 0x803 or len(data) != 16 + n * h * w:
        raise UserError(f"{path} is not an idx3 image file (magic {magic:#x}, {len(data)} bytes)")
    return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(n, h, w)


def carve(n: int, fractions: dict[str, float], seed: int = 0) -> dict[str, np.ndarray]:
    """Indices 0..n-1 dealt into named parts of the given fractions by one fixed permutation
    (the rest is "train"): deterministic, disjoint, and the same on every machine."""
    order = np.random.default_rng(seed).permutation(n)
    out, at = {}, 0
    for name, frac in fractions.items():
        k = max(1, int(round(frac * n)))
        out[name] = np.sort(order[at:at + k])
        at += k
    out["train"] = np.sort(order[at:])
    return out


def load_images(source: str | None) -> tuple[dict[str, np.ndarray], int, str]:
    """({"train", "validation", "test"}: (N, H, W) arrays, largest grey value, description)."""
    if source in (None, "fashion"):
        files = {s: FASHION_DIR / f"{p}-images-idx3-ubyte.gz" for s, p in (("train", "train"), ("test", "t10k"))}
        missing = [str(f) for f in files.values() if not f.is_file()]
        if missing:
            raise UserError(f"Fashion-MNIST is missing ({missing[0]}): run `{FASHION_INSTALL}`, "
                            "or use images:digits or images:PATH.npz")
        train, test = read_idx_images(files["train"]), read_idx_images(files["test"])
        parts = carve(len(train), {"validation": 0.1})
        return {"train": train[parts["train"]], "validation": train[parts["validation"]], "test": test}, 255, "fashion-mnist"
    if source == "digits":
        try:
            from sklearn.datasets import load_digits  # optional: the images extra
        except ImportError:
            raise UserError("images:digits needs scikit-learn: pip install 'mnemoscope[images]' "
                            "(or pip install scikit-learn)") from None
        images = load_digits().images.astype(np.uint8)  # (1797, 8, 8), values 0..16, bundled offline
        parts = carve(len(images), {"test": 0.2, "validation": 0.1})
        return {s: images[i] for s, i in parts.items()}, 16, "sklearn-digits"
    path = Path(source).expanduser()
    if path.suffix != ".npz" or not path.is_file():
        raise UserError(f"unknown image source {source!r}: use fashion, digits, or an existing .npz file "
                        "with uint8 arrays train and test of shape (N, H, W)")
    with np.load(path) as z:
        if "train" not in z or "test" not in z:
            raise UserError(f"{path} must hold arrays named train and test (it has {', '.join(z.files)})")
        train, test = np.asarray(z["train"]), np.asarray(z["test"])
    for name, a in (("train", train), ("test", test)):
        if a.ndim != 3 or a.dtype != np.uint8 or len(a) == 0:
            raise UserError(f"{path}: {name} must be a non-empty uint8 array (N, H, W), got {a.dtype} {a.shape}")
    if train.shape[1:] != test.shape[1:]:
        raise UserError(f"{path}: train images are {train.shape[1:]} but test images are {test.shape[1:]}")
    if len(train) < 2:
        raise UserError(f"{path}: need at least 2 training images (one is carved off for validation)")
    parts = carve(len(train), {"validation": 0.1})
    return {"train": train[parts["train"]], "validation": train[parts["validation"]], "test": test}, 255, str(path)


def image_shape(source: str | None) -> tuple[int, int]:
    """(H, W) of a source without preparing it."""
    if source in (None, "fashion"):
        return 28, 28
    if source == "digits":
        return 8, 8
    path = Path(source).expanduser()
    if path.suffix == ".npz" and path.is_file():
        with np.load(path) as z:
            if "train" in z:
                return tuple(z["train"].shape[1:3])
    images, _, _ = load_images(source)  # a bad source raises its clear error here
    return tuple(images["train"].shape[1:3])


# -- tokens -----------------------------------------------------------------------------------
def quantize(images: np.ndarray, levels: int, max_value: int) -> np.ndarray:
    """Grey values 0..max_value -> levels 0..levels-1, equal-width bins."""
    return (images.astype(np.int64) * levels // (max_value + 1)).astype(np.int64)


def pixel_sequences(images: np.ndarray, levels: int, max_value: int) -> np.ndarray:
    """(N, H, W) images -> (N, 1 + H*W) tokens: BOS (= levels), then the quantized pixels in raster order."""
    n = len(images)
    q = quantize(images, levels, max_value).reshape(n, -1)
    bos = np.full((n, 1), levels, dtype=np.int64)
    return np.concatenate([bos, q], axis=1).astype(token_dtype(levels + 1))


def parse_levels(value, maximum: int = 256) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= maximum:
        raise UserError(f"levels must be an integer from 2 to {maximum}, got {value!r}")
    return value


def image_source_digest(source: str | None) -> str | None:
    """What the prepared images depend on: the built-in source's name (digits: the copy bundled
    with scikit-learn), or the content of the files read (Fashion-MNIST's, a user's .npz), not
    where they lie."""
    if source == "digits":
        return source
    fashion = source in (None, "fashion")
    files = [FASHION_DIR / f"{p}-images-idx3-ubyte.gz" for p in ("train", "t10k")] if fashion else [Path(source).expanduser()]
    return content_digest((f.name, f.read_bytes()) for f in files if f.is_file())  # missing: load_images says so


@register_task("images")
class Images(Task):
    """Greyscale images as pixel sequences (Fashion-MNIST 28x28; images:digits for 8x8)."""

    view_title = "per-pixel loss map"

    def report_view(self, folder, runs, pp) -> str:
        return images_view(self, folder, runs, pp)

    fixed_context = True
    version = "1"
    example = {"source": "{images}", "levels": 4}

    def __init__(self, source: str | None = None, context_length: int | None = None, levels: int = 16, **options):
        check_options("images", options, set())
        self.levels = parse_levels(levels)
        self.height, self.width = image_shape(source)
        self.vocab_size = self.levels + 1  # grey levels + BOS
        self.default_context = self.height * self.width  # BOS + H*W pixels = T + 1 tokens
        super().__init__(source=source, context_length=context_length, levels=self.levels)

    @property
    def bos(self) -> int:
        return self.levels

    def fingerprint_inputs(self) -> dict:
        return {**super().fingerprint_inputs(), "source": image_source_digest(self.source)}

    def pixel_of_position(self, position: int | np.ndarray):
        """Position i (predicting token i+1) predicts pixel i: returns (row, column)."""
        position = np.asarray(position)
        return position // self.width, position % self.width

    def build_splits(self):
        images, max_value, name = load_images(self.source)
        return {split: sequences_split(pixel_sequences(a, self.levels, max_value), [f"{name}:{split}:{len(a)} images"])
                for split, a in images.items()}

    def decode(self, tokens):
        return " ".join("BOS" if int(t) == self.bos else str(int(t)) for t in tokens)

    def encode(self, text: str) -> np.ndarray:
        return np.array([self.bos if t == "BOS" else int(t) for t in text.split()], dtype=np.int64)


# -- the task's report section ------------------------------------------------------------------
def pixel_loss_map(position: np.ndarray, loss: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W) map: the loss at position i lands on pixel (i // W, i % W); NaN where none was stored."""
    out = np.full(height * width, np.nan)
    position = np.asarray(position, dtype=np.int64)
    keep = (position >= 0) & (position < height * width)
    out[position[keep]] = np.asarray(loss)[keep]
    return out.reshape(height, width)


def images_view(task, folder: StudyFolder, runs: pd.DataFrame, pp: pd.DataFrame) -> str:
    spec = str(runs["task"].iloc[0])
    H, W = task.height, task.width
    pp = label_runs(pp)
    models = list(dict.fromkeys(pp["model"]))
    maps = {m: pixel_loss_map(*pp[pp["model"] == m].groupby("position")["loss"].mean().reset_index().values.T, H, W)
            for m in models}
    vmin = np.nanmin([np.nanmin(v) for v in maps.values()])
    vmax = np.nanmax([np.nanmax(v) for v in maps.values()])
    fig, axes = plt.subplots(1, len(models), figsize=(3.2 * len(models) + 0.8, 3.2), squeeze=False)
    for ax, m in zip(axes[0], models):
        im = ax.imshow(maps[m], cmap="magma", vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_title(m, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes[0].tolist(), label="test loss (nats/pixel)", shrink=0.9)
    rows = [{"model": m, "mean": float(np.nanmean(v)), "first row": float(np.nanmean(v[0])),
             "last row": float(np.nanmean(v[-1])), "top-left pixel": float(v[0, 0])} for m, v in maps.items()]
    return (img_tag(figure_png(fig), f"per-pixel loss maps of {spec}") +
            paragraph(f"Mean test loss of each pixel ({H}x{W}, {task.levels} grey levels, raster order after a BOS "
               "token), averaged over held-out images and seeds. Henighan et al. (Fig. 6) found the first pixels "
               "dearest and the cost dependent on where a pixel sits.") + html_table(pd.DataFrame(rows)))
