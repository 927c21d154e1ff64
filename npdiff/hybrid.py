"""Learned-range variances for ε-prediction models and the L_hybrid objective (Nichol & Dhariwal 2021).

Shape glossary: N batch, D data dims, T steps; the denoiser outputs (N, 2·D): ε_θ (N, D) and o (N, D).

    log σ_θ² = v log β_t + (1 − v) log β̃_t,   v = (o + 1)/2                         (Nichol & Dhariwal, Eq. 15)
    μ_θ      = (x_t − β_t/√(1 − ᾱ_t) ε_θ)/√α_t                                          (Ho et al., Eq. 11)
    L_hybrid = L_simple + λ L_vlb,  λ = 0.001                                           (Nichol & Dhariwal, Eq. 16)

As in the authors' improved-diffusion code: v = (o + 1)/2, so o = 0 is the geometric mean of β_t and β̃_t;
log β̃_t is the clipped ``posterior_log_var_clipped`` (β̃_1 = 0, so t = 1 uses log β̃_2); L_simple is the
mean over dimensions of (ε − ε_θ)²; the per-step term of L_vlb is in bits per dimension, and its
Monte-Carlo estimate over t ~ U{1..T} is T·L_{t−1}, so λ·L_vlb = (T/1000)·L_{t−1}[bits/dim] at λ = 0.001,
the code's weighting. L_{t−1} = KL(q(x_{t−1}|x_t, x_0) ‖ p(x_{t−1}|x_t)) for t ≥ 2 and, for t = 1, the
continuous Gaussian decoder −log N(x_0; μ_θ, σ_θ²) (the code discretises it for 8-bit images; our data
are continuous). Inside L_vlb the mean's gradient is stopped: L_vlb trains only the variance, L_simple
only the mean.
"""

from __future__ import annotations

import math

from npdiff import backend, gaussian
from npdiff.ddpm import draw_inputs
from npdiff.schedules import Schedule


def eps_mean(schedule: Schedule, x_t, eps, t):
    """μ_θ = (x_t − β_t/√(1 − ᾱ_t) ε_θ)/√α_t, (N, D). At t = 1 it is x̂_0 itself."""
    coef = schedule.at("betas", t, x_t) / schedule.at("sqrt_one_minus_alpha_bar", t, x_t)
    return (x_t - coef * eps) / schedule.at("alphas", t, x_t) ** 0.5


def learned_range_log_var(schedule: Schedule, o, t):
    """(log σ_θ² (N, D), cache) from the variance half o (N, D): v log β_t + (1 − v) log β̃_t, v = (o + 1)/2."""
    log_max = backend.xp.log(schedule.at("betas", t, o))  # (N, 1)
    log_min = schedule.at("posterior_log_var_clipped", t, o)  # (N, 1)
    v = 0.5 * (o + 1.0)
    cache = 0.5 * (log_max - log_min)  # d log σ²/do = ½(log β_t − log β̃_t)
    return v * log_max + (1.0 - v) * log_min, cache


def learned_range_log_var_backward(cache, dlog_var):
    """dL/do (N, D) from dL/dlog σ_θ² (N, D)."""
    return dlog_var * cache


class HybridObjective:
    """L_hybrid = mean_d (ε − ε_θ)² + λ·T·L_{t−1}[bits/dim], t ~ U{1..T} (the module docstring says why).

    ``loss_and_backward(model, x0, rng, t=None, noise=None)`` adds dL/dθ into the model (2·D outputs)
    and returns the batch-mean loss. Stored after each call: ``last_simple`` and ``last_vlb`` (the batch
    mean of T·L_{t−1}, nats per point: an unbiased estimate of the bound's L_0 + … + L_{T−1}).
    """

    def __init__(self, schedule: Schedule, lam: float = 0.001) -> None:
        self.schedule, self.lam = schedule, float(lam)
        self.last_simple = self.last_vlb = float("nan")
        self.config = {"objective": "hybrid", "lam": self.lam, "schedule": dict(schedule.config)}

    def _forward(self, model, x0, t, noise, frozen_eps=None):
        xp, s = backend.xp, self.schedule
        n, d = x0.shape
        x_t = s.at("sqrt_alpha_bar", t, x0) * x0 + s.at("sqrt_one_minus_alpha_bar", t, x0) * noise
        out = model.forward(x_t, t)
        eps, o = out[:, :d], out[:, d:]
        simple = ((eps - noise) ** 2).mean()
        frozen = eps if frozen_eps is None else frozen_eps
        mean_p = eps_mean(s, x_t, frozen, t)  # a constant in L_vlb (stop-gradient)
        log_var_p, vcache = learned_range_log_var(s, o, t)
        first = backend.asarray(backend.to_numpy(t) == 1)[:, None]  # (N, 1): the decoder rows
        mean_q = s.at("posterior_mean_coef1", t, x0) * x0 + s.at("posterior_mean_coef2", t, x0) * x_t
        log_var_q = s.at("posterior_log_var_clipped", t, x0)  # log β̃_t for t ≥ 2 (t = 1 rows unused)
        kl = gaussian.kl(mean_q, log_var_q, mean_p, log_var_p)
        nll = -gaussian.log_density(x0, mean_p, log_var_p)
        term = xp.where(first, nll, kl).sum(axis=1)  # L_{t−1} per point, nats (N,)
        scale = self.lam * s.T / (d * math.log(2.0))  # λ·T·L_{t−1} in bits per dimension
        loss = float(simple) + scale * float(term.mean())
        cache = (noise, eps, mean_q, log_var_q, mean_p, log_var_p, vcache, first, x0, scale)
        return loss, float(simple), float(s.T * term.mean()), cache

    def loss(self, model, x0, rng=None, *, t=None, noise=None, frozen_eps=None) -> float:
        """The loss alone. ``frozen_eps`` (N, D) replaces ε_θ inside L_vlb's mean: with it set to the
        current ε_θ, the loss's finite-difference gradient is the stop-gradient one that backward computes."""
        x0, t, noise = draw_inputs(self.schedule, model, x0, rng, t, noise)
        return self._forward(model, x0, t, noise, frozen_eps)[0]

    def loss_and_backward(self, model, x0, rng=None, *, t=None, noise=None) -> float:
        xp = backend.xp
        x0, t, noise = draw_inputs(self.schedule, model, x0, rng, t, noise)
        loss, self.last_simple, self.last_vlb, cache = self._forward(model, x0, t, noise)
        noise, eps, mean_q, log_var_q, mean_p, log_var_p, vcache, first, x0, scale = cache
        n, d = x0.shape
        deps = 2.0 * (eps - noise) / (n * d)  # dL_simple/dε_θ; L_vlb sends none (stop-gradient)
        _, dlv_kl = gaussian.kl_backward(mean_q, log_var_q, mean_p, log_var_p, scale / n)
        _, dlv_nll = gaussian.log_density_backward(x0, mean_p, log_var_p, -scale / n)
        dlog_var = xp.where(first, dlv_nll, dlv_kl)  # (N, D)
        dout = xp.concatenate([deps, learned_range_log_var_backward(vcache, dlog_var)], axis=1)  # (N, 2D)
        model.backward(dout, input_grad=False)
        return loss
