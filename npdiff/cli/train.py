"""``npdiff train``: check everything up front, then train with checkpoints that a resume can trust.

Before any step: the flags this run would not use (``--n`` with a data file, ``--coord-scale`` for images), the
output path (a writable .npz in an existing folder, not an input; an existing checkpoint is replaced only with
``--force`` or continued with ``--resume``; held by a lock for the whole run, so that a second run on it is
refused), the data (a file or a toy set; at least 2 points whose standardisation does not overflow), the
checkpoint's size against the free disk and the file-size limit (a warning above 100 MB). A resumed run must repeat every setting that defines it (objective,
schedule, model, data fingerprint and labels, EMA, batch size, lr, label dropout); only ``--steps`` and
``--checkpoint-every`` may change. Problems raise ``UsageError`` (exit status 2, ``npdiff.cli``).

Labels (``--labels``, ``--label-column``, an image folder's label file; ``npdiff.cli.labels``) make the model
class-conditional (``Diffusion(num_classes=K, label_dropout=p)``). An MNIST-format folder (``npdiff.cli.images``)
trains on its pixel vectors in [−1, 1] as they are: no standardisation (mean 0 and std 1 are stored), no
coordinate embedding (``embed_coords=False``), and the meta records ``image_shape`` for ``sample``.
"""

from __future__ import annotations

import hashlib
import os
import sys

import numpy as np

from npdiff import backend, data
from npdiff.cli import images as cli_images, labels as cli_labels
from npdiff.images import idx
from npdiff.io import streaming
from npdiff.training import checkpoint, safeguards, train
from npdiff.cli.args import DEFAULT_COORD_SCALE, DEFAULT_TOY_POINTS, UsageError, check_distinct, holding, refuse_unused
from npdiff.diffusion import DEFAULT_VARIANCE, Diffusion
from npdiff.nn.optim import EMA, AdamW, cosine_lr

MODEL_FLAGS = {"hidden": "--hidden", "n_blocks": "--n-blocks", "emb_dim": "--emb-dim", "coord_scale": "--coord-scale",
               "data_dim": "the data's dimension", "out_dim": "--objective (output width)",
               "num_classes": "--num-classes (the labels' K; None: no labels)",
               "embed_coords": "the coordinate embedding (off for images)"}


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


def fingerprint(x: np.ndarray, labels: np.ndarray | None = None) -> dict:
    """The data's shape and the SHA-256 of its float64 values (and of the labels, if any): what a resumed run
    must train on."""
    values = np.ascontiguousarray(x, dtype="<f8")
    record = {"shape": list(values.shape), "sha256": hashlib.sha256(values.tobytes()).hexdigest()}
    if labels is not None:
        record["labels_sha256"] = cli_images.labels_sha256(labels)
    return record


class TrainingData:
    """What ``train`` fits: z (N, D) in model coordinates, the mean and std that map back, the labels (N,) or
    None, K, the fingerprint a resume compares, (H, W) for images, and a description of the labels."""

    def __init__(self, z, mean, std, labels, num_classes, data_print, image_shape=None, label_source=None):
        self.z, self.mean, self.std, self.labels, self.num_classes = z, mean, std, labels, num_classes
        self.data_print, self.image_shape, self.label_source = data_print, image_shape, label_source


def load_training_data(args) -> TrainingData:
    """DATA and its labels: a folder of images (labels from its label file), or points (labels from --labels
    or --label-column), every label checked (``npdiff.cli.labels``)."""
    images = cli_images.is_image_folder(args.data)
    cli_labels.check_train_flags(args, images)
    if images:
        pixels, folder_labels = cli_images.load_folder(args.data)
        z = idx.images_to_vectors(pixels)  # (N, H·W) float32 in [−1, 1]: already the model's scale
        d = z.shape[1]
        labels, source = (None, None) if args.no_labels else (folder_labels, f"the label file of {args.data}")
        k = None if labels is None else cli_labels.training_classes(labels, len(z), args.num_classes, source)
        return TrainingData(z, np.zeros(d), np.ones(d), labels, k, cli_images.fingerprint(pixels, labels),
                            tuple(pixels.shape[1:]), source)
    if args.label_column is not None:
        x, labels = cli_labels.split_label_column(args.data, args.label_column)
        source = f"column {args.label_column!r} of {args.data}"
    else:
        x = load_data(args.data, DEFAULT_TOY_POINTS if args.n is None else args.n, args.seed)
        labels, source = None, None
        if args.labels is not None:
            labels, source = cli_labels.read_label_file(args.labels), args.labels
    k = None
    if labels is not None:
        where = f"--labels {args.labels!r}" if args.labels is not None else f"--label-column {args.label_column!r}"
        k = cli_labels.training_classes(labels, len(x), args.num_classes, where)
    z, mean, std = standardize(x, args.data)
    return TrainingData(z, mean, std, labels, k, fingerprint(x, labels), None, source)


# ---- train ------------------------------------------------------------------------------------------

def build(args, data_dim: int, num_classes: int | None = None, images: bool = False):
    """The ``Diffusion`` bundle of the flags: model, schedule and objective (its output width follows from it);
    class-conditional with K = num_classes; images: no coordinate embedding (pixels go in as they are)."""
    if args.objective != "epsilon" and args.prediction != "eps":
        raise UsageError(f"--prediction {args.prediction} needs --objective epsilon (the {args.objective} objective "
                         "trains its own outputs)")
    return Diffusion(data_dim, args.objective, args.T, args.schedule, prediction=args.prediction,
                     hidden=args.hidden, n_blocks=args.n_blocks,
                     emb_dim=args.emb_dim, coord_scale=DEFAULT_COORD_SCALE if args.coord_scale is None else args.coord_scale,
                     seed=args.seed, num_classes=num_classes,
                     label_dropout=label_dropout(args), embed_coords=not images)


def label_dropout(args) -> float:
    return cli_labels.DEFAULT_DROPOUT if args.label_dropout is None else args.label_dropout


def check_train_flags(args) -> None:
    """The flags that this run would not use, and an --out that is one of the inputs; before anything is read."""
    toy = args.data in data.TOY_SETS  # as load_data reads it
    images = cli_images.is_image_folder(args.data)
    refuse_unused([("--n", args.n is not None and not toy, f"it sets how many points a toy set draws, and "
                    f"{args.data!r} is not a toy set"),
                   ("--coord-scale", args.coord_scale is not None and images, "an image folder's pixels go in as "
                    "they are, without the coordinate embedding"),
                   ("--no-labels", args.no_labels and not images, f"{args.data!r} is not an image folder, and points "
                    "train without labels unless --labels or --label-column gives them")])
    if args.resume and args.force:
        raise UsageError("--resume continues the checkpoint at --out and --force replaces it: pass one of them")
    check_distinct(args.out, [("DATA", None if toy else args.data), ("--labels", args.labels)])


def check_out_path(out: str) -> None:
    """--out names a .npz file in an existing folder where a file can be created."""
    if os.path.splitext(out)[1].lower() != ".npz":
        raise UsageError(f"--out {out!r}: name a .npz checkpoint file")
    try:
        safeguards.check_checkpoint_path(out)
    except OSError as err:
        raise UsageError(f"--out {out!r}: cannot write in its folder: {err.strerror or err}") from None


def check_train_out(args):
    """Validate --out before any work; returns the checkpoint to resume (or None)."""
    out = args.out
    check_out_path(out)
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
    compare("--prediction", args.prediction, meta.get("prediction", "eps"))
    stored = ckpt.info["schedule_config"] or {}
    for key, value in schedule.config.items():
        compare({"T": "--T", "name": "--schedule"}.get(key, f"schedule {key}"), value, stored.get(key))
    stored = ckpt.info["model_config"] or {}
    for key, flag in MODEL_FLAGS.items():
        compare(flag, model.config[key], stored.get(key))
    theirs = meta.get("data_fingerprint")
    if not isinstance(theirs, dict):
        diffs.append("DATA cannot be checked: the checkpoint records no data fingerprint (an older npdiff wrote it)")
    else:
        if (data_print["shape"], data_print["sha256"]) != (theirs.get("shape"), theirs.get("sha256")):
            diffs.append(f"DATA of shape {tuple(data_print['shape'])} and SHA-256 {data_print['sha256'][:12]}… "
                         f"(checkpoint: shape {tuple(theirs.get('shape', ()))}, "
                         f"SHA-256 {str(theirs.get('sha256'))[:12]}…)")
        mine, stored = data_print.get("labels_sha256"), theirs.get("labels_sha256")
        if mine != stored and mine is not None and stored is not None:  # with or without: --num-classes says so
            diffs.append(f"labels of SHA-256 {mine[:12]}… (checkpoint: {stored[:12]}…)")
    compare("--ema", args.ema, ckpt.info.get("ema_decay", 0.0))
    run = meta.get("train") if isinstance(meta.get("train"), dict) else {}
    compare("--batch-size", batch_size, run.get("batch_size", batch_size))  # not recorded by older versions
    compare("--lr", args.lr, run.get("lr", args.lr))
    if model.config.get("num_classes") is not None and meta.get("label_dropout") is not None:
        compare("--label-dropout", label_dropout(args), meta.get("label_dropout"))
    return diffs


def cmd_train(args) -> None:
    check_train_flags(args)
    check_out_path(args.out)
    with holding(args.out, "npdiff train"):  # a second run on this --out is refused, not raced
        _train(args)


def _train(args) -> None:
    ckpt = check_train_out(args)
    loaded = load_training_data(args)
    z, labels, data_print = loaded.z, loaded.labels, loaded.data_print
    diffusion = build(args, z.shape[1], loaded.num_classes, loaded.image_shape is not None)
    model, schedule, objective = diffusion.model, diffusion.schedule, diffusion.objective
    batch_size = min(args.batch_size, len(z))
    if batch_size < args.batch_size:
        print(f"--batch-size {args.batch_size} is more than the {len(z)} points: using {batch_size}")
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
    limit, what = streaming.write_limit(args.out)
    if size > limit:
        raise UsageError(f"the checkpoint will need about {size / 2**20:.0f} MB but {limit / 2**20:.0f} MB are {what} "
                         f"for --out {args.out!r}; free space, raise the limit or choose a smaller model (--hidden, "
                         "--emb-dim)")
    if size > checkpoint.WARN_BYTES:
        print(f"npdiff train: warning: the checkpoint will be about {size / 2**20:.0f} MB "
              f"({model.flat_params.size} parameters); a smaller --hidden or --emb-dim makes it smaller",
              file=sys.stderr)
    print(schedule.summary(1.0))
    if loaded.image_shape is not None:
        print(f"{len(z)} images of {loaded.image_shape[0]}×{loaded.image_shape[1]} pixels, as vectors on [-1, 1]")
    if labels is not None:
        counts = np.bincount(labels, minlength=loaded.num_classes)
        print(f"class-conditional: K = {loaded.num_classes} classes from {loaded.label_source} ({counts.min()}–"
              f"{counts.max()} points per class), label dropout p = {label_dropout(args):g}")
    meta = {"objective": args.objective, "variance": DEFAULT_VARIANCE[args.objective], "prediction": args.prediction,
            "data": args.data,
            "data_mean": loaded.mean.tolist(), "data_std": loaded.std.tolist(), "data_fingerprint": data_print,
            "train": {"batch_size": batch_size, "lr": args.lr}}
    meta.update({k: v for k, v in diffusion.config.items() if k in ("time_distribution", "logit_mean", "logit_std")})
    if loaded.image_shape is not None:
        meta["image_shape"] = list(loaded.image_shape)
    if labels is not None:
        meta.update(label_dropout=label_dropout(args), labels=loaded.label_source)
    history = train.fit(model, z, objective, steps=args.steps, batch_size=batch_size, labels=labels,
                        optimizer=AdamW(model, lr=args.lr, weight_decay=0.0), rng=backend.default_rng(args.seed),
                        lr_schedule=cosine_lr(args.lr, args.steps, warmup=min(100, args.steps // 10)), clip=1.0,
                        ema=EMA(model, args.ema) if args.ema > 0 else None, checkpoint_path=args.out,
                        checkpoint_every=args.checkpoint_every, resume=ckpt is not None, meta=meta,
                        schedule=schedule)  # a flow objective has none of its own: T is its levels
    ran = history.steps_run
    last = float(np.mean(history.loss[-min(100, ran):]))
    print(f"trained {ran} steps (steps {history.start_step + 1}–{args.steps}) in {history.seconds:.1f} s; "
          f"mean loss of the last {min(100, ran)} steps {last:.4f}")
    print(f"checkpoint: {os.path.abspath(args.out)}")
