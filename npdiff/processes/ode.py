"""Probability-flow ODE samplers in EDM's σ coordinates: Euler (DDIM with η = 0), Heun, DPM-Solver++(2M).

Shape glossary: N samples, D data dims, T diffusion steps, K noise levels of a grid (K − 1 steps).

Coordinates (Karras et al. 2022, "EDM", Eq. 1 and Table 1). Divide the forward process
x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε by √ᾱ_t:
    y = x_t/√ᾱ_t = x_0 + σ ε,         σ_t = √((1−ᾱ_t)/ᾱ_t) = ``Schedule.sqrt_recipm1_alpha_bar[t]``
so y is the data plus Gaussian noise of standard deviation σ. Every model is a denoiser in these
coordinates, D(y, σ) = x̂_0 (``ChainDenoiser``: from an ε, x̂_0 or v prediction, guided or not), and the
probability-flow ODE (Song et al. 2021, Eq. 13; EDM Eq. 4 with s(t) = 1) reads
    dy/dσ = (y − D(y, σ))/σ = ε̂(y, σ)                                                   (ODE)
Its solution carries N(0, σ_max²)-ish noise to the data as σ falls from σ_max to 0. The solvers step it on
a decreasing grid σ_0 > σ_1 > … > σ_{K−1} = 0 (``ddim_sigmas``: the model's own timesteps, as DDIM; or
``karras_sigmas``, EDM Eq. 5, ρ = 7):
    Euler       y_{i+1} = y_i + (σ_{i+1} − σ_i) d_i,  d_i = (y_i − D(y_i, σ_i))/σ_i            (EDM Alg. 1, 1st order)
                = D_i + (σ_{i+1}/σ_i)(y_i − D_i): DDIM's x_s = √ᾱ_s x̂_0 + √(1−ᾱ_s) ε̂ (Song et al. Eq. 12, η = 0)
    Heun        the Euler step, then the trapezoid of d_i and d at its end (EDM Alg. 2; S_churn adds
                noise to raise σ_i to σ̂_i = σ_i (1 + γ_i) first); Euler on the last step to σ = 0
    DPM-Solver++(2M)   λ = −log σ, h_i = λ_{i+1} − λ_i, r_i = h_{i−1}/h_i                    (Lu et al. 2022, Alg. 2)
                y_{i+1} = (σ_{i+1}/σ_i) y_i − (e^{−h_i} − 1) D̃_i,  D̃_i = (1 + 1/(2r_i)) D_i − 1/(2r_i) D_{i−1}
                (D̃_0 = D_0 and D̃ = D on the last step: then it is DPM-Solver++(1), i.e. Euler)
A sample starts from the prior of a VP model, x_T ~ N(0, I), i.e. y_0 = x_T/√ᾱ_T = √(1 + σ_0²) x_T.
``ConditionedDenoiser`` conditions any denoiser on observations (given or noisy coordinates) by a Kalman
update of Tweedie's Gaussian p(x_0 | y) ≈ N(D, σ² ∂D/∂y): exact for Gaussian data.
docs/continuous-time.md derives the ODE and shows DDIM, the flow path and EDM as one ODE.
"""

from __future__ import annotations

import math

import numpy as np

from npdiff import backend
from npdiff.processes.schedules import Schedule

SOLVERS = ("euler", "heun", "dpmpp_2m")


def ddim_sigmas(schedule: Schedule, steps: int | None = None) -> np.ndarray:
    """σ on DDIM's grid: σ_t for t in ``schedule.reverse_t(steps)`` (T … 1), then 0.  -> (steps + 1,) float64"""
    ts = schedule.reverse_t(steps)
    return np.append(schedule.sqrt_recipm1_alpha_bar[ts], 0.0)


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> np.ndarray:
    """EDM's grid (Karras et al. Eq. 5): σ_i = (σ_max^{1/ρ} + i/(n−1) (σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ, i < n = steps,
    then 0. Larger ρ spends more of the steps at small σ.  -> (steps + 1,) float64"""
    if steps < 1 or not 0 < sigma_min < sigma_max:
        raise ValueError(f"need steps >= 1 and 0 < sigma_min < sigma_max; got {steps}, {sigma_min}, {sigma_max}")
    ramp = np.linspace(0.0, 1.0, steps) if steps > 1 else np.zeros(1)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    return np.append((hi + ramp * (lo - hi)) ** rho, 0.0)


def on_timesteps(denoiser, sigmas) -> np.ndarray:
    """A grid moved onto the levels the denoiser was trained at (``round_sigma``, as EDM's sampler does for a
    discrete model), repeated levels dropped: a decreasing grid ending at 0.  -> (K',) float64"""
    rounded = [float(denoiser.round_sigma(s)) for s in np.asarray(sigmas)[:-1]]
    return np.append(sorted(set(rounded), reverse=True), 0.0)


class Levels:
    """The noise levels σ_t = √((1−ᾱ_t)/ᾱ_t), t = 1..T, of a schedule: where a discrete model is defined.
    ``round_sigma`` puts a σ on the nearest level (in log σ), as EDM's sampler does for a discrete model."""

    def __init__(self, schedule: Schedule) -> None:
        self.schedule = schedule
        self.sigmas = schedule.sqrt_recipm1_alpha_bar  # σ_t, (T+1,), increasing, σ_0 = 0

    def timestep(self, sigma: float) -> int:
        """The t ≥ 1 whose σ_t is nearest to σ in log σ."""
        return 1 + int(np.argmin(np.abs(np.log(self.sigmas[1:]) - math.log(sigma))))

    def round_sigma(self, sigma: float) -> float:
        return float(self.sigmas[self.timestep(sigma)])

    def _step(self, sigma: float) -> int:
        t = self.timestep(sigma)
        if not math.isclose(self.sigmas[t], sigma, rel_tol=1e-9):
            raise ValueError(f"sigma={sigma!r} is not a noise level of the model (nearest: sigma_{t} = "
                             f"{self.sigmas[t]!r}); put the grid on the model's levels with on_timesteps")
        return t


class ChainDenoiser(Levels):
    """D(y, σ) = x̂_0 of an ε-model chain (``ddpm.EpsilonChain``: ε, x̂_0 or v predictions, labels, guidance,
    clipping) at its own noise levels σ_t, t = 1..T: x_t = √ᾱ_t y, then the chain's x̂_0 prediction.

    The network takes integer timesteps, so σ must be one of the σ_t (``round_sigma`` finds the nearest,
    in log σ); a σ between them raises rather than silently using a neighbour.
    """

    def __init__(self, chain) -> None:
        super().__init__(chain.schedule)
        self.chain = chain
        self.data_dim, self.dtype = chain.data_dim, chain.dtype

    def __call__(self, y, sigma: float):
        """x̂_0 (N, D) at y (N, D) and the noise level σ."""
        t = self._step(sigma)
        t_rows = backend.xp.full(y.shape[0], t, dtype=np.int64)
        return self.chain.predict(self.schedule.sqrt_alpha_bar[t] * y, t_rows)[0]

    def vjp(self, y, sigma: float, u):
        """uᵀ ∂D/∂y (N, D) through the network's hand-written backward: D = a y + b f(c y), c = √ᾱ_t, with
        (a, b) = (1, −σ) for ε (x̂_0 = y − σ ε_θ), (0, 1) for x̂_0, (ᾱ_t, −√(1−ᾱ_t)) for v.  y, u (N, D)

        y may hold each point's rows k times over (``np.repeat``); the chain's labels are repeated to match.
        """
        chain, t = self.chain, self._step(sigma)
        if chain.clip_x0 is not None:
            raise ValueError("clip_x0 makes D flat wherever it clips: the ODE likelihood needs a chain without clip_x0")
        ab = self.schedule.alpha_bar[t]
        a, b = {"eps": (1.0, -sigma), "x0": (0.0, 1.0), "v": (ab, -math.sqrt(1.0 - ab))}[chain.prediction]
        model, labels, w = unguided(chain)
        if labels is not None:
            labels = backend.xp.repeat(labels, y.shape[0] // labels.shape[0])
        c = self.schedule.sqrt_alpha_bar[t]
        t_rows = backend.xp.full(y.shape[0], t, dtype=np.int64)
        return a * u + (b * c) * network_vjp(model, c * y, t_rows, u, labels, w)


def unguided(chain):
    """(model, labels (N,) or None, w): the network an ε-chain asks, unwrapped from classifier-free guidance
    (``guidance.Guided``, which has no backward of its own)."""
    network = getattr(chain, "network", None)
    if network is None:  # a chain that keeps its labels and scale itself
        return chain.model, chain.labels, chain.guidance
    return (chain.model, None, 0.0) if network is chain.model else (network.model, network.labels, network.w)


def network_vjp(model, x, t_rows, g, labels=None, guidance: float = 0.0):
    """gᵀ ∂f/∂x (N, D) at x (N, D): f the network's first D outputs, guided as classifier-free guidance does
    (f̃ = (1 + w) f(x, y) − w f(x, ∅): backward sends (1 + w) g and −w g to the two halves of one 2N-row pass).
    Runs ``model.backward(…, input_grad=True)``; the model's parameter gradients are left as they were."""
    xp, n, d = backend.xp, x.shape[0], x.shape[1]
    saved = model.flat_grads.copy()  # backward adds dL/dθ into grads: keep the caller's
    if labels is None:
        out, weights = model.forward(x, t_rows), [1.0]
    elif guidance == 0:
        out, weights = model.forward(x, t_rows, labels), [1.0]
    else:
        null = xp.full(n, model.label_emb.null, dtype="int64")
        out = model.forward(xp.concatenate([x, x]), xp.concatenate([t_rows, t_rows]), xp.concatenate([labels, null]))
        weights = [1.0 + guidance, -guidance]
    dout = xp.zeros_like(out)  # a variance half, if any, gets no gradient: D does not read it
    for k, w in enumerate(weights):
        dout[k * n:(k + 1) * n, :d] = w * g
    dx = model.backward(dout, input_grad=True)  # (len(weights)·N, D)
    model.flat_grads[...] = saved
    return dx[:n] if len(weights) == 1 else dx[:n] + dx[n:]


class ConditionedDenoiser:
    """D̃(y, σ) = E[x_0 | y, r]: a denoiser conditioned on a Gaussian factor r(x_0) = Π_k N(x_k; m_k, v_k) on the
    coordinates K it constrains (``conditioning.factor``: v = 0 given, v = s² observed with noise s), by one
    Kalman update of p(x_0 | y) ≈ N(D, σ² J), J = ∂D/∂y (Tweedie's mean and covariance; Boys et al. 2023):
        D̃ = D + J_{K,:}ᵀ (J_{KK}ᵀ + diag(v_K)/σ²)⁻¹ (m_K − D_K)
    with J's rows K from |K| vector–Jacobian products (``vjp``). Exact for Gaussian data with the exact
    denoiser (p(x_0 | y) is then that Gaussian), so the ODE samples the exact posterior; given coordinates end
    at m exactly for any denoiser. m, v: (D,) or (N, D), or (R, D) from ``factor``, the same K in every row.
    """

    def __init__(self, denoiser, m, v) -> None:
        m, v = np.atleast_2d(np.asarray(m, dtype=np.float64)), np.atleast_2d(np.asarray(v, dtype=np.float64))
        constrained = np.isfinite(v)
        if not (constrained == constrained[0]).all() or not constrained[0].any():
            raise ValueError("the factor must constrain the same coordinates (finite v) in every row, at least one")
        self.denoiser, self.data_dim, self.dtype = denoiser, denoiser.data_dim, denoiser.dtype
        self.cols = np.flatnonzero(constrained[0])  # K
        self.m = backend.asarray(m[:, self.cols])  # m_K  (R, |K|)
        self.v = backend.asarray(v[:, self.cols])  # v_K  (R, |K|)

    def round_sigma(self, sigma: float) -> float:
        return self.denoiser.round_sigma(sigma)

    def __call__(self, y, sigma: float):
        """D̃ (N, D) at y (N, D)."""
        xp, (n, d), k = backend.xp, y.shape, self.cols.size
        x0_hat = self.denoiser(y, sigma)  # D  (N, D)
        basis = xp.asarray(np.eye(d)[self.cols], dtype=y.dtype)  # e_k for k in K  (|K|, D)
        j_rows = self.denoiser.vjp(xp.repeat(y, k, axis=0), sigma, xp.tile(basis, (n, 1))).reshape(n, k, d)  # J_{K,:}
        j_kk = j_rows[:, :, self.cols]  # J_KK[a, b] = ∂D_{k_a}/∂y_{k_b}  (N, |K|, |K|)
        system = j_kk.transpose(0, 2, 1) + xp.eye(k) * (self.v / sigma ** 2)[:, None, :]  # J_KKᵀ + diag(v_K)/σ²
        weights = xp.linalg.solve(system, (self.m - x0_hat[:, self.cols])[:, :, None])[:, :, 0]  # (N, |K|)
        return x0_hat + xp.einsum("nk,nkd->nd", weights, j_rows)  # D + J_{K,:}ᵀ w


def prior_std(sigma_max: float) -> float:
    """The standard deviation of y at σ_max under a VP model's prior x_T ~ N(0, I): √(1 + σ_max²)."""
    return math.sqrt(1.0 + sigma_max * sigma_max)


def steps_of(sigmas):
    """The steps (σ_i, σ_{i+1}) of a grid as Python floats, which keep y in the denoiser's dtype."""
    levels = [float(s) for s in sigmas]
    return list(zip(levels[:-1], levels[1:]))


def euler(denoiser, sigmas, y, *, callback=None):
    """Euler's method on the ODE (module docstring): DDIM with η = 0 on the same grid.  y (N, D) -> (N, D)
    callback(σ_{i+1}, y_{i+1}), when given, sees each state (as every solver here does)."""
    for sigma, sigma_next in steps_of(sigmas):
        d = (y - denoiser(y, sigma)) / sigma  # dy/dσ = ε̂
        y = y + (sigma_next - sigma) * d
        if callback is not None:
            callback(sigma_next, y)
    return y


def heun(denoiser, sigmas, y, *, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf,
         s_noise: float = 1.0, rng=None, callback=None):
    """Heun's method with EDM's churn (Karras et al. 2022, Algorithm 2).  y (N, D) -> (N, D)

    s_churn > 0: before step i, add noise to raise σ_i to σ̂_i = σ_i (1 + γ_i), γ_i = min(S_churn/n, √2 − 1)
    for σ_i in [S_tmin, S_tmax] (n steps), σ̂_i put on a level the denoiser knows (``round_sigma``).
    """
    steps = len(sigmas) - 1
    for sigma, sigma_next in steps_of(sigmas):
        gamma = min(s_churn / steps, math.sqrt(2.0) - 1.0) if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = max(denoiser.round_sigma(sigma * (1.0 + gamma)), sigma) if gamma > 0 else sigma
        if sigma_hat > sigma:  # y at σ̂: add noise of variance σ̂² − σ²
            noise = rng.standard_normal(y.shape, dtype=y.dtype)
            y = y + s_noise * math.sqrt(sigma_hat ** 2 - sigma ** 2) * noise
        d = (y - denoiser(y, sigma_hat)) / sigma_hat
        y_euler = y + (sigma_next - sigma_hat) * d
        if sigma_next == 0:  # the slope at σ = 0 is 0/0: Algorithm 2 corrects only where σ_{i+1} ≠ 0
            y = y_euler
        else:  # the trapezoid rule: average the slopes at both ends
            d_next = (y_euler - denoiser(y_euler, sigma_next)) / sigma_next
            y = y + (sigma_next - sigma_hat) * 0.5 * (d + d_next)
        if callback is not None:
            callback(sigma_next, y)
    return y


def dpmpp_2m(denoiser, sigmas, y, *, order: int = 2, callback=None):
    """DPM-Solver++(2M), multistep (Lu et al. 2022, Algorithm 2, in σ coordinates); order=1 is
    DPM-Solver++(1), which is Euler and DDIM.  y (N, D) -> (N, D)"""
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2, got {order!r}")
    x0_prev, h_prev = None, None  # D_{i−1} and h_{i−1}
    for sigma, sigma_next in steps_of(sigmas):
        x0_hat = denoiser(y, sigma)  # D_i
        if sigma_next == 0:  # λ = ∞: the step lands on D̃ = D
            y = x0_hat
            if callback is not None:
                callback(sigma_next, y)
            continue
        h = math.log(sigma) - math.log(sigma_next)  # h_i = λ_{i+1} − λ_i, λ = −log σ
        if order == 1 or x0_prev is None:
            x0_mix = x0_hat
        else:
            r = h_prev / h
            x0_mix = (1.0 + 1.0 / (2.0 * r)) * x0_hat - (1.0 / (2.0 * r)) * x0_prev  # D̃_i
        y = (sigma_next / sigma) * y - math.expm1(-h) * x0_mix
        x0_prev, h_prev = x0_hat, h
        if callback is not None:
            callback(sigma_next, y)
    return y


def solve(denoiser, sigmas, y, solver: str = "heun", rng=None, **options):
    """Run the named solver (``SOLVERS``) from y at σ_0 down the grid ``sigmas``.  -> (N, D)"""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    sigmas = np.asarray(sigmas, dtype=np.float64)
    if sigmas.ndim != 1 or sigmas.size < 2 or sigmas[-1] != 0 or not np.all(np.diff(sigmas) < 0):
        raise ValueError("sigmas must be a decreasing grid of at least two levels ending at 0")
    if solver == "heun":
        if options.get("s_churn", 0.0) > 0 and rng is None:
            raise ValueError("s_churn > 0 draws noise: pass rng")
        return heun(denoiser, sigmas, y, rng=rng, **options)
    return euler(denoiser, sigmas, y, **options) if solver == "euler" else dpmpp_2m(denoiser, sigmas, y, **options)


def nfe(solver: str, sigmas) -> int:
    """The number of denoiser evaluations a solver makes on a grid of K levels (K − 1 steps, the last to 0)."""
    steps = len(sigmas) - 1
    return 2 * steps - 1 if solver == "heun" else steps


def sample_ode(denoiser, n: int, rng, sigmas, *, solver: str = "heun", x_T=None, **options):
    """n samples x_0 (N, D): x_T ~ N(0, I) (or given), y_0 = √(1 + σ_0²) x_T, then the solver to σ = 0.

    denoiser: ``ChainDenoiser(chain)`` for a trained model (with ``sigmas`` on its levels: ``ddim_sigmas``, or
    ``on_timesteps(denoiser, karras_sigmas(…))``), or any D(y, σ) with ``round_sigma``, ``data_dim``, ``dtype``.
    """
    if x_T is None:
        x_T = rng.standard_normal((int(n), denoiser.data_dim), dtype=denoiser.dtype)
    x_T = backend.asarray(x_T, dtype=denoiser.dtype)
    return solve(denoiser, sigmas, prior_std(float(sigmas[0])) * x_T, solver, rng=rng, **options)
