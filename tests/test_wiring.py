"""Tests that pin the wiring between the pieces, not only the formulas inside them.

Each test here catches a hand-made mutant of the glue that the formula tests let through:
an objective that conditions the network on another t than the one it noised with, a sampler that steps
with the coefficients of another t, a variance option that changes nothing, noise at a chain's last
step, a Monte-Carlo bound with the wrong weight, a fixed last step keyed on the wrong t.
"""

from __future__ import annotations

import numpy as np
import pytest

from npdiff.processes import likelihood, sampling
from npdiff.processes.ddpm import VARIANCES, EpsilonChain, EpsilonObjective
from npdiff.processes.hybrid import HybridObjective
from npdiff.nn.denoiser import Denoiser
from npdiff.processes.oracles import GaussianOracle
from npdiff.processes.schedules import Schedule
from npdiff.processes.sohl_dickstein import BoundObjective, SohlDicksteinChain, make_model, reverse_kernel


class Spy:
    """A model that records every (x_t, t) it is asked about and answers a constant ε_θ (or output)."""

    def __init__(self, data_dim=2, out_dim=None, value=0.0):
        out_dim = data_dim if out_dim is None else out_dim
        self.config = {"data_dim": data_dim, "out_dim": out_dim}
        self.dtype, self.value, self.seen = np.dtype("float64"), value, []

    def forward(self, x_t, t):
        self.seen.append((np.array(x_t), np.array(t)))
        return np.full((x_t.shape[0], self.config["out_dim"]), self.value)

    def backward(self, dy, input_grad=True):
        return None


class ConstantRng:
    """A generator whose every 'standard normal' draw is one constant: each step's σ becomes visible."""

    def __init__(self, value):
        self.value = value

    def standard_normal(self, shape, dtype=None):
        return np.full(shape, self.value, dtype=dtype)


@pytest.mark.parametrize("objective, out", [(EpsilonObjective, 1), (HybridObjective, 2), (BoundObjective, 2)])
def test_every_objective_conditions_the_network_on_the_t_it_noised_with(objective, out):
    schedule, rng = Schedule(50), np.random.default_rng(0)
    x0, noise, t = rng.standard_normal((6, 2)), rng.standard_normal((6, 2)), np.array([2, 3, 10, 25, 49, 50])
    spy = Spy(2, out * 2)
    objective(schedule).loss_and_backward(spy, x0, t=t, noise=noise)
    (x_t, t_seen), = spy.seen
    np.testing.assert_array_equal(t_seen, t)
    np.testing.assert_allclose(x_t, schedule.q_sample(x0, t, noise), rtol=1e-15)


@pytest.mark.parametrize("objective, first", [(EpsilonObjective, 1), (BoundObjective, 2)])
def test_objectives_draw_their_own_timesteps_from_the_schedule(objective, first):
    schedule, spy = Schedule(5), Spy(2, 2 if objective is BoundObjective else 1 * 2)
    spy.config["out_dim"] = 4 if objective is BoundObjective else 2
    objective(schedule).loss_and_backward(spy, np.zeros((4000, 2)), np.random.default_rng(1))
    t_seen = spy.seen[0][1]
    assert set(t_seen.tolist()) == set(range(first, 6))


def test_the_sampler_steps_with_the_coefficients_of_the_t_it_conditions_on():
    """ε_θ = 0 and z = 0: every ancestral step is exactly x_{t−1} = x_t/√α_t, with α of the t the network saw."""
    schedule, spy = Schedule(30), Spy()
    x_T = np.random.default_rng(0).standard_normal((3, 2))
    _, ts, xs = sampling.sample(EpsilonChain(spy, schedule), 3, ConstantRng(0.0), x_T=x_T, record=True)
    assert [int(t[0]) for _, t in spy.seen] == list(range(30, 0, -1))
    for k, (x_seen, t_seen) in enumerate(spy.seen):
        t = int(t_seen[0])
        np.testing.assert_array_equal(x_seen, xs[k])  # the network sees the state of that t
        np.testing.assert_allclose(xs[k + 1], xs[k] / np.sqrt(schedule.alphas[t]), rtol=1e-14)


def expected_sigma(schedule, variance, t):
    return {"fixed_small": np.sqrt(schedule.posterior_var[t]), "fixed_large": np.sqrt(schedule.betas[t])}[variance]


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_each_variance_option_sets_the_noise_of_each_ancestral_step(variance):
    """ε_θ = 0 and z = 1: x_{t−1} − x_t/√α_t is exactly σ_t, β̃_t or β_t as named, and 0 at t = 1."""
    schedule = Schedule(20)
    x_T = np.zeros((2, 2))
    _, ts, xs = sampling.sample(EpsilonChain(Spy(), schedule, variance), 2, ConstantRng(1.0), x_T=x_T, record=True)
    for k, t in enumerate(ts[:-1]):
        step_noise = xs[k + 1] - xs[k] / np.sqrt(schedule.alphas[t])
        sigma = 0.0 if t == 1 else expected_sigma(schedule, variance, t)
        np.testing.assert_allclose(step_noise, sigma, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("o, variance", [(1.0, "fixed_large"), (-1.0, "fixed_small")])
def test_the_learned_range_output_moves_the_step_noise_between_its_ends(o, variance):
    schedule = Schedule(20)
    spy = Spy(2, 4, value=0.0)
    spy.forward = lambda x_t, t: np.concatenate([np.zeros_like(x_t), np.full_like(x_t, o)], axis=1)
    _, ts, xs = sampling.sample(EpsilonChain(spy, schedule, "learned_range"), 2, ConstantRng(1.0),
                                x_T=np.zeros((2, 2)), record=True)
    for k, t in enumerate(ts[:-2]):  # t = 20..2
        step_noise = xs[k + 1] - xs[k] / np.sqrt(schedule.alphas[t])
        np.testing.assert_allclose(step_noise, expected_sigma(schedule, variance, t), rtol=1e-12)


def test_ddim_eta_sets_the_noise_of_each_step():
    schedule = Schedule(20)
    runs = {eta: sampling.sample(EpsilonChain(Spy(), schedule), 2, ConstantRng(1.0), sampler="ddim", eta=eta,
                                 ddim_steps=5, x_T=np.ones((2, 2)), record=True) for eta in (0.0, 0.5, 1.0)}
    finals = {eta: run[0][0, 0] for eta, run in runs.items()}
    assert finals[0.0] < finals[0.5] < finals[1.0]  # z = 1 adds σ(η) > 0, growing with η
    ts = runs[1.0][1]
    x = 1.0
    for t, t_prev in zip(ts[:-1], ts[1:]):
        sigma = sampling.ddim_sigma(schedule, int(t), int(t_prev), 1.0)
        x = np.sqrt(schedule.alpha_bar[t_prev]) * x / np.sqrt(schedule.alpha_bar[t]) + sigma  # ε_θ = 0
    assert finals[1.0] == pytest.approx(x, rel=1e-12)


def chains(schedule):
    rng = np.random.default_rng(0)
    model = Denoiser(2, hidden=8, n_blocks=1, emb_dim=8, dtype="float64", seed=1)
    wide = Denoiser(2, out_dim=4, hidden=8, n_blocks=1, emb_dim=8, dtype="float64", seed=2)
    sd = make_model(2, zero_output=False, hidden=8, n_blocks=1, emb_dim=8, dtype="float64", seed=3)
    del rng
    variances = {v: EpsilonChain(wide if v == "learned_range" else model, schedule, v) for v in VARIANCES}
    return {**variances, "clipped": EpsilonChain(model, schedule, clip_x0=(-1.0, 1.0)),
            "sohl_dickstein": SohlDicksteinChain(sd, schedule),
            "oracle": GaussianOracle(schedule, 0.5, data_dim=2)}


@pytest.mark.parametrize("name", [*VARIANCES, "clipped", "sohl_dickstein", "oracle"])  # every key of chains()
def test_no_chain_adds_noise_at_its_last_step(name):
    schedule = Schedule(10)
    chain = chains(schedule)[name]
    _, ts, xs = sampling.sample(chain, 4, ConstantRng(1.0), x_T=np.full((4, 2), 0.3), record=True)
    mean, _ = chain.kernel(xs[-2], np.ones(4, dtype=np.int64))  # the kernel at t = 1 from x_1
    np.testing.assert_array_equal(xs[-1], mean)


def test_ddim_adds_no_noise_at_its_last_step_even_with_eta_1():
    schedule = Schedule(10)
    chain = chains(schedule)["fixed_small"]
    a = sampling.sample(chain, 4, ConstantRng(1.0), sampler="ddim", eta=1.0, x_T=np.ones((4, 2)), record=True)[2]
    b = sampling.sample(chain, 4, ConstantRng(5.0), sampler="ddim", eta=1.0, x_T=np.ones((4, 2)), record=True)[2]
    assert not np.allclose(a[-2], b[-2])  # the noise mattered before t = 1 …
    x0_hat_a = chain.predict(a[-2], np.ones(4, dtype=np.int64))[0]
    np.testing.assert_allclose(a[-1], x0_hat_a, rtol=1e-12)  # … and the last step lands on x̂_0 itself


def test_the_fixed_last_step_is_keyed_on_t_equal_1_only():
    schedule = Schedule(10, "sohl_dickstein")
    chain = chains(schedule)["sohl_dickstein"]
    x_t = np.random.default_rng(4).standard_normal((3, 2))
    for t in (1, 2, 3):
        mean, log_var = chain.kernel(x_t, np.full(3, t))
        free_mean, free_log_var, _ = reverse_kernel(schedule, chain.model.forward(x_t, np.full(3, t)), x_t, np.full(3, t))
        if t == 1:
            np.testing.assert_allclose(mean, np.sqrt(schedule.alphas[1]) * x_t, rtol=1e-15)
            np.testing.assert_allclose(log_var, np.log(schedule.betas[1]), rtol=1e-15)
        else:
            np.testing.assert_array_equal(mean, free_mean)
            np.testing.assert_array_equal(log_var, free_log_var)


def agree(a, b, k=4.0):
    """Two bound estimates agree within k combined standard errors."""
    return abs(a.nats - b.nats) < k * np.hypot(a.se, b.se)


@pytest.mark.parametrize("name", ["fixed_small", "learned_range", "sohl_dickstein"])
def test_monte_carlo_bounds_agree_with_the_exact_bound_within_their_standard_error(name):
    """For an untrained (random) chain, whose terms are large and uneven over t, every estimator of the same
    bound must agree; a wrong weight of T/(T − 1) or a forgotten 1/p(t) would be tens of SEs off."""
    schedule = Schedule(20, "sohl_dickstein")
    chain, rng = chains(schedule)[name], np.random.default_rng(5)
    x0 = rng.standard_normal((2000, 2))
    exact = likelihood.exact_bound(chain, x0, rng)
    uniform = likelihood.mc_bound(chain, x0, rng, n_t=8)
    probs = likelihood.importance_probs(chain, rng.standard_normal((50, 2)), rng)
    importance = likelihood.mc_bound(chain, x0, rng, n_t=8, t_probs=probs)
    assert agree(uniform, exact) and agree(importance, exact), (exact.summary(), uniform.summary(), importance.summary())
    assert exact.se < 0.05 * abs(exact.nats)  # tight enough that a 5 % weight error shows


def test_the_monte_carlo_eq14_bound_agrees_with_its_exact_sum():
    """T = 5: the Monte-Carlo weight is T − 1 = 4 draws' worth; T = 5 instead would be 25 % off the KL sum."""
    schedule = Schedule(5, "sohl_dickstein")
    chain, rng = chains(schedule)["sohl_dickstein"], np.random.default_rng(6)
    x0 = rng.standard_normal((4000, 2))
    exact = likelihood.eq14_bound(chain, x0, rng, exact=True)
    mc = likelihood.eq14_bound(chain, x0, rng, n_t=4)
    constant = likelihood.entropy_constant(schedule, 2)
    assert abs(exact.nats - constant) > 20 * np.hypot(exact.se, mc.se)  # the KL sum is large against the SE
    assert agree(mc, exact), (exact.summary(), mc.summary())
