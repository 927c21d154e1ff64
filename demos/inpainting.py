"""Inpainting and denoising Fashion-MNIST with a trained image model (Sohl-Dickstein et al. 2015, §2.5, Fig. 5).

    python demos/inpainting.py [--checkpoint out/mnist/checkpoint.npz] [--data DIR] [--out DIR] [--n N]
                               [--methods paper replace] [--guidance W] [--noise-std S] [--square K]
                               [--seed S] [--quick]

Shape glossary: N held-out images, D = H·W pixels, K classes.

Loads an image ``Diffusion`` (the class-conditional MLP that demos/mnist.py trains and saves as
checkpoint.npz) and conditions its ancestral chain on part of n held-out test images with
``conditioning.Conditioned`` (one chain of 3n rows per method, a different factor r per row):
  * "bottom half": the top half given, the bottom half free (NaN);
  * "centre K×K": everything but a centre square given;
  * "denoise s":   the observation y = x0 + N(0, s²) on the [−1, 1] scale (observed = y, noise_std = s).
The model samples without the label (labels=None), so the completion does not know the answer;
``--guidance W`` adds a row with the true label and classifier-free guidance w = W (it knows the answer).
A control for denoising needs no factor r_t: the plain chain run from t*, where √ᾱ y is distributed as x_t
(``denoise_from_t_star``). One seed for every chain: rows differ by the method or the label alone. Cost:
3n·T forward passes per method (twice that with guidance); the default takes about 40 s on one core.

Each completion is judged by the classifier of demos/mnist.py (``ImageJudge``, cached in --out; copied
from the checkpoint's folder when that holds one): its accuracy against the true labels, and the RMSE to
the original in the missing pixels (denoising: in every pixel). Beside it, the same for the observation
itself (missing pixels black, the background), for the mean image of the true class pasted into the
missing pixels, and for the posterior mean of one Gaussian per class (true class, full covariance,
fitted to the training images). A posterior mean minimises the expected RMSE but is blurred; a sample of
the same posterior has √2 times its expected RMSE (docs/conditioning.md, "Images").

Writes into DIR (default ./out/inpainting): inpainting.png (observed / completed / original per task, the
missing pixels of the observation tinted blue), results.json (the table), completions.npz (originals,
labels, conditions and every completion, vectors on [−1, 1]); a file already there is replaced only with --force,
and DIR is locked for the run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

import numpy as np

from npdiff import Diffusion, backend
from npdiff.cli import entry
from npdiff.images import idx, image_viz
from npdiff.io import fileio, threads
from npdiff.processes import conditioning, sampling
from npdiff.images.classifier import CACHE_NAME
from npdiff.images.quality import ImageJudge, class_accuracy

DEFAULTS = dict(n=50, methods=list(conditioning.METHODS), guidance=None, noise_std=0.5, square=14, seed=0)
QUICK = dict(n=10, guidance=2.0)
QUICK_JUDGE = dict(hidden=(32, 8), epochs=2)  # as demos/mnist.py --quick: a judge the tiny test data can train
FILL = -1.0  # the missing pixels of a masked image: black, the background of Fashion-MNIST
RIDGE = 1e-2  # added to Σ_KK of the given pixels: constant border pixels make it singular (1e-5..1e-1 within 6 %)
SHOWN = 8  # images per task in the figure
TINT = np.array([50, 90, 170], dtype=np.uint8)  # missing pixels of the observation in the figure
OUTPUTS = ("inpainting.png", "completions.npz", "results.json")


def parse_args(argv=None) -> argparse.Namespace:
    p = entry.DemoParser(prog="inpainting.py", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default=os.path.join("out", "mnist", "checkpoint.npz"),
                   help="a Diffusion checkpoint of an image model (default out/mnist/checkpoint.npz)")
    p.add_argument("--data", default=idx.FASHION_MNIST_DIR,
                   help=f"MNIST-format folder (default {idx.FASHION_MNIST_DIR})")
    p.add_argument("--out", default=os.path.join("out", "inpainting"), help="output folder (default ./out/inpainting)")
    p.add_argument("--force", action="store_true", help="replace the outputs of an earlier run in --out")
    p.add_argument("--n", type=int, help=f"held-out images per task (default {DEFAULTS['n']}; --quick {QUICK['n']})")
    p.add_argument("--methods", nargs="+", choices=conditioning.METHODS,
                   help=f"r_t along the chain, one conditioned chain each (default {' '.join(DEFAULTS['methods'])})")
    p.add_argument("--guidance", type=float, help="also sample with the true label at this guidance w, with the "
                                                  "first method (default: no such row; --quick 2)")
    p.add_argument("--noise-std", type=float, help=f"s of the denoising task (default {DEFAULTS['noise_std']})")
    p.add_argument("--square", type=int, help=f"side of the centre square (default {DEFAULTS['square']})")
    p.add_argument("--seed", type=int, help="seed of the image choice, the noise and the chains (default 0)")
    p.add_argument("--quick", action="store_true", help="a smoke run: n = 10, a tiny judge, a label row at w = 2")
    args = p.parse_args(argv)
    for key, value in {**DEFAULTS, **(QUICK if args.quick else {})}.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    entry.check_demo_flags(args, counts=["n", "square"], positive=["noise_std"], guidance=["guidance"],
                           error=p.error)  # the library's guidance range, as on the command line
    args.methods = list(dict.fromkeys(args.methods))
    return args


def held_out(labels, n: int, seed: int) -> np.ndarray:
    """Indices of n test images, classes in turn (0, 1, …, K−1, 0, …), each class's images in random order."""
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(labels == k)) for k in range(int(labels.max()) + 1)]
    order = [c[i] for i in range(max(map(len, per_class))) for c in per_class if i < len(c)]
    if n > len(order):
        raise ValueError(f"--n {n} exceeds the {len(order)} test images")
    return np.array(order[:n])


def masks(shape, square: int) -> dict:
    """{task: known (D,) bool} of the two inpainting tasks: the top half, everything but a centre square."""
    h, w = shape
    if square >= min(h, w):
        raise ValueError(f"--square must be smaller than the image ({h}×{w}), got {square}")
    top = np.zeros(shape, dtype=bool)
    top[: h // 2] = True
    frame = np.ones(shape, dtype=bool)
    r, c = (h - square) // 2, (w - square) // 2
    frame[r: r + square, c: c + square] = False
    return {"bottom half": top.ravel(), f"centre {square}×{square}": frame.ravel()}


def class_gaussians(x, y, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean (K, D) and covariance (K, D, D) of the training images x (M, D) of each class, float64."""
    mu = np.stack([x[y == k].mean(axis=0, dtype=np.float64) for k in range(n_classes)])
    cov = np.stack([np.cov(x[y == k].astype(np.float64), rowvar=False) for k in range(n_classes)])
    return mu, cov


def gaussian_inpaint(mu, cov, x, labels, known) -> np.ndarray:
    """E[x_F | x_K] = μ_F + Σ_FK (Σ_KK + λI)⁻¹ (x_K − μ_K) under N(μ_k, Σ_k) of each image's class k.
    x (N, D), labels (N,), known (D,) bool -> (N, D) with the given pixels kept."""
    out, free = np.array(x, dtype=np.float64), ~known
    for k in np.unique(labels):
        rows, s = labels == k, cov[k]
        a = s[np.ix_(known, known)] + RIDGE * np.eye(int(known.sum()))
        gain = np.linalg.solve(a, s[np.ix_(known, free)])  # Σ_KK⁻¹ Σ_KF (K, F): the transpose of Σ_FK Σ_KK⁻¹
        out[np.ix_(rows, free)] = mu[k, free] + (out[np.ix_(rows, known)] - mu[k, known]) @ gain
    return out


def gaussian_denoise(mu, cov, y, labels, s: float) -> np.ndarray:
    """E[x | y] = μ_k + Σ_k (Σ_k + s² I)⁻¹ (y − μ_k) for y = x + N(0, s²), x ~ N(μ_k, Σ_k).
    y (N, D), labels (N,) -> (N, D)."""
    out = np.empty(y.shape)
    for k in np.unique(labels):
        rows = labels == k
        gain = np.linalg.solve(cov[k] + s * s * np.eye(len(mu[k])), cov[k])  # (Σ + s²I)⁻¹ Σ, symmetric transposed
        out[rows] = mu[k] + (y[rows] - mu[k]) @ gain
    return out


def conditions(x0, known: dict, noise_std: float, rng) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """The three tasks on images x0 (N, D), stacked into one factor of 3N rows for ``Conditioned``.
    -> (observations by task (N, D): NaN = missing, or y; given (3N, D); observed (3N, D); noise_std (3N, D))"""
    n, d = x0.shape
    y = x0 + noise_std * rng.standard_normal(x0.shape)
    observations = {task: np.where(k, x0, np.nan) for task, k in known.items()}
    observations[f"denoise s = {noise_std:g}"] = y
    given = np.concatenate([*(observations[t] for t in known), np.full((n, d), np.nan)])
    observed = np.concatenate([np.zeros((len(known) * n, d)), y])  # an inpainting row observes nothing …
    std = np.concatenate([np.full((len(known) * n, d), np.inf), np.full((n, d), noise_std)])  # … (s = ∞)
    return observations, given, observed, std


def baselines(observations: dict, mu, cov, labels, noise_std: float) -> dict:
    """{row name: {task: completion (N, D)}}: the observation, the class mean, the class Gaussian's posterior mean."""
    rows = {"observed (missing = black)": {}, "class mean (true label)": {}, "class Gaussian posterior (label)": {}}
    for task, obs in observations.items():
        if task.startswith("denoise"):
            rows["observed (missing = black)"][task] = np.clip(obs, -1.0, 1.0)
            rows["class mean (true label)"][task] = mu[labels]
            rows["class Gaussian posterior (label)"][task] = gaussian_denoise(mu, cov, obs, labels, noise_std)
        else:
            missing = np.isnan(obs)
            rows["observed (missing = black)"][task] = np.where(missing, FILL, obs)
            rows["class mean (true label)"][task] = np.where(missing, mu[labels], obs)
            rows["class Gaussian posterior (label)"][task] = gaussian_inpaint(mu, cov, obs, labels, ~missing[0])
    return rows


def complete(diffusion: Diffusion, tasks: list, given, observed, noise_std, method: str, seed: int,
             labels=None, guidance: float = 0.0) -> tuple[dict, float]:
    """One conditioned ancestral chain over the stacked rows of every task. -> ({task: (N, D)}, seconds)"""
    start = time.perf_counter()
    x = diffusion.sample(len(given), seed=seed, given=given, observed=observed, noise_std=noise_std,
                         condition=method, clip_x0=(-1.0, 1.0), labels=labels, guidance=guidance)
    n = len(given) // len(tasks)
    return {task: x[i * n: (i + 1) * n].astype(np.float64) for i, task in enumerate(tasks)}, time.perf_counter() - start


def denoise_from_t_star(diffusion: Diffusion, y, noise_std: float, seed: int) -> tuple[np.ndarray, int, float]:
    """Denoising without a factor r_t: the plain chain run from t*, x_{t*} = √ᾱ y + √(1 − ᾱ − ᾱs²) z.

    For y = x0 + N(0, s²), √ᾱ_t y = √ᾱ_t x0 + √ᾱ_t s ε is x_t of the forward process (DDPM Eq. 4) where
    ᾱ_t s² = 1 − ᾱ_t, and then p(x0 | y) = p(x0 | x_t), which the reverse chain samples from t down. At the
    first t* with ᾱ s² ≤ 1 − ᾱ, the noise z (variance below one step's β) tops it up: the samples are exact
    draws of p(x0 | y + u), u ~ N(0, 1/ᾱ − 1 − s²), the posterior at noise s' = √(1/ᾱ − 1) ≥ s (0.503 for
    s = 0.5 on DDPM's T = 1000 schedule), for an exact model; none of Eq. 22's bias. y (N, D).
    -> (samples (N, D), t*, seconds), or (None, T, 0) when ᾱ_T s² > 1 − ᾱ_T (no such t*)."""
    start, schedule = time.perf_counter(), diffusion.schedule
    ab = schedule.alpha_bar
    later = np.flatnonzero(ab * noise_std ** 2 <= 1.0 - ab)
    if not later.size:
        return None, schedule.T, 0.0  # s beyond the noise of x_T: no such t*
    t_star = int(later[0])
    rng = backend.default_rng(seed)
    process = diffusion.chain(clip_x0=(-1.0, 1.0))
    top_up = np.sqrt(1.0 - ab[t_star] - ab[t_star] * noise_std ** 2)
    x = backend.asarray(np.sqrt(ab[t_star]) * y, process.dtype)
    x = x + float(top_up) * rng.standard_normal(x.shape, dtype=x.dtype)
    if diffusion.ema is not None:
        diffusion.ema.swap()  # sample from the averaged weights, as Diffusion.sample does
    try:
        for t in range(t_star, 0, -1):
            x = sampling.ancestral_step(process, x, backend.xp.full(len(y), t, dtype=np.int64), t, rng)
    finally:
        if diffusion.ema is not None:
            diffusion.ema.swap()
    return backend.to_numpy(x).astype(np.float64), t_star, time.perf_counter() - start


def score(classifier, completion, x0, labels, missing) -> dict:
    """{"accuracy", "rmse"}: the classifier on the completion as an 8-bit picture against the true labels, and the
    RMSE to the original x0 over the ``missing`` (N, D) pixels, of the completion clipped to [−1, 1]."""
    error = (np.clip(completion, -1.0, 1.0) - x0)[missing]
    return {"accuracy": class_accuracy(classifier, completion, labels), "rmse": float(np.sqrt(np.mean(error ** 2)))}


def format_table(rows: dict, tasks: list, n: int) -> str:
    """{row: {task: {"accuracy", "rmse"}}} as a text table, one column pair per task."""
    head = f"{'':<38}" + "".join(f" {task:>20}" for task in tasks)
    sub = f"{f'n = {n} per task':<38}" + "".join(f" {'accuracy':>10}{'RMSE':>10}" for _ in tasks)
    lines = [head, sub]
    for name, by_task in rows.items():
        cells = "".join(f" {100 * by_task[t]['accuracy']:>8.1f} %{by_task[t]['rmse']:>10.3f}" if t in by_task
                        else f" {'—':>10}{'—':>10}" for t in tasks)
        lines.append(f"{name:<38}{cells}")
    return "\n".join(lines)


def figure(path, observations: dict, shown: dict, x0, shape) -> str:
    """One panel per task: the observation (missing pixels tinted), each completion in ``shown``, the original."""
    plt = image_viz._matplotlib()
    tasks = list(observations)
    fig, axes = plt.subplots(1, len(tasks), figsize=(0.5 * SHOWN * len(tasks) + 1.6, 0.5 * (len(shown) + 2) + 0.5),
                             squeeze=False)
    h, w = shape
    for ax, task in zip(axes[0], tasks):
        obs = observations[task][:SHOWN]
        missing = np.isnan(obs)
        blank = np.full_like(x0[:SHOWN], -1.0)  # a row that has no completion for this task
        rows = [np.where(missing, FILL, obs)] + [c.get(task, blank)[:SHOWN] for c in shown.values()] + [x0[:SHOWN]]
        grid = image_viz.mosaic(np.concatenate(rows), shape, SHOWN)
        tint = image_viz.mosaic(np.concatenate([np.where(missing, 1.0, -1.0)] + [-np.ones_like(r) for r in rows[1:]]),
                                shape, SHOWN) == 255
        rgb = np.repeat(grid[..., None], 3, axis=2)
        rgb[tint] = TINT
        ax.imshow(rgb, interpolation="nearest")
        ax.set_title(task, fontsize=9)
        ax.set_xticks([])
        if ax is axes[0][0]:
            ax.set_yticks([1 + r * (h + 1) + h / 2 for r in range(len(rows))], ["observed", *shown, "original"],
                          fontsize=8)
        else:
            ax.set_yticks([])
        for side in ax.spines.values():
            side.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return os.fspath(path)


def load_model(path) -> Diffusion:
    """``Diffusion.load``, with a one-line error for a missing file."""
    if not os.path.isfile(path):
        raise ValueError(f"no checkpoint at {path}: train one with python demos/mnist.py (it writes "
                         "out/mnist/checkpoint.npz) or pass --checkpoint")
    return Diffusion.load(path)


def main(argv=None) -> dict:
    args = parse_args(argv)
    with entry.demo_outputs(args.out, OUTPUTS, force=args.force, command="demos/inpainting.py",
                            inputs=[("--checkpoint", args.checkpoint)]):
        return run(args)


def run(args) -> dict:
    print(threads.apply_policy())
    start = time.perf_counter()
    diffusion = load_model(args.checkpoint)
    cached = os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), CACHE_NAME)
    if os.path.isfile(cached) and not os.path.exists(os.path.join(args.out, CACHE_NAME)):
        shutil.copyfile(cached, os.path.join(args.out, CACHE_NAME))  # the mnist demo's judge; retrained if it differs
    judge = ImageJudge.from_folder(args.out, args.data, seed=args.seed, **(QUICK_JUDGE if args.quick else {}))
    classifier, shape = judge.classifier, judge.shape
    if diffusion.model.config["data_dim"] != shape[0] * shape[1]:
        raise ValueError(f"{args.checkpoint} models {diffusion.model.config['data_dim']} dimensions, the images of "
                         f"{args.data} have {shape[0]}×{shape[1]}")
    if args.guidance is not None and diffusion.num_classes is None:
        if not args.quick:
            raise ValueError(f"--guidance needs a class-conditional model; {args.checkpoint} has no labels")
        args.guidance = None
    chosen = held_out(judge.y_heldout, args.n, args.seed)
    x0, labels = judge.x_heldout[chosen].astype(np.float64), judge.y_heldout[chosen]
    t0 = time.perf_counter()
    mu, cov = class_gaussians(judge.x_train, judge.y_train, judge.n_classes)
    observations, given, observed, std = conditions(x0, masks(shape, args.square), args.noise_std,
                                                    np.random.default_rng(args.seed + 1))
    tasks = list(observations)
    completions = baselines(observations, mu, cov, labels, args.noise_std)
    t_baselines = time.perf_counter() - t0
    print(f"model: {args.checkpoint} (T = {diffusion.schedule.T}, {diffusion.config['prediction']}-prediction, "
          f"{'no labels' if diffusion.num_classes is None else f'{diffusion.num_classes} classes'}); "
          f"judge: {100 * classifier.meta['test_accuracy']:.1f} % test accuracy; {args.n} test images per task; "
          f"baselines in {t_baselines:.1f} s")
    seconds = {}
    for method in args.methods:  # one seed: the rows differ by the method (and the label) alone
        name = f"npdiff {method}, no label"
        completions[name], seconds[name] = complete(diffusion, tasks, given, observed, std, method, args.seed + 2)
        print(f"{name}: {len(given)} conditioned chains of {diffusion.schedule.T} steps in {seconds[name]:.1f} s")
    if args.guidance is not None:
        name = f"npdiff {args.methods[0]}, label, w = {args.guidance:g}"
        completions[name], seconds[name] = complete(diffusion, tasks, given, observed, std, args.methods[0],
                                                    args.seed + 2, np.tile(labels, len(tasks)), args.guidance)
        print(f"{name}: {len(given)} guided chains of {diffusion.schedule.T} steps in {seconds[name]:.1f} s")
    denoise = tasks[-1]
    x, t_star, t_exact = denoise_from_t_star(diffusion, observations[denoise], args.noise_std, args.seed + 2)
    if x is None:
        print(f"no t* row: s = {args.noise_std:g} exceeds the noise of x_T (1 - alpha_bar_T = "
              f"{1 - diffusion.schedule.alpha_bar[-1]:.3g})")
    else:
        name = f"npdiff from t* = {t_star} (denoise only)"
        completions[name], seconds[name] = {denoise: x}, t_exact
        print(f"{name}: {args.n} unconditioned chains of {t_star} steps in {t_exact:.1f} s")
    completions["original (the judge's ceiling)"] = {task: x0 for task in tasks}
    missing = {task: np.isnan(obs) if not task.startswith("denoise") else np.ones_like(x0, dtype=bool)
               for task, obs in observations.items()}
    rows = {name: {task: score(classifier, c[task], x0, labels, missing[task]) for task in c}
            for name, c in completions.items()}
    print(format_table(rows, tasks, args.n))

    shown = {name: c for name, c in completions.items() if name.startswith(("npdiff", "class Gaussian"))}
    with fileio.atomic_path(os.path.join(args.out, "inpainting.png")) as path:
        figure(path, observations, shown, x0, shape)
    arrays = {"x0": x0.astype(np.float32), "labels": labels, "test_index": chosen}
    for t, task in enumerate(tasks):
        arrays[f"task{t}/observation"] = observations[task].astype(np.float32)
        for r, name in enumerate(completions):
            if task in completions[name]:
                arrays[f"task{t}/row{r}"] = completions[name][task].astype(np.float32)
    with fileio.replacing(os.path.join(args.out, "completions.npz")) as f:
        np.savez(f, **arrays)
    total = time.perf_counter() - start
    result = {"checkpoint": os.path.abspath(args.checkpoint), "n": args.n, "tasks": tasks, "rows": rows,
              "row_names": list(completions), "seconds": seconds, "total_s": total,
              "args": {k: v for k, v in vars(args).items()}}
    fileio.write_text(os.path.join(args.out, "results.json"), json.dumps(result, indent=1))
    print(f"total {total:.1f} s")
    print(os.path.abspath(args.out))
    return result


if __name__ == "__main__":
    sys.exit(entry.run_demo(main, sys.argv[1:]))  # every failure: one line, status 1 or 2 (npdiff.cli.entry)
