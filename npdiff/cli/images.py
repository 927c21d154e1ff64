"""Images on the command line: MNIST-format folders in, PNG grids out, the judge of image quality.

Shape glossary: N images, H × W pixels, D = H·W, n samples, K classes.

``npdiff train FOLDER`` reads the folder's train split (``idx.load_mnist``: ``train-images-idx3-ubyte``
and ``train-labels-idx1-ubyte``, gzipped or not) and trains on the vectors x = p/127.5 − 1 ∈ [−1, 1]
(``idx.images_to_vectors``), conditioned on the folder's labels unless ``--no-labels``. ``npdiff sample``
of such a checkpoint writes a grid of the images to ``--out x.png`` (an 8-bit greyscale PNG written with
zlib, no imaging library), and ``npdiff eval CKPT FOLDER`` scores samples with ``ImageJudge``
(``npdiff.images.quality``: FCD, accuracy on the intended classes, predicted-class entropy, beside the
baselines), its classifier cached in ``--judge-dir``.
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
import zlib

import numpy as np

from npdiff.images import idx
from npdiff.io import fileio
from npdiff.cli.args import UsageError

GAP = 96  # the grey of the one-pixel lines between the tiles of a grid (black and white images both show it)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ---- a folder in ----------------------------------------------------------------------------------------

def is_image_folder(path: str) -> bool:
    """DATA names an MNIST-format folder: a directory (one named like a .npy/.csv file is a mistaken data file)."""
    return os.path.isdir(path) and os.path.splitext(path)[1].lower() not in (".npy", ".csv")


def load_folder(folder: str, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, H, W) and int64 labels (N,) of an MNIST-format folder's split, or a UsageError."""
    missing = [stem for stem in idx.FILES[split] if idx.find_file(folder, stem) is None]
    if missing:
        raise UsageError(f"{folder!r} is a folder but not an MNIST-format one: it lacks {' and '.join(missing)} "
                         "(.gz or not)")
    try:
        images, labels = idx.load_mnist(folder, split)
    except ValueError as err:
        raise UsageError(" ".join(str(err).split())) from None
    except OSError as err:
        raise UsageError(f"cannot read {err.filename or folder!r}: {err.strerror or err}") from None
    if len(images) < 2:
        raise UsageError(f"{folder!r}: training needs at least 2 images, got {len(images)}")
    return images, labels.astype(np.int64)


def fingerprint(images: np.ndarray, labels: np.ndarray | None = None) -> dict:
    """The images' shape and the SHA-256 of their bytes (and of the labels, if given): what a resume must repeat."""
    digest = hashlib.sha256(np.ascontiguousarray(images).tobytes())
    record = {"shape": list(images.shape), "sha256": digest.hexdigest()}
    if labels is not None:
        record["labels_sha256"] = labels_sha256(labels)
    return record


def labels_sha256(labels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(labels, dtype="<i8").tobytes()).hexdigest()


def image_shape(meta: dict, path: str) -> tuple[int, int] | None:
    """(H, W) of a checkpoint trained on images (its meta's ``image_shape``), None for points."""
    shape = meta.get("image_shape")
    if shape is None:
        return None
    if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(s, int) and s >= 1 for s in shape)):
        raise UsageError(f"{path!r}: the meta's 'image_shape' must be two positive integers, got {shape!r}")
    return shape[0], shape[1]


# ---- a grid out -----------------------------------------------------------------------------------------

def grid_columns(n: int, balanced_classes: int | None = None) -> int:
    """Tiles per row: K when sample i has class i mod K (so column k shows class k), else ⌈√n⌉."""
    return balanced_classes if balanced_classes else math.isqrt(max(n, 1) - 1) + 1


def grid_size(n: int, shape: tuple[int, int], columns: int) -> tuple[int, int]:
    """(height, width) in pixels of the grid of n tiles of H × W, one-pixel lines between and around them."""
    h, w = shape
    rows = -(-n // columns)
    return rows * (h + 1) + 1, columns * (w + 1) + 1


def grid_bytes(n: int, shape: tuple[int, int], columns: int) -> int:
    """An upper bound on the PNG's size: the raw pixels, a filter byte per line, and zlib's worst case."""
    height, width = grid_size(n, shape, columns)
    raw = height * (width + 1)
    return raw + raw // 1000 + 1024


def mosaic(vectors, shape: tuple[int, int], columns: int) -> np.ndarray:
    """The grid of images of vectors (n, D) on [−1, 1], row by row, as uint8 pixels (height, width)."""
    images = idx.vectors_to_images(vectors, shape)  # (n, H, W), values beyond ±1 clipped to the pixel range
    h, w = shape
    out = np.full(grid_size(len(images), shape, columns), GAP, dtype=np.uint8)
    for k, image in enumerate(images):
        r, c = divmod(k, columns)
        out[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + c * (w + 1):1 + c * (w + 1) + w] = image
    return out


def png_bytes(pixels: np.ndarray) -> bytes:
    """An 8-bit greyscale PNG of pixels (height, width) uint8: signature, IHDR, one zlib IDAT, IEND
    (PNG specification, ISO/IEC 15948: every scanline starts with filter type 0, 'None')."""
    height, width = pixels.shape

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    lines = np.concatenate([np.zeros((height, 1), np.uint8), pixels], axis=1)  # filter byte 0 per line
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8 bits, greyscale, deflate, no interlace
    return (PNG_SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(lines.tobytes(), 6))
            + chunk(b"IEND", b""))


def write_grid(path: str, vectors, shape: tuple[int, int], columns: int) -> None:
    """Write the grid of vectors (n, D) to ``path`` as a PNG, atomically (``fileio.replacing``)."""
    body = png_bytes(mosaic(vectors, shape, columns))
    with fileio.replacing(path) as f:
        f.write(body)


# ---- the judge ------------------------------------------------------------------------------------------

def load_judge(judge_dir: str, folder: str, shape: tuple[int, int], n: int, labels):
    """``ImageJudge.from_folder(judge_dir, folder)`` (the classifier trained on first use), checked against the
    samples to come before any is drawn: the images' shape, n against the held-out pool, the classes."""
    from npdiff.images import classifier  # the classifier is needed by eval of images only
    from npdiff.images.quality import ImageJudge

    missing = [stem for split in ("train", "test") for stem in idx.FILES[split] if idx.find_file(folder, stem) is None]
    if missing:
        raise UsageError(f"{folder!r}: the image figure needs both splits of an MNIST-format folder; it lacks "
                         f"{', '.join(missing)} (.gz or not)")
    n_test = len(load_folder(folder, "test")[1])
    _check_count(n, classifier.DEFAULTS["hidden"][-1] + 1, n_test - n_test // 2, folder)  # before any training
    cache = os.path.join(judge_dir, classifier.CACHE_NAME)
    if not os.path.exists(cache):
        print(f"judge: training its classifier on the train split of {folder} (first use; cached in {cache})",
              flush=True)
    try:
        judge = ImageJudge.from_folder(judge_dir, folder, verbose=False)
    except OSError as err:
        raise UsageError(f"--judge-dir {judge_dir!r}: cannot write the classifier: {err.strerror or err}") from None
    if tuple(judge.shape) != tuple(shape):
        raise UsageError(f"{folder!r} holds {judge.shape[0]}×{judge.shape[1]} images; the model makes "
                         f"{shape[0]}×{shape[1]}")
    _check_count(n, judge.classifier.feature_dim + 1, len(judge.pool), folder)
    if labels is not None:
        if labels.max() >= judge.n_classes:
            raise UsageError(f"the model's class {labels.max()} is not among the {judge.n_classes} classes of "
                             f"{folder!r}")
        need = np.bincount(labels, minlength=judge.n_classes)
        have = np.bincount(judge.y_heldout[judge.pool], minlength=judge.n_classes)
        short = np.flatnonzero(need > have)
        if short.size:
            k = int(short[0])
            raise UsageError(f"--n {n}: the floor needs {need[k]} held-out images of class {k} and {folder!r} has "
                             f"{have[k]} outside the FCD reference; lower --n")
    return judge


def _check_count(n: int, low: int, high: int, folder: str) -> None:
    """n samples: at least F + 1 (a full-rank covariance of F features), at most the held-out pool."""
    if not low <= n <= high:
        raise UsageError(f"--n {n}: the image figure takes between {low} samples (the classifier's {low - 1} "
                         f"features need a full-rank covariance) and {high} (the held-out images of {folder!r} "
                         "outside the FCD reference)")
