"""One BLAS thread or two? Times each demo's hot loop at its own sizes with 1 and 2 threads, in one process.

    python benchmarks/blas_threads.py [--seconds 2] [--rounds 3] [--busy]

For each configuration the script alternates blocks of steps with 1 and with 2 OpenBLAS threads
(``npdiff.io.threads.set_blas_threads``), ``--rounds`` times, and prints the median time per step of each
and their ratio (2 threads / 1 thread: above 1 means the second thread slows the step down). The
training step is the denoiser's forward, backward and an AdamW update at the demo's batch and width;
the covariance demo's step is its q_sample and sample covariance. ``--busy`` starts one process that
spins on a core for the whole run, to stand for another job on the machine (the situation the thread
policy is for); without it the numbers are whatever else runs on the machine at the time, so note the
load average the script prints.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import time

import numpy as np

from npdiff.nn.denoiser import Denoiser
from npdiff.nn.optim import AdamW
from npdiff.io.threads import set_blas_threads

# (name, data_dim, out_dim, batch, model options): each demo's defaults
CONFIGS = [
    ("heart demo", 2, 2, 512, dict(hidden=64, n_blocks=1, emb_dim=64, layernorm=True, final_layernorm=True)),
    ("swissroll demo", 2, 4, 256, dict(hidden=128, n_blocks=3, emb_dim=128)),
    ("mnist demo", 784, 784, 128, dict(hidden=1024, n_blocks=3, emb_dim=128, embed_coords=False, layernorm=True,
                                      final_layernorm=True)),
    ("cli default", 2, 2, 256, dict(hidden=128, n_blocks=3, emb_dim=64)),
    ("gradcheck demo (float64)", 2, 2, 4, dict(hidden=16, n_blocks=2, emb_dim=8, dtype="float64")),
]


def train_step_fn(data_dim, out_dim, batch, options):
    model = Denoiser(data_dim, out_dim=out_dim, **options)
    opt = AdamW(model, 1e-4)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, data_dim)).astype(model.dtype)
    t = rng.integers(1, 1001, size=batch)
    dy = rng.standard_normal((batch, out_dim)).astype(model.dtype) / batch

    def step():
        model.zero_grad()
        model.forward(x, t)
        model.backward(dy)
        opt.step()

    return step


def covariance_step_fn(n=200_000):
    rng = np.random.default_rng(0)
    x0 = rng.multivariate_normal(np.zeros(2), [[2.0, 1.2], [1.2, 1.0]], size=n)

    def step():
        x_t = 0.7 * x0 + 0.71 * rng.standard_normal(x0.shape)
        np.cov(x_t, rowvar=False)

    return step


def time_per_step(step, seconds: float) -> float:
    step()  # warm-up
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        n += 1
    return (time.perf_counter() - start) / n


def spin():
    while True:
        pass


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=2.0, help="length of each timed block (default 2)")
    p.add_argument("--rounds", type=int, default=3, help="alternations of 1 and 2 threads (default 3)")
    p.add_argument("--busy", action="store_true", help="keep one other process spinning on a core meanwhile")
    args = p.parse_args(argv)
    spinner = None
    if args.busy:
        spinner = multiprocessing.Process(target=spin, daemon=True)
        spinner.start()
    try:
        print(f"load average before: {os.getloadavg()[0]:.2f}; cores: {os.cpu_count()}; busy spinner: {args.busy}")
        steps = [(name, train_step_fn(d, o, b, opts)) for name, d, o, b, opts in CONFIGS]
        steps.append(("covariance demo", covariance_step_fn()))
        for name, step in steps:
            times = {1: [], 2: []}
            for _ in range(args.rounds):
                for threads in (1, 2):
                    set_blas_threads(threads)
                    times[threads].append(time_per_step(step, args.seconds))
            one, two = statistics.median(times[1]), statistics.median(times[2])
            print(f"{name:<26} 1 thread {one * 1e3:9.3f} ms   2 threads {two * 1e3:9.3f} ms   "
                  f"2/1 = {two / one:5.2f}   (rounds: {', '.join(f'{b / a:.2f}' for a, b in zip(times[1], times[2]))})",
                  flush=True)
        print(f"load average after: {os.getloadavg()[0]:.2f}")
    finally:
        if spinner is not None:
            spinner.terminate()
            spinner.join()


if __name__ == "__main__":
    main()
