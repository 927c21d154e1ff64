"""demos/inpainting.py: the quick run conditions a tiny image model on every task, the class-Gaussian baselines
are the exact Gaussian posteriors, bad flags and a missing checkpoint give one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from npdiff import Diffusion, Schedule
from npdiff.images import idx
from npdiff.processes import conditioning
from npdiff.processes.oracles import GaussianOracle

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "demos"))
import inpainting  # noqa: E402
from test_demo_mnist import write_tiny_dataset  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Tiny IDX data (bars) and a tiny class-conditional image model trained on it for 60 steps: (data, checkpoint)."""
    root = tmp_path_factory.mktemp("tiny")
    write_tiny_dataset(root, n_train=200, n_test=80)  # the judge needs held-out images beyond its features
    images, labels = idx.load_mnist(root, "train")
    diffusion = Diffusion(784, T=50, schedule_kwargs={"scale_to_T": True}, prediction="v", num_classes=10, hidden=32,
                          n_blocks=1, emb_dim=16, embed_coords=False, layernorm=True, final_layernorm=True, seed=0)
    diffusion.fit(idx.images_to_vectors(images), steps=60, labels=labels.astype(np.int64), batch_size=32, lr=2e-3,
                  ema=0.9)
    diffusion.save(root / "checkpoint.npz")
    return root, root / "checkpoint.npz"


def test_quick_demo_keeps_the_given_pixels_fills_the_missing_ones_and_denoises_towards_each_image(tmp_path, run_demo,
                                                                                                   tiny):
    data, checkpoint = tiny
    out = tmp_path / "inpaint"
    run = run_demo("inpainting.py", "--quick", "--checkpoint", checkpoint, "--data", data, "--out", out)
    assert run.returncode == 0, run.stdout + run.stderr
    results = json.loads((out / "results.json").read_text())
    names, tasks = results["row_names"], results["tasks"]
    assert tasks == ["bottom half", "centre 14×14", "denoise s = 0.5"]
    npdiff_rows = ["npdiff paper, no label", "npdiff replace, no label", "npdiff paper, label, w = 2"]
    assert [name for name in names if name.startswith("npdiff")] == [*npdiff_rows, "npdiff from t* = 8 (denoise only)"]
    assert list(results["rows"]["npdiff from t* = 8 (denoise only)"]) == ["denoise s = 0.5"]
    for name in names:
        assert name in run.stdout and set(results["rows"][name]) <= set(tasks)
    z = np.load(out / "completions.npz")
    x0, labels = z["x0"], z["labels"]
    assert x0.shape == (10, 784) and list(labels) == list(range(10))  # classes in turn
    for t in (0, 1):  # inpainting: the given pixels exactly (v = 0 clamps), the missing ones completed
        obs = z[f"task{t}/observation"]
        known = ~np.isnan(obs)
        assert known.sum() == 10 * (392 if t == 0 else 784 - 196)
        assert np.array_equal(obs[known], x0[known])
        for name in npdiff_rows:
            c = z[f"task{t}/row{names.index(name)}"]
            assert np.array_equal(c[known], obs[known]), name
            assert np.isfinite(c).all() and c.min() >= -1.0 and c.max() <= 1.0, name
            assert np.abs(c[~known] - inpainting.FILL).mean() > 0.1, name  # not left as the mask's fill
        paper, _, labelled = (z[f"task{t}/row{names.index(name)}"][~known] for name in npdiff_rows)
        assert np.abs(paper - labelled).max() > 0.1  # one seed for every chain: the label changes the row
        gauss = z[f"task{t}/row{names.index('class Gaussian posterior (label)')}"]
        assert np.array_equal(gauss[known], obs[known]) and np.isfinite(gauss).all()
    y = z["task2/observation"]
    assert 0.4 < np.sqrt(((y - x0) ** 2).mean()) < 0.6  # y = x0 + N(0, 0.5²)
    for name in [*npdiff_rows, "npdiff from t* = 8 (denoise only)"]:  # each its own original's, not ignoring y
        c = z[f"task2/row{names.index(name)}"].astype(np.float64)
        own = np.sqrt(((c - x0) ** 2).mean())
        other = np.sqrt(((c - np.roll(x0, 1, axis=0)) ** 2).mean())
        assert own < 0.85 * other, (name, own, other)
        assert results["rows"][name]["denoise s = 0.5"]["rmse"] == pytest.approx(own, abs=1e-3)
    paper, replace = (z[f"task2/row{names.index(name)}"] for name in npdiff_rows[:2])
    assert np.abs(paper - replace).mean() > 0.005  # … and so does the method (≈ 0.02; r_t differs at every step)
    assert results["rows"]["original (the judge's ceiling)"]["bottom half"]["rmse"] == 0.0
    assert (out / "inpainting.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "classifier.npz").stat().st_size > 0
    assert run.stdout.strip().splitlines()[-1] == str(out.resolve())


@pytest.mark.parametrize("schedule", [Schedule(1000, "linear"), Schedule(50, "cosine")], ids=["linear1000", "cosine50"])
def test_denoising_from_t_star_samples_the_gaussian_posterior_at_the_topped_up_noise(schedule):
    bundle = SimpleNamespace(schedule=schedule, ema=None, chain=lambda clip_x0: GaussianOracle(schedule, 2.0, 2))
    n, s, y = 40_000, 0.5, np.array([1.2, -1.0])
    x, t_star, _ = inpainting.denoise_from_t_star(bundle, np.tile(y, (n, 1)), s, seed=0)
    ab = schedule.alpha_bar[t_star]
    assert ab * s * s <= 1 - ab and schedule.alpha_bar[t_star - 1] * s * s > 1 - schedule.alpha_bar[t_star - 1]
    # x0 | y + u with u ~ N(0, 1/ᾱ − 1 − s²), prior N(0, 2): mean k y, variance 2 s'²/(2 + s'²) + k² var(u)
    s2 = 1 / ab - 1  # s'²
    k = 2 / (2 + s2)
    mean, var = k * y, 2 * s2 / (2 + s2) + k * k * (s2 - s * s)
    assert np.all(np.abs(x.mean(axis=0) - mean) < 5 * np.sqrt(var / n))
    assert np.all(np.abs(x.var(axis=0) - var) < 5 * var * np.sqrt(2 / n))
    exact_mean, _ = conditioning.gaussian_posterior(np.zeros(2), 2.0 * np.eye(2), observed=y, noise_std=s)
    assert np.abs(mean - exact_mean).max() < (0.002 if schedule.T == 1000 else 0.02)  # s' ≈ s
    if schedule.T == 1000:  # ᾱ_T = 4e-5: s = 200 is beyond the noise of x_T, there is no t*
        assert inpainting.denoise_from_t_star(bundle, np.tile(y, (2, 1)), 200.0, seed=0)[0] is None


def _gaussian(d: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((d, d))
    return rng.standard_normal(d), a @ a.T / d + 0.1 * np.eye(d)


def test_the_class_gaussian_baselines_are_the_exact_gaussian_posterior_means():
    mu, cov = _gaussian(6)
    x = np.random.default_rng(1).standard_normal((3, 6))
    labels = np.zeros(3, dtype=np.int64)
    known = np.array([True, False, True, True, False, False])
    got = inpainting.gaussian_inpaint(mu[None], cov[None], np.where(known, x, np.nan), labels, known)
    for row, g in zip(x, got):  # the ridge λ is an observation of the given pixels with variance λ
        s = np.where(known, np.sqrt(inpainting.RIDGE), np.inf)
        mean, _ = conditioning.gaussian_posterior(mu, cov, observed=row, noise_std=s)
        np.testing.assert_allclose(g[~known], mean[~known], rtol=1e-10, atol=1e-12)
        np.testing.assert_array_equal(g[known], row[known])
    got = inpainting.gaussian_denoise(mu[None], cov[None], x, labels, 0.7)
    for row, g in zip(x, got):
        mean, _ = conditioning.gaussian_posterior(mu, cov, observed=row, noise_std=0.7)
        np.testing.assert_allclose(g, mean, rtol=1e-10, atol=1e-12)


def test_each_image_uses_the_gaussian_of_its_own_class():
    (mu0, cov0), (mu1, cov1) = _gaussian(4, 0), _gaussian(4, 1)
    mu, cov = np.stack([mu0, mu1]), np.stack([cov0, cov1])
    y = np.random.default_rng(2).standard_normal((2, 4))
    got = inpainting.gaussian_denoise(mu, cov, y, np.array([1, 0]), 0.5)
    np.testing.assert_allclose(got[0], conditioning.gaussian_posterior(mu1, cov1, observed=y[0], noise_std=0.5)[0])
    np.testing.assert_allclose(got[1], conditioning.gaussian_posterior(mu0, cov0, observed=y[1], noise_std=0.5)[0])


def test_masks_and_held_out_images():
    m = inpainting.masks((28, 28), 14)
    top, frame = m["bottom half"].reshape(28, 28), m["centre 14×14"].reshape(28, 28)
    assert top[:14].all() and not top[14:].any()
    assert not frame[7:21, 7:21].any() and frame.sum() == 784 - 196
    with pytest.raises(ValueError, match="--square must be smaller than the image"):
        inpainting.masks((28, 28), 28)
    labels = np.repeat(np.arange(3), [5, 2, 4])
    chosen = inpainting.held_out(labels, 7, 0)
    assert list(labels[chosen]) == [0, 1, 2, 0, 1, 2, 0] and len(set(chosen)) == 7
    with pytest.raises(ValueError, match="exceeds the 11 test images"):
        inpainting.held_out(labels, 12, 0)


@pytest.mark.parametrize("flags, message", [
    (["--n", "0"], "--n must be >= 1"),
    (["--noise-std", "0"], "--noise-std must be a finite number > 0"),
    (["--guidance", "nan"], "--guidance must be a finite number >= 0"),
    (["--methods", "exact"], "invalid choice: 'exact'"),
    (["--square", "x"], "invalid int value"),
])
def test_bad_flags_exit_with_one_line(flags, message, capsys):
    with pytest.raises(SystemExit) as info:
        inpainting.parse_args(flags)
    text = capsys.readouterr().err
    assert info.value.code == 2 and message in text and text.strip().count("\n") == 0, text


def test_a_missing_checkpoint_from_the_shell_prints_one_line(tmp_path, run_demo, tiny):
    data, _ = tiny
    run = run_demo("inpainting.py", "--quick", "--data", data, "--checkpoint", tmp_path / "none.npz",
                   "--out", tmp_path / "x")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    last = run.stderr.strip()
    assert last.count("\n") == 0
    assert last.startswith(f"inpainting.py: error: no checkpoint at {tmp_path / 'none.npz'}: train one")
