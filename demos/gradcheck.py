"""Check every hand-written gradient of a small denoiser, alone or through an objective's loss, against
central finite differences.

    python demos/gradcheck.py [--dim 2] [--hidden 16] [--n-blocks 2] [--activation gelu] [--layernorm]
                              [--out-dim-mult 1] [--seed 0] [--out out/gradcheck]
    python demos/gradcheck.py --objective epsilon|hybrid|sohl_dickstein|FILE.py:CLASS|MODULE:CLASS
                              [--prediction eps|x0|v] [--min-snr-gamma 5] [--num-classes 3] [--T 50] …

Without --objective: builds a float64 ``Denoiser`` and checks it through L = Σ y·dy with a random dy (so
dy is the upstream gradient ``backward`` receives); the rows are every parameter and the input x.

With --objective: the same denoiser, its output width (D or 2·D) the objective's, checked through the
objective's own loss at fixed x0, t and noise (the objectives' ``t=`` and ``noise=`` arguments; t covers
the objective's first and last step). The analytic gradient is what ``loss_and_backward`` adds into the
model, the numeric one central differences of ``loss``; one row per parameter (an objective's backward
stops at the parameters). The parameters are first moved off their initialisation: a zero output layer
(the Sohl-Dickstein model's) would zero every other gradient, and γ = 1, β = 0 would hide mistakes. A
named objective is built as ``Diffusion(objective=…, prediction=…, min_snr_gamma=…, num_classes=…)``
builds it; FILE.py:CLASS or MODULE:CLASS loads your own class, built as CLASS(Schedule(T)) and given the
output width its ``check_model`` accepts. An objective whose loss stops a gradient takes the stopped value
as ``loss(…, frozen_eps=…)`` (``HybridObjective``: ε_θ inside L_vlb), set here to its current value.

Each row: shape, relative error ‖a − n‖/(‖a‖ + ‖n‖), and the norms of the analytic and numeric gradients.
The report is also written to DIR/gradcheck.txt (an earlier one is replaced only with --force). Exit code 1 if
any relative error reaches the threshold (1e-6), or if ``loss_and_backward`` and ``loss`` disagree on the loss
itself; 2 for a flag, an objective or an --out that cannot work, in one line.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import os
import sys
import time

import numpy as np

from npdiff.cli import entry
from npdiff.diffusion import OBJECTIVES, Diffusion
from npdiff.io import fileio, threads
from npdiff.nn import gradcheck
from npdiff.nn.denoiser import Denoiser
from npdiff.nn.layers import ACTIVATIONS
from npdiff.processes.predictions import PREDICTIONS
from npdiff.processes.schedules import Schedule

THRESHOLD = 1e-6


def objective_spec(text: str) -> str:
    """An argparse type: a library objective's name, or FILE.py:CLASS / MODULE:CLASS."""
    if text in OBJECTIVES or (":" in text and all(text.split(":"))):
        return text
    raise argparse.ArgumentTypeError(f"{text!r} is neither one of {', '.join(OBJECTIVES)} nor FILE.py:CLASS "
                                     "or MODULE:CLASS")


def parse_args(argv=None):
    p = entry.DemoParser(prog="gradcheck.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--dim", type=int, default=2, help="data dimensions D (default 2)")
    p.add_argument("--hidden", type=int, default=16, help="hidden width H (default 16)")
    p.add_argument("--n-blocks", "--blocks", type=int, default=2, help="residual blocks (default 2)")
    p.add_argument("--emb-dim", type=int, default=8, help="sinusoidal embedding size, even >= 4 (default 8)")
    p.add_argument("--activation", default="gelu", choices=sorted(ACTIVATIONS))
    p.add_argument("--layernorm", action="store_true", help="LayerNorm in every block and before the output")
    p.add_argument("--out-dim-mult", type=int, choices=(1, 2), default=None,
                   help="1: D outputs (ε-prediction); 2: 2·D outputs (mean and variance). Default 1, or what "
                        "the objective needs")
    p.add_argument("--objective", type=objective_spec, metavar="|".join([*OBJECTIVES, "FILE.py:CLASS"]),
                   help="check through this objective's loss instead of L = Σ y·dy")
    p.add_argument("--prediction", choices=PREDICTIONS, default="eps", help="the epsilon objective's target")
    p.add_argument("--min-snr-gamma", type=float, default=None, help="the epsilon objective's min-SNR-γ weighting")
    p.add_argument("--num-classes", type=int, default=None, help="a class-conditional denoiser with K labels")
    p.add_argument("--T", type=int, default=50, help="diffusion steps of the objective's schedule (default 50)")
    p.add_argument("--batch-size", "--batch", type=int, default=4, help="batch size N (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny sizes (hidden 8, 1 block) for tests")
    p.add_argument("--out", default=os.path.join("out", "gradcheck"), help="output folder (default out/gradcheck)")
    p.add_argument("--force", action="store_true", help="replace the gradcheck.txt of an earlier run in --out")
    args = p.parse_args(argv)
    entry.check_demo_flags(args, counts=["dim", "hidden", "T", "batch_size", "num_classes"], positive=["min_snr_gamma"],
                           error=p.error)
    if args.n_blocks < 0:
        p.error(f"--n-blocks must be >= 0, got {args.n_blocks}")
    if args.emb_dim < 4 or args.emb_dim % 2:
        p.error(f"--emb-dim must be even and >= 4, got {args.emb_dim}")
    if args.objective is None and (args.prediction != "eps" or args.min_snr_gamma is not None
                                   or args.num_classes is not None):
        p.error("--prediction, --min-snr-gamma and --num-classes need --objective")
    if args.objective in OBJECTIVES and args.out_dim_mult is not None:
        p.error(f"the {args.objective} objective fixes the output width; do not pass --out-dim-mult")
    if args.objective is not None and args.batch_size < 2:
        p.error("--batch-size must be >= 2 with --objective (t covers the first and the last step)")
    return args


def load_class(spec: str):
    """The class named by FILE.py:CLASS (a path from the working directory) or MODULE:CLASS."""
    where, name = spec.rsplit(":", 1)
    if where.endswith(".py"):
        module_spec = importlib.util.spec_from_file_location(os.path.basename(where)[:-3], where)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    return getattr(module, name)


def build_objective(args, architecture: dict):
    """(model, objective) for --objective: a library objective as Diffusion builds it, or the user's class."""
    if args.objective in OBJECTIVES:
        diffusion = Diffusion(args.dim, args.objective, T=args.T, prediction=args.prediction,
                              min_snr_gamma=args.min_snr_gamma, num_classes=args.num_classes, **architecture)
        return diffusion.model, diffusion.objective
    objective = load_class(args.objective)(Schedule(args.T))
    for mult in (1, 2) if args.out_dim_mult is None else (args.out_dim_mult,):
        model = Denoiser(args.dim, out_dim=mult * args.dim, num_classes=args.num_classes, **architecture)
        try:
            if hasattr(objective, "check_model"):
                objective.check_model(model)
            return model, objective
        except ValueError as error:
            refusal = error
    raise refusal


def check_objective(model, objective, args, rng):
    """(report, loss from loss_and_backward, loss from loss) at fixed x0, t, noise (and labels)."""
    n, d = args.batch_size, args.dim
    model.flat_params[...] += 0.1 * rng.standard_normal(model.flat_params.shape)  # off the initialisation
    x0, noise = rng.standard_normal((n, d)), rng.standard_normal((n, d))
    first = getattr(objective, "first_t", 1)
    t = rng.integers(first, args.T + 1, size=n)
    t[0], t[-1] = first, args.T  # both ends of the chain: the decoder step and the prior's neighbour
    if hasattr(objective, "time"):  # flow matching's times are its levels k/K (``flow.FlowTime``), K = --T
        t = t / objective.time.levels
    draws = {"t": t, "noise": noise}
    takes = inspect.signature(objective.loss).parameters
    if args.num_classes is not None and "y" in takes:
        y = rng.integers(0, args.num_classes, size=n)
        y[-1] = args.num_classes  # "no label": the unconditional model of classifier-free guidance
        draws["y"] = y
    frozen = {}
    if "frozen_eps" in takes:  # the stopped value, held at the unperturbed parameters
        frozen["frozen_eps"] = model.forward(objective.schedule.q_sample(x0, t, noise), t)[:, :d].copy()
    model.zero_grad()
    loss_backward = float(objective.loss_and_backward(model, x0, **draws))
    analytic = {name: g.copy() for name, g in model.gradients().items()}
    loss_forward = objective.loss(model, x0, **draws, **frozen)
    report = gradcheck.check(lambda: objective.loss(model, x0, **draws, **frozen), model.parameters(), analytic)
    return report, loss_backward, loss_forward


def main(argv=None) -> int:
    args = parse_args(argv)
    with entry.demo_outputs(args.out, ["gradcheck.txt"], force=args.force, command="demos/gradcheck.py"):
        return run(args, sys.argv[1:] if argv is None else argv)


def run(args, argv) -> int:
    print(threads.apply_policy())  # one BLAS thread unless you set OPENBLAS_NUM_THREADS (docs/command-line.md)
    if args.quick:
        args.hidden, args.n_blocks, args.emb_dim, args.batch_size = 8, 1, 4, 2
    architecture = dict(hidden=args.hidden, n_blocks=args.n_blocks, emb_dim=args.emb_dim,
                        activation=args.activation, layernorm=args.layernorm, final_layernorm=args.layernorm,
                        dtype="float64", seed=args.seed)
    rng = np.random.default_rng(args.seed)
    net = (f"H={args.hidden}, blocks={args.n_blocks}, {args.activation}, "
           f"layernorm={'on' if args.layernorm else 'off'}")
    losses_agree = True
    start = time.perf_counter()
    if args.objective is None:
        mult = args.out_dim_mult or 1
        model = Denoiser(args.dim, out_dim=mult * args.dim, **architecture)
        x = rng.standard_normal((args.batch_size, args.dim))
        t = rng.integers(1, 1001, size=args.batch_size)
        n_params = model.flat_params.size
        print(f"checking {n_params} parameters and the input x of a float64 denoiser (D={args.dim}, "
              f"out={mult}·D, {net}) with {2 * (n_params + x.size)} forward passes...", flush=True)
        report = gradcheck.check_module(model, x, t, rng=np.random.default_rng(args.seed + 1))
        lines = []
    else:
        try:
            model, objective = build_objective(args, architecture)
        except (ValueError, TypeError, ImportError, AttributeError, OSError) as error:
            print(f"gradcheck.py: error: --objective {args.objective}: {error}", file=sys.stderr)
            return 2
        n_params = model.flat_params.size
        options = (f"prediction {args.prediction}, min-SNR-γ {args.min_snr_gamma}, classes {args.num_classes}"
                   if args.objective == "epsilon" else type(objective).__name__)
        print(f"checking {n_params} parameters of a float64 denoiser (D={args.dim}, "
              f"out={model.config['out_dim'] // args.dim}·D, {net}) through the loss of the {args.objective} "
              f"objective ({options}, T={args.T}) with {2 * n_params} loss evaluations...", flush=True)
        report, loss_backward, loss_forward = check_objective(model, objective, args, rng)
        losses_agree = gradcheck.rel_error(loss_backward, loss_forward) < 1e-12
        lines = [f"loss {loss_backward:.10g} (loss_and_backward), {loss_forward:.10g} (loss): "
                 f"{'equal' if losses_agree else 'DIFFERENT: FAIL'}"]
    elapsed = time.perf_counter() - start

    worst = gradcheck.worst(report)
    ok = worst < THRESHOLD and losses_agree
    verdict = f"max relative error {worst:.2e} ({'<' if worst < THRESHOLD else '>='} 1e-6: {'OK' if ok else 'FAIL'})"
    text = "\n".join([gradcheck.format_report(report), *lines, verdict])
    print(text)
    print(f"({elapsed:.1f} s)")

    command = " ".join(["python", "demos/gradcheck.py", *argv])
    fileio.write_text(os.path.join(args.out, "gradcheck.txt"), f"{command}\n{text}\n")  # written atomically
    print(f"outputs in {os.path.abspath(args.out)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(entry.run_demo(main, sys.argv[1:]))  # every failure: one line, status 1 or 2 (npdiff.cli.entry)
