"""demos/heart.py --quick, run as a user runs it: every output is written and the samples trace the heart."""

from __future__ import annotations

import re

import numpy as np

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


def test_the_untrained_heart_model_fails_the_demos_quality_bar():
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "demos"))
    import heart

    from npdiff import data, metrics

    args = heart.parse_args(["--quick"])
    samples = heart.make_diffusion(args).sample(2000, seed=0)
    assert metrics.chamfer(samples, data.heart_curve(20_000)) > 3 * MAX_CHAMFER
