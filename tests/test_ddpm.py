"""DDPM: the forward process, the squared error and its gradient, the ε objective's checks, and the ε-model chain
(Eq. 11 by hand, the clipped posterior mean, x_0 and v predictions)."""

from __future__ import annotations

import numpy as np
import pytest

from npdiff.nn.denoiser import Denoiser
from npdiff.nn.gradcheck import check, rel_error, worst
from npdiff.nn.losses import squared_error
from npdiff.processes import ddpm, sampling
from npdiff.processes.predictions import PREDICTIONS
from npdiff.processes.schedules import Schedule

MEAN = np.array([1.0, -0.5])
COV = np.array([[0.5, 0.2], [0.2, 0.3]])


def tiny_model(dtype="float64", seed=0):
    return Denoiser(2, hidden=8, n_blocks=1, emb_dim=8, layernorm=True, final_layernorm=True, dtype=dtype, seed=seed)


def test_schedule_owns_the_timesteps():
    s = Schedule(50)
    t = s.sample_t(20_000, np.random.default_rng(0))
    assert t.min() == 1 and t.max() == 50  # never t = 0, and T is reachable
    assert s.reverse_t() == list(range(50, 0, -1))
    short = s.reverse_t(10)
    assert short[0] == 50 and short[-1] == 1 and len(set(short)) == 10 and short == sorted(short, reverse=True)
    with pytest.raises(ValueError):
        s.reverse_t(51)


def test_q_sample_is_the_closed_form():
    s = Schedule(100)
    rng = np.random.default_rng(0)
    x0, eps = rng.standard_normal((5, 2)), rng.standard_normal((5, 2))
    t = np.array([0, 1, 17, 99, 100])
    x_t = s.q_sample(x0, t, eps)
    a = s.alpha_bar[t][:, None]
    np.testing.assert_allclose(x_t, np.sqrt(a) * x0 + np.sqrt(1 - a) * eps, rtol=1e-14)
    np.testing.assert_array_equal(x_t[0], x0[0])  # t = 0 is the data itself
    np.testing.assert_allclose(s.predict_x0(x_t, t, eps), x0, atol=1e-12)  # x̂_0 inverts q_sample
    np.testing.assert_allclose(s.eps_from_x0(x_t[1:], t[1:], x0[1:]), eps[1:], atol=1e-10)  # and ε back


def test_mean_from_eps_is_the_posterior_mean_of_x0_hat():
    s = Schedule(100)
    rng = np.random.default_rng(5)
    x_t, eps, t = rng.standard_normal((5, 2)), rng.standard_normal((5, 2)), np.array([1, 2, 17, 99, 100])
    direct = ddpm.mean_from_eps(s, x_t, t, eps)
    via_x0 = s.q_posterior(s.predict_x0(x_t, t, eps), x_t, t)[0]
    np.testing.assert_allclose(direct, via_x0, rtol=1e-10, atol=1e-12)
    b, ab = s.betas[t][:, None], s.alpha_bar[t][:, None]
    np.testing.assert_allclose(direct, (x_t - b / np.sqrt(1 - ab) * eps) / np.sqrt(1 - b), rtol=1e-13)


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_the_default_kernel_is_eq_11_with_the_named_variance_written_out_by_hand(variance):
    """The ε-model chain's kernel against DDPM's Eq. 11 and σ_t², typed from the paper from the β's alone."""
    s, model = Schedule(100, "cosine"), tiny_model()
    rng = np.random.default_rng(9)
    x_t, t = rng.standard_normal((6, 2)), np.array([1, 2, 17, 50, 99, 100])
    mean, log_var = ddpm.EpsilonChain(model, s, variance).kernel(x_t, t)
    eps_theta = model.forward(x_t, t)
    alpha_bar_all = np.cumprod(1 - s.betas)  # ᾱ_t, t = 0..T
    beta, alpha_bar, alpha_bar_prev = s.betas[t][:, None], alpha_bar_all[t][:, None], alpha_bar_all[t - 1][:, None]
    np.testing.assert_allclose(mean, (x_t - beta / np.sqrt(1 - alpha_bar) * eps_theta) / np.sqrt(1 - beta), rtol=1e-12)
    beta_tilde = beta * (1 - alpha_bar_prev) / (1 - alpha_bar)
    beta_tilde[t == 1] = s.betas[2] * (1 - alpha_bar_all[1]) / (1 - alpha_bar_all[2])  # β̃_1 = 0: t = 1 uses β̃_2
    sigma2 = {"fixed_small": beta_tilde, "fixed_large": beta}[variance]
    np.testing.assert_allclose(log_var, np.broadcast_to(np.log(sigma2), (6, 2)), rtol=1e-12)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_a_clipped_chain_takes_the_posterior_mean_of_the_clipped_x0_hat(prediction):
    """With clip_x0 the kernel's mean is μ̃_t(clip(x̂_0), x_t) = c1·clip(x̂_0) + c2·x_t (DDPM Eq. 7), by hand,
    and DDIM's pair is the clipped x̂_0 with the ε that q_sample maps to it."""
    s, model = Schedule(100), tiny_model()
    rng = np.random.default_rng(10)
    x_t, t = rng.standard_normal((6, 2)), np.array([1, 2, 17, 50, 99, 100])
    f_theta = model.forward(x_t, t)
    ab, ab_prev, beta = s.alpha_bar[t][:, None], s.alpha_bar_prev[t][:, None], s.betas[t][:, None]
    x0_hat = {"eps": (x_t - np.sqrt(1 - ab) * f_theta) / np.sqrt(ab), "x0": f_theta,
              "v": np.sqrt(ab) * x_t - np.sqrt(1 - ab) * f_theta}[prediction]
    lo, hi = np.quantile(x0_hat, [0.25, 0.75])  # a range that clips half the entries
    clipped = np.clip(x0_hat, lo, hi)
    expected = (np.sqrt(ab_prev) * beta * clipped + np.sqrt(1 - beta) * (1 - ab_prev) * x_t) / (1 - ab)
    chain = ddpm.EpsilonChain(model, s, clip_x0=(lo, hi), prediction=prediction)
    np.testing.assert_allclose(chain.kernel(x_t, t)[0], expected, rtol=1e-10, atol=1e-12)
    x0_pred, eps_pred = chain.predict(x_t, t)
    np.testing.assert_allclose(x0_pred, clipped, rtol=1e-12)
    np.testing.assert_allclose(np.sqrt(ab) * x0_pred + np.sqrt(1 - ab) * eps_pred, x_t, rtol=1e-10, atol=1e-12)


def test_squared_error_is_the_one_loss_of_every_target_with_its_gradient():
    rng = np.random.default_rng(1)
    pred, target, weight = rng.standard_normal((4, 3)), rng.standard_normal((4, 3)), rng.uniform(0.1, 2, (4, 1))
    loss, grad = squared_error(pred, target)
    assert loss == pytest.approx(np.mean((pred - target) ** 2), rel=1e-14)
    assert worst(check(lambda: squared_error(pred, target)[0], {"pred": pred}, {"pred": grad})) < 1e-9
    loss, grad = squared_error(pred, target, weight)  # min-SNR's per-row weights, in the same function
    assert loss == pytest.approx(np.mean(weight * (pred - target) ** 2), rel=1e-14)
    assert worst(check(lambda: squared_error(pred, target, weight)[0], {"pred": pred}, {"pred": grad})) < 1e-9


def test_objective_gradient_of_every_parameter_matches_finite_differences():
    s = Schedule(100)
    model, obj = tiny_model(), ddpm.EpsilonObjective(s)
    rng = np.random.default_rng(2)
    x0, noise, t = rng.standard_normal((6, 2)), rng.standard_normal((6, 2)), np.array([1, 5, 30, 60, 99, 100])
    model.zero_grad()
    loss = obj.loss_and_backward(model, x0, t=t, noise=noise)
    assert loss == pytest.approx(obj.loss(model, x0, t=t, noise=noise), rel=1e-12)
    analytic = {k: g.copy() for k, g in model.gradients().items()}
    report = check(lambda: obj.loss(model, x0, t=t, noise=noise), model.parameters(), analytic)
    assert worst(report) < 1e-6, report


def test_objective_adds_into_grads_and_draws_with_the_rng():
    s, model = Schedule(100), tiny_model()
    obj, x0 = ddpm.EpsilonObjective(s), np.random.default_rng(3).standard_normal((8, 2))
    model.zero_grad()
    a = obj.loss_and_backward(model, x0, np.random.default_rng(7))
    g1 = model.flat_grads.copy()
    b = obj.loss_and_backward(model, x0, np.random.default_rng(7))  # same draws: loss equal, grads doubled
    assert a == b
    assert rel_error(model.flat_grads, 2 * g1) < 1e-14


def test_objective_refuses_a_model_of_the_wrong_width_and_a_missing_rng():
    s = Schedule(10)
    wide = Denoiser(1, out_dim=2, hidden=4, n_blocks=0, emb_dim=4, dtype="float64")  # D = 1, 2 outputs
    with pytest.raises(ValueError, match="D outputs"):
        ddpm.EpsilonObjective(s).loss_and_backward(wide, np.zeros((4, 1)), np.random.default_rng(0))
    with pytest.raises(ValueError, match="rng"):
        ddpm.EpsilonObjective(s).loss(tiny_model(), np.zeros((4, 2)))


def test_epsilon_chain_validates_its_model_and_options():
    s = Schedule(10)
    with pytest.raises(ValueError, match="2·D outputs"):
        ddpm.EpsilonChain(tiny_model(), s, "learned_range")
    with pytest.raises(ValueError, match="variance"):
        ddpm.EpsilonChain(tiny_model(), s, "learned")
    with pytest.raises(ValueError, match="lo < hi"):
        ddpm.EpsilonChain(tiny_model(), s, clip_x0=(0.0, 0.0))
    with pytest.raises(ValueError, match="D outputs"):
        ddpm.EpsilonChain(Denoiser(2, out_dim=3, hidden=4, n_blocks=0, emb_dim=4), s)


def test_learned_range_model_samples_and_its_fixed_variances_ignore_the_variance_half():
    """The ε-model with learned-range variance samples (its (N, D) log-variance broadcasts), and its output
    o = ±1 is exactly the fixed_large / fixed_small chain of the same mean."""
    s = Schedule(20)
    model = Denoiser(2, out_dim=4, hidden=8, n_blocks=1, emb_dim=8, dtype="float64", seed=3)
    x = sampling.sample(ddpm.EpsilonChain(model, s, "learned_range"), 6, np.random.default_rng(0))
    assert x.shape == (6, 2) and np.all(np.isfinite(x))
    rng = np.random.default_rng(1)
    x_t, t = rng.standard_normal((5, 2)), np.array([1, 2, 7, 19, 20])
    for o, fixed in ((1.0, "fixed_large"), (-1.0, "fixed_small")):
        model.out.params["W"][:, 2:] = 0
        model.out.params["b"][2:] = o
        mean, log_var = ddpm.EpsilonChain(model, s, "learned_range").kernel(x_t, t)
        mean_f, log_var_f = ddpm.EpsilonChain(model, s, fixed).kernel(x_t, t)
        np.testing.assert_allclose(mean, mean_f, rtol=1e-14)
        np.testing.assert_allclose(log_var, log_var_f, rtol=1e-12)


def test_v_parameterisation_inverts_exactly():
    s, rng = Schedule(100, "cosine"), np.random.default_rng(6)
    x0, noise, t = rng.standard_normal((6, 3)), rng.standard_normal((6, 3)), np.array([1, 2, 30, 70, 99, 100])
    x_t, v = s.q_sample(x0, t, noise), s.v_target(x0, t, noise)
    np.testing.assert_allclose(s.eps_from_v(x_t, t, v), noise, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(s.x0_from_v(x_t, t, v), x0, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_min_snr_weighting_is_the_same_x0_error_for_every_prediction(prediction):
    """Hang et al.'s weights make min(SNR_t, γ)·(x̂_0 − x_0)² whatever the network predicts: feed each
    parameterisation the prediction that corresponds to one x̂_0 and the three losses agree."""
    s, rng, gamma = Schedule(50), np.random.default_rng(7), 5.0
    x0, noise, t = rng.standard_normal((8, 2)), rng.standard_normal((8, 2)), rng.integers(1, 51, 8)
    x_t = s.q_sample(x0, t, noise)
    x0_hat = x0 + 0.3 * rng.standard_normal((8, 2))  # some imperfect prediction of x_0
    f_theta = {"x0": x0_hat, "eps": s.eps_from_x0(x_t, t, x0_hat),
               "v": s.at("sqrt_alpha_bar", t, x_t) * s.eps_from_x0(x_t, t, x0_hat)
               - s.at("sqrt_one_minus_alpha_bar", t, x_t) * x0_hat}[prediction]
    loss, _ = ddpm.EpsilonObjective(s, prediction, min_snr_gamma=gamma)._loss(f_theta, x0, t, noise)
    expected = (np.minimum(s.snr[t], gamma)[:, None] * (x0_hat - x0) ** 2).mean()
    assert loss == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("prediction, gamma", [("x0", None), ("v", None), ("v", 5.0), ("eps", 5.0)])
def test_every_prediction_and_weighting_has_the_right_gradient(prediction, gamma):
    s = Schedule(100)
    model, obj = tiny_model(), ddpm.EpsilonObjective(s, prediction, min_snr_gamma=gamma)
    rng = np.random.default_rng(8)
    x0, noise, t = rng.standard_normal((6, 2)), rng.standard_normal((6, 2)), np.array([1, 5, 30, 60, 99, 100])
    model.zero_grad()
    obj.loss_and_backward(model, x0, t=t, noise=noise)
    analytic = {k: g.copy() for k, g in model.gradients().items()}
    assert worst(check(lambda: obj.loss(model, x0, t=t, noise=noise), model.parameters(), analytic)) < 1e-6


class OracleAs:
    """The exact ε of Gaussian data, re-expressed as an x_0 or a v prediction."""

    def __init__(self, schedule, prediction):
        from npdiff.processes.oracles import GaussianEpsilon

        self.eps, self.schedule, self.prediction = GaussianEpsilon(schedule, MEAN, COV), schedule, prediction
        self.data_dim, self.dtype = 2, np.dtype("float64")

    def forward(self, x_t, t):
        eps, s = self.eps.forward(x_t, t), self.schedule
        x0_hat = s.predict_x0(x_t, t, eps)
        return x0_hat if self.prediction == "x0" else s.at("sqrt_alpha_bar", t, x_t) * eps - \
            s.at("sqrt_one_minus_alpha_bar", t, x_t) * x0_hat


@pytest.mark.parametrize("prediction, sampler", [("x0", "ancestral"), ("x0", "ddim"), ("v", "ddim"), ("v", "ancestral")])
def test_x0_and_v_predictions_sample_the_data_through_the_same_chain(prediction, sampler):
    s = Schedule(1000)
    chain = ddpm.EpsilonChain(OracleAs(s, prediction), s, prediction=prediction)
    x = sampling.sample(chain, 6000, np.random.default_rng(0), sampler=sampler)
    assert np.abs(x.mean(axis=0) - MEAN).max() < 0.04 and np.abs(np.cov(x.T) - COV).max() < 0.04  # ≈ 4 SE
