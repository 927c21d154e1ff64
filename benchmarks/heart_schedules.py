"""The README's heart table: the schedule trade-off (schedule, T, ᾱ_T, Chamfer, time) at the demo's budget.

Runs ``demos/heart.py`` with its default model and training budget for each schedule and T below, over
several seeds, and prints one markdown row per setting: ᾱ_T, the prior mismatch KL(q(x_T) ‖ N(0, I))
per dimension for the heart's variance, the median Chamfer distance to the true curve, the median
sliced Wasserstein-1 distance to 2000 fresh true points (which, unlike Chamfer, also sees points
piled up in the wrong places along the curve; the same figure for a second set of true points is
printed as its floor), and the median training time and CPU time of the whole demo (wall times swing
with whatever else runs on the machine; CPU time does not). A schedule whose sampler would amplify ε
errors more than 10× (here the cosine one) samples with x̂_0 clipped to the data range, as the demo does.

    python benchmarks/heart_schedules.py [--seeds 0 1 2] [--out runs/heart_schedules]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
import statistics
import sys

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from npdiff import data, metrics  # noqa: E402

ROWS = [("linear", 100), ("linear", 200), ("linear", 500), ("linear", 1000), ("linear_scaled", 200),
        ("cosine", 200), ("sigmoid", 200)]


def load_demo():
    spec = importlib.util.spec_from_file_location("heart_demo", os.path.join(ROOT, "demos", "heart.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default=os.path.join("runs", "heart_schedules"))
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="further flags for demos/heart.py")
    args = p.parse_args(argv)
    demo = load_demo()
    var = float(data.heart(data.HEART_TRAIN_SIZE, np.random.default_rng(0)).var(axis=0).mean())
    truth = data.heart(2000, np.random.default_rng(1234))

    def sw(points):
        return metrics.sliced_wasserstein(points, truth, 256, rng=np.random.default_rng(0))

    print(f"sliced W1 floor (2000 other true points): {sw(data.heart(2000, np.random.default_rng(99))):.4f}")
    print("| schedule | T | ᾱ_T | prior KL (nats/dim) | Chamfer | sliced W1 | training s | demo CPU s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, T in ROWS:
        runs = []
        for seed in args.seeds:
            flags = ["--schedule", name, "--T", str(T), "--seed", str(seed),
                     "--out", os.path.join(args.out, f"{name}-{T}-{seed}"), *args.extra]
            with contextlib.redirect_stdout(io.StringIO()):
                runs.append(demo.main(flags))
            runs[-1]["sw"] = sw(np.load(os.path.join(runs[-1]["out"], "samples.npy")))
        schedule = demo.make_schedule(name, T)
        med = {k: statistics.median(r[k] for r in runs) for k in ("chamfer", "sw", "train_s", "cpu_s")}
        print(f"| {name} | {T} | {schedule.alpha_bar[-1]:.2g} | {schedule.prior_kl(var):.2g} | {med['chamfer']:.4f} "
              f"| {med['sw']:.3f} | {med['train_s']:.1f} | {med['cpu_s']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
