"""Closed-form algebra of diagonal Gaussians: log-density, entropy, KL divergence and their gradients.

Every function works elementwise on backend arrays (``backend.xp``) of any broadcastable shapes,
typically (N, D) with N batch and D data dimensions, and keeps the float dtype of its inputs (float32
stays float32). Callers sum over D (and average over N) themselves. A variance is always passed as its
log, ``log_var`` = log σ², as networks output it; backward functions return gradients with the shape of
the input they belong to (summed over axes that were broadcast).

Equations, per dimension (natural log, nats):
    log N(x; μ, σ²)          = −½ (log 2π + log σ² + (x − μ)²/σ²)
    H[N(μ, σ²)]              = ½ (log 2πe + log σ²)
    KL(N(μ_q, σ_q²) ‖ N(μ_p, σ_p²)) = ½ (log σ_p² − log σ_q² + (σ_q² + (μ_q − μ_p)²)/σ_p² − 1)
These are the terms of the DDPM bound (Ho et al. 2020, Eq. 5) and of Sohl-Dickstein et al. 2015's K
(Eq. 14), whose reverse kernel p(x_{t−1}|x_t) = N(μ_θ, σ_θ²) is the ``_p`` side of ``kl``.
"""

from __future__ import annotations

import math

from npdiff import backend

# Python floats, not NumPy scalars: they keep float32 arrays float32 (NEP 50)
LOG_2PI = math.log(2.0 * math.pi)
LOG_2PIE = math.log(2.0 * math.pi * math.e)


def _sum_to_shape(g, shape: tuple):
    """Sum a broadcast gradient back to an input's shape (the adjoint of broadcasting)."""
    xp = backend.xp
    extra = g.ndim - len(shape)
    if extra > 0:
        g = g.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return xp.reshape(g, shape)


def log_density(x, mean, log_var):
    """log N(x; mean, exp(log_var)) elementwise, −½(log 2π + log σ² + (x − μ)² e^{−log σ²}), in nats."""
    xp = backend.xp
    return -0.5 * (LOG_2PI + log_var + (x - mean) ** 2 * xp.exp(-log_var))


def log_density_backward(x, mean, log_var, dlogp):
    """Gradients of L = Σ dlogp · log_density(x, mean, log_var) w.r.t. ``mean`` and ``log_var``.

    ∂log N/∂μ = (x − μ)/σ²;  ∂log N/∂log σ² = −½ + ½ (x − μ)²/σ².
    Returns (dmean, dlog_var), shaped like ``mean`` and ``log_var``.
    """
    xp = backend.xp
    inv_var = xp.exp(-log_var)
    diff = x - mean
    dmean = diff * inv_var * dlogp                                  # dL/dμ = dlogp · (x − μ)/σ²
    dlog_var = (-0.5 + 0.5 * diff ** 2 * inv_var) * dlogp           # dL/dlog σ² = dlogp · ½((x−μ)²/σ² − 1)
    return _sum_to_shape(dmean, xp.shape(mean)), _sum_to_shape(dlog_var, xp.shape(log_var))


def entropy(log_var):
    """Differential entropy of N(μ, exp(log_var)) elementwise, ½(log 2πe + log σ²), in nats."""
    return 0.5 * (LOG_2PIE + log_var)


def kl(mean_q, log_var_q, mean_p, log_var_p):
    """KL(N(μ_q, σ_q²) ‖ N(μ_p, σ_p²)) elementwise, in nats.

    ½(log σ_p² − log σ_q² + (σ_q² + (μ_q − μ_p)²)/σ_p² − 1); σ_q²/σ_p² is formed as exp(log σ_q² − log σ_p²)
    so that very small or large variances do not over- or underflow on their own.
    """
    xp = backend.xp
    return 0.5 * (log_var_p - log_var_q + xp.exp(log_var_q - log_var_p)
                  + (mean_q - mean_p) ** 2 * xp.exp(-log_var_p) - 1.0)


def kl_backward(mean_q, log_var_q, mean_p, log_var_p, dkl):
    """Gradients of L = Σ dkl · kl(mean_q, log_var_q, mean_p, log_var_p) w.r.t. the ``_p`` side.

    ∂KL/∂μ_p = (μ_p − μ_q)/σ_p²;  ∂KL/∂log σ_p² = ½(1 − (σ_q² + (μ_q − μ_p)²)/σ_p²).
    Returns (dmean_p, dlog_var_p), shaped like ``mean_p`` and ``log_var_p``. The ``_q`` side (the forward
    posterior q(x_{t−1}|x_t, x_0)) has no parameters in npdiff, so no gradient is returned for it.
    """
    xp = backend.xp
    inv_var_p = xp.exp(-log_var_p)
    diff = mean_p - mean_q
    dmean_p = diff * inv_var_p * dkl                                            # dL/dμ_p
    dlog_var_p = 0.5 * (1.0 - xp.exp(log_var_q - log_var_p) - diff ** 2 * inv_var_p) * dkl  # dL/dlog σ_p²
    return _sum_to_shape(dmean_p, xp.shape(mean_p)), _sum_to_shape(dlog_var_p, xp.shape(log_var_p))
