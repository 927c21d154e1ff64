"""Flow matching (npdiff.processes.flow): the objective's gradients, its exact-velocity oracle, and the flow ODE
as DDIM in other coordinates."""

from __future__ import annotations

import numpy as np
import pytest

from npdiff.nn import gradcheck
from npdiff.nn.denoiser import Denoiser
from npdiff.processes import flow, ode, sampling
from npdiff.processes.ddpm import EpsilonChain
from npdiff.processes.oracles import GaussianDenoiser, GaussianEpsilon, GaussianVelocity

MEAN = np.array([0.5, -1.0])
COV = np.array([[1.2, -0.4], [-0.4, 0.5]])


def _model(**kwargs):
    return Denoiser(2, hidden=8, n_blocks=1, emb_dim=4, dtype="float64", seed=3, **kwargs)


def _batch(n=6, seed=0):
    rng = np.random.default_rng(seed)
    time = flow.FlowTime(1000)
    return rng.standard_normal((n, 2)), time.round_t(rng.random(n)), rng.standard_normal((n, 2))


@pytest.mark.parametrize("num_classes", [None, 3])
def test_flow_objective_gradients_equal_central_differences(num_classes):
    model, objective = _model(num_classes=num_classes), flow.FlowObjective(1000)
    x0, t, noise = _batch()
    y = None if num_classes is None else np.array([0, 1, 2, 3, 1, 0])  # 3 is "no label"
    model.zero_grad()
    objective.loss_and_backward(model, x0, y=y, t=t, noise=noise)
    analytic = {name: g.copy() for name, g in model.gradients().items()}
    report = gradcheck.check(lambda: objective.loss(model, x0, y=y, t=t, noise=noise), dict(model.parameters()),
                             analytic)
    assert gradcheck.worst(report) < 1e-6, gradcheck.format_report(report)


def test_flow_loss_is_the_velocity_regression_on_the_straight_path():
    # the wiring: x_t made at t, the network fed the level t·K, the target ε − x_0
    model, objective = _model(), flow.FlowObjective(1000)
    x0, t, noise = _batch()
    x_t = (1 - t[:, None]) * x0 + t[:, None] * noise
    v = model.forward(x_t, np.rint(t * 1000).astype(np.int64))
    expected = np.mean((v - (noise - x0)) ** 2)
    assert objective.loss(model, x0, t=t, noise=noise) == pytest.approx(expected, rel=1e-14)
    assert float(objective.loss_and_backward(model, x0, t=t, noise=noise)) == pytest.approx(expected, rel=1e-14)
    with pytest.raises(ValueError, match="k/1000"):
        objective.loss(model, x0, t=t + 1e-4, noise=noise)  # off the levels: refused, not rounded in silence


def test_time_distributions_draw_on_the_levels():
    rng = np.random.default_rng(1)
    uniform = flow.FlowTime(1000).sample(20000, rng)
    logit = flow.FlowTime(1000, "logit_normal", logit_mean=0.5, logit_std=1.0).sample(20000, rng)
    for t in (uniform, logit):
        np.testing.assert_allclose(t * 1000, np.rint(t * 1000), atol=1e-9)
        assert t.min() >= 0 and t.max() <= 1
    assert uniform.mean() == pytest.approx(0.5, abs=0.01) and uniform.std() == pytest.approx(12 ** -0.5, abs=0.01)
    assert np.median(logit) == pytest.approx(1 / (1 + np.exp(-0.5)), abs=0.01)  # sigmoid(μ)
    logits = np.log(np.clip(logit, 1e-3, 1 - 1e-3) / (1 - np.clip(logit, 1e-3, 1 - 1e-3)))
    assert logits.std() == pytest.approx(1.0, abs=0.03)


def test_exact_velocity_is_the_posterior_noise_minus_the_posterior_data():
    # v* = E[ε | x_t] − E[x_0 | x_t], with E[x_0 | x_t] from the exact σ-denoiser at σ = t/(1 − t)
    velocity, denoiser = GaussianVelocity(MEAN, COV), GaussianDenoiser(MEAN, COV)
    x = np.random.default_rng(2).standard_normal((5, 2)) * 2
    for t in (0.1, 0.5, 0.9):
        x0_hat = denoiser(x / (1 - t), t / (1 - t))
        eps_hat = (x - (1 - t) * x0_hat) / t
        np.testing.assert_allclose(velocity(x, t), eps_hat - x0_hat, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(flow.FlowDenoiser(velocity)(x / (1 - t), t / (1 - t)), x0_hat,
                                   rtol=1e-12, atol=1e-12)


def test_exact_velocity_minimises_the_flow_loss():
    # a least-squares fit of ε − x_0 on [x_t, 1] over many draws recovers v*'s affine map
    rng, t = np.random.default_rng(3), 0.35
    x0 = rng.multivariate_normal(MEAN, COV, size=200000)
    noise = rng.standard_normal(x0.shape)
    x_t = flow.flow_path(x0, t, noise)
    design = np.hstack([x_t, np.ones((x_t.shape[0], 1))])
    coef = np.linalg.lstsq(design, flow.velocity_target(x0, noise), rcond=None)[0]
    grid = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    fitted = np.hstack([grid, np.ones((3, 1))]) @ coef
    np.testing.assert_allclose(fitted, GaussianVelocity(MEAN, COV)(grid, t), atol=0.01)


def test_euler_on_the_exact_velocity_carries_noise_to_the_data():
    # x_1 = ε ~ N(0, I) exactly; Euler is affine for v*, so rows [0; I] give the output's exact moments
    velocity = GaussianVelocity(MEAN, COV)
    errors = []
    for steps in (100, 200, 400):
        out = flow.flow_euler(velocity, flow.flow_time_grid(steps), np.vstack([np.zeros(2), np.eye(2)]))
        spread = out[1:] - out[0]
        np.testing.assert_allclose(out[0], MEAN, atol=1e-12)
        errors.append(np.linalg.norm(spread.T @ spread - COV) / np.linalg.norm(COV))
    assert errors[-1] < 0.01
    assert errors[0] / errors[1] == pytest.approx(2.0, rel=0.1) and errors[1] / errors[2] == pytest.approx(2.0, rel=0.1)


def test_euler_on_the_flow_path_equals_ddim_on_the_equivalent_schedule():
    ts = np.linspace(0.0, 0.97, 41)  # t_0 = 0 … t_T < 1: a VP schedule of T = 40 steps
    schedule = flow.flow_schedule(ts)
    np.testing.assert_allclose(schedule.sqrt_recipm1_alpha_bar, ts / (1 - ts), rtol=1e-12)  # σ_k = t_k/(1 − t_k)
    y_T = np.random.default_rng(4).standard_normal((8, 2)) * 3
    chain = EpsilonChain(GaussianEpsilon(schedule, MEAN, COV), schedule, max_gain=None)
    ddim = sampling.sample(chain, 8, None, sampler="ddim", x_T=schedule.sqrt_alpha_bar[-1] * y_T)
    euler = flow.flow_euler(GaussianVelocity(MEAN, COV), ts[::-1], (1 - ts[-1]) * y_T)
    np.testing.assert_allclose(euler, ddim, rtol=0, atol=1e-12)
    # and Euler in σ on the flow's denoiser is the same computation
    sigma_euler = ode.euler(flow.FlowDenoiser(GaussianVelocity(MEAN, COV)), (ts / (1 - ts))[::-1], y_T)
    np.testing.assert_allclose(sigma_euler, ddim, rtol=0, atol=1e-12)


def test_a_flow_network_is_sampled_on_its_levels_and_guided_like_the_epsilon_chain():
    model, time = _model(num_classes=3), flow.FlowTime(100)
    labels = np.array([0, 2, 1])
    x = np.random.default_rng(5).standard_normal((3, 2))
    guided = flow.FlowVelocity(model, time, labels=labels, guidance=2.0)
    conditional = model.forward(x, np.full(3, 37), labels)
    unconditional = model.forward(x, np.full(3, 37))
    np.testing.assert_allclose(guided(x, 0.37), 3.0 * conditional - 2.0 * unconditional, rtol=1e-13)
    grid = flow.flow_time_grid(30, time)
    assert grid[0] == 1 and grid[-1] == 0 and np.allclose(grid * 100, np.rint(grid * 100))
    denoiser = flow.FlowDenoiser(guided)
    sigmas = ode.on_timesteps(denoiser, ode.karras_sigmas(10, 0.05, 50.0))
    out = ode.sample_ode(denoiser, 3, np.random.default_rng(6), sigmas, solver="dpmpp_2m")
    assert out.shape == (3, 2) and np.isfinite(out).all()
    with pytest.raises(ValueError, match="k/100"):
        guided(x, 0.375)


def test_flow_training_learns_the_gaussian_velocity():
    # a quality figure: 600 Adam steps bring the learned velocity's sample covariance near S (untrained: far)
    from npdiff.nn.optim import Adam

    rng = np.random.default_rng(7)
    model = Denoiser(2, hidden=32, n_blocks=2, emb_dim=8, coord_scale=1.0, dtype="float64", seed=0)
    objective = flow.FlowObjective(100)
    velocity = flow.FlowVelocity(model, objective.time)
    grid = flow.flow_time_grid(50, objective.time)

    def cov_error():
        out = flow.flow_euler(velocity, grid, rng.standard_normal((4000, 2)))
        return np.linalg.norm(np.cov(out.T) - COV) / np.linalg.norm(COV), np.abs(out.mean(axis=0) - MEAN).max()

    before = cov_error()
    optimizer = Adam(model, lr=3e-3)
    for _ in range(600):
        model.zero_grad()
        objective.loss_and_backward(model, rng.multivariate_normal(MEAN, COV, size=256), rng)
        optimizer.step()
    after = cov_error()
    assert after[0] < 0.2 and after[1] < 0.15, (before, after)  # measured: 0.13 and 0.05
    assert not (before[0] < 0.2 and before[1] < 0.15), before  # the untrained model fails it: 0.55 and 0.90


def test_a_flow_training_step_on_device_gives_numpys_loss_and_reads_nothing_back(strict_cupy):
    from npdiff import backend

    x0, t, noise = _batch(64)
    config = _model().config
    weights = np.random.default_rng(8).uniform(-0.5, 0.5, backend.to_numpy(Denoiser(**config).flat_params).size)
    results = {}
    for where in ("device", "host"):
        if where == "host":
            backend.set_backend("numpy")
        model = Denoiser(**config)
        model.flat_params[...] = backend.asarray(weights)
        objective = flow.FlowObjective(1000)
        t_here = backend.asarray(t)  # device times are trusted: made on the levels
        strict_cupy.TRANSFERS.reset()
        loss = objective.loss_and_backward(model, backend.asarray(x0), t=t_here, noise=backend.asarray(noise))
        objective.loss_and_backward(model, backend.asarray(x0), backend.default_rng(0))  # drawn t and ε
        if where == "device":
            assert strict_cupy.TRANSFERS.count == 0, strict_cupy.TRANSFERS.sites()
        results[where] = float(loss)
    assert results["device"] == pytest.approx(results["host"], rel=1e-13)
