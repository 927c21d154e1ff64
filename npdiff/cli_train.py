"""``npdiff train``: check everything up front, then train with checkpoints that a resume can trust.

Before any step: the output path (a writable .npz in an existing folder; an existing checkpoint is
replaced only with ``--force`` or continued with ``--resume``), the data (a file or a toy set; at
least 2 points whose standardisation does not overflow), the checkpoint's size against the free
disk (a warning above 100 MB). A resumed run must repeat every setting that defines it (objective,
schedule, model, data fingerprint, EMA, batch size, lr); only ``--steps`` and ``--checkpoint-every``
may change. Problems raise ``UsageError`` (exit status 2, ``npdiff.cli``).
"""

from __future__ import annotations

import hashlib
import os
import sys

import numpy as np

from npdiff import backend, checkpoint, data, safeguards, streaming, train
from npdiff.cli_args import UsageError
from npdiff.diffusion import DEFAULT_VARIANCE, Diffusion
from npdiff.optim import EMA, AdamW, cosine_lr

MODEL_FLAGS = {"hidden": "--hidden", "n_blocks": "--n-blocks", "emb_dim": "--emb-dim", "coord_scale": "--coord-scale",
               "data_dim": "the data's dimension", "out_dim": "--objective (output width)"}


# ---- data -------------------------------------------------------------------------------------------

def load_data(source: str, n: int, seed: int) -> np.ndarray:
    """Points (N, D) from a .npy/.csv path, or ``n`` draws of a named toy set."""
    if source in data.TOY_SETS:
        return data.make(source, n, np.random.default_rng(seed))
    if not os.path.exists(source) and os.path.splitext(source)[1].lower() not in (".npy", ".csv"):
        raise UsageError(f"{source!r} is neither a file nor a toy set ({', '.join(data.TOY_SETS)})")
    try:
        return data.load_points(source)
    except OSError as err:  # permission denied, an I/O error: the input cannot be read
        raise UsageError(f"cannot read {source!r}: {err.strerror or err}") from None


def standardize(x: np.ndarray, source: str):
    """(z, mean, std) of data.standardize, refusing data whose mean, spread or scaled values overflow."""
    if x.shape[0] < 2:
        raise UsageError(f"{source!r}: training needs at least 2 points, got {x.shape[0]}")
    with np.errstate(all="ignore"):  # overflow is checked on the results, just below
        z, mean, std = data.standardize(x)
    if not (np.isfinite(mean).all() and np.isfinite(std).all() and np.isfinite(z).all()):
        raise UsageError(f"{source!r}: the data's mean or spread overflows float64 (largest magnitude "
                         f"{np.abs(x).max():.3g}); rescale the data")
    return z, mean, std


def fingerprint(x: np.ndarray) -> dict:
    """The data's shape and the SHA-256 of its float64 values: what a resumed run must train on."""
    values = np.ascontiguousarray(x, dtype="<f8")
    return {"shape": list(values.shape), "sha256": hashlib.sha256(values.tobytes()).hexdigest()}


# ---- train ------------------------------------------------------------------------------------------

def build(args, data_dim: int):
    """The ``Diffusion`` bundle of the flags: model, schedule and objective (its output width follows from it)."""
    return Diffusion(data_dim, args.objective, args.T, args.schedule, hidden=args.hidden, n_blocks=args.n_blocks,
                     emb_dim=args.emb_dim, coord_scale=args.coord_scale, seed=args.seed)


def check_train_out(args):
    """Validate --out before any work; returns the checkpoint to resume (or None)."""
    out = args.out
    if os.path.splitext(out)[1].lower() != ".npz":
        raise UsageError(f"--out {out!r}: name a .npz checkpoint file")
    try:
        safeguards.check_checkpoint_path(out)
    except OSError as err:
        raise UsageError(f"--out {out!r}: cannot write in its folder: {err.strerror or err}") from None
    if args.resume and args.force:
        raise UsageError("--resume continues the checkpoint at --out and --force replaces it: pass one of them")
    if not os.path.exists(out):
        if args.resume:
            print(f"no checkpoint at {out} yet: starting from step 0")
        return None
    if args.force:
        return None
    try:
        ckpt = checkpoint.load(out)
    except ValueError as err:
        raise UsageError(f"--out {out!r} exists and is not a readable npdiff checkpoint ({err}); pass --force to "
                         "replace it or choose another --out") from None
    if not args.resume:
        raise UsageError(f"--out {out!r} exists (a checkpoint of {ckpt.step} steps); pass --resume to continue it "
                         "or --force to replace it")
    return ckpt


def resume_mismatches(ckpt, args, model, schedule, data_print: dict, batch_size: int) -> list[str]:
    """Every setting of this run that differs from the checkpoint's, as 'flag mine (checkpoint: theirs)'."""
    meta, diffs = ckpt.info["meta"], []

    def compare(flag, mine, theirs):
        if mine != theirs:
            diffs.append(f"{flag} {mine} (checkpoint: {theirs})")

    if "objective" not in meta:
        raise UsageError(f"{ckpt.path}: not written by `npdiff train` (no objective in its meta); train into a new "
                         "--out")
    compare("--objective", args.objective, meta["objective"])
    stored = ckpt.info["schedule_config"] or {}
    for key, value in schedule.config.items():
        compare({"T": "--T", "name": "--schedule"}.get(key, f"schedule {key}"), value, stored.get(key))
    stored = ckpt.info["model_config"] or {}
    for key, flag in MODEL_FLAGS.items():
        compare(flag, model.config[key], stored.get(key))
    theirs = meta.get("data_fingerprint")
    if not isinstance(theirs, dict):
        diffs.append("DATA cannot be checked: the checkpoint records no data fingerprint (an older npdiff wrote it)")
    elif data_print != theirs:
        diffs.append(f"DATA of shape {tuple(data_print['shape'])} and SHA-256 {data_print['sha256'][:12]}… "
                     f"(checkpoint: shape {tuple(theirs.get('shape', ()))}, "
                     f"SHA-256 {str(theirs.get('sha256'))[:12]}…)")
    compare("--ema", args.ema, ckpt.info.get("ema_decay", 0.0))
    run = meta.get("train") if isinstance(meta.get("train"), dict) else {}
    compare("--batch-size", batch_size, run.get("batch_size", batch_size))  # not recorded by older versions
    compare("--lr", args.lr, run.get("lr", args.lr))
    return diffs


def cmd_train(args) -> None:
    ckpt = check_train_out(args)
    x = load_data(args.data, args.n, args.seed)
    z, mean, std = standardize(x, args.data)
    diffusion = build(args, x.shape[1])
    model, schedule, objective = diffusion.model, diffusion.schedule, diffusion.objective
    batch_size = min(args.batch_size, len(z))
    if batch_size < args.batch_size:
        print(f"--batch-size {args.batch_size} is more than the {len(z)} points: using {batch_size}")
    data_print = fingerprint(x)
    first = 0
    if ckpt is not None:
        diffs = resume_mismatches(ckpt, args, model, schedule, data_print, batch_size)
        if diffs:
            raise UsageError(f"--resume: {args.out} was trained with other settings: {'; '.join(diffs)}. Repeat "
                             "them (only --steps and --checkpoint-every may change) or train into a new --out")
        first = ckpt.step
        if first > args.steps:
            raise UsageError(f"--steps {args.steps} is below the {first} steps {args.out} has trained; "
                             "pass a larger --steps to continue")
        if first == args.steps:
            print(f"nothing to train: {args.out} has trained {first} of --steps {args.steps}")
            return
        print(f"resuming {args.out} at step {first} of {args.steps}")
    size = checkpoint.estimate_bytes(model, optimizer=True, ema=args.ema > 0, extra=8 * len(z) + 24 * args.steps)
    free = streaming.free_bytes(args.out)
    if size > free:
        raise UsageError(f"the checkpoint will need about {size / 2**20:.0f} MB but {free / 2**20:.0f} MB are free "
                         f"for --out {args.out!r}; free space or choose a smaller model (--hidden, --emb-dim)")
    if size > checkpoint.WARN_BYTES:
        print(f"npdiff train: warning: the checkpoint will be about {size / 2**20:.0f} MB "
              f"({model.flat_params.size} parameters); a smaller --hidden or --emb-dim makes it smaller",
              file=sys.stderr)
    print(schedule.summary(1.0))
    meta = {"objective": args.objective, "variance": DEFAULT_VARIANCE[args.objective], "data": args.data,
            "data_mean": mean.tolist(), "data_std": std.tolist(), "data_fingerprint": data_print,
            "train": {"batch_size": batch_size, "lr": args.lr}}
    history = train.fit(model, z, objective, steps=args.steps, batch_size=batch_size,
                        optimizer=AdamW(model, lr=args.lr, weight_decay=0.0), rng=backend.default_rng(args.seed),
                        lr_schedule=cosine_lr(args.lr, args.steps, warmup=min(100, args.steps // 10)), clip=1.0,
                        ema=EMA(model, args.ema) if args.ema > 0 else None, checkpoint_path=args.out,
                        checkpoint_every=args.checkpoint_every, resume=ckpt is not None, meta=meta)
    ran = history.steps_run
    last = float(np.mean(history.loss[-min(100, ran):]))
    print(f"trained {ran} steps (steps {history.start_step + 1}–{args.steps}) in {history.seconds:.1f} s; "
          f"mean loss of the last {min(100, ran)} steps {last:.4f}")
    print(f"checkpoint: {os.path.abspath(args.out)}")
