"""Learned-range variances and L_hybrid: the stop-gradient backward, limits, and agreement with the bound."""

import numpy as np
import pytest

from npdiff.nn import gradcheck
from npdiff.processes import ddpm, hybrid, likelihood
from npdiff.nn.denoiser import Denoiser
from npdiff.processes.schedules import Schedule


def test_learned_range_endpoints_are_beta_and_clipped_beta_tilde():
    s = Schedule(50, "linear")
    t = np.array([1, 2, 25, 50])
    hi, _ = ddpm.learned_range_log_var(s, np.ones((4, 3)), t)
    lo, _ = ddpm.learned_range_log_var(s, -np.ones((4, 3)), t)
    np.testing.assert_allclose(hi, np.broadcast_to(np.log(s.betas[t])[:, None], (4, 3)), rtol=1e-13)
    np.testing.assert_allclose(lo, np.broadcast_to(s.posterior_log_var_clipped[t][:, None], (4, 3)), rtol=1e-13)


def test_learned_range_backward_matches_finite_differences():
    rng = np.random.default_rng(0)
    s = Schedule(30, "cosine")
    o, t, dy = rng.standard_normal((6, 2)), rng.integers(1, 31, size=6), rng.standard_normal((6, 2))
    _, cache = ddpm.learned_range_log_var(s, o, t)
    report = gradcheck.check(lambda: float((ddpm.learned_range_log_var(s, o, t)[0] * dy).sum()),
                             {"o": o}, {"o": ddpm.learned_range_log_var_backward(cache, dy)})
    assert report["o"]["rel_error"] < 1e-7


def _setup(seed=1):
    rng = np.random.default_rng(seed)
    s = Schedule(20, "linear", beta_end=0.2)
    model = Denoiser(2, out_dim=4, hidden=8, n_blocks=1, emb_dim=4, dtype="float64", seed=seed)
    x0, noise = rng.standard_normal((6, 2)), rng.standard_normal((6, 2))
    t = np.array([1, 1, 2, 7, 13, 20])  # includes the decoder rows t = 1
    return s, model, x0, noise, t


def test_whole_hybrid_loss_gradient_with_the_mean_stopped_inside_vlb():
    s, model, x0, noise, t = _setup()
    obj = hybrid.HybridObjective(s, lam=0.3)  # a large λ so that the variance gradient is not negligible
    xt = s.at("sqrt_alpha_bar", t, x0) * x0 + s.at("sqrt_one_minus_alpha_bar", t, x0) * noise
    frozen = model.forward(xt, t)[:, :2].copy()  # ε_θ at the current weights: the stop-gradient constant
    model.zero_grad()
    obj.loss_and_backward(model, x0, t=t, noise=noise)
    analytic = {k: g.copy() for k, g in model.gradients().items()}
    report = gradcheck.check(lambda: obj.loss(model, x0, t=t, noise=noise, frozen_eps=frozen),
                             model.parameters(), analytic)
    assert gradcheck.worst(report) < 1e-6, gradcheck.format_report(report)
    # and the stop-gradient matters: the unfrozen loss has a different gradient
    loose = gradcheck.check(lambda: obj.loss(model, x0, t=t, noise=noise), model.parameters(), analytic)
    assert gradcheck.worst(loose) > 1e-4


def test_vlb_term_matches_the_likelihood_decomposition():
    s, model, x0, noise, t = _setup(2)
    obj = hybrid.HybridObjective(s)
    obj.loss_and_backward(model, x0, t=t, noise=noise)
    terms = likelihood.bound_terms(ddpm.EpsilonChain(model, s, "learned_range"), x0, t, noise)
    assert obj.last_vlb == pytest.approx(s.T * float(terms.mean()), rel=1e-12)
    d = x0.shape[1]
    assert obj.loss(model, x0, t=t, noise=noise) == pytest.approx(
        obj.last_simple + obj.lam * obj.last_vlb / (d * np.log(2)), rel=1e-12)
