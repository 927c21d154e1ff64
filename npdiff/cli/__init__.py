"""The command line: ``npdiff train | sample | eval`` (also ``python -m npdiff``). Full guide: docs/command-line.md.

    npdiff train DATA --out model.npz [--objective epsilon|hybrid|sohl_dickstein|flow] [--T 1000] [--steps 20000] …
                 [--labels y.npy | --label-column NAME] [--num-classes K] [--label-dropout 0.1] [--no-labels]
    npdiff sample model.npz --n 2000 --out samples.npy|samples.csv|grid.png [--force]
                  [--sampler ancestral|ddim|euler|heun|dpm++] [--steps N] [--grid ddim|karras] [--rho 7] [--s-churn S]
                  [--seed 0] [--label K|balanced|none | --labels y.npy] [--guidance W]
    npdiff eval model.npz HELD_OUT [--exact | --n-t 4 | --likelihood ode [--probes P] [--steps N]]
    npdiff eval model.npz IMAGE_FOLDER [--n 500] [--label K|balanced|none] [--guidance W] [--judge-dir DIR]
                [--retrain-judge]

DATA and HELD_OUT are a ``.npy`` or ``.csv`` file of points (N, D), or a toy set's name (``heart``,
``8gaussians``, ``moons``, ``swissroll``, ``checkerboard``, ``circles``; ``--n`` points are drawn). Training
standardises the data per dimension and stores the mean and std in the checkpoint; ``sample`` returns
points in the data's own coordinates and ``eval`` reports the bound in both (nats and bits, per point
and per dimension). The ε objective's bound uses σ_t² = β̃_t unless ``--variance fixed_large``.

Labels (a .npy, a column of the data, or an image folder's label file) train a class-conditional model;
``sample --label/--labels --guidance`` draws classes with classifier-free guidance (``npdiff.cli.labels``). DATA
may be an MNIST-format folder: images train as pixel vectors in [−1, 1], ``sample --out x.png`` writes a
grid, and ``eval`` of a folder prints the image-quality figure (``npdiff.cli.images``).

Every writer follows one rule (docs/command-line.md, "Outputs"): an existing --out is replaced only with
--force, never one of the inputs, held by a lock for the run (a second run on it is refused, naming the
first), and its size is checked against the free space and the file-size limit before any work; a flag the
command would not use is refused. Errors are one line on stderr, never a traceback. Exit status: 0 success; 2 a usage or input error
(a flag, a data file, a checkpoint, an output path or one held by another run, a resume mismatch, a request
too large for the disk or the file-size limit), nothing written; 1 a runtime failure (a non-finite loss, a failed write, out of memory);
130/143 training stopped by SIGINT/SIGTERM after writing a checkpoint.
"""

from __future__ import annotations

import shlex
import sys
import warnings

from npdiff.io import threads
from npdiff.cli import entry
from npdiff.cli.args import OBJECTIVES, UsageError, parser
from npdiff.cli.sample import cmd_eval, cmd_sample
from npdiff.cli.train import cmd_train
from npdiff.training.train import TrainingInterrupted

__all__ = ["main", "parser", "OBJECTIVES", "UsageError"]
EXIT_FAILURE, EXIT_USAGE = entry.EXIT_FAILURE, entry.EXIT_USAGE
_one_line = entry.one_line


def _resume_command(argv: list[str]) -> str:
    """The command that continues an interrupted ``train``: the same arguments with --resume (and no --force)."""
    args = [a for a in argv if a != "--force"]
    return shlex.join(["npdiff", *args, *([] if "--resume" in args else ["--resume"])])


def main(argv=None) -> int:
    """Run one command; returns the exit status (see the module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in ("train", "sample", "eval") else None
    name = f"npdiff {command}" if command else "npdiff"
    caught = entry.Warnings()
    with warnings.catch_warnings():
        warnings.showwarning = caught.show
        try:
            args = parser().parse_args(argv)
            threads.apply_policy()
            {"train": cmd_train, "sample": cmd_sample, "eval": cmd_eval}[args.command](args)
        except SystemExit as exc:  # --help, --version
            return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_USAGE
        except TrainingInterrupted as stop:
            how = f"continue with: {_resume_command(argv)}" if stop.saved else "nothing was saved"
            print(f"{name}: stopped: {_one_line(stop)}; {how}", file=sys.stderr)
            return 128 + stop.signum
        except (Exception, KeyboardInterrupt) as err:  # one line and a status (npdiff.cli.entry, shared with demos)
            return entry.failure(name, err)
    caught.summary(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
