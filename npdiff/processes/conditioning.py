"""Conditioning a trained chain by multiplying distributions (Sohl-Dickstein et al. 2015, §2.5).

Shape glossary: N samples, D data dims, R rows of a condition (1: the same for every sample, or N).

To sample p̃(x_0) ∝ p(x_0) r(x_0), every reverse step is multiplied by a factor r_t and renormalised:
    p̃(x_{t−1}|x_t) = p(x_{t−1}|x_t) r_t(x_{t−1}) / Z̃_t(x_t)                                     (Eq. 22)
starting from p̃(x_T) ∝ p(x_T) r_T(x_T) (Eq. 16 at t = T). Here r is Gaussian per coordinate,
r(x) = Π_d N(x_d; m_d, v_d): v_d = 0 clamps a coordinate to m_d ("given", inpainting), v_d = s² is a
noisy observation y = x_0 + N(0, s²) ("observed", denoising), v_d = ∞ leaves it free. A Gaussian kernel
N(μ, σ²) times N(m, v) is Gaussian again (the exact case of §2.5.3; App. C's Eqs. 52-61 only approximate
a smooth r):
    precision 1/σ² + 1/v,  mean (μ/σ² + m/v)/(1/σ² + 1/v) = w_μ μ + w_m m,
    w_m = σ²/(σ² + v),  w_μ = v/(σ² + v),  variance σ² v/(σ² + v) = w_μ σ²,
the weighted form being exact at v = 0 (x = m) and, taken as its limit, at v = ∞ (the kernel unchanged).

The factor along the chain (``method``):
    "paper"    r_t = r at every t (Eq. 23, the paper's experiments and its released sampler): the known
               coordinates sit at m from x_T on, and an observation pulls every step towards y.
    "replace"  r_t is r applied to a forward-diffused copy of the observation: at the step to x_{t−1} the
               factor is N(x; m_{t−1}, ᾱ_{t−1} v) with m_{t−1} = √ᾱ_{t−1} m + √(1−ᾱ_{t−1}) ε', ε' ~ N(0, 1)
               fresh at every step (DDPM Eq. 4 applied to the observation). Averaged over ε' the step is
               N(w_μ μ + w_m √ᾱ_{t−1} m, w_μ σ² + w_m² (1 − ᾱ_{t−1})); for v = 0 this replaces the known
               coordinates by a draw of q(x_{t−1}|x_0 = m), the known-region update of RePaint (Lugmayr et al.
               2022, without its resampling loop).
    a callable (t_prev, like) -> (m, v, extra): your own r_t for the step to x_{t_prev} (t_prev = T: for x_T).
Neither named choice is exact: Eq. 22 drops the factor Z̃_t(x_t) of Eq. 21, a per-step weight of 1 + O(β_t)
whose product over T steps stays O(1) as T grows. Eq. 22 is exact when r_t is the message
h_t(x_t) = E_p[r(x_0) | x_t] (then Z̃_t(x_t) = h_t(x_t)); both choices equal h_t only at t = 0.
docs/conditioning.md derives this and measures both choices against exact posteriors.
"""

from __future__ import annotations

import math
import os
from typing import Callable

import numpy as np

from npdiff import backend, data
from npdiff.processes import sampling

METHODS = ("paper", "replace")


def _rows(name: str, value, data_dim: int) -> np.ndarray:
    """``value`` as float64 (R, D): a (D,) vector is one row for every sample."""
    a = np.asarray(value, dtype=np.float64)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or a.shape[1] != data_dim or a.shape[0] < 1:
        raise ValueError(f"{name} must have shape ({data_dim},) or (N, {data_dim}), got {np.shape(value)}")
    return a


def factor(data_dim: int, given=None, observed=None, noise_std=None) -> tuple[np.ndarray, np.ndarray]:
    """The factor r as (m, v), float64 (R, D): mean and variance per coordinate (0 known, s² observed, ∞ free).

    given: (D,) or (N, D), NaN for a free coordinate. observed: (D,) or (N, D), every entry finite, with
    noise_std s ≥ 0 (a number, (D,) or (N, D); 0 clamps like ``given``, inf leaves a coordinate free).
    Where a coordinate is both given and observed, the product of the two factors is the clamp.
    Raises a one-line ValueError for a wrong shape, a non-finite known value or observation, a negative
    or NaN noise_std, no condition at all, or a row whose every coordinate is known (nothing to sample).
    """
    if (observed is None) != (noise_std is None):
        raise ValueError("observed and noise_std go together: y = x0 + N(0, noise_std^2)")
    if given is None and observed is None:
        raise ValueError("nothing to condition on: pass given (NaN = free) or observed with noise_std")
    rows = []
    if given is not None:
        g = _rows("given", given, data_dim)
        if np.isinf(g).any():
            raise ValueError("given holds inf; a known coordinate needs a finite value, a free one NaN")
        if np.isnan(g).all():
            raise ValueError("given has no known coordinate (all NaN); sample the model without conditioning")
        rows.append(g)
    if observed is not None:
        y = _rows("observed", observed, data_dim)
        if not np.isfinite(y).all():
            raise ValueError("observed holds NaN or inf; every coordinate of an observation must be a finite "
                             "number (make one uninformative with noise_std = inf)")
        s = np.asarray(noise_std, dtype=np.float64)
        wrong_rows = s.ndim == 2 and s.shape[0] not in (1, y.shape[0])
        if s.ndim > 2 or (s.ndim >= 1 and s.shape[-1] != data_dim) or wrong_rows:
            raise ValueError(f"noise_std must be a number, ({data_dim},) or (N, {data_dim}) like observed, "
                             f"got shape {s.shape}")
        if np.isnan(s).any() or (s < 0).any():
            raise ValueError(f"noise_std must be >= 0 (0 clamps, inf frees a coordinate), got {noise_std!r}")
        rows.append(y)
    n_rows = max(r.shape[0] for r in rows)
    if any(r.shape[0] not in (1, n_rows) for r in rows):
        raise ValueError(f"given and observed must have the same number of rows, got {[len(r) for r in rows]}")
    m, v = np.zeros((n_rows, data_dim)), np.full((n_rows, data_dim), np.inf)
    if observed is not None:
        m, v = m + y, np.broadcast_to(s ** 2, v.shape).copy()
    if given is not None:
        known = np.broadcast_to(~np.isnan(g), m.shape)
        m, v = np.where(known, g, m), np.where(known, 0.0, v)
    full = (v == 0).all(axis=1)
    if full.any():
        raise ValueError(f"row {int(np.argmax(full))} of the condition knows every coordinate exactly; "
                         "leave at least one free (NaN) or observed with noise_std > 0")
    return m, v


def product(mean, var, m, v, extra=0.0):
    """N(mean, var) · N(m, v) renormalised, per coordinate, with the factor mean m uncertain by ``extra``.

    mean, var (N, D) the kernel; m, v broadcastable (v = 0 clamps, v = inf frees); extra: the variance of
    m itself, averaged out. -> (mean, var): w_μ mean + w_m m and w_μ var + w_m² extra (module docstring).
    """
    xp = backend.xp
    free = xp.isinf(v)
    v_finite = xp.where(free, 0.0, v)
    w_m = xp.where(free, 0.0, var / (var + v_finite))  # σ²/(σ² + v): the weight of the factor's mean
    w_mu = 1.0 - w_m  # v/(σ² + v)
    return w_mu * mean + w_m * xp.where(free, 0.0, m), w_mu * var + w_m * w_m * extra


class Conditioned:
    """A reverse process whose every step is multiplied by r_t (Eq. 22), for ``npdiff.processes.sampling.sample``.

    process: any reverse process (``EpsilonChain`` with any variance, ``SohlDicksteinChain``, an oracle).
    given / observed / noise_std: the factor r (``factor``), in the process's (model) coordinates.
    method: "paper", "replace" or a callable r_t (module docstring). Start the chain with ``x_T(n, rng)``, a
    draw of p̃(x_T) ∝ N(x_T; 0, I) r_T(x_T), or call ``sample``. Clamped coordinates have log_var = −inf
    (variance exactly 0). The ancestral sampler only: the chain has no ``predict``, so DDIM refuses it.
    """

    def __init__(self, process, given=None, observed=None, noise_std=None, method: str | Callable = "paper") -> None:
        if not callable(method) and method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        self.process, self.method = process, method
        self.schedule, self.data_dim, self.dtype = process.schedule, process.data_dim, process.dtype
        self.m, self.v = factor(self.data_dim, given, observed, noise_std)  # host float64 (R, D)
        self._on_backend: dict = {}  # (dtype, xp) -> (m, v) moved once, not at every step
        for name in ("predicts_eps", "clip_x0", "max_gain"):  # the sampler's error-gain check still applies
            if hasattr(process, name):
                setattr(self, name, getattr(process, name))

    def factor_at(self, t_prev, like):
        """(m_k, v_k, extra) of r_t for the step to x_{t_prev}, on the backend in ``like``'s dtype (R or N, D)."""
        if self.m.shape[0] not in (1, like.shape[0]):
            raise ValueError(f"this condition has {self.m.shape[0]} rows; sample {self.m.shape[0]} points, "
                             f"not {like.shape[0]}")
        if callable(self.method):
            return self.method(t_prev, like)
        key = (like.dtype, backend.xp)
        if key not in self._on_backend:
            self._on_backend[key] = (backend.asarray(self.m, like.dtype), backend.asarray(self.v, like.dtype))
        m, v = self._on_backend[key]
        if self.method == "paper":
            return m, v, 0.0
        ab = self.schedule.at("alpha_bar", t_prev, like)  # ᾱ_{t−1}: (N, 1), or 0-d for an int
        return ab ** 0.5 * m, ab * v, 1.0 - ab

    def kernel(self, x_t, t):
        """(mean, log_var), each (N, D), of p̃(x_{t−1}|x_t) ∝ p(x_{t−1}|x_t) r_t(x_{t−1}); x_t (N, D), t (N,)."""
        xp = backend.xp
        mean, log_var = self.process.kernel(x_t, t)
        m, v, extra = self.factor_at(backend.asarray(t) - 1, mean)
        mean, var = product(mean, xp.exp(log_var), m, v, extra)
        positive = var > 0
        return mean, xp.where(positive, xp.log(xp.where(positive, var, 1.0)), -xp.inf)

    def x_T(self, n: int, rng):
        """n draws (N, D) of p̃(x_T) ∝ N(x_T; 0, I) r_T(x_T), the start of the modified chain (Eq. 16)."""
        if self.m.shape[0] not in (1, n):
            raise ValueError(f"this condition has {len(self.m)} rows; sample {len(self.m)} points, not {n}")
        ones = backend.xp.ones((n, self.data_dim), dtype=self.dtype)
        m, v, extra = self.factor_at(self.schedule.T, ones)
        mean, var = product(0 * ones, ones, m, v, extra)
        return mean + var ** 0.5 * rng.standard_normal(mean.shape, dtype=mean.dtype)

    def sample(self, n: int, rng, **kwargs):
        """``sampling.sample(self, n, rng, x_T=self.x_T(n, rng), **kwargs)``: n conditional samples (N, D)."""
        return sampling.sample(self, n, rng, x_T=self.x_T(n, rng), **kwargs)


def gaussian_posterior(mean, cov, given=None, observed=None, noise_std=None) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form N(m, S) data conditioned on one row of a factor: (posterior mean (D,), covariance (D, D)).

    Known coordinates K: x_K = a, x_F | a ~ N(m_F', C_F) = N(m_F + S_FK S_KK⁻¹ (a − m_K), S_FF − S_FK S_KK⁻¹ S_KF);
    then observations y = x + N(0, s²) of the free block: covariance (C_F⁻¹ + diag(1/s²))⁻¹ = C, mean
    C (C_F⁻¹ m_F' + y/s²), with 1/s² = 0 for an unobserved coordinate.
    """
    mean, cov = np.asarray(mean, np.float64), np.asarray(cov, np.float64)
    m, v = factor(mean.size, given, observed, noise_std)
    if m.shape[0] != 1:
        raise ValueError("gaussian_posterior takes a condition of one row")
    m, v = m[0], v[0]
    k, f = v == 0, v != 0
    post_mean, post_cov = m.copy(), np.zeros_like(cov)
    gain = cov[np.ix_(f, k)] @ np.linalg.inv(cov[np.ix_(k, k)]) if k.any() else np.zeros((f.sum(), 0))
    mf = mean[f] + gain @ (m[k] - mean[k])  # x_F | x_K = a
    cf = cov[np.ix_(f, f)] - gain @ cov[np.ix_(k, f)]
    obs = np.isfinite(v[f])  # then the observations of the free block
    precision = np.linalg.inv(cf) + np.diag(np.where(obs, 1.0 / np.where(obs, v[f], 1.0), 0.0))
    cf_post = np.linalg.inv(precision)
    post_mean[f] = cf_post @ (np.linalg.solve(cf, mf) + np.where(obs, m[f] / np.where(obs, v[f], 1.0), 0.0))
    post_cov[np.ix_(f, f)] = cf_post
    return post_mean, post_cov


def exact_moments(process, mean_T=None, cov_T=None) -> tuple[np.ndarray, np.ndarray]:
    """(mean (D,), cov (D, D)) of x_0 from ancestral sampling, exactly, for a kernel affine in x_t with a
    variance independent of x_t (the Gaussian oracles, conditioned or not), started at N(mean_T, cov_T)
    (default N(0, I)). Each step: mean ← A mean + b, cov ← A cov Aᵀ + diag(σ²) (none at t = 1), where
    [b, A] come from the kernel at x_t = 0 and at the unit vectors. The process's condition must have one row.
    Raises ValueError if the kernel's variance changes with x_t (then the chain is not linear-Gaussian)."""
    d = process.data_dim
    mean = np.zeros(d) if mean_T is None else np.asarray(mean_T, np.float64)
    cov = np.eye(d) if cov_T is None else np.asarray(cov_T, np.float64)
    probes = np.concatenate([np.zeros((1, d)), np.eye(d)])  # (D+1, D)
    for t in process.schedule.reverse_t():
        mu, log_var = (backend.to_numpy(a).astype(np.float64)
                       for a in process.kernel(backend.asarray(probes, process.dtype), np.full(d + 1, t)))
        if not np.allclose(log_var, log_var[0], rtol=1e-9, atol=0):
            raise ValueError(f"the kernel's variance depends on x_t at t={t}; exact_moments needs a linear-Gaussian "
                             "chain")
        b, a = mu[0], (mu[1:] - mu[0]).T  # μ(x) = A x + b
        mean, cov = a @ mean + b, a @ cov @ a.T
        if t != 1:
            cov = cov + np.diag(np.exp(log_var[0]))
    return mean, cov


def read_condition(path, data_dim: int, what: str = "given") -> np.ndarray:
    """Rows (R, D) of a .npy or .csv condition file; NaN (``nan`` in a .csv) marks a free coordinate."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".npy", ".csv"):
        raise ValueError(f"{what} file {path!r}: expected a .npy or .csv file, got extension {ext!r}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such {what} file: {path!r}")
    x = data._read_npy(path) if ext == ".npy" else data._read_csv(path)
    if x.dtype.kind not in "biuf":
        raise ValueError(f"{what} file {path!r} does not hold real numbers (dtype {x.dtype})")
    if x.ndim not in (1, 2) or x.shape[-1] != data_dim or x.size == 0:
        raise ValueError(f"{what} file {path!r} holds shape {x.shape}; expected ({data_dim},) or (N, {data_dim})")
    return x.astype(np.float64).reshape(-1, data_dim)


def from_files(data_dim: int, given=None, observed=None, noise_std=None, mean=None, std=None) -> dict:
    """The command line's entry: read ``--given FILE`` / ``--observed FILE --noise-std S`` (data coordinates),
    check them, and return ``Conditioned``'s keyword arguments in model coordinates z = (x − mean)/std
    (noise_std / std). One-line ValueError (naming the file) for anything that cannot condition."""
    mean = np.zeros(data_dim) if mean is None else np.asarray(mean, np.float64)
    std = np.ones(data_dim) if std is None else np.asarray(std, np.float64)
    out = {}
    if given is not None:
        out["given"] = (read_condition(given, data_dim, "given") - mean) / std
    if observed is not None:
        out["observed"] = (read_condition(observed, data_dim, "observed") - mean) / std
    if noise_std is not None:
        if not (isinstance(noise_std, (int, float)) and noise_std >= 0 and not math.isnan(noise_std)):
            raise ValueError(f"--noise-std must be a number >= 0, got {noise_std!r}")
        out["noise_std"] = noise_std / std
    try:
        factor(data_dim, **out)
    except ValueError as err:
        raise ValueError(f"{given or observed}: {err}") from None
    return out
