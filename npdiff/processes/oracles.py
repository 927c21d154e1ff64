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
