"""The ODE log-likelihood (npdiff.processes.ode_likelihood): exact on Gaussian data, its traces through the
denoisers' hand-written vector–Jacobian products, and Hutchinson's estimate."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from npdiff.nn.denoiser import Denoiser
from npdiff.processes import flow, ode
from npdiff.processes.ddpm import EpsilonChain
from npdiff.processes.ode_likelihood import (model_sigmas, ode_log_likelihood, trace_exact, trace_hutchinson)
from npdiff.processes.oracles import GaussianDenoiser
from npdiff.processes.predictions import PREDICTIONS
from npdiff.processes.schedules import Schedule

MEAN = np.array([0.5, -1.0, 0.3])
Q = np.linalg.qr(np.random.default_rng(0).standard_normal((3, 3)))[0]
COV = (Q * np.array([0.2, 0.7, 2.0])) @ Q.T


def test_ode_likelihood_of_the_exact_denoiser_is_the_gaussian_log_density():
    oracle = GaussianDenoiser(MEAN, COV)
    x = np.random.default_rng(1).multivariate_normal(MEAN, COV, size=20)
    errors = []
    for steps in (200, 400):
        sigmas = np.geomspace(0.01, 50.0, steps + 1)
        result = ode_log_likelihood(oracle, x, sigmas, log_prior=oracle.log_marginal)
        errors.append(np.abs(result.values - oracle.log_marginal(x, 0.01)).max())
    assert errors[1] < 2e-3, errors  # log N(x; m, S + σ_min² I), to Heun's tolerance
    assert errors[0] / errors[1] == pytest.approx(4.0, rel=0.1)  # second order: half the step, a quarter the error
    # and σ_min → 0 approaches log N(x; m, S) itself
    sigmas = np.geomspace(1e-3, 50.0, 801)
    result = ode_log_likelihood(oracle, x, sigmas, log_prior=oracle.log_marginal)
    np.testing.assert_allclose(result.values, oracle.log_marginal(x, 0.0), atol=2e-3)


def test_the_default_prior_is_exact_for_standard_normal_data():
    # data N(0, I): the marginal at σ is N(0, (1 + σ²) I), the VP prior the sampler starts from
    oracle = GaussianDenoiser(np.zeros(2), np.eye(2))
    x = np.random.default_rng(2).standard_normal((10, 2))
    sigmas = np.geomspace(0.01, 20.0, 401)
    result = ode_log_likelihood(oracle, x, sigmas)
    exact_prior = ode_log_likelihood(oracle, x, sigmas, log_prior=oracle.log_marginal)
    np.testing.assert_allclose(result.values, exact_prior.values, rtol=0, atol=1e-12)
    expected = -0.5 * ((x * x).sum(axis=1) / (1 + 1e-4) + 2 * math.log(2 * math.pi * (1 + 1e-4)))
    np.testing.assert_allclose(result.values, expected, atol=1e-3)  # Heun's error on 400 steps
    assert result.bits_per_dim == pytest.approx(-result.nats / (2 * math.log(2)), rel=1e-14)
    assert "nats" in result.summary() and "bits/dim" in result.summary()


def _network_denoisers():
    schedule = Schedule(40)
    rng = np.random.default_rng(3)
    out = []
    for prediction in PREDICTIONS:
        model = Denoiser(3, hidden=12, n_blocks=1, emb_dim=4, coord_scale=1.0, dtype="float64", seed=1)
        out.append((prediction, ode.ChainDenoiser(EpsilonChain(model, schedule, prediction=prediction, max_gain=None))))
    labelled = Denoiser(3, hidden=12, n_blocks=1, emb_dim=4, coord_scale=1.0, num_classes=2, dtype="float64", seed=2)
    chain = EpsilonChain(labelled, schedule, labels=rng.integers(0, 2, 4), guidance=1.5, max_gain=None)
    out.append(("guided", ode.ChainDenoiser(chain)))
    learned = Denoiser(3, out_dim=6, hidden=12, n_blocks=1, emb_dim=4, coord_scale=1.0, dtype="float64", seed=4)
    out.append(("learned-range", ode.ChainDenoiser(EpsilonChain(learned, schedule, "learned_range", max_gain=None))))
    flow_model = Denoiser(3, hidden=12, n_blocks=1, emb_dim=4, coord_scale=1.0, dtype="float64", seed=5)
    out.append(("flow", flow.FlowDenoiser(flow.FlowVelocity(flow_model, flow.FlowTime(1000)))))
    return out


def _level(denoiser):
    return denoiser.sigmas[17] if hasattr(denoiser, "sigmas") else denoiser.round_sigma(0.8)


@pytest.mark.parametrize("name,denoiser", _network_denoisers(), ids=lambda v: v if isinstance(v, str) else "")
def test_denoiser_vjp_equals_central_differences(name, denoiser):
    y = np.random.default_rng(6).standard_normal((4, 3))
    u = np.random.default_rng(7).standard_normal((4, 3))
    sigma, h = _level(denoiser), 1e-5
    numeric = np.zeros_like(y)
    for i in range(3):  # (uᵀJ)_i = Σ_j u_j ∂D_j/∂y_i, row by row
        step = np.zeros(3)
        step[i] = h
        numeric[:, i] = ((denoiser(y + step, sigma) - denoiser(y - step, sigma)) * u).sum(axis=1) / (2 * h)
    analytic = denoiser.vjp(y, sigma, u)
    assert np.linalg.norm(analytic - numeric) / np.linalg.norm(numeric) < 1e-8


@pytest.mark.parametrize("name,denoiser", _network_denoisers(), ids=lambda v: v if isinstance(v, str) else "")
def test_hutchinson_mean_over_every_sign_vector_is_the_exact_trace(name, denoiser):
    # E[zᵀJz] = tr J for Rademacher z: averaged over all 2^D sign vectors the off-diagonal terms cancel exactly
    y = np.random.default_rng(8).standard_normal((4, 3))
    sigma = _level(denoiser)
    signs = np.array(list(itertools.product([-1.0, 1.0], repeat=3)))  # (8, 3)
    probes = np.broadcast_to(signs, (4, 8, 3)).copy()
    np.testing.assert_allclose(trace_hutchinson(denoiser, y, sigma, probes), trace_exact(denoiser, y, sigma),
                               rtol=1e-12, atol=1e-12)


def test_vjp_leaves_the_models_gradients_as_they_were():
    model = Denoiser(3, hidden=12, n_blocks=1, emb_dim=4, dtype="float64", seed=1)
    model.flat_grads[...] = np.arange(model.flat_grads.size)
    denoiser = ode.ChainDenoiser(EpsilonChain(model, Schedule(40), max_gain=None))
    denoiser.vjp(np.ones((2, 3)), denoiser.sigmas[5], np.ones((2, 3)))
    np.testing.assert_array_equal(model.flat_grads, np.arange(model.flat_grads.size))


def test_hutchinson_likelihood_is_unbiased_for_the_exact_one():
    oracle = GaussianDenoiser(MEAN, COV)
    x = np.random.default_rng(9).multivariate_normal(MEAN, COV, size=400)
    sigmas = np.geomspace(0.01, 50.0, 101)
    exact = ode_log_likelihood(oracle, x, sigmas, log_prior=oracle.log_marginal)
    hutch = ode_log_likelihood(oracle, x, sigmas, trace="hutchinson", probes=2, rng=np.random.default_rng(10),
                               log_prior=oracle.log_marginal)
    diff = hutch.values - exact.values
    assert diff.std() > 1e-3  # the probes do add noise
    assert abs(diff.mean()) < 4 * diff.std(ddof=1) / math.sqrt(diff.size)


@pytest.mark.parametrize("prediction", ["eps", "v", "flow"])
def test_the_ode_density_of_an_untrained_network_integrates_to_one(prediction):
    # the ODE is a bijection, so exp(log p) is a normalised density for ANY network: ∫ p dx = 1 checks the
    # trace, the vjp, the prior and the integration together, end to end (1-D, a trapezoid over [−12, 12])
    model = Denoiser(1, hidden=16, n_blocks=1, emb_dim=8, coord_scale=1.0, dtype="float64", seed=3)
    if prediction == "flow":
        denoiser = flow.FlowDenoiser(flow.FlowVelocity(model, flow.FlowTime(100)))
        sigmas = np.array([k / (100 - k) for k in range(1, 51)])  # the levels t = k/K ≤ ½ as σ = t/(1 − t) ≤ 1
    else:
        denoiser = ode.ChainDenoiser(EpsilonChain(model, Schedule(20), prediction=prediction, max_gain=None))
        sigmas = model_sigmas(denoiser)
    x = np.linspace(-12.0, 12.0, 1201)[:, None]
    density = np.exp(ode_log_likelihood(denoiser, x, sigmas).values)
    assert density[0] < 1e-8 and density[-1] < 1e-8
    assert np.trapezoid(density, x[:, 0]) == pytest.approx(1.0, abs=1e-4)  # measured: 1 + 5e-8, 5e-8, 2.5e-5


def test_a_networks_likelihood_runs_on_its_levels_with_either_trace():
    chain = EpsilonChain(Denoiser(2, hidden=8, n_blocks=1, emb_dim=4, dtype="float64", seed=0), Schedule(30),
                         max_gain=None)
    denoiser = ode.ChainDenoiser(chain)
    x = np.random.default_rng(11).standard_normal((50, 2))
    sigmas = model_sigmas(denoiser)
    assert sigmas[0] == denoiser.sigmas[1] and sigmas[-1] == denoiser.sigmas[-1]
    exact = ode_log_likelihood(denoiser, x, sigmas)
    hutch = ode_log_likelihood(denoiser, x, sigmas, trace="hutchinson", probes=4, rng=np.random.default_rng(12))
    diff = hutch.values - exact.values
    assert np.isfinite(exact.values).all() and abs(diff.mean()) < 4 * diff.std(ddof=1) / math.sqrt(diff.size)
    with pytest.raises(ValueError, match="rng"):
        ode_log_likelihood(denoiser, x, sigmas, trace="hutchinson")
    with pytest.raises(ValueError, match="increasing"):
        ode_log_likelihood(denoiser, x, sigmas[::-1])


def test_the_ode_likelihood_runs_on_device_reading_back_only_its_result(strict_cupy):
    from npdiff import backend

    oracle = GaussianDenoiser(MEAN, COV)
    x = np.random.default_rng(13).multivariate_normal(MEAN, COV, size=10)
    sigmas = np.geomspace(0.01, 50.0, 41)
    strict_cupy.TRANSFERS.reset()
    on_device = ode_log_likelihood(oracle, backend.asarray(x), sigmas, trace="hutchinson", probes=2,
                                   rng=backend.default_rng(0))
    assert strict_cupy.TRANSFERS.count == 1, strict_cupy.TRANSFERS.sites()  # the per-point values, once
    exact = ode_log_likelihood(oracle, backend.asarray(x), sigmas)
    backend.set_backend("numpy")
    np.testing.assert_allclose(exact.values, ode_log_likelihood(oracle, x, sigmas).values, rtol=1e-12)
    assert np.isfinite(on_device.values).all()
