"""The Sohl-Dickstein et al. 2015 reverse chain: a learned mean and variance per step, trained on the bound K.

Shape glossary: N batch, D data dims, T diffusion steps; ``out`` is the denoiser's (N, 2·D) output, split
into a mean half ``m`` (N, D) and a variance half ``v`` (N, D). t is the paper's step, an int array (N,).

Reverse kernel (the parameterisation of the authors' released Theano code, ``model.py``):
    p(x_{t−1} | x_t) = N(μ_θ, σ_θ² I),   μ_θ = √(1 − β_t) x_t + √β_t · m,   σ_θ² = sigmoid(v + logit β_t)
It is a perturbation of the forward kernel: m = v = 0 gives N(√α_t x_t, β_t), which is *exactly* the
reverse of the forward chain when the data are N(0, I). We use this form rather than the paper's
Appendix D (Σ = sigmoid(z_Σ + logit β_t), μ = (x_t − z_μ)(1 − Σ) + z_μ) because (i) its zero output is
the exact Gaussian reverse kernel (Appendix D's gives the mean (1 − β_t) x_t, not √(1 − β_t) x_t), so a
zero-initialised output layer starts at K = L_null on standardised data; and (ii) the mean correction is
scaled by √β_t, the size of one step's noise, so the network's output is O(1) at every t.

The bound (Sohl-Dickstein et al. 2015, Eq. 14; derived in their App. B), in nats per point:
    K = −Σ_{t=2}^{T} E_q[KL(q(x_{t−1}|x_t, x_0) ‖ p(x_{t−1}|x_t))] + H_q(X_T|X_0) − H_q(X_1|X_0) − H_p(X_T)
with H_q(X_T|X_0) = D/2 log(2πe(1 − ᾱ_T)), H_q(X_1|X_0) = D/2 log(2πe β_1), H_p(X_T) = D/2 log(2πe), and
the last step fixed to p(x_0|x_1) = N(√(1 − β_1) x_1, β_1) (the paper's edge-effect choice). The three
entropy terms equal the prior and t = 1 terms of the general decomposition only when E[x_0²] = 1 in every
dimension, so Eq. 14 needs zero-mean, unit-second-moment data: standardise (``npdiff.data.standardize``)
and report K in data coordinates as K − Σ_d log std_d (``npdiff.processes.likelihood``).
Training minimises the unbiased Monte-Carlo estimate −K̂ = (T − 1)·KL_t − const with t ~ U{2..T} (the
released code multiplies by T, which overweights the sum by T/(T − 1)).
"""

from __future__ import annotations

import math

from npdiff import backend
from npdiff.nn.denoiser import Denoiser
from npdiff.nn.primitives import log_sigmoid, sigmoid
from npdiff.processes import gaussian
from npdiff.processes.ddpm import check_out_dim, draw_inputs
from npdiff.processes.schedules import DECODER_T, Schedule


def make_model(data_dim: int, zero_output: bool = True, **kwargs) -> Denoiser:
    """A Denoiser with 2·D outputs (mean and variance halves) for the learned reverse kernel.

    zero_output: set the output layer to zero, so the chain starts at the forward kernel N(√α_t x_t, β_t)
    (exact for N(0, I) data: K = L_null on standardised data). ``kwargs`` go to ``Denoiser``.
    """
    model = Denoiser(data_dim, out_dim=2 * data_dim, **kwargs)
    if zero_output:
        model.out.params["W"][...] = 0  # in place: the arrays are views into the flat buffer
        model.out.params["b"][...] = 0
    return model


def reverse_kernel(schedule: Schedule, out, x_t, t):
    """(μ_θ, log σ_θ², cache) of p(x_{t−1}|x_t) from the network output ``out`` (N, 2·D); x_t (N, D), t (N,).

    μ_θ = √α_t x_t + √β_t m;  log σ_θ² = log sigmoid(a), a = v + logit β_t.  Shapes (N, D) each.
    """
    xp = backend.xp
    d = x_t.shape[1]
    m, v = out[:, :d], out[:, d:]  # (N, D) each
    beta = schedule.at("betas", t, x_t)  # (N, 1)
    alpha = schedule.at("alphas", t, x_t)  # 1 − β_t from float64: float32 1 − β_T would keep 4 digits
    a = v + (xp.log(beta) - xp.log(alpha))  # v + logit β_t  (N, D)
    log_var = log_sigmoid(a)
    mean = alpha ** 0.5 * x_t + beta ** 0.5 * m
    cache = (beta ** 0.5, a)  # √β_t scales dμ into dm; a gives dlogσ²/dv = 1 − sigmoid(a)
    return mean, log_var, cache


def reverse_kernel_backward(cache, dmean, dlog_var):
    """dL/dout (N, 2·D) from dL/dμ_θ and dL/dlog σ_θ² (N, D) each."""
    sqrt_beta, a = cache
    dm = dmean * sqrt_beta  # dμ/dm = √β_t
    # d log sigmoid(a)/da = 1 − sigmoid(a) = sigmoid(−a), formed directly: 1 − σ² would lose every digit
    # as σ² → 1 near t = T in float32 (relative error 1e-3 at v = 3)
    dv = dlog_var * sigmoid(-a)
    return backend.xp.concatenate([dm, dv], axis=1)


def entropy_constant(schedule: Schedule, data_dim: int) -> float:
    """H_q(X_T|X_0) − H_q(X_1|X_0) − H_p(X_T) of Eq. 14, nats per point: D/2·(log(1 − ᾱ_T) − log(2πe β_1))."""
    return 0.5 * data_dim * (math.log1p(-schedule.alpha_bar[-1]) - math.log(2 * math.pi * math.e * schedule.betas[1]))


class SohlDicksteinChain:
    """The learned reverse chain, a reverse process: ``kernel(x_t, t)`` for t = 1..T, t = 1 the fixed last step.

    model: a Denoiser with 2·D outputs (``make_model``), trained on standardised data; schedule: its β's.
    Sample it with ``npdiff.processes.sampling.sample`` (as everywhere in npdiff the last step adds no noise: x_0 is
    the mean √α_1 x_1 of the fixed last step, whose noise, std √β_1 = 0.16 at T = 40, would blur thin data).
    """

    def __init__(self, model, schedule: Schedule) -> None:
        check_out_dim(model, 2, "the Sohl-Dickstein chain (a mean and a variance per dimension)")
        self.model, self.schedule = model, schedule
        self.data_dim, self.dtype = int(model.config["data_dim"]), model.dtype

    def kernel(self, x_t, t):
        """(mean (N, D), log_var (N, D)) of p(x_{t−1}|x_t); rows with t = 1 get N(√α_1 x_1, β_1)."""
        xp, schedule = backend.xp, self.schedule
        x_t, t = x_t.astype(self.dtype, copy=False), schedule.as_timesteps(t)
        mean, log_var, _ = reverse_kernel(schedule, self.model.forward(x_t, t), x_t, t)
        decoder = schedule.is_decoder(t)  # (N, 1); selected on the device, whether any row is t = 1 or none
        mean = xp.where(decoder, schedule.at("alphas", DECODER_T, x_t) ** 0.5 * x_t, mean)
        log_var = xp.where(decoder, xp.log(schedule.at("betas", DECODER_T, x_t)), log_var)
        return mean, log_var


class BoundObjective:
    """Minimise −K (Eq. 14) by the unbiased estimate (T − 1)·KL_t − const, t ~ U{2..T}; nats per point.

    ``loss_and_backward(model, x0, rng)`` adds dL/dθ into the model's gradients and returns the batch
    mean of −K̂ (its expectation is −K) as a 0-d backend array. x0 (N, D) must be standardised data. ``t`` (N,) and ``noise``
    (N, D) may be given, which makes the loss deterministic for gradient checks.
    """

    first_t = DECODER_T + 1  # t = 1 is the fixed last step: K's sum starts at t = 2

    def __init__(self, schedule: Schedule) -> None:
        if schedule.T < 2:
            raise ValueError("the bound K needs T >= 2 (t = 1 is the fixed last step)")
        self.schedule = schedule
        self.config = {"objective": "sohl_dickstein", "schedule": dict(schedule.config)}

    def check_model(self, model) -> None:
        check_out_dim(model, 2, "the Sohl-Dickstein bound (a mean and a variance per dimension)")

    def forward(self, model, x0, t, noise):
        """−K̂ per point (N,) and the cache for ``backward``."""
        schedule = self.schedule
        x_t = schedule.q_sample(x0, t, noise)
        out = model.forward(x_t, t)  # (N, 2D)
        mean_p, log_var_p, kcache = reverse_kernel(schedule, out, x_t, t)
        mean_q, log_var_q = schedule.q_posterior(x0, x_t, t)
        kl = gaussian.kl(mean_q, log_var_q, mean_p, log_var_p).sum(axis=1)  # (N,) nats per point
        per_point = (schedule.T - 1) * kl - entropy_constant(schedule, x0.shape[1])
        return per_point, (mean_q, log_var_q, mean_p, log_var_p, kcache)

    def loss(self, model, x0, rng=None, *, t=None, noise=None) -> float:
        self.check_model(model)
        x0, t, noise = draw_inputs(self.schedule, model, x0, rng, t, noise, first=self.first_t)
        return float(self.forward(model, x0, t, noise)[0].mean())

    def loss_and_backward(self, model, x0, rng=None, *, t=None, noise=None):
        self.check_model(model)
        x0, t, noise = draw_inputs(self.schedule, model, x0, rng, t, noise, first=self.first_t)
        per_point, (mean_q, log_var_q, mean_p, log_var_p, kcache) = self.forward(model, x0, t, noise)
        dkl = (self.schedule.T - 1) / x0.shape[0]  # dL/dKL_n for L = mean_n((T−1)·KL_n)
        dmean, dlog_var = gaussian.kl_backward(mean_q, log_var_q, mean_p, log_var_p, dkl)
        model.backward(reverse_kernel_backward(kcache, dmean, dlog_var), input_grad=False)
        return per_point.mean()
