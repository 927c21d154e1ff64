"""The forward process as a covariance: q(x_t) of Gaussian data is N(0, Σ_t), Σ_t = ᾱ_t Σ_0 + (1 − ᾱ_t) I.

    python demos/covariance.py [--T 1000] [--n 200000] [--seed 0] [--out out/covariance] [--quick]

Data x_0 ~ N(0, Σ_0) with a correlated, anisotropic Σ_0. ``Schedule.q_sample`` draws x_t = √ᾱ_t x_0 +
√(1 − ᾱ_t) ε for a few t; the script compares each sample covariance with the closed form and prints
the largest entrywise difference beside its standard error (Var of a sample covariance entry is
(Σ_ii Σ_jj + Σ_ij²)/n for Gaussian data). Writes covariance.png: the samples at each t with the
closed-form 2σ ellipse, which turns from the data's tilted ellipse into the unit circle of N(0, I).
The output folder is printed last; a covariance.png already there is replaced only with --force.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from npdiff.cli import entry
from npdiff.io import fileio, threads
from npdiff.processes.schedules import Schedule

SIGMA_0 = np.array([[2.0, 1.2], [1.2, 1.0]])  # tilted, elongated: correlation 0.85
OUTPUTS = ("covariance.png",)


def parse_args(argv=None) -> argparse.Namespace:
    p = entry.DemoParser(prog="covariance.py", description=__doc__.split("\n")[0])
    p.add_argument("--T", type=int, default=1000, help="diffusion steps of the linear schedule (default 1000)")
    p.add_argument("--n", type=int, help="samples per timestep (default 200000; --quick 20000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join("out", "covariance"), help="output folder")
    p.add_argument("--force", action="store_true", help="replace the covariance.png of an earlier run in --out")
    p.add_argument("--quick", action="store_true", help="20,000 samples per timestep (unless --n is given)")
    args = p.parse_args(argv)
    if args.n is None:
        args.n = 20_000 if args.quick else 200_000
    entry.check_demo_flags(args, counts=["T"], error=p.error)
    if args.n < 2:
        p.error(f"--n must be at least 2, got {args.n}")
    return args


def sigma_t(schedule: Schedule, t: int) -> np.ndarray:
    """Σ_t = ᾱ_t Σ_0 + (1 − ᾱ_t) I, the covariance of q(x_t) for x_0 ~ N(0, Σ_0).  -> (2, 2)"""
    ab = schedule.alpha_bar[t]
    return ab * SIGMA_0 + (1 - ab) * np.eye(2)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    with entry.demo_outputs(args.out, OUTPUTS, force=args.force, command="demos/covariance.py"):
        return run(args)


def run(args) -> list[dict]:
    print(threads.apply_policy())  # one BLAS thread unless you set OPENBLAS_NUM_THREADS (docs/command-line.md)
    rng = np.random.default_rng(args.seed)
    schedule = Schedule(args.T, "linear")
    print(schedule.summary(float(np.trace(SIGMA_0) / 2)))  # mean per-dimension variance
    x0 = rng.multivariate_normal(np.zeros(2), SIGMA_0, size=args.n)  # (n, 2)
    rows, clouds = [], {}
    for t in sorted({0, args.T // 20, args.T // 5, args.T // 2, args.T}):
        x_t = schedule.q_sample(x0, np.full(args.n, t), rng.standard_normal(x0.shape))  # (n, 2)
        empirical, exact = np.cov(x_t, rowvar=False), sigma_t(schedule, t)
        se = np.sqrt((np.outer(np.diag(exact), np.diag(exact)) + exact**2) / args.n)  # SE of each entry
        z = float(np.max(np.abs(empirical - exact) / se))
        rows.append({"t": t, "alpha_bar": float(schedule.alpha_bar[t]), "max_abs_diff":
                     float(np.max(np.abs(empirical - exact))), "max_z": z})
        print(f"t={t:5d}  alpha_bar={schedule.alpha_bar[t]:.4f}  Sigma_t={np.round(exact, 4).tolist()}  "
              f"sample-cov diff max {rows[-1]['max_abs_diff']:.4f} = {z:.1f} standard errors")
        clouds[t] = x_t[:2000]
    with fileio.atomic_path(os.path.join(args.out, "covariance.png")) as path:  # written whole or not at all
        draw(path, schedule, clouds)
    print(os.path.abspath(args.out))
    return rows


def draw(path: str, schedule: Schedule, clouds: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    angle = np.linspace(0, 2 * np.pi, 200)
    circle = np.stack([np.cos(angle), np.sin(angle)])  # (2, 200)
    fig, axes = plt.subplots(1, len(clouds), figsize=(3.2 * len(clouds), 3.4))
    for ax, (t, pts) in zip(axes, clouds.items()):
        ellipse = 2 * np.linalg.cholesky(sigma_t(schedule, t)) @ circle  # 2σ contour of N(0, Σ_t)
        ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.3, linewidths=0)
        ax.plot(ellipse[0], ellipse[1], color="C3", lw=1.5)
        ax.set_title(f"t = {t}, ᾱ_t = {schedule.alpha_bar[t]:.3f}", fontsize=10)
        ax.set_xlim(-4.5, 4.5)
        ax.set_ylim(-4.5, 4.5)
        ax.set_aspect("equal")
    fig.suptitle("q(x_t) = N(0, ᾱ_t Σ_0 + (1 − ᾱ_t) I): samples and the closed-form 2σ ellipse")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(entry.run_demo(main, sys.argv[1:]))  # every failure: one line, status 1 or 2 (npdiff.cli.entry)
