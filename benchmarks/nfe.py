"""Quality against the number of network evaluations (NFE): ancestral, DDIM, Heun and DPM-Solver++(2M).

    python benchmarks/nfe.py heart --out runs/nfe                   # Chamfer of 2000 samples, ~2 CPU minutes
    python benchmarks/nfe.py fashion --checkpoint out/mnist/checkpoint.npz --judge-dir out/mnist --out runs/nfe
    python benchmarks/nfe.py heart --quick --out runs/nfe           # a smoke run (tests)

heart: the heart demo's model (demos/heart.py's settings) trained at T = 1000, so that every NFE up to 1000
exists on its levels, scored by the Chamfer distance of 2000 samples to the true curve. fashion: a saved image
demo checkpoint (``demos/mnist.py`` writes one), ``--n`` class-balanced samples at guidance ``--guidance`` w
(the demo's), scored by the demo's judge (``ImageJudge``: FCD and accuracy) from ``--judge-dir``.

One curve per sampler, each point at the NFE it names (``sampling.sample``):
    ancestral   DDIM with η = 1 on NFE evenly spaced timesteps (Song et al. Eq. 16: all T of them is the
                ancestral sampler with σ_t² = β̃_t, which is what runs at NFE = T)
    ddim        DDIM, η = 0 (= Euler on the probability-flow ODE)
    heun        Heun on the ODE, (NFE + 1)/2 steps: 2·steps − 1 evaluations (the last step is Euler)
    dpm++       DPM-Solver++(2M), NFE steps
on the grid ``--grid`` (ddim: DDIM's timesteps; karras: EDM's ρ = 7 grid on the model's levels) for the ODE
solvers. On the heart, a sampler whose step amplifies ε_θ's error more than 10× (``sampling.check_gain``)
runs with x̂_0 clipped to the data's range, as the heart demo's --clip-x0 auto does (the record says so).
Writes DIR/nfe_<set>.json (one record per point, with its seconds) and DIR/nfe_<set>.png.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from npdiff import Diffusion, data, metrics  # noqa: E402
from npdiff.io import fileio, threads  # noqa: E402

NFES = (5, 10, 20, 50, 100, 1000)
SAMPLERS = ("ancestral", "ddim", "heun", "dpm++")


def sampler_kwargs(name: str, nfe: int, T: int, grid: str, flow: bool = False) -> tuple[dict, int]:
    """(``Diffusion.sample``'s sampler arguments, the NFE they make) for a sampler asked for ``nfe`` evaluations;
    a flow model's "ddim" is Euler from t = 1 (DDIM on the flow path's schedule, docs/continuous-time.md)."""
    if flow and name == "ddim":
        return dict(sampler="euler", steps=min(nfe, T)), min(nfe, T)
    if name == "ancestral":
        return (dict(sampler="ancestral") if nfe >= T else dict(sampler="ddim", steps=nfe, eta=1.0)), min(nfe, T)
    if name == "ddim":
        return dict(sampler="ddim", steps=min(nfe, T)), min(nfe, T)
    if name == "heun":
        steps = min((nfe + 1) // 2, T)
        return dict(sampler="heun", steps=steps, grid=grid), 2 * steps - 1
    return dict(sampler="dpmpp_2m", steps=min(nfe, T), grid=grid), min(nfe, T)


def heart_model(quick: bool) -> Diffusion:
    """The heart demo's ε-model and training (demos/heart.py DEFAULTS), at T = 1000."""
    rng = np.random.default_rng(0)
    x = data.heart(data.HEART_TRAIN_SIZE, rng)
    d = Diffusion(2, "epsilon", T=1000, schedule="linear", variance="fixed_small", hidden=64, n_blocks=1, emb_dim=64,
                  coord_scale=25.0, time_scale=1.0, layernorm=True, final_layernorm=True, seed=0)
    d.fit(x, steps=300 if quick else 3000, batch_size=512, lr=2e-2, progress=False)
    return d


def run_heart(args) -> list[dict]:
    start = time.perf_counter()
    d = heart_model(args.quick)
    radius = float(np.abs(data.heart(data.HEART_TRAIN_SIZE, np.random.default_rng(0))).max())  # the data's range
    print(f"trained the heart model (T = 1000) in {time.perf_counter() - start:.1f} s", flush=True)
    curve = data.heart_curve(20_000)
    n = 200 if args.quick else 2000
    floor = metrics.chamfer(data.heart(n, np.random.default_rng(1)), curve)
    records = []
    for name in args.samplers:
        for nfe in args.nfe:
            kw, used = sampler_kwargs(name, nfe, d.schedule.T, args.grid)
            t0 = time.perf_counter()
            clip = None
            try:
                x = d.sample(n, seed=1, **kw)
            except ValueError as err:  # a step that amplifies ε_θ's error > 10×: clip x̂_0 as the demo's "auto" does
                if "clip_x0" not in str(err):
                    raise
                clip = (-1.05 * radius, 1.05 * radius)
                x = d.sample(n, seed=1, clip_x0=clip, **kw)
            records.append({"set": "heart", "sampler": name, "nfe": used, "chamfer": metrics.chamfer(x, curve),
                            "floor": floor, "seconds": time.perf_counter() - t0, "clip_x0": clip, "kwargs": kw})
            print(json.dumps(records[-1]), flush=True)
    return records


def run_fashion(args) -> list[dict]:
    from npdiff.images.quality import ImageJudge
    from npdiff.images import idx

    d = Diffusion.load(args.checkpoint)
    judge = ImageJudge.from_folder(args.judge_dir, idx.FASHION_MNIST_DIR, seed=0)
    k = judge.n_classes
    labels = np.arange(args.n) % k
    clip = (-1.0, 1.0) if d.config["objective"] != "flow" else None  # the pixel range, as the demo clips
    records = []
    flow = d.config["objective"] == "flow"
    for nfe in args.nfe:  # all samplers at one NFE before the next: the cheap points first
        for name in args.samplers:
            if flow and name == "ancestral":  # a flow model has no chain
                continue
            kw, used = sampler_kwargs(name, nfe, d.schedule.T - (1 if flow and name != "ddim" else 0), args.grid,
                                      flow)
            t0 = time.perf_counter()
            x = d.sample(args.n, seed=1, labels=labels, guidance=args.guidance, clip_x0=clip, **kw)
            seconds = time.perf_counter() - t0
            row = judge.evaluate(x, labels, f"{name}, NFE {used}")
            records.append({"set": "fashion", "sampler": name, "nfe": used, "fcd": row["fcd"],
                            "accuracy": row["accuracy"], "seconds": seconds, "n": args.n, "w": args.guidance,
                            "kwargs": kw})
            print(json.dumps(records[-1]), flush=True)
            fileio.write_text(os.path.join(args.out, f"nfe_fashion{args.tag}.json"), json.dumps(records, indent=1))
    return records


def figure(path: str, records: list[dict], metric: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics_ = [metric] + (["accuracy"] if "accuracy" in records[0] else [])
    fig, axes = plt.subplots(1, len(metrics_), figsize=(5.2 * len(metrics_), 3.8), squeeze=False)
    for ax, m in zip(axes[0], metrics_):
        for name in SAMPLERS:
            pts = sorted((r["nfe"], r[m]) for r in records if r["sampler"] == name)
            if pts:
                ax.plot(*zip(*pts), "o-", label=name)
        if m == "chamfer":
            ax.axhline(records[0]["floor"], color="gray", ls="--", lw=1, label="2000 true points")
        ax.set_xscale("log")
        ax.set_yscale("log" if m != "accuracy" else "linear")
        ax.set_xlabel("network evaluations (NFE)")
        ax.set_ylabel(m)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with fileio.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("set", choices=("heart", "fashion"))
    p.add_argument("--out", default=os.path.join("out", "nfe"))
    p.add_argument("--nfe", type=int, nargs="+", default=list(NFES))
    p.add_argument("--samplers", nargs="+", choices=SAMPLERS, default=list(SAMPLERS))
    p.add_argument("--grid", choices=("ddim", "karras"), default="ddim")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--checkpoint", help="fashion: a checkpoint of demos/mnist.py")
    p.add_argument("--judge-dir", help="fashion: the folder of the judge's classifier.npz (the demo's --out)")
    p.add_argument("--n", type=int, default=1000, help="fashion: samples per point (default 1000, the demo's)")
    p.add_argument("--guidance", type=float, default=0.25, help="fashion: w (default 0.25, the demo's)")
    p.add_argument("--tag", default="", help="fashion: a suffix of the output files (nfe_fashion<TAG>.json)")
    args = p.parse_args(argv)
    if args.quick:
        args.nfe = [n for n in args.nfe if n <= 20]
    print(threads.apply_policy())
    os.makedirs(args.out, exist_ok=True)
    if args.set == "heart":
        records = run_heart(args)
        fileio.write_text(os.path.join(args.out, "nfe_heart.json"), json.dumps(records, indent=1))
        figure(os.path.join(args.out, "nfe_heart.png"), records, "chamfer",
               f"heart, T = 1000 (ODE grid: {args.grid})")
    else:
        if not args.checkpoint or not args.judge_dir:
            p.error("fashion needs --checkpoint and --judge-dir")
        records = run_fashion(args)
        figure(os.path.join(args.out, f"nfe_fashion{args.tag}.png"), records, "fcd",
               f"Fashion-MNIST, n = {args.n}, w = {args.guidance:g} (ODE grid: {args.grid})")
    print(f"outputs in {os.path.abspath(args.out)}")
    return records


if __name__ == "__main__":
    main()
