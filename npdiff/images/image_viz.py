"""Figures for image runs: mosaics of images, one row per class, a guidance sweep, and a GIF of images
forming from noise.

Shape glossary: N images, H × W pixels, D = H·W, K classes, F frames.

Images come in as vectors (N, D) on the [−1, 1] scale (``idx.images_to_vectors``) and are shown as
bytes (``idx.vectors_to_images``). A mosaic is built with NumPy (images on a black background with
1-pixel gaps); matplotlib only adds titles and labels, and the GIF is written by imageio without
matplotlib. Both are imported inside the functions that use them, so the rest of npdiff needs NumPy only.
"""

from __future__ import annotations

import os

import numpy as np

from npdiff.images import idx
from npdiff.io.viz import _matplotlib


def mosaic(vectors, shape: tuple[int, int], columns: int, scale: int = 1) -> np.ndarray:
    """The images of ``vectors`` (N, D) in rows of ``columns``, 1-pixel black gaps, each pixel repeated
    ``scale`` × ``scale`` times.  -> uint8 (rows·(H+1)+1, columns·(W+1)+1) · scale"""
    images = idx.vectors_to_images(vectors, shape)  # (N, H, W)
    h, w = shape
    rows = max(1, -(-images.shape[0] // columns))
    out = np.zeros((rows * (h + 1) + 1, columns * (w + 1) + 1), dtype=np.uint8)
    for k, image in enumerate(images):
        r, c = divmod(k, columns)
        out[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + c * (w + 1): 1 + c * (w + 1) + w] = image
    return np.kron(out, np.ones((scale, scale), dtype=np.uint8)) if scale > 1 else out


def panels_png(path, panels: dict, shape: tuple[int, int], columns: int = 10) -> str:
    """One mosaic per ``title: vectors (N, D)`` entry, side by side, grey on black."""
    plt = _matplotlib()
    rows = max(-(-len(v) // columns) for v in panels.values())
    panel_width = max(2.6, 0.3 * columns)  # inches: room for the title above a narrow mosaic
    fig, axes = plt.subplots(1, len(panels), figsize=(panel_width * len(panels), 0.3 * rows + 0.7), squeeze=False)
    for ax, (title, vectors) in zip(axes[0], panels.items()):
        ax.imshow(mosaic(vectors, shape, columns), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return os.fspath(path)


def class_rows_png(path, vectors, labels, names: list[str], shape: tuple[int, int], per_class: int = 10,
                   title: str = "") -> str:
    """One row per class k (its name on the left), the first ``per_class`` images labelled k."""
    vectors, labels = np.asarray(vectors), np.asarray(labels)
    rows = [vectors[labels == k][:per_class] for k in range(len(names))]
    h, w = shape
    grid = np.full((len(names) * per_class, h * w), -1.0)  # black where a class has fewer images
    for k, row in enumerate(rows):
        grid[k * per_class: k * per_class + len(row)] = row
    plt = _matplotlib()
    fig, ax = plt.subplots(figsize=(0.55 * per_class + 1.4, 0.55 * len(names) + 0.5))
    ax.imshow(mosaic(grid, shape, per_class), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_yticks([1 + k * (h + 1) + h / 2 for k in range(len(names))], names, fontsize=8)
    ax.set_xticks([])
    for side in ax.spines.values():
        side.set_visible(False)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return os.fspath(path)


def forming_gif(path, xs, shape: tuple[int, int], columns: int = 10, *, scale: int = 2, fps: float = 12.0,
                hold: int = 12) -> str:
    """A GIF of a grid of images forming from noise: xs (F, N, D), the states of a chain from x_T to x_0
    (``sampling.sample(..., record=True)``); the last frame is shown ``hold`` times as long as the others."""
    import imageio.v3 as iio

    frames = np.stack([mosaic(np.clip(x, -1.0, 1.0), shape, columns, scale) for x in xs])
    durations = [1000.0 / fps] * (len(frames) - 1) + [hold * 1000.0 / fps]
    iio.imwrite(path, frames, extension=".gif", duration=durations, loop=0)
    return os.fspath(path)
