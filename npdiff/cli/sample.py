"""``npdiff sample`` and ``npdiff eval``: a checked checkpoint, then ``--chunk`` rows at a time.

The checkpoint is validated before use (written by ``npdiff train``, a known objective, finite weights,
a data scaling of the right size, a meta that fits the model: ``check_meta``), and so are the flags against it
(a flag that would not be used is refused; guidance in ``GUIDANCE_RANGE``, and only where the 'no label' row was
trained) and the output path (replaced only with ``--force``, never an input, locked for the run) and the disk
space and file-size limit. Then points are drawn or evaluated a chunk at a time, so memory does not grow with ``--n``;
samples go to disk chunk by chunk through one atomic write. Problems found up front raise
``UsageError`` (exit status 2, ``npdiff.cli``).

All calls into the library's chains, sampler and bounds sit in ``_max_gain``, ``_chain``, ``_draw_chunk`` and
``_bound_chunk``. ``--given``/``--observed`` (``load_condition``) sample the chain conditioned by
``npdiff.processes.conditioning.Conditioned`` (Sohl-Dickstein et al. 2015, §2.5; docs/conditioning.md).
``--label``/``--labels``/``--guidance`` (``npdiff.cli.labels``) give a class-conditional model's samples their classes
and the guidance scale. A model of images (``npdiff.cli.images``) samples with x̂_0 clipped to the pixel range
[−1, 1] unless ``--clip-x0`` says otherwise, writes a PNG grid for ``--out x.png``, and ``eval`` of an
image folder prints the image-quality figure (``eval_images``) instead of the bound.
"""

from __future__ import annotations

import math
import os
import time

import numpy as np

from npdiff import backend, data
from npdiff.cli import images as cli_images, labels as cli_labels
from npdiff.io import fileio, streaming
from npdiff.processes import conditioning, likelihood, ode, ode_likelihood, sampling
from npdiff.training import checkpoint
from npdiff.cli.args import (DEFAULT_GRID, DEFAULT_JUDGE_DIR, DEFAULT_N_T, DEFAULT_RHO, OBJECTIVES, PREDICTIONS,
                             UsageError, check_distinct, holding, refuse_unused)
from npdiff.cli.train import load_data
from npdiff.diffusion import DEFAULT_VARIANCE, check_guidance
from npdiff.processes.ddpm import EpsilonChain
from npdiff.processes.flow import FlowDenoiser, FlowTime, FlowVelocity
from npdiff.io.progress import Progress
from npdiff.processes.sohl_dickstein import SohlDicksteinChain

LN2 = math.log(2.0)
MAX_GAIN = 10.0  # the largest error gain of a sampling step that runs without --clip-x0
DRAW_BLOCK = 65_536  # toy-set points drawn at once in eval (1 MB at D = 2); a compute chunk can be far smaller
EVAL_POINTS, EVAL_IMAGES = 10_000, 500  # eval's default --n: toy-set points drawn, image samples scored


# ---- loading a trained model -------------------------------------------------------------------------

def _number(v) -> float:
    """v as a float, or NaN when it is not a plain number (a bool, a string, an int beyond float's range)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return math.nan
    try:
        return float(v)
    except OverflowError:
        return math.nan


def _vector(meta: dict, key: str, d: int, path: str, positive: bool = False) -> np.ndarray:
    value = meta.get(key)
    ok = isinstance(value, list) and len(value) == d and all(
        math.isfinite(_number(v)) and (_number(v) > 0 or not positive) for v in value)
    if not ok:
        raise UsageError(f"{path}: the meta's {key!r} must be {d} finite{' positive' if positive else ''} numbers")
    return np.asarray(value, dtype=np.float64)


def load_trained(path: str):
    """(model, schedule, meta, mean, std) of a checkpoint written by ``npdiff train``, every part checked."""
    ckpt = checkpoint.load(path)
    meta = ckpt.info["meta"]
    if "objective" not in meta:
        raise UsageError(f"{path!r} was not written by `npdiff train` (no objective in its meta)")
    if meta["objective"] not in OBJECTIVES:
        raise UsageError(f"{path!r} has the unknown objective {meta['objective']!r} (this npdiff knows "
                         f"{', '.join(OBJECTIVES)})")
    model, schedule = checkpoint.model_from(ckpt)
    if schedule is None:
        raise UsageError(f"{path!r} stores no schedule")
    d = model.config["data_dim"]
    width = d if meta["objective"] in ("epsilon", "flow") else 2 * d
    if model.config["out_dim"] != width:
        raise UsageError(f"{path!r}: a {meta['objective']} model of {d} dimensions has {width} outputs, "
                         f"this one has {model.config['out_dim']}")
    mean, std = _vector(meta, "data_mean", d, path), _vector(meta, "data_std", d, path, positive=True)
    check_meta(meta, model, path)
    if not checkpoint.finite_weights(model):
        raise UsageError(f"{path!r} holds non-finite weights (NaN or inf): the run diverged; use an earlier checkpoint")
    return model, schedule, meta, mean, std


def check_meta(meta: dict, model, path: str) -> None:
    """The meta's claims agree with the model: the image shape and the data's shape with its dimension D, the
    prediction and the label dropout with what this npdiff knows, labels with a class-conditional model."""
    d, k = model.config["data_dim"], model.config.get("num_classes")
    shape = cli_images.image_shape(meta, path)
    if shape is not None and shape[0] * shape[1] != d:
        raise UsageError(f"{path!r}: the meta's image_shape {shape[0]}×{shape[1]} holds {shape[0] * shape[1]} pixels; "
                         f"the model's dimension is {d}")
    seen = meta.get("data_fingerprint", {}).get("shape") if isinstance(meta.get("data_fingerprint"), dict) else None
    if isinstance(seen, list) and len(seen) >= 2 and all(isinstance(s, int) for s in seen):
        width = math.prod(seen[1:])
        if width != d:
            raise UsageError(f"{path!r}: the meta says the model was trained on data of shape {tuple(seen)} "
                             f"({width} numbers per point); the model's dimension is {d}")
    if meta.get("prediction", "eps") not in PREDICTIONS:
        raise UsageError(f"{path!r}: the meta's prediction {meta.get('prediction')!r} is not one of "
                         f"{', '.join(PREDICTIONS)}")
    if meta.get("objective") != "epsilon" and meta.get("prediction", "eps") != "eps":
        raise UsageError(f"{path!r}: a {meta.get('objective')} model cannot predict {meta.get('prediction')!r}")
    p = meta.get("label_dropout")
    if p is not None and not (math.isfinite(_number(p)) and 0 <= p < 1):
        raise UsageError(f"{path!r}: the meta's label_dropout must be a number in [0, 1), got {p!r}")
    if k is None and meta.get("labels") is not None:
        raise UsageError(f"{path!r}: the meta says the model was trained on the labels of {meta['labels']!r}, but the "
                         "model has no classes")
    if k is not None and meta.get("objective") not in ("epsilon", "flow"):
        raise UsageError(f"{path!r}: a class-conditional model must have the epsilon or flow objective, not "
                         f"{meta.get('objective')!r}")


def variance_of(meta: dict, args) -> str | None:
    objective, chosen = meta["objective"], args.variance
    if objective == "flow":
        if chosen is not None:
            raise UsageError("--variance applies to epsilon and hybrid models; a flow model has no reverse chain")
        return None
    if objective == "sohl_dickstein":
        if chosen is not None:
            raise UsageError("--variance applies to epsilon and hybrid models; a sohl_dickstein chain learns its own")
        return None
    if objective == "epsilon" and chosen == "learned_range":
        raise UsageError("--variance learned_range needs a hybrid model (trained with --objective hybrid)")
    return DEFAULT_VARIANCE[objective] if chosen is None else chosen


# ---- the library calls of sample and eval ------------------------------------------------------------

def _max_gain(schedule, args) -> tuple[int, float]:
    """(t, g): the sampling step that amplifies an error of ε_θ most, and by how much."""
    if args.sampler in sampling.ODE_SAMPLERS:
        gains = sampling.ode_gains(schedule, args.ddim_steps, args.grid or DEFAULT_GRID, args.rho or DEFAULT_RHO)
        return max(gains.items(), key=lambda kv: kv[1])
    ts = schedule.reverse_t(args.ddim_steps if args.sampler == "ddim" else None)
    gains = ({t: sampling.ancestral_gain(schedule, t) for t in ts} if args.sampler == "ancestral"
             else {t: sampling.ddim_gain(schedule, t, t_prev) for t, t_prev in zip(ts, ts[1:] + [0])})
    return max(gains.items(), key=lambda kv: kv[1])


def _chain(model, schedule, meta, variance, clip_x0=None, labels=None, guidance: float = 0.0):
    """The reverse process of a trained model (``--clip-x0`` R clips x̂_0 to [−R, R] in an ε-model's chain);
    labels (n,): the classes of a class-conditional model's n samples, guided with scale w = ``guidance``."""
    if meta["objective"] == "sohl_dickstein":
        return SohlDicksteinChain(model, schedule)
    if meta["objective"] == "flow":  # its velocity v_θ(x_t, t) on the levels t = k/T
        return FlowVelocity(model, FlowTime(schedule.T), labels, guidance)
    clip = None if clip_x0 is None else (-clip_x0, clip_x0)
    return EpsilonChain(model, schedule, variance, clip_x0=clip, max_gain=None,  # the gain is checked up front
                        prediction=meta.get("prediction", "eps"), labels=labels, guidance=guidance)


def _draw_chunk(model, schedule, meta, args, variance, condition, labels, n: int, rng):
    """n samples (n, D) in standardised coordinates, on the backend; condition: ``Conditioned``'s keyword
    arguments for these n samples (``load_condition``), or None to sample the model itself; labels: the n
    samples' classes (n,) or None (``--guidance`` w applies with them)."""
    guidance = 0.0 if labels is None else (args.guidance or 0.0)
    chain = _chain(model, schedule, meta, variance, args.clip_x0, None if labels is None else backend.asarray(labels),
                   guidance)
    options = ode_options(args)
    if condition is None:
        return sampling.sample(chain, n, rng, sampler=args.sampler, steps=args.ddim_steps, **options)
    if args.sampler in sampling.ODE_SAMPLERS:  # the ODE's denoiser conditioned (ode.ConditionedDenoiser)
        m, v = conditioning.factor(model.config["data_dim"], **condition)
        denoiser = FlowDenoiser(chain) if meta["objective"] == "flow" else ode.ChainDenoiser(chain)
        return sampling.sample(ode.ConditionedDenoiser(denoiser, m, v), n, rng, sampler=args.sampler,
                               steps=args.ddim_steps, **options)
    conditioned = conditioning.Conditioned(chain, method=args.condition or "paper", **condition)
    return sampling.sample(conditioned, n, rng, x_T=conditioned.x_T(n, rng))


def _bound_chunk(model, schedule, meta, args, variance, z, rng, log_det: float) -> likelihood.Bound:
    """The bound of points z (C, D) in standardised coordinates: exact over t, or Monte Carlo (args.n_t)."""
    chain = _chain(model, schedule, meta, variance)
    if meta["objective"] == "sohl_dickstein":
        return likelihood.eq14_bound(chain, z, rng, exact=args.exact, n_t=args.n_t, log_det=log_det)
    if args.exact:
        return likelihood.exact_bound(chain, z, rng, log_det=log_det)
    return likelihood.mc_bound(chain, z, rng, n_t=args.n_t, log_det=log_det)


# ---- sample and eval ---------------------------------------------------------------------------------

def ode_options(args) -> dict:
    """``sampling.sample``'s grid, ρ and S_churn from --grid, --rho, --s-churn (ODE samplers only)."""
    if args.sampler not in sampling.ODE_SAMPLERS:
        return {}
    options = {"grid": args.grid or DEFAULT_GRID, "rho": args.rho or DEFAULT_RHO}
    return {**options, "s_churn": args.s_churn} if args.s_churn else options


def default_sampler(meta: dict, args) -> None:
    """--sampler left out: euler for a flow model (it has no chain), ancestral for the others."""
    if args.sampler is None:
        args.sampler = "euler" if meta["objective"] == "flow" else "ancestral"


def check_ode_flags(args) -> None:
    """--grid, --rho and --s-churn belong to the ODE samplers (--rho to --grid karras, --s-churn to heun)."""
    ode_sampler = args.sampler in sampling.ODE_SAMPLERS
    refuse_unused([("--grid", args.grid is not None and not ode_sampler, "it chooses the ODE samplers' noise "
                    "levels (--sampler euler, heun or dpm++)"),
                   ("--rho", args.rho is not None and (args.grid or DEFAULT_GRID) != "karras",
                    "it shapes --grid karras"),
                   ("--s-churn", args.s_churn is not None and args.sampler != "heun", "it is EDM's churn of "
                    "--sampler heun")])


def check_sample_flags(meta: dict, args, schedule) -> None:
    default_sampler(meta, args)
    check_ode_flags(args)
    if meta["objective"] == "sohl_dickstein":
        if args.sampler in sampling.ODE_SAMPLERS:
            raise UsageError(f"--sampler {args.sampler}: the ODE samplers need a denoiser (an epsilon, hybrid or "
                             "flow model); a sohl_dickstein chain has only its Gaussian kernel: use --sampler "
                             "ancestral")
        options = (("--sampler ddim", args.sampler == "ddim"), ("--clip-x0", args.clip_x0 is not None),
                   ("--steps", args.ddim_steps is not None))
        given = [flag for flag, on in options if on]
        if given:
            raise UsageError(f"{', '.join(given)}: ε-model options; a sohl_dickstein chain samples with its own "
                             "kernel")
        return
    if meta["objective"] == "flow":
        if args.sampler not in sampling.ODE_SAMPLERS:
            raise UsageError(f"--sampler {args.sampler}: a flow model has no reverse chain; sample it with euler, "
                             "heun or dpm++")
        if args.clip_x0 is not None:
            raise UsageError("--clip-x0 clips an ε-model's x0-hat; a flow model samples its velocity as it is")
        if args.ddim_steps is not None and args.ddim_steps > schedule.T:
            raise UsageError(f"--steps {args.ddim_steps} is more than the flow model's T = {schedule.T} levels")
        if args.sampler == "euler" and (args.grid or DEFAULT_GRID) != "ddim":
            raise UsageError("--grid karras: Euler on a flow model steps evenly in t from t = 1 (--grid ddim)")
        return
    if args.sampler == "ancestral" and args.ddim_steps is not None:
        raise UsageError("--steps (--ddim-steps) needs --sampler ddim or an ODE sampler (euler, heun, dpm++); "
                         "ancestral runs all T steps")
    if args.sampler != "ancestral" and args.variance is not None:
        raise UsageError(f"--variance applies to the ancestral sampler; --sampler {args.sampler} has no "
                         "Gaussian step of its own")
    if args.ddim_steps is not None and args.ddim_steps > schedule.T:
        raise UsageError(f"--steps {args.ddim_steps} is more than the model's T = {schedule.T}")
    t, gain = _max_gain(schedule, args)
    if args.clip_x0 is None and gain > MAX_GAIN:
        raise UsageError(f"this {schedule.config['name']} schedule's sampling step at t={t} multiplies the network's "
                         f"error by {gain:.1f} (beta_t={schedule.betas[t]:.4g}); pass --clip-x0 R to clip x0-hat to "
                         "[-R, R] (standardised units, e.g. 3)")


def check_sample_out(args, d: int, shape=None, columns: int = 1) -> None:
    """--out: a .npy or .csv file (or a .png grid of a model of images, shape (H, W)) that can be written and
    fits the disk and --max-output."""
    out = args.out
    png = os.path.splitext(out)[1].lower() == ".png"
    if png and shape is None:
        raise UsageError(f"--out {out!r}: a PNG grid needs a model of images (trained on an MNIST-format folder); "
                         "name a .npy or .csv file")
    if not png:
        try:
            streaming.point_format(out)
        except ValueError as err:
            grid = "; a model of images also writes a .png grid" if shape is not None else ""
            raise UsageError(f"--out {err}{grid}") from None
    if os.path.isdir(out):
        raise UsageError(f"--out {out!r} is a folder; name a {'.png' if png else '.npy or .csv'} file")
    if not os.path.isdir(os.path.dirname(os.path.abspath(out))):
        raise UsageError(f"--out {out!r}: its folder does not exist (create it first)")
    if os.path.lexists(out) and not args.force:
        raise UsageError(f"--out {out!r} exists; pass --force to replace it or choose another --out")
    try:
        fileio.check_writable_folder(out)
    except OSError as err:
        raise UsageError(f"--out {out!r}: cannot write in its folder: {err.strerror or err}") from None
    if png:
        try:
            cli_images.check_grid(args.n, shape, columns)
        except ValueError as err:
            raise UsageError(f"--out {out!r}: {err}") from None
    need = (cli_images.grid_bytes(args.n, shape, columns) if png else streaming.estimate_bytes(out, args.n, d))
    limit, what = streaming.write_limit(out)
    if args.max_output is not None and args.max_output < limit:
        limit, what = args.max_output, "allowed by --max-output"
    if need > limit:
        raise UsageError(f"--n {args.n} samples need up to {need / 2**20:.1f} MB in {out!r}, more than the "
                         f"{limit / 2**20:.1f} MB {what}; sample fewer or write elsewhere")


def load_condition(args, d: int, mean: np.ndarray, std: np.ndarray) -> tuple[dict | None, np.ndarray | None]:
    """(condition, given) of --given/--observed/--noise-std, or (None, None) without them.

    condition: ``Conditioned``'s keyword arguments in model coordinates (``conditioning.from_files``),
    each file's rows (R, D) with R = 1 (every sample) or R = --n (one per sample). given: the --given rows
    as read (R, D), data coordinates, NaN where free: the values written back into the samples' known
    coordinates. UsageError for a combination of flags or a file that cannot condition.
    """
    if (args.observed is None) != (args.noise_std is None):
        raise UsageError("--observed FILE and --noise-std S go together: the observation y = x0 + N(0, S^2)")
    if args.given is None and args.observed is None:
        if args.condition is not None:
            raise UsageError("--condition needs --given FILE or --observed FILE --noise-std S")
        return None, None
    if args.sampler == "ddim":
        raise UsageError("--given/--observed sample with the ancestral sampler or an ODE sampler (euler, heun, "
                         "dpm++); drop --sampler ddim")
    if args.sampler in sampling.ODE_SAMPLERS and args.condition is not None:
        raise UsageError("--condition chooses the ancestral chain's r_t; the ODE samplers condition the denoiser "
                         "itself (ode.ConditionedDenoiser): drop --condition")
    files = [(flag, path) for flag, path in (("--given", args.given), ("--observed", args.observed)) if path]
    for flag, path in files:
        if os.path.isdir(path):
            raise UsageError(f"{flag} {path!r} is a folder; name a .npy or .csv file")
    try:
        condition = conditioning.from_files(d, args.given, args.observed, args.noise_std, mean, std)
        given = None if args.given is None else conditioning.read_condition(args.given, d, "given")
    except OSError as err:
        if isinstance(err, FileNotFoundError) and not err.filename:  # read_condition's own one-line message
            raise
        raise UsageError(f"cannot read {err.filename or 'the condition file'!r}: {err.strerror or err}") from None
    for flag, path in files:
        rows = len(condition["given" if flag == "--given" else "observed"])
        if rows not in (1, args.n):
            raise UsageError(f"{flag} {path!r} has {rows} rows; give one row (the same for every sample) or "
                             f"one row per sample with --n {rows}")
    return condition, given


def _rows(a, start: int, size: int):
    """Rows start..start+size−1 of a per-sample condition (N, D); a shared row (1, D) or a (D,) vector as is."""
    return a[start:start + size] if np.ndim(a) == 2 and len(a) > 1 else a


def draw(model, schedule, meta, args, variance, condition, given, labels, n: int, mean, std):
    """Yield the n samples in data coordinates, (C, D) float64 chunks of at most ``--chunk`` network rows (a
    guided chunk runs 2C rows); condition/given: ``load_condition``'s; labels (n,) or None."""
    rng = backend.default_rng(args.seed)
    rows_per_sample = 2 if labels is not None and args.guidance else 1
    start = 0
    for size in streaming.chunk_sizes(n, max(1, args.chunk // rows_per_sample)):
        part = None if condition is None else {k: _rows(v, start, size) for k, v in condition.items()}
        chunk_labels = None if labels is None else labels[start:start + size]
        z = _draw_chunk(model, schedule, meta, args, variance, part, chunk_labels, size, rng)
        x = data.unstandardize(backend.to_numpy(z).astype(np.float64), mean, std)
        if given is not None:  # the chain lands on them up to float32 rounding; the user gets them exactly
            g = _rows(given, start, size)
            x = np.where(np.isnan(g), x, g)
        if not np.isfinite(x).all():
            raise FloatingPointError("sampling produced non-finite values; nothing was written")
        yield x
        start += size


def _image_defaults(args, meta, shape) -> None:
    """An ε-model of images clips x̂_0 to the pixel range [−1, 1] unless --clip-x0 says otherwise (as Ho et al.
    2020 do)."""
    if shape is not None and args.clip_x0 is None and meta["objective"] not in ("sohl_dickstein", "flow"):
        args.clip_x0 = 1.0


def check_guided(meta: dict, args, labels) -> None:
    """--guidance and --label none on a class-conditional model: in the range, and only where the 'no label' row
    was trained (``diffusion.check_guidance``)."""
    if meta.get("label_dropout") is None and args.guidance is None:
        return
    try:
        check_guidance(args.guidance or 0.0, meta.get("label_dropout"), labels is not None)
    except ValueError as err:
        flag = f"--guidance {args.guidance:g}" if labels is not None else "--label none"
        raise UsageError(f"{flag}: {err}") from None


def cmd_sample(args) -> None:
    check_distinct(args.out, [("the checkpoint", args.checkpoint), ("--given", args.given),
                              ("--observed", args.observed), ("--labels", args.labels)])
    model, schedule, meta, mean, std = load_trained(args.checkpoint)
    d = mean.size
    shape = cli_images.image_shape(meta, args.checkpoint)
    labels, args.n, what = cli_labels.sampling_labels(args, model.config.get("num_classes"), args.checkpoint)
    if model.config.get("num_classes") is not None:
        check_guided(meta, args, labels)
    variance = variance_of(meta, args)
    _image_defaults(args, meta, shape)
    check_sample_flags(meta, args, schedule)
    condition, given = load_condition(args, d, mean, std)
    k = model.config.get("num_classes")
    columns = cli_images.grid_columns(args.n, k if args.label == "balanced" else None)
    check_sample_out(args, d, shape, columns)
    with holding(args.out, "npdiff sample"):  # a second run on this --out is refused, not raced
        if os.path.lexists(args.out) and not args.force:  # written by a run that finished since the check
            raise UsageError(f"--out {args.out!r} exists; pass --force to replace it or choose another --out")
        _write_samples(args, model, schedule, meta, variance, condition, given, labels, mean, std, shape, columns,
                       what)


def _write_samples(args, model, schedule, meta, variance, condition, given, labels, mean, std, shape, columns,
                   what: str) -> None:
    """Draw the samples chunk by chunk into --out (a .npy/.csv file, or a PNG grid one row of tiles at a time)."""
    d, k = mean.size, model.config.get("num_classes")
    chunks = draw(model, schedule, meta, args, variance, condition, given, labels, args.n, mean, std)
    bar = Progress(args.n, label="sampled", unit="points" if shape is None else "images")
    if os.path.splitext(args.out)[1].lower() == ".png":
        with cli_images.write_grid_rows(args.out, args.n, shape, columns) as grid:  # uint8 rows of tiles, streamed
            for x in chunks:
                grid.write(x)
                bar.update(grid.count)
    else:
        with streaming.write_points(args.out, args.n, d) as writer:
            for x in chunks:
                writer.write(x)
                bar.update(writer.rows)
    bar.close()
    kind = f"images of {shape[0]}×{shape[1]}" if shape is not None else f"samples of dimension {d}"
    what = f" ({what})" if k is not None else ""
    print(f"{args.n} {kind}{what}: {os.path.abspath(args.out)}")


def held_out_blocks(args, x):
    """The held-out points in blocks: the file's points at once, or a toy set drawn DRAW_BLOCK points at a time."""
    if x is not None:
        yield x
        return
    rng = np.random.default_rng(args.seed + 1)  # a toy set's held-out draw differs from training's (seed)
    for size in streaming.chunk_sizes(args.n, DRAW_BLOCK):
        yield data.make(args.data, size, rng)


def cmd_eval(args) -> None:
    images = cli_images.is_image_folder(args.data)
    toy = args.data in data.TOY_SETS
    refuse_unused([("--exact", args.exact and images, "the image figure scores samples; the bound of points takes "
                    "--exact"),
                   ("--n-t", args.n_t is not None and images, "the image figure scores samples; the bound of points "
                    "takes --n-t"),
                   ("--n-t", args.n_t is not None and args.exact, "--exact runs every t, not --n-t draws"),
                   ("--judge-dir", args.judge_dir is not None and not images, "the judge scores samples of an image "
                    "folder"),
                   ("--retrain-judge", args.retrain_judge and not images, "the judge scores samples of an image "
                    "folder"),
                   ("--n", args.n is not None and not images and not toy, f"it sets how many points a toy set draws, "
                    f"and {args.data!r} is a file whose points are all evaluated"),
                   ("--likelihood", args.likelihood is not None and images, "the image figure scores samples; the "
                    "likelihood is of held-out points"),
                   ("--probes", args.probes is not None and (images or args.likelihood == "bound"), "it sets "
                    "Hutchinson's trace estimate of --likelihood ode"),
                   ("--exact", args.exact and args.likelihood == "ode", "--likelihood ode integrates the ODE; "
                    "--exact runs every t of the bound"),
                   ("--n-t", args.n_t is not None and args.likelihood == "ode", "--likelihood ode integrates the "
                    "ODE; --n-t draws t for the bound")])
    n_t_given, args.n_t = args.n_t is not None, DEFAULT_N_T if args.n_t is None else args.n_t
    if images:
        args.judge_dir = DEFAULT_JUDGE_DIR if args.judge_dir is None else args.judge_dir
        return eval_images(args)
    image_flags = [flag for flag, on in (("--label", args.label is not None), ("--guidance", args.guidance is not None),
                                         (f"--sampler {args.sampler}", args.sampler is not None),
                                         ("--steps", args.ddim_steps is not None and args.likelihood == "bound"),
                                         ("--grid", args.grid is not None), ("--rho", args.rho is not None),
                                         ("--s-churn", args.s_churn is not None),
                                         ("--clip-x0", args.clip_x0 is not None)) if on]
    if image_flags:
        raise UsageError(f"{', '.join(image_flags)}: options of eval on an image folder (samples scored by the image "
                         "figure); the bound of points runs the whole chain on the held-out points")
    args.n = EVAL_POINTS if args.n is None else args.n
    model, schedule, meta, mean, std = load_trained(args.checkpoint)
    d = mean.size
    variance = variance_of(meta, args)
    if args.likelihood is None:
        args.likelihood = "ode" if meta["objective"] == "flow" else "bound"
    check_likelihood(meta, args, schedule, n_t_given)
    x = None if args.data in data.TOY_SETS else load_data(args.data, args.n, args.seed)
    if x is not None and x.shape[1] != d:
        raise UsageError(f"{args.data!r} has {x.shape[1]} dimensions; the model was trained on {d}")
    n = args.n if x is None else x.shape[0]
    reps = (schedule.T if args.exact else args.n_t) if args.likelihood == "bound" else likelihood_rows(d, args)
    per_chunk = max(1, args.chunk // reps)  # points per chunk: their rows (points × draws of t) fill one chunk
    rng, log_det = np.random.default_rng(args.seed), float(np.log(std).sum())
    values, method, start = streaming.RunningMean(), "", time.perf_counter()
    gains = streaming.RunningMean() if args.likelihood == "bound" else None  # K − L_null: the bound's
    bar = Progress(n, label="evaluated", unit="points")
    done = 0
    for block in held_out_blocks(args, x):
        for first in range(0, block.shape[0], per_chunk):
            with np.errstate(all="ignore"):  # overflow is checked on the result, just below
                z = (block[first:first + per_chunk] - mean) / std
            if not np.isfinite(z).all():
                raise UsageError(f"{args.data!r}: points far outside the training data's range overflow when "
                                 "standardised")
            bound = (_bound_chunk(model, schedule, meta, args, variance, z, rng, log_det) if args.likelihood == "bound"
                     else _ode_chunk(model, schedule, meta, args, variance, z, rng, log_det))
            if not np.isfinite(bound.values).all():
                raise FloatingPointError(f"the bound is not finite (NaN or inf) for some of points "
                                         f"{done}..{done + len(z) - 1}; they reach {np.abs(z).max():.3g} standard "
                                         "deviations from the training mean")
            values.add(bound.values)
            if gains is not None:
                gains.add(bound.values - bound.null)
            method, done = bound.method, done + len(z)
            bar.update(done)
    bar.close()
    report(method, values, gains, d, log_det, time.perf_counter() - start)


def eval_images(args) -> None:
    """The image figure of a model of images: --n samples (a class-conditional model's classes balanced unless
    --label says otherwise, guided by --guidance) scored by ``ImageJudge`` beside its baselines at the same n."""
    model, schedule, meta, mean, std = load_trained(args.checkpoint)
    shape = cli_images.image_shape(meta, args.checkpoint)
    if shape is None:
        raise UsageError(f"{args.data!r} is a folder of images, but {args.checkpoint!r} was trained on points of "
                         f"dimension {mean.size}; evaluate it on a .npy/.csv file or a toy set")
    k = model.config.get("num_classes")
    labels, n, what = cli_labels.sampling_labels(args, k, args.checkpoint, default="balanced",
                                                 n_default=EVAL_IMAGES)
    if k is not None:
        check_guided(meta, args, labels)
    variance = variance_of(meta, args)
    _image_defaults(args, meta, shape)
    check_sample_flags(meta, args, schedule)
    cache = os.path.join(args.judge_dir, "classifier.npz")
    check_distinct(cache, [("the checkpoint", args.checkpoint)])
    judge, commit = cli_images.load_judge(args.judge_dir, args.data, shape, n, labels, args.retrain_judge)
    c = judge.classifier
    print(f"judge: classifier {c.source} ({os.path.join(args.judge_dir, 'classifier.npz')}), test accuracy "
          f"{100 * c.meta['test_accuracy']:.1f} % on {c.meta['n_test']} images of {args.data}")
    start = time.perf_counter()
    bar = Progress(n, label="sampled", unit="images")
    parts, done = [], 0
    for x in draw(model, schedule, meta, args, variance, None, None, labels, n, mean, std):
        parts.append(x)
        done += len(x)
        bar.update(done)
    bar.close()
    sampler = args.sampler + (f" ({args.ddim_steps or schedule.T} steps)" if args.sampler != "ancestral" else "")
    clip = "" if args.clip_x0 is None else f", x0-hat clipped to ±{args.clip_x0:g}"
    print(f"{n} samples of {args.checkpoint} in {time.perf_counter() - start:.1f} s: {what}; {sampler} sampler{clip}")
    judge.report(np.concatenate(parts), labels, n=n, seed=args.seed, name="npdiff samples")
    commit()  # a newly trained classifier becomes the cache only now, after a successful run


def check_likelihood(meta: dict, args, schedule, n_t_given: bool = False) -> None:
    """--likelihood: the bound needs a chain (not a flow model), the ODE a denoiser (not a sohl_dickstein chain);
    each refuses the other's flags (a flow model's default is the ODE)."""
    refuse_unused([("--probes", args.probes is not None and args.likelihood == "bound", "it sets Hutchinson's "
                    "trace estimate of --likelihood ode"),
                   ("--steps", args.ddim_steps is not None and args.likelihood == "bound", "it sets the levels of "
                    "--likelihood ode; the bound runs the whole chain"),
                   ("--exact", args.exact and args.likelihood == "ode", "the ODE likelihood integrates the ODE; "
                    "--exact runs every t of the bound"),
                   ("--n-t", n_t_given and args.likelihood == "ode", "the ODE likelihood integrates the ODE; --n-t "
                    "draws t for the bound")])
    if args.likelihood == "bound" and meta["objective"] == "flow":
        raise UsageError("--likelihood bound: a flow model has no reverse chain, so no variational bound; use "
                         "--likelihood ode")
    if args.likelihood == "ode":
        if meta["objective"] == "sohl_dickstein":
            raise UsageError("--likelihood ode needs a denoiser (an epsilon, hybrid or flow model); a sohl_dickstein "
                             "chain's likelihood is its bound K")
        if args.variance is not None:
            raise UsageError("--variance sets the bound's reverse steps; the ODE has none: drop it")
        levels = schedule.T - 1 if meta["objective"] == "flow" else schedule.T
        if args.ddim_steps is not None and args.ddim_steps > levels:
            raise UsageError(f"--steps {args.ddim_steps} is more than the model's {levels} levels")


def likelihood_rows(d: int, args) -> int:
    """Network rows per point of one ODE-likelihood evaluation: D for the exact trace, P for Hutchinson's."""
    exact = args.probes is None and d <= ode_likelihood.EXACT_MAX_DIM
    return d if exact else (args.probes or 1)


def _ode_chunk(model, schedule, meta, args, variance, z, rng, log_det: float):
    """The ODE log-likelihood of points z (C, D) in standardised coordinates, shifted to data coordinates."""
    trace = "auto" if args.probes is None else "hutchinson"
    if meta["objective"] == "flow":
        velocity = FlowVelocity(model, FlowTime(schedule.T))
        levels = schedule.T
        ts = (np.arange(1, levels) if args.ddim_steps is None
              else np.unique(np.rint(np.linspace(1, levels - 1, args.ddim_steps + 1)))) / levels
        result = ode_likelihood.flow_log_likelihood(velocity, z, ts, trace=trace, probes=args.probes or 1, rng=rng)
    else:
        denoiser = ode.ChainDenoiser(_chain(model, schedule, meta, variance or "fixed_small"))
        sigmas = ode_likelihood.model_sigmas(denoiser, args.ddim_steps)
        result = ode_likelihood.ode_log_likelihood(denoiser, z, sigmas, trace=trace, probes=args.probes or 1,
                                                   rng=rng)
    result.values = result.values - log_det
    return result


def report(method: str, values, gains, d: int, log_det: float, seconds: float) -> None:
    """Print the bound (or the ODE log-likelihood, ``gains`` None) in model and data coordinates."""
    if gains is None:
        data_l, se = values.mean, values.se
        k = data_l + log_det
        print(f"{method}: log p = {k:.4f} ± {se:.4f} nats/point ({k / d:.4f} nats/dim, {-k / d / LN2:.4f} bits/dim "
              f"NLL); N = {values.n}, {seconds:.1f} s")
        print(f"data coordinates: log-likelihood {data_l:.4f} ± {se:.4f} nats/point, {data_l / d:.4f} nats/dim, "
              f"{data_l / LN2:.4f} bits/point, {-data_l / d / LN2:.4f} ± {se / d / LN2:.4f} bits/dim NLL")
        return
    k, se, data_k = values.mean, values.se, values.mean - log_det
    print(f"{method}: K = {k:.4f} ± {se:.4f} nats/point ({k / d:.4f} nats/dim, {k / LN2:.4f} ± {se / LN2:.4f} "
          f"bits/point, {k / d / LN2:.4f} bits/dim); K − L_null = {gains.mean:.4f} ± {gains.se:.4f} nats "
          f"({gains.mean / LN2:.4f} bits); N = {values.n}, {seconds:.1f} s")
    print(f"data coordinates: log-likelihood bound {data_k:.4f} ± {se:.4f} nats/point, {data_k / d:.4f} nats/dim, "
          f"{data_k / LN2:.4f} bits/point")
