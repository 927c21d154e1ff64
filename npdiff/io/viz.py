"""Figures for 2-D runs: point clouds side by side, the loss curve, and a GIF of the diffusion process.

matplotlib and imageio are imported inside the functions that use them, so the rest of npdiff needs
NumPy only. The GIF is not drawn with matplotlib: each frame is a 2-D histogram of the points
rasterised with NumPy (``rasterize``), which takes about a millisecond for 2000 points, where a
matplotlib figure per frame takes tens of milliseconds.

Shape glossary: N points, S image side in pixels, F frames.
"""

from __future__ import annotations

import os

import numpy as np

from npdiff import backend

FORWARD_RGB = (31, 119, 180)  # matplotlib's tab:blue, the data being noised
REVERSE_RGB = (214, 39, 40)  # tab:red, samples being denoised


def _matplotlib():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    return plt


def extent_of(*point_sets, margin: float = 0.1) -> tuple:
    """A square box (lo, hi) covering every point set (N, 2), widened by ``margin`` of its size."""
    pts = np.concatenate([np.asarray(backend.to_numpy(p), dtype=np.float64) for p in point_sets])
    lo, hi = pts.min(), pts.max()
    pad = margin * (hi - lo)
    return float(lo - pad), float(hi + pad)


def points_png(path, panels: dict, extent: tuple | None = None, size: float = 3.6, s: float = 2.0) -> str:
    """Scatter plots side by side, one per ``title: points (N, 2)`` entry, on equal square axes."""
    plt = _matplotlib()
    panels = {k: backend.to_numpy(v) for k, v in panels.items()}
    lo, hi = extent if extent is not None else extent_of(*panels.values())
    fig, axes = plt.subplots(1, len(panels), figsize=(size * len(panels), size), squeeze=False)
    for ax, (title, pts) in zip(axes[0], panels.items()):
        ax.scatter(pts[:, 0], pts[:, 1], s=s, alpha=0.5, linewidths=0)
        ax.set_title(title, fontsize=10)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_aspect("equal")
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.08, top=0.92, wspace=0.15)  # tight_layout costs a draw
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return os.fspath(path)


def loss_png(path, losses, window: int = 100, title: str = "training loss") -> str:
    """The per-step loss (faint) and its running mean over ``window`` steps."""
    plt = _matplotlib()
    loss = np.asarray(losses, dtype=np.float64)
    c = np.concatenate([[0.0], np.cumsum(loss)])
    k = np.arange(1, loss.size + 1)
    smooth = (c[k] - c[np.maximum(k - window, 0)]) / np.minimum(k, window)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(k, loss, alpha=0.25, lw=0.5, label="per step")
    ax.plot(k, smooth, lw=1.5, label=f"mean of {window}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.subplots_adjust(left=0.14, right=0.97, bottom=0.15, top=0.9)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return os.fspath(path)


def rasterize(points, extent: tuple, size: int = 192) -> np.ndarray:
    """Counts of points (N, 2) per pixel of an S×S image over the square ``extent``, y pointing up."""
    pts = np.asarray(backend.to_numpy(points), dtype=np.float64)
    lo, hi = extent
    ij = np.floor((pts - lo) / (hi - lo) * size).astype(np.int64)  # (N, 2) pixel column, row from bottom
    inside = ((ij >= 0) & (ij < size)).all(axis=1)  # points outside the box are not drawn
    col, row = ij[inside, 0], size - 1 - ij[inside, 1]
    return np.bincount(row * size + col, minlength=size * size).reshape(size, size).astype(np.float64)


def frame(points, extent: tuple, rgb: tuple, progress: float, size: int = 192, bar: int = 6) -> np.ndarray:
    """One RGB frame (S + bar, S, 3) uint8: the points' density in ``rgb`` on white, and a bar along
    the bottom filled to ``progress`` ∈ [0, 1] (the diffusion time t/T)."""
    ink = 1.0 - np.exp(-rasterize(points, extent, size) / 1.5)  # 0 empty … →1 dense, (S, S)
    img = np.full((size + bar, size, 3), 255.0)
    img[:size] -= ink[:, :, None] * (255.0 - np.asarray(rgb, dtype=np.float64))
    img[size:, : int(round(progress * size))] = rgb
    img[size:, int(round(progress * size)):] = 225.0
    return img.astype(np.uint8)


def diffusion_gif(path, forward: list, reverse: list, T: int, extent: tuple, *, size: int = 192,
                  fps: float = 12.0, hold: int = 6) -> str:
    """A GIF of the forward process (data → noise, blue) then the reverse process (noise → data, red).

    forward, reverse: lists of (t, points (N, 2)) in the order to show; the bar under each frame is
    t/T. The first and last frames of each half are held for ``hold`` frames.
    """
    import imageio.v3 as iio

    frames = []
    for pairs, rgb in ((forward, FORWARD_RGB), (reverse, REVERSE_RGB)):
        images = [frame(pts, extent, rgb, t / T, size) for t, pts in pairs]
        frames += [images[0]] * hold + images + [images[-1]] * hold
    iio.imwrite(path, np.stack(frames), extension=".gif", duration=1000.0 / fps, loop=0)
    return os.fspath(path)
