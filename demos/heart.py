"""Turn noise into a heart: train a DDPM on the seed tutorial's heart curve, sample, score, and draw.

    python demos/heart.py [--out DIR] [--quick] [--steps N] [--variance fixed_small|fixed_large] …
    python demos/heart.py --objective flow [--sampler euler|heun|dpmpp_2m] [--ddim-steps N]   # flow matching

Writes into DIR (default ./out/heart, printed at the end): samples.npy (2000 samples), heart.png (the
training data beside the samples), loss.png, heart.gif (the forward then the reverse process) and
checkpoint.npz; a file already there is replaced only with --force, and a second run on DIR is refused while
this one holds it (``npdiff.cli.entry.demo_outputs``). Prints the schedule's ᾱ_T and prior mismatch, the
Chamfer distance of the samples to a dense 20,000-point sampling of the true curve beside the same figure for
2000 fresh true points (the floor, the best a perfect model could score), and the time of each stage. A bad
flag is one line and exit status 2, a failure (a non-finite loss or sample, a failed write) one line and 1.

The file is a notebook in `# %%` cells: VS Code runs them one by one, and `jupytext --to notebook` makes an
.ipynb of it. The training cell is Ho et al.'s Algorithm 1 and the sampling cell their Algorithm 2, each
line a library call that names its formula. Each cell runs when the file runs (as a script or a notebook);
importing it, as the tests do, only defines the helpers of the first cell. Run from a shell, the first cell
hands the rest to ``main`` inside ``entry.run_demo`` (flags and output folder checked first, every failure
one line); a notebook runs the cells as they are.
"""

# %%
import argparse
import os
import runpy
import sys
import time

import numpy as np

from npdiff import EMA, AdamW, Diffusion, backend, cosine_lr, data, metrics
from npdiff.cli import entry
from npdiff.io import fileio, threads, viz
from npdiff.nn.losses import squared_error
from npdiff.processes import flow, sampling
from npdiff.training import checkpoint
from npdiff.training.batches import Batches
from npdiff.training.loop import update

# chosen by measured Chamfer per second on a 2-core CPU (docs/heart.md)
DEFAULTS = dict(steps=3000, batch_size=512, lr=2e-2, T=200, schedule="linear", variance="fixed_small", hidden=64,
                n_blocks=1, emb_dim=64, ema=0.0, sampler="ancestral", seed=0, objective="epsilon")
QUICK = dict(steps=800)
CLIP = 1.0  # the gradient's norm is clipped to this, as ``Diffusion.fit`` does by default
N_SAMPLES, N_CURVE, GIF_FRAMES = 2000, 20_000, 20
OUTPUTS = ("samples.npy", "heart.png", "loss.png", "heart.gif", "checkpoint.npz")


def parse_args(argv=None) -> argparse.Namespace:
    p = entry.DemoParser(prog="heart.py", description="Turn noise into a heart: train a DDPM on the seed tutorial's "
                                                       "heart curve, sample, score, and draw.")
    p.add_argument("--out", default=os.path.join("out", "heart"), help="output folder (default ./out/heart)")
    p.add_argument("--force", action="store_true", help="replace the outputs of an earlier run in --out")
    p.add_argument("--quick", action="store_true", help=f"a short run ({QUICK['steps']} steps) for tests")
    p.add_argument("--steps", type=int, help=f"training steps (default {DEFAULTS['steps']})")
    p.add_argument("--batch-size", "--batch", type=int, help=f"examples per step (default {DEFAULTS['batch_size']})")
    p.add_argument("--lr", type=float, help=f"peak AdamW learning rate, cosine-decayed (default {DEFAULTS['lr']})")
    p.add_argument("--T", type=int, help=f"diffusion steps (default {DEFAULTS['T']})")
    p.add_argument("--schedule", choices=["linear", "linear_scaled", "cosine", "sigmoid"],
                   help="beta schedule; linear is Ho et al.'s 1e-4..0.02, linear_scaled multiplies it by 1000/T")
    p.add_argument("--variance", choices=["fixed_small", "fixed_large"],
                   help="the reverse step's variance: fixed_small sigma_t^2 = beta-tilde_t (the posterior's, "
                        "the default), fixed_large sigma_t^2 = beta_t")
    p.add_argument("--hidden", "--width", type=int, help=f"hidden width of the MLP (default {DEFAULTS['hidden']})")
    p.add_argument("--n-blocks", "--blocks", type=int, help=f"residual blocks (default {DEFAULTS['n_blocks']})")
    p.add_argument("--emb-dim", "--emb", type=int, help=f"sinusoidal embedding size (default {DEFAULTS['emb_dim']})")
    p.add_argument("--ema", type=float,
                   help=f"EMA decay of the sampled weights, 0 for none (default {DEFAULTS['ema']})")
    p.add_argument("--objective", choices=("epsilon", "flow"),
                   help="epsilon: DDPM's Algorithm 1 (the default); flow: flow matching, x_t = (1 - t) x0 + t eps "
                        "with the target eps - x0, sampled by Euler on dx/dt = v (docs/continuous-time.md)")
    p.add_argument("--sampler", choices=sampling.SAMPLERS,
                   help="reverse process: ancestral (the default), ddim, or a probability-flow ODE solver euler, "
                        "heun, dpmpp_2m (a flow model's default: euler)")
    p.add_argument("--ddim-steps", type=int, default=None,
                   help="steps of ddim and the ODE solvers (default T)")
    p.add_argument("--clip-x0", default="auto",
                   help="clip x0-hat to [-R, R] while sampling: a number R, 'none', or 'auto' (the data's range, "
                        "only when the schedule's first step would amplify eps errors more than 10x)")
    p.add_argument("--seed", type=int, help="seed of every random draw (default 0)")
    args = p.parse_args(argv)
    if args.objective == "flow" and args.sampler is None:
        args.sampler = "euler"  # a flow model has no chain to run ancestrally
    for key, value in {**DEFAULTS, **(QUICK if args.quick else {})}.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    entry.check_demo_flags(args, counts=("steps", "batch_size", "T", "hidden", "n_blocks", "emb_dim", "ddim_steps"),
                           positive=("lr",), fractions=("ema",), error=p.error)
    if args.batch_size > data.HEART_TRAIN_SIZE:
        p.error(f"--batch-size must be at most the {data.HEART_TRAIN_SIZE} training points, got {args.batch_size}")
    if args.ddim_steps is not None and args.sampler == "ancestral":
        p.error("--ddim-steps belongs to --sampler ddim or an ODE solver (euler, heun, dpmpp_2m)")
    if args.objective == "flow" and args.sampler not in sampling.ODE_SAMPLERS:
        p.error(f"--sampler {args.sampler}: a flow model samples with an ODE solver ({', '.join(sampling.ODE_SAMPLERS)})")
    if args.clip_x0 not in ("auto", "none") and not _positive(args.clip_x0):
        p.error(f"--clip-x0 must be a number R > 0, 'none' or 'auto', got {args.clip_x0!r}")
    return args


def _positive(text: str) -> bool:
    try:
        return float(text) > 0
    except ValueError:
        return False


def make_diffusion(args) -> Diffusion:
    """The ε-model of the seed tutorial's heart, pre-LN blocks, on the chosen schedule (``linear_scaled``:
    Ho et al.'s β range times 1000/T), with the chosen reverse variance; or, with ``--objective flow``, the same
    network as a flow model on the time levels t = k/T."""
    if args.objective == "flow":
        return Diffusion(data_dim=2, objective="flow", T=args.T, hidden=args.hidden, n_blocks=args.n_blocks,
                         emb_dim=args.emb_dim, coord_scale=25.0, time_scale=1.0, layernorm=True,
                         final_layernorm=True, seed=args.seed)
    scaled = args.schedule == "linear_scaled"
    return Diffusion(data_dim=2, objective="epsilon", T=args.T, schedule="linear" if scaled else args.schedule,
                     schedule_kwargs={"scale_to_T": True} if scaled else None, variance=args.variance,
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
    """Run the cells below as ``python demos/heart.py ARGV`` does, with --out checked and held for the run
    (``entry.demo_outputs``); returns the figures they measured."""
    argv = [str(a) for a in argv or []]
    args = parse_args(argv)  # the flags the cells will read, checked before any of them runs
    with entry.demo_outputs(args.out, OUTPUTS, force=args.force, command="demos/heart.py"):
        own_argv = sys.argv
        sys.argv = [__file__, *argv]
        try:
            return runpy.run_path(__file__, {"_RUN_BY_MAIN": True}, run_name="__main__")["result"]
        finally:
            sys.argv = own_argv


if __name__ == "__main__" and sys.argv[0].endswith("heart.py") and not globals().get("_RUN_BY_MAIN"):
    sys.exit(entry.run_demo(main, sys.argv[1:]))  # from a shell: every failure one line, status 1 or 2


# %% [markdown]
# ## The data, the forward process q(x_t|x_0) and the network ε_θ(x_t, t)
# In a notebook the kernel's own argv are not flags: the defaults apply (write flags into the list to change them).

# %%
if __name__ == "__main__":
    args = parse_args(sys.argv[1:] if sys.argv[0].endswith("heart.py") else [])
    print(threads.apply_policy())  # one BLAS thread unless you set OPENBLAS_NUM_THREADS (docs/command-line.md)
    os.makedirs(args.out, exist_ok=True)
    start, cpu_start = time.perf_counter(), time.process_time()
    xp = backend.xp
    rng = backend.default_rng(args.seed)  # every draw of training and sampling, in turn
    x_data = data.heart(data.HEART_TRAIN_SIZE, np.random.default_rng(args.seed))  # (8000, 2)
    diffusion = make_diffusion(args)
    schedule, model = diffusion.schedule, diffusion.model  # β_t, ᾱ_t, β̃_t …; the denoiser
    print(schedule.summary(float(x_data.var(axis=0).mean())))

# %% [markdown]
# ## Algorithm 1: training
# repeat: x_0 ~ q(x_0), t ~ U{1..T}, ε ~ N(0, I); a gradient step on ∇_θ ‖ε − ε_θ(√ᾱ_t x_0 + √(1−ᾱ_t) ε, t)‖².
# `npdiff.fit` runs this same loop (npdiff/training/loop.py) inside the machinery of long runs (NaN rollback,
# checkpoints, Ctrl-C, progress); tests/test_demo_heart.py holds the two to the same weights, bit for bit.
# `--objective flow` runs flow matching instead: t ~ U(0, 1) on the levels k/T, x_t = (1 − t) x_0 + t ε, and a
# gradient step on ‖(ε − x_0) − v_θ(x_t, t)‖² (npdiff/processes/flow.py; tests/test_ode_sampler.py holds it to
# `Diffusion.fit` with `objective="flow"`).

# %%
if __name__ == "__main__":
    optimizer = AdamW(model, lr=args.lr)  # weight decay 0.01, PyTorch's default
    lr_at = cosine_lr(args.lr, args.steps, warmup=min(100, args.steps))  # step -> lr
    ema = EMA(model, args.ema) if args.ema else None  # the averaged weights that sampling then uses
    batches = Batches(backend.asarray(x_data, dtype=model.dtype), args.batch_size, rng)
    losses = []
    t0 = time.perf_counter()
    for step in range(args.steps):
        x0 = batches.next()[0]  # x_0 ~ q(x_0)                                       (B, 2)
        if args.objective == "flow":
            t = diffusion.objective.time.sample(len(x0), rng, x0.dtype)  # t ~ U(0, 1) on the levels k/T (B,)
            noise = rng.standard_normal(x0.shape, dtype=x0.dtype)  # ε ~ N(0, I)    (B, 2)
            x_t = flow.flow_path(x0, t[:, None], noise)  # (1 − t) x_0 + t ε            (B, 2)
            model.zero_grad()
            v_pred = model.forward(x_t, diffusion.objective.time.level(t))  # v_θ(x_t, t), fed k = tT  (B, 2)
            loss, d_v_pred = squared_error(v_pred, flow.velocity_target(x0, noise))  # mean (v_θ − (ε − x_0))²
            model.backward(d_v_pred, input_grad=False)  # dL/dθ, added into the model's gradient
            update(optimizer, lr_at(step), clip=CLIP, ema=ema)
            losses.append(loss)
            continue
        t = schedule.sample_t(len(x0), rng)  # t ~ U{1..T}                           (B,)
        noise = rng.standard_normal(x0.shape, dtype=x0.dtype)  # ε ~ N(0, I)        (B, 2)
        x_t = schedule.q_sample(x0, t, noise)  # √ᾱ_t x_0 + √(1−ᾱ_t) ε (Eq. 4)        (B, 2)
        model.zero_grad()
        eps_pred = model.forward(x_t, t)  # ε_θ(x_t, t)                              (B, 2)
        loss, d_eps_pred = squared_error(eps_pred, noise)  # mean (ε_θ − ε)², dL/dε_θ = 2(ε_θ − ε)/(N·D)
        model.backward(d_eps_pred, input_grad=False)  # dL/dθ, added into the model's gradient
        update(optimizer, lr_at(step), clip=CLIP, ema=ema)  # clip ‖dL/dθ‖, AdamW step, EMA
        losses.append(loss)  # kept on the device: reading each back would wait for it every step
    losses = backend.to_numpy(xp.stack(losses)).astype(np.float64)  # (steps,)
    t_train = time.perf_counter() - t0
    if not np.isfinite(losses).all():
        raise FloatingPointError(f"non-finite loss at step {int(np.argmin(np.isfinite(losses)))}")
    print(f"trained {args.steps} steps of batch {args.batch_size} in {t_train:.1f} s, "
          f"final loss {np.mean(losses[-100:]):.4f}")
    # what Diffusion.save writes, so that Diffusion.load and `npdiff sample` read it
    checkpoint.save(os.path.join(args.out, "checkpoint.npz"), model, optimizer=optimizer, ema=ema,
                    step=optimizer.steps, schedule=schedule, meta=diffusion.config)

# %% [markdown]
# ## Algorithm 2: sampling
# x_T ~ N(0, I); for t = T, …, 1: z ~ N(0, I) if t > 1, else z = 0; x_{t−1} = μ_θ(x_t, t) + σ_t z, where
# μ_θ = (x_t − β_t/√(1−ᾱ_t) ε_θ(x_t, t))/√α_t (Eq. 11) and σ_t² = β̃_t (`--variance fixed_small`) or β_t
# (`fixed_large`). The reverse kernel `chain.kernel` returns μ_θ and log σ_t²; with `--clip-x0` it forms μ_θ
# from the clipped x̂_0. `--sampler ddim` takes DDIM's steps instead (`sampling.ddim_step`), and `euler`, `heun`,
# `dpmpp_2m` solve the probability-flow ODE dy/dσ = (y − D(y, σ))/σ (npdiff/processes/ode.py). A flow model
# (`--objective flow`) has no chain: Euler on dx/dt = v_θ(x, t) from x_1 = ε ~ N(0, I) at t = 1 down to t = 0.

# %%
if __name__ == "__main__":
    t0 = time.perf_counter()
    clip = None if args.objective == "flow" else clip_range(args.clip_x0, schedule, args.sampler, x_data)
    chain = diffusion.chain(clip_x0=clip)  # p_θ(x_{t−1}|x_t) with the --variance of the model's bundle
    if ema is not None:
        ema.swap()  # sample from the averaged weights
    if args.objective == "flow" and args.sampler == "euler":  # chain: the velocity v_θ(x, t), t on k/T
        times = flow.flow_time_grid(args.ddim_steps or args.T, chain.time).tolist()  # t = 1 … 0 on the levels
        x = rng.standard_normal((N_SAMPLES, 2), dtype=chain.dtype)  # x_1 = ε ~ N(0, I)
        ts, xs = [args.T], [backend.to_numpy(x).copy()]
        for t, t_next in zip(times[:-1], times[1:]):
            x = x + (t_next - t) * chain(x, t)  # x_{t'} = x_t + (t' − t) v_θ(x_t, t)
            ts.append(round(t_next * args.T))
            xs.append(backend.to_numpy(x).copy())
    elif args.sampler == "ancestral":
        # refuses a chain whose steps amplify ε_θ's error more than 10× (unclipped cosine: docs/heart.md)
        sampling.check_gain(chain, {t: sampling.ancestral_gain(schedule, t) for t in schedule.reverse_t()})
        x = rng.standard_normal((N_SAMPLES, 2), dtype=chain.dtype)  # x_T ~ N(0, I)
        ts, xs = [schedule.T], [backend.to_numpy(x).copy()]  # each state of the chain, for the GIF
        for t in schedule.reverse_t():  # t = T, …, 1
            mean, log_var = chain.kernel(x, xp.full(N_SAMPLES, t))  # μ_θ(x_t, t) (Eq. 11), log σ_t²
            z = rng.standard_normal(mean.shape, dtype=mean.dtype) if t > 1 else 0  # no noise at the last step
            x = mean + xp.exp(0.5 * log_var) * z  # x_{t−1} = μ_θ + σ_t z
            ts.append(t - 1)
            xs.append(backend.to_numpy(x).copy())
    else:
        x, ts, xs = sampling.sample(chain, N_SAMPLES, rng, sampler=args.sampler, steps=args.ddim_steps, record=True)
    if ema is not None:
        ema.swap()
    samples = backend.to_numpy(x).astype(np.float64)  # (2000, 2)
    if not np.isfinite(samples).all():
        raise FloatingPointError("sampling produced non-finite values; nothing was written")
    t_sample = time.perf_counter() - t0
    fileio.save_array(os.path.join(args.out, "samples.npy"), samples)  # every output is written atomically

# %% [markdown]
# ## How close to the curve: the Chamfer distance, beside the floor of 2000 true points

# %%
if __name__ == "__main__":
    curve = data.heart_curve(N_CURVE)
    cd = metrics.chamfer(samples, curve)
    floor = metrics.chamfer(data.heart(N_SAMPLES, np.random.default_rng(args.seed + 1)), curve)
    print(f"Chamfer distance to the true curve: samples {cd:.4f}, 2000 true points {floor:.4f} (floor)")

# %% [markdown]
# ## Figures: data beside samples, the loss, and the forward then the reverse process as a GIF

# %%
if __name__ == "__main__":
    t0 = time.perf_counter()
    extent = (-5.0, 5.0)
    with fileio.atomic_path(os.path.join(args.out, "heart.png")) as path:
        viz.points_png(path, {"training data": x_data[:N_SAMPLES],
                              f"{N_SAMPLES} samples (Chamfer {cd:.4f})": samples}, extent)
    with fileio.atomic_path(os.path.join(args.out, "loss.png")) as path:
        viz.loss_png(path, losses)
    t_png = time.perf_counter() - t0

    t0 = time.perf_counter()
    shown = np.unique(np.linspace(0, args.T, GIF_FRAMES + 1).round().astype(int))  # t = 0 … T
    gif_noise = np.random.default_rng(args.seed + 2).standard_normal((N_SAMPLES, 2))
    forward = [(t, flow.flow_path(x_data[:N_SAMPLES], t / args.T, gif_noise) if args.objective == "flow"
                else schedule.q_sample(x_data[:N_SAMPLES], np.full(N_SAMPLES, t), gif_noise)) for t in shown]
    picked = np.unique(np.linspace(0, len(ts) - 1, GIF_FRAMES + 1).round().astype(int))  # of the visited t = T … 0
    reverse = [(int(ts[k]), xs[k]) for k in picked]
    with fileio.atomic_path(os.path.join(args.out, "heart.gif")) as path:
        viz.diffusion_gif(path, forward, reverse, args.T, extent)
    t_gif = time.perf_counter() - t0

    total, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    print(f"time: training {t_train:.1f} s, sampling {t_sample:.1f} s, PNGs {t_png:.1f} s, GIF {t_gif:.1f} s, "
          f"total {total:.1f} s (CPU {cpu:.1f} s)")
    print(f"outputs in {os.path.abspath(args.out)}")
    result = {"chamfer": cd, "floor": floor, "train_s": t_train, "sample_s": t_sample, "png_s": t_png,
              "gif_s": t_gif, "total_s": total, "cpu_s": cpu, "out": os.path.abspath(args.out), "loss": losses.tolist()}
