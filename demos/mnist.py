"""Clothes from noise: train a DDPM ε-model on (Fashion-)MNIST images, sample, and score the samples.

    python demos/mnist.py [--data DIR | --download] [--out DIR] [--quick] [--steps N] [--batch-size B] …

Data: the four IDX files of an MNIST-format data set in ``--data`` (default: Fashion-MNIST as Debian's
``dataset-fashion-mnist`` installs it, ``npdiff.idx.FASHION_MNIST_DIR``), or ``--download`` for the
original MNIST digits (needs internet access). Each 28 × 28 image becomes a vector of D = 784 numbers
in [−1, 1]; the denoiser is the library's MLP on those raw pixels (no coordinate embedding, no
convolutions), trained with L_simple and sampled with DDPM's ancestral sampler, x̂_0 clipped to
[−1, 1] (Ho et al. 2020 do the same).

Writes into DIR (default ./out/mnist, printed at the end): samples.png (real test images, the samples,
and each sample's nearest training image), samples.npy (the samples, float32 (N, 784) on the [−1, 1]
scale), loss.png and checkpoint.npz.

Quality figure. For each image of a set, the L2 distance to its nearest training image (784 pixels
on the [−1, 1] scale), averaged over the set, for: held-out test images (real images the model never
saw: the target), the DDPM samples, and samples of a Gaussian with the training set's mean and
covariance (a baseline without a network). Samples near the test figure are as close to the data
as real images are; far above it, they are off the data (blur, noise, broken shapes); far below it,
they copy training images. It is a proxy: it does not measure diversity or class balance.
Uses only npdiff's public API.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from npdiff import backend, checkpoint, ddpm, fileio, idx, metrics, sampling, threads, train, viz
from npdiff.models import Denoiser
from npdiff.optim import EMA, AdamW, cosine_lr
from npdiff.schedules import Schedule

# ~10 min on 2 busy CPU cores (6 min of CPU time); width 1024 learned far faster than 512 per step,
# lr 2e-3 a little faster than 1e-3 (training loss after 600 steps 0.121 vs 0.146)
DEFAULTS = dict(steps=5000, batch_size=128, lr=2e-3, T=1000, hidden=1024, n_blocks=3, emb_dim=128, ema=0.999,
                n_train=None, n_test=1000, n_samples=256, seed=0)
QUICK = dict(steps=40, batch_size=32, T=50, hidden=64, n_blocks=1, emb_dim=16, ema=0.9, n_train=512, n_test=64,
             n_samples=16)
MNIST_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "npdiff", "mnist")
GAUSSIAN_FIT = 10_000  # training images that estimate the baseline's covariance
GRID = 10  # the figure shows up to GRID × GRID images per panel


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", help=f"folder with the IDX files (default {idx.FASHION_MNIST_DIR}; "
                                  f"with --download, {MNIST_CACHE})")
    p.add_argument("--download", action="store_true", help=f"fetch missing MNIST files from {idx.MNIST_URL}")
    p.add_argument("--out", default=os.path.join("out", "mnist"), help="output folder (default ./out/mnist)")
    p.add_argument("--quick", action="store_true",
                   help=f"a tiny smoke run ({QUICK['n_train']} images, {QUICK['steps']} steps, a small model)")
    p.add_argument("--steps", type=int, help=f"training steps (default {DEFAULTS['steps']})")
    p.add_argument("--batch-size", "--batch", type=int, help=f"images per step (default {DEFAULTS['batch_size']})")
    p.add_argument("--lr", type=float, help=f"peak AdamW learning rate, cosine-decayed (default {DEFAULTS['lr']})")
    p.add_argument("--T", type=int, help=f"diffusion steps of the linear schedule (default {DEFAULTS['T']})")
    p.add_argument("--hidden", "--width", type=int, help=f"hidden width of the MLP (default {DEFAULTS['hidden']})")
    p.add_argument("--n-blocks", "--blocks", type=int, help=f"residual blocks (default {DEFAULTS['n_blocks']})")
    p.add_argument("--emb-dim", "--emb", type=int, help=f"time-embedding size (default {DEFAULTS['emb_dim']})")
    p.add_argument("--n-train", type=int, help="use only this many training images (default all)")
    p.add_argument("--n-samples", type=int, help=f"images to sample (default {DEFAULTS['n_samples']})")
    p.add_argument("--seed", type=int, help="seed of every random draw (default 0)")
    args = p.parse_args(argv)
    for key, value in {**DEFAULTS, **(QUICK if args.quick else {})}.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    return args


def load(args) -> tuple[np.ndarray, np.ndarray, str]:
    """Training and test images, uint8 (N, H, W), and the folder they came from; exits with a clear message."""
    root = args.data or (MNIST_CACHE if args.download else idx.FASHION_MNIST_DIR)
    try:
        train_images, _ = idx.load_mnist(root, "train", download=args.download)
        test_images, _ = idx.load_mnist(root, "test", download=args.download)
    except idx.DownloadError as err:
        sys.exit(f"{err}\n--download needs internet access. Offline, pass --data DIR with the four IDX files, "
                 f"e.g. Fashion-MNIST from Debian's dataset-fashion-mnist ({idx.FASHION_MNIST_DIR}).")
    except FileNotFoundError as err:
        sys.exit(f"{err}\n(--data DIR names the folder; --download fetches MNIST.)")
    return train_images, test_images, root


def subset(images: np.ndarray, n: int | None, rng: np.random.Generator) -> np.ndarray:
    """n images drawn without replacement (all of them when n is None or too large)."""
    if n is None or n >= images.shape[0]:
        return images
    return images[np.sort(rng.choice(images.shape[0], size=n, replace=False))]


def gaussian_baseline(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n draws of N(mean, cov) fitted to the rows of x (M, D), clipped to the pixel range [−1, 1].

    The covariance is singular (border pixels that never change), so the draw uses its eigenvectors
    with eigenvalues max(λ, 0): x = m + U √Λ z.
    """
    mean = x.mean(axis=0)  # (D,)
    centred = x - mean
    lam, U = np.linalg.eigh(centred.T @ centred / x.shape[0])  # (D,), (D, D)
    z = rng.standard_normal((n, x.shape[1]))
    return np.clip(mean + (z * np.sqrt(np.maximum(lam, 0.0))) @ U.T, -1.0, 1.0)


def verdict_of(ratio: float) -> str:
    """What the ratio (mean NN distance of samples) / (that of test images) says; ±25% counts as "about"."""
    if ratio > 1.25:
        return "further from the training data than real images are: off the data (blur, noise, broken shapes)"
    if ratio < 0.8:
        return "closer to the training data than real images are: signs of copying training images"
    return "about as close to the training data as real unseen images are"


def nearest_index(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For each row of a (N, D), the index of its nearest row of b (M, D): argmin ‖b‖² − 2 a·b.  -> (N,)"""
    return np.argmin((b * b).sum(axis=1) - 2.0 * a @ b.T, axis=1)


def image_grid_png(path: str, panels: dict, shape: tuple, grid: int = GRID) -> str:
    """One grid of images per ``title: vectors (N, D)`` entry, side by side, grey on black."""
    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt

    h, w = shape
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.7), squeeze=False)
    for ax, (title, vectors) in zip(axes[0], panels.items()):
        images = idx.vectors_to_images(vectors[: grid * grid], shape)  # (n, H, W) uint8
        rows = -(-images.shape[0] // grid)
        mosaic = np.zeros((rows * (h + 1) + 1, grid * (w + 1) + 1), dtype=np.uint8)  # 1-pixel gaps
        for k, image in enumerate(images):
            r, c = divmod(k, grid)
            mosaic[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + c * (w + 1): 1 + c * (w + 1) + w] = image
        ax.imshow(mosaic, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> dict:
    args = parse_args(argv)
    print(threads.apply_policy())  # one BLAS thread unless you set OPENBLAS_NUM_THREADS (docs/command-line.md)
    start = time.perf_counter()
    data_rng = np.random.default_rng(args.seed)
    train_images, test_images, root = load(args)
    train_images = subset(train_images, args.n_train, data_rng)
    test_images = subset(test_images, args.n_test, data_rng)
    shape = train_images.shape[1:]
    x = idx.images_to_vectors(train_images)  # (M, D) float32 in [−1, 1]
    x_test = idx.images_to_vectors(test_images)
    print(f"data: {x.shape[0]} training and {x_test.shape[0]} test images of {shape[0]}×{shape[1]} from {root}")
    if args.batch_size > x.shape[0]:
        print(f"batch size {args.batch_size} > {x.shape[0]} training images: using {x.shape[0]}")
        args.batch_size = x.shape[0]
    os.makedirs(args.out, exist_ok=True)

    schedule = Schedule(args.T, "linear", scale_to_T=args.T != 1000)  # Ho et al.'s 1e-4..0.02 at T = 1000
    print(schedule.summary(float(x.var(axis=0).mean())))
    model = Denoiser(x.shape[1], hidden=args.hidden, n_blocks=args.n_blocks, emb_dim=args.emb_dim, embed_coords=False,
                     layernorm=True, final_layernorm=True, seed=args.seed)
    optimizer = AdamW(model, lr=args.lr)
    ema = EMA(model, args.ema) if args.ema > 0 else None
    rng = backend.default_rng(args.seed)
    history = train.fit(model, x, ddpm.EpsilonObjective(schedule), steps=args.steps, batch_size=args.batch_size,
                        optimizer=optimizer, rng=rng, lr_schedule=cosine_lr(args.lr, args.steps, warmup=min(100, args.steps)),
                        clip=1.0, ema=ema)
    t_train = history.seconds
    print(f"trained {args.steps} steps of batch {args.batch_size} in {t_train:.2f} s "
          f"({x.shape[1]}-{args.hidden}×{args.n_blocks}-{x.shape[1]} MLP, {sum(int(p.size) for p in model.parameters().values())} "
          f"parameters), final loss {np.mean(history.loss[-100:]):.4f}")
    checkpoint.save(os.path.join(args.out, "checkpoint.npz"), model, optimizer=optimizer, ema=ema,
                    step=args.steps, schedule=schedule, meta={"demo": "mnist", "args": vars(args)})

    t0 = time.perf_counter()
    if ema is not None:
        ema.swap()  # sample from the averaged weights
    samples = sampling.sample(ddpm.EpsilonChain(model, schedule, clip_x0=(-1.0, 1.0)), args.n_samples, rng)
    samples = backend.to_numpy(samples).astype(np.float32)  # (N, D)
    t_sample = time.perf_counter() - t0
    fileio.save_array(os.path.join(args.out, "samples.npy"), samples)  # every output is written atomically

    t0 = time.perf_counter()
    n = min(args.n_samples, x_test.shape[0])
    gauss = gaussian_baseline(x[:GAUSSIAN_FIT].astype(np.float64), n, data_rng)
    nn_samples = metrics.nearest_distances(samples, x)  # (N,)
    figure = {"test images": float(metrics.nearest_distances(x_test[:n], x).mean()),
              "DDPM samples": float(nn_samples.mean()),
              "Gaussian baseline": float(metrics.nearest_distances(gauss, x).mean())}
    t_metric = time.perf_counter() - t0
    d = x.shape[1]
    print(f"mean L2 distance to the nearest of {x.shape[0]} training images (pixels in [-1, 1]; "
          f"RMS per pixel in brackets):")
    for name, value in figure.items():
        print(f"  {name:<18} ({n if name != 'DDPM samples' else args.n_samples:>4}): {value:7.3f}  "
              f"[{value / np.sqrt(d):.3f}]")
    if figure["test images"] == 0:
        ratio, verdict = float("nan"), "undefined: every test image is a copy of a training image"
    else:
        ratio = figure["DDPM samples"] / figure["test images"]
        verdict = verdict_of(ratio)
    print(f"samples / test = {ratio:.2f}: {verdict}")

    shown = min(GRID * GRID, samples.shape[0])
    nearest = x[nearest_index(samples[:shown], x)]
    png = os.path.join(args.out, "samples.png")
    with fileio.atomic_path(png) as path:
        image_grid_png(path, {f"real test images (NN dist {figure['test images']:.2f})": x_test[:shown],
                              f"DDPM samples (NN dist {figure['DDPM samples']:.2f})": samples[:shown],
                              "nearest training image of each sample": nearest}, shape)
    with fileio.atomic_path(os.path.join(args.out, "loss.png")) as path:
        viz.loss_png(path, history.loss)

    total = time.perf_counter() - start
    print(f"time: training {t_train:.2f} s, sampling {t_sample:.2f} s, quality figure {t_metric:.1f} s, "
          f"total {total:.1f} s")
    print(f"figure: {os.path.abspath(png)}")
    print(f"outputs in {os.path.abspath(args.out)}")
    return {"figure": figure, "ratio": ratio, "train_s": t_train, "sample_s": t_sample, "total_s": total,
            "out": os.path.abspath(args.out), "loss": history.loss}


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except ValueError as err:  # a bad flag value: one line, not a traceback
        sys.exit(f"{os.path.basename(sys.argv[0])}: error: {err}")
