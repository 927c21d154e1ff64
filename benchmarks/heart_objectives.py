"""The heart at equal CPU time: ε-prediction, x̂_0-prediction and flow matching, each sampled every way it can be.

    python benchmarks/heart_objectives.py --out runs/heart_objectives        # ~3 CPU minutes
    python benchmarks/heart_objectives.py --quick --out runs/heart_objectives

Each objective trains the heart demo's network (demos/heart.py DEFAULTS: width 64, one pre-LN block, AdamW at
2e-2, batch 512, 3000 steps, seed 0) on the same 8000 points for the same number of steps, so each step costs
the same (one forward and one backward of the same MLP); the time levels are the demo's T = 200 (a flow model's
t = k/200). Every model is then sampled by every sampler it has, at 50 network evaluations (ancestral: all
T = 200 steps), and scored by the Chamfer distance of 2000 samples to the true curve (the demo's figure).
Writes DIR/heart_objectives.json.
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

MODELS = {"ε": dict(objective="epsilon", prediction="eps"), "x̂_0": dict(objective="epsilon", prediction="x0"),
          "flow": dict(objective="flow")}
SAMPLERS = {"ancestral (T = 200)": dict(sampler="ancestral"), "DDIM 50": dict(sampler="ddim", steps=50),
            "Euler 50": dict(sampler="euler", steps=50), "Heun 25 (49 NFE)": dict(sampler="heun", steps=25),
            "DPM-Solver++(2M) 50": dict(sampler="dpmpp_2m", steps=50)}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.path.join("out", "heart_objectives"))
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    print(threads.apply_policy())
    os.makedirs(args.out, exist_ok=True)
    x = data.heart(data.HEART_TRAIN_SIZE, np.random.default_rng(0))
    curve = data.heart_curve(20_000)
    n, steps = (300, 300) if args.quick else (2000, args.steps)
    records = []
    for name, kw in MODELS.items():
        d = Diffusion(2, T=200, hidden=64, n_blocks=1, emb_dim=64, coord_scale=25.0, time_scale=1.0, layernorm=True,
                      final_layernorm=True, seed=0, **kw)
        cpu = time.process_time()
        history = d.fit(x, steps=steps, batch_size=512, lr=2e-2, progress=False)
        train_cpu = time.process_time() - cpu
        for label, skw in SAMPLERS.items():
            if kw["objective"] == "flow" and skw["sampler"] in ("ancestral", "ddim"):
                continue  # no chain; its Euler is DDIM on the flow path's schedule
            cpu = time.process_time()
            try:
                samples = d.sample(n, seed=1, **skw)
            except ValueError as err:  # an unclipped step that amplifies ε_θ's error > 10×
                records.append({"model": name, "sampler": label, "error": str(err)})
                continue
            record = {"model": name, "sampler": label, "chamfer": metrics.chamfer(samples, curve),
                      "train_cpu_s": train_cpu, "train_wall_s": history.seconds,
                      "sample_cpu_s": time.process_time() - cpu, "final_loss": float(np.mean(history.loss[-100:]))}
            records.append(record)
            print(json.dumps(record, ensure_ascii=False), flush=True)
    records.append({"floor": metrics.chamfer(data.heart(n, np.random.default_rng(1)), curve)})
    fileio.write_text(os.path.join(args.out, "heart_objectives.json"), json.dumps(records, indent=1,
                                                                                 ensure_ascii=False))
    print(f"outputs in {os.path.abspath(args.out)}")
    return records


if __name__ == "__main__":
    main()
