"""Likelihood bounds: the Gaussian oracles for the exact decomposition and the Monte-Carlo estimator, units."""

import math

import numpy as np
import pytest

from npdiff.processes import ddpm, likelihood, oracles, sohl_dickstein as sd
from npdiff.processes.schedules import Schedule

LOG_2PIE_HALF = 0.5 * math.log(2 * math.pi * math.e)  # 1.418939 nats per dim


@pytest.mark.parametrize("T, name, n", [(40, "sohl_dickstein", 3000), (1000, "linear", 1000)])
def test_exact_decomposition_oracle_standard_normal(T, name, n):
    """x_0 ~ N(0, I), exact kernel N(√α_t x_t, β_t): L_T + Σ L_{t−1} + L_0 = −½ log(2πe) per dim, within 3 SE."""
    rng = np.random.default_rng(T)
    bound = likelihood.exact_bound(oracles.GaussianOracle(Schedule(T, name)), rng.standard_normal((n, 2)), rng)
    assert abs(bound.nats / 2 + LOG_2PIE_HALF) < 3 * bound.se / 2
    assert bound.se / 2 < 0.06


@pytest.mark.parametrize("T", [40, 1000])
def test_exact_decomposition_of_the_sohl_dickstein_chain_at_its_oracle(T):
    """The zero-output chain (forward kernel, fixed last step) through the general decomposition."""
    rng = np.random.default_rng(T + 1)
    model = sd.make_model(2, zero_output=True, hidden=8, n_blocks=1, emb_dim=4, dtype="float64")
    chain = sd.SohlDicksteinChain(model, Schedule(T, "sohl_dickstein"))
    bound = likelihood.exact_bound(chain, rng.standard_normal((2000 if T == 40 else 200, 2)), rng)
    assert abs(bound.nats / 2 + LOG_2PIE_HALF) < 3 * bound.se / 2


def test_monte_carlo_oracle_at_T1000_with_importance_sampling():
    rng = np.random.default_rng(7)
    oracle = oracles.GaussianOracle(Schedule(1000, "linear"))
    probs = likelihood.importance_probs(oracle, rng.standard_normal((32, 2)), rng)
    bound = likelihood.mc_bound(oracle, rng.standard_normal((20000, 2)), rng, n_t=2, t_probs=probs)
    assert abs(bound.nats / 2 + LOG_2PIE_HALF) < 3 * bound.se / 2
    assert bound.se / 2 < 0.05


@pytest.mark.parametrize("T, name, kwargs", [(40, "linear", {}), (1000, "linear", {})])
def test_scaled_gaussian_oracle(T, name, kwargs):
    """x_0 ~ N(0, s² I): −½ log(2πe s²) − KL(N(0, v_T) ‖ N(0, 1)) per dim (T = 40 linear: ᾱ_T ≈ 0.67, KL ≈ 0.1)."""
    rng = np.random.default_rng(11)
    s2, s = 0.25, Schedule(T, name, **kwargs)
    oracle = oracles.GaussianOracle(s, s2)
    x0 = math.sqrt(s2) * rng.standard_normal((2000 if T == 40 else 300, 2))
    bound = likelihood.exact_bound(oracle, x0, rng)
    want = -0.5 * math.log(2 * math.pi * math.e * s2) - s.prior_kl(s2)
    assert abs(bound.nats / 2 - want) < 3 * bound.se / 2
    if T == 40:
        assert s.prior_kl(s2) > 0.05 and bound.se / 2 < 0.03  # the prior term matters and is resolved


def test_epsilon_chain_with_exact_eps_and_fixed_large_variance_is_tight():
    """ε-model adapter: the exact ε of N(0, I) data with σ_t² = β_t is the exact reverse kernel."""
    rng = np.random.default_rng(12)
    s = Schedule(40, "sohl_dickstein")
    eps_oracle = oracles.GaussianEpsilon(s, np.zeros(2), np.eye(2))
    x0 = rng.standard_normal((2000, 2))
    large = likelihood.exact_bound(ddpm.EpsilonChain(eps_oracle, s, "fixed_large"), x0, rng)
    assert abs(large.nats / 2 + LOG_2PIE_HALF) < 3 * large.se / 2
    small = likelihood.exact_bound(ddpm.EpsilonChain(eps_oracle, s, "fixed_small"), x0, rng)
    assert small.nats < large.nats - 3 * math.hypot(small.se, large.se)  # β̃ is not the true variance here


def test_monte_carlo_agrees_with_exact_on_a_random_chain():
    rng = np.random.default_rng(13)
    s = Schedule(20, "sohl_dickstein")
    chain = sd.SohlDicksteinChain(sd.make_model(2, zero_output=False, hidden=8, n_blocks=1, emb_dim=4,
                                                dtype="float64", seed=2), s)
    x0 = rng.standard_normal((3000, 2))
    exact = likelihood.exact_bound(chain, x0, rng)
    mc = likelihood.mc_bound(chain, x0, rng, n_t=4)
    k_exact = likelihood.eq14_bound(chain, x0, rng, exact=True)
    assert abs(exact.nats - mc.nats) < 3 * math.hypot(exact.se, mc.se)
    # Eq. 14 and the decomposition differ only by the t = 1 and prior terms' dependence on E[x_0²] ≈ 1
    assert abs(exact.nats - k_exact.nats) < 3 * math.hypot(exact.se, k_exact.se)
    assert exact.nats < -2 * LOG_2PIE_HALF - 0.1  # a random kernel is measurably worse than the oracle


def test_units_and_data_coordinates():
    values, null = np.array([-3.0, -2.0, -4.0]), np.array([-2.5, -2.5, -2.5])
    b = likelihood.Bound(values, null, dim=2, log_det=math.log(2.0) * 2)
    assert b.nats == pytest.approx(-3.0) and b.se == pytest.approx(np.std(values, ddof=1) / math.sqrt(3))
    assert b.nats_data == pytest.approx(-3.0 - 2 * math.log(2.0)) and b.nll_data == pytest.approx(-b.nats_data)
    assert b.gain == pytest.approx(-0.5)
    assert "bits/point" in b.summary() and f"{-3.0 / math.log(2):.4f}" in b.summary()


def test_rejects_bad_importance_probabilities():
    oracle = oracles.GaussianOracle(Schedule(10, "linear"))
    with pytest.raises(ValueError, match="t_probs"):
        likelihood.mc_bound(oracle, np.zeros((4, 2)), np.random.default_rng(0), t_probs=np.full(10, 0.2))
