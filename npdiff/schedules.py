"""Noise schedules β_1..β_T and every array derived from them, indexed by the paper's t.

Shapes: T number of diffusion steps; N batch; D data dimensions. The β functions below return the T
values β_1..β_T (length T). A ``Schedule`` stores every derived array with length T+1, indexed by the
paper's t, so ``alpha_bar[t]`` is ᾱ_t and entry 0 holds t = 0 (β_0 = 0, α_0 = 1, ᾱ_0 = 1).

Equations (Ho et al. 2020, "DDPM", Eqs. 2-7; Sohl-Dickstein et al. 2015, Sec. 2):
    q(x_t | x_{t-1}) = N(√α_t x_{t-1}, β_t I),          α_t = 1 − β_t
    q(x_t | x_0)     = N(√ᾱ_t x_0, (1 − ᾱ_t) I),        ᾱ_t = Π_{s≤t} α_s           (DDPM Eq. 4)
    q(x_{t-1} | x_t, x_0) = N(μ̃_t, β̃_t I)                                         (DDPM Eqs. 6-7)
        μ̃_t = √ᾱ_{t−1} β_t/(1−ᾱ_t) · x_0 + √α_t (1−ᾱ_{t−1})/(1−ᾱ_t) · x_t
        β̃_t = β_t (1−ᾱ_{t−1})/(1−ᾱ_t)
    SNR(t) = ᾱ_t / (1 − ᾱ_t)                                  (Kingma et al. 2021, VDM)

Schedules: ``linear`` (DDPM), ``cosine`` (Nichol & Dhariwal 2021, Eq. 17), ``sigmoid`` (GeoDiff /
DPM code), ``sohl_dickstein`` (β_t = 1/(T − t + 1), Sohl-Dickstein et al. 2015, App. D).

Every β is required to lie strictly inside (0, 1). The cosine schedule and ``sohl_dickstein`` reach
β_T = 0.999 (their cap): then √α_T ≈ 0.0316 and ᾱ_T ≈ 0, so the plain ancestral step
x_{T−1} = (x_T − β_T/√(1−ᾱ_T) ε_θ)/√α_T stays finite but multiplies the network's error by ~30; the
samplers handle that, not this module. All arrays are float64 NumPy on the host (they are small); use
``Schedule.at(name, t, like)`` to gather values at integer timesteps onto the backend in a given dtype.
"""

from __future__ import annotations

import math

import numpy as np

from npdiff import backend

ARRAY_NAMES = (
    "betas", "alphas", "alpha_bar", "alpha_bar_prev", "sqrt_alpha_bar", "sqrt_one_minus_alpha_bar",
    "sqrt_recip_alpha_bar", "sqrt_recipm1_alpha_bar", "posterior_var", "posterior_log_var_clipped",
    "posterior_mean_coef1", "posterior_mean_coef2", "snr",
)


def _check_T(T) -> int:
    if isinstance(T, bool) or not isinstance(T, (int, np.integer)) or T < 1:
        raise ValueError(f"T must be an integer >= 1; got {T!r}")
    return int(T)


def _check_range(beta_start: float, beta_end: float) -> None:
    if not beta_start <= beta_end:
        raise ValueError(f"beta_start must be <= beta_end; got beta_start={beta_start!r} > beta_end={beta_end!r}")


def _check_betas(betas: np.ndarray, what: str) -> np.ndarray:
    betas = np.asarray(betas, dtype=np.float64)
    if betas.ndim != 1 or betas.size < 1:
        raise ValueError(f"{what}: betas must be a non-empty 1-D sequence; got shape {betas.shape}")
    bad = np.flatnonzero(~((betas > 0.0) & (betas < 1.0)))  # also catches nan
    if bad.size:
        t = int(bad[0]) + 1
        raise ValueError(f"{what}: every beta must lie strictly in (0, 1); got beta_{t} = {float(betas[bad[0]])!r}")
    return betas


def linear(T: int, beta_start: float = 1e-4, beta_end: float = 0.02, scale_to_T: bool = False) -> np.ndarray:
    """β_1..β_T evenly spaced from ``beta_start`` to ``beta_end`` (Ho et al. 2020, Sec. 4). Shape (T,).

    ``scale_to_T=True`` multiplies both ends by 1000/T (improved-diffusion's ``get_named_beta_schedule``),
    so a short chain destroys about as much signal as DDPM's 1000 steps; it raises if β_end reaches 1.
    """
    T = _check_T(T)
    _check_range(beta_start, beta_end)
    scale = 1000.0 / T if scale_to_T else 1.0
    return _check_betas(np.linspace(scale * beta_start, scale * beta_end, T), f"linear(T={T}, scale_to_T={scale_to_T})")


def cosine(T: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """β_t = min(1 − ᾱ(t)/ᾱ(t−1), max_beta), ᾱ(t) = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s) · π/2).

    Nichol & Dhariwal 2021, Eq. 17. The cap makes β_T = 0.999 (for every T), so ᾱ_T ≈ 0 but > 0. Shape (T,).
    """
    T = _check_T(T)
    f = np.cos((np.arange(T + 1) / T + s) / (1.0 + s) * (math.pi / 2)) ** 2  # (T+1,); f(0) cancels in the ratio
    return _check_betas(np.minimum(1.0 - f[1:] / f[:-1], max_beta), f"cosine(T={T}, s={s})")


def sigmoid(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """β = sigmoid(linspace(−6, 6, T)) · (β_end − β_start) + β_start (GeoDiff / DPM-solver code). Shape (T,).

    Monotone increasing; the ends are β_start + 0.0025·Δ and β_end − 0.0025·Δ (sigmoid(±6)), not the
    exact endpoints. GeoDiff uses 1e-7..2e-3 at T = 5000; the defaults here match ``linear``.
    """
    T = _check_T(T)
    _check_range(beta_start, beta_end)
    ramp = 1.0 / (1.0 + np.exp(-np.linspace(-6.0, 6.0, T)))
    return _check_betas(ramp * (beta_end - beta_start) + beta_start, f"sigmoid(T={T})")


def sohl_dickstein(T: int, beta_max: float = 0.999, variant: str = "paper") -> np.ndarray:
    """Sohl-Dickstein et al. 2015's baseline β_t = 1/(T − t + 1), t = 1..T, capped at ``beta_max``. Shape (T,).

    Uncapped, this gives ᾱ_t = (T − t)/T, so β_T = 1 and ᾱ_T = 0 exactly: q(x_T) is N(0, I) for any
    data, but 1/√α_T, log β_T and the logit of β_T are infinite. β_T is therefore capped at
    ``beta_max`` (default 0.999, the cosine schedule's cap), which leaves ᾱ_T = (1 − beta_max)/T;
    only β_T is affected (every other β_t ≤ 1/2). ``variant="code"`` gives the baseline of the
    authors' released Theano code instead, β = 1/linspace(T, 2, T) (β_T = 1/2, ᾱ_T ≈ 1/T); that
    code also learns a perturbation of β and clamps it to [1e-6, 1 − 1e-5], which is not reproduced here.
    """
    T = _check_T(T)
    if not 0.0 < beta_max < 1.0:
        raise ValueError(f"beta_max must lie strictly in (0, 1); got {beta_max!r}")
    if variant == "paper":
        betas = 1.0 / (T - np.arange(1, T + 1) + 1.0)
    elif variant == "code":
        betas = 1.0 / np.linspace(T, 2.0, T)
    else:
        raise ValueError(f"unknown sohl_dickstein variant {variant!r}; choose 'paper' or 'code'")
    return _check_betas(np.minimum(betas, beta_max), f"sohl_dickstein(T={T}, variant={variant!r})")


def custom(T: int, betas) -> np.ndarray:
    """Given β_1..β_T (length T), checked to lie in (0, 1). Used by ``Schedule.from_betas``."""
    T = _check_T(T)
    betas = _check_betas(betas, "custom")
    if betas.size != T:
        raise ValueError(f"custom: got {betas.size} betas for T = {T}")
    return betas


SCHEDULES = {"linear": linear, "cosine": cosine, "sigmoid": sigmoid, "sohl_dickstein": sohl_dickstein,
             "custom": custom}


def make_betas(name: str, T: int, **kwargs) -> np.ndarray:
    """β_1..β_T (shape (T,)) of the named schedule; ``kwargs`` go to that schedule's function."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    return SCHEDULES[name](T, **kwargs)


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
        T = _check_T(T)
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

    @classmethod
    def from_betas(cls, betas) -> "Schedule":
        """A schedule from given β_1..β_T (length T, each in (0, 1)); its name is ``"custom"``."""
        betas = [float(b) for b in np.asarray(betas, dtype=np.float64).ravel()]  # plain floats: config is JSON-able
        return cls(len(betas), "custom", betas=betas)

    def at(self, name: str, t, like):
        """``getattr(self, name)[t]`` on the backend in ``like``'s dtype, shaped to broadcast against ``like``.

        t: int, or integer array (N,) of timesteps in 0..T (host or backend); like: an array (N, ...).
        Returns a 0-d array for an int t, else shape (N, 1, ..., 1) with ``like.ndim`` axes.
        """
        if name not in ARRAY_NAMES:
            raise ValueError(f"unknown schedule array {name!r}; choose one of {', '.join(ARRAY_NAMES)}")
        t_host = np.asarray(backend.to_numpy(t))
        if t_host.size and (t_host.min() < 0 or t_host.max() > self.T):
            raise ValueError(f"timesteps must lie in 0..{self.T}; got min {t_host.min()}, max {t_host.max()}")
        values = backend.xp.asarray(getattr(self, name)[t_host], dtype=like.dtype)
        if t_host.ndim == 0:
            return values
        return values.reshape(t_host.shape + (1,) * (like.ndim - t_host.ndim))

    def sample_t(self, n: int, rng, first: int = 1):
        """Training timesteps: n integers drawn uniformly from {first..T} (never 0) with ``rng``.  -> (N,)

        first = 1 for the ε objectives; the Sohl-Dickstein bound draws from {2..T}, t = 1 being fixed.
        """
        if not 1 <= first <= self.T:
            raise ValueError(f"first must lie in 1..T={self.T}, got {first}")
        return rng.integers(first, self.T + 1, size=int(n))

    def reverse_t(self, n_steps: int | None = None) -> list[int]:
        """Sampling timesteps, descending from T to 1 (the sampler adds no noise at the last one).

        n_steps=None gives all T steps; otherwise n_steps (1..T) evenly spaced distinct values from
        T down to 1 (DDIM's shortened chain; n_steps = 1 gives [T] alone).
        """
        if n_steps is None:
            n_steps = self.T
        if isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer)) or not 1 <= n_steps <= self.T:
            raise ValueError(f"n_steps must be an integer in 1..{self.T}; got {n_steps!r}")
        if n_steps == 1:
            return [self.T]
        return [int(t) for t in np.round(np.linspace(self.T, 1, n_steps)).astype(int)]  # spacing >= 1: distinct

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
