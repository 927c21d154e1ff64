"""Tests of npdiff.metrics: Chamfer, sliced Wasserstein-1 and MMD² against hand values and identities."""

import math

import numpy as np
import pytest

from npdiff import data, metrics


def rng(seed=0):
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------- Chamfer


def test_chamfer_of_a_set_with_itself_is_exactly_zero():
    x = rng().standard_normal((300, 3)) * 100.0  # large norms: the expansion alone would not give 0
    assert metrics.chamfer(x, x) == 0.0


def test_chamfer_is_symmetric():
    a, b = rng(1).standard_normal((50, 2)), rng(2).standard_normal((80, 2)) + 0.3
    assert metrics.chamfer(a, b) == pytest.approx(metrics.chamfer(b, a), rel=1e-14)


def test_chamfer_hand_computed_example():
    a = np.array([[0.0, 0.0], [3.0, 0.0]])
    b = np.array([[0.0, 1.0]])
    # a → b: distances 1 and √10, mean (1 + √10)/2; b → a: nearest is (0,0), distance 1
    expected = 0.5 * ((1.0 + math.sqrt(10.0)) / 2.0 + 1.0)
    assert metrics.chamfer(a, b) == pytest.approx(expected, rel=1e-14)


def test_chamfer_single_point_translation_gives_delta():
    p = np.array([[1.5, -2.0]])
    delta = np.array([0.3, -0.4])  # |δ| = 0.5
    assert metrics.chamfer(p, p + delta) == pytest.approx(0.5, rel=1e-14)


def test_chamfer_chunked_equals_unchunked_and_brute_force():
    a, b = rng(3).standard_normal((137, 2)), rng(4).standard_normal((411, 2))
    d = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=2)  # (N, M) brute force
    brute = 0.5 * (d.min(axis=1).mean() + d.min(axis=0).mean())
    for chunk in (1, 7, 64, 10_000):
        assert metrics.chamfer(a, b, chunk=chunk) == pytest.approx(brute, rel=1e-13)


def test_chamfer_of_true_heart_samples_is_the_small_floor():
    samples = data.heart(2000, rng())
    reference = data.heart_curve(20000)
    cd = metrics.chamfer(samples, reference)
    assert 0.0 < cd < 0.004  # exact samples of the curve: only the sampling gap remains (~0.0027)


def test_chamfer_rejects_bad_inputs():
    with pytest.raises(ValueError, match="same dimension D, got 2 and 3"):
        metrics.chamfer(np.zeros((4, 2)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"shape \(N, D\)"):
        metrics.chamfer(np.zeros(4), np.zeros((4, 1)))
    with pytest.raises(ValueError, match="non-finite"):
        metrics.chamfer(np.array([[np.nan, 0.0]]), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="chunk"):
        metrics.chamfer(np.zeros((4, 2)), np.zeros((4, 2)), chunk=0)


# ----------------------------------------------------------------------------- sliced Wasserstein


def test_sliced_w1_of_a_1d_shift_is_the_shift():
    x = rng().standard_normal((500, 1))
    assert metrics.sliced_wasserstein(x, x + 0.7, n_projections=8, rng=rng(1)) == pytest.approx(0.7, rel=1e-12)


def test_sliced_w1_of_a_2d_shift_is_shift_times_mean_abs_cos():
    x = rng().standard_normal((400, 2))
    delta = np.array([2.0, 0.0])
    sw = metrics.sliced_wasserstein(x, x + delta, n_projections=2000, rng=rng(1))
    # E|cos θ| = 2/π; Monte Carlo std of the mean over 2000 directions ≈ 0.31·2/√2000 ≈ 0.014
    assert sw == pytest.approx(2.0 * 2.0 / math.pi, abs=0.05)


def test_sliced_w1_unequal_sizes():
    x = rng().standard_normal((300, 2))
    doubled = np.concatenate([x, x])  # same empirical distribution, twice the points
    assert metrics.sliced_wasserstein(x, doubled, rng=rng(1)) == pytest.approx(0.0, abs=1e-12)
    assert metrics.sliced_wasserstein(x[:, :1], doubled[:, :1] + 0.25, rng=rng(1)) == pytest.approx(0.25, rel=1e-12)


def test_w1_1d_unequal_sizes_matches_hand_value():
    # a = {0, 1}, b = {0, 0.5, 1}: F − G is +1/6 on [0, 0.5) and −1/6 on [0.5, 1) → W₁ = 1/6
    got = metrics._w1_1d(np.array([[0.0], [1.0]]), np.array([[0.0], [0.5], [1.0]]))
    assert got[0] == pytest.approx(1.0 / 6.0, rel=1e-14)


def test_w1_1d_matches_scipy_when_available(crosscheck):
    stats = crosscheck("scipy.stats")
    a, b = rng(5).standard_normal((37, 1)), rng(6).exponential(size=(53, 1))
    assert metrics._w1_1d(a, b)[0] == pytest.approx(stats.wasserstein_distance(a[:, 0], b[:, 0]), rel=1e-12)


def test_sliced_w1_is_deterministic_given_rng_and_checks_inputs():
    a, b = rng(1).standard_normal((60, 3)), rng(2).standard_normal((60, 3))
    assert metrics.sliced_wasserstein(a, b, rng=rng(9)) == metrics.sliced_wasserstein(a, b, rng=rng(9))
    with pytest.raises(ValueError, match="same dimension D, got 3 and 2"):
        metrics.sliced_wasserstein(a, b[:, :2], rng=rng())
    with pytest.raises(ValueError, match="n_projections"):
        metrics.sliced_wasserstein(a, b, 0, rng=rng())
    with pytest.raises(TypeError, match="Generator"):
        metrics.sliced_wasserstein(a, b, rng=0)


# ----------------------------------------------------------------------------- MMD


def test_mmd_is_near_zero_for_the_same_distribution_and_positive_for_a_shift():
    a, b = rng(1).standard_normal((400, 2)), rng(2).standard_normal((400, 2))
    same = metrics.mmd_rbf(a, b)
    shifted = metrics.mmd_rbf(a, b + np.array([1.0, 0.0]))
    assert abs(same) < 0.005  # unbiased: fluctuates around 0, std ~ 1/N
    assert shifted > 0.05  # ≈ 0.1–0.15 for this shift across seeds
    assert shifted > 20 * abs(same)


def test_mmd_matches_brute_force_estimator():
    a, b = rng(3).standard_normal((30, 2)), rng(4).standard_normal((45, 2)) + 0.5
    h = 0.8

    def k(x, y):
        return np.exp(-((x[:, None, :] - y[None, :, :]) ** 2).sum(-1) / (2 * h * h))

    kaa, kbb = k(a, a), k(b, b)
    expected = (
        (kaa.sum() - np.trace(kaa)) / (30 * 29) + (kbb.sum() - np.trace(kbb)) / (45 * 44) - 2 * k(a, b).mean()
    )
    assert metrics.mmd_rbf(a, b, bandwidth=h, chunk=7) == pytest.approx(expected, rel=1e-10)


def test_median_bandwidth_hand_value():
    a, b = np.array([[0.0], [1.0]]), np.array([[3.0]])
    # pairwise distances 1, 3, 2 → median 2
    assert metrics.median_bandwidth(a, b) == pytest.approx(2.0)


def test_mmd_rejects_bad_inputs():
    a = rng().standard_normal((10, 2))
    with pytest.raises(ValueError, match="same dimension D"):
        metrics.mmd_rbf(a, a[:, :1])
    with pytest.raises(ValueError, match="at least 2 points"):
        metrics.mmd_rbf(a, a[:1])
    with pytest.raises(ValueError, match="bandwidth"):
        metrics.mmd_rbf(a, a, bandwidth=-1.0)
    with pytest.raises(ValueError, match="median pairwise distance is 0"):
        metrics.mmd_rbf(np.zeros((3, 2)), np.zeros((3, 2)))
