"""The forward process q, owned in one place: a β schedule, every array derived from it, and the timesteps.

Shapes: T number of diffusion steps; N batch; D data dimensions. A ``Schedule`` stores every derived
array with length T+1, indexed by the paper's t, so ``alpha_bar[t]`` is ᾱ_t and entry 0 holds t = 0
(β_0 = 0, α_0 = 1, ᾱ_0 = 1). The β values themselves come from ``npdiff.processes.betas``.

Equations (Ho et al. 2020, "DDPM", Eqs. 2-7; Sohl-Dickstein et al. 2015, Sec. 2):
    q(x_t | x_{t-1}) = N(√α_t x_{t-1}, β_t I),          α_t = 1 − β_t
    q(x_t | x_0)     = N(√ᾱ_t x_0, (1 − ᾱ_t) I),        ᾱ_t = Π_{s≤t} α_s           (DDPM Eq. 4)
    q(x_{t-1} | x_t, x_0) = N(μ̃_t, β̃_t I)                                         (DDPM Eqs. 6-7)
        μ̃_t = √ᾱ_{t−1} β_t/(1−ᾱ_t) · x_0 + √α_t (1−ᾱ_{t−1})/(1−ᾱ_t) · x_t
        β̃_t = β_t (1−ᾱ_{t−1})/(1−ᾱ_t)
    x̂_0(x_t, ε) = x_t/√ᾱ_t − √(1/ᾱ_t − 1) ε                                      (Eq. 4 solved for x_0)
    v = √ᾱ_t ε − √(1−ᾱ_t) x_0;  ε = √(1−ᾱ_t) x_t + √ᾱ_t v;  x_0 = √ᾱ_t x_t − √(1−ᾱ_t) v  (Salimans & Ho 2022)
    SNR(t) = ᾱ_t / (1 − ᾱ_t)                                  (Kingma et al. 2021, VDM)

The timesteps live here too: training draws t ∈ {1..T} (``sample_t``; the Sohl-Dickstein bound draws
{2..T}), sampling runs t = T..1 (``reverse_t``) and adds no noise at the last step, and t = 1 is the
decoder step p(x_0|x_1) of every bound (``is_decoder``). Every objective, sampler and bound asks the
schedule for these instead of re-deriving them.

All arrays are float64 NumPy on the host (they are small); ``Schedule.at(name, t, like)`` gathers values
at integer timesteps onto the backend in a given dtype, from a copy of the array kept on the backend, so
timesteps that live on the device (``sample_t`` with CuPy's generator, the sampler's rows) are never read
back to the host. Timesteps given from the host are range-checked there; CuPy does not check an index
array against the bounds (it wraps around), so device timesteps are trusted: they are made on the
device from checked values.
"""

from __future__ import annotations

import math

import numpy as np

from npdiff import backend
from npdiff.processes.betas import SCHEDULES, check_T, make_betas

ARRAY_NAMES = (
    "betas", "alphas", "alpha_bar", "alpha_bar_prev", "sqrt_alpha_bar", "sqrt_one_minus_alpha_bar",
    "sqrt_recip_alpha_bar", "sqrt_recipm1_alpha_bar", "posterior_var", "posterior_log_var_clipped",
    "posterior_mean_coef1", "posterior_mean_coef2", "snr",
)
DECODER_T = 1  # the step whose reverse kernel is the decoder p(x_0|x_1)

__all__ = ["ARRAY_NAMES", "DECODER_T", "SCHEDULES", "Schedule", "expected_prior_kl", "is_host", "prior_kl"]


def is_host(t) -> bool:
    """True for timesteps on the host (a Python or NumPy integer, a NumPy array, a list), False on the device."""
    return isinstance(t, (int, np.integer, np.ndarray, list, tuple))


def _check_kl_args(alpha_bar_T: float, data_var: float) -> None:
    if not 0.0 <= alpha_bar_T < 1.0:
        raise ValueError(f"alpha_bar_T must lie in [0, 1); got {alpha_bar_T!r}")
    if not data_var >= 0.0:
        raise ValueError(f"data_var must be >= 0; got {data_var!r}")


def prior_kl(alpha_bar_T: float, data_var: float = 1.0) -> float:
    """KL(q(x_T) ‖ N(0, 1)) per dimension, in nats, for zero-mean data of per-dimension variance s².

    The marginal q(x_T) is N(0, v_T), v_T = ᾱ_T s² + 1 − ᾱ_T, so KL = ½(v_T − 1 − log v_T): zero when
    ᾱ_T = 0 or s² = 1. It says how far the chain's end is from the prior; the bound's term L_T is the
    larger ``expected_prior_kl``.
    """
    _check_kl_args(alpha_bar_T, data_var)
    v_T = alpha_bar_T * data_var + 1.0 - alpha_bar_T
    return float(0.5 * (v_T - 1.0 - math.log(v_T)))


def expected_prior_kl(alpha_bar_T: float, data_var: float = 1.0) -> float:
    """L_T = E_{x_0} KL(q(x_T|x_0) ‖ N(0, 1)) per dimension, in nats (DDPM Eq. 5), for zero-mean data.

    q(x_T|x_0) = N(√ᾱ_T x_0, 1 − ᾱ_T) and E[x_0²] = s², so L_T = ½(ᾱ_T s² − ᾱ_T − log(1 − ᾱ_T)) ≥ prior_kl.
    """
    _check_kl_args(alpha_bar_T, data_var)
    return float(0.5 * (alpha_bar_T * data_var - alpha_bar_T - math.log1p(-alpha_bar_T)))


class Schedule:
    """A β schedule and its derived arrays, each float64 of shape (T+1,) indexed by the paper's t.

    Arrays (entry 0 is t = 0; its value is stated where the formula is 0/0):
        betas β_t (β_0 = 0), alphas α_t = 1 − β_t, alpha_bar ᾱ_t (ᾱ_0 = 1), alpha_bar_prev ᾱ_{t−1} (entry 0: 1),
        sqrt_alpha_bar √ᾱ_t, sqrt_one_minus_alpha_bar √(1−ᾱ_t), sqrt_recip_alpha_bar 1/√ᾱ_t,
        sqrt_recipm1_alpha_bar √(1/ᾱ_t − 1)   (x̂_0 = sqrt_recip·x_t − sqrt_recipm1·ε),
        posterior_var β̃_t (β̃_0 = β̃_1 = 0),
        posterior_log_var_clipped log β̃_t with t = 1 (and t = 0) set to log β̃_2, as in Ho et al.'s code
            (log β_1 when T = 1, where no β̃_2 exists); always finite,
        posterior_mean_coef1 √ᾱ_{t−1} β_t/(1−ᾱ_t), posterior_mean_coef2 √α_t (1−ᾱ_{t−1})/(1−ᾱ_t)
            (t = 0 set to 1 and 0, the t = 1 values: μ̃_1 = x_0),
        snr ᾱ_t/(1−ᾱ_t); snr[0] = inf deliberately (x_0 is noise-free). Every other entry is finite.

    Build with ``Schedule(T, name="linear", **kwargs)`` or ``Schedule.from_betas(betas)``; ``config``
    rebuilds it: ``Schedule(**schedule.config)``.
    """

    def __init__(self, T: int, name: str = "linear", **kwargs):
        T = check_T(T)
        betas = make_betas(name, T, **kwargs)  # (T,) = β_1..β_T
        self.T, self.name = T, name
        self.config = {"T": T, "name": name, **kwargs}

        self.betas = np.concatenate([[0.0], betas])                        # (T+1,)
        self.alphas = 1.0 - self.betas
        self.alpha_bar = np.cumprod(self.alphas)                           # ᾱ_0 = 1
        self.alpha_bar_prev = np.concatenate([[1.0], self.alpha_bar[:-1]])
        one_minus = 1.0 - self.alpha_bar                                   # > 0 for t >= 1 since β_1 > 0
        self.sqrt_alpha_bar = np.sqrt(self.alpha_bar)
        self.sqrt_one_minus_alpha_bar = np.sqrt(one_minus)
        self.sqrt_recip_alpha_bar = 1.0 / self.sqrt_alpha_bar
        self.sqrt_recipm1_alpha_bar = np.sqrt(1.0 / self.alpha_bar - 1.0)

        # the t = 0 entries are 0/0 by formula; fill them with the t = 1 values (see class docstring)
        den = np.concatenate([[1.0], one_minus[1:]])
        self.posterior_var = self.betas * (1.0 - self.alpha_bar_prev) / den
        self.posterior_mean_coef1 = np.sqrt(self.alpha_bar_prev) * self.betas / den
        self.posterior_mean_coef1[0] = 1.0
        self.posterior_mean_coef2 = np.sqrt(self.alphas) * (1.0 - self.alpha_bar_prev) / den
        floor = self.posterior_var[2] if T >= 2 else self.betas[1]
        self.posterior_log_var_clipped = np.log(np.concatenate([[floor, floor], self.posterior_var[2:]]))
        self.snr = np.concatenate([[np.inf], self.alpha_bar[1:] / one_minus[1:]])
        self._tables: dict = {}  # (name, dtype, xp) -> the array on that backend in that dtype

    @classmethod
    def from_betas(cls, betas) -> "Schedule":
        """A schedule from given β_1..β_T (length T, each in (0, 1)); its name is ``"custom"``."""
        betas = [float(b) for b in np.asarray(betas, dtype=np.float64).ravel()]  # plain floats: config is JSON-able
        return cls(len(betas), "custom", betas=betas)

    def at(self, name: str, t, like):
        """``getattr(self, name)[t]`` in ``like``'s dtype and array module (the backend's, or NumPy for a host
        array), shaped to broadcast against ``like``.

        t: int, or integer array (N,) of timesteps in 0..T (host or backend); like: an array (N, ...).
        Returns a 0-d array for an int t, else shape (N, 1, ..., 1) with ``like.ndim`` axes.
        """
        if name not in ARRAY_NAMES:
            raise ValueError(f"unknown schedule array {name!r}; choose one of {', '.join(ARRAY_NAMES)}")
        xp = np if isinstance(like, np.ndarray) else backend.xp  # where ``like`` lives: host data stay on the host
        key = (name, np.dtype(like.dtype), xp)
        table = self._tables.get(key)
        if table is None:
            table = self._tables[key] = xp.asarray(getattr(self, name), dtype=like.dtype)  # (T+1,)
        if is_host(t):
            t = self.check_timesteps(t)
            if t.ndim == 0:
                return table[int(t), ...]  # 0-d
            t = xp.asarray(t)
        values = table[t]  # a gather on the backend
        return values.reshape(t.shape + (1,) * (like.ndim - t.ndim))

    def as_timesteps(self, t):
        """t on the backend: host timesteps (an int array, a list) are range-checked here, then moved;
        device timesteps are returned as they are (see the module docstring).  -> (N,) integers"""
        return backend.asarray(self.check_timesteps(t)) if is_host(t) else t

    def check_timesteps(self, t) -> np.ndarray:
        """Host timesteps (an int or an integer array) as a NumPy array, or ValueError unless all lie in 0..T."""
        t = np.asarray(t)
        if t.dtype.kind not in "iu" and t.size:
            raise ValueError(f"timesteps must be integers, got dtype {t.dtype}")
        # both ends in one pass (this runs at every gather of host timesteps): cast to unsigned, a negative
        # t wraps around to a number far above any T
        if t.size and t.astype(np.uint64).max() > self.T:
            raise ValueError(f"timesteps must lie in 0..{self.T}; got min {t.min()}, max {t.max()}")
        return t

    # the forward process q and its posterior (module docstring), for x0, x_t, noise (N, D) and t (N,)

    def q_sample(self, x0, t, noise):
        """x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε, a draw of q(x_t|x_0) (DDPM Eq. 4).  -> (N, D)"""
        return self.at("sqrt_alpha_bar", t, x0) * x0 + self.at("sqrt_one_minus_alpha_bar", t, x0) * noise

    def q_posterior(self, x0, x_t, t):
        """(μ̃_t (N, D), log β̃_t (N, 1)) of q(x_{t−1}|x_t, x_0) (DDPM Eqs. 6-7).

        The log-variance is ``posterior_log_var_clipped``: log β̃_t for t ≥ 2; at the decoder step t = 1,
        where β̃_1 = 0, it is log β̃_2 (the bounds use the decoder's likelihood there, not this KL).
        """
        mean = self.at("posterior_mean_coef1", t, x0) * x0 + self.at("posterior_mean_coef2", t, x_t) * x_t
        return mean, self.at("posterior_log_var_clipped", t, x0)

    def predict_x0(self, x_t, t, eps):
        """x̂_0 = x_t/√ᾱ_t − √(1/ᾱ_t − 1) ε, the x_0 that q_sample would map to x_t with noise ε.  -> (N, D)"""
        return self.at("sqrt_recip_alpha_bar", t, x_t) * x_t - self.at("sqrt_recipm1_alpha_bar", t, x_t) * eps

    def eps_from_x0(self, x_t, t, x0):
        """ε = (x_t − √ᾱ_t x_0)/√(1−ᾱ_t), the noise that q_sample would need to map x_0 to x_t.  -> (N, D)"""
        return (x_t - self.at("sqrt_alpha_bar", t, x_t) * x0) / self.at("sqrt_one_minus_alpha_bar", t, x_t)

    # the v-parameterisation (Salimans & Ho 2022, Sec. 4): v = √ᾱ_t ε − √(1−ᾱ_t) x_0, with x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε

    def v_target(self, x0, t, noise):
        """v = √ᾱ_t ε − √(1−ᾱ_t) x_0, the velocity a v-prediction network learns.  -> (N, D)"""
        return self.at("sqrt_alpha_bar", t, x0) * noise - self.at("sqrt_one_minus_alpha_bar", t, x0) * x0

    def eps_from_v(self, x_t, t, v):
        """ε = √(1−ᾱ_t) x_t + √ᾱ_t v (the rotation that inverts v_target).  -> (N, D)"""
        return self.at("sqrt_one_minus_alpha_bar", t, x_t) * x_t + self.at("sqrt_alpha_bar", t, x_t) * v

    def x0_from_v(self, x_t, t, v):
        """x̂_0 = √ᾱ_t x_t − √(1−ᾱ_t) v.  -> (N, D)"""
        return self.at("sqrt_alpha_bar", t, x_t) * x_t - self.at("sqrt_one_minus_alpha_bar", t, x_t) * v

    # the timesteps

    def sample_t(self, n: int, rng, first: int = 1):
        """Training timesteps: n integers drawn uniformly from {first..T} (never 0) with ``rng``.  -> (N,)

        first = 1 for the ε objectives; the Sohl-Dickstein bound draws from {2..T}, t = 1 being fixed.
        """
        self._check_first(first)
        return rng.integers(first, self.T + 1, size=int(n))

    def timesteps(self, first: int = 1) -> np.ndarray:
        """Every timestep first, first + 1, …, T (host int64), the terms of an exact bound.  -> (T − first + 1,)"""
        self._check_first(first)
        return np.arange(first, self.T + 1)

    def _check_first(self, first: int) -> None:
        if not 1 <= first <= self.T:
            raise ValueError(f"first must lie in 1..T={self.T}, got {first}")

    def reverse_t(self, ddim_steps: int | None = None) -> list[int]:
        """Sampling timesteps, descending from T to 1 (the sampler adds no noise at the last one).

        ddim_steps=None gives all T steps; otherwise ddim_steps (1..T) evenly spaced distinct values from
        T down to 1 (DDIM's shortened chain; ddim_steps = 1 gives [T] alone).
        """
        n = self.T if ddim_steps is None else ddim_steps
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= self.T:
            raise ValueError(f"ddim_steps must be an integer in 1..{self.T}; got {ddim_steps!r}")
        if n == 1:
            return [self.T]
        return [int(t) for t in np.round(np.linspace(self.T, 1, n)).astype(int)]  # spacing >= 1: distinct

    @staticmethod
    def is_decoder(t):
        """(N, 1) booleans on the backend: which rows are at the decoder step t = 1.  t: (N,) integers."""
        return (backend.asarray(t) == DECODER_T)[:, None]

    def prior_kl(self, data_var: float = 1.0) -> float:
        """``prior_kl(ᾱ_T, data_var)``: KL(q(x_T) ‖ N(0, 1)) per dimension in nats."""
        return prior_kl(self.alpha_bar[-1], data_var)

    def expected_prior_kl(self, data_var: float = 1.0) -> float:
        """``expected_prior_kl(ᾱ_T, data_var)``: the bound's L_T per dimension in nats."""
        return expected_prior_kl(self.alpha_bar[-1], data_var)

    def summary(self, data_var: float = 1.0) -> str:
        """One line: name, T, ᾱ_T, the prior KL and L_T in nats per dimension (for data variance s²)."""
        return (f"schedule {self.name} T={self.T}: alpha_bar_T={self.alpha_bar[-1]:.3e}, "
                f"prior KL={self.prior_kl(data_var):.3e} nats/dim, "
                f"L_T={self.expected_prior_kl(data_var):.3e} nats/dim (data variance {data_var:g})")

    def __repr__(self) -> str:
        kwargs = "".join(f", {k}={v!r}" for k, v in self.config.items() if k not in ("T", "name", "betas"))
        return f"Schedule(T={self.T}, name={self.name!r}{kwargs})"
