"""β schedules and their derived arrays, checked against closed forms and Gaussian conditioning."""

import json
import math

import numpy as np
import pytest

from npdiff.processes import gaussian, schedules
from npdiff.processes.schedules import ARRAY_NAMES, Schedule

NAMES = [name for name in schedules.SCHEDULES if name != "custom"]  # every named schedule ("custom" takes β's)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("T", [1, 2, 40, 200, 1000])
def test_every_derived_array_is_finite_with_length_T_plus_1(name, T):
    s = Schedule(T, name)
    for key in ARRAY_NAMES:
        arr = getattr(s, key)
        assert arr.shape == (T + 1,) and arr.dtype == np.float64, key
        finite = arr[1:] if key == "snr" else arr  # snr[0] = inf by design
        assert np.all(np.isfinite(finite)), key
    assert s.snr[0] == np.inf
    assert np.all((s.betas[1:] > 0) & (s.betas[1:] < 1))


@pytest.mark.parametrize("name", NAMES)
def test_alpha_bar_is_cumprod_and_t0_entries(name):
    s = Schedule(50, name)
    np.testing.assert_allclose(s.alpha_bar[1:], np.cumprod(1.0 - s.betas[1:]), rtol=1e-14)
    assert (s.betas[0], s.alphas[0], s.alpha_bar[0], s.alpha_bar_prev[0]) == (0.0, 1.0, 1.0, 1.0)
    np.testing.assert_array_equal(s.alpha_bar_prev[1:], s.alpha_bar[:-1])
    assert s.posterior_var[0] == 0.0 and s.posterior_var[1] == 0.0
    assert (s.posterior_mean_coef1[0], s.posterior_mean_coef2[0]) == (1.0, 0.0)
    assert s.posterior_mean_coef1[1] == pytest.approx(1.0, rel=1e-14) and s.posterior_mean_coef2[1] == 0.0


@pytest.mark.parametrize("name", NAMES)
def test_sqrt_arrays_and_snr(name):
    s = Schedule(30, name)
    a = s.alpha_bar
    np.testing.assert_allclose(s.sqrt_alpha_bar ** 2, a, rtol=1e-14)
    np.testing.assert_allclose(s.sqrt_one_minus_alpha_bar ** 2, 1.0 - a, rtol=1e-14, atol=1e-300)
    np.testing.assert_allclose(s.sqrt_recip_alpha_bar * s.sqrt_alpha_bar, 1.0, rtol=1e-14)
    # x0 = sqrt_recip·xt − sqrt_recipm1·eps inverts xt = √ᾱ x0 + √(1−ᾱ) eps
    x0, eps = 0.37, -1.2
    xt = s.sqrt_alpha_bar * x0 + s.sqrt_one_minus_alpha_bar * eps
    np.testing.assert_allclose(s.sqrt_recip_alpha_bar * xt - s.sqrt_recipm1_alpha_bar * eps, x0, rtol=1e-9)
    np.testing.assert_allclose(s.snr[1:], a[1:] / (1.0 - a[1:]), rtol=1e-14)
    assert np.all(np.diff(s.snr) < 0)


@pytest.mark.parametrize("name", NAMES)
def test_posterior_var_formula_and_variance_identity(name):
    s = Schedule(40, name)
    t = np.arange(1, 41)
    want = s.betas[t] * (1.0 - s.alpha_bar[t - 1]) / (1.0 - s.alpha_bar[t])
    np.testing.assert_allclose(s.posterior_var[t], want, rtol=1e-14)
    # (1 − ᾱ_t) = α_t (1 − ᾱ_{t−1}) + β_t: one step of noise added to the accumulated noise
    np.testing.assert_allclose(1.0 - s.alpha_bar[t], s.alphas[t] * (1.0 - s.alpha_bar[t - 1]) + s.betas[t], rtol=1e-12)
    assert np.all(s.posterior_var[t] <= s.betas[t])


@pytest.mark.parametrize("name", NAMES)
def test_posterior_matches_gaussian_conditioning(name):
    """Given x_0: x_{t−1} = √ᾱ_{t−1} x_0 + √(1−ᾱ_{t−1}) e_1, x_t = √α_t x_{t−1} + √β_t e_2; condition on x_t."""
    s = Schedule(25, name)
    rng = np.random.default_rng(0)
    for t in range(1, 26):
        x0, xt = rng.normal(size=2)
        var_prev = 1.0 - s.alpha_bar[t - 1]                        # Var(x_{t−1} | x_0)
        cov = math.sqrt(s.alphas[t]) * var_prev                    # Cov(x_{t−1}, x_t | x_0)
        var_t = s.alphas[t] * var_prev + s.betas[t]                # Var(x_t | x_0)
        mean = math.sqrt(s.alpha_bar[t - 1]) * x0 + cov / var_t * (xt - math.sqrt(s.alpha_bar[t]) * x0)
        var = var_prev - cov ** 2 / var_t
        got = s.posterior_mean_coef1[t] * x0 + s.posterior_mean_coef2[t] * xt
        assert got == pytest.approx(mean, rel=1e-10, abs=1e-12)
        assert s.posterior_var[t] == pytest.approx(var, rel=1e-9, abs=1e-15)


def test_posterior_log_var_clipped():
    s = Schedule(10, "linear")
    np.testing.assert_allclose(s.posterior_log_var_clipped[2:], np.log(s.posterior_var[2:]), rtol=1e-14)
    assert s.posterior_log_var_clipped[1] == s.posterior_log_var_clipped[0] == math.log(s.posterior_var[2])
    single = Schedule(1, "linear")
    np.testing.assert_allclose(single.posterior_log_var_clipped, math.log(single.betas[1]), rtol=1e-14)


def test_linear_values_by_hand():
    s = Schedule(5, "linear")
    np.testing.assert_allclose(s.betas, [0.0, 1e-4, 0.005075, 0.01005, 0.015025, 0.02], rtol=1e-12)
    assert s.alpha_bar[2] == pytest.approx(0.9999 * 0.994925, rel=1e-14)
    # β̃_2 = β_2 (1 − ᾱ_1)/(1 − ᾱ_2) = 0.005075 · 1e-4 / (1 − 0.9999·0.994925)
    assert s.posterior_var[2] == pytest.approx(0.005075e-4 / (1.0 - 0.9999 * 0.994925), rel=1e-12)
    ddpm = Schedule(1000, "linear")
    assert (ddpm.betas[1], ddpm.betas[1000]) == (pytest.approx(1e-4), pytest.approx(0.02))
    assert ddpm.betas[500] == pytest.approx(1e-4 + 499 * (0.02 - 1e-4) / 999, rel=1e-12)
    assert ddpm.alpha_bar[1000] == pytest.approx(4.036e-5, rel=1e-3)  # the known DDPM end value


def test_linear_scale_to_T():
    s = Schedule(100, "linear", scale_to_T=True)
    assert (s.betas[1], s.betas[100]) == (pytest.approx(1e-3), pytest.approx(0.2))
    with pytest.raises(ValueError, match=r"scale_to_T=True.*beta_6 = 1\.11"):
        Schedule(10, "linear", scale_to_T=True)


def test_cosine_follows_its_alpha_bar_function_below_the_cap():
    T, s = 200, 0.008
    sched = Schedule(T, "cosine")
    f = np.cos((np.arange(T + 1) / T + s) / (1 + s) * math.pi / 2) ** 2
    np.testing.assert_allclose(sched.alpha_bar[:T], f[:T] / f[0], rtol=1e-10)
    assert sched.betas[T] == 0.999 and np.all(sched.betas[1:T] < 0.999)
    assert np.all(np.diff(sched.betas[1:]) > 0)


def test_sohl_dickstein_betas():
    T = 8
    s = Schedule(T, "sohl_dickstein")
    t = np.arange(1, T)
    np.testing.assert_allclose(s.betas[t], 1.0 / (T - t + 1), rtol=1e-15)
    np.testing.assert_allclose(s.alpha_bar[t], (T - t) / T, rtol=1e-14)  # ᾱ_t = (T − t)/T
    assert s.betas[T] == 0.999 and s.alpha_bar[T] == pytest.approx(0.001 / T, rel=1e-12)
    assert Schedule(T, "sohl_dickstein", beta_max=0.9).betas[T] == 0.9
    code = Schedule(T, "sohl_dickstein", variant="code")
    np.testing.assert_allclose(code.betas[1:], 1.0 / np.linspace(T, 2.0, T), rtol=1e-15)
    assert code.betas[T] == 0.5


def test_sigmoid_is_monotone_between_its_ends():
    s = Schedule(100, "sigmoid", beta_start=1e-4, beta_end=0.02)
    assert np.all(np.diff(s.betas[1:]) > 0)
    lo = 1e-4 + (0.02 - 1e-4) / (1.0 + math.exp(6.0))
    assert s.betas[1] == pytest.approx(lo, rel=1e-12) and s.betas[100] == pytest.approx(0.02 + 1e-4 - lo, rel=1e-12)


def test_prior_kl_closed_forms():
    for a, v in [(0.3, 2.0), (1e-3, 0.25), (0.9, 1.0), (0.0, 5.0)]:
        v_T = a * v + 1 - a
        assert schedules.prior_kl(a, v) == pytest.approx(0.5 * (v_T - 1 - math.log(v_T)), rel=1e-14, abs=1e-300)
        # L_T is the mean of KL(q(x_T|x_0) ‖ N(0,1)) over x_0; x_0 = ±√v has E[x_0²] = v exactly
        x0 = np.array([-math.sqrt(v), math.sqrt(v)])
        per_x0 = gaussian.kl(math.sqrt(a) * x0, math.log1p(-a), 0.0, 0.0)
        assert schedules.expected_prior_kl(a, v) == pytest.approx(per_x0.mean(), rel=1e-12, abs=1e-300)
        assert schedules.expected_prior_kl(a, v) >= schedules.prior_kl(a, v)
    assert schedules.prior_kl(0.0, 1.0) == 0.0 and schedules.expected_prior_kl(0.0, 1.0) == 0.0
    assert schedules.prior_kl(0.7, 1.0) == 0.0
    s = Schedule(40, "linear")
    assert s.prior_kl(3.0) == schedules.prior_kl(s.alpha_bar[40], 3.0) > 0.0
    assert s.expected_prior_kl(3.0) == schedules.expected_prior_kl(s.alpha_bar[40], 3.0)


def test_summary_names_the_schedule_and_its_prior_kl():
    s = Schedule(40, "cosine")
    text = s.summary(data_var=2.0)
    assert "cosine" in text and "T=40" in text and f"{s.alpha_bar[40]:.3e}" in text
    assert f"{s.prior_kl(2.0):.3e}" in text and "nats" in text


def test_config_rebuilds_the_schedule():
    for s in [Schedule(30, "sigmoid", beta_end=0.05), Schedule(12, "sohl_dickstein", variant="code"),
              Schedule.from_betas([0.1, 0.2, 0.3])]:
        rebuilt = Schedule(**json.loads(json.dumps(s.config)))
        for key in ARRAY_NAMES:
            np.testing.assert_array_equal(getattr(rebuilt, key), getattr(s, key))
    custom = Schedule.from_betas(Schedule(7, "cosine").betas[1:])
    np.testing.assert_array_equal(custom.alpha_bar, Schedule(7, "cosine").alpha_bar)
    assert custom.name == "custom" and custom.T == 7


def test_at_gathers_on_the_backend_in_the_callers_dtype():
    s = Schedule(10, "linear")
    x = np.zeros((3, 2, 2), dtype=np.float32)
    got = s.at("sqrt_alpha_bar", np.array([1, 5, 10]), x)
    assert got.shape == (3, 1, 1) and got.dtype == np.float32
    np.testing.assert_allclose(got.ravel(), s.sqrt_alpha_bar[[1, 5, 10]].astype(np.float32))
    assert s.at("betas", 3, x).shape == () and s.at("betas", 3, x) == np.float32(s.betas[3])
    with pytest.raises(ValueError, match="0..10"):
        s.at("betas", np.array([-1, 2]), x)
    with pytest.raises(ValueError, match="0..10"):
        s.at("betas", 11, x)
    with pytest.raises(ValueError, match="'beta'"):
        s.at("beta", 1, x)


@pytest.mark.parametrize("call, match", [
    (lambda: Schedule(0), "T must be an integer >= 1; got 0"),
    (lambda: Schedule(2.5), "got 2.5"),
    (lambda: Schedule(True), "got True"),
    (lambda: Schedule(10, "quadratic"), "unknown schedule 'quadratic'"),
    (lambda: Schedule(10, "linear", beta_start=0.1, beta_end=0.01), "beta_start=0.1 > beta_end=0.01"),
    (lambda: Schedule(10, "linear", beta_start=0.0), r"beta_1 = 0\.0"),
    (lambda: Schedule(10, "sigmoid", beta_end=1.5), "strictly in"),
    (lambda: Schedule.from_betas([0.1, 1.0]), r"beta_2 = 1\.0"),
    (lambda: Schedule.from_betas([0.1, float("nan")]), "beta_2 = nan"),
    (lambda: Schedule(5, "sohl_dickstein", beta_max=1.0), "beta_max .* got 1.0"),
    (lambda: Schedule(5, "sohl_dickstein", variant="theano"), "variant 'theano'"),
    (lambda: schedules.prior_kl(1.0), "alpha_bar_T .* got 1.0"),
    (lambda: schedules.prior_kl(0.5, -1.0), "data_var .* got -1.0"),
])
def test_invalid_arguments_raise_value_error_naming_the_value(call, match):
    with pytest.raises(ValueError, match=match):
        call()
