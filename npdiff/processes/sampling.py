"""One sampler for every reverse process: ancestral sampling through its Gaussian kernel, and DDIM.

Shape glossary: N samples, D data dims, T diffusion steps, K recorded states of a chain.

A *reverse process* (a chain) is any object with ``schedule``, ``data_dim``, ``dtype`` and
``kernel(x_t, t) -> (mean, log_var)``, both (N, D): the Gaussian p(x_{t−1}|x_t) for t = 1..T. The
ε-model chain (``ddpm.EpsilonChain``, any variance), the Sohl-Dickstein chain
(``sohl_dickstein.SohlDicksteinChain``) and the oracles (``npdiff.processes.oracles``) are reverse processes.

    ancestral: x_T ~ N(0, I);  x_{t−1} = μ_θ(x_t, t) + σ_θ(x_t, t) z,  z ~ N(0, I), for t = T..1,
               and no noise at the last step: x_0 = μ_θ(x_1, 1)                   (DDPM Algorithm 2)
    DDIM, t → s < t (ε-model chains only, they have ``predict``):
               x_s = √ᾱ_s x̂_0 + √(1 − ᾱ_s − σ²) ε_θ + σ z,
               σ = η √((1−ᾱ_s)/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_s)                    (Song et al. 2021, Eqs. 12, 16)

Error gain. An error δ in ε_θ moves x_{t−1} by g_t·δ with g_t = β_t/(√α_t √(1−ᾱ_t)) (ancestral).
The cosine schedule caps β_T at 0.999, so g_T = 31.6: a plain step at t = T turns a network error of 0.1
into 3 units of data. Sampling an ε-model chain therefore refuses to run unclipped when the largest gain
of its steps exceeds the chain's ``max_gain`` (default 10): give the chain ``clip_x0=(lo, hi)`` (the data
range) — the step's error then stays below c1_t·(hi − lo) — or ``max_gain=None`` to run the plain formula.
"""

from __future__ import annotations

import math

import numpy as np

from npdiff import backend
from npdiff.processes.schedules import DECODER_T

SAMPLERS = ("ancestral", "ddim")


def ancestral_gain(schedule, t: int) -> float:
    """g_t = β_t/(√α_t √(1−ᾱ_t)): how much the ancestral step at t amplifies an error of ε_θ."""
    return float(schedule.betas[t] / (math.sqrt(schedule.alphas[t]) * schedule.sqrt_one_minus_alpha_bar[t]))


def ddim_sigma(schedule, t: int, t_prev: int, eta: float) -> float:
    """σ of the DDIM step t → t_prev: η √((1−ᾱ_s)/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_s), s = t_prev (Song et al., Eq. 16)."""
    ab_t, ab_s = schedule.alpha_bar[t], schedule.alpha_bar[t_prev]
    return float(eta * math.sqrt((1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s)))


def ddim_noise_coef(schedule, t_prev: int, sigma: float) -> float:
    """√(1 − ᾱ_s − σ²), the weight of ε_θ in x_s; ≥ 0 for η ≤ 1 (0 at s = 0), max(·, 0) absorbs rounding."""
    return math.sqrt(max(1.0 - schedule.alpha_bar[t_prev] - sigma * sigma, 0.0))


def ddim_gain(schedule, t: int, t_prev: int, eta: float = 0.0) -> float:
    """|√(1−ᾱ_s−σ²) − √ᾱ_s √(1/ᾱ_t − 1)|: how much the DDIM step t → s amplifies an error of ε_θ."""
    sigma = ddim_sigma(schedule, t, t_prev, eta)
    return abs(ddim_noise_coef(schedule, t_prev, sigma)
               - math.sqrt(schedule.alpha_bar[t_prev]) * schedule.sqrt_recipm1_alpha_bar[t])


def check_gain(process, gains: dict) -> None:
    """Refuse an unclipped ε-model chain whose largest per-step error gain exceeds its ``max_gain``."""
    if not getattr(process, "predicts_eps", False) or process.clip_x0 is not None or process.max_gain is None:
        return
    t, g = max(gains.items(), key=lambda kv: kv[1])
    if g > process.max_gain:
        raise ValueError(
            f"{process.schedule!r}: the sampling step at t={t} multiplies the error of eps_theta by {g:.1f} "
            f"(beta_t={process.schedule.betas[t]:.4g}, max_gain={process.max_gain}); give the chain "
            "clip_x0=(lo, hi), the data range, to predict x0 and clip it, or max_gain=None to run unclipped")


def _start(process, n, rng, x_T):
    if x_T is None:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"the number of samples must be an integer >= 1, got {n!r}")
        return rng.standard_normal((int(n), process.data_dim), dtype=process.dtype)
    x_T = backend.asarray(x_T, dtype=process.dtype)
    if x_T.ndim != 2 or x_T.shape[1] != process.data_dim:
        raise ValueError(f"x_T must have shape (N, {process.data_dim}), got {tuple(x_T.shape)}")
    return x_T


def _check_finite(finite: list, ts: list) -> None:
    """Stop on the first step whose result held a NaN or inf. finite: one device boolean per step, read back
    here all at once (one transfer per chain, not one per step); ts: the step each was taken from."""
    if not finite:
        return
    ok = backend.to_numpy(backend.xp.stack(finite))
    if not ok.all():
        raise FloatingPointError(f"sampling produced non-finite values at t={ts[int(np.argmin(ok))]}")


def sample(process, n: int, rng, *, sampler: str = "ancestral", ddim_steps: int | None = None, eta: float = 0.0,
           x_T=None, record: bool = False):
    """Draw n samples x_0 (N, D) from a reverse process, on the backend in the process's dtype.

    sampler: "ancestral" (every chain; all T steps) or "ddim" (ε-model chains; ``ddim_steps`` of them,
    η = ``eta``: 0 is deterministic, 1 with all T steps is the ancestral sampler with σ_t² = β̃_t).
    x_T: a given start (N, D) instead of a draw (then n is ignored). With ``record=True`` returns
    (x_0, ts, xs): ts (K,) the visited timesteps T..0 and xs (K, N, D) host arrays, xs[k] the state at ts[k].
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if sampler == "ancestral" and (ddim_steps is not None or eta != 0.0):
        raise ValueError("ddim_steps and eta belong to the DDIM sampler; pass sampler='ddim'")
    schedule = process.schedule
    if sampler == "ddim":
        if not hasattr(process, "predict"):
            raise ValueError(f"DDIM needs an ε-prediction chain; {type(process).__name__} has only a kernel, "
                             "use sampler='ancestral'")
        if not 0 <= eta <= 1:
            raise ValueError(f"eta must lie in [0, 1], got {eta}")
    ts = schedule.reverse_t(ddim_steps if sampler == "ddim" else None)
    pairs = list(zip(ts, ts[1:] + [0]))  # (t, t_prev): the step from x_t to x_{t_prev}
    check_gain(process, {t: ancestral_gain(schedule, t) if sampler == "ancestral"
                         else ddim_gain(schedule, t, t_prev, eta) for t, t_prev in pairs})
    x = _start(process, n, rng, x_T)
    xs = [backend.to_numpy(x).copy()] if record else None  # recording is an explicit host copy per step
    finite = []  # is x finite after each step: device booleans, checked once at the end
    for t, t_prev in pairs:
        t_rows = backend.xp.full(x.shape[0], t, dtype=np.int64)
        if sampler == "ancestral":
            x = ancestral_step(process, x, t_rows, t, rng)
        else:
            x = ddim_step(process, x, t_rows, t, t_prev, eta, rng)
        finite.append(backend.xp.isfinite(x).all())
        if record:
            xs.append(backend.to_numpy(x).copy())
    _check_finite(finite, ts)
    return (x, np.array(ts + [0]), np.stack(xs)) if record else x


def ancestral_step(process, x_t, t_rows, t: int, rng):
    """x_{t−1} = μ + σ z from the process's kernel; the mean alone at the last step (t = 1).  -> (N, D)"""
    mean, log_var = process.kernel(x_t, t_rows)
    if t == DECODER_T:
        return mean
    return mean + backend.xp.exp(0.5 * log_var) * rng.standard_normal(mean.shape, dtype=mean.dtype)


def ddim_step(process, x_t, t_rows, t: int, t_prev: int, eta: float, rng):
    """x_s = √ᾱ_s x̂_0 + √(1 − ᾱ_s − σ²) ε_θ + σ z, s = t_prev (Song et al. 2021, Eq. 12).  -> (N, D)"""
    x0_hat, eps_theta = process.predict(x_t, t_rows)
    sigma = ddim_sigma(process.schedule, t, t_prev, eta)
    x = math.sqrt(process.schedule.alpha_bar[t_prev]) * x0_hat + ddim_noise_coef(process.schedule, t_prev, sigma) * eps_theta
    if sigma > 0:
        x = x + sigma * rng.standard_normal(x.shape, dtype=x.dtype)
    return x
