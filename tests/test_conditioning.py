"""npdiff.processes.conditioning: the product kernel, its exact cases, the wiring through the one sampler, and bad input.

The exact checks use Gaussian data N(M, S) with the exact ε (``EpsilonChain(GaussianEpsilon)``) or the exact
kernel (``GaussianOracle``, the zero-output Sohl-Dickstein chain). Neither of the paper's two choices of r_t
reproduces the posterior exactly: ``exact_moments`` measures their bias without sampling error, and the
tests pin it (docs/conditioning.md has the table), while the Monte-Carlo tests check that sampling through
``npdiff.processes.sampling.sample`` gives exactly those moments.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from npdiff import Diffusion
from npdiff.diffusion import CHAINLESS, OBJECTIVES
from npdiff.processes import conditioning as C, sampling
from npdiff.processes.ddpm import EpsilonChain
from npdiff.processes.oracles import GaussianEpsilon, GaussianOracle
from npdiff.processes.schedules import Schedule
from npdiff.processes.sohl_dickstein import SohlDicksteinChain, make_model

M = np.array([0.5, -0.3])
S = np.array([[1.0, 0.8], [0.8, 1.0]])  # correlation 0.8: the free coordinate depends on the known one
INPAINT = dict(given=[1.2, np.nan])
DENOISE = dict(observed=[1.2, -1.0], noise_std=0.5)


def vp_schedule(T: int) -> Schedule:
    """β(τ) = 0.1 + 19.9τ cut into T steps (demos/conditional.py): the same ᾱ_T = e^−10.05 for every T."""
    tau = np.linspace(0.0, 1.0, T + 1)
    alpha_bar = np.exp(-(0.1 * tau + 0.5 * 19.9 * tau**2))
    return Schedule.from_betas(1.0 - alpha_bar[1:] / alpha_bar[:-1])


def eps_chain(T: int, mean=M, cov=S):
    schedule = vp_schedule(T)
    return EpsilonChain(GaussianEpsilon(schedule, mean, cov), schedule, max_gain=None)


def start_moments(cond):
    """Mean and covariance of ``cond.x_T``: the product of N(0, I) with r_T, per coordinate."""
    ones = np.ones((1, cond.data_dim))
    mean, var = C.product(0 * ones, ones, *cond.factor_at(cond.schedule.T, ones))
    return mean[0], np.diag(var[0])


def conditioned_moments(chain, method, **condition):
    cond = C.Conditioned(chain, method=method, **condition)
    return C.exact_moments(cond, *start_moments(cond))


# ---- the product of two Gaussians ----------------------------------------------------------------------

def test_product_equals_the_precision_form_and_a_numerical_product_of_densities():
    rng = np.random.default_rng(0)
    mean, var = rng.normal(size=(4, 3)), rng.uniform(0.1, 2.0, (4, 3))
    m, v = rng.normal(size=(1, 3)), rng.uniform(0.05, 3.0, (1, 3))
    got_mean, got_var = C.product(mean, var, m, v)
    precision = 1 / var + 1 / v
    np.testing.assert_allclose(got_var, 1 / precision, rtol=1e-12)
    np.testing.assert_allclose(got_mean, (mean / var + m / v) / precision, rtol=1e-12)
    x = np.linspace(-15, 15, 200_001)  # the normalised product on a grid, one coordinate
    density = np.exp(-(x - mean[0, 0]) ** 2 / (2 * var[0, 0]) - (x - m[0, 0]) ** 2 / (2 * v[0, 0]))
    density /= density.sum()
    grid_mean = (x * density).sum()
    assert got_mean[0, 0] == pytest.approx(grid_mean, abs=1e-9)
    assert got_var[0, 0] == pytest.approx(((x - grid_mean) ** 2 * density).sum(), abs=1e-9)


def test_product_clamps_exactly_at_zero_variance_and_leaves_a_free_coordinate_alone():
    mean, var = np.array([[0.3, -1.0, 2.0]]), np.array([[0.5, 0.2, 1e-6]])
    m, v = np.array([[1.5, 7.0, -3.0]]), np.array([[0.0, np.inf, 0.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no 0/0, no inf/inf on the way
        got_mean, got_var = C.product(mean, var, m, v)
    assert got_mean[0, 0] == 1.5 and got_var[0, 0] == 0.0  # exactly the known value
    assert got_mean[0, 1] == -1.0 and got_var[0, 1] == 0.2  # exactly the kernel
    assert got_mean[0, 2] == -3.0 and got_var[0, 2] == 0.0


def test_product_averages_an_uncertain_factor_mean():
    mean, var = np.array([[0.0]]), np.array([[1.0]])
    got_mean, got_var = C.product(mean, var, np.array([[2.0]]), np.array([[1.0]]), extra=0.5)
    assert got_mean[0, 0] == pytest.approx(1.0) and got_var[0, 0] == pytest.approx(0.5 + 0.25 * 0.5)


# ---- the closed-form posterior of Gaussian data --------------------------------------------------------

def test_gaussian_posterior_matches_the_precision_form_and_the_joint_of_x_and_y():
    mean, cov = np.array([0.2, -0.1, 0.4]), np.array([[1.0, 0.5, 0.2], [0.5, 2.0, -0.6], [0.2, -0.6, 1.5]])
    got_mean, got_cov = C.gaussian_posterior(mean, cov, given=[np.nan, 1.0, np.nan])
    precision = np.linalg.inv(cov)
    f = [0, 2]
    free_cov = np.linalg.inv(precision[np.ix_(f, f)])  # x_F | x_K has covariance (P_FF)⁻¹
    np.testing.assert_allclose(got_cov[np.ix_(f, f)], free_cov, atol=1e-12)
    np.testing.assert_allclose(got_mean[f], mean[f] - free_cov @ precision[f, 1] * (1.0 - mean[1]), atol=1e-12)
    assert got_mean[1] == 1.0 and not got_cov[1].any()
    y, s = np.array([1.0, 0.0, -2.0]), np.array([0.5, 1.0, 2.0])  # y = x + N(0, diag s²): condition the joint on y
    got_mean, got_cov = C.gaussian_posterior(mean, cov, observed=y, noise_std=s)
    gain = cov @ np.linalg.inv(cov + np.diag(s**2))
    np.testing.assert_allclose(got_mean, mean + gain @ (y - mean), atol=1e-12)
    np.testing.assert_allclose(got_cov, cov - gain @ cov, atol=1e-12)


# ---- exact checks: moments of the conditioned chains ---------------------------------------------------

def test_exact_moments_of_the_unconditioned_chains_reach_the_data():
    m0, c0 = C.exact_moments(eps_chain(1000))
    np.testing.assert_allclose(m0, M, atol=1e-4)  # 1e-5: x_T ~ N(0, I) where q(x_T) has mean √ᾱ_T M
    np.testing.assert_allclose(c0, S, atol=0.01)  # the diagonal β̃_t kernel's own error: 0.0084 at T = 1000
    oracle = GaussianOracle(vp_schedule(50), 2.0, 2)  # the exact kernel: exact at any T but for the last step's
    m0, c0 = C.exact_moments(oracle)  # variance, which the sampler does not add (x_0 = μ(x_1)), and ~4ᾱ_T² = 2e-9
    np.testing.assert_allclose(m0, 0, atol=1e-12)
    np.testing.assert_allclose(c0, (2.0 - np.exp(oracle.log_var[1])) * np.eye(2), atol=1e-8)


@pytest.mark.parametrize("method", C.METHODS)
def test_inpainting_independent_coordinates_leaves_the_free_one_as_unconditioned(method):
    oracle = GaussianOracle(vp_schedule(20), 2.0, 2)
    free_var = C.exact_moments(oracle)[1][0, 0]
    m, c = conditioned_moments(oracle, method, given=[np.nan, 0.7])
    np.testing.assert_allclose(m, [0.0, 0.7], atol=1e-12)
    np.testing.assert_allclose(c, np.diag([free_var, 0.0]), atol=1e-12)


@pytest.mark.parametrize("case, method, mean_err, cov_err", [
    (INPAINT, "paper", 0.0826, 0.1295), (INPAINT, "replace", 0.2107, 0.1297),
    (DENOISE, "paper", 0.1129, 0.0714), (DENOISE, "replace", 0.0720, 0.0785)])
def test_the_bias_at_T_1000_is_the_documented_one_and_does_not_shrink_with_T(case, method, mean_err, cov_err):
    post_mean, post_cov = C.gaussian_posterior(M, S, **case)
    m, c = conditioned_moments(eps_chain(1000), method, **case)
    assert np.abs(m - post_mean).max() == pytest.approx(mean_err, abs=2e-4)  # docs/conditioning.md's table
    assert np.abs(c - post_cov).max() == pytest.approx(cov_err, abs=2e-4)
    m100, c100 = conditioned_moments(eps_chain(100), method, **case)
    assert np.abs(m100 - m).max() < 0.03 and np.abs(c100 - c).max() < 0.04  # the T → ∞ limit, nearly reached


def test_with_the_exact_message_h_t_as_r_t_the_product_kernel_gives_the_exact_posterior_at_any_T():
    """Eq. 22 with r_t = h_t(x_t) = E[r(x_0) | x_t] is exact (docs/conditioning.md): for N(0, σ0² I) data,
    E[x_0 | x_t] = c_t x_t with c_t = √ᾱ_t σ0²/u_t, u_t = ᾱ_t σ0² + 1 − ᾱ_t, and Var = σ0² − c_t² u_t, so
    h_t(x) ∝ N(x; y/c_t, (s² + Var)/c_t²) per coordinate; h_0 = r."""
    data_var, y, s = 2.0, np.array([1.2, -1.0]), 0.5
    for T in (3, 40):
        oracle = GaussianOracle(vp_schedule(T), data_var, 2)

        def message(t_prev, like):
            ab = oracle.schedule.alpha_bar[np.asarray(t_prev)].reshape(-1, 1)
            u = ab * data_var + 1 - ab
            c = np.sqrt(ab) * data_var / u
            return y / c, (s**2 + data_var - c**2 * u) / c**2, 0.0

        cond = C.Conditioned(oracle, observed=y, noise_std=s, method=message)
        m, c = C.exact_moments(cond, *start_moments(cond))
        post_mean, post_cov = C.gaussian_posterior(np.zeros(2), data_var * np.eye(2), observed=y, noise_std=s)
        last_var = np.exp(cond.kernel(np.zeros((1, 2)), np.ones(1, dtype=int))[1][0])  # not added at t = 1
        np.testing.assert_allclose(m, post_mean, atol=1e-8)
        np.testing.assert_allclose(c, post_cov - np.diag(last_var), atol=1e-8)
        paper = conditioned_moments(oracle, "paper", observed=y, noise_std=s)  # the constant r_t is not
        assert np.abs(paper[0] - post_mean).max() > 0.05


def test_a_known_coordinate_keeps_its_value_and_the_free_one_moves_towards_the_posterior():
    post_mean, _ = C.gaussian_posterior(M, S, **INPAINT)
    m, c = conditioned_moments(eps_chain(1000), "paper", **INPAINT)
    assert m[0] == 1.2 and c[0, 0] == 0 and c[0, 1] == 0
    assert M[1] < m[1] < post_mean[1]  # conditioning on x1 = 1.2 > M[0] raises x2 (ρ = 0.8), if not all the way


def test_x_T_draws_the_modified_start_of_Eq_16():
    chain, n = eps_chain(10), 200_000
    x = C.Conditioned(chain, **INPAINT).x_T(n, np.random.default_rng(0))
    assert np.all(x[:, 0] == 1.2)  # r_T = r: the known coordinate is known from the start
    y = C.Conditioned(chain, **DENOISE).x_T(n, np.random.default_rng(0))  # N(0, 1) · N(y, 0.25)
    np.testing.assert_allclose(y.mean(0), np.array(DENOISE["observed"]) / 1.25, atol=5 * np.sqrt(0.2 / n))
    np.testing.assert_allclose(y.var(0), 0.25 / 1.25, rtol=0.02)
    x = C.Conditioned(chain, **INPAINT, method="replace").x_T(n, np.random.default_rng(0))
    ab = chain.schedule.alpha_bar[-1]  # the forward-diffused known value: N(√ᾱ_T a, 1 − ᾱ_T)
    assert x[:, 0].mean() == pytest.approx(np.sqrt(ab) * 1.2, abs=5 / np.sqrt(n))
    assert x[:, 0].var() == pytest.approx(1 - ab, rel=0.02)


# ---- the wiring: sampling through npdiff.processes.sampling.sample gives exactly those moments ------------------

@pytest.mark.parametrize("T, n", [(10, 40_000), (1000, 2000)])
@pytest.mark.parametrize("method", C.METHODS)
@pytest.mark.parametrize("case", [INPAINT, DENOISE], ids=["inpaint", "denoise"])
def test_samples_match_the_exact_moments_of_the_conditioned_chain_within_sampling_error(T, n, method, case):
    chain = eps_chain(T)
    cond = C.Conditioned(chain, method=method, **case)
    x = sampling.sample(cond, n, np.random.default_rng(1), x_T=cond.x_T(n, np.random.default_rng(2)))
    mean, cov = C.exact_moments(cond, *start_moments(cond))
    free = np.diag(cov) > 0
    se_mean = np.sqrt(np.diag(cov)[free] / n)
    assert np.all(np.abs(x.mean(0)[free] - mean[free]) < 5 * se_mean)
    sample_cov = np.cov(x, rowvar=False)
    se_cov = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)  # SE of a Gaussian sample covariance
    assert np.all(np.abs(sample_cov - cov)[np.ix_(free, free)] < 5 * se_cov[np.ix_(free, free)])
    np.testing.assert_array_equal(x[:, ~free], np.broadcast_to(mean[~free], (n, (~free).sum())))


def test_conditioned_sohl_dickstein_chain_is_the_conditioned_exact_kernel():
    schedule = vp_schedule(20)
    chain = SohlDicksteinChain(make_model(2, hidden=8, n_blocks=1, emb_dim=8, dtype="float64"), schedule)
    for condition in (dict(given=[np.nan, 0.7]), DENOISE):
        for method in C.METHODS:
            want = conditioned_moments(GaussianOracle(schedule, 1.0, 2), method, **condition)
            got = conditioned_moments(chain, method, **condition)
            np.testing.assert_allclose(got[0], want[0], atol=1e-12)
            np.testing.assert_allclose(got[1], want[1], atol=1e-12)


@pytest.mark.parametrize("objective", [o for o in OBJECTIVES if o not in CHAINLESS])  # a flow model: ode.py
def test_any_trained_chain_conditions_in_many_dimensions(objective):
    diffusion = Diffusion(16, objective, T=12, hidden=16, n_blocks=1, emb_dim=8)
    given = np.full((5, 16), np.nan)
    given[:, :8] = np.arange(8)  # the first half of each "image" known
    given[2, 8:12] = -1.0  # rows may differ
    cond = C.Conditioned(diffusion.process, given=given)
    x = cond.sample(5, np.random.default_rng(0))
    known = ~np.isnan(given)
    np.testing.assert_array_equal(x[known], given[known])
    assert np.isfinite(x).all() and np.ptp(x[:, 12:], axis=0).min() > 0
    mean, log_var = cond.kernel(x, np.full(5, 3))
    assert np.all(np.isneginf(log_var[known])) and np.isfinite(log_var[~known]).all()


def test_a_free_factor_leaves_the_kernel_unchanged_and_the_gain_check_still_applies():
    chain = eps_chain(10)
    cond = C.Conditioned(chain, observed=np.zeros(2), noise_std=np.inf)
    x_t, t = np.random.default_rng(0).normal(size=(4, 2)), np.full(4, 5)
    for got, want in zip(cond.kernel(x_t, t), chain.kernel(x_t, t)):
        np.testing.assert_array_equal(got, want)
    cosine = Schedule(50, "cosine")
    risky = C.Conditioned(EpsilonChain(GaussianEpsilon(cosine, M, S), cosine), **INPAINT)
    with pytest.raises(ValueError, match="clip_x0"):
        sampling.sample(risky, 4, np.random.default_rng(0))
    with pytest.raises(ValueError, match="DDIM needs an ε-prediction chain"):
        sampling.sample(cond, 4, np.random.default_rng(0), sampler="ddim")


# ---- bad conditions: one-line ValueErrors -------------------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    (dict(given=[1.0, 2.0, np.nan]), r"given must have shape \(2,\) or \(N, 2\)"),
    (dict(given=np.zeros((2, 2, 2))), "given must have shape"),
    (dict(given=[1.0, 2.0]), "knows every coordinate exactly"),
    (dict(given=[[np.nan, 1.0], [1.0, 2.0]]), "row 1 of the condition knows every coordinate"),
    (dict(given=[np.nan, np.nan]), "no known coordinate"),
    (dict(given=[np.inf, np.nan]), "given holds inf"),
    (dict(observed=[np.nan, 1.0], noise_std=0.5), "observed holds NaN or inf"),
    (dict(observed=[1.0, 1.0], noise_std=-0.1), "noise_std must be >= 0"),
    (dict(observed=[1.0, 1.0], noise_std=np.nan), "noise_std must be >= 0"),
    (dict(observed=[1.0, 1.0], noise_std=[0.1, 0.2, 0.3]), "noise_std must be a number"),
    (dict(observed=[1.0, 1.0], noise_std=0.0), "knows every coordinate exactly"),
    (dict(observed=[1.0, 1.0]), "observed and noise_std go together"),
    (dict(noise_std=0.5), "observed and noise_std go together"),
    (dict(), "nothing to condition on"),
    (dict(given=[[np.nan, 1.0]] * 3, observed=[[1.0, 1.0]] * 2, noise_std=1.0), "same number of rows"),
])
def test_bad_conditions_raise_one_line_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        C.Conditioned(eps_chain(5), **kwargs)
    assert "\n" not in str(info.value)


def test_bad_method_and_row_count_raise():
    with pytest.raises(ValueError, match="unknown method 'exact'"):
        C.Conditioned(eps_chain(5), **INPAINT, method="exact")
    cond = C.Conditioned(eps_chain(5), given=[[np.nan, 1.0]] * 3)
    with pytest.raises(ValueError, match="this condition has 3 rows; sample 3 points, not 4"):
        cond.sample(4, np.random.default_rng(0))


# ---- the command line's entry: condition files --------------------------------------------------------

def test_from_files_reads_nan_as_free_and_standardises(tmp_path):
    np.save(tmp_path / "given.npy", np.array([[np.nan, 3.0], [5.0, np.nan]]))
    (tmp_path / "obs.csv").write_text("x,y\n1.0,2.0\n")
    mean, std = np.array([1.0, 1.0]), np.array([2.0, 4.0])
    got = C.from_files(2, given=tmp_path / "given.npy", mean=mean, std=std)
    np.testing.assert_allclose(got["given"], [[np.nan, 0.5], [2.0, np.nan]])
    got = C.from_files(2, observed=tmp_path / "obs.csv", noise_std=0.4, mean=mean, std=std)
    np.testing.assert_allclose(got["observed"], [[0.0, 0.25]])
    np.testing.assert_allclose(got["noise_std"], [0.2, 0.1])
    (tmp_path / "nan.csv").write_text("nan,1.5\n")
    assert np.isnan(C.from_files(2, given=tmp_path / "nan.csv")["given"][0, 0])


@pytest.mark.parametrize("content, kwargs, match", [
    (np.array([1.0, np.nan, 2.0]), {}, r"holds shape \(3,\); expected \(2,\) or \(N, 2\)"),
    (np.array([1.0, 2.0]), {}, "knows every coordinate exactly"),
    (np.array([np.nan, np.nan]), {}, "no known coordinate"),
    (np.array([1.0, 2.0]), dict(observed=True, noise_std=-1.0), "--noise-std must be a number >= 0"),
    (np.array([np.nan, 2.0]), dict(observed=True, noise_std=0.5), "observed holds NaN"),
])
def test_bad_condition_files_raise_one_line_errors_naming_the_file(tmp_path, content, kwargs, match):
    path = tmp_path / "cond.npy"
    np.save(path, content)
    args = dict(observed=path, noise_std=kwargs["noise_std"]) if kwargs.get("observed") else dict(given=path)
    with pytest.raises(ValueError, match=match) as info:
        C.from_files(2, **args)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="expected a .npy or .csv"):
        C.from_files(2, given=tmp_path / "cond.txt")
    with pytest.raises(FileNotFoundError):
        C.from_files(2, given=tmp_path / "missing.npy")
