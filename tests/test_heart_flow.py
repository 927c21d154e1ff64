"""demos/heart.py --objective flow: its written-out flow-matching loop and Euler steps are ``Diffusion.fit`` with
``objective="flow"`` and ``Diffusion.sample(sampler="euler")`` to the bit; the ODE samplers reach the heart."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from npdiff import AdamW, backend, cosine_lr, data, metrics
from npdiff.training import checkpoint

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("heart_demo", ROOT / "demos" / "heart.py")
heart = importlib.util.module_from_spec(spec)
spec.loader.exec_module(heart)


def library_run(flags, **sample_kwargs):
    """The demo's cells through the library (as tests/test_demo_heart.py does for ε).  -> (diffusion, samples)"""
    args = heart.parse_args(flags)
    diffusion = heart.make_diffusion(args)
    rng = backend.default_rng(args.seed)
    x = data.heart(data.HEART_TRAIN_SIZE, np.random.default_rng(args.seed))
    diffusion.fit(x, args.steps, args.batch_size, rng=rng, optimizer=AdamW(diffusion.model, lr=args.lr),
                  lr_schedule=cosine_lr(args.lr, args.steps, warmup=min(100, args.steps)), clip=heart.CLIP,
                  ema=args.ema or None, progress=False)
    return diffusion, diffusion.sample(heart.N_SAMPLES, rng=rng, **sample_kwargs)


def test_the_flow_demo_is_fit_and_sample_to_the_bit(tmp_path, run_demo):
    small = ["--objective", "flow", "--steps", "30", "--T", "20", "--hidden", "16", "--emb-dim", "16", "--ema", "0.9"]
    run = run_demo("heart.py", *small, "--out", tmp_path)
    assert run.returncode == 0, run.stderr
    diffusion, samples = library_run(small)
    assert diffusion.config["objective"] == "flow"
    stored = checkpoint.load(tmp_path / "checkpoint.npz")
    assert stored.info["meta"]["objective"] == "flow"
    for name, weights in diffusion.model.parameters().items():
        np.testing.assert_array_equal(stored.arrays[f"param/{name}"], weights, err_msg=name)
    np.testing.assert_array_equal(stored.arrays["ema/shadow"], diffusion.ema.shadow)
    np.testing.assert_array_equal(np.load(tmp_path / "samples.npy"), samples)  # the written-out Euler steps


def test_the_flow_demo_draws_a_heart_with_each_solver_and_an_untrained_one_does_not(tmp_path, run_demo):
    curve = data.heart_curve(heart.N_CURVE)
    for sampler in ("euler", "dpmpp_2m"):
        out = tmp_path / sampler
        run = run_demo("heart.py", "--quick", "--objective", "flow", "--sampler", sampler, "--ddim-steps", "50",
                       "--out", out)
        assert run.returncode == 0, run.stderr
        assert metrics.chamfer(np.load(out / "samples.npy"), curve) < 0.04  # measured 0.029 (euler), 0.026
    args = heart.parse_args(["--objective", "flow"])
    untrained = heart.make_diffusion(args).sample(2000, sampler="euler", steps=50)
    assert metrics.chamfer(untrained, curve) > 0.3
