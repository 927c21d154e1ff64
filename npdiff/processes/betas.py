"""β schedules: the T values β_1..β_T of each named noise schedule, checked to lie strictly in (0, 1).

Shape glossary: T number of diffusion steps. Every function returns a float64 NumPy array of shape (T,)
holding β_1..β_T; ``npdiff.processes.schedules.Schedule`` turns it into the forward process, indexed by the paper's t.

Schedules: ``linear`` (Ho et al. 2020, Sec. 4), ``cosine`` (Nichol & Dhariwal 2021, Eq. 17), ``sigmoid``
(GeoDiff / DPM code), ``sohl_dickstein`` (β_t = 1/(T − t + 1), Sohl-Dickstein et al. 2015, App. D) and
``custom`` (given values).

Every β is required to lie strictly inside (0, 1). The cosine schedule and ``sohl_dickstein`` reach
β_T = 0.999 (their cap): then √α_T ≈ 0.0316 and ᾱ_T ≈ 0, so the plain ancestral step
x_{T−1} = (x_T − β_T/√(1−ᾱ_T) ε_θ)/√α_T stays finite but multiplies the network's error by ~30; the
sampler handles that (``npdiff.processes.sampling``), not this module.
"""

from __future__ import annotations

import math

import numpy as np


def check_T(T) -> int:
    """T as an int, or a ValueError unless it is an integer >= 1."""
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
    T = check_T(T)
    _check_range(beta_start, beta_end)
    scale = 1000.0 / T if scale_to_T else 1.0
    return _check_betas(np.linspace(scale * beta_start, scale * beta_end, T), f"linear(T={T}, scale_to_T={scale_to_T})")


def cosine(T: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """β_t = min(1 − ᾱ(t)/ᾱ(t−1), max_beta), ᾱ(t) = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s) · π/2).

    Nichol & Dhariwal 2021, Eq. 17. The cap makes β_T = 0.999 (for every T), so ᾱ_T ≈ 0 but > 0. Shape (T,).
    """
    T = check_T(T)
    f = np.cos((np.arange(T + 1) / T + s) / (1.0 + s) * (math.pi / 2)) ** 2  # (T+1,); f(0) cancels in the ratio
    return _check_betas(np.minimum(1.0 - f[1:] / f[:-1], max_beta), f"cosine(T={T}, s={s})")


def sigmoid(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """β = sigmoid(linspace(−6, 6, T)) · (β_end − β_start) + β_start (GeoDiff / DPM-solver code). Shape (T,).

    Monotone increasing; the ends are β_start + 0.0025·Δ and β_end − 0.0025·Δ (sigmoid(±6)), not the
    exact endpoints. GeoDiff uses 1e-7..2e-3 at T = 5000; the defaults here match ``linear``.
    """
    T = check_T(T)
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
    T = check_T(T)
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
    T = check_T(T)
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
