"""Exact reverse processes for Gaussian data: the references every sampler and bound is tested against.

Shape glossary: N batch, D data dims, T diffusion steps.

For data x_0 ~ N(m, S) every marginal of the forward process is Gaussian, q(x_t) = N(√ᾱ_t m, Σ_t) with
Σ_t = ᾱ_t S + (1 − ᾱ_t) I, so the ideal networks are known in closed form:

    E[ε | x_t] = √(1−ᾱ_t) Σ_t⁻¹ (x_t − √ᾱ_t m)                  the optimal ε-predictor (``GaussianEpsilon``)
    q(x_{t−1} | x_t) = N(√α_t v_{t−1}/v_t · x_t, v_{t−1} − α_t v_{t−1}²/v_t)
        for S = σ₀² I, m = 0, v_t = ᾱ_t σ₀² + 1 − ᾱ_t               the exact reverse kernel (``GaussianOracle``)

With σ₀² = 1 the exact kernel is N(√α_t x_t, β_t) and every bound equals the true log-likelihood,
−½ log(2πe) = −1.418939 nats per dimension (the oracle of docs/likelihood.md, "Tests").
"""

from __future__ import annotations

import numpy as np

from npdiff import backend
from npdiff.processes.schedules import Schedule


class GaussianEpsilon:
    """The exact ε-predictor for data N(m, S), with the model interface ``forward(x_t, t) -> (N, D)``.

    Wrap it in ``ddpm.EpsilonChain`` to sample it or to bound it: the samplers must reproduce N(m, S).
    """

    def __init__(self, schedule: Schedule, mean, cov, dtype: str = "float64") -> None:
        self.schedule = schedule
        self.mean = np.asarray(mean, dtype=np.float64)  # (D,)
        self.cov = np.asarray(cov, dtype=np.float64)  # (D, D)
        self.data_dim, self.dtype = self.mean.size, backend.xp.dtype(dtype)
        # every t's gain √(1−ᾱ_t) Σ_t⁻¹ and shift √ᾱ_t m, on the host, for t = 0..T: (T+1)·D² numbers,
        # gathered by t on the backend (the timesteps never leave the device)
        a = schedule.alpha_bar[:, None, None]  # (T+1, 1, 1)
        cov_t = a * self.cov + (1 - a) * np.eye(self.data_dim)  # Σ_t (T+1, D, D)
        self.gain = np.sqrt(1 - a) * np.linalg.inv(cov_t)  # (T+1, D, D)
        self.shift = np.sqrt(a[:, :, 0]) * self.mean  # (T+1, D)
        self._tables: dict = {}

    def _table(self, name: str, dtype):
        key = (name, np.dtype(dtype), backend.xp)
        if key not in self._tables:
            self._tables[key] = backend.asarray(getattr(self, name), dtype=dtype)
        return self._tables[key]

    def forward(self, x_t, t):
        t = self.schedule.as_timesteps(t)
        gain = self._table("gain", x_t.dtype)[t]  # (N, D, D)
        centred = x_t - self._table("shift", x_t.dtype)[t]  # (N, D)
        return backend.xp.einsum("nij,nj->ni", gain, centred)


class GaussianOracle:
    """The exact reverse kernel q(x_{t−1}|x_t) of data N(0, σ₀² I), σ₀² = ``data_var``, a reverse process."""

    def __init__(self, schedule: Schedule, data_var: float = 1.0, data_dim: int = 1, dtype: str = "float64") -> None:
        self.schedule, self.data_dim, self.dtype = schedule, int(data_dim), backend.xp.dtype(dtype)
        v = schedule.alpha_bar * data_var + 1.0 - schedule.alpha_bar  # (T+1,), v_0 = σ₀²
        v_prev = np.concatenate([[data_var], v[:-1]])
        self.coef = np.sqrt(schedule.alphas) * v_prev / v
        var = v_prev[1:] - schedule.alphas[1:] * v_prev[1:] ** 2 / v[1:]  # t = 1..T (t = 0 would be 0)
        self.log_var = np.log(np.concatenate([var[:1], var]))
        self._tables: dict = {}

    def kernel(self, x_t, t):
        t = self.schedule.as_timesteps(t)
        key = (np.dtype(x_t.dtype), backend.xp)
        if key not in self._tables:  # coef and log σ² for t = 0..T, on the backend in x_t's dtype
            self._tables[key] = (backend.asarray(self.coef, x_t.dtype), backend.asarray(self.log_var, x_t.dtype))
        coef, log_var = self._tables[key]
        return coef[t][:, None] * x_t, backend.xp.broadcast_to(log_var[t][:, None], x_t.shape)


# Continuous-time oracles (``npdiff.processes.ode``, ``npdiff.processes.flow``): for data N(m, S), S = Q Λ Qᵀ,
# and y = x_0 + σ ε, every quantity of the probability-flow ODE is a matrix function of S:
#     p_σ(y) = N(m, S + σ² I)                                              the marginal at noise level σ
#     D*(y, σ) = E[x_0 | y] = m + S (S + σ² I)⁻¹ (y − m)                    the exact denoiser
#     y(σ') = m + (S + σ'² I)^½ (S + σ² I)^−½ (y(σ) − m)                   the ODE's exact solution
# and on the flow path x_t = (1 − t) x_0 + t ε, with C_t = (1 − t)² S + t² I:
#     v*(x, t) = E[ε − x_0 | x_t = x] = (t I − (1 − t) S) C_t⁻¹ (x − (1 − t) m) − m      the exact velocity


class _GaussianSpectrum:
    """Data N(m, S) by its eigendecomposition; ``matrix(g)`` is Q diag(g(λ)) Qᵀ."""

    def __init__(self, mean, cov, dtype: str = "float64") -> None:
        self.mean = np.asarray(mean, dtype=np.float64)  # (D,)
        self.cov = np.asarray(cov, dtype=np.float64)  # (D, D)
        self.eigvals, self.eigvecs = np.linalg.eigh(self.cov)  # Λ (D,), Q (D, D)
        self.data_dim, self.dtype = self.mean.size, backend.xp.dtype(dtype)

    def matrix(self, g, like):
        """Q diag(g) Qᵀ (D, D), symmetric, on like's backend in its dtype."""
        return backend.asarray((self.eigvecs * g) @ self.eigvecs.T, dtype=like.dtype)


class GaussianDenoiser(_GaussianSpectrum):
    """The exact denoiser D*(y, σ) of data N(m, S) at every continuous σ ≥ 0, with its vector–Jacobian product,
    the marginal density p_σ and the ODE's exact solution (the block comment above)."""

    def round_sigma(self, sigma: float) -> float:
        return float(sigma)  # every σ is a level of the exact denoiser

    def __call__(self, y, sigma: float):
        """m + (y − m) S (S + σ² I)⁻¹.  y (N, D) -> (N, D)"""
        m = backend.asarray(self.mean, dtype=y.dtype)
        return m + (y - m) @ self.matrix(self.eigvals / (self.eigvals + sigma * sigma), y)

    def vjp(self, y, sigma: float, u):
        """uᵀ ∂D*/∂y = u S (S + σ² I)⁻¹ (the Jacobian is symmetric).  u (N, D) -> (N, D)"""
        return u @ self.matrix(self.eigvals / (self.eigvals + sigma * sigma), u)

    def marginal_cov(self, sigma: float) -> np.ndarray:
        """S + σ² I (D, D), the covariance of y at noise level σ."""
        return self.cov + sigma * sigma * np.eye(self.data_dim)

    def log_marginal(self, y, sigma: float):
        """log N(y; m, S + σ² I) per row, nats.  y (N, D) -> (N,)"""
        var = self.eigvals + sigma * sigma  # (D,)
        z = backend.to_numpy(y - backend.asarray(self.mean, dtype=y.dtype)) @ self.eigvecs  # Qᵀ(y − m) per row
        return -0.5 * ((z * z / var).sum(axis=1) + np.log(var).sum() + self.data_dim * np.log(2 * np.pi))

    def transport(self, y, sigma: float, sigma_to: float):
        """The ODE's exact solution: y at σ carried to σ_to.  y (N, D) -> (N, D)"""
        m = backend.asarray(self.mean, dtype=y.dtype)
        ratio = np.sqrt((self.eigvals + sigma_to ** 2) / (self.eigvals + sigma ** 2))
        return m + (y - m) @ self.matrix(ratio, y)


class GaussianVelocity(_GaussianSpectrum):
    """The exact flow-matching velocity v*(x, t) of data N(m, S) on x_t = (1 − t) x_0 + t ε, every t in [0, 1]."""

    def round_t(self, t: float) -> float:
        return float(t)  # every t is a time of the exact velocity

    def __call__(self, x, t: float):
        """(x − (1−t) m) (t I − (1−t) S) C_t⁻¹ − m.  x (N, D) -> (N, D)"""
        m = backend.asarray(self.mean, dtype=x.dtype)
        lam = self.eigvals
        gain = (t - (1 - t) * lam) / ((1 - t) ** 2 * lam + t * t)  # the eigenvalues of (tI − (1−t)S) C_t⁻¹
        return (x - (1 - t) * m) @ self.matrix(gain, x) - m

    def vjp(self, x, t: float, u):
        """uᵀ ∂v*/∂x (the Jacobian is symmetric).  u (N, D) -> (N, D)"""
        lam = self.eigvals
        return u @ self.matrix((t - (1 - t) * lam) / ((1 - t) ** 2 * lam + t * t), u)
