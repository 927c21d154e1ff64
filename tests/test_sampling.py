"""The one sampler: ancestral and DDIM sampling of every chain against the analytic Gaussian oracles."""

from __future__ import annotations

import numpy as np
import pytest

from npdiff.processes import sampling
from npdiff.processes.ddpm import EpsilonChain
from npdiff.nn.denoiser import Denoiser
from npdiff.processes.oracles import GaussianEpsilon, GaussianOracle
from npdiff.processes.schedules import Schedule
from npdiff.processes.sohl_dickstein import SohlDicksteinChain, make_model

MEAN = np.array([1.0, -0.5])
COV = np.array([[0.5, 0.2], [0.2, 0.3]])


def gaussian_stats_close(x, mean=MEAN, cov=COV, mean_tol=0.03, cov_tol=0.03):
    """Sample mean and covariance within tolerances (≈ 4 standard errors at N = 10,000)."""
    assert np.all(np.isfinite(x))
    assert np.abs(x.mean(axis=0) - mean).max() < mean_tol, x.mean(axis=0)
    assert np.abs(np.cov(x.T) - cov).max() < cov_tol, np.cov(x.T)


def oracle_chain(schedule, variance="fixed_small", mean=MEAN, cov=COV, **kwargs):
    return EpsilonChain(GaussianEpsilon(schedule, mean, cov), schedule, variance, **kwargs)


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_ancestral_sampler_reproduces_gaussian_data_with_the_exact_eps(variance):
    s = Schedule(1000)  # Ho et al.'s schedule: ᾱ_T = 4e-5, so starting from N(0, I) is exact enough
    gaussian_stats_close(sampling.sample(oracle_chain(s, variance), 10_000, np.random.default_rng(0)))


def test_fixed_large_is_exact_for_standard_normal_data_and_fixed_small_is_not_in_a_short_chain():
    """For N(0, I) data the reverse kernel is exactly N(√α_t x_t, β_t): σ² = β reproduces the data, while
    σ² = β̃ < β removes variance at every step of a short chain (T = 50)."""
    s, identity = Schedule(50, "linear", scale_to_T=True), np.eye(2)
    large = sampling.sample(oracle_chain(s, "fixed_large", np.zeros(2), identity), 10_000, np.random.default_rng(0))
    small = sampling.sample(oracle_chain(s, "fixed_small", np.zeros(2), identity), 10_000, np.random.default_rng(0))
    gaussian_stats_close(large, np.zeros(2), identity, cov_tol=0.06)
    assert np.trace(np.cov(small.T)) < 2 - 0.3


def test_ddim_sampler_reproduces_gaussian_data_with_the_exact_eps():
    s = Schedule(1000)
    gaussian_stats_close(sampling.sample(oracle_chain(s), 10_000, np.random.default_rng(0), sampler="ddim"))


def test_ddim_eta0_is_deterministic_and_matches_its_closed_form_map():
    """For 1-D N(0, v) data each η = 0 step is x_s = x_t (√(ᾱ_tᾱ_s) v + √((1−ᾱ_t)(1−ᾱ_s)))/(ᾱ_t v + 1 − ᾱ_t)."""
    s, v = Schedule(200, "linear", scale_to_T=True), 0.3
    chain = oracle_chain(s, mean=[0.0], cov=[[v]])
    x_T = np.linspace(-2, 2, 5)[:, None]
    a = sampling.sample(chain, 5, np.random.default_rng(0), sampler="ddim", ddim_steps=20, x_T=x_T)
    b = sampling.sample(chain, 5, np.random.default_rng(1), sampler="ddim", ddim_steps=20, x_T=x_T)
    np.testing.assert_array_equal(a, b)  # no randomness once x_T is fixed
    ts = s.reverse_t(20)
    slope = 1.0
    for t, u in zip(ts, ts[1:] + [0]):
        at, au = s.alpha_bar[t], s.alpha_bar[u]
        slope *= (np.sqrt(at * au) * v + np.sqrt((1 - at) * (1 - au))) / (at * v + 1 - at)
    np.testing.assert_allclose(a, slope * x_T, rtol=1e-10)


def test_ddim_with_eta1_over_all_steps_is_the_ancestral_sampler():
    s = Schedule(100, "linear", scale_to_T=True)
    a = sampling.sample(oracle_chain(s), 50, np.random.default_rng(4))
    b = sampling.sample(oracle_chain(s), 50, np.random.default_rng(4), sampler="ddim", eta=1.0)
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_sohl_dickstein_exact_kernel_and_gaussian_oracle_sample_through_the_same_function():
    s = Schedule(40, "sohl_dickstein")
    for chain in (SohlDicksteinChain(make_model(2, hidden=8, n_blocks=1, emb_dim=8, dtype="float64"), s),
                  GaussianOracle(s, 1.0, data_dim=2)):
        x = sampling.sample(chain, 8000, np.random.default_rng(1))
        # x_0 = √α_1 x_1 with x_1 ~ N(0, I): variance α_1 = 1 − 1/40
        assert np.abs(x.mean(axis=0)).max() < 0.05 and np.abs(x.var(axis=0) - s.alphas[1]).max() < 0.06


class CountingRng:
    """A generator that counts the noise draws of a sampler."""

    def __init__(self, seed):
        self.rng, self.draws = np.random.default_rng(seed), 0

    def standard_normal(self, shape, dtype=None):
        self.draws += 1
        return self.rng.standard_normal(shape, dtype=dtype)


def test_ancestral_sampler_draws_no_noise_at_the_last_step_and_records_the_chain():
    s = Schedule(30)
    rng = CountingRng(0)
    x_T = np.random.default_rng(1).standard_normal((4, 2))
    x0, ts, xs = sampling.sample(oracle_chain(s), 4, rng, x_T=x_T, record=True)
    assert rng.draws == 29  # t = 30..2 draw z; t = 1 does not
    assert list(ts) == list(range(30, -1, -1)) and xs.shape == (31, 4, 2)
    np.testing.assert_array_equal(xs[0], x_T)
    np.testing.assert_array_equal(xs[-1], x0)


@pytest.mark.parametrize("sampler", sampling.SAMPLERS)
def test_samples_keep_the_model_dtype(sampler):
    model = Denoiser(2, hidden=8, n_blocks=1, emb_dim=8, dtype="float32")
    x = sampling.sample(EpsilonChain(model, Schedule(20)), 7, np.random.default_rng(0), sampler=sampler,
                        x_T=np.zeros((7, 2)))  # a float64 start is converted, not followed
    assert x.dtype == np.float32 and x.shape == (7, 2)


class EpsErrorAtT(GaussianEpsilon):
    """The exact ε plus an error δ at t = T only, as a network that is slightly wrong there."""

    def __init__(self, schedule, delta):
        super().__init__(schedule, MEAN, COV)
        self.delta = delta

    def forward(self, x_t, t):
        return super().forward(x_t, t) + np.where(np.asarray(t)[:, None] == self.schedule.T, self.delta, 0.0)


def test_cosine_schedule_first_step_is_refused_unclipped_and_bounded_when_x0_is_clipped():
    s = Schedule(200, "cosine")  # β_T = 0.999: the ancestral step at t = T amplifies ε errors 31.6×
    assert sampling.ancestral_gain(s, 200) == pytest.approx(31.6, abs=0.05)
    oracle = EpsErrorAtT(s, 0.1)
    for sampler in sampling.SAMPLERS:
        with pytest.raises(ValueError, match="clip_x0"):
            sampling.sample(EpsilonChain(oracle, s), 10, np.random.default_rng(0), sampler=sampler)
    x_T = np.random.default_rng(1).standard_normal((10_000, 2))
    runs = {clip: sampling.sample(EpsilonChain(oracle, s, clip_x0=clip, max_gain=None), 10_000,
                                  np.random.default_rng(2), x_T=x_T, record=True) for clip in (None, (-3.0, 3.0))}
    rms = {clip: np.sqrt((xs[1] ** 2).mean()) for clip, (_, _, xs) in runs.items()}  # x_{T−1}, after one step
    assert rms[None] > 3.0  # x_{T−1} should be ≈ N(0, I); the plain step moves it by 31.6 × 0.1
    assert rms[(-3.0, 3.0)] < 1.1
    gaussian_stats_close(runs[(-3.0, 3.0)][0])  # and the clipped chain still reproduces the data
    x = sampling.sample(EpsilonChain(oracle, s, clip_x0=(-3.0, 3.0)), 10_000, np.random.default_rng(3), sampler="ddim")
    gaussian_stats_close(x, cov_tol=0.05)


def test_invalid_sampler_settings_raise_one_clear_error():
    s = Schedule(10)
    chain = oracle_chain(s)
    cases = [(dict(sampler="bogus"), "sampler"), (dict(sampler="ddim", eta=1.5), "eta"),
             (dict(ddim_steps=5), "DDIM"), (dict(sampler="ddim", ddim_steps=11), "ddim_steps"),
             (dict(x_T=np.zeros((3, 3))), "x_T")]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            sampling.sample(chain, 3, np.random.default_rng(0), **kwargs)
    with pytest.raises(ValueError, match="integer >= 1"):
        sampling.sample(chain, 0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="ε-prediction"):
        sampling.sample(GaussianOracle(s, data_dim=2), 3, np.random.default_rng(0), sampler="ddim")


def test_a_non_finite_sample_is_reported_with_its_step():
    class Broken(GaussianEpsilon):
        def forward(self, x_t, t):
            return np.full_like(x_t, np.nan) if t[0] == 7 else super().forward(x_t, t)

    s = Schedule(10)
    with pytest.raises(FloatingPointError, match="t=7"):
        sampling.sample(EpsilonChain(Broken(s, MEAN, COV), s), 3, np.random.default_rng(0))
