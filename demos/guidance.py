"""Classifier-free guidance in 2-D: a class-conditional ε-model of 8 labelled Gaussians, sampled at several w.

    python demos/guidance.py [--out DIR] [--quick] [--steps N] [--n N] [--guidance W [W ...]] [--w W]
                             [--std S] [--seed S]

Trains a class-conditional ``npdiff.Diffusion`` (num_classes=8, labels dropped with p = 0.1) on FFJORD's
8 Gaussians with each point's component as its label (``data.eight_gaussians_labelled``), here with
overlapping components (std 0.7 instead of 0.354, so the data's own labels agree with the Bayes classifier
only ~88 % of the time). Then samples every label in turn ("balanced") with guidance
ε̃ = (1 + w) ε_c − w ε_∅ for each w of the sweep, with the ancestral sampler and DDIM (50 steps, η = 0), and
the unconditional model (labels=None). Beside the learned model it samples the exact ε of the same labelled
mixture (``MixtureEpsilon``), guided the same way: what guidance does to the true density, without model error.
Figures of merit, per w:
  * accuracy: the share of samples asked for label k that the Bayes classifier of the true density (the
    nearest centre: equal weights and covariances) puts in component k. Chance is 1/8; the data score ~0.88;
  * spread: the samples' mean distance to their label's centre over the data's (nearest centre for the
    unconditional rows);
  * radius: their mean distance to the origin over the data's (the ring's).
The test (tests/test_demo_guidance.py) holds the quick run to THRESHOLDS; an untrained model stays near chance.
Writes guidance.png (the data, the samples per label at --w, the unconditional samples, the curves against
w), guidance_sweep.png (a panel per w, learned and exact), table.md and results.json into DIR, prints DIR last; a
file already there is replaced only with --force. Every w lies in npdiff.diffusion.GUIDANCE_RANGE, the command
line's range. Uses only npdiff's public API.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from types import SimpleNamespace

import numpy as np

from npdiff import Diffusion, EpsilonChain, backend, data
from npdiff.cli import entry
from npdiff.diffusion import GUIDANCE_RANGE
from npdiff.io import fileio, threads
from npdiff.processes import sampling

K = 8  # labels: the mixture's components
SWEEP = (0.0, 0.5, 1.0, 2.0, 4.0)
DDIM_STEPS = 50
# quick run ≈ 0.9 at w = 0 and ≈ 0.99 at w = 1 (full run ≈ 0.9 and 1.0); untrained ≈ 0.12 (chance)
THRESHOLDS = {"accuracy_w0": 0.7, "accuracy_w1": 0.95, "untrained": 0.3}
SOURCES = ("model", "model DDIM", "exact", "exact DDIM")  # learned / exact ε, ancestral / DDIM
OUTPUTS = ("guidance.png", "guidance_sweep.png", "table.md", "results.json")


def parse_args(argv=None) -> argparse.Namespace:
    p = entry.DemoParser(prog="guidance.py", description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.path.join("out", "guidance"), help="output folder")
    p.add_argument("--force", action="store_true", help="replace the outputs of an earlier run in --out")
    p.add_argument("--quick", action="store_true", help="800 training steps, 400 samples per w, for tests")
    p.add_argument("--steps", type=int, help="training steps (default 3000; --quick 800)")
    p.add_argument("--n", type=int, help="samples per w, every label in turn (default 2000; --quick 400)")
    p.add_argument("--guidance", type=float, nargs="+", default=list(SWEEP), metavar="W",
                   help=f"the guidance scales w of the sweep, each in [{GUIDANCE_RANGE[0]:g}, {GUIDANCE_RANGE[1]:g}] "
                        "(default 0 0.5 1 2 4)")
    p.add_argument("--w", type=float, default=1.0, help="the w of the samples-per-label panel (default 1)")
    p.add_argument("--std", type=float, default=0.7, help="each component's std (default 0.7; FFJORD's is 0.354)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.steps = (800 if args.quick else 3000) if args.steps is None else args.steps
    args.n = (400 if args.quick else 2000) if args.n is None else args.n
    entry.check_demo_flags(args, counts=["steps"], positive=["std"], guidance=["guidance", "w"], error=p.error)
    if args.n < K:
        p.error(f"--n must be >= {K} (every label in turn), got {args.n}")
    return args


def make_diffusion(args) -> Diffusion:
    """The heart demo's small ε-model with an 8-row label table (+ the null row), on a 200-step linear
    schedule scaled to T so that x_T is noise (ᾱ_T ≈ 4e-5)."""
    return Diffusion(2, "epsilon", 200, "linear", {"scale_to_T": True}, hidden=64, n_blocks=1, emb_dim=64,
                     coord_scale=25.0, time_scale=1.0, layernorm=True, final_layernorm=True, num_classes=K,
                     seed=args.seed)


class MixtureEpsilon:
    """The exact ε-predictor of K labelled isotropic Gaussians N(c_k, std² I) of equal weight, with the
    class-conditional model interface ``forward(x_t, t, y=None)`` (y = K or None: no label).

    q(x_t | k) = N(√ᾱ_t c_k, v_t I), v_t = ᾱ_t std² + 1 − ᾱ_t, so E[ε | x_t, k] = √(1 − ᾱ_t)/v_t (x_t − √ᾱ_t c_k);
    without a label, E[ε | x_t] = Σ_k r_k E[ε | x_t, k] with r_k = q(k | x_t) ∝ exp(−|x_t − √ᾱ_t c_k|²/(2 v_t)).
    """

    def __init__(self, schedule, centres, std: float) -> None:
        self.schedule, self.centres = schedule, np.asarray(centres, dtype=np.float64)  # (K, D)
        self.data_dim, self.dtype = self.centres.shape[1], np.dtype("float64")
        self.label_emb = SimpleNamespace(n_classes=len(self.centres), null=len(self.centres))  # read by EpsilonChain
        self.v = schedule.alpha_bar * std**2 + 1 - schedule.alpha_bar  # (T+1,)

    def forward(self, x_t, t, y=None):
        t = backend.to_numpy(self.schedule.as_timesteps(t))
        x_t = np.asarray(backend.to_numpy(x_t), dtype=np.float64)
        root_a, v = np.sqrt(self.schedule.alpha_bar[t])[:, None], self.v[t][:, None]  # (N, 1)
        d2 = ((x_t[:, None, :] - root_a[:, :, None] * self.centres[None]) ** 2).sum(2)  # (N, K)
        logits = -d2 / (2 * v)
        r = np.exp(logits - logits.max(1, keepdims=True))
        r /= r.sum(1, keepdims=True)  # q(k | x_t)   (N, K)
        if y is not None:
            y = np.asarray(backend.to_numpy(y))
            labelled = y < len(self.centres)
            r[labelled] = np.eye(len(self.centres))[y[labelled]]
        return backend.asarray(np.sqrt(1 - root_a**2) / v * (x_t - root_a * (r @ self.centres)))  # (N, D)


def merit(x, centres, labels=None) -> dict:
    """accuracy (labels: the share the nearest centre puts in its asked component), dist (mean distance to the
    asked centre, or the nearest without labels) and radius (mean |x|).  x (N, 2), labels (N,) or None."""
    dist = np.linalg.norm(x[:, None] - centres[None], axis=2)  # (N, K)
    out = {"radius": float(np.linalg.norm(x, axis=1).mean())}
    if labels is None:
        return {**out, "accuracy": None, "dist": float(dist.min(1).mean())}
    return {**out, "accuracy": float((dist.argmin(1) == labels).mean()),
            "dist": float(dist[np.arange(len(x)), labels].mean())}


def relative(m: dict, ref: dict) -> dict:
    """accuracy, spread = dist / the data's, radius / the data's."""
    return {"accuracy": m["accuracy"], "spread": m["dist"] / ref["dist"], "radius": m["radius"] / ref["radius"]}


def draw_samples(diffusion, exact, source: str, n: int, w: float | None, seed: int):
    """n samples of one source at guidance w, every label in turn (w None: unconditional).  -> (n, 2) host"""
    labels = None if w is None else np.arange(n) % K
    ddim = dict(sampler="ddim", ddim_steps=DDIM_STEPS) if source.endswith("DDIM") else {}
    if source.startswith("model"):
        return diffusion.sample(n, seed, labels=labels, guidance=0.0 if w is None else w, **ddim)
    chain = EpsilonChain(exact, diffusion.schedule, labels=labels, guidance=0.0 if w is None else w)
    return backend.to_numpy(sampling.sample(chain, n, backend.default_rng(seed), **ddim))


def sweep(diffusion, exact, ws, n: int, seed: int, refs: dict) -> tuple[dict, dict]:
    """(figures, samples): every source at every w and unconditional (key None), as ``relative`` dicts."""
    figures, samples = {s: {} for s in SOURCES}, {s: {} for s in SOURCES}
    labels = np.arange(n) % K
    for source in SOURCES:
        for w in (*ws, None):
            x = draw_samples(diffusion, exact, source, n, w, seed)
            m = merit(x, exact.centres, None if w is None else labels)
            figures[source][w] = relative(m, refs["unconditional" if w is None else "labelled"])
            samples[source][w] = x
    return figures, samples


def _cell(f: dict) -> str:
    acc = "—" if f["accuracy"] is None else f"{f['accuracy']:.3f}"
    return f"{acc} / {f['spread']:.2f} / {f['radius']:.2f}"


def table_md(figures: dict, ws, data_accuracy: float) -> str:
    """One row per w (and the unconditional model), a column per source: accuracy / spread / radius."""
    lines = ["| w | s = 1 + w | " + " | ".join(f"{s} (ancestral)" if s in ("model", "exact") else f"{s}-{DDIM_STEPS}"
                                              for s in SOURCES) + " |", "|---" * (2 + len(SOURCES)) + "|"]
    for w in ws:
        lines.append(f"| {w:g} | {1 + w:g} | " + " | ".join(_cell(figures[s][w]) for s in SOURCES) + " |")
    lines.append("| labels=None | — | " + " | ".join(_cell(figures[s][None]) for s in SOURCES) + " |")
    lines.append(f"| data | — | {data_accuracy:.3f} / 1.00 / 1.00 |" + " |" * (len(SOURCES) - 1))
    return "\n".join(lines) + "\n"


COLOURS = [f"C{i}" for i in (0, 1, 2, 3, 4, 5, 6, 9)]  # one per label; not C7, the grey of the data behind


def _scatter_labels(ax, x, labels, size=3, alpha=0.7):
    for k in range(K):
        ax.scatter(*x[labels == k].T, s=size, color=COLOURS[k], alpha=alpha, linewidths=0)


def _frame(ax, title):
    ax.set_xlim(-6, 6)
    ax.set_ylim(-6, 6)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=8)


def draw(path, x, y, shown: dict, figures: dict, ws) -> None:
    """Four panels: the labelled data, model samples per label at w, unconditional samples, figures against w."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 5, figsize=(20, 4.2))
    _scatter_labels(axes[0], x, y, size=2, alpha=0.5)
    _frame(axes[0], f"data: 8 Gaussians, std {shown['std']:g}, coloured by label")
    labels = np.arange(len(shown["samples"])) % K
    for ax in axes[1:3]:
        ax.scatter(*x.T, s=1, color="0.88", linewidths=0)
    _scatter_labels(axes[1], shown["samples"], labels)
    f = shown["figures"]
    _frame(axes[1], f"model, labels 0..7 in turn, w = {shown['w']:g} (s = {1 + shown['w']:g}): "
                    f"accuracy {f['accuracy']:.3f}, spread {f['spread']:.2f}")
    u = figures["model"][None]
    axes[2].scatter(*shown["unconditional"].T, s=3, color="k", alpha=0.6, linewidths=0)
    _frame(axes[2], f"model, labels=None: spread {u['spread']:.2f}, radius {u['radius']:.2f}")
    for i, source in enumerate(SOURCES):
        style = dict(color=f"C{i}", marker="o", ms=3, ls="--" if "DDIM" in source else "-", label=source)
        axes[3].plot(ws, [figures[source][w]["accuracy"] for w in ws], **style)
        axes[4].plot(ws, [figures[source][w]["spread"] for w in ws], **style)
    axes[3].axhline(shown["data_accuracy"], color="0.5", lw=0.8, ls=":", label="the data's own labels")
    axes[4].axhline(1.0, color="0.5", lw=0.8, ls=":", label="the data")
    for ax, name in ((axes[3], "accuracy"), (axes[4], "spread")):
        ax.set_xlabel("guidance w")
        ax.set_title(f"{name} against w", fontsize=8)
        ax.legend(fontsize=7)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.12, top=0.92, wspace=0.15)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def draw_sweep(path, x, samples: dict, figures: dict, ws) -> None:
    """Two rows (learned model, exact ε; ancestral) of a panel per w and one for labels=None."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [*ws, None]
    fig, axes = plt.subplots(2, len(keys), figsize=(2.6 * len(keys), 5.6), squeeze=False)
    for row, source in enumerate(("model", "exact")):
        for ax, w in zip(axes[row], keys):
            ax.scatter(*x.T, s=1, color="0.88", linewidths=0)
            s, f = samples[source][w], figures[source][w]
            if w is None:
                ax.scatter(*s.T, s=3, color="k", alpha=0.6, linewidths=0)
                title = f"{source}, labels=None\nspread {f['spread']:.2f}, radius {f['radius']:.2f}"
            else:
                _scatter_labels(ax, s, np.arange(len(s)) % K)
                title = f"{source}, w = {w:g}\nacc {f['accuracy']:.3f}, spread {f['spread']:.2f}"
            _frame(ax, title)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.92, wspace=0.05, hspace=0.18)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv=None) -> dict:
    args = parse_args(argv)
    with entry.demo_outputs(args.out, OUTPUTS, force=args.force, command="demos/guidance.py"):
        return run(args)


def run(args) -> dict:
    print(threads.apply_policy())
    start = time.perf_counter()
    x, y = data.eight_gaussians_labelled(8000, np.random.default_rng(args.seed), std=args.std)
    centres = data.eight_gaussians_centres()
    refs = {"labelled": merit(x, centres, y), "unconditional": merit(x, centres)}
    print(f"data: std {args.std:g}, accuracy of the Bayes classifier on the data's own labels "
          f"{refs['labelled']['accuracy']:.3f} (chance {1 / K:.3f})")
    diffusion = make_diffusion(args)
    history = diffusion.fit(x, args.steps, 512, 2e-2, labels=y, seed=args.seed)
    print(f"trained {args.steps} steps in {history.seconds:.1f} s, final loss {np.mean(history.loss[-100:]):.4f}")
    exact = MixtureEpsilon(diffusion.schedule, centres, args.std)
    ws = sorted(set(args.guidance))
    tic = time.perf_counter()
    figures, samples = sweep(diffusion, exact, ws, args.n, args.seed + 1, refs)
    print(f"sampled {len(SOURCES)} sources x {len(ws) + 1} settings x {args.n} in {time.perf_counter() - tic:.1f} s")
    for w in ws:
        print(f"w = {w:g}: " + ", ".join(f"{s} accuracy {figures[s][w]['accuracy']:.4f} spread "
                                         f"{figures[s][w]['spread']:.3f}" for s in SOURCES))
    text = table_md(figures, ws, refs["labelled"]["accuracy"])
    print("accuracy / spread / radius (spread and radius relative to the data's):")
    print(text, end="")
    if args.w in figures["model"]:
        shown = samples["model"][args.w]
    else:
        shown = draw_samples(diffusion, exact, "model", args.n, args.w, args.seed + 1)
    shown_figures = relative(merit(shown, centres, np.arange(args.n) % K), refs["labelled"])
    with fileio.atomic_path(os.path.join(args.out, "guidance.png")) as path:
        draw(path, x[:3000], y[:3000], {"std": args.std, "w": args.w, "samples": shown, "figures": shown_figures,
                                        "unconditional": samples["model"][None],
                                        "data_accuracy": refs["labelled"]["accuracy"]}, figures, ws)
    with fileio.atomic_path(os.path.join(args.out, "guidance_sweep.png")) as path:
        draw_sweep(path, x[:3000], samples, figures, ws)
    fileio.write_text(os.path.join(args.out, "table.md"), text)
    results = {"steps": args.steps, "n": args.n, "std": args.std, "data": refs, "guidance": ws,
               "figures": {s: {("none" if w is None else f"{w:g}"): f for w, f in by_w.items()}
                           for s, by_w in figures.items()}}
    fileio.write_text(os.path.join(args.out, "results.json"), json.dumps(results, indent=1))
    print(f"total {time.perf_counter() - start:.1f} s")
    print(os.path.abspath(args.out))
    return results


if __name__ == "__main__":
    sys.exit(entry.run_demo(main, sys.argv[1:]))  # every failure: one line, status 1 or 2 (npdiff.cli.entry)
