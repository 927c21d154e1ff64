"""Variational lower bounds on log p(x_0) for any trained chain: exact over t or Monte Carlo, with errors.

Shape glossary: N points, D data dims, T steps, R rows of a (point, t) batch. A *process* is any reverse
process (``npdiff.processes.sampling``): an object with ``schedule`` and ``kernel(x_t, t) -> (mean, log_var)``, the
reverse Gaussian p(x_{t−1}|x_t) for t = 1..T (t = 1 is the decoder p(x_0|x_1)); ``ddpm.EpsilonChain``,
``sohl_dickstein.SohlDicksteinChain`` and ``oracles.GaussianOracle`` are processes. p(x_T) = N(0, I) always.

The decomposition (Ho et al. 2020, Eq. 5; Sohl-Dickstein et al. 2015, App. B), per point, in nats:
    −log p(x_0) ≤ L_T + Σ_{t=2}^{T} L_{t−1} + L_0
    L_T     = KL(q(x_T|x_0) ‖ N(0, I))                       closed form
    L_{t−1} = KL(q(x_{t−1}|x_t, x_0) ‖ p(x_{t−1}|x_t)),       x_t ~ q(x_t|x_0)
    L_0     = −log N(x_0; μ_θ(x_1, 1), σ_1²),                 x_1 ~ q(x_1|x_0)   (continuous Gaussian decoder)
``exact_bound`` evaluates every t for every point (one x_t draw per t); ``mc_bound`` draws t per point,
uniformly or by importance p(t), and returns L_T + L_{t−1}/p(t), unbiased. The per-point values are kept,
so the standard error is their standard deviation / √N. For the Sohl-Dickstein chain, ``eq14_bound`` gives
the paper's K (Eq. 14), equal in expectation to the decomposition when E[x_0²] = 1 in every dimension.

Coordinates: models are trained on scaled data z = (x − mean)/std; log p_x(x) = log p_z(z) − Σ_d log std_d.
``Bound`` reports both (``log_det`` = Σ_d log std_d), and K − L_null with L_null = log N(z; 0, I).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from npdiff import backend
from npdiff.processes import gaussian
from npdiff.processes.schedules import Schedule
from npdiff.processes.sohl_dickstein import BoundObjective, SohlDicksteinChain, entropy_constant

LN2 = math.log(2.0)


class PerPointNats:
    """What every likelihood report derives from its per-point values (N,) in nats: n, mean and its standard
    error. A dataclass that holds ``values`` inherits these."""

    values: np.ndarray

    @property
    def n(self) -> int:
        return int(self.values.size)

    @property
    def nats(self) -> float:
        """Mean per point, nats, model coordinates (a bound on log p for ``Bound``: K for Sohl-Dickstein)."""
        return float(self.values.mean())

    @property
    def se(self) -> float:
        """Standard error of ``nats``: std of the per-point values / √N (per point; divide by ``dim`` for per
        dimension)."""
        return float(self.values.std(ddof=1) / math.sqrt(self.n)) if self.n > 1 else float("nan")


@dataclass
class Bound(PerPointNats):
    """Per-point lower bounds on log p (nats, model coordinates) and everything reported from them."""

    values: np.ndarray  # (N,) per-point bound estimates, nats, model coordinates
    null: np.ndarray  # (N,) log N(z; 0, I) of the same points
    dim: int
    log_det: float = 0.0  # Σ_d log std_d: subtract to get data coordinates
    method: str = ""
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def nats_data(self) -> float:
        """Mean bound on log p per point in data coordinates: nats − Σ log std."""
        return self.nats - self.log_det

    @property
    def nll_data(self) -> float:
        """The negative: an upper bound on the cross-entropy, nats per point, data coordinates."""
        return -self.nats_data

    @property
    def gain(self) -> float:
        """K − L_null per point: how much better than N(0, I) on the scaled data (nats)."""
        return float((self.values - self.null).mean())

    @property
    def gain_se(self) -> float:
        d = self.values - self.null
        return float(d.std(ddof=1) / math.sqrt(self.n)) if self.n > 1 else float("nan")

    def summary(self) -> str:
        return (f"{self.method}: K = {self.nats:.4f} ± {self.se:.4f} nats/point "
                f"({self.nats / self.dim:.4f} nats/dim, {self.nats / LN2:.4f} ± {self.se / LN2:.4f} bits/point, "
                f"{self.nats / self.dim / LN2:.4f} bits/dim); data coordinates {self.nats_data:.4f} nats/point "
                f"({self.nats_data / LN2:.4f} bits); K − L_null = {self.gain:.4f} ± {self.gain_se:.4f} nats "
                f"({self.gain / LN2:.4f} ± {self.gain_se / LN2:.4f} bits); N = {self.n}, {self.seconds:.1f} s")


def prior_term(schedule: Schedule, x0):
    """L_T = KL(N(√ᾱ_T x_0, 1 − ᾱ_T) ‖ N(0, I)) per point, nats (N,)."""
    ab = float(schedule.alpha_bar[-1])
    return gaussian.kl(math.sqrt(ab) * x0, math.log1p(-ab), 0.0, 0.0).sum(axis=1)


def null_loglik(x0):
    """L_null = log N(x_0; 0, I) per point, nats (N,)."""
    return gaussian.log_density(x0, 0.0, 0.0).sum(axis=1)


def bound_terms(process, x0, t, noise):
    """L_{t−1} per row (R,), nats: the KL for t ≥ 2, the decoder's −log N(x_0; μ, σ²) for t = 1.

    x0, noise (R, D) float64; t (R,) in 1..T; x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) noise.
    """
    schedule = process.schedule
    x_t = schedule.q_sample(x0, t, noise)
    mean_p, log_var_p = process.kernel(x_t, t)
    mean_p, log_var_p = mean_p.astype(x0.dtype), log_var_p.astype(x0.dtype)
    mean_q, log_var_q = schedule.q_posterior(x0, x_t, t)  # t = 1 rows unused
    kl = gaussian.kl(mean_q, log_var_q, mean_p, log_var_p).sum(axis=1)
    nll = -gaussian.log_density(x0, mean_p, log_var_p).sum(axis=1)
    return backend.xp.where(schedule.is_decoder(t)[:, 0], nll, kl)


def _rows(process, x0, t, rng, batch_size):
    """bound_terms over many rows in batches of ``batch_size``, float64. -> (R,) host array."""
    out = np.empty(t.size)
    for i in range(0, t.size, batch_size):
        xb = x0[i:i + batch_size]
        noise = backend.asarray(rng.standard_normal(xb.shape))
        out[i:i + batch_size] = backend.to_numpy(bound_terms(process, xb, backend.asarray(t[i:i + batch_size]), noise))
    return out


def _draw_t(timesteps: np.ndarray, p: np.ndarray, size: int, rng) -> np.ndarray:
    """``size`` host draws of the timesteps with probabilities p, by the inverse CDF of uniform draws: the
    numbers ``rng.choice(timesteps, size, p=p)`` gives on NumPy, and a CuPy generator (which has no
    ``choice``) works too."""
    cdf = p.cumsum()
    cdf /= cdf[-1]
    u = backend.to_numpy(rng.random(size))
    return timesteps[cdf.searchsorted(u, side="right")]


def _prepare(x0):
    x0 = backend.asarray(x0, "float64")  # host data move to the backend; device data stay there
    if x0.ndim != 2:
        raise ValueError(f"x0 must have shape (N, D); got {tuple(x0.shape)}")
    return x0


def exact_bound(process, x0, rng, log_det: float = 0.0, batch_size: int = 8192) -> Bound:
    """L_T + Σ_{t=2}^T L_{t−1} + L_0 for every point (N·T network calls), negated into a log-p bound."""
    start = time.perf_counter()
    x0 = _prepare(x0)
    n, T = x0.shape[0], process.schedule.T
    t = np.tile(process.schedule.timesteps(), n)  # rows point-major: point i has rows i·T .. i·T + T − 1
    terms = _rows(process, backend.xp.repeat(x0, T, axis=0), t, rng, batch_size).reshape(n, T)
    values = -(backend.to_numpy(prior_term(process.schedule, x0)) + terms.sum(axis=1))
    return Bound(values, backend.to_numpy(null_loglik(x0)), x0.shape[1], log_det, "exact decomposition",
                 time.perf_counter() - start, {"terms_mean": terms.mean(axis=0)})


def mc_bound(process, x0, rng, n_t: int = 1, t_probs=None, log_det: float = 0.0,
             batch_size: int = 8192) -> Bound:
    """Per point: L_T + mean over n_t draws t ~ p(t) of L_{t−1}/p(t) (unbiased); p uniform on 1..T by default.

    t_probs: (T,) probabilities of t = 1..T (e.g. from ``importance_probs``), each > 0.
    """
    start = time.perf_counter()
    x0 = _prepare(x0)
    n, T = x0.shape[0], process.schedule.T
    p = np.full(T, 1.0 / T) if t_probs is None else np.asarray(t_probs, dtype=np.float64)
    if p.shape != (T,) or np.any(p <= 0) or abs(p.sum() - 1.0) > 1e-9:
        raise ValueError("t_probs must be T positive probabilities summing to 1")
    t = _draw_t(process.schedule.timesteps(), p, n * n_t, rng)
    terms = _rows(process, backend.xp.repeat(x0, n_t, axis=0), t, rng, batch_size) / p[t - 1]
    values = -(backend.to_numpy(prior_term(process.schedule, x0)) + terms.reshape(n, n_t).mean(axis=1))
    name = "Monte Carlo over t" + ("" if t_probs is None else " (importance-sampled)")
    return Bound(values, backend.to_numpy(null_loglik(x0)), x0.shape[1], log_det, name, time.perf_counter() - start)


def importance_probs(process, x0_pilot, rng, floor: float = 0.1, batch_size: int = 8192) -> np.ndarray:
    """p(t) ∝ √E[L_{t−1}²] from an exact pass over a few pilot points, mixed with ``floor`` of uniform.

    The optimal proposal for the variance of L_{t−1}/p(t); the uniform share keeps every p(t) > 0. Use
    pilot points that are not the evaluation points, or accept the (small) dependence.
    """
    x0 = _prepare(x0_pilot)
    n, T = x0.shape[0], process.schedule.T
    terms = _rows(process, backend.xp.repeat(x0, T, axis=0), np.tile(process.schedule.timesteps(), n), rng,
                  batch_size).reshape(n, T)
    rms = np.sqrt((terms ** 2).mean(axis=0))
    return (1.0 - floor) * rms / rms.sum() + floor / T


def check_standardized(x0, tol: float = 0.1) -> None:
    """Refuse data whose per-dimension mean second moment is not within ``tol`` of 1 (Eq. 14's premise).

    The tolerance widens by 5 standard errors of a mean of x² for N(0, 1) data, 5·√(2/N), so that a small
    held-out sample of standardised data is not refused for its sampling noise.
    """
    m2 = backend.to_numpy((backend.asarray(x0) ** 2).mean(axis=0))
    if np.any(np.abs(m2 - 1.0) > tol + 5.0 * math.sqrt(2.0 / x0.shape[0])):
        raise ValueError(f"Eq. 14 needs standardised data (E[x²] = 1 per dimension); got {np.round(m2, 3).tolist()}: "
                         "use npdiff.data.standardize and pass log_det = Σ log std")


def eq14_bound(chain: SohlDicksteinChain, x0, rng, exact: bool = False, n_t: int = 1, log_det: float = 0.0,
               batch_size: int = 8192) -> Bound:
    """The paper's K (Eq. 14) per point: const − Σ_{t=2}^T KL_t (exact) or const − (T − 1)·KL_t, t ~ U{2..T}."""
    start = time.perf_counter()
    x0 = _prepare(x0)
    check_standardized(x0)
    n, schedule, first = x0.shape[0], chain.schedule, BoundObjective.first_t
    if exact:
        t = np.tile(schedule.timesteps(first), n)
        reps, weight = schedule.T - first + 1, 1.0
    else:
        t = schedule.sample_t(n * n_t, rng, first)
        reps, weight = n_t, (schedule.T - first + 1) / n_t
    terms = _rows(chain, backend.xp.repeat(x0, reps, axis=0), t, rng, batch_size).reshape(n, reps)
    values = entropy_constant(chain.schedule, x0.shape[1]) - weight * terms.sum(axis=1)
    name = "Eq. 14, " + ("exact over t" if exact else f"Monte Carlo over t ({n_t} per point)")
    return Bound(values, backend.to_numpy(null_loglik(x0)), x0.shape[1], log_det, name, time.perf_counter() - start)


def toy_log_density(name: str, x, noise: float = 1.0):
    """Exact log p(x) (N,) of two ``npdiff.data`` toy sets in data coordinates, the reference for bounds.

    "8gaussians": the 8-component mixture itself. "swissroll" (with its ``noise``): p(x) = E_t N(x; c(t),
    (noise/5)² I), c(t) = (t cos t, t sin t)/5, t ~ U[1.5π, 4.5π], by the trapezoid rule on 20,001 nodes
    (node spacing ≪ noise/5 along the curve, so the quadrature error is far below a Monte-Carlo SE).
    """
    x = np.asarray(backend.to_numpy(x), dtype=np.float64)
    if name == "8gaussians":
        angles = np.arange(8) * (math.pi / 4)
        centres = 4.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1) / 1.414
        log_w, var = np.full(8, -math.log(8.0)), (0.5 / 1.414) ** 2
    elif name == "swissroll":
        ts = np.linspace(1.5 * math.pi, 4.5 * math.pi, 20001)
        centres = np.stack([ts * np.cos(ts), ts * np.sin(ts)], axis=1) / 5.0
        w = np.full(ts.size, 1.0 / (ts.size - 1))
        w[[0, -1]] *= 0.5  # trapezoid weights of the uniform density on t
        log_w, var = np.log(w), (noise / 5.0) ** 2
    else:
        raise ValueError(f"no exact density for {name!r}; known: 8gaussians, swissroll")
    out = np.empty(x.shape[0])
    for i in range(0, x.shape[0], 256):  # (256, K) blocks keep the temporaries small
        sq = ((x[i:i + 256, None, :] - centres[None]) ** 2).sum(axis=2)  # (B, K)
        out[i:i + 256] = np.logaddexp.reduce(log_w - sq / (2 * var), axis=1) - math.log(2 * math.pi * var)
    return out


def toy_entropy(name: str, rng, n: int = 200_000, **kwargs) -> tuple[float, float]:
    """H = −E log p(x), nats per point, data coordinates, by Monte Carlo on the exact density. -> (H, SE)"""
    from npdiff import data

    logp = toy_log_density(name, data.TOY_SETS[name](n, rng, **kwargs), **kwargs)
    return float(-logp.mean()), float(logp.std(ddof=1) / math.sqrt(n))
