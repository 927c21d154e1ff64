"""The README likelihood table: held-out negative log-likelihood bounds (nats per point) on two toy sets.

For each data set (FFJORD 8gaussians and swissroll) it trains, on standardised data,
    eps     an ε-prediction DDPM (L_simple, linear β, T = 1000), evaluated with σ² = β̃ and with σ² = β
    hybrid  a learned-range ε-model on L_hybrid (Nichol & Dhariwal), T = 1000
    sd1000  the Sohl-Dickstein chain on its bound K, linear β, T = 1000
    sd40    the Sohl-Dickstein chain at the paper's T = 40 (β_t = 1/(T − t + 1), β_T capped at 0.999)
all with the same denoiser (width 128 × 3 residual blocks) and the same budget (steps × batch, Adam,
cosine-decayed lr, EMA of the weights for evaluation). Each bound is −(L_T + Σ L_{t−1} + L_0) estimated on
fresh held-out points by Monte Carlo over t with importance sampling (``likelihood.importance_probs``),
enough points for a standard error ≤ 0.01 nats, and reported in data coordinates (+ Σ log std). The
data entropy, the floor no model can beat, is computed from the exact density (``likelihood.toy_entropy``).
With ``--ode``, the ε and hybrid rows (the models with a denoiser) also report their ODE log-likelihood
(``ode_likelihood.ode_log_likelihood``: the probability-flow ODE from σ_1 with the exact trace, on
``--ode-steps`` of the model's levels, ``--ode-points`` fresh held-out points): the model's exact likelihood
of the data blurred by σ_1, not a bound (docs/likelihood.md explains the gap to K).

    python benchmarks/likelihood_table.py --dataset 8gaussians --rows eps hybrid sd1000 sd40 --out runs/lik
    python benchmarks/likelihood_table.py --dataset swissroll --steps 40000 --seed 1 --out runs/lik
    python benchmarks/likelihood_table.py --dataset swissroll --rows hybrid --eval-only --out runs/lik
    python benchmarks/likelihood_table.py --dataset 8gaussians --rows eps hybrid --ode --out runs/lik
    python benchmarks/likelihood_table.py --report --out runs/lik        # prints the markdown table

Each run saves DIR/{dataset}_{row}_{steps}.npz (the trained model, EMA weights included) and one JSON per
evaluated variance; ``--eval-only`` re-evaluates saved models (the learned-range model is also evaluated
with σ² = β, which separates what its variance head buys from the quality of its mean).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from npdiff import data
from npdiff.nn import optim
from npdiff.processes import ddpm, hybrid, likelihood, ode, ode_likelihood, sohl_dickstein as sd
from npdiff.training import checkpoint, train  # noqa: E402
from npdiff.processes.ddpm import EpsilonObjective  # noqa: E402
from npdiff.nn.denoiser import Denoiser  # noqa: E402
from npdiff.processes.schedules import Schedule  # noqa: E402

ROWS = ("eps", "hybrid", "sd1000", "sd40")
LABELS = {"eps/fixed_small": "DDPM ε, σ² = β̃ (fixed)", "eps/fixed_large": "DDPM ε, σ² = β (fixed)",
          "hybrid/learned_range": "ε + learned-range σ² (L_hybrid)",
          "hybrid/fixed_large": "same L_hybrid model, σ² = β", "sd1000/sd": "Sohl-Dickstein chain (K)",
          "sd40/sd": "Sohl-Dickstein chain (K)", "eps/ode": "DDPM ε, ODE log-likelihood (not a bound)",
          "hybrid/ode": "L_hybrid model, ODE log-likelihood (not a bound)"}


def build(row: str, seed: int):
    """(model, objective, schedule) of a row."""
    width = dict(hidden=128, n_blocks=3, seed=seed)
    if row == "eps":
        s = Schedule(1000, "linear")
        return Denoiser(2, **width), EpsilonObjective(s), s
    if row == "hybrid":
        s = Schedule(1000, "linear")
        return Denoiser(2, out_dim=4, **width), hybrid.HybridObjective(s), s
    s = Schedule(1000, "linear") if row == "sd1000" else Schedule(40, "sohl_dickstein")
    return sd.make_model(2, **width), sd.BoundObjective(s), s


def processes(row, model, s):
    if row == "eps":
        return {v: ddpm.EpsilonChain(model, s, v) for v in ("fixed_small", "fixed_large")}
    if row == "hybrid":
        return {v: ddpm.EpsilonChain(model, s, v) for v in ("learned_range", "fixed_large")}
    return {"sd": sd.SohlDicksteinChain(model, s)}


def evaluate(process, name, mean, std, rng, target_se: float, max_points: int):
    """MC bound with importance over t on fresh held-out points; a pilot sizes N for the target SE."""
    log_det = float(np.log(std).sum())
    held = lambda n: (data.make(name, n, rng) - mean) / std  # noqa: E731
    probs = likelihood.importance_probs(process, held(256), rng)
    pilot = likelihood.mc_bound(process, held(20000), rng, t_probs=probs, log_det=log_det)
    sd_point = pilot.se * math.sqrt(pilot.n)
    n = int(min(max_points, max(20000, math.ceil((sd_point / target_se) ** 2 * 1.1))))
    bound = likelihood.mc_bound(process, held(n), rng, t_probs=probs, log_det=log_det)
    bound.seconds += pilot.seconds
    return bound


def evaluate_ode(model, s, name, mean, std, rng, n_points: int, steps: int | None):
    """The ODE log-likelihood of fresh held-out points (exact trace), data coordinates: (nll, se, seconds, sigmas)."""
    denoiser = ode.ChainDenoiser(ddpm.EpsilonChain(model, s, "fixed_small", max_gain=None))
    sigmas = ode_likelihood.model_sigmas(denoiser, steps)
    z = (data.make(name, n_points, rng) - mean) / std
    result = ode_likelihood.ode_log_likelihood(denoiser, z, sigmas)
    return -(result.nats - float(np.log(std).sum())), result.se, result.seconds, sigmas


def run(args) -> None:
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    train_x = data.make(args.dataset, 1_000_000, rng)
    z, mean, std = data.standardize(train_x)
    for row in args.rows:
        model, objective, s = build(row, args.seed)
        stem = os.path.join(args.out, f"{args.dataset}_{row}_{args.steps}")
        ckpt, timing = stem + ".npz", stem + ".train"
        if args.eval_only:  # re-evaluate a saved run (EMA weights)
            checkpoint.load(ckpt).restore(model, use_ema=True)
            with open(timing) as f:
                train_seconds, final_loss = map(float, f.read().split())
        else:
            opt = optim.Adam(model, lr=args.lr)
            ema = optim.EMA(model, decay=0.999)
            hist = train.fit(model, z, objective, steps=args.steps, batch_size=args.batch_size, optimizer=opt, rng=rng,
                             lr_schedule=optim.cosine_lr(args.lr, args.steps, warmup=min(200, args.steps)), clip=args.clip, ema=ema,
                             progress=False, checkpoint_path=ckpt, checkpoint_every=None)
            train_seconds, final_loss = hist.seconds, float(np.mean(hist.loss[-500:]))
            with open(timing, "w") as f:
                f.write(f"{train_seconds} {final_loss}")
            ema.swap()  # evaluate the averaged weights
        if args.ode and row in ("eps", "hybrid"):
            nll, se, seconds, sigmas = evaluate_ode(model, s, args.dataset, mean, std, rng, args.ode_points,
                                                    args.ode_steps)
            result = {"dataset": args.dataset, "row": row, "variance": "ode", "T": s.T, "schedule": s.name,
                      "train_seconds": train_seconds, "eval_seconds": seconds, "steps": args.steps,
                      "batch": args.batch_size, "nll": nll, "se": se, "n_points": args.ode_points,
                      "sigma_min": float(sigmas[0]), "levels": int(sigmas.size), "final_loss": final_loss}
            with open(f"{stem}_ode.json", "w") as f:
                json.dump(result, f, indent=1)
            print(json.dumps(result), flush=True)
            if args.ode_only:
                continue
        for variance, proc in processes(row, model, s).items():
            b = evaluate(proc, args.dataset, mean, std, rng, args.target_se, args.max_points)
            result = {"dataset": args.dataset, "row": row, "variance": variance, "T": s.T, "schedule": s.name,
                      "train_seconds": train_seconds, "eval_seconds": b.seconds, "steps": args.steps,
                      "batch": args.batch_size, "nll": b.nll_data, "se": b.se, "n_points": b.n,
                      "gain_nats": b.gain, "gain_se": b.gain_se, "final_loss": final_loss}
            path = f"{stem}_{variance}.json"
            with open(path, "w") as f:
                json.dump(result, f, indent=1)
            print(json.dumps(result), flush=True)


def report(args) -> None:
    rows = []
    for fname in sorted(os.listdir(args.out)):
        if fname.endswith(".json") and not fname.startswith("entropy"):
            with open(os.path.join(args.out, fname)) as f:
                rows.append(json.load(f))
    order = {k: i for i, k in enumerate(["eps/fixed_small", "eps/fixed_large", "eps/ode", "hybrid/learned_range",
                                         "hybrid/fixed_large", "hybrid/ode", "sd1000/sd", "sd40/sd"])}
    print("| data (entropy, nats) | model | T | −log p (bound, or ODE), nats/point | gap to entropy | training "
          "| eval (points) |")
    print("|---|---|---|---|---|---|---|")
    for name in ("8gaussians", "swissroll"):
        ent_path = os.path.join(args.out, f"entropy_{name}.json")
        if not os.path.exists(ent_path):
            with open(ent_path, "w") as f:
                json.dump(dict(zip(("entropy", "se"), likelihood.toy_entropy(name, np.random.default_rng(123), 2_000_000 if name == "8gaussians" else 100_000))), f)
        with open(ent_path) as f:
            ent = json.load(f)
        mine = sorted((r for r in rows if r["dataset"] == name),
                      key=lambda r: (order[f"{r['row']}/{r['variance']}"], r["steps"]))
        for r in mine:
            print(f"| {name} ({ent['entropy']:.3f} ± {ent['se']:.3f}) | {LABELS[r['row'] + '/' + r['variance']]} "
                  f"| {r['T']} | {r['nll']:.3f} ± {r['se']:.3f} | {r['nll'] - ent['entropy']:+.3f} "
                  f"| {r['steps'] // 1000}k × {r['batch']}, {r['train_seconds']:.0f} s | {r['eval_seconds']:.0f} s ({r['n_points']:,}) |")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="8gaussians", choices=("8gaussians", "swissroll"))
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--batch-size", "--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--clip", type=float, default=None)
    p.add_argument("--target-se", type=float, default=0.0095)
    p.add_argument("--max-points", type=int, default=6_000_000)
    p.add_argument("--eval-only", action="store_true", help="re-evaluate the checkpoints saved in --out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ode", action="store_true", help="also the ODE log-likelihood of the eps and hybrid rows")
    p.add_argument("--ode-only", action="store_true", help="with --ode: skip the bounds (already evaluated)")
    p.add_argument("--ode-points", type=int, default=4000, help="held-out points of the ODE likelihood")
    p.add_argument("--ode-steps", type=int, default=200, help="levels of the ODE grid (of T)")
    p.add_argument("--out", default="runs/likelihood_table")
    p.add_argument("--report", action="store_true", help="print the markdown table from the saved results")
    args = p.parse_args(argv)
    report(args) if args.report else run(args)
    print(os.path.abspath(args.out))


if __name__ == "__main__":
    main()
