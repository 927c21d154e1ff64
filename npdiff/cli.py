"""The command line: ``npdiff train | sample | eval`` (also ``python -m npdiff``).

    npdiff train DATA --out model.npz [--objective epsilon|sohl_dickstein] [--T 1000] [--steps 20000] …
    npdiff sample model.npz --n 2000 --out samples.npy [--sampler ancestral|ddim] [--seed 0]
    npdiff eval model.npz HELD_OUT [--exact | --n-t 4]

DATA and HELD_OUT are a ``.npy`` or ``.csv`` file of points (N, D), or a toy set's name (``heart``,
``8gaussians``, ``moons``, ``swissroll``, ``checkerboard``, ``circles``; ``--n`` points are drawn). Training
standardises the data per dimension and stores the mean and std in the checkpoint; ``sample`` returns
points in the data's own coordinates and ``eval`` reports the bound in both (nats and bits, per point
and per dimension). The ε objective's bound uses σ_t² = β̃_t unless ``--variance fixed_large``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import numpy as np

from npdiff import backend, checkpoint, data, ddpm, likelihood, train
from npdiff.models import Denoiser
from npdiff.optim import EMA, AdamW, cosine_lr
from npdiff.schedules import SCHEDULES, Schedule
from npdiff.sohl_dickstein import BoundObjective, SohlDicksteinChain, make_model

OBJECTIVES = ("epsilon", "sohl_dickstein")


def load_data(source: str, n: int, seed: int) -> np.ndarray:
    """Points (N, D) from a .npy/.csv path, or ``n`` draws of a named toy set."""
    if source in data.TOY_SETS:
        return data.make(source, n, np.random.default_rng(seed))
    if not os.path.exists(source):
        raise FileNotFoundError(f"{source!r} is neither a file nor a toy set ({', '.join(data.TOY_SETS)})")
    return data.load_points(source)


def cmd_train(args) -> None:
    x = load_data(args.data, args.n, args.seed)
    z, mean, std = data.standardize(x)
    schedule = Schedule(args.T, args.schedule)
    print(schedule.summary(1.0))
    common = dict(hidden=args.width, n_blocks=args.blocks, emb_dim=args.emb, coord_scale=args.coord_scale,
                  seed=args.seed)
    if args.objective == "sohl_dickstein":
        model, objective = make_model(x.shape[1], **common), BoundObjective(schedule)
    else:
        model, objective = Denoiser(x.shape[1], **common), ddpm.EpsilonObjective(schedule)
    optimizer = AdamW(model, lr=args.lr, weight_decay=0.0)
    ema = EMA(model, args.ema) if args.ema > 0 else None
    meta = {"objective": args.objective, "data_mean": mean.tolist(), "data_std": std.tolist(),
            "data": args.data}
    history = train.fit(model, z, objective, steps=args.steps, batch_size=min(args.batch_size, len(z)),
                        optimizer=optimizer, rng=backend.default_rng(args.seed),
                        lr_schedule=cosine_lr(args.lr, args.steps, warmup=min(100, args.steps // 10)),
                        clip=1.0, ema=ema, checkpoint_path=args.out, checkpoint_every=args.checkpoint_every,
                        resume=args.resume, meta=meta)
    last = float(np.mean(history.loss[-100:])) if history.loss else float("nan")
    print(f"trained {args.steps} steps in {history.seconds:.1f} s; mean loss of the last 100 steps {last:.4f}")
    print(f"checkpoint: {os.path.abspath(args.out)}")


def _load(path):
    ckpt = checkpoint.load(path)
    meta = ckpt.info.get("meta", {})
    if "objective" not in meta:
        raise ValueError(f"{path!r} was not written by `npdiff train` (no objective in its meta)")
    model, schedule = checkpoint.load_model(path)
    return model, schedule, meta, np.asarray(meta["data_mean"]), np.asarray(meta["data_std"])


def cmd_sample(args) -> None:
    model, schedule, meta, mean, std = _load(args.checkpoint)
    rng = backend.default_rng(args.seed)
    if meta["objective"] == "sohl_dickstein":
        z = SohlDicksteinChain(model, schedule).sample(args.n, rng)
    else:
        options = {"variance": args.variance} if args.sampler == "ancestral" else {}
        clip = None if args.clip_x0 is None else (-args.clip_x0, args.clip_x0)
        z = ddpm.sample(model, schedule, args.n, rng, sampler=args.sampler, clip_x0=clip, **options)
    x = data.unstandardize(backend.to_numpy(z).astype(np.float64), mean, std)
    np.save(args.out, x)
    print(f"{args.n} samples of dimension {x.shape[1]}: {os.path.abspath(args.out)}")


def cmd_eval(args) -> None:
    model, schedule, meta, mean, std = _load(args.checkpoint)
    x = load_data(args.data, args.n, args.seed + 1)  # a toy set's held-out draw differs from training's
    if x.shape[1] != mean.size:
        raise ValueError(f"the data have {x.shape[1]} dimensions; the model was trained on {mean.size}")
    z, log_det = (x - mean) / std, float(np.log(std).sum())
    rng = np.random.default_rng(args.seed)
    if meta["objective"] == "sohl_dickstein":
        bound = likelihood.eq14_bound(SohlDicksteinChain(model, schedule), z, rng, exact=args.exact,
                                      n_t=args.n_t, log_det=log_det)
    else:
        process = likelihood.EpsilonChain(model, schedule, args.variance)
        bound = (likelihood.exact_bound(process, z, rng, log_det=log_det) if args.exact
                 else likelihood.mc_bound(process, z, rng, n_t=args.n_t, log_det=log_det))
    print(bound.summary())
    d = z.shape[1]
    print(f"data coordinates: log-likelihood bound {bound.nats_data:.4f} ± {bound.se:.4f} nats/point, "
          f"{bound.nats_data / d:.4f} nats/dim, {bound.nats_data / math.log(2):.4f} bits/point")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="npdiff", description="Train, sample and evaluate npdiff diffusion models.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model on points from a file or a toy set")
    t.add_argument("data", help=".npy/.csv file of points (N, D), or a toy set name")
    t.add_argument("--out", required=True, help="checkpoint path (.npz)")
    t.add_argument("--objective", choices=OBJECTIVES, default="epsilon")
    t.add_argument("--schedule", choices=[s for s in SCHEDULES if s != "custom"], default="linear")
    t.add_argument("--T", type=int, default=1000, help="diffusion steps (default 1000)")
    t.add_argument("--steps", type=int, default=20000)
    t.add_argument("--batch-size", type=int, default=256)
    t.add_argument("--lr", type=float, default=1e-3, help="peak learning rate, cosine-decayed")
    t.add_argument("--width", type=int, default=128)
    t.add_argument("--blocks", type=int, default=3)
    t.add_argument("--emb", type=int, default=64)
    t.add_argument("--coord-scale", type=float, default=25.0, help="sinusoidal scale of the coordinates")
    t.add_argument("--ema", type=float, default=0.0, help="EMA decay of the saved weights (0: none)")
    t.add_argument("--checkpoint-every", type=int, default=1000)
    t.add_argument("--resume", action="store_true", help="continue from --out if it exists")

    s = sub.add_parser("sample", help="draw samples from a checkpoint")
    s.add_argument("checkpoint")
    s.add_argument("--out", required=True, help="where to write the samples (.npy)")
    s.add_argument("--sampler", choices=list(ddpm.SAMPLERS), default="ancestral", help="ε models only")
    s.add_argument("--clip-x0", type=float, default=None,
                   help="clip x0-hat to [-R, R] (standardised units) while sampling an ε model")

    e = sub.add_parser("eval", help="the variational bound on held-out points, nats and bits")
    e.add_argument("checkpoint")
    e.add_argument("data", help=".npy/.csv file of held-out points, or a toy set name")
    e.add_argument("--exact", action="store_true", help="every t for every point (N·T network calls)")
    e.add_argument("--n-t", type=int, default=4, help="Monte-Carlo draws of t per point (default 4)")

    for sp, n_default in ((t, 8000), (s, 2000), (e, 10000)):
        sp.add_argument("--n", type=int, default=n_default, help=f"points to draw/sample (default {n_default})")
        sp.add_argument("--seed", type=int, default=0)
    for sp in (s, e):
        sp.add_argument("--variance", choices=["fixed_small", "fixed_large"], default="fixed_small",
                        help="σ_t² of an ε model's reverse steps: β̃_t or β_t")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        {"train": cmd_train, "sample": cmd_sample, "eval": cmd_eval}[args.command](args)
    except (ValueError, FileNotFoundError, FloatingPointError) as err:
        print(f"npdiff {args.command}: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
