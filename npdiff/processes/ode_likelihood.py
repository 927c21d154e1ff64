"""The ODE log-likelihood of any model: log p(x_0) by the instantaneous change of variables.

Shape glossary: N points, D data dims, P Hutchinson probes per point, K levels of the σ grid.

Along the probability-flow ODE dy/dσ = f(y, σ) = (y − D(y, σ))/σ (``npdiff.processes.ode``) the density of
the moving point obeys (Chen et al. 2018, "Neural ODEs", Thm. 1; Song et al. 2021, Eq. 39)
    d log p_σ(y(σ))/dσ = −tr ∂f/∂y = −(D − tr J)/σ,        J = ∂D(y, σ)/∂y
so, carrying x_0 up the grid σ_min = σ_0 < … < σ_{K−1} = σ_max,
    log p_{σ_min}(x_0) = log p_{σ_max}(y(σ_max)) + ∫_{σ_min}^{σ_max} (D − tr J)/σ dσ                 (CoV)
integrated with Heun's method (trapezoids for y and the integral together). p_{σ_max} is the prior of a VP
model, N(0, (1 + σ_max²) I) (``ode.prior_std``), unless a ``log_prior`` is given.

tr J comes from vector–Jacobian products uᵀJ through the denoiser's hand-written backward (``vjp``):
    exact (D ≤ 16):  tr J = Σ_i e_iᵀ J e_i               D rows per point, one batched backward pass
    Hutchinson:      tr J ≈ (1/P) Σ_p z_pᵀ J z_p,  z_p Rademacher (E[z zᵀ] = I, so E[zᵀJz] = tr J)
with each point's probes fixed along its path (FFJORD, Grathwohl et al. 2019). The standard error is that
of the per-point values (spread of the points and of the probes together).

The value is the density of the data blurred by noise σ_min, in the model's coordinates; a model of discrete
timesteps starts at its σ_1 (``model_sigmas``).

A flow model integrates in its own time t instead (``flow_log_likelihood``): along dx/dt = v(x, t),
d log p_t(x(t))/dt = −tr ∂v/∂x, with x = (1 − t_min) x_0 at t_min and p_{t_max} = N(0, ((1 − t)² + t²) I) (the VP
prior, y = x/(1 − t)); log p_σ(y) = log p_t(x) + D log(1 − t) converts back. Its levels t = k/K are even in t,
where v is smooth, whereas in σ = t/(1 − t) the top two levels lie a factor 2 apart and the trapezoid of
div f ≈ D/σ there is off by 0.11 nats per two dimensions.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from npdiff import backend
from npdiff.processes.likelihood import PerPointNats
from npdiff.processes.ode import prior_std

LN2 = math.log(2.0)
EXACT_MAX_DIM = 16  # up to here the trace is exact: D backward rows per point


@dataclass
class OdeLogLikelihood(PerPointNats):
    """Per-point log p_{σ_min}(x_0) in nats (model coordinates), and what is reported from them."""

    values: np.ndarray  # (N,) nats per point
    dim: int
    method: str
    seconds: float = 0.0

    @property
    def bits_per_dim(self) -> float:
        """−log₂ p per dimension: the negative log-likelihood in bits, divided by D."""
        return -self.nats / (self.dim * LN2)

    def summary(self) -> str:
        return (f"{self.method}: log p = {self.nats:.4f} ± {self.se:.4f} nats/point "
                f"({self.nats / self.dim:.4f} nats/dim, {self.bits_per_dim:.4f} ± {self.se / (self.dim * LN2):.4f} "
                f"bits/dim NLL); N = {self.n}, {self.seconds:.1f} s")


def model_sigmas(denoiser, steps: int | None = None) -> np.ndarray:
    """An increasing grid of a discrete model's levels σ_1 … σ_T (``steps`` of them evenly spaced in t)."""
    return np.asarray(denoiser.sigmas[denoiser.schedule.reverse_t(steps)][::-1], dtype=np.float64)


def trace_exact(denoiser, y, sigma: float):
    """tr J per row, Σ_i e_iᵀ J e_i, from one backward pass over the N·D rows (y_n, e_i).  y (N, D) -> (N,)"""
    n, d = y.shape
    rows = backend.xp.repeat(y, d, axis=0)  # row n·D + i is y_n          (N·D, D)
    basis = backend.xp.tile(backend.xp.eye(d, dtype=y.dtype), (n, 1))  # row n·D + i is e_i   (N·D, D)
    rows_of_j = denoiser.vjp(rows, sigma, basis)  # row n·D + i is e_iᵀ J_n = J_n's row i
    return (rows_of_j * basis).sum(axis=1).reshape(n, d).sum(axis=1)  # Σ_i (J_n)_ii


def trace_hutchinson(denoiser, y, sigma: float, probes):
    """(1/P) Σ_p z_pᵀ J z_p per row.  y (N, D), probes (N, P, D) -> (N,)"""
    n, p, d = probes.shape
    rows = backend.xp.repeat(y, p, axis=0)  # row n·P + q is y_n   (N·P, D)
    z = probes.reshape(n * p, d)
    return (denoiser.vjp(rows, sigma, z) * z).sum(axis=1).reshape(n, p).mean(axis=1)


def rademacher(shape, rng, dtype="float64"):
    """Independent ±1 entries, each with probability ½."""
    return backend.xp.where(rng.random(shape) < 0.5, -1.0, 1.0).astype(dtype)


def trace_probes(trace: str, n: int, d: int, probes: int, rng):
    """The Hutchinson probes z (N, P, D) for ``trace='hutchinson'`` (or 'auto' above EXACT_MAX_DIM dims);
    None for the exact trace. Refuses an unknown trace, and Hutchinson without a generator."""
    if trace == "auto":
        trace = "exact" if d <= EXACT_MAX_DIM else "hutchinson"
    if trace not in ("exact", "hutchinson"):
        raise ValueError(f"trace must be 'exact', 'hutchinson' or 'auto', got {trace!r}")
    if trace == "hutchinson" and rng is None:
        raise ValueError("the Hutchinson trace draws probes: pass rng")
    return rademacher((n, probes, d), rng) if trace == "hutchinson" else None


def heun_with_divergence(drift, x, grid: list[float]):
    """Integrate dx/ds = f(x, s) and ∫ div f ds together over the increasing ``grid`` by Heun's method (a
    trapezoid for both); drift(x, s) -> (f (N, D), div f (N,)).  -> (x at the grid's end, the integral (N,))"""
    integral = backend.xp.zeros(x.shape[0])
    f, div = drift(x, grid[0])
    for s, s_next in zip(grid[:-1], grid[1:]):
        h = s_next - s
        f_next, div_next = drift(x + h * f, s_next)  # the slope at the Euler predictor
        x = x + 0.5 * h * (f + f_next)
        integral = integral + 0.5 * h * (div + div_next)
        if s_next != grid[-1]:
            f, div = drift(x, s_next)
    return x, integral


def ode_log_likelihood(denoiser, x0, sigmas, *, trace: str = "auto", probes: int = 1, rng=None,
                       log_prior=None) -> OdeLogLikelihood:
    """log p(x_0) per point by (CoV), Heun on the increasing grid ``sigmas`` (σ_min > 0 … σ_max).

    denoiser: D(y, σ) with ``vjp(y, σ, u)`` (``ode.ChainDenoiser``, ``flow.FlowDenoiser``, the Gaussian oracle);
    x0 (N, D); trace: "exact", "hutchinson" (``probes`` Rademacher probes per point, drawn with ``rng``) or
    "auto" (exact for D ≤ 16); log_prior(y, σ_max) -> (N,): the density at σ_max, by default N(0, (1 + σ_max²) I).
    """
    start = time.perf_counter()
    sigmas = np.asarray(sigmas, dtype=np.float64)
    if sigmas.ndim != 1 or sigmas.size < 2 or sigmas[0] <= 0 or not np.all(np.diff(sigmas) > 0):
        raise ValueError("sigmas must be an increasing grid of at least two levels above 0")
    y = backend.asarray(x0, dtype="float64")
    n, d = y.shape
    z = trace_probes(trace, n, d, probes, rng)

    def drift(y, sigma):
        """(f (N, D), div f (N,)) at noise level σ: f = (y − D)/σ, div f = (D − tr J)/σ."""
        tr = trace_exact(denoiser, y, sigma) if z is None else trace_hutchinson(denoiser, y, sigma, z)
        return (y - denoiser(y, sigma)) / sigma, (d - tr) / sigma

    y, integral = heun_with_divergence(drift, y, [float(s) for s in sigmas])  # y(σ_max), ∫ div f dσ
    sigma_max = float(sigmas[-1])
    if log_prior is None:
        var = prior_std(sigma_max) ** 2
        prior = -0.5 * ((y * y).sum(axis=1) / var + d * math.log(2 * math.pi * var))
    else:
        prior = backend.asarray(log_prior(y, sigma_max))
    values = backend.to_numpy(prior + integral)
    method = f"ODE log-likelihood (Heun, {sigmas.size - 1} steps, σ {sigmas[0]:.3g}…{sigma_max:.3g}, " + (
        "exact trace)" if z is None else f"Hutchinson trace, {probes} probe{'s' * (probes > 1)})")
    return OdeLogLikelihood(values, d, method, time.perf_counter() - start)


def flow_log_likelihood(velocity, x0, ts, *, trace: str = "auto", probes: int = 1, rng=None) -> OdeLogLikelihood:
    """log p_{σ_min}(x_0) per point of a flow model (module docstring), Heun in t on the increasing grid ``ts``
    (t_min > 0 … t_max < 1, on the model's levels); σ_min = t_min/(1 − t_min). velocity: ``flow.FlowVelocity``
    (v(x, t) and ``vjp``). trace, probes, rng: as ``ode_log_likelihood``."""
    start = time.perf_counter()
    ts = np.asarray(ts, dtype=np.float64)
    if ts.ndim != 1 or ts.size < 2 or ts[0] <= 0 or ts[-1] >= 1 or not np.all(np.diff(ts) > 0):
        raise ValueError("ts must be an increasing grid of at least two times in (0, 1)")
    x0 = backend.asarray(x0, dtype="float64")
    n, d = x0.shape
    z = trace_probes(trace, n, d, probes, rng)

    def drift(x, t):
        """(v (N, D), div v (N,)) at time t."""
        tr = trace_exact(velocity, x, t) if z is None else trace_hutchinson(velocity, x, t, z)
        return velocity(x, t), tr

    times = [float(t) for t in ts]
    x = (1.0 - times[0]) * x0  # x_{t_min} of the point y = x_0 at σ_min
    x, integral = heun_with_divergence(drift, x, times)  # x(t_max), ∫ div v dt
    var = (1.0 - times[-1]) ** 2 + times[-1] ** 2
    prior = -0.5 * ((x * x).sum(axis=1) / var + d * math.log(2 * math.pi * var))
    values = backend.to_numpy(prior + integral) + d * math.log(1.0 - times[0])
    sigma_min = times[0] / (1.0 - times[0])
    method = (f"ODE log-likelihood (flow, Heun in t, {ts.size - 1} steps, t {times[0]:.3g}…{times[-1]:.3g}, "
              f"σ_min {sigma_min:.3g}, " + ("exact trace)" if z is None else
                                            f"Hutchinson trace, {probes} probe{'s' * (probes > 1)})"))
    return OdeLogLikelihood(values, d, method, time.perf_counter() - start)
