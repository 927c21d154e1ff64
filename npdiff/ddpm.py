"""DDPM (Ho et al. 2020): the forward process, the ε-prediction objective, the ancestral and DDIM samplers.

Shape glossary: N batch, D data dims, T diffusion steps, K recorded states of a sampling chain.
Every schedule array is indexed by the paper's t (``npdiff.schedules``); the schedule also owns which
timesteps exist: training draws t ∈ {1..T} (``Schedule.sample_t``), sampling runs t = T..1
(``Schedule.reverse_t``) and adds no noise at the last step.

    q_sample:  x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε,  ε ~ N(0, I)                          (DDPM Eq. 4)
    L_simple = mean_{n,d} (ε_θ(x_t, t) − ε)²,  so  dL/dε_θ = 2(ε_θ − ε)/(N·D)       (DDPM Eq. 14)
    x̂_0 = x_t/√ᾱ_t − √(1/ᾱ_t − 1) ε_θ                                            (Eq. 4 solved for x_0)
    ancestral: x_{t−1} = (x_t − β_t/√(1−ᾱ_t) ε_θ)/√α_t + σ_t z                    (DDPM Eq. 11, Alg. 2)
        = c1_t x̂_0 + c2_t x_t + σ_t z  (posterior mean, Eq. 7), σ_t² = β̃_t or β_t, z = 0 at t = 1
    DDIM, t → s < t:  x_s = √ᾱ_s x̂_0 + √(1 − ᾱ_s − σ²) ε_θ + σ z,
        σ = η √((1−ᾱ_s)/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_s)                        (Song et al. 2021, Eqs. 12, 16)

Error gain. An error δ in ε_θ moves x_{t−1} by g_t·δ with g_t = β_t/(√α_t √(1−ᾱ_t)) (ancestral).
The cosine schedule caps β_T at 0.999, so g_T = 31.6: a plain ancestral (or DDIM) step at t = T turns a
network error of 0.1 into 3 units of data. The samplers therefore refuse to run unclipped when the
largest gain of their chain exceeds ``max_gain`` (default 10): pass ``clip_x0=(lo, hi)`` (the data
range) to predict x̂_0, clip it explicitly and step from the clipped x̂_0 — the step's error then stays
below c1_t·(hi − lo) — or ``max_gain=None`` to run the plain formula anyway.
"""

from __future__ import annotations

import math

import numpy as np

from npdiff import backend

VARIANCES = ("fixed_small", "fixed_large")


def q_sample(schedule, x0, t, noise):
    """x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε.  x0, noise (N, D); t (N,) integers in 0..T.  -> (N, D)"""
    return schedule.at("sqrt_alpha_bar", t, x0) * x0 + schedule.at("sqrt_one_minus_alpha_bar", t, x0) * noise


def epsilon_loss(eps_pred, eps):
    """L = mean (ε_θ − ε)² over all N·D entries, and dL/dε_θ = 2(ε_θ − ε)/(N·D).  -> (float, (N, D))"""
    diff = eps_pred - eps  # (N, D)
    loss = float((diff * diff).mean())
    return loss, diff * (2.0 / diff.size)


def predict_x0(schedule, xt, t, eps):
    """x̂_0 = x_t/√ᾱ_t − √(1/ᾱ_t − 1) ε.  t: int or (N,) integers.  -> (N, D)"""
    return schedule.at("sqrt_recip_alpha_bar", t, xt) * xt - schedule.at("sqrt_recipm1_alpha_bar", t, xt) * eps


def draw_inputs(schedule, model, x0, rng, t=None, noise=None, first: int = 1):
    """A training batch's inputs: x0 on the backend in the model's dtype, t ~ U{first..T} and ε ~ N(0, I)
    drawn with ``rng`` unless given (given t and noise make a loss deterministic, for gradient checks).
    -> (x0 (N, D), t (N,), noise (N, D))"""
    x0 = backend.asarray(x0, dtype=getattr(model, "dtype", None))
    if t is None:
        t = schedule.sample_t(x0.shape[0], rng, first)
    if noise is None:
        noise = rng.standard_normal(x0.shape, dtype=x0.dtype)
    return x0, backend.asarray(t), backend.asarray(noise, dtype=x0.dtype)


class EpsilonObjective:
    """DDPM's L_simple for a model f(x_t, t) -> ε_θ of shape (N, D); the object ``train.fit`` drives.

    ``loss_and_backward(model, x0, rng)`` draws t ∈ {1..T} and ε ~ N(0, I) (or takes them given, for
    deterministic gradient checks), runs the forward pass, and ADDS dL/dθ into the model's ``grads``
    through ``model.backward`` (the caller zeroes them). Returns the scalar loss.
    """

    def __init__(self, schedule) -> None:
        self.schedule = schedule
        self.config = {"objective": "epsilon", "schedule": dict(schedule.config)}

    def loss(self, model, x0, rng=None, *, t=None, noise=None) -> float:
        """The loss alone (a forward pass, no gradient)."""
        x0, t, noise = draw_inputs(self.schedule, model, x0, rng, t, noise)
        return epsilon_loss(model.forward(q_sample(self.schedule, x0, t, noise), t), noise)[0]

    def loss_and_backward(self, model, x0, rng=None, *, t=None, noise=None) -> float:
        """Forward, L_simple, and model.backward(dL/dε_θ).  x0 (N, D); t (N,) and noise (N, D) optional."""
        x0, t, noise = draw_inputs(self.schedule, model, x0, rng, t, noise)
        xt = q_sample(self.schedule, x0, t, noise)  # (N, D)
        loss, d_eps = epsilon_loss(model.forward(xt, t), noise)
        model.backward(d_eps, input_grad=False)  # training needs only dL/dθ
        return loss


class GaussianEpsilon:
    """The exact ε-predictor for data x_0 ~ N(m, S): E[ε | x_t] = √(1−ᾱ_t) Σ_t⁻¹ (x_t − √ᾱ_t m).

    Σ_t = ᾱ_t S + (1−ᾱ_t) I is the covariance of q(x_t). An oracle with the model interface
    ``forward(x_t, t)`` for testing samplers: with it they must reproduce N(m, S).
    """

    def __init__(self, schedule, mean, cov) -> None:
        self.schedule = schedule
        self.mean = np.asarray(mean, dtype=np.float64)  # (D,)
        self.cov = np.asarray(cov, dtype=np.float64)  # (D, D)

    def forward(self, x_t, t):
        steps, index = np.unique(backend.to_numpy(t), return_inverse=True)  # samplers pass one t for all rows
        a = self.schedule.alpha_bar[steps][:, None, None]  # (U, 1, 1)
        cov_t = a * self.cov + (1 - a) * np.eye(self.mean.size)  # Σ_t (U, D, D)
        gain = backend.asarray((np.sqrt(1 - a) * np.linalg.inv(cov_t))[index], dtype=x_t.dtype)  # (N, D, D)
        centred = x_t - backend.asarray(np.sqrt(a[:, :, 0]) * self.mean, dtype=x_t.dtype)[index]  # (N, D)
        return backend.xp.einsum("nij,nj->ni", gain, centred)


def ancestral_gain(schedule, t: int) -> float:
    """g_t = β_t/(√α_t √(1−ᾱ_t)): how much the ancestral step at t amplifies an error of ε_θ."""
    return float(schedule.betas[t] / (math.sqrt(schedule.alphas[t]) * schedule.sqrt_one_minus_alpha_bar[t]))


def ddim_gain(schedule, t: int, s: int, eta: float = 0.0) -> float:
    """|√(1−ᾱ_s−σ²) − √ᾱ_s √(1/ᾱ_t − 1)|: how much the DDIM step t → s amplifies an error of ε_θ."""
    ab_t, ab_s = schedule.alpha_bar[t], schedule.alpha_bar[s]
    sigma = _ddim_sigma(ab_t, ab_s, eta)
    return abs(_ddim_eps_coef(ab_s, sigma) - math.sqrt(ab_s) * schedule.sqrt_recipm1_alpha_bar[t])


def _ddim_sigma(ab_t: float, ab_s: float, eta: float) -> float:
    return eta * math.sqrt((1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s))


def _ddim_eps_coef(ab_s: float, sigma: float) -> float:
    """√(1 − ᾱ_s − σ²); ≥ 0 for η ≤ 1 (exactly 0 at s = 0), so max(·, 0) only absorbs rounding."""
    return math.sqrt(max(1 - ab_s - sigma * sigma, 0.0))


def _check_gain(gains: dict, clip_x0, max_gain, schedule) -> None:
    if clip_x0 is not None or max_gain is None:
        return
    t, g = max(gains.items(), key=lambda kv: kv[1])
    if g > max_gain:
        raise ValueError(
            f"{schedule!r}: the sampling step at t={t} multiplies the error of eps_theta by {g:.1f} "
            f"(beta_t={schedule.betas[t]:.4g}, max_gain={max_gain}); pass clip_x0=(lo, hi), the data range, "
            "to predict x0 and clip it, or max_gain=None to run the unclipped formula"
        )


def _start(model, n, rng, x_T, dtype):
    dtype = getattr(model, "dtype", dtype)  # the model's own dtype when it has one
    if x_T is None:
        x_T = rng.standard_normal((int(n), model_dim(model)), dtype=dtype)
    return backend.asarray(x_T, dtype=dtype)


def model_dim(model) -> int:
    """The data dimension D of a model (``config["data_dim"]``, or ``mean.size`` for an oracle)."""
    config = getattr(model, "config", None)
    return int(config["data_dim"]) if config else int(model.mean.size)


def _clip(x0_hat, clip_x0):
    return backend.xp.clip(x0_hat, clip_x0[0], clip_x0[1]) if clip_x0 is not None else x0_hat


def _record(x, t, xs) -> None:
    """After the step to t − 1: stop on non-finite values; keep a host copy of x when recording."""
    if not bool(backend.xp.isfinite(x).all()):
        raise FloatingPointError(f"sampling produced non-finite values at t={t}")
    if xs is not None:
        xs.append(backend.to_numpy(x).copy())


def ancestral_sample(model, schedule, n: int, rng, *, variance: str = "fixed_small", clip_x0=None,
                     max_gain: float | None = 10.0, x_T=None, record: bool = False, dtype="float32"):
    """DDPM Algorithm 2: x_T ~ N(0, I), then x_{t−1} from x_t for t = T..1 (no noise at t = 1).

    variance: "fixed_small" σ_t² = β̃_t, or "fixed_large" σ_t² = β_t. clip_x0: None, or (lo, hi) to
    step from x̂_0 clipped to that range. x_T: a given start (N, D) instead of a draw. Returns x_0
    (N, D) on the backend; with ``record=True`` returns (x_0, ts, xs): ts (K,) = T..0 and xs (K, N, D),
    host arrays with xs[k] the state at ts[k].
    """
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; choose one of {', '.join(VARIANCES)}")
    ts = schedule.reverse_t()
    _check_gain({t: ancestral_gain(schedule, t) for t in ts}, clip_x0, max_gain, schedule)
    var = schedule.posterior_var if variance == "fixed_small" else schedule.betas
    x = _start(model, n, rng, x_T, dtype)
    xs = [backend.to_numpy(x).copy()] if record else None
    for t in ts:
        tt = backend.xp.full(x.shape[0], t, dtype=np.int64)
        eps = model.forward(x, tt)  # (N, D)
        if clip_x0 is None:
            coef = float(schedule.betas[t] / schedule.sqrt_one_minus_alpha_bar[t])  # β_t/√(1−ᾱ_t)
            x = (x - coef * eps) / math.sqrt(schedule.alphas[t])
        else:
            x0_hat = _clip(predict_x0(schedule, x, t, eps), clip_x0)
            x = float(schedule.posterior_mean_coef1[t]) * x0_hat + float(schedule.posterior_mean_coef2[t]) * x
        if t > 1:
            x = x + math.sqrt(var[t]) * rng.standard_normal(x.shape, dtype=x.dtype)
        _record(x, t, xs)
    return (x, np.array(ts + [0]), np.stack(xs)) if record else x


def ddim_sample(model, schedule, n: int, rng, *, n_steps: int | None = None, eta: float = 0.0, clip_x0=None,
                max_gain: float | None = 10.0, x_T=None, record: bool = False, dtype="float32"):
    """DDIM (Song et al. 2021) over ``n_steps`` timesteps from T to 1 (then to 0); η = 0 is deterministic.

    η = 1 with all T steps is the ancestral sampler with σ_t² = β̃_t. Other arguments and the return
    value as in ``ancestral_sample`` (ts runs over the visited timesteps, ending at 0).
    """
    if not 0 <= eta <= 1:
        raise ValueError(f"eta must lie in [0, 1], got {eta}")
    ts = schedule.reverse_t(n_steps)
    pairs = list(zip(ts, ts[1:] + [0]))  # (t, s): step from x_t to x_s
    _check_gain({t: ddim_gain(schedule, t, s, eta) for t, s in pairs}, clip_x0, max_gain, schedule)
    x = _start(model, n, rng, x_T, dtype)
    xs = [backend.to_numpy(x).copy()] if record else None
    for t, s in pairs:
        ab_s = float(schedule.alpha_bar[s])
        tt = backend.xp.full(x.shape[0], t, dtype=np.int64)
        eps = model.forward(x, tt)  # (N, D)
        x0_hat = _clip(predict_x0(schedule, x, t, eps), clip_x0)
        if clip_x0 is not None:  # keep ε consistent with the clipped x̂_0 (improved-diffusion's DDIM)
            eps = (x - float(schedule.sqrt_alpha_bar[t]) * x0_hat) / float(schedule.sqrt_one_minus_alpha_bar[t])
        sigma = _ddim_sigma(float(schedule.alpha_bar[t]), ab_s, eta)
        x = math.sqrt(ab_s) * x0_hat + _ddim_eps_coef(ab_s, sigma) * eps
        if sigma > 0:
            x = x + sigma * rng.standard_normal(x.shape, dtype=x.dtype)
        _record(x, t, xs)
    return (x, np.array(ts + [0]), np.stack(xs)) if record else x


SAMPLERS = {"ancestral": ancestral_sample, "ddim": ddim_sample}


def sample(model, schedule, n: int, rng, *, sampler: str = "ancestral", **kwargs):
    """Dispatch to ``ancestral_sample`` or ``ddim_sample`` by name; ``kwargs`` go to that sampler."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[sampler](model, schedule, n, rng, **kwargs)
