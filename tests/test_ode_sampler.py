"""The ODE samplers through the one sampler (``sampling.sample``) and ``Diffusion``: flow models, the ODE likelihood."""

from __future__ import annotations

import math

import numpy as np
import pytest

from npdiff import Diffusion
from npdiff.nn.denoiser import Denoiser
from npdiff.processes import ode, sampling
from npdiff.processes.ddpm import EpsilonChain
from npdiff.processes.oracles import GaussianEpsilon
from npdiff.processes.predictions import PREDICTIONS
from npdiff.processes.schedules import Schedule
from npdiff.processes.sohl_dickstein import SohlDicksteinChain, make_model

MEAN = np.array([1.0, -0.5])
COV = np.array([[0.5, 0.2], [0.2, 0.3]])
TINY = dict(hidden=16, n_blocks=1, emb_dim=8)
SCALED = {"epsilon": dict(schedule_kwargs={"scale_to_T": True}), "flow": {}}  # a VP prior x_T ~ N(0, I) at T = 100


def net_chain(prediction="eps", T=40, **kwargs):
    model = Denoiser(2, hidden=16, n_blocks=1, emb_dim=8, dtype="float64", seed=3)
    return EpsilonChain(model, Schedule(T), prediction=prediction, **kwargs)


def oracle_chain(T=200):
    s = Schedule(T, "linear", scale_to_T=True)  # ᾱ_T ≈ 4e-5: x_T ~ N(0, I) is the prior
    return EpsilonChain(GaussianEpsilon(s, MEAN, COV), s)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_euler_through_the_one_sampler_is_ddim(prediction):
    chain = net_chain(prediction)
    x_T = np.random.default_rng(1).standard_normal((6, 2))
    ddim = sampling.sample(chain, 6, None, sampler="ddim", steps=9, x_T=x_T)
    euler = sampling.sample(chain, 6, None, sampler="euler", steps=9, x_T=x_T)
    np.testing.assert_allclose(euler, ddim, atol=1e-12)
    assert np.abs(sampling.sample(chain, 6, None, sampler="heun", steps=9, x_T=x_T) - ddim).max() > 1e-4


@pytest.mark.parametrize("solver", sampling.ODE_SAMPLERS)
def test_each_ode_sampler_draws_the_gaussian_data_from_the_exact_eps(solver):
    steps = 100 if solver == "euler" else 25  # first order needs more (docs/continuous-time.md)
    x = sampling.sample(oracle_chain(), 20_000, np.random.default_rng(0), sampler=solver, steps=steps, grid="karras")
    assert np.abs(x.mean(axis=0) - MEAN).max() < 0.03
    assert np.abs(np.cov(x.T) - COV).max() < 0.03


def test_record_gives_x_t_at_each_visited_timestep():
    chain = net_chain()
    x_T = np.random.default_rng(1).standard_normal((4, 2))
    for solver in sampling.ODE_SAMPLERS:
        x0, ts, xs = sampling.sample(chain, 4, None, sampler=solver, steps=5, x_T=x_T, record=True)
        assert list(ts) == list(chain.schedule.reverse_t(5)) + [0] and xs.shape == (6, 4, 2)
        np.testing.assert_allclose(xs[0], x_T, atol=1e-15)
        np.testing.assert_array_equal(xs[-1], x0)
    x0, ts, xs = sampling.sample(chain, 4, None, sampler="euler", steps=5, x_T=x_T, record=True)
    ddim = sampling.sample(chain, 4, None, sampler="ddim", steps=5, x_T=x_T, record=True)
    np.testing.assert_allclose(xs, ddim[2], atol=1e-12)  # the states themselves are DDIM's x_t


def test_every_ode_option_changes_the_samples():
    chain = net_chain()
    x_T = np.random.default_rng(1).standard_normal((5, 2))

    def run(**kw):
        base = dict(sampler="heun", steps=8, x_T=x_T)
        return sampling.sample(chain, 5, np.random.default_rng(2), **{**base, **kw})

    plain = run()
    for kw in (dict(steps=6), dict(grid="karras"), dict(sampler="dpmpp_2m"), dict(sampler="euler"),
               dict(s_churn=2.0), dict(s_churn=2.0, s_noise=0.5)):
        assert np.abs(run(**kw) - plain).max() > 1e-6, kw
    assert np.abs(run(grid="karras", rho=3.0) - run(grid="karras")).max() > 1e-6
    assert np.abs(run(s_churn=2.0, s_tmax=0.3) - run(s_churn=2.0)).max() > 1e-6
    np.testing.assert_array_equal(run(), plain)  # and it is deterministic


def test_the_ode_samplers_check_the_error_gain_and_stop_on_non_finite_values():
    cosine = Schedule(50, "cosine")
    chain = EpsilonChain(GaussianEpsilon(cosine, MEAN, COV), cosine)
    for solver in sampling.ODE_SAMPLERS:
        with pytest.raises(ValueError, match="clip_x0"):
            sampling.sample(chain, 4, np.random.default_rng(0), sampler=solver, steps=10)
    broken = net_chain()
    broken.model.flat_params[...] = np.nan
    with pytest.raises(FloatingPointError, match="non-finite values at t=40"):
        sampling.sample(broken, 3, np.random.default_rng(0), sampler="dpmpp_2m", steps=4)


def test_bad_combinations_are_one_line_errors():
    chain = net_chain()
    sd = SohlDicksteinChain(make_model(2, **TINY), Schedule(10))
    cases = [(sd, dict(sampler="heun"), "only a Gaussian kernel"),
             (chain, dict(sampler="euler", steps=0), "steps must be an integer >= 1"),
             (chain, dict(sampler="ddim", steps=0), "steps must be an integer >= 1"),
             (chain, dict(sampler="euler", steps=41), "more than the model's T = 40"),
             (chain, dict(sampler="euler", s_churn=1.0), "belongs to sampler='heun'"),
             (chain, dict(sampler="euler", grid="edm"), "unknown grid"),
             (chain, dict(sampler="ddim", grid="karras"), "grid and rho choose the ODE samplers"),
             (chain, dict(sampler="euler", eta=0.5), "eta belongs to the DDIM sampler"),
             (chain, dict(sampler="ancestral", steps=5), "ancestral sampling runs all T steps"),
             (chain, dict(sampler="euler", ddim_steps=5), "ddim_steps and eta belong to the DDIM sampler")]
    for process, kwargs, match in cases:
        with pytest.raises(ValueError, match=match) as info:
            sampling.sample(process, 3, np.random.default_rng(0), **kwargs)
        assert "\n" not in str(info.value)


def test_diffusion_samples_every_chain_with_every_ode_sampler_guided_and_conditioned():
    d = Diffusion(2, T=20, num_classes=3, **TINY)
    for solver in sampling.ODE_SAMPLERS:
        x = d.sample(8, sampler=solver, steps=5, labels="balanced", guidance=1.5)
        assert x.shape == (8, 2) and np.isfinite(x).all()
        given = d.sample(8, sampler=solver, steps=5, given=np.array([0.7, np.nan]))
        np.testing.assert_allclose(given[:, 0], 0.7, atol=1e-5)  # the given coordinate, to float32
    euler = d.sample(8, sampler="euler", steps=5, labels=1, guidance=1.5)
    np.testing.assert_allclose(euler, d.sample(8, sampler="ddim", steps=5, labels=1, guidance=1.5), atol=1e-5)
    with pytest.raises(ValueError, match="only a Gaussian kernel"):
        Diffusion(2, "sohl_dickstein", T=10, **TINY).sample(4, sampler="dpmpp_2m")


def gaussian_data(n, seed=0):
    scale = np.linalg.cholesky(COV)
    return MEAN + np.random.default_rng(seed).standard_normal((n, 2)) @ scale.T


def gaussian_log_p(x, sigma):
    """log N(x; MEAN, COV + σ² I): the data blurred by σ, which the ODE likelihood from σ_min = σ measures."""
    cov = COV + sigma * sigma * np.eye(2)
    diff = x - MEAN
    quad = np.einsum("ni,ij,nj->n", diff, np.linalg.inv(cov), diff)
    return -0.5 * (quad + np.log(np.linalg.det(2 * np.pi * cov)))


@pytest.fixture(scope="module")
def trained():
    x = gaussian_data(4000)
    models = {}
    for objective in ("epsilon", "flow"):
        d = Diffusion(2, objective, T=100, hidden=64, n_blocks=1, emb_dim=16, coord_scale=1.0, dtype="float64",
                      **SCALED[objective])
        d.fit(x, steps=1500, batch_size=256, lr=3e-3, progress=False)
        models[objective] = d
    return models


def test_a_trained_flow_model_samples_the_data_with_each_solver(trained):
    flow = trained["flow"]
    for solver in sampling.ODE_SAMPLERS:
        x = flow.sample(4000, sampler=solver, steps=25)
        assert np.abs(x.mean(axis=0) - MEAN).max() < 0.06, solver
        assert np.abs(np.cov(x.T) - COV).max() < 0.06, solver
    untrained = Diffusion(2, "flow", T=100, hidden=64, n_blocks=1, emb_dim=16, coord_scale=1.0, dtype="float64")
    assert np.abs(untrained.sample(4000, steps=25).mean(axis=0) - MEAN).max() > 0.2


def test_the_ode_likelihood_of_trained_models_reaches_the_true_density(trained):
    x = gaussian_data(300, seed=1)
    for objective, d in trained.items():
        result = d.ode_likelihood(x, steps=50)
        sigma_min = float(d.schedule.sqrt_recipm1_alpha_bar[1]) if objective == "epsilon" else 1.0 / 99
        true = gaussian_log_p(x, sigma_min).mean()
        assert abs(result.nats - true) < 0.1, (objective, result.nats, true)
        assert result.se < 0.1
        shifted = d.ode_likelihood(x, steps=50, log_det=0.7)
        np.testing.assert_allclose(shifted.values, result.values - 0.7, atol=1e-12)
    untrained = Diffusion(2, "epsilon", T=100, hidden=64, n_blocks=1, emb_dim=16, coord_scale=1.0, dtype="float64",
                          **SCALED["epsilon"])
    assert untrained.ode_likelihood(x, steps=50).nats < gaussian_log_p(x, 0.01).mean() - 0.5


def test_the_flow_density_in_its_own_time_integrates_to_one_and_needs_it():
    # a bijection's density is normalised for ANY network: ∫ exp(log p) = 1 checks the trace, the prior, the
    # integration and the change back to σ coordinates (D log(1 − t_min)) together (1-D, over [−12, 12])
    d = Diffusion(1, "flow", T=20, hidden=16, n_blocks=1, emb_dim=8, coord_scale=1.0, dtype="float64", seed=3)
    x = np.linspace(-12.0, 12.0, 1201)[:, None]
    density = np.exp(d.ode_likelihood(x).values)
    assert density[0] < 1e-8 and density[-1] < 1e-8
    assert np.trapezoid(density, x[:, 0]) == pytest.approx(1.0, abs=1e-5)  # measured: 1 + 2e-7


def test_a_flow_model_round_trips_and_refuses_what_it_has_not(tmp_path):
    d = Diffusion(2, "flow", T=50, time_distribution="logit_normal", logit_mean=0.3, logit_std=0.8, **TINY)
    d.fit(gaussian_data(200), steps=5, batch_size=32, progress=False)
    d.save(tmp_path / "flow.npz")
    back = Diffusion.load(tmp_path / "flow.npz")
    assert back.config == d.config and back.objective.config == d.objective.config
    np.testing.assert_array_equal(back.sample(5, sampler="heun", steps=4), d.sample(5, sampler="heun", steps=4))
    for kwargs, match in ((dict(sampler="ancestral"), "no reverse chain"), (dict(sampler="ddim"), "no reverse chain"),
                          (dict(clip_x0=(-1, 1)), "clip_x0"), (dict(steps=0), "steps must be")):
        with pytest.raises(ValueError, match=match):
            d.sample(3, **kwargs)
    with pytest.raises(ValueError, match="use ode_likelihood"):
        d.bound(gaussian_data(5))
    with pytest.raises(ValueError, match="belong to the 'flow' objective"):
        Diffusion(2, "epsilon", time_distribution="logit_normal")
    with pytest.raises(ValueError, match="Euler on a flow model steps evenly"):
        d.sample(3, sampler="euler", grid="karras")


def test_euler_on_a_flow_model_is_flow_euler_from_pure_noise():
    d = Diffusion(2, "flow", T=50, **TINY)
    x_T = np.random.default_rng(0).standard_normal((4, 2)).astype(np.float32)
    x0, ts, xs = d.sample(4, sampler="euler", steps=5, x_T=x_T, record=True)
    assert list(ts) == [50, 40, 30, 20, 10, 0]
    x = x_T
    for k, k_next in zip(ts[:-1], ts[1:]):  # x ← x + (t' − t) v(x, t), by hand
        v = d.model.forward(x, np.full(4, k))
        x = x + (k_next - k) / 50 * v
    np.testing.assert_allclose(x0, x, atol=1e-6)
    np.testing.assert_allclose(xs[-1], x0)
    assert math.isclose(float(d.chain().round_t(0.333)), 0.34)
