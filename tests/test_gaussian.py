"""Closed-form diagonal-Gaussian algebra: hand values, quadrature, KL properties, finite-difference gradients."""

import math

import numpy as np
import pytest

from npdiff.processes import gaussian
from npdiff.nn.gradcheck import numerical_gradient


def rel_error(a, n) -> float:
    """max over elements of |a − n| / max(1e-12, |a| + |n|)."""
    a, n = np.asarray(a, dtype=np.float64), np.asarray(n, dtype=np.float64)
    return float(np.max(np.abs(a - n) / np.maximum(1e-12, np.abs(a) + np.abs(n))))


def quad(f, lo, hi, n=200001):
    """Trapezoid rule on a fine grid; error ~1e-10 for the smooth, fast-decaying integrands used here."""
    x = np.linspace(lo, hi, n)
    return np.trapezoid(f(x), x)


def test_log_density_of_standard_normal_at_zero():
    assert gaussian.log_density(np.array(0.0), np.array(0.0), np.array(0.0)) == pytest.approx(-0.9189385332046727, abs=1e-15)


def test_log_density_matches_scalar_formula():
    for x, mu, var in [(1.3, -0.2, 0.5), (-4.0, 0.0, 9.0), (0.1, 0.1, 1e-3)]:
        want = -0.5 * math.log(2 * math.pi * var) - (x - mu) ** 2 / (2 * var)
        got = gaussian.log_density(np.array(x), np.array(mu), np.log(np.array(var)))
        assert got == pytest.approx(want, rel=1e-14)


def test_log_density_integrates_to_one():
    mu, log_var = 0.7, math.log(2.5)
    total = quad(lambda x: np.exp(gaussian.log_density(x, mu, log_var)), -20.0, 20.0)
    assert total == pytest.approx(1.0, abs=1e-10)


def test_entropy_equals_minus_expected_log_density_by_quadrature():
    for mu, var in [(0.0, 1.0), (-1.5, 0.04), (3.0, 7.0)]:
        sd, log_var = math.sqrt(var), math.log(var)

        def integrand(x):
            logp = gaussian.log_density(x, mu, log_var)
            return -np.exp(logp) * logp

        want = quad(integrand, mu - 15 * sd, mu + 15 * sd)
        assert gaussian.entropy(np.array(log_var)) == pytest.approx(want, abs=1e-9)
    assert gaussian.entropy(np.array(0.0)) == pytest.approx(1.4189385332046727, abs=1e-15)


def test_kl_of_a_distribution_with_itself_is_zero():
    rng = np.random.default_rng(0)
    mean, log_var = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    np.testing.assert_allclose(gaussian.kl(mean, log_var, mean, log_var), 0.0, atol=1e-15)


def test_kl_hand_values():
    zero = np.array(0.0)
    assert gaussian.kl(zero, zero, np.array(1.0), zero) == pytest.approx(0.5, rel=1e-15)  # shifted mean
    assert gaussian.kl(zero, np.log(4.0), zero, zero) == pytest.approx(0.5 * (3.0 - math.log(4.0)), rel=1e-14)
    assert gaussian.kl(zero, zero, zero, np.array(2.0)) == pytest.approx(0.5 * (1.0 + math.exp(-2.0)), rel=1e-14)
    # KL(N(1, 2) ‖ N(−1, 0.5)) = ½(log 0.25 + (2 + 4)/0.5 − 1)
    got = gaussian.kl(np.array(1.0), np.log(2.0), np.array(-1.0), np.log(0.5))
    assert got == pytest.approx(0.5 * (math.log(0.25) + 12.0 - 1.0), rel=1e-14)


def test_kl_matches_quadrature():
    mq, vq, mp, vp = 0.3, 0.8, -0.4, 1.7

    def integrand(x):
        logq = gaussian.log_density(x, mq, math.log(vq))
        return np.exp(logq) * (logq - gaussian.log_density(x, mp, math.log(vp)))

    want = quad(integrand, -15.0, 15.0)
    assert gaussian.kl(np.array(mq), np.log(vq), np.array(mp), np.log(vp)) == pytest.approx(want, abs=1e-9)


def test_kl_is_nonnegative_and_asymmetric():
    rng = np.random.default_rng(1)
    args = [rng.normal(scale=2.0, size=1000) for _ in range(4)]
    forward = gaussian.kl(*args)
    assert np.all(forward >= 0.0)
    assert not np.allclose(forward, gaussian.kl(args[2], args[3], args[0], args[1]))


def test_float32_inputs_give_float32_outputs():
    rng = np.random.default_rng(2)
    a, b, c, d, g = (rng.normal(size=(4, 3)).astype(np.float32) for _ in range(5))
    assert gaussian.log_density(a, b, c).dtype == np.float32
    assert gaussian.entropy(c).dtype == np.float32
    assert gaussian.kl(a, b, c, d).dtype == np.float32
    assert all(x.dtype == np.float32 for x in gaussian.log_density_backward(a, b, c, g))
    assert all(x.dtype == np.float32 for x in gaussian.kl_backward(a, b, c, d, g))


@pytest.mark.parametrize("var_shape", [(3, 4), (4,), (1, 4)], ids=["full", "broadcast", "keepdims"])
def test_log_density_backward_matches_finite_differences(var_shape):
    rng = np.random.default_rng(3)
    x, mean, dlogp = rng.normal(size=(3, 4)), rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    log_var = rng.normal(scale=0.5, size=var_shape)

    def loss():
        return float(np.sum(gaussian.log_density(x, mean, log_var) * dlogp))

    dmean, dlog_var = gaussian.log_density_backward(x, mean, log_var, dlogp)
    assert dmean.shape == mean.shape and dlog_var.shape == log_var.shape
    assert rel_error(dmean, numerical_gradient(loss, mean)) < 1e-7
    assert rel_error(dlog_var, numerical_gradient(loss, log_var)) < 1e-7


@pytest.mark.parametrize("var_shape", [(3, 4), (4,)], ids=["full", "broadcast"])
def test_kl_backward_matches_finite_differences(var_shape):
    rng = np.random.default_rng(4)
    mean_q, log_var_q, mean_p, dkl = (rng.normal(size=(3, 4)) for _ in range(4))
    log_var_p = rng.normal(scale=0.5, size=var_shape)

    def loss():
        return float(np.sum(gaussian.kl(mean_q, log_var_q, mean_p, log_var_p) * dkl))

    dmean_p, dlog_var_p = gaussian.kl_backward(mean_q, log_var_q, mean_p, log_var_p, dkl)
    assert dmean_p.shape == mean_p.shape and dlog_var_p.shape == log_var_p.shape
    assert rel_error(dmean_p, numerical_gradient(loss, mean_p)) < 1e-7
    assert rel_error(dlog_var_p, numerical_gradient(loss, log_var_p)) < 1e-7


def test_kl_gradient_vanishes_at_the_minimum():
    rng = np.random.default_rng(5)
    mean, log_var = rng.normal(size=(2, 3)), rng.normal(size=(2, 3))
    for g in gaussian.kl_backward(mean, log_var, mean, log_var, np.ones((2, 3))):
        np.testing.assert_allclose(g, 0.0, atol=1e-15)
