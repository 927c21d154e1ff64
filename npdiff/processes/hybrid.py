"""The L_hybrid objective for ε-prediction models with learned-range variances (Nichol & Dhariwal 2021).

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

from npdiff import backend
from npdiff.processes import gaussian
from npdiff.nn.losses import squared_error
from npdiff.processes.ddpm import (check_out_dim, draw_inputs, learned_range_log_var, learned_range_log_var_backward,
                                   mean_from_eps)
from npdiff.processes.schedules import Schedule


class HybridObjective:
    """L_hybrid = mean_d (ε − ε_θ)² + λ·T·L_{t−1}[bits/dim], t ~ U{1..T} (the module docstring says why).

    ``loss_and_backward(model, x0, rng, t=None, noise=None)`` adds dL/dθ into the model (2·D outputs)
    and returns the batch-mean loss. Stored after each call: ``last_simple`` and ``last_vlb`` (the batch
    mean of T·L_{t−1}, nats per point: an unbiased estimate of the bound's L_0 + … + L_{T−1}). All three
    are 0-d backend arrays, never read back to the host here (``float()`` reads them).
    """

    def __init__(self, schedule: Schedule, lam: float = 0.001) -> None:
        self.schedule, self.lam = schedule, float(lam)
        self.last_simple = self.last_vlb = float("nan")
        self.config = {"objective": "hybrid", "lam": self.lam, "schedule": dict(schedule.config)}

    def check_model(self, model) -> None:
        check_out_dim(model, 2, "the hybrid objective (ε_θ and a learned-range variance)")

    def _forward(self, model, x0, t, noise, frozen_eps=None):
        xp, schedule = backend.xp, self.schedule
        n, d = x0.shape
        x_t = schedule.q_sample(x0, t, noise)
        out = model.forward(x_t, t)
        eps_theta, o = out[:, :d], out[:, d:]
        simple, deps = squared_error(eps_theta, noise)  # L_simple and dL_simple/dε_θ
        frozen = eps_theta if frozen_eps is None else frozen_eps
        mean_p = mean_from_eps(schedule, x_t, t, frozen)  # a constant in L_vlb (stop-gradient)
        log_var_p, vcache = learned_range_log_var(schedule, o, t)
        decoder = schedule.is_decoder(t)  # (N, 1): the t = 1 rows
        mean_q, log_var_q = schedule.q_posterior(x0, x_t, t)  # t = 1 rows unused
        kl = gaussian.kl(mean_q, log_var_q, mean_p, log_var_p)
        nll = -gaussian.log_density(x0, mean_p, log_var_p)
        term = xp.where(decoder, nll, kl).sum(axis=1)  # L_{t−1} per point, nats (N,)
        scale = self.lam * schedule.T / (d * math.log(2.0))  # λ·T·L_{t−1} in bits per dimension
        loss = simple + scale * term.mean()
        cache = (deps, mean_q, log_var_q, mean_p, log_var_p, vcache, decoder, x0, scale)
        return loss, simple, schedule.T * term.mean(), cache

    def loss(self, model, x0, rng=None, *, t=None, noise=None, frozen_eps=None) -> float:
        """The loss alone. ``frozen_eps`` (N, D) replaces ε_θ inside L_vlb's mean: with it set to the
        current ε_θ, the loss's finite-difference gradient is the stop-gradient one that backward computes."""
        self.check_model(model)
        x0, t, noise = draw_inputs(self.schedule, model, x0, rng, t, noise)
        return float(self._forward(model, x0, t, noise, frozen_eps)[0])

    def loss_and_backward(self, model, x0, rng=None, *, t=None, noise=None):
        xp = backend.xp
        self.check_model(model)
        x0, t, noise = draw_inputs(self.schedule, model, x0, rng, t, noise)
        loss, self.last_simple, self.last_vlb, cache = self._forward(model, x0, t, noise)
        deps, mean_q, log_var_q, mean_p, log_var_p, vcache, decoder, x0, scale = cache  # ε_θ: L_simple's only
        n = x0.shape[0]
        _, dlv_kl = gaussian.kl_backward(mean_q, log_var_q, mean_p, log_var_p, scale / n)
        _, dlv_nll = gaussian.log_density_backward(x0, mean_p, log_var_p, -scale / n)
        dlog_var = xp.where(decoder, dlv_nll, dlv_kl)  # (N, D)
        dout = xp.concatenate([deps, learned_range_log_var_backward(vcache, dlog_var)], axis=1)  # (N, 2D)
        model.backward(dout, input_grad=False)
        return loss
