"""The Sohl-Dickstein chain: kernel backward, whole-loss gradient, Eq. 14 against the Gaussian oracle, training."""

import math

import numpy as np
import pytest

from npdiff.nn import gradcheck, optim
from npdiff.processes import likelihood, sampling, sohl_dickstein as sd
from npdiff.data import standardize
from npdiff.processes.schedules import Schedule

LOG_2PIE_HALF = 0.5 * math.log(2 * math.pi * math.e)  # 1.418939 nats: −log N(0, 1)'s entropy per dim


def small_model(dtype="float64", zero_output=False, seed=0):
    return sd.make_model(2, zero_output=zero_output, hidden=8, n_blocks=1, emb_dim=4, dtype=dtype, seed=seed)


def test_kernel_backward_matches_finite_differences():
    rng = np.random.default_rng(0)
    s = Schedule(10, "sohl_dickstein")
    out, x_t = rng.standard_normal((5, 6)), rng.standard_normal((5, 3))
    t = np.array([1, 2, 5, 9, 10])
    a, b = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))

    def loss():
        mean, log_var, _ = sd.reverse_kernel(s, out, x_t, t)
        return float((mean * a).sum() + (log_var * b).sum())

    _, _, cache = sd.reverse_kernel(s, out, x_t, t)
    report = gradcheck.check(loss, {"out": out}, {"out": sd.reverse_kernel_backward(cache, a, b)})
    assert report["out"]["rel_error"] < 1e-7


def test_zero_output_is_the_forward_kernel():
    s = Schedule(40, "sohl_dickstein")
    x_t = np.random.default_rng(1).standard_normal((4, 2))
    t = np.array([2, 10, 30, 40])
    mean, log_var, _ = sd.reverse_kernel(s, np.zeros((4, 4)), x_t, t)
    np.testing.assert_allclose(mean, np.sqrt(s.alphas[t])[:, None] * x_t, rtol=1e-14)
    np.testing.assert_allclose(np.exp(log_var), np.broadcast_to(s.betas[t][:, None], (4, 2)), rtol=1e-12)


def test_whole_training_loss_gradient_through_the_model():
    rng = np.random.default_rng(2)
    s = Schedule(12, "sohl_dickstein")
    model, obj = small_model(), sd.BoundObjective(s)
    x0, noise = rng.standard_normal((6, 2)), rng.standard_normal((6, 2))
    t = np.array([2, 3, 6, 9, 11, 12])
    model.zero_grad()
    obj.loss_and_backward(model, x0, t=t, noise=noise)
    analytic = {k: g.copy() for k, g in model.gradients().items()}
    report = gradcheck.check(lambda: obj.loss(model, x0, t=t, noise=noise), model.parameters(), analytic)
    assert gradcheck.worst(report) < 1e-6, gradcheck.format_report(report)


def test_objective_is_unbiased_for_minus_K():
    """The mean of (T − 1)·KL_t − const over all t = 2..T equals −K exact over t, point by point."""
    rng = np.random.default_rng(3)
    s = Schedule(8, "sohl_dickstein")
    model, obj = small_model(seed=3), sd.BoundObjective(s)
    x0 = rng.standard_normal((1, 2))
    noise = rng.standard_normal((1, 2))
    per_t = [obj.loss(model, x0, t=np.array([t]), noise=noise) for t in range(2, 9)]
    chain = sd.SohlDicksteinChain(model, s)
    kl = [float(likelihood.bound_terms(chain, x0, np.array([t]), noise)[0]) for t in range(2, 9)]
    want = -(sd.entropy_constant(s, 2) - sum(kl))
    assert np.mean(per_t) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("T, name", [(40, "sohl_dickstein"), (1000, "sohl_dickstein")])
def test_eq14_oracle_standard_normal(T, name):
    """x_0 ~ N(0, I) and the exact kernel N(√α_t x_t, β_t): K = −½ log(2πe) per dim, within 3 SE."""
    rng = np.random.default_rng(T)
    s = Schedule(T, name)
    chain = sd.SohlDicksteinChain(small_model(zero_output=True), s)
    x0 = rng.standard_normal((3000 if T == 40 else 1000, 2))
    bound = likelihood.eq14_bound(chain, x0, rng, exact=True)
    assert abs(bound.nats / 2 + LOG_2PIE_HALF) < 3 * bound.se / 2
    assert abs(bound.gain) < 3 * bound.gain_se
    assert bound.se / 2 < 0.05  # the test can fail: a wrong constant of 0.15 nats/dim would be caught


def test_eq14_refuses_unstandardised_data():
    s = Schedule(10, "sohl_dickstein")
    chain = sd.SohlDicksteinChain(small_model(), s)
    with pytest.raises(ValueError, match="standardised"):
        likelihood.eq14_bound(chain, 3.0 * np.random.default_rng(0).standard_normal((500, 2)), np.random.default_rng(1))


def test_sampler_from_exact_kernel_gives_standard_normal():
    s = Schedule(40, "sohl_dickstein")
    chain = sd.SohlDicksteinChain(small_model(zero_output=True), s)
    x1, ts, path = sampling.sample(chain, 4000, np.random.default_rng(4), record=True)
    assert path.shape == (41, 4000, 2) and list(ts) == list(range(40, -1, -1))
    # the exact kernel keeps N(0, I) at every step; x_1 (before the noiseless last step) is N(0, I) exactly
    x1 = path[-2]
    assert np.all(np.abs(x1.mean(axis=0)) < 0.06) and np.all(np.abs(x1.var(axis=0) - 1) < 0.08)
    np.testing.assert_allclose(path[-1], np.sqrt(s.alphas[1]) * x1, rtol=1e-6)  # x_0 = √α_1 x_1, no noise


def test_learned_kernel_on_quarter_variance_gaussian_reaches_oracle():
    """Trained from a random output layer on standardised N(0, 0.25 I) 2-D data (float32, ~1 s)."""
    rng = np.random.default_rng(5)
    s = Schedule(40, "sohl_dickstein")
    z, mean, std = standardize(0.5 * rng.standard_normal((20000, 2)))
    held_out = (0.5 * rng.standard_normal((4000, 2)) - mean) / std
    model = sd.make_model(2, zero_output=False, hidden=32, n_blocks=1, emb_dim=16, seed=1)
    chain, obj, opt = sd.SohlDicksteinChain(model, s), sd.BoundObjective(s), optim.Adam(model, lr=3e-3)
    log_det = float(np.log(std).sum())
    oracle = -0.5 * math.log(2 * math.pi * math.e * 0.25) - s.prior_kl(0.25)  # nats per dim
    before = likelihood.eq14_bound(chain, held_out, rng, exact=True, log_det=log_det)
    assert before.gain / 2 < -0.1  # untrained: far from the oracle
    for _ in range(1000):
        model.zero_grad()
        obj.loss_and_backward(model, z[rng.integers(0, len(z), 256)], rng)
        opt.step()
    after = likelihood.eq14_bound(chain, held_out, rng, exact=True, log_det=log_det)
    assert abs(after.gain / 2) < 0.02  # K − L_null per dim, paired over the same points
    assert abs(after.nats_data / 2 - oracle) < 0.02 + 3 * after.se / 2


@pytest.mark.parametrize("v", [3.0, 6.0, 20.0, -20.0])
def test_variance_gradient_keeps_its_precision_in_float32_near_t_equal_T(v):
    """d log σ²/dv = 1 − sigmoid(a) must be formed as sigmoid(−a): at t = T (β_T = 0.999) and v = 3, the
    form 1 − σ² kept only 1e-3 relative accuracy in float32 (9e-3 at v = 6)."""
    s = Schedule(40, "sohl_dickstein")
    t = np.full(3, 40)
    out = np.concatenate([np.zeros((3, 2)), np.full((3, 2), v)], axis=1)
    x_t = np.zeros((3, 2))
    _, _, cache = sd.reverse_kernel(s, out.astype(np.float32), x_t.astype(np.float32), t)
    dv32 = sd.reverse_kernel_backward(cache, np.zeros((3, 2), np.float32), np.ones((3, 2), np.float32))[:, 2:]
    a = v + math.log(s.betas[40]) - math.log1p(-s.betas[40])
    exact = 1.0 / (1.0 + math.exp(a))  # 1 − sigmoid(a) in float64
    assert dv32.dtype == np.float32
    np.testing.assert_allclose(dv32, exact, rtol=1e-5)  # float32 rounding of a ≈ 10: |a|·6e-8
