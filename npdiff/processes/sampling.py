"""One sampler for every reverse process: ancestral sampling through its Gaussian kernel, DDIM, and the
probability-flow ODE's solvers (Euler, Heun, DPM-Solver++(2M); ``npdiff.processes.ode``).

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
    ODE (ε-model chains, as D(y, σ) = x̂_0 by ``ode.ChainDenoiser``; a denoiser itself, such as
               ``ode.ConditionedDenoiser``; a flow model's ``flow.FlowVelocity``):
               dy/dσ = (y − D(y, σ))/σ on the grid of DDIM's timesteps or EDM's ρ-grid put on the model's
               levels, y = x_t/√ᾱ_t; Euler on DDIM's grid is DDIM with η = 0 (docs/continuous-time.md)

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
from npdiff.processes import flow, ode
from npdiff.processes.schedules import DECODER_T

ODE_SAMPLERS = ode.SOLVERS  # ("euler", "heun", "dpmpp_2m")
SAMPLERS = ("ancestral", "ddim") + ODE_SAMPLERS
GRIDS = ("ddim", "karras")  # the ODE samplers' σ grids: DDIM's timesteps, or EDM's ρ-grid on the model's levels
CHURN_OPTIONS = ("s_churn", "s_tmin", "s_tmax", "s_noise")  # Heun's (EDM Algorithm 2)


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
           x_T=None, record: bool = False, steps: int | None = None, grid: str = "ddim", rho: float = 7.0,
           **churn):
    """Draw n samples x_0 (N, D) from a reverse process, on the backend in the process's dtype.

    sampler: "ancestral" (every chain; all T steps), "ddim" (ε-model chains; ``steps`` of them, alias
    ``ddim_steps``; η = ``eta``: 0 is deterministic, 1 with all T steps is the ancestral sampler with σ_t² = β̃_t),
    or an ODE solver "euler", "heun", "dpmpp_2m" (``steps`` steps, default T, on the ``grid`` "ddim" (DDIM's
    timesteps) or "karras" (EDM's ρ-grid put on the model's levels); Heun takes EDM's ``s_churn``, ``s_tmin``,
    ``s_tmax``, ``s_noise``). The ODE samplers take an ε-model chain, a denoiser (``ode.ConditionedDenoiser``)
    or a flow model's ``flow.FlowVelocity``.
    x_T: a given start (N, D) instead of a draw (then n is ignored). With ``record=True`` returns
    (x_0, ts, xs): ts (K,) the visited timesteps T..0 and xs (K, N, D) host arrays, xs[k] the state at ts[k]
    (x_t; a flow model's ts are its levels k of t = k/K).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    steps_name = "steps" if ddim_steps is None else "ddim_steps"  # as the caller named it, in an error
    if ddim_steps is not None:
        if sampler != "ddim":
            raise ValueError("ddim_steps and eta belong to the DDIM sampler; pass sampler='ddim' (or steps= "
                             "for an ODE sampler)")
        if steps is not None and steps != ddim_steps:
            raise ValueError(f"steps={steps!r} and ddim_steps={ddim_steps!r} name the same number; pass one")
        steps = ddim_steps
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1):
        raise ValueError(f"{steps_name} must be an integer >= 1, got {steps!r}")
    if sampler == "ancestral" and (steps is not None or eta != 0.0):
        raise ValueError("ancestral sampling runs all T steps; steps and eta belong to the DDIM and ODE samplers")
    unknown = sorted(set(churn) - set(CHURN_OPTIONS))
    if unknown:
        raise TypeError(f"sample() got unexpected keyword arguments {', '.join(unknown)}")
    if churn and sampler != "heun":
        raise ValueError(f"{', '.join(sorted(churn))}: EDM's churn belongs to sampler='heun'")
    if sampler not in ODE_SAMPLERS and (grid != "ddim" or rho != 7.0):
        raise ValueError("grid and rho choose the ODE samplers' noise levels; ancestral and DDIM step on the "
                         "schedule's timesteps")
    if sampler in ODE_SAMPLERS:
        if eta != 0.0:
            raise ValueError("eta belongs to the DDIM sampler; the ODE samplers are deterministic (Heun's "
                             "s_churn adds noise)")
        return sample_ode(process, n, rng, sampler, steps, grid, rho, x_T, record, churn)
    if isinstance(process, flow.FlowVelocity):
        raise ValueError(f"a flow model has no reverse chain for sampler={sampler!r}; sample it with one of "
                         f"{', '.join(ODE_SAMPLERS)}")
    schedule = process.schedule
    if sampler == "ddim":
        if not hasattr(process, "predict"):
            raise ValueError(f"DDIM needs an ε-prediction chain; {type(process).__name__} has only a kernel, "
                             "use sampler='ancestral'")
        if not 0 <= eta <= 1:
            raise ValueError(f"eta must lie in [0, 1], got {eta}")
    if steps is not None and steps > schedule.T:
        raise ValueError(f"{steps_name}={steps} is more than the model's T = {schedule.T}")
    ts = schedule.reverse_t(steps if sampler == "ddim" else None)
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


def ode_denoiser(process):
    """D(y, σ) of a process: a denoiser as it is, an ε-model chain through ``ode.ChainDenoiser``; a chain that
    has only a kernel is refused in one line."""
    if hasattr(process, "round_sigma"):
        return process
    if hasattr(process, "predict"):
        return ode.ChainDenoiser(process)
    raise ValueError(f"the ODE samplers need a denoiser x0-hat(x_t, t): an eps-, x0- or v-prediction chain; "
                     f"{type(process).__name__} has only a Gaussian kernel: use sampler='ancestral'")


def ode_grid(denoiser, steps: int | None, grid: str = "ddim", rho: float = 7.0) -> np.ndarray:
    """The decreasing σ grid (K,) ending at 0 of a denoiser with a ``schedule`` (a trained chain's): DDIM's
    ``steps`` timesteps (default T), or EDM's ρ-grid from σ_T to σ_1 put on the model's levels (repeats dropped:
    at most ``steps`` steps)."""
    if grid not in GRIDS:
        raise ValueError(f"unknown grid {grid!r}; choose one of {', '.join(GRIDS)}")
    schedule = denoiser.schedule
    steps = schedule.T if steps is None else steps
    if steps > schedule.T:
        raise ValueError(f"steps={steps} is more than the model's T = {schedule.T} noise levels")
    if grid == "ddim":
        return ode.ddim_sigmas(schedule, steps)
    if not rho > 0:
        raise ValueError(f"rho must be > 0, got {rho!r}")
    levels = schedule.sqrt_recipm1_alpha_bar
    return ode.on_timesteps(denoiser, ode.karras_sigmas(steps, float(levels[1]), float(levels[-1]), rho))


def ode_timesteps(schedule, steps: int | None, grid: str = "ddim", rho: float = 7.0) -> list[int]:
    """The timesteps T … 1, 0 that ``ode_grid`` visits on a schedule's levels (for the gain check up front)."""
    levels = ode.Levels(schedule)
    return [0 if s == 0 else levels.timestep(s) for s in ode_grid(levels, steps, grid, rho)]


def ode_gains(schedule, steps: int | None, grid: str = "ddim", rho: float = 7.0) -> dict:
    """{t: gain}: how much each ODE step from t amplifies an error of ε_θ, as DDIM's step between the same
    timesteps (Euler is DDIM; the second-order solvers' steps are combinations of such steps)."""
    ts = ode_timesteps(schedule, steps, grid, rho)
    return {t: ddim_gain(schedule, t, t_prev) for t, t_prev in zip(ts[:-1], ts[1:])}


def flow_sigma_grid(velocity, steps: int | None, grid: str = "ddim", rho: float = 7.0) -> np.ndarray:
    """A flow model's σ = t/(1 − t) grid for the σ-solvers, on its levels t = k/K below t = 1 (σ = ∞): even in t
    ("ddim") or EDM's ρ-grid, then 0."""
    if grid not in GRIDS:
        raise ValueError(f"unknown grid {grid!r}; choose one of {', '.join(GRIDS)}")
    k = velocity.time.levels
    steps = k - 1 if steps is None else steps
    if steps > k - 1:
        raise ValueError(f"steps={steps} is more than the flow model's {k - 1} levels below t = 1")
    t_max, t_min = (k - 1) / k, 1.0 / k
    if grid == "ddim":
        ts = np.linspace(t_max, 0.0, steps + 1)[:-1]
        sigmas = ts / (1.0 - ts)
    else:
        if not rho > 0:
            raise ValueError(f"rho must be > 0, got {rho!r}")
        sigmas = ode.karras_sigmas(steps, t_min / (1 - t_min), t_max / (1 - t_max), rho)[:-1]
    return ode.on_timesteps(flow.FlowDenoiser(velocity), np.append(sigmas, 0.0))


def _base(denoiser):
    """The denoiser under any conditioning (``ode.ConditionedDenoiser`` wraps one): where its levels are."""
    while hasattr(denoiser, "denoiser"):
        denoiser = denoiser.denoiser
    return denoiser


def sample_ode(process, n, rng, solver: str, steps, grid: str, rho: float, x_T, record: bool, churn: dict):
    """``sample`` for the ODE samplers (its docstring): the grid, the gain check (Euler's gain is DDIM's on the
    same timesteps), x_T, the solver, and the finite check; record=True keeps x_t at each level."""
    if isinstance(process, flow.FlowVelocity):
        if solver == "euler":
            return _flow_euler(process, n, rng, steps, grid, x_T, record, churn)
        process = flow.FlowDenoiser(process)
    denoiser = ode_denoiser(process)
    base = _base(denoiser)
    if isinstance(base, flow.FlowDenoiser):  # levels t = k/K, σ = t/(1 − t), x_t = y/(1 + σ)
        sigmas = flow_sigma_grid(base.velocity, steps, grid, rho)
        ts = [int(round(base.velocity.time.levels * s / (1.0 + s))) for s in sigmas]
        to_x = lambda sigma, y: y / (1.0 + sigma)  # noqa: E731
    else:  # a trained chain's levels σ_t, x_t = √ᾱ_t y = y/√(1 + σ²)
        sigmas = ode_grid(base, steps, grid, rho)
        ts = [0 if s == 0 else base.timestep(s) for s in sigmas]
        to_x = lambda sigma, y: y / math.sqrt(1.0 + sigma * sigma)  # noqa: E731
        check_gain(base.chain, ode_gains(base.schedule, steps, grid, rho))
    x = _start(denoiser, n, rng, x_T)
    return _run(denoiser, sigmas, ode.prior_std(float(sigmas[0])) * x, rng, solver, churn, record, ts, to_x)


def _flow_euler(velocity, n, rng, steps, grid, x_T, record, churn):
    """Euler on a flow model's path from t = 1, where x_1 = x_T (``flow.flow_euler``), evenly in t."""
    if grid != "ddim" or churn:
        raise ValueError("Euler on a flow model steps evenly in t from t = 1 (grid='ddim'), without churn")
    levels = velocity.time.levels
    if steps is not None and steps > levels:
        raise ValueError(f"steps={steps} is more than the flow model's {levels} time levels")
    times = flow.flow_time_grid(levels if steps is None else steps, velocity.time)
    x = _start(velocity, n, rng, x_T)
    return _record(lambda callback: flow.flow_euler(velocity, times, x, callback=callback), x, record,
                   [int(round(t * levels)) for t in times], lambda t, x_t: x_t)


def _run(denoiser, sigmas, y, rng, solver, churn, record, ts, to_x):
    if churn.get("s_churn", 0.0) and rng is None:
        raise ValueError("s_churn > 0 draws noise: pass rng")
    start = to_x(float(sigmas[0]), y)
    return _record(lambda callback: to_x(0.0, ode.solve(denoiser, sigmas, y, solver, rng=rng, callback=callback,
                                                        **churn)), start, record, ts, to_x)


def _record(run, start, record: bool, ts: list, to_x):
    """run(callback) with every state checked for NaN/inf (and kept on the host with ``record``)."""
    xs = [backend.to_numpy(start).copy()] if record else None
    finite = []

    def callback(level, state):
        finite.append(backend.xp.isfinite(state).all())
        if record:
            xs.append(backend.to_numpy(to_x(level, state)).copy())

    x = run(callback)
    _check_finite(finite, ts)
    return (x, np.array(ts), np.stack(xs)) if record else x
