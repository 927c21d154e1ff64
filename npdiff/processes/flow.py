"""Flow matching / rectified flow (Lipman et al. 2023; Liu et al. 2023): a velocity objective beside ε-DDPM and K.

Shape glossary: N batch, D data dims, K time levels of the network's input.

The path and its target, for x_0 from the data and ε ~ N(0, I):
    x_t = (1 − t) x_0 + t ε,   t ∈ (0, 1)                       (the straight path; x_1 is pure noise)
    u_t = dx_t/dt = ε − x_0                                       (the velocity target)
    L = mean_{n,d} (v_θ(x_t, t) − (ε − x_0))²,  dL/dv_θ = 2(v_θ − u_t)/(N·D)
t is uniform, or logit-normal: t = sigmoid(μ + s n), n ~ N(0, 1) (Esser et al. 2024, Eq. 19).
The minimiser is v*(x, t) = E[ε − x_0 | x_t = x]; sampling integrates dx/dt = v(x, t) from t = 1 (x ~ N(0, I))
to t = 0 (``flow_euler``, or any σ-solver of ``npdiff.processes.ode`` through ``FlowDenoiser``).

The same ODE in EDM's coordinates: y = x_t/(1 − t) = x_0 + σ ε with σ = t/(1 − t), and
    x̂_0 = x_t − t v,  ε̂ = x_t + (1 − t) v,  D(y, σ) = x̂_0(y/(1 + σ), σ/(1 + σ))
so Euler in t on the flow path is Euler in σ (``ode.euler``), i.e. DDIM on the VP schedule with
ᾱ = 1/(1 + σ²) = (1 − t)²/((1 − t)² + t²) (``flow_schedule``). docs/continuous-time.md derives it.

Time enters the network as an integer: npdiff's ``TimestepEmbedding`` takes integer timesteps, so t lives
on the K + 1 levels t = k/K, k ∈ {0..K} (K = ``time_levels``), and the network sees k (the embedding of t·K,
the scale of DDPM's T = 1000). Training draws t continuously and rounds it to the nearest level; x_t is made
at that level, so the network always sees the t its input was made at.
"""

from __future__ import annotations

import numpy as np

from npdiff import backend
from npdiff.nn.losses import check_labels, squared_error
from npdiff.nn.primitives import standard_normal
from npdiff.processes.guidance import forward_dropping_labels
from npdiff.processes.ode import network_vjp
from npdiff.processes.schedules import Schedule, is_host

TIME_DISTRIBUTIONS = ("uniform", "logit_normal")


def flow_path(x0, t, noise):
    """x_t = (1 − t) x_0 + t ε.  x0, noise (N, D); t (N, 1) -> (N, D)"""
    return (1.0 - t) * x0 + t * noise


def velocity_target(x0, noise):
    """u_t = ε − x_0, the velocity of the straight path.  -> (N, D)"""
    return noise - x0


class FlowTime:
    """The network's time levels: t = k/K, k ∈ {0..K} (module docstring); draws and roundings of t."""

    def __init__(self, time_levels: int = 1000, distribution: str = "uniform", logit_mean: float = 0.0,
                 logit_std: float = 1.0) -> None:
        if distribution not in TIME_DISTRIBUTIONS:
            raise ValueError(f"unknown time distribution {distribution!r}; "
                             f"choose one of {', '.join(TIME_DISTRIBUTIONS)}")
        if int(time_levels) < 2:
            raise ValueError(f"time_levels must be >= 2, got {time_levels!r}")
        self.levels, self.distribution = int(time_levels), distribution
        self.logit_mean, self.logit_std = float(logit_mean), float(logit_std)

    def level(self, t):
        """k = t·K as integers (N,) on t's backend. Host times are checked to lie on the levels (k ∈ 0..K, t·K
        within 1e-6 of k, or the rounding of t's float type); device times come from ``sample`` or ``round_t`` and are trusted, so that no
        training step reads them back (as ``Schedule.as_timesteps`` treats timesteps)."""
        if is_host(t):
            given = np.asarray(t)
            # a float32 k/K is k/K to float32's rounding, K·eps of it after scaling (1.2e-4 for K = 1000)
            eps = np.finfo(given.dtype).eps if np.issubdtype(given.dtype, np.floating) else 0.0
            scaled = given.astype(np.float64) * self.levels
            k = np.rint(scaled)
            if not np.all((np.abs(scaled - k) <= max(1e-6, 4 * eps * self.levels)) & (k >= 0) & (k <= self.levels)):
                raise ValueError(f"flow times must be k/{self.levels}, k in 0..{self.levels}: round them with round_t")
            return k.astype(np.int64)
        return backend.xp.rint(t * self.levels).astype(np.int64)

    def round_t(self, t):
        """t in [0, 1] put on the nearest level k/K, where t lives (a host float or array, or the backend's)."""
        xp = np if isinstance(t, float) or is_host(t) else backend.xp
        return xp.clip(xp.rint(xp.asarray(t) * self.levels), 0, self.levels) / self.levels

    def sample(self, n: int, rng, dtype="float64"):
        """n times (N,) drawn uniformly or logit-normally, then put on the levels."""
        if self.distribution == "uniform":
            t = rng.random(int(n), dtype=dtype)
        else:
            logit = self.logit_mean + self.logit_std * rng.standard_normal(int(n), dtype=dtype)  # μ + s n
            t = 1.0 / (1.0 + backend.xp.exp(-logit))  # sigmoid
        return self.round_t(t).astype(dtype)


class FlowObjective:
    """The flow-matching loss for a model v_θ(x_t, k) of shape (N, D) (``Denoiser`` with D outputs); the
    interface of ``ddpm.EpsilonObjective``: ``loss_and_backward(model, x0, rng)`` draws t and ε (or takes them
    given, t on the levels ``FlowTime.round_t``), ADDS dL/dθ into the model's grads, returns the 0-d loss.
    A class-conditional model takes labels y, each dropped with probability ``label_dropout``."""

    out_factor = 1
    takes_labels = True

    def __init__(self, time_levels: int = 1000, time_distribution: str = "uniform", logit_mean: float = 0.0,
                 logit_std: float = 1.0, label_dropout: float = 0.1) -> None:
        if not 0 <= label_dropout < 1:
            raise ValueError(f"label_dropout must lie in [0, 1), got {label_dropout!r}")
        self.time = FlowTime(time_levels, time_distribution, logit_mean, logit_std)
        self.label_dropout = float(label_dropout)
        self.config = {"objective": "flow", "time_levels": int(time_levels), "time_distribution": time_distribution,
                       "logit_mean": float(logit_mean), "logit_std": float(logit_std),
                       "label_dropout": self.label_dropout}

    def check_model(self, model) -> None:
        config = model.config
        if config["out_dim"] != config["data_dim"]:
            raise ValueError(f"flow matching needs a model with D outputs (v_θ); this one has {config['out_dim']} "
                             f"for D = {config['data_dim']}")

    def _inputs(self, model, x0, rng, t, noise):
        if rng is None and (t is None or noise is None):
            raise ValueError("pass rng (a random generator) to draw t and the noise, or give both t= and noise=")
        x0 = backend.asarray(x0, dtype=model.dtype)
        if t is None:
            t = self.time.sample(x0.shape[0], rng, x0.dtype)
        k = backend.asarray(self.time.level(t))  # a given host t is checked first
        noise = standard_normal(rng, x0.shape, dtype=x0.dtype) if noise is None else backend.asarray(noise, x0.dtype)
        return x0, backend.asarray(t, dtype=x0.dtype), k, noise

    def loss(self, model, x0, rng=None, *, y=None, t=None, noise=None) -> float:
        """The loss alone (a forward pass, no gradient), as a Python float."""
        self.check_model(model)
        x0, t, k, noise = self._inputs(model, x0, rng, t, noise)
        v_theta = forward_dropping_labels(model, flow_path(x0, t[:, None], noise), k, y, self.label_dropout, rng)
        return float(squared_error(v_theta, velocity_target(x0, noise))[0])

    def loss_and_backward(self, model, x0, rng=None, *, y=None, t=None, noise=None):
        """Forward, L = mean (v_θ − (ε − x_0))², model.backward(dL/dv_θ).  x0 (N, D); t (N,) in (0, 1) on the
        levels, noise (N, D), y (N,) optional.  -> the loss, a 0-d backend array"""
        self.check_model(model)
        x0, t, k, noise = self._inputs(model, x0, rng, t, noise)
        x_t = flow_path(x0, t[:, None], noise)  # (N, D)
        v_theta = forward_dropping_labels(model, x_t, k, y, self.label_dropout, rng)  # (N, D)
        loss, d_v_theta = squared_error(v_theta, velocity_target(x0, noise))  # dL/dv_θ = 2(v_θ − u_t)/(N·D)
        model.backward(d_v_theta, input_grad=False)
        return loss


class FlowVelocity:
    """v_θ(x, t) of a trained flow model on its time levels, class-conditional and guided as the ε-chain is
    (f̃ = (1 + w) f_c − w f_∅: x̂_0 and ε̂ are affine in v at fixed x_t, with weights summing to one)."""

    def __init__(self, model, time: FlowTime, labels=None, guidance: float = 0.0) -> None:
        if labels is None and guidance != 0:
            raise ValueError("guidance needs labels: the class of each sample")
        if labels is not None and getattr(model, "label_emb", None) is None:
            raise ValueError("labels need a class-conditional model (Denoiser(num_classes=K))")
        self.model, self.time = model, time
        self.labels = None if labels is None else check_labels(labels, len(labels), model.label_emb.n_classes)
        self.guidance = float(guidance)
        self.data_dim, self.dtype = model.config["data_dim"], model.dtype

    def round_t(self, t: float) -> float:
        return float(self.time.round_t(t))

    def _rows(self, x, t: float):
        k = backend.xp.full(x.shape[0], int(self.time.level(np.array([t]))[0]), dtype=np.int64)  # t: a host float
        labels = None if self.labels is None else backend.xp.repeat(self.labels, x.shape[0] // self.labels.shape[0])
        return k, labels

    def __call__(self, x, t: float):
        """v_θ(x, t) (N, D), guided when the velocity has labels and a scale."""
        k, labels = self._rows(x, t)
        if labels is None:
            return self.model.forward(x, k)
        if self.guidance == 0:
            return self.model.forward(x, k, labels)
        xp, n = backend.xp, x.shape[0]
        null = xp.full(n, self.model.label_emb.null, dtype="int64")
        both = self.model.forward(xp.concatenate([x, x]), xp.concatenate([k, k]), xp.concatenate([labels, null]))
        return (1.0 + self.guidance) * both[:n] - self.guidance * both[n:]

    def vjp(self, x, t: float, u):
        """uᵀ ∂v_θ/∂x (N, D), through the network's backward."""
        k, labels = self._rows(x, t)
        return network_vjp(self.model, x, k, u, labels, self.guidance)


class FlowDenoiser:
    """D(y, σ) = x̂_0 = x_t − t v(x_t, t) at t = σ/(1 + σ), x_t = y/(1 + σ): a velocity field as a denoiser of
    ``npdiff.processes.ode``, whose σ-solvers then integrate the flow ODE (module docstring)."""

    def __init__(self, velocity) -> None:
        self.velocity, self.data_dim, self.dtype = velocity, velocity.data_dim, velocity.dtype

    def round_sigma(self, sigma: float) -> float:
        t = self.velocity.round_t(sigma / (1.0 + sigma))
        return t / (1.0 - t)

    def __call__(self, y, sigma: float):
        t = sigma / (1.0 + sigma)
        x_t = y / (1.0 + sigma)
        return x_t - t * self.velocity(x_t, t)

    def vjp(self, y, sigma: float, u):
        """uᵀ ∂D/∂y = (u − t uᵀ ∂v/∂x)/(1 + σ)."""
        t = sigma / (1.0 + sigma)
        return (u - t * self.velocity.vjp(y / (1.0 + sigma), t, u)) / (1.0 + sigma)


def flow_euler(velocity, ts, x, *, callback=None):
    """Euler on dx/dt = v(x, t) down a decreasing grid of times ts (t_0 = 1 … t_K = 0):
    x_{i+1} = x_i + (t_{i+1} − t_i) v(x_i, t_i).  x (N, D) at t_0 -> (N, D); callback(t_{i+1}, x_{i+1}) sees
    each state."""
    times = [float(t) for t in ts]  # Python floats keep x in the network's dtype
    for t, t_next in zip(times[:-1], times[1:]):
        x = x + (t_next - t) * velocity(x, t)
        if callback is not None:
            callback(t_next, x)
    return x


def flow_schedule(ts) -> Schedule:
    """The VP schedule whose DDIM steps are Euler steps on the flow path at the times 0 = t_0 < t_1 < … < t_T < 1:
    ᾱ_k = (1 − t_k)²/((1 − t_k)² + t_k²), i.e. σ_k = t_k/(1 − t_k), and β_k = 1 − ᾱ_k/ᾱ_{k−1}."""
    ts = np.asarray(ts, dtype=np.float64)
    if ts[0] != 0 or not np.all(np.diff(ts) > 0) or ts[-1] >= 1:
        raise ValueError("ts must increase from 0 and stay below 1")
    alpha_bar = (1 - ts) ** 2 / ((1 - ts) ** 2 + ts ** 2)
    return Schedule.from_betas(1.0 - alpha_bar[1:] / alpha_bar[:-1])


def flow_time_grid(steps: int, time: FlowTime | None = None) -> np.ndarray:
    """steps + 1 evenly spaced times from 1 down to 0, put on ``time``'s levels (repeats dropped) when given."""
    ts = np.linspace(1.0, 0.0, steps + 1)
    return ts if time is None else np.array(sorted({float(time.round_t(t)) for t in ts}, reverse=True))
