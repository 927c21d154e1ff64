"""Turn noise into a heart: train a DDPM on the seed tutorial's heart curve, sample, score, and draw.

    python demos/heart.py [--out DIR] [--quick] [--steps N] [--batch-size B] [--T T] [--schedule NAME] …

Writes into DIR (default ./out/heart, printed at the end): samples.npy (2000 samples), heart.png (the
training data beside the samples), loss.png, heart.gif (the forward then the reverse process) and
checkpoint.npz. Prints the schedule's ᾱ_T and prior mismatch, the Chamfer distance of the samples to a
dense 20,000-point sampling of the true curve beside the same figure for 2000 fresh true points (the
floor, the best a perfect model could score), and the time of each stage.
Uses only npdiff's public API.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from npdiff import AdamW, Diffusion, backend, cosine_lr, data, metrics
from npdiff.io import fileio, threads, viz
from npdiff.processes import sampling

# chosen by measured Chamfer per second on a 2-core CPU (see the README's table)
DEFAULTS = dict(steps=3000, batch_size=512, lr=2e-2, T=200, schedule="linear", hidden=64, n_blocks=1, emb_dim=64,
                ema=0.0, sampler="ancestral", seed=0)
QUICK = dict(steps=800)
N_SAMPLES, N_CURVE, GIF_FRAMES = 2000, 20_000, 20


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.path.join("out", "heart"), help="output folder (default ./out/heart)")
    p.add_argument("--quick", action="store_true", help=f"a short run ({QUICK['steps']} steps) for tests")
    p.add_argument("--steps", type=int, help=f"training steps (default {DEFAULTS['steps']})")
    p.add_argument("--batch-size", "--batch", type=int, help=f"examples per step (default {DEFAULTS['batch_size']})")
    p.add_argument("--lr", type=float, help=f"peak AdamW learning rate, cosine-decayed (default {DEFAULTS['lr']})")
    p.add_argument("--T", type=int, help=f"diffusion steps (default {DEFAULTS['T']})")
    p.add_argument("--schedule", choices=["linear", "linear_scaled", "cosine", "sigmoid"],
                   help="beta schedule; linear is Ho et al.'s 1e-4..0.02, linear_scaled multiplies it by 1000/T")
    p.add_argument("--hidden", "--width", type=int, help=f"hidden width of the MLP (default {DEFAULTS['hidden']})")
    p.add_argument("--n-blocks", "--blocks", type=int, help=f"residual blocks (default {DEFAULTS['n_blocks']})")
    p.add_argument("--emb-dim", "--emb", type=int, help=f"sinusoidal embedding size (default {DEFAULTS['emb_dim']})")
    p.add_argument("--ema", type=float,
                   help=f"EMA decay of the sampled weights, 0 for none (default {DEFAULTS['ema']})")
    p.add_argument("--sampler", choices=["ancestral", "ddim"], help="reverse process (default ancestral)")
    p.add_argument("--ddim-steps", type=int, default=None, help="DDIM's number of steps (default T)")
    p.add_argument("--clip-x0", default="auto",
                   help="clip x0-hat to [-R, R] while sampling: a number R, 'none', or 'auto' (the data's range, "
                        "only when the schedule's first step would amplify eps errors more than 10x)")
    p.add_argument("--seed", type=int, help="seed of every random draw (default 0)")
    args = p.parse_args(argv)
    for key, value in {**DEFAULTS, **(QUICK if args.quick else {})}.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def make_diffusion(args) -> Diffusion:
    """The ε-model of the seed tutorial's heart, pre-LN blocks, on the chosen schedule (``linear_scaled``:
    Ho et al.'s β range times 1000/T)."""
    scaled = args.schedule == "linear_scaled"
    return Diffusion(2, "epsilon", args.T, "linear" if scaled else args.schedule, {"scale_to_T": True} if scaled else None,
                     hidden=args.hidden, n_blocks=args.n_blocks, emb_dim=args.emb_dim, coord_scale=25.0,
                     time_scale=1.0, layernorm=True, final_layernorm=True, seed=args.seed)


def clip_range(arg: str, schedule, sampler: str, x):
    """The x̂_0 clipping range for the sampler, per ``--clip-x0``."""
    if arg == "none":
        return None
    if arg != "auto":
        return (-float(arg), float(arg))
    ts = schedule.reverse_t()
    gain = max(sampling.ancestral_gain(schedule, t) for t in ts) if sampler == "ancestral" else \
        max(sampling.ddim_gain(schedule, t, t_prev) for t, t_prev in zip(ts, ts[1:] + [0]))
    if gain <= 10:
        return None
    r = float(np.abs(x).max()) * 1.05
    print(f"clipping x0-hat to [{-r:.2f}, {r:.2f}] (the data's range): this schedule's sampler amplifies "
          f"eps errors {gain:.1f}x at one step")
    return (-r, r)


def main(argv=None) -> dict:
    args = parse_args(argv)
    print(threads.apply_policy())  # one BLAS thread unless you set OPENBLAS_NUM_THREADS (docs/command-line.md)
    os.makedirs(args.out, exist_ok=True)
    start, cpu_start = time.perf_counter(), time.process_time()
    rng = backend.default_rng(args.seed)
    x = data.heart(data.HEART_TRAIN_SIZE, np.random.default_rng(args.seed))  # (8000, 2)
    diffusion = make_diffusion(args)
    schedule = diffusion.schedule
    print(schedule.summary(float(x.var(axis=0).mean())))
    history = diffusion.fit(x, args.steps, args.batch_size, args.lr, rng=rng, ema=args.ema or None,
                            optimizer=AdamW(diffusion.model, lr=args.lr),  # weight decay 0.01, PyTorch's default
                            lr_schedule=cosine_lr(args.lr, args.steps, warmup=min(100, args.steps)))
    t_train = history.seconds
    print(f"trained {args.steps} steps of batch {args.batch_size} in {t_train:.1f} s, "
          f"final loss {np.mean(history.loss[-100:]):.4f}")
    diffusion.save(os.path.join(args.out, "checkpoint.npz"))

    t0 = time.perf_counter()
    clip = clip_range(args.clip_x0, schedule, args.sampler, x)
    samples, ts, xs = diffusion.sample(N_SAMPLES, rng=rng, sampler=args.sampler, ddim_steps=args.ddim_steps,
                                       clip_x0=clip, record=True)  # from the EMA weights when --ema > 0
    samples = samples.astype(np.float64)
    t_sample = time.perf_counter() - t0
    fileio.save_array(os.path.join(args.out, "samples.npy"), samples)  # every output is written atomically

    curve = data.heart_curve(N_CURVE)
    cd = metrics.chamfer(samples, curve)
    floor = metrics.chamfer(data.heart(N_SAMPLES, np.random.default_rng(args.seed + 1)), curve)
    print(f"Chamfer distance to the true curve: samples {cd:.4f}, 2000 true points {floor:.4f} (floor)")

    t0 = time.perf_counter()
    extent = (-5.0, 5.0)
    with fileio.atomic_path(os.path.join(args.out, "heart.png")) as path:
        viz.points_png(path, {"training data": x[:N_SAMPLES], f"{N_SAMPLES} samples (Chamfer {cd:.4f})": samples},
                       extent)
    with fileio.atomic_path(os.path.join(args.out, "loss.png")) as path:
        viz.loss_png(path, history.loss)
    t_png = time.perf_counter() - t0

    t0 = time.perf_counter()
    shown = np.unique(np.linspace(0, args.T, GIF_FRAMES + 1).round().astype(int))  # t = 0 … T
    noise = np.random.default_rng(args.seed + 2).standard_normal((N_SAMPLES, 2))
    x0 = x[:N_SAMPLES]
    forward = [(t, schedule.q_sample(x0, np.full(N_SAMPLES, t), noise)) for t in shown]
    picked = np.unique(np.linspace(0, len(ts) - 1, GIF_FRAMES + 1).round().astype(int))  # of the visited t = T … 0
    reverse = [(int(ts[k]), xs[k]) for k in picked]
    with fileio.atomic_path(os.path.join(args.out, "heart.gif")) as path:
        viz.diffusion_gif(path, forward, reverse, args.T, extent)
    t_gif = time.perf_counter() - t0

    total, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    print(f"time: training {t_train:.1f} s, sampling {t_sample:.1f} s, PNGs {t_png:.1f} s, GIF {t_gif:.1f} s, "
          f"total {total:.1f} s (CPU {cpu:.1f} s)")
    print(f"outputs in {os.path.abspath(args.out)}")
    return {"chamfer": cd, "floor": floor, "train_s": t_train, "sample_s": t_sample, "png_s": t_png,
            "gif_s": t_gif, "total_s": total, "cpu_s": cpu, "out": os.path.abspath(args.out), "loss": history.loss}


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except ValueError as err:  # a bad flag value: one line, not a traceback
        sys.exit(f"{os.path.basename(sys.argv[0])}: error: {err}")
