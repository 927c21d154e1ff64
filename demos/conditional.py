"""Conditioning a trained chain (Sohl-Dickstein et al. 2015, §2.5): inpaint a coordinate, denoise an observation.

    python demos/conditional.py [--out DIR] [--quick] [--steps N] [--n N] [--a A] [--observed X Y]
                                [--noise-std S] [--seed S]
    python demos/conditional.py --table [--out DIR]      (the exact Gaussian checks only, no training)

Trains an ε-model (``npdiff.Diffusion``) on the Swiss roll (``data.swissroll``, noise 0.5), whose density is
known exactly (``likelihood.toy_log_density``), then samples it through ``conditioning.Conditioned`` with
both methods ("paper": r_t = r, Eq. 23; "replace": the forward-diffused observation):
  * inpainting: x = a known, y free. The samples lie on the vertical line x = a; the figure puts them
    beside the curve's true crossings. Figures of merit: the mean distance of the samples' y to the
    nearest crossing (the support distance), and W1 to the exact conditional p(y | x = a) on a 1-D grid.
  * denoising: y_obs = x_0 + N(0, s²). Samples of p(x_0 | y_obs) beside the exact posterior
    p(x_0) N(y_obs; x_0, s²) on a grid. Figure of merit: KL(histogram of the samples ‖ grid posterior)
    over 8×8 cells of side s around y_obs, plus one cell for everything outside (posterior mass 1e-12).
Each is printed beside its floor (the same figure for draws of the exact distribution) and the threshold
that tests/test_demo_conditional.py holds the quick run to (an untrained model fails it). Writes
conditional.png, results.json (and table.md with --table) into DIR, and prints DIR last; a file already there is
replaced only with --force.
Uses only npdiff's public API.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

from npdiff import Diffusion, EpsilonChain, Schedule, backend, data
from npdiff.cli import entry
from npdiff.io import fileio, threads
from npdiff.processes import conditioning, likelihood
from npdiff.processes.oracles import GaussianEpsilon, GaussianOracle

ROLL_NOISE = 0.5
THRESHOLDS = {"support": 0.3, "kl": 1.2}  # quick run ≈ 0.16 and ≈ 0.6, full ≈ 0.12 and ≈ 0.2-0.35; untrained > 100, > 2
TABLE_T = (10, 100, 1000, 4000)
GAUSS_MEAN, GAUSS_COV = np.array([0.5, -0.3]), np.array([[1.0, 0.8], [0.8, 1.0]])
GAUSS_CASES = {"inpaint x1 = 1.2": dict(given=[1.2, np.nan]),
               "denoise s = 0.5": dict(observed=[1.2, -1.0], noise_std=0.5),
               "denoise s = 2": dict(observed=[1.2, -1.0], noise_std=2.0)}


def parse_args(argv=None) -> argparse.Namespace:
    p = entry.DemoParser(prog="conditional.py", description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.path.join("out", "conditional"), help="output folder")
    p.add_argument("--force", action="store_true", help="replace the outputs of an earlier run in --out")
    p.add_argument("--quick", action="store_true", help="800 training steps, 500 samples, coarser grids, for tests")
    p.add_argument("--steps", type=int, help="training steps (default 3000; --quick 800)")
    p.add_argument("--n", type=int, help="conditional samples per method (default 2000; --quick 500)")
    p.add_argument("--a", type=float, default=0.5, help="the known coordinate x = a (default 0.5)")
    p.add_argument("--observed", type=float, nargs=2, default=[1.9, 0.0], metavar=("X", "Y"),
                   help="the noisy observation y_obs (default 1.9 0: between two arms of the roll)")
    p.add_argument("--noise-std", type=float, default=0.4, help="its noise s (default 0.4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--table", action="store_true", help="print the exact Gaussian bias table and stop")
    args = p.parse_args(argv)
    args.steps = (800 if args.quick else 3000) if args.steps is None else args.steps
    args.n = (500 if args.quick else 2000) if args.n is None else args.n
    entry.check_demo_flags(args, counts=["steps"], positive=["noise_std"], error=p.error)
    if args.n < 10:
        p.error(f"--n must be >= 10, got {args.n}")
    if not all(math.isfinite(v) for v in (args.a, *args.observed)):
        p.error("--a and --observed must be finite numbers")
    return args


def make_diffusion(args) -> Diffusion:
    """The heart demo's small ε-model on a 200-step linear schedule scaled to reach ᾱ_T ≈ 4e-5."""
    return Diffusion(2, "epsilon", 200, "linear", {"scale_to_T": True}, hidden=64, n_blocks=1, emb_dim=64,
                     coord_scale=25.0, time_scale=1.0, layernorm=True, final_layernorm=True, seed=args.seed)


def inpaint_reference(a: float, points: int = 4001) -> dict:
    """The exact p(y | x = a) ∝ p(a, y) on a grid over y ∈ [−4, 4], its CDF and the curve's crossings (its peaks)."""
    ys = np.linspace(-4.0, 4.0, points)
    logp = likelihood.toy_log_density("swissroll", np.stack([np.full_like(ys, a), ys], 1), noise=ROLL_NOISE)
    p = np.exp(logp - logp.max())
    inner = p[1:-1]
    crossings = ys[1:-1][(inner > p[:-2]) & (inner > p[2:]) & (inner > 1e-3 * p.max())]
    return {"a": a, "ys": ys, "cdf": np.cumsum(p) / p.sum(), "density": p / (p.sum() * (ys[1] - ys[0])),
            "crossings": crossings}


def inpaint_merit(process, ref: dict, n: int, rng, method: str = "paper") -> dict:
    """Samples given x = a, their support distance and W1 to p(y | x = a), and the floors of exact draws."""
    ys, cdf, crossings = ref["ys"], ref["cdf"], ref["crossings"]
    cond = conditioning.Conditioned(process, given=[ref["a"], np.nan], method=method)
    samples = backend.to_numpy(cond.sample(n, rng)).astype(np.float64)
    exact = np.interp(np.random.default_rng(1).uniform(size=n), cdf, ys)  # inverse-CDF draws of p(y | x = a)

    def support(y):
        return float(np.abs(y[:, None] - crossings[None]).min(axis=1).mean())

    def w1(y):
        return float(np.abs(np.searchsorted(np.sort(y), ys, side="right") / y.size - cdf).sum() * (ys[1] - ys[0]))

    y = samples[:, 1]
    return {"samples": samples, "support": support(y), "support_floor": support(exact),
            "w1": w1(y), "w1_floor": w1(exact)}


def denoise_reference(y_obs, s: float, cells: int = 80) -> dict:
    """The exact posterior p(x_0) N(y_obs; x_0, s²) as cell probabilities of a cells² grid over y_obs ± 4s."""
    y_obs = np.asarray(y_obs, dtype=np.float64)
    h = 8 * s / cells
    g = (np.arange(cells) + 0.5) * h - 4 * s  # cell centres relative to y_obs
    gx, gy = np.meshgrid(y_obs[0] + g, y_obs[1] + g, indexing="ij")
    grid = np.stack([gx.ravel(), gy.ravel()], 1)
    logp = likelihood.toy_log_density("swissroll", grid, noise=ROLL_NOISE) - ((grid - y_obs) ** 2).sum(1) / (2 * s * s)
    post = np.exp(logp - logp.max())
    post /= post.sum()  # (cells²,)
    return {"y_obs": y_obs, "s": s, "h": h, "grid": grid, "post": post, "cells": cells,
            "contour": (gx, gy, post.reshape(cells, cells) / h**2)}


def denoise_merit(process, ref: dict, n: int, rng, method: str = "paper") -> dict:
    """Samples of p(x_0 | y_obs) and KL(their histogram ‖ the grid posterior) over 8×8 cells of side s."""
    y_obs, s, h, cells = ref["y_obs"], ref["s"], ref["h"], ref["cells"]
    cond = conditioning.Conditioned(process, observed=y_obs, noise_std=s, method=method)
    samples = backend.to_numpy(cond.sample(n, rng)).astype(np.float64)
    pick = np.random.default_rng(2).choice(ref["post"].size, n, p=ref["post"])
    exact = ref["grid"][pick] + np.random.default_rng(3).uniform(-h / 2, h / 2, (n, 2))
    fine = cells // 8  # fine cells per coarse cell side
    prob = np.append(ref["post"].reshape(8, fine, 8, fine).sum(axis=(1, 3)).ravel(), 1e-12)  # + the outside cell

    def kl(x):
        ij = np.floor((x - (y_obs - 4 * s)) / s).astype(int)
        inside = ((ij >= 0) & (ij < 8)).all(axis=1)
        hist = np.bincount(np.where(inside, ij[:, 0] * 8 + ij[:, 1], 64), minlength=65) / x.shape[0]
        m = hist > 0
        return float((hist[m] * np.log(hist[m] / prob[m])).sum())

    def left(x):  # the share of the points left of y_obs: with the default y_obs, the inner arm's mass
        return float((x[:, 0] < y_obs[0]).mean())

    return {"samples": samples, "kl": kl(samples), "kl_floor": kl(exact), "left": left(samples),
            "exact_left": left(exact), "mean": samples.mean(0).tolist(),
            "exact_mean": exact.mean(0).tolist(), "std": samples.std(0).tolist(), "exact_std": exact.std(0).tolist()}


def vp_schedule(T: int) -> Schedule:
    """The continuous VP-linear schedule β(τ) = 0.1 + 19.9 τ (Song et al. 2021) cut into T steps: ᾱ_T = e^−10.05
    for every T, so a larger T only shrinks β_t (at T = 1000 it is DDPM's linear schedule to 3 digits)."""
    tau = np.linspace(0.0, 1.0, T + 1)
    alpha_bar = np.exp(-(0.1 * tau + 0.5 * 19.9 * tau**2))
    return Schedule.from_betas(1.0 - alpha_bar[1:] / alpha_bar[:-1])


def exact_message(schedule: Schedule, data_var: float, y, s: float):
    """r_t = h_t(x_t) = E[N(y; x_0, s²) | x_t] for N(0, data_var·I) data, a ``Conditioned`` method: with it the
    product kernel is exact. E[x_0 | x_t] = c x_t, c = √ᾱ_t data_var/u, u = ᾱ_t data_var + 1 − ᾱ_t, and
    Var[x_0 | x_t] = data_var − c² u, so h_t(x) ∝ N(x; y/c, (s² + Var)/c²)."""
    def message(t_prev, like):
        ab = schedule.alpha_bar[np.asarray(backend.to_numpy(t_prev))].reshape(-1, 1)
        u = ab * data_var + 1.0 - ab
        c = np.sqrt(ab) * data_var / u
        return np.asarray(y) / c, (s * s + data_var - c * c * u) / (c * c), 0.0
    return message


def gaussian_table(Ts=TABLE_T) -> list[dict]:
    """Exact moments (``conditioning.exact_moments``: no sampling error) of the conditioned exact-ε chain of
    N(GAUSS_MEAN, GAUSS_COV) beside the closed-form posterior, for each T, case and method, and of the
    exact kernel of N(0, 2I) data denoised at s = 0.5, also with the exact message h_t as r_t."""
    rows = []
    for T in Ts:
        schedule = vp_schedule(T)
        chains = {"eps": (EpsilonChain(GaussianEpsilon(schedule, GAUSS_MEAN, GAUSS_COV), schedule, max_gain=None),
                          GAUSS_MEAN, GAUSS_COV, GAUSS_CASES),
                  "exact kernel": (GaussianOracle(schedule, 2.0, 2), np.zeros(2), 2.0 * np.eye(2),
                                   {"denoise s = 0.5": dict(observed=[1.2, -1.0], noise_std=0.5)})}
        for chain_name, (chain, mean, cov, cases) in chains.items():
            m0, c0 = conditioning.exact_moments(chain)
            rows.append({"T": T, "chain": chain_name, "case": "unconditioned", "method": "-",
                         "mean_err": float(np.abs(m0 - mean).max()), "cov_err": float(np.abs(c0 - cov).max())})
            for case, kw in cases.items():
                post_mean, post_cov = conditioning.gaussian_posterior(mean, cov, **kw)
                methods = {name: name for name in conditioning.METHODS}
                if chain_name == "exact kernel":
                    methods["message h_t"] = exact_message(schedule, 2.0, kw["observed"], kw["noise_std"])
                for method_name, method in methods.items():
                    cond = conditioning.Conditioned(chain, method=method, **kw)
                    start_mean, start_var = conditioning.product(np.zeros((1, 2)), np.ones((1, 2)),
                                                                 *cond.factor_at(schedule.T, np.ones((1, 2))))
                    m, c = conditioning.exact_moments(cond, start_mean[0], np.diag(start_var[0]))
                    rows.append({"T": T, "chain": chain_name, "case": case, "method": method_name,
                                 "mean_err": float(np.abs(m - post_mean).max()),
                                 "cov_err": float(np.abs(c - post_cov).max())})
    return rows


def table_md(rows) -> str:
    """The rows as a markdown table: one line per (chain, case, method), one column per T, each cell
    "max |mean error| / max |covariance error|"."""
    Ts = sorted({r["T"] for r in rows})
    cells = {}
    for r in rows:
        cells.setdefault((r["chain"], r["case"], r["method"]), {})[r["T"]] = f"{r['mean_err']:.4f} / {r['cov_err']:.4f}"
    lines = ["| chain | case | method | " + " | ".join(f"T = {T}" for T in Ts) + " |", "|---" * (3 + len(Ts)) + "|"]
    lines += [f"| {' | '.join(key)} | " + " | ".join(by_T.get(T, "") for T in Ts) + " |" for key, by_T in cells.items()]
    return "\n".join(lines) + "\n"


def draw(path, x, inpaint_ref: dict, inpaint: dict, denoise_ref: dict, denoise: dict) -> None:
    """Three panels: the samples given x = a on the data, their y beside p(y | x = a), the denoised samples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13.5, 4.4))
    a, y_obs, s = inpaint_ref["a"], denoise_ref["y_obs"], denoise_ref["s"]
    paper, replace = inpaint["paper"], inpaint["replace"]
    ax = axes[0]
    ax.scatter(x[:, 0], x[:, 1], s=1, color="0.8", label="data")
    jitter = np.random.default_rng(0).uniform(-0.04, 0.04, len(paper["samples"]))
    ax.scatter(paper["samples"][:, 0] + jitter, paper["samples"][:, 1], s=2, color="C0", alpha=0.4,
               label=f"samples given x = {a:g} (jittered ±0.04)")
    ax.scatter(np.full(inpaint_ref["crossings"].size, a), inpaint_ref["crossings"], marker="x", s=60, color="C3",
               label="true crossings of the curve")
    ax.set_title(f"inpainting (paper): support distance {paper['support']:.3f} (floor {paper['support_floor']:.3f})",
                 fontsize=9)
    ax.set_xlim(-3.0, 3.5)
    ax.set_ylim(-3.0, 4.5)  # room for the legend above the roll
    ax.legend(fontsize=7, loc="upper left")
    ax = axes[1]
    bins = np.linspace(-4, 4, 81)
    ax.hist(paper["samples"][:, 1], bins=bins, density=True, histtype="step", color="C0", label="paper (Eq. 23)")
    ax.hist(replace["samples"][:, 1], bins=bins, density=True, histtype="step", color="C2", label="replace")
    ax.plot(inpaint_ref["ys"], inpaint_ref["density"], color="k", lw=1, label=f"exact p(y | x = {a:g})")
    ax.set_title(f"W1 to the exact conditional: paper {paper['w1']:.3f}, replace {replace['w1']:.3f}", fontsize=9)
    ax.set_xlabel("y")
    ax.legend(fontsize=7)
    ax = axes[2]
    ax.scatter(x[:, 0], x[:, 1], s=1, color="0.8")
    gx, gy, dens = denoise_ref["contour"]
    ax.contour(gx, gy, dens, levels=6, colors="k", linewidths=0.7)
    ax.scatter(denoise["samples"][:, 0], denoise["samples"][:, 1], s=2, color="C0", alpha=0.4,
               label="samples of p(x0 | y)")
    ax.scatter([y_obs[0]], [y_obs[1]], marker="*", s=120, color="C3", label=f"observation y (s = {s:g})")
    ax.set_xlim(y_obs[0] - 4 * s, y_obs[0] + 4 * s)
    ax.set_ylim(y_obs[1] - 4 * s, y_obs[1] + 4 * s)
    ax.set_title(f"denoising (paper): KL(samples ‖ grid posterior) {denoise['kl']:.3f} "
                 f"(floor {denoise['kl_floor']:.3f})", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    for ax in (axes[0], axes[2]):
        ax.set_aspect("equal")
    fig.subplots_adjust(left=0.04, right=0.99, bottom=0.1, top=0.93, wspace=0.18)  # tight_layout costs a draw
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv=None) -> dict:
    args = parse_args(argv)
    outputs = ["table.md"] if args.table else ["conditional.png", "results.json"]
    with entry.demo_outputs(args.out, outputs, force=args.force, command="demos/conditional.py"):
        return run(args)


def run(args) -> dict:
    print(threads.apply_policy())
    if args.table:
        rows = gaussian_table()
        text = table_md(rows)
        print(text, end="")
        fileio.write_text(os.path.join(args.out, "table.md"), text)
        print(os.path.abspath(args.out))
        return {"table": rows}
    start = time.perf_counter()
    x = data.swissroll(8000, np.random.default_rng(args.seed), noise=ROLL_NOISE)
    diffusion = make_diffusion(args)
    history = diffusion.fit(x, args.steps, 512, 2e-2, seed=args.seed)
    print(f"trained {args.steps} steps in {history.seconds:.1f} s, final loss {np.mean(history.loss[-100:]):.4f}")
    results = {"steps": args.steps, "n": args.n}
    rng = backend.default_rng(args.seed + 1)
    inpaint_ref = inpaint_reference(args.a, 401 if args.quick else 4001)
    denoise_ref = denoise_reference(args.observed, args.noise_std, 24 if args.quick else 80)
    inpaint, denoise = {}, {}
    for method in conditioning.METHODS:
        inpaint[method] = inpaint_merit(diffusion.process, inpaint_ref, args.n, rng, method)
        denoise[method] = denoise_merit(diffusion.process, denoise_ref, args.n, rng, method)
        r, d = inpaint[method], denoise[method]
        print(f"{method:8s} inpainting x = {args.a:g}: support distance {r['support']:.4f} "
              f"(floor {r['support_floor']:.4f}, threshold {THRESHOLDS['support']}), "
              f"W1 {r['w1']:.4f} (floor {r['w1_floor']:.4f})")
        print(f"{method:8s} denoising y = {args.observed} s = {args.noise_std:g}: KL {d['kl']:.4f} "
              f"(floor {d['kl_floor']:.4f}, threshold {THRESHOLDS['kl']}); "
              f"mass left of y {d['left']:.2f} vs exact {d['exact_left']:.2f}, std {np.round(d['std'], 3).tolist()} vs exact {np.round(d['exact_std'], 3).tolist()}")
        keys = ("support", "support_floor", "w1", "w1_floor", "kl", "kl_floor", "left", "exact_left", "mean",
                "exact_mean", "std", "exact_std")
        merged = {**r, **d}
        results[method] = {k: merged[k] for k in keys}
    with fileio.atomic_path(os.path.join(args.out, "conditional.png")) as path:
        draw(path, x[:3000], inpaint_ref, inpaint, denoise_ref, denoise["paper"])
    fileio.write_text(os.path.join(args.out, "results.json"), json.dumps(results, indent=1))
    print(f"total {time.perf_counter() - start:.1f} s")
    print(os.path.abspath(args.out))
    return results


if __name__ == "__main__":
    sys.exit(entry.run_demo(main, sys.argv[1:]))  # every failure: one line, status 1 or 2 (npdiff.cli.entry)
