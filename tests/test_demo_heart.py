"""demos/heart.py, run as a user runs it: every output is written and the samples trace the heart; its written-out
training and sampling loops are the library's ``fit`` and ``sample`` to the bit, ``--variance`` included."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

from npdiff import AdamW, backend, cosine_lr, data, metrics
from npdiff.training import checkpoint

ROOT = Path(__file__).resolve().parents[1]

MAX_CHAMFER = 0.03  # the quick run reaches ≈ 0.013; the untrained model fails it (test below)


def test_quick_heart_demo_writes_its_outputs_and_draws_a_heart(tmp_path, run_demo):
    out = tmp_path / "heart"
    run = run_demo("heart.py", "--quick", "--out", out)
    assert run.returncode == 0, run.stderr
    printed = run.stdout
    for name in ("samples.npy", "heart.png", "loss.png", "heart.gif", "checkpoint.npz"):
        assert (out / name).stat().st_size > 0, name
    samples = np.load(out / "samples.npy")
    assert samples.shape == (2000, 2) and np.all(np.isfinite(samples))
    match = re.search(r"samples ([0-9.]+), 2000 true points ([0-9.]+) \(floor\)", printed)
    assert match, printed
    chamfer, floor = float(match.group(1)), float(match.group(2))
    assert floor < 0.004  # 2000 true points lie this close to the dense curve
    assert chamfer < MAX_CHAMFER
    assert "alpha_bar_T=" in printed and "prior KL=" in printed
    assert f"outputs in {out}" in printed

    import imageio.v3 as iio

    frames = iio.imread(out / "heart.gif")
    assert frames.ndim == 4 and frames.shape[0] >= 20  # an animation, not a still
    first, last = frames[0].astype(int), frames[-1].astype(int)
    assert (first[:, :, 2] - first[:, :, 0]).max() > 100  # the forward half is drawn in blue …
    assert (last[:, :, 0] - last[:, :, 2]).max() > 100  # … and the reverse half ends in red


def load_heart():
    """demos/heart.py as a module: its helpers, without running its cells."""
    spec = importlib.util.spec_from_file_location("demo_heart", ROOT / "demos" / "heart.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


heart = load_heart()


def test_the_untrained_heart_model_fails_the_demos_quality_bar():
    args = heart.parse_args(["--quick"])
    samples = heart.make_diffusion(args).sample(2000, seed=0)
    assert metrics.chamfer(samples, data.heart_curve(20_000)) > 3 * MAX_CHAMFER


def library_run(flags, **sample_kwargs):
    """What the demo's cells compute, through the library: ``Diffusion.fit`` with the demo's optimizer, lr
    schedule, clipping and EMA, then ``Diffusion.sample(**sample_kwargs)`` with the same generator.
    -> (diffusion, samples)"""
    args = heart.parse_args(flags)
    diffusion = heart.make_diffusion(args)
    rng = backend.default_rng(args.seed)
    x = data.heart(data.HEART_TRAIN_SIZE, np.random.default_rng(args.seed))
    diffusion.fit(x, args.steps, args.batch_size, rng=rng, optimizer=AdamW(diffusion.model, lr=args.lr),
                  lr_schedule=cosine_lr(args.lr, args.steps, warmup=min(100, args.steps)), clip=heart.CLIP,
                  ema=args.ema or None, progress=False)
    return diffusion, diffusion.sample(heart.N_SAMPLES, rng=rng, **sample_kwargs)


def test_the_demos_loops_are_fit_and_sample_to_the_bit_and_the_variance_flag_reaches_the_chain(tmp_path, run_demo):
    small = ["--steps", "30", "--T", "20", "--hidden", "16", "--emb-dim", "16", "--ema", "0.9"]
    demo_samples = {}
    for variance in ("fixed_small", "fixed_large"):
        out = tmp_path / variance
        run = run_demo("heart.py", *small, "--variance", variance, "--out", out)
        assert run.returncode == 0, run.stderr
        diffusion, samples = library_run([*small, "--variance", variance])
        assert diffusion.chain().variance == variance
        stored = checkpoint.load(out / "checkpoint.npz")
        assert stored.info["meta"]["variance"] == variance  # Diffusion.load samples it with this variance
        for name, weights in diffusion.model.parameters().items():
            np.testing.assert_array_equal(stored.arrays[f"param/{name}"], weights, err_msg=name)
        np.testing.assert_array_equal(stored.arrays["ema/shadow"], diffusion.ema.shadow)
        np.testing.assert_array_equal(stored.arrays["optimizer/m"], diffusion.optimizer.m)
        demo_samples[variance] = np.load(out / "samples.npy")
        np.testing.assert_array_equal(demo_samples[variance], samples)  # Algorithm 2 written out = sampling.sample
    # the same weights and draws: only σ_t² differs, and it moves the samples
    assert np.abs(demo_samples["fixed_small"] - demo_samples["fixed_large"]).max() > 1e-3


def test_the_variance_flag_sets_sigma_squared_to_beta_tilde_or_beta():
    for variance, expected in (("fixed_small", "posterior_var"), ("fixed_large", "betas")):
        diffusion = heart.make_diffusion(heart.parse_args(["--T", "20", "--variance", variance]))
        x_t = np.zeros((1, 2), dtype=diffusion.model.dtype)
        _, log_var = diffusion.chain().kernel(x_t, np.array([10]))
        np.testing.assert_allclose(np.exp(log_var), getattr(diffusion.schedule, expected)[10], rtol=1e-6)


@pytest.mark.parametrize("flags, message", [
    (["--steps", "0"], "--steps must be >= 1"),
    (["--lr", "nan"], "--lr must be a finite number > 0"),
    (["--ema", "1"], "--ema must be a finite number in [0, 1)"),
    (["--batch-size", "9000"], "--batch-size must be at most the 8000 training points"),
    (["--sampler", "ancestral", "--ddim-steps", "10"], "--ddim-steps belongs to --sampler ddim"),
    (["--clip-x0", "wide"], "--clip-x0 must be a number"),
    (["--variance", "learned_range"], "invalid choice"),
])
def test_bad_flags_are_refused_in_one_line(flags, message, capsys):
    with pytest.raises(SystemExit) as info:
        heart.parse_args(flags)
    text = capsys.readouterr().err
    assert info.value.code == 2 and text.startswith("heart.py: error: ") and message in text, text
    assert text.strip().count("\n") == 0, text  # no usage block
