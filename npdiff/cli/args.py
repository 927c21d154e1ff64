"""The flags of ``npdiff train | sample | eval``: names, defaults, and the checks that refuse nonsense.

Every number is checked where it is parsed (finite, in range), so a bad value is a one-line usage error
before anything runs. Flag names follow the library's names (docs/command-line.md lists them); the
older spellings stay as aliases: ``--width`` = ``--hidden``, ``--blocks`` = ``--n-blocks``, ``--emb`` =
``--emb-dim``, ``--batch`` = ``--batch-size``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re

from npdiff.io import fileio
from npdiff.diffusion import GUIDANCE_RANGE, OBJECTIVES
from npdiff.processes.conditioning import METHODS as CONDITIONS
from npdiff.processes.ddpm import PREDICTIONS, VARIANCES
from npdiff.processes.sampling import GRIDS, ODE_SAMPLERS, SAMPLERS
from npdiff.processes.schedules import SCHEDULES

DEFAULT_CHUNK = 4096  # rows of network input at once in sample/eval: a few MB of activations for the default model
# defaults of flags that default to None, so that a command can tell a flag given from one left out and refuse a
# flag it would not use
DEFAULT_TOY_POINTS, DEFAULT_COORD_SCALE, DEFAULT_N_T = 8000, 25.0, 4
DEFAULT_JUDGE_DIR = os.path.join("out", "image_quality")
# --sampler's names: the library's, and the spelling dpm++ for DPM-Solver++(2M)
SAMPLER_ALIASES = {"dpm++": "dpmpp_2m"}
CLI_SAMPLERS = SAMPLERS + tuple(SAMPLER_ALIASES)
LIKELIHOODS = ("bound", "ode")
DEFAULT_GRID, DEFAULT_RHO = "ddim", 7.0


def sampler_name(text: str) -> str:
    """An argparse type: a sampler of ``CLI_SAMPLERS`` as the library names it (dpm++ -> dpmpp_2m)."""
    if text not in CLI_SAMPLERS:
        raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {', '.join(CLI_SAMPLERS)})")
    return SAMPLER_ALIASES.get(text, text)


class UsageError(ValueError):
    """A flag, input file or output path that cannot work; exit status 2, nothing written."""


def check_distinct(out: str, inputs) -> None:
    """Refuse an output that is the same file as one of the inputs (``inputs``: (flag, path or None) pairs)."""
    for flag, path in inputs:
        if path is not None and os.path.exists(path) and fileio.same_file(out, path):
            raise UsageError(f"--out {out!r} is the same file as {flag} {path!r}: writing it would destroy the "
                             "input; choose another --out")


@contextlib.contextmanager
def holding(path: str, command: str):
    """Hold the lock of output ``path`` for this run (``fileio.output_lock``); a run holding it already is a
    UsageError naming that run."""
    lock = fileio.output_lock(path, command)
    try:
        lock.__enter__()
    except fileio.OutputBusy as err:
        raise UsageError(str(err)) from None
    except OSError as err:
        raise UsageError(f"--out {path!r}: cannot create its lock file: {err.strerror or err}") from None
    try:
        yield
    finally:
        lock.__exit__(None, None, None)


def refuse_unused(flags) -> None:
    """A flag that the command would not use is an error, not silently ignored: ``flags`` are (flag, given, why)."""
    unused = [(flag, why) for flag, given, why in flags if given]
    if unused:
        flag, why = unused[0]
        raise UsageError(f"{flag} is not used here: {why}; drop it")


class _Parser(argparse.ArgumentParser):
    """argparse, but an error is one line (no usage block) raised as UsageError."""

    def error(self, message):
        raise UsageError(f"{message} (see {self.prog} --help)")


def integer(low: int, high: int | None = None):
    """An argparse type: an integer in [low, high]."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"in {low}..{high}"
            raise argparse.ArgumentTypeError(f"must be an integer {bound}, got {value}")
        return value
    parse.__name__ = "integer"
    return parse


def number(low: float, high: float = math.inf, *, low_open: bool = False, high_open: bool = False):
    """An argparse type: a finite float in the interval from low to high (ends open or closed)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        below = value <= low if low_open else value < low
        above = value >= high if high_open else value > high
        if not math.isfinite(value) or below or above:
            interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open or high == math.inf else ']'}"
            raise argparse.ArgumentTypeError(f"must be a finite number in {interval}, got {text!r}")
        return value
    parse.__name__ = "number"
    return parse


SIZE_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def size(text: str) -> int:
    """An argparse type: a byte count such as 500M, 2G or 1000000."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", text.lower())
    if not match:
        raise argparse.ArgumentTypeError(f"expected a size such as 500M or 2G, got {text!r}")
    return int(float(match.group(1)) * SIZE_UNITS[match.group(2)])


def label_choice(text: str):
    """An argparse type: a class number (an integer >= 0), "balanced" or "none"."""
    if text in ("balanced", "none"):
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a class number (a whole number >= 0), 'balanced' or 'none', "
                                         f"got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"classes are numbered 0, 1, …; got {value}")
    return value


def _model_flags(p) -> None:
    p.add_argument("--hidden", "--width", type=integer(1), default=128, help="hidden width H (default 128)")
    p.add_argument("--n-blocks", "--blocks", type=integer(0), default=3, help="residual blocks (default 3)")
    p.add_argument("--emb-dim", "--emb", type=integer(2), default=64, help="sinusoidal embedding size (default 64)")
    p.add_argument("--coord-scale", type=number(0, low_open=True), default=None,
                   help=f"sinusoidal scale of the coordinates (default {DEFAULT_COORD_SCALE:g}; refused for images, "
                        "whose pixels go in as they are)")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="npdiff", description="Train, sample and evaluate npdiff diffusion models "
                "(docs/command-line.md).")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train a model on points from a file or a toy set")
    t.add_argument("data", help=".npy/.csv file of points (N, D), a toy set name, or an MNIST-format folder of "
                                "images (its train split; trained on pixels in [-1, 1] without the coordinate "
                                "embedding or standardisation, conditioned on its labels unless --no-labels)")
    t.add_argument("--out", required=True, help="checkpoint path (.npz)")
    t.add_argument("--objective", choices=OBJECTIVES, default="epsilon",
                   help="epsilon: L_simple; hybrid: L_hybrid with a learned-range variance; "
                        "sohl_dickstein: the bound K; flow: flow matching on x_t = (1 - t) x0 + t noise, t = k/T, "
                        "sampled by the ODE samplers (default epsilon)")
    t.add_argument("--prediction", choices=PREDICTIONS, default="eps",
                   help="what the network predicts with --objective epsilon: eps (DDPM), x0 or v (default eps; "
                        "x0 learns images fastest, docs/images.md)")
    t.add_argument("--schedule", choices=[s for s in SCHEDULES if s != "custom"], default="linear")
    t.add_argument("--T", type=integer(1, 100_000), default=1000, help="diffusion steps (default 1000)")
    t.add_argument("--steps", type=integer(1), default=20000, help="total training steps (default 20000)")
    t.add_argument("--batch-size", "--batch", type=integer(1), default=256, help="points per step (default 256)")
    t.add_argument("--lr", type=number(0, low_open=True), default=1e-3, help="peak learning rate, cosine-decayed")
    _model_flags(t)
    t.add_argument("--ema", type=number(0, 1, high_open=True), default=0.0,
                   help="EMA decay of the saved weights, in [0, 1) (0: none)")
    t.add_argument("--checkpoint-every", type=integer(0), default=1000,
                   help="steps between checkpoints (0: only at the end; default 1000)")
    t.add_argument("--labels", metavar="FILE", default=None,
                   help="a .npy of N class numbers 0..K-1, one per point: train a class-conditional model")
    t.add_argument("--label-column", metavar="NAME|INDEX", default=None,
                   help="the data column (a CSV header name, or an index) holding each point's class; it is "
                        "removed from the coordinates")
    t.add_argument("--num-classes", type=integer(1, 65_536), default=None, metavar="K",
                   help="K, the number of classes (default: the largest label + 1)")
    t.add_argument("--label-dropout", type=number(0, 1, high_open=True), default=None, metavar="P",
                   help="probability p in [0, 1) of training a point without its label, so that one network "
                        "also learns the unconditional model for guidance (default 0.1)")
    t.add_argument("--no-labels", action="store_true", help="train an image folder without its labels")
    t.add_argument("--resume", action="store_true", help="continue the checkpoint at --out (if it exists)")
    t.add_argument("--force", action="store_true", help="replace an existing checkpoint at --out")

    s = sub.add_parser("sample", help="draw samples from a checkpoint")
    s.add_argument("checkpoint")
    s.add_argument("--out", required=True, help="where to write the samples: a .npy or .csv file, or a .png grid "
                                                "for a model of images (.npy/.csv hold the vectors on [-1, 1]); "
                                                "never one of the inputs")
    s.add_argument("--force", action="store_true", help="replace an existing file at --out")
    s.add_argument("--max-output", type=size, default=None,
                   help="refuse to write more than this (e.g. 2G); the free disk space is always a limit")
    s.add_argument("--given", metavar="FILE", default=None,
                   help="known coordinates (.npy/.csv in data coordinates, NaN = free): one row for every sample, "
                        "or one row per sample (then --n rows)")
    s.add_argument("--observed", metavar="FILE", default=None,
                   help="a noisy observation y = x0 + N(0, S^2) (.npy/.csv in data coordinates), with --noise-std")
    s.add_argument("--noise-std", type=number(0, low_open=True), default=None, metavar="S",
                   help="the observation's noise S > 0, in data units (with --observed)")
    s.add_argument("--condition", choices=CONDITIONS, default=None,
                   help="the factor r_t along the chain with --given/--observed: paper (r_t = r, Sohl-Dickstein "
                        "Eq. 23; the default) or replace (a forward-diffused copy of the condition)")

    s.add_argument("--labels", metavar="FILE", default=None,
                   help="a .npy of class numbers, one per sample (--n defaults to its length)")

    e = sub.add_parser("eval", help="the variational bound on held-out points, nats and bits; for an image "
                                    "folder, the image-quality figure of samples")
    e.add_argument("checkpoint")
    e.add_argument("data", help=".npy/.csv file of held-out points, a toy set name, or an MNIST-format folder "
                                "(both splits): then --n samples are scored by FCD, accuracy on their classes and "
                                "entropy, beside baselines")
    e.add_argument("--likelihood", choices=LIKELIHOODS, default=None,
                   help="bound: the variational bound (the default for chains); ode: log p by the probability-flow "
                        "ODE, the exact trace for D <= 16 (the default, and the only one, for flow models)")
    e.add_argument("--probes", type=integer(1), default=None, metavar="P",
                   help="with --likelihood ode: Hutchinson's trace estimate with P Rademacher probes per point "
                        "(default: the exact trace for D <= 16, 1 probe above)")
    e.add_argument("--exact", action="store_true", help="every t for every point (N·T network calls)")
    e.add_argument("--n-t", type=integer(1), default=None,
                   help=f"Monte-Carlo draws of t per point (default {DEFAULT_N_T}; not with --exact)")
    e.add_argument("--judge-dir", default=None,
                   help=f"images: where the judge's classifier is cached (trained there on first use; default "
                        f"{DEFAULT_JUDGE_DIR})")
    e.add_argument("--retrain-judge", action="store_true",
                   help="images: replace a cached classifier trained on other data or settings (only once this "
                        "run has succeeded); without it such a cache is refused, never replaced")

    for sp, n_help in ((t, "points to draw from a toy set (default 8000)"),
                       (s, "samples to draw (default 2000, or one per line of --labels)"),
                       (e, "points to draw from a toy set (default 10000); images: samples to score (default 500)")):
        sp.add_argument("--n", type=integer(1), default=None, help=n_help)
        sp.add_argument("--seed", type=integer(0), default=0)
    for sp, images in ((s, ""), (e, "images: ")):
        sp.add_argument("--sampler", type=sampler_name, default=None, metavar="|".join(CLI_SAMPLERS),
                        help=f"{images}ancestral (the chain's own steps; the default), ddim, or a solver of the "
                             "probability-flow ODE: euler (= DDIM), heun, dpm++ (DPM-Solver++(2M), also dpmpp_2m); "
                             "a flow model's default is euler (docs/continuous-time.md)")
        sp.add_argument("--steps", "--ddim-steps", dest="ddim_steps", type=integer(1), default=None,
                        help=f"{images}steps of ddim and the ODE samplers (default T; heun evaluates the network "
                             "2·steps − 1 times)" + ("" if images else "; with --likelihood ode, its levels"))
        sp.add_argument("--grid", choices=GRIDS, default=None,
                        help=f"{images}the ODE samplers' noise levels: ddim (DDIM's timesteps, the default) or karras "
                             "(EDM's rho-grid put on the model's levels)")
        sp.add_argument("--rho", type=number(0, low_open=True), default=None,
                        help=f"{images}rho of --grid karras (default {DEFAULT_RHO:g}; larger spends more steps at "
                             "low noise)")
        sp.add_argument("--s-churn", type=number(0), default=None, metavar="S",
                        help=f"{images}EDM's S_churn for --sampler heun: noise added before each step (default 0)")
        sp.add_argument("--clip-x0", type=number(0, low_open=True), default=None,
                        help=f"{images}clip x0-hat to [-R, R] (standardised units, R > 0) while sampling an ε model "
                             "(a model of images: default 1, the pixel range)")
        sp.add_argument("--label", type=label_choice, default=None, metavar="K|balanced|none",
                        help=f"{images}the class of every sample, 'balanced' (sample i has class i mod K) or 'none' "
                             "(the unconditional model); default: " + ("balanced for a class-conditional model"
                                                                      if images else "none"))
        sp.add_argument("--guidance", type=number(*GUIDANCE_RANGE), default=None, metavar="W",
                        help=f"{images}classifier-free guidance w in [{GUIDANCE_RANGE[0]:g}, {GUIDANCE_RANGE[1]:g}]: "
                             "eps = (1 + w) eps(x, y) - w eps(x, none) (w = 0: the conditional model; diffusers' "
                             "guidance_scale s = 1 + w); needs a model trained with label dropout > 0")
    for sp in (s, e):
        sp.add_argument("--variance", choices=VARIANCES, default=None,
                        help="σ_t² of an ε model's reverse steps: β̃_t (fixed_small, the default for epsilon), "
                             "β_t (fixed_large) or the learned range (the default for hybrid)")
        sp.add_argument("--chunk", type=integer(1), default=DEFAULT_CHUNK,
                        help=f"network rows at once (default {DEFAULT_CHUNK}); memory is flat in --n")
    return p
