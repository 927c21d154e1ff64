"""Images on the command line: MNIST-format folders in, PNG grids out, the judge of image quality.

Shape glossary: N images, H × W pixels, D = H·W, n samples, K classes.

``npdiff train FOLDER`` reads the folder's train split (``idx.load_mnist``: ``train-images-idx3-ubyte``
and ``train-labels-idx1-ubyte``, gzipped or not) and trains on the vectors x = p/127.5 − 1 ∈ [−1, 1]
(``idx.images_to_vectors``), conditioned on the folder's labels unless ``--no-labels``. ``npdiff sample``
of such a checkpoint writes a grid of the images to ``--out x.png`` (an 8-bit greyscale PNG written with
zlib, no imaging library, one row of tiles at a time: memory does not grow with ``--n``), and ``npdiff eval CKPT FOLDER`` scores samples with ``ImageJudge``
(``npdiff.images.quality``: FCD, accuracy on the intended classes, predicted-class entropy, beside the
baselines), its classifier cached in ``--judge-dir``: a cache trained on other data or settings is refused
unless ``--retrain-judge``, and a newly trained classifier becomes the cache only after the run succeeded.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import shutil
import struct
import tempfile
import zlib

import numpy as np

from npdiff.images import idx
from npdiff.io import fileio
from npdiff.cli.args import UsageError

GAP = 96  # the grey of the one-pixel lines between the tiles of a grid (black and white images both show it)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_MAX_SIDE = 2**31 - 1  # the PNG specification's largest width or height


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


def check_grid(n: int, shape: tuple[int, int], columns: int) -> None:
    """ValueError when the grid of n tiles cannot be a PNG (a side beyond 2³¹ − 1 pixels)."""
    height, width = grid_size(n, shape, columns)
    if max(height, width) > PNG_MAX_SIDE:
        raise ValueError(f"a grid of {n} images would be {height}×{width} pixels, beyond the PNG limit of "
                         f"{PNG_MAX_SIDE} per side; sample fewer or write a .npy file")


def mosaic(vectors, shape: tuple[int, int], columns: int) -> np.ndarray:
    """The grid of images of vectors (n, D) on [−1, 1], row by row, as uint8 pixels (height, width)."""
    images = idx.vectors_to_images(vectors, shape)  # (n, H, W), values beyond ±1 clipped to the pixel range
    h, w = shape
    out = np.full(grid_size(len(images), shape, columns), GAP, dtype=np.uint8)
    for k, image in enumerate(images):
        r, c = divmod(k, columns)
        out[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + c * (w + 1):1 + c * (w + 1) + w] = image
    return out


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _png_header(height: int, width: int) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8 bits, greyscale, deflate, no interlace
    return PNG_SIGNATURE + _png_chunk(b"IHDR", header)


def _scanlines(pixels: np.ndarray) -> bytes:
    """Rows of pixels (lines, width) uint8, each after its filter byte 0 ('None')."""
    return np.concatenate([np.zeros((pixels.shape[0], 1), np.uint8), pixels], axis=1).tobytes()


def png_bytes(pixels: np.ndarray) -> bytes:
    """An 8-bit greyscale PNG of pixels (height, width) uint8: signature, IHDR, one zlib IDAT, IEND
    (PNG specification, ISO/IEC 15948: every scanline starts with filter type 0, 'None')."""
    height, width = pixels.shape
    return (_png_header(height, width) + _png_chunk(b"IDAT", zlib.compress(_scanlines(pixels), 6))
            + _png_chunk(b"IEND", b""))


class GridWriter:
    """Writes the PNG grid of n images one row of tiles at a time: ``write`` takes vectors (C, D) in any chunks,
    turns them into bytes at once, and a full row of tiles goes through zlib into its own IDAT chunk (the PNG
    specification lets the image data span several). Memory: one row of tiles, never the n samples."""

    def __init__(self, f, n: int, shape: tuple[int, int], columns: int) -> None:
        check_grid(n, shape, columns)
        self.f, self.n, self.shape, self.columns, self.count = f, n, tuple(shape), columns, 0
        height, width = grid_size(n, shape, columns)
        self.band = np.full((shape[0] + 1, width), GAP, dtype=np.uint8)  # one row of tiles and the line below it
        self.zlib = zlib.compressobj(6)
        f.write(_png_header(height, width))
        self._compress(np.full((1, width), GAP, dtype=np.uint8))  # the line above the first row of tiles

    def _compress(self, pixels: np.ndarray) -> None:
        body = self.zlib.compress(_scanlines(pixels))
        if body:
            self.f.write(_png_chunk(b"IDAT", body))

    def write(self, vectors) -> None:
        images = idx.vectors_to_images(vectors, self.shape)  # (C, H, W) uint8
        if self.count + len(images) > self.n:
            raise ValueError(f"{self.count + len(images)} images do not fit a grid of {self.n}")
        h, w = self.shape
        for image in images:
            c = self.count % self.columns
            self.band[:h, 1 + c * (w + 1):1 + c * (w + 1) + w] = image
            self.count += 1
            if c == self.columns - 1 or self.count == self.n:
                self._compress(self.band)
                self.band[:h] = GAP

    def close(self) -> None:
        if self.count != self.n:
            raise ValueError(f"{self.count} of {self.n} images were written to the grid")
        self.f.write(_png_chunk(b"IDAT", self.zlib.flush()) + _png_chunk(b"IEND", b""))


@contextlib.contextmanager
def write_grid_rows(path: str, n: int, shape: tuple[int, int], columns: int):
    """``with write_grid_rows(p, n, shape, columns) as g: g.write(vectors)…``: the PNG appears at ``p`` only when
    all n images were written (``fileio.replacing``); memory is one row of tiles."""
    with fileio.replacing(path) as f:
        grid = GridWriter(f, n, shape, columns)
        yield grid
        grid.close()


def write_grid(path: str, vectors, shape: tuple[int, int], columns: int) -> None:
    """Write the grid of vectors (n, D) to ``path`` as a PNG, atomically (``fileio.replacing``)."""
    with write_grid_rows(path, len(vectors), shape, columns) as grid:
        grid.write(vectors)


# ---- the judge ------------------------------------------------------------------------------------------

def _cache_fits(cache: str, folder: str) -> str | None:
    """None when the cached classifier at ``cache`` was trained on ``folder``'s data with the default settings,
    else why not (what ``classifier.load_or_train`` would retrain it for)."""
    from npdiff.images import classifier

    try:
        model = classifier.load(cache)
    except (ValueError, OSError) as err:
        return f"it is not a readable classifier ({' '.join(str(err).split())})"
    record = classifier.load_data(folder)["record"]
    if model.meta.get("data", {}).get("sha256") != record["sha256"]:
        return f"it was trained on {model.meta.get('data', {}).get('folder')}, not on {folder}"
    trained = {**model.meta.get("training", {}), "hidden": model.config["hidden"],
               "activation": model.config["activation"]}
    wanted = {**classifier.DEFAULTS, "hidden": [int(h) for h in classifier.DEFAULTS["hidden"]]}
    differs = [k for k in wanted if trained.get(k) != wanted[k]]
    return f"its settings differ ({', '.join(differs)})" if differs else None


def load_judge(judge_dir: str, folder: str, shape: tuple[int, int], n: int, labels, retrain: bool = False):
    """(judge, commit): ``ImageJudge.from_folder`` (the classifier trained on first use), checked against the
    samples to come before any is drawn (the images' shape, n against the held-out pool, the classes); commit()
    makes a newly trained classifier the cache in ``judge_dir``, to be called once the run has succeeded. A cache
    of other data or settings is refused unless ``retrain``; a run that fails leaves the cache as it was."""
    from npdiff.images import classifier  # the classifier is needed by eval of images only
    from npdiff.images.quality import ImageJudge

    missing = [stem for split in ("train", "test") for stem in idx.FILES[split] if idx.find_file(folder, stem) is None]
    if missing:
        raise UsageError(f"{folder!r}: the image figure needs both splits of an MNIST-format folder; it lacks "
                         f"{', '.join(missing)} (.gz or not)")
    test_images, test_labels = load_folder(folder, "test")
    if tuple(test_images.shape[1:]) != tuple(shape):  # before a classifier is trained or a cache touched
        raise UsageError(f"{folder!r} holds {test_images.shape[1]}×{test_images.shape[2]} images; the model makes "
                         f"{shape[0]}×{shape[1]}")
    n_test = len(test_labels)
    _check_count(n, classifier.DEFAULTS["hidden"][-1] + 1, n_test - n_test // 2, folder)  # before any training
    if labels is not None and labels.max() > test_labels.max():
        raise UsageError(f"the model's class {labels.max()} is not among the {test_labels.max() + 1} classes of "
                         f"{folder!r}")
    cache = os.path.join(judge_dir, classifier.CACHE_NAME)
    if os.path.isdir(cache):
        raise UsageError(f"--judge-dir {judge_dir!r}: {cache!r} is a folder, not a cached classifier")
    why = _cache_fits(cache, folder) if os.path.exists(cache) else None
    if why is not None and not retrain:
        raise UsageError(f"--judge-dir {judge_dir!r}: the cached classifier {cache!r} does not fit: {why}; pass "
                         "--retrain-judge to replace it once this run succeeds, or choose another --judge-dir")
    fresh = not os.path.exists(cache) or why is not None
    if fresh:
        print(f"judge: training its classifier on the train split of {folder} ({'first use' if why is None else why}"
              f"; cached in {cache} once this run succeeds)", flush=True)
    try:
        os.makedirs(judge_dir, exist_ok=True)
        fileio.check_writable_folder(cache)
        work = tempfile.mkdtemp(prefix=".npdiff-judge-", dir=judge_dir) if fresh else judge_dir
    except OSError as err:
        raise UsageError(f"--judge-dir {judge_dir!r}: cannot write the classifier: {err.strerror or err}") from None
    try:
        judge = ImageJudge.from_folder(work, folder, verbose=False)
    except BaseException:
        if fresh:
            shutil.rmtree(work, ignore_errors=True)
        raise

    def commit() -> None:
        if fresh:
            try:
                os.replace(os.path.join(work, classifier.CACHE_NAME), cache)
            finally:
                shutil.rmtree(work, ignore_errors=True)

    try:
        _check_judge(judge, folder, n, labels)
    except BaseException:
        if fresh:
            shutil.rmtree(work, ignore_errors=True)
        raise
    return judge, commit


def _check_judge(judge, folder: str, n: int, labels) -> None:
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


def _check_count(n: int, low: int, high: int, folder: str) -> None:
    """n samples: at least F + 1 (a full-rank covariance of F features), at most the held-out pool."""
    if not low <= n <= high:
        raise UsageError(f"--n {n}: the image figure takes between {low} samples (the classifier's {low - 1} "
                         f"features need a full-rank covariance) and {high} (the held-out images of {folder!r} "
                         "outside the FCD reference)")
