"""DDPM: the forward process, the ε loss and its gradient, and the samplers against an analytic ε-oracle."""

from __future__ import annotations

import numpy as np
import pytest

from npdiff import ddpm
from npdiff.gradcheck import check, rel_error, worst
from npdiff.models import Denoiser
from npdiff.schedules import Schedule

MEAN = np.array([1.0, -0.5])
COV = np.array([[0.5, 0.2], [0.2, 0.3]])


def gaussian_stats_close(x, mean=MEAN, cov=COV, mean_tol=0.03, cov_tol=0.03):
    """Sample mean and covariance within tolerances (≈ 4 standard errors at N = 10,000)."""
    assert np.all(np.isfinite(x))
    assert np.abs(x.mean(axis=0) - mean).max() < mean_tol, x.mean(axis=0)
    assert np.abs(np.cov(x.T) - cov).max() < cov_tol, np.cov(x.T)


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
    xt = ddpm.q_sample(s, x0, t, eps)
    a = s.alpha_bar[t][:, None]
    np.testing.assert_allclose(xt, np.sqrt(a) * x0 + np.sqrt(1 - a) * eps, rtol=1e-14)
    np.testing.assert_array_equal(xt[0], x0[0])  # t = 0 is the data itself
    np.testing.assert_allclose(ddpm.predict_x0(s, xt, t, eps), x0, atol=1e-12)  # x̂_0 inverts q_sample


def test_epsilon_loss_gradient_matches_finite_differences():
    rng = np.random.default_rng(1)
    pred, eps = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    loss, grad = ddpm.epsilon_loss(pred, eps)
    assert loss == pytest.approx(np.mean((pred - eps) ** 2))
    report = check(lambda: ddpm.epsilon_loss(pred, eps)[0], {"pred": pred}, {"pred": grad})
    assert worst(report) < 1e-9


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


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_ancestral_sampler_reproduces_gaussian_data_with_the_exact_eps(variance):
    s = Schedule(1000)  # Ho et al.'s schedule: ᾱ_T = 4e-5, so starting from N(0, I) is exact enough
    x = ddpm.ancestral_sample(ddpm.GaussianEpsilon(s, MEAN, COV), s, 10_000, np.random.default_rng(0),
                              variance=variance, dtype="float64")
    gaussian_stats_close(x)


def test_ddim_sampler_reproduces_gaussian_data_with_the_exact_eps():
    s = Schedule(1000)
    x = ddpm.ddim_sample(ddpm.GaussianEpsilon(s, MEAN, COV), s, 10_000, np.random.default_rng(0), dtype="float64")
    gaussian_stats_close(x)


def test_ddim_eta0_is_deterministic_and_matches_its_closed_form_map():
    """For 1-D N(0, v) data each η = 0 step is x_s = x_t (√(ᾱ_tᾱ_s) v + √((1−ᾱ_t)(1−ᾱ_s)))/(ᾱ_t v + 1 − ᾱ_t)."""
    s, v = Schedule(200, "linear", scale_to_T=True), 0.3
    oracle = ddpm.GaussianEpsilon(s, [0.0], [[v]])
    x_T = np.linspace(-2, 2, 5)[:, None]
    a = ddpm.ddim_sample(oracle, s, 5, np.random.default_rng(0), n_steps=20, x_T=x_T, dtype="float64")
    b = ddpm.ddim_sample(oracle, s, 5, np.random.default_rng(1), n_steps=20, x_T=x_T, dtype="float64")
    np.testing.assert_array_equal(a, b)  # no randomness once x_T is fixed
    ts = s.reverse_t(20)
    slope = 1.0
    for t, u in zip(ts, ts[1:] + [0]):
        at, au = s.alpha_bar[t], s.alpha_bar[u]
        slope *= (np.sqrt(at * au) * v + np.sqrt((1 - at) * (1 - au))) / (at * v + 1 - at)
    np.testing.assert_allclose(a, slope * x_T, rtol=1e-10)


def test_ddim_with_eta1_over_all_steps_is_the_ancestral_sampler():
    s = Schedule(100, "linear", scale_to_T=True)
    oracle = ddpm.GaussianEpsilon(s, MEAN, COV)
    a = ddpm.ancestral_sample(oracle, s, 50, np.random.default_rng(4), variance="fixed_small", dtype="float64")
    b = ddpm.ddim_sample(oracle, s, 50, np.random.default_rng(4), eta=1.0, dtype="float64")
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


class CountingRng:
    """A generator that counts the noise draws of a sampler."""

    def __init__(self, seed):
        self.rng, self.draws = np.random.default_rng(seed), 0

    def standard_normal(self, shape, dtype=None):
        self.draws += 1
        return self.rng.standard_normal(shape, dtype=dtype)


def test_ancestral_sampler_adds_no_noise_at_the_last_step_and_records_the_chain():
    s = Schedule(30)
    oracle, rng = ddpm.GaussianEpsilon(s, MEAN, COV), CountingRng(0)
    x_T = np.random.default_rng(1).standard_normal((4, 2))
    x0, ts, xs = ddpm.ancestral_sample(oracle, s, 4, rng, x_T=x_T, record=True, dtype="float64")
    assert rng.draws == 29  # t = 30..2 draw z; t = 1 does not
    assert list(ts) == list(range(30, -1, -1)) and xs.shape == (31, 4, 2)
    np.testing.assert_array_equal(xs[0], x_T)
    np.testing.assert_array_equal(xs[-1], x0)


def test_samplers_keep_the_model_dtype():
    s = Schedule(20)
    model = tiny_model("float32")
    for sampler in ("ancestral", "ddim"):
        x = ddpm.sample(model, s, 7, np.random.default_rng(0), sampler=sampler)
        assert x.dtype == np.float32 and x.shape == (7, 2)


class EpsErrorAtT(ddpm.GaussianEpsilon):
    """The exact ε plus an error δ at t = T only, as a network that is slightly wrong there."""

    def __init__(self, schedule, delta):
        super().__init__(schedule, MEAN, COV)
        self.delta = delta

    def forward(self, x_t, t):
        return super().forward(x_t, t) + np.where(np.asarray(t)[:, None] == self.schedule.T, self.delta, 0.0)


def test_cosine_schedule_first_step_is_refused_unclipped_and_bounded_when_x0_is_clipped():
    s = Schedule(200, "cosine")  # β_T = 0.999: the ancestral step at t = T amplifies ε errors 31.6×
    assert ddpm.ancestral_gain(s, 200) == pytest.approx(31.6, abs=0.05)
    oracle = EpsErrorAtT(s, 0.1)
    with pytest.raises(ValueError, match="clip_x0"):
        ddpm.ancestral_sample(oracle, s, 10, np.random.default_rng(0))
    with pytest.raises(ValueError, match="clip_x0"):
        ddpm.ddim_sample(oracle, s, 10, np.random.default_rng(0))
    x_T = np.random.default_rng(1).standard_normal((10_000, 2))
    runs = {clip: ddpm.ancestral_sample(oracle, s, 10_000, np.random.default_rng(2), x_T=x_T, clip_x0=clip,
                                        max_gain=None, record=True, dtype="float64") for clip in (None, (-3.0, 3.0))}
    rms = {clip: np.sqrt((xs[1] ** 2).mean()) for clip, (_, _, xs) in runs.items()}  # x_{T−1}, after one step
    assert rms[None] > 3.0  # x_{T−1} should be ≈ N(0, I); the plain step moves it by 31.6 × 0.1
    assert rms[(-3.0, 3.0)] < 1.1
    gaussian_stats_close(runs[(-3.0, 3.0)][0])  # and the clipped chain still reproduces the data
    x = ddpm.ddim_sample(oracle, s, 10_000, np.random.default_rng(3), clip_x0=(-3.0, 3.0), dtype="float64")
    gaussian_stats_close(x, cov_tol=0.05)


def test_invalid_sampler_settings_raise():
    s, oracle = Schedule(10), ddpm.GaussianEpsilon(Schedule(10), MEAN, COV)
    with pytest.raises(ValueError, match="variance"):
        ddpm.ancestral_sample(oracle, s, 3, np.random.default_rng(0), variance="learned")
    with pytest.raises(ValueError, match="eta"):
        ddpm.ddim_sample(oracle, s, 3, np.random.default_rng(0), eta=1.5)
    with pytest.raises(ValueError, match="sampler"):
        ddpm.sample(oracle, s, 3, np.random.default_rng(0), sampler="euler")


def test_a_non_finite_sample_is_reported_with_its_step():
    class Broken(ddpm.GaussianEpsilon):
        def forward(self, x_t, t):
            return np.full_like(x_t, np.nan) if t[0] == 7 else super().forward(x_t, t)

    s = Schedule(10)
    with pytest.raises(FloatingPointError, match="t=7"):
        ddpm.ancestral_sample(Broken(s, MEAN, COV), s, 3, np.random.default_rng(0), dtype="float64")
