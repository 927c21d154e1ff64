"""Probability-flow ODE solvers (npdiff.processes.ode), proven on Gaussian data with the exact denoiser.

For data N(m, S) the exact denoiser is affine in y, so every deterministic solver is an affine map: running it on
the rows [m; m + columns of L] (L Lᵀ the starting covariance) gives the exact mean and covariance it produces,
with no Monte Carlo error. The convergence orders, the DDIM identities and the equality with diffusers'
schedulers are checked on that.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from npdiff.nn.denoiser import Denoiser
from npdiff.processes import conditioning, ode, sampling
from npdiff.processes.ddpm import EpsilonChain
from npdiff.processes.oracles import GaussianDenoiser, GaussianEpsilon
from npdiff.processes.predictions import PREDICTIONS
from npdiff.processes.schedules import Schedule

MEAN = np.array([0.5, -1.0, 0.3])


def _spd(rng, eigvals):
    q = np.linalg.qr(rng.standard_normal((len(eigvals), len(eigvals))))[0]
    return (q * np.asarray(eigvals)) @ q.T


COV = _spd(np.random.default_rng(0), [0.2, 0.7, 2.0])


def final_moments(denoiser, sigmas, solver, start_cov, mean=MEAN):
    """(mean, covariance) of the solver's output for y_0 ~ N(mean, start_cov), exactly (module docstring)."""
    L = np.linalg.cholesky(start_cov)
    out = ode.solve(denoiser, sigmas, np.vstack([mean, mean + L.T]), solver)
    spread = out[1:] - out[0]
    return out[0], spread.T @ spread


def covariance_error(solver, steps):
    oracle = GaussianDenoiser(MEAN, COV)
    sigmas = ode.karras_sigmas(steps, 2e-3, 80.0)
    mean, cov = final_moments(oracle, sigmas, solver, oracle.marginal_cov(sigmas[0]))
    return ode.nfe(solver, sigmas), np.linalg.norm(cov - COV) / np.linalg.norm(COV), np.abs(mean - MEAN).max()


def test_karras_sigmas_follow_edm_eq5():
    sigmas = ode.karras_sigmas(5, 0.002, 80.0, rho=7.0)
    assert sigmas.shape == (6,) and sigmas[-1] == 0
    assert sigmas[0] == pytest.approx(80.0, rel=1e-14) and sigmas[4] == pytest.approx(0.002, rel=1e-12)
    middle = (80.0 ** (1 / 7) + 0.5 * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7
    assert sigmas[2] == pytest.approx(middle, rel=1e-14)


def test_ddim_sigmas_are_the_schedules_levels_at_ddims_timesteps():
    schedule = Schedule(100)
    sigmas = ode.ddim_sigmas(schedule, 10)
    ts = schedule.reverse_t(10)
    np.testing.assert_allclose(sigmas[:-1], np.sqrt((1 - schedule.alpha_bar[ts]) / schedule.alpha_bar[ts]), rtol=1e-11)
    assert sigmas[-1] == 0


@pytest.mark.parametrize("solver,order", [("euler", 1), ("heun", 2), ("dpmpp_2m", 2)])
def test_final_covariance_error_falls_as_nfe_to_the_solvers_order(solver, order):
    results = [covariance_error(solver, steps) for steps in (32, 64, 128)]
    nfe, err = np.array([r[0] for r in results]), np.array([r[1] for r in results])
    slope = np.polyfit(np.log(nfe), np.log(err), 1)[0]
    assert abs(slope + order) < 0.15, f"{solver}: log-log slope {slope:.3f}, errors {err}"
    assert max(r[2] for r in results) < 1e-12  # the mean is a fixed point of every step: D*(m, σ) = m
    assert err[-1] < (0.05 if order == 1 else 0.002)


def test_one_solver_step_from_the_exact_marginal_tracks_the_exact_ode_solution():
    # the local error of one step of size h is O(h^2) for Euler, O(h^3) for Heun: halving h divides it by 4 and 8
    oracle, rng = GaussianDenoiser(MEAN, COV), np.random.default_rng(1)
    y = MEAN + rng.standard_normal((4, 3)) * 2.0
    for solver, ratio in (("euler", 4.0), ("heun", 8.0)):
        errs = []
        for h in (0.2, 0.1):
            step = ode.heun if solver == "heun" else ode.euler
            one = step(oracle, np.array([1.0, 1.0 - h]), y)  # a single step of size h, from σ = 1
            errs.append(np.abs(one - oracle.transport(y, 1.0, 1.0 - h)).max())
        assert errs[0] / errs[1] == pytest.approx(ratio, rel=0.15), (solver, errs)


def _x0_oracle(schedule, prediction):
    """The exact ε-oracle re-expressed as an x̂_0- or v-predicting model (the chain converts back)."""
    eps_model = GaussianEpsilon(schedule, MEAN, COV)

    class Converted:
        data_dim, dtype = 3, np.dtype("float64")

        def forward(self, x_t, t):
            eps = eps_model.forward(x_t, t)
            if prediction == "eps":
                return eps
            x0 = schedule.predict_x0(x_t, t, eps)
            return x0 if prediction == "x0" else schedule.v_target(x0, t, eps)

    return Converted()


@pytest.mark.parametrize("steps", [10, None])
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_euler_equals_ddim_with_eta_zero(prediction, steps):
    schedule = Schedule(200, "cosine")
    chain = EpsilonChain(_x0_oracle(schedule, prediction), schedule, prediction=prediction, max_gain=None)
    x_T = np.random.default_rng(2).standard_normal((16, 3))
    ddim = sampling.sample(chain, 16, None, sampler="ddim", ddim_steps=steps, eta=0.0, x_T=x_T)
    euler = ode.sample_ode(ode.ChainDenoiser(chain), 16, None, ode.ddim_sigmas(schedule, steps), solver="euler",
                           x_T=x_T)
    np.testing.assert_allclose(euler, ddim, rtol=0, atol=1e-12)


def test_first_order_dpm_solver_pp_equals_ddim():
    schedule = Schedule(300)
    chain = EpsilonChain(GaussianEpsilon(schedule, MEAN, COV), schedule, max_gain=None)
    x_T = np.random.default_rng(3).standard_normal((16, 3))
    ddim = sampling.sample(chain, 16, None, sampler="ddim", ddim_steps=25, x_T=x_T)
    dpm1 = ode.sample_ode(ode.ChainDenoiser(chain), 16, None, ode.ddim_sigmas(schedule, 25), solver="dpmpp_2m",
                          x_T=x_T, order=1)
    np.testing.assert_allclose(dpm1, ddim, rtol=0, atol=1e-12)
    dpm2 = ode.sample_ode(ode.ChainDenoiser(chain), 16, None, ode.ddim_sigmas(schedule, 25), solver="dpmpp_2m", x_T=x_T)
    assert np.abs(dpm2 - ddim).max() > 1e-3  # the second-order correction is really applied


def test_euler_equals_ddim_for_a_guided_class_conditional_network():
    schedule = Schedule(50)
    model = Denoiser(2, hidden=16, n_blocks=1, emb_dim=8, num_classes=3, dtype="float64", seed=4)
    labels = np.array([0, 1, 2, 1, 0])
    chain = EpsilonChain(model, schedule, labels=labels, guidance=1.5, max_gain=None, prediction="v")
    x_T = np.random.default_rng(5).standard_normal((5, 2))
    ddim = sampling.sample(chain, 5, None, sampler="ddim", ddim_steps=12, x_T=x_T)
    euler = ode.sample_ode(ode.ChainDenoiser(chain), 5, None, ode.ddim_sigmas(schedule, 12), solver="euler", x_T=x_T)
    np.testing.assert_allclose(euler, ddim, rtol=0, atol=1e-12)
    unguided = EpsilonChain(model, schedule, labels=labels, guidance=0.0, max_gain=None, prediction="v")
    other = ode.sample_ode(ode.ChainDenoiser(unguided), 5, None, ode.ddim_sigmas(schedule, 12), solver="euler", x_T=x_T)
    assert np.abs(other - euler).max() > 1e-3  # the guidance reaches the ODE


def test_a_discrete_model_is_sampled_on_its_own_levels_and_reaches_the_data():
    schedule = Schedule(1000)
    denoiser = ode.ChainDenoiser(EpsilonChain(GaussianEpsilon(schedule, MEAN, COV), schedule, max_gain=None))
    sigmas = ode.on_timesteps(denoiser, ode.karras_sigmas(100, denoiser.sigmas[1], denoiser.sigmas[-1]))
    assert all(np.isclose(denoiser.sigmas, s, rtol=1e-12).any() for s in sigmas[:-1])
    start = COV * schedule.alpha_bar[-1] + (1 - schedule.alpha_bar[-1]) * np.eye(3)  # the exact q(x_T)
    scale = ode.prior_std(sigmas[0])
    start_mean = math.sqrt(schedule.alpha_bar[-1]) * MEAN * scale  # y_0 = √(1 + σ_0²) x_T
    mean, cov = final_moments(denoiser, sigmas, "heun", start * scale ** 2, mean=start_mean)
    assert np.linalg.norm(cov - COV) / np.linalg.norm(COV) < 0.01
    assert np.abs(mean - MEAN).max() < 1e-6
    with pytest.raises(ValueError, match="not a noise level"):
        denoiser(np.zeros((1, 3)), 0.5 * (denoiser.sigmas[10] + denoiser.sigmas[11]))


@pytest.mark.parametrize("solver", ode.SOLVERS)
def test_the_conditioned_ode_samples_the_exact_gaussian_posterior(solver):
    # given x_0 = 1.5 and an observation 0.4 of x_2 with noise 0.5: the posterior is conditioning.gaussian_posterior's
    given, observed = np.array([1.5, np.nan, np.nan]), np.array([0.0, 0.0, 0.4])
    noise_std = np.array([np.inf, np.inf, 0.5])  # x_2 observed with noise 0.5, x_1 free
    m, v = conditioning.factor(3, given=given, observed=observed, noise_std=noise_std)
    post_mean, post_cov = conditioning.gaussian_posterior(MEAN, COV, given, observed, noise_std)
    denoiser = ode.ConditionedDenoiser(GaussianDenoiser(MEAN, COV), m, v)
    sigmas = ode.karras_sigmas(128, 2e-3, 80.0)
    start = post_cov + sigmas[0] ** 2 * np.eye(3)  # the posterior blurred by σ_max
    mean, cov = final_moments(denoiser, sigmas, solver, start, mean=post_mean)
    assert mean[0] == pytest.approx(1.5, abs=1e-12) and abs(cov[0]).max() < 1e-12  # the given coordinate is exact
    np.testing.assert_allclose(mean, post_mean, atol=1e-9)
    assert np.linalg.norm(cov - post_cov) / np.linalg.norm(post_cov) < (0.05 if solver == "euler" else 2e-3)
    unconditioned = final_moments(GaussianDenoiser(MEAN, COV), sigmas, solver, start, mean=post_mean)[1]
    assert np.linalg.norm(unconditioned - post_cov) / np.linalg.norm(post_cov) > 0.3  # the condition matters


def test_a_conditioned_network_ends_on_its_given_coordinates():
    schedule = Schedule(50)
    model = Denoiser(3, hidden=16, n_blocks=1, emb_dim=8, coord_scale=1.0, dtype="float64", seed=2)
    m, v = conditioning.factor(3, given=np.array([[0.7, np.nan, -0.2]] * 4))
    denoiser = ode.ConditionedDenoiser(ode.ChainDenoiser(EpsilonChain(model, schedule, prediction="v", max_gain=None)),
                                       m, v)
    out = ode.sample_ode(denoiser, 4, np.random.default_rng(3), ode.ddim_sigmas(schedule, 20), solver="dpmpp_2m")
    np.testing.assert_allclose(out[:, [0, 2]], [[0.7, -0.2]] * 4, atol=1e-10)
    assert out[:, 1].std() > 1e-3
    with pytest.raises(ValueError, match="same coordinates"):
        ode.ConditionedDenoiser(denoiser, [[0.0, np.nan, 0.0], [np.nan, 0.0, 0.0]], [[0, np.inf, 0], [np.inf, 0, 0]])


def test_heun_with_churn_adds_noise_and_still_samples_the_data():
    oracle, rng = GaussianDenoiser(MEAN[:2], COV[:2, :2]), np.random.default_rng(6)
    sigmas = ode.karras_sigmas(128, 2e-3, 80.0)
    x_T = rng.standard_normal((20000, 2))
    plain = ode.sample_ode(oracle, 0, rng, sigmas, solver="heun", x_T=x_T)
    churned = ode.sample_ode(oracle, 0, rng, sigmas, solver="heun", x_T=x_T, s_churn=40.0, s_tmin=0.05, s_tmax=50.0)
    assert np.abs(churned - plain).mean() > 0.05  # the churn changes the paths
    # 128 Heun steps are within 1 % of N(m, S) (the test above); 20000 draws: a standard error of ~1.5 % per entry
    np.testing.assert_allclose(np.cov(churned.T), COV[:2, :2], atol=0.08)
    np.testing.assert_allclose(churned.mean(axis=0), MEAN[:2], atol=0.04)
    with pytest.raises(ValueError, match="rng"):
        ode.solve(oracle, sigmas, x_T, "heun", s_churn=1.0)


def test_every_churn_option_changes_what_heun_does():
    oracle, sigmas = GaussianDenoiser(MEAN, COV), ode.karras_sigmas(16, 2e-3, 80.0)
    x_T = np.random.default_rng(8).standard_normal((5, 3))

    def run(**options):
        return ode.sample_ode(oracle, 0, np.random.default_rng(9), sigmas, solver="heun", x_T=x_T, **options)

    plain = run()
    np.testing.assert_array_equal(run(s_churn=5.0, s_tmin=100.0), plain)  # no σ_i in [S_tmin, S_tmax]: no churn
    np.testing.assert_array_equal(run(s_churn=5.0, s_tmax=1e-3), plain)
    quiet = run(s_churn=5.0, s_noise=0.0)  # σ raised to σ̂ without noise: a different, deterministic path
    assert np.abs(quiet - plain).max() > 1e-4
    np.testing.assert_array_equal(quiet, run(s_churn=5.0, s_noise=0.0))
    assert np.abs(run(s_churn=5.0) - quiet).max() > 1e-3
    assert np.abs(run(s_churn=5.0, s_tmin=1.0) - run(s_churn=5.0)).max() > 1e-3


def test_solve_refuses_a_grid_that_does_not_fall_to_zero():
    oracle = GaussianDenoiser(MEAN, COV)
    for bad in ([1.0, 0.5], [1.0, 2.0, 0.0], [1.0]):
        with pytest.raises(ValueError, match="decreasing grid"):
            ode.solve(oracle, bad, np.zeros((1, 3)), "euler")
    with pytest.raises(ValueError, match="unknown solver"):
        ode.solve(oracle, [1.0, 0.0], np.zeros((1, 3)), "rk4")


# diffusers' schedulers given the same model outputs (the cross-check extra; CI sets NPDIFF_CROSSCHECK=1)

T_CHECK = 1000


def _eps_model_and_denoiser():
    """ε̂(x_t, k) with diffusers' timestep k = our t − 1, and the σ-denoiser D(y, σ) = y − σ ε̂ that diffusers'
    Euler and Heun form from it: x_t = y/√(1 + σ²), k the level nearest σ."""
    schedule = Schedule(T_CHECK)
    eps_model = GaussianEpsilon(schedule, MEAN, COV)
    levels = np.log(schedule.sqrt_recipm1_alpha_bar[1:])

    def eps(x_t, k):
        return eps_model.forward(x_t, np.full(x_t.shape[0], int(round(float(k))) + 1))

    class Denoise:
        def round_sigma(self, sigma):
            return sigma

        def __call__(self, y, sigma):
            k = int(np.argmin(np.abs(levels - math.log(sigma))))
            return y - sigma * eps(y / math.sqrt(1 + sigma * sigma), k)

    return schedule, eps, Denoise()


def _run_diffusers(torch, scheduler, eps, x_T, steps):
    scheduler.set_timesteps(steps)
    sample = torch.from_numpy(x_T) * float(scheduler.init_noise_sigma)
    for k in scheduler.timesteps:
        model_input = scheduler.scale_model_input(sample, k)
        sample = scheduler.step(torch.from_numpy(eps(model_input.numpy(), k)), k, sample).prev_sample
    return sample.double().numpy(), scheduler.sigmas.double().numpy()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # diffusers on NumPy 2
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # diffusers' own NumPy 2 warning
@pytest.mark.parametrize("name,solver", [("EulerDiscreteScheduler", "euler"), ("HeunDiscreteScheduler", "heun"),
                                         ("DPMSolverMultistepScheduler", "dpmpp_2m")])
def test_each_solver_equals_diffusers_scheduler_on_the_same_model_outputs(crosscheck, name, solver):
    diffusers, torch = crosscheck("diffusers"), crosscheck("torch")
    schedule, eps, denoise = _eps_model_and_denoiser()
    options = (dict(algorithm_type="dpmsolver++", solver_order=2) if solver == "dpmpp_2m"
               else dict(timestep_spacing="leading"))  # integer timesteps
    scheduler = getattr(diffusers, name)(num_train_timesteps=T_CHECK, trained_betas=schedule.betas[1:].tolist(),
                                         **options)
    x_T = np.random.default_rng(7).standard_normal((8, 3))
    theirs, sigmas = _run_diffusers(torch, scheduler, eps, x_T, 12)
    if solver == "heun":  # diffusers lists each inner level twice, once per evaluation
        sigmas = np.append(sigmas[::2], 0.0)
    ours = ode.solve(denoise, sigmas, ode.prior_std(sigmas[0]) * x_T, solver)
    # diffusers keeps its sigmas, and the sample at each step's entry, in float32: agreement to that rounding
    # (measured: at most 5.2e-7 on samples of size ~2; a wrong coefficient moves them by ~1e-2)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=3e-6)


def test_the_ode_samplers_run_on_device_with_numpys_numbers_and_no_read_back_per_step(strict_cupy):
    from npdiff import backend

    config = Denoiser(2, hidden=16, n_blocks=1, emb_dim=8, num_classes=3, dtype="float64", seed=4).config
    weights = np.random.default_rng(4).uniform(-0.5, 0.5, backend.to_numpy(Denoiser(**config).flat_params).size)
    x_T, labels, schedule = np.random.default_rng(5).standard_normal((6, 2)), np.array([0, 1, 2, 0, 1, 2]), Schedule(50)
    sigmas = ode.ddim_sigmas(schedule, 10)
    outputs = {}
    for where in ("device", "host"):  # the strict CuPy double, then NumPy
        if where == "host":
            backend.set_backend("numpy")
        model = Denoiser(**config)
        model.flat_params[...] = backend.asarray(weights)
        chain = EpsilonChain(model, schedule, labels=backend.asarray(labels), guidance=1.5, max_gain=None)
        x = backend.asarray(x_T)
        strict_cupy.TRANSFERS.reset()
        outputs[where] = {solver: ode.solve(ode.ChainDenoiser(chain), sigmas, x, solver) for solver in ode.SOLVERS}
        conditioned = ode.ConditionedDenoiser(ode.ChainDenoiser(chain), [0.3, np.nan], [0.0, np.inf])
        outputs[where]["conditioned"] = ode.solve(conditioned, sigmas, x, "heun")
        if where == "device":
            assert strict_cupy.TRANSFERS.count == 0, strict_cupy.TRANSFERS.sites()
        outputs[where] = {k: backend.to_numpy(v) for k, v in outputs[where].items()}
    for solver in (*ode.SOLVERS, "conditioned"):
        np.testing.assert_allclose(outputs["device"][solver], outputs["host"][solver], rtol=1e-12, atol=1e-12)
