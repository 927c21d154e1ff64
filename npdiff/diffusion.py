"""``Diffusion``: a model, its schedule, its objective and its reverse chain, bundled so they cannot disagree.

Shape glossary: N points, D data dims, T diffusion steps.

    diffusion = Diffusion(data_dim=2, objective="epsilon", T=200, hidden=64)
    diffusion.fit(x, steps=3000)           # x (N, D) host array; AdamW, cosine lr, clipping by default
    samples = diffusion.sample(2000)       # (2000, D) host NumPy array

    labelled = Diffusion(data_dim=2, num_classes=8)           # class-conditional (the "epsilon" objective)
    labelled.fit(x, steps=3000, labels=y)                     # y (N,) classes 0..7; 10 % dropped in training
    labelled.sample(800, labels="balanced", guidance=2.0)     # classifier-free guidance, w = 2
    diffusion.bound(x_held_out).summary()  # the variational bound on log p, nats and bits

The four objectives, and what each fixes about the model and the chain:

    "epsilon"         L_simple (Ho et al. 2020)      D outputs (ε_θ); σ_t² = β̃_t ("fixed_small") or β_t
    "hybrid"          L_hybrid (Nichol & Dhariwal)   2·D outputs (ε_θ and the learned-range variance)
    "sohl_dickstein"  −K (Sohl-Dickstein et al.)     2·D outputs (mean and variance of each reverse step)
    "flow"            flow matching (Lipman et al.)  D outputs (v_θ = ε − x_0 on x_t = (1 − t) x_0 + t ε, t = k/T);
                                                     no chain: sampled by the ODE samplers (``flow.FlowVelocity``)

Every ε, x̂_0 or v model (and a flow model) also samples by the probability-flow ODE
(``sample(sampler="euler" | "heun" | "dpmpp_2m", steps=…)``) and reports its ODE log-likelihood
(``ode_likelihood``; docs/continuous-time.md).

Everything here is glue over the library's pieces (``Denoiser``, ``Schedule``, the objectives, ``train.fit``,
``sampling.sample``, ``likelihood``); use those directly for anything the bundle does not offer.
"""

from __future__ import annotations

import numpy as np

from npdiff import backend
from npdiff.processes import conditioning, likelihood, ode, ode_likelihood, sampling
from npdiff.processes.flow import FlowDenoiser, FlowObjective, FlowVelocity
from npdiff.training import checkpoint, train
from npdiff.processes.ddpm import EpsilonChain, EpsilonObjective
from npdiff.processes.guidance import sample_labels
from npdiff.processes.hybrid import HybridObjective
from npdiff.nn.denoiser import Denoiser
from npdiff.nn.optim import EMA, AdamW, cosine_lr
from npdiff.processes.schedules import Schedule
from npdiff.processes.sohl_dickstein import BoundObjective, SohlDicksteinChain, make_model

OBJECTIVES = ("epsilon", "hybrid", "sohl_dickstein", "flow")
DEFAULT_VARIANCE = {"epsilon": "fixed_small", "hybrid": "learned_range", "sohl_dickstein": None, "flow": None}
CHAINLESS = ("flow",)  # objectives whose model has no reverse chain: sampled by the ODE samplers only
# the guidance scales w that npdiff accepts, everywhere (the command line, the demos, ``Diffusion.sample``): w = 0
# is the conditional model; past 20 (diffusers' s = 21) samples leave the data's range by orders of magnitude
GUIDANCE_RANGE = (0.0, 20.0)


def check_guidance(w: float, label_dropout: float | None = None, labels: bool = True) -> float:
    """w as a float, or a ValueError: w must be finite and in GUIDANCE_RANGE, and w > 0 (or sampling without
    labels) needs a model whose 'no label' row was trained (label_dropout > 0)."""
    low, high = GUIDANCE_RANGE
    if isinstance(w, bool) or not isinstance(w, (int, float, np.floating, np.integer)) or not low <= w <= high:
        raise ValueError(f"guidance w must be a number in [{low:g}, {high:g}], got {w!r}")
    if label_dropout == 0 and (w > 0 or not labels):
        raise ValueError("this model was trained with label dropout 0, so its 'no label' row was never trained: "
                         f"{'guidance' if labels else 'sampling without a label'} would use it; retrain with "
                         "label_dropout > 0")
    return float(w)


class Diffusion:
    """A denoiser, its forward process and its objective; ``fit``, ``sample``, ``bound``, ``save``/``load``.

    data_dim: D. objective: one of OBJECTIVES. T, schedule, schedule_kwargs: the forward process
    (``Schedule(T, schedule, **schedule_kwargs)``). variance: the ε-chain's σ_t² ("fixed_small",
    "fixed_large", "learned_range"; by default the objective's own). prediction, min_snr_gamma: the "epsilon"
    objective's target ("eps", "x0" or "v") and loss weighting (``ddpm.EpsilonObjective``). num_classes: K for
    a class-conditional model ("epsilon" objective), whose training drops each label with probability
    ``label_dropout`` (``npdiff.processes.guidance``). denoiser_kwargs: ``Denoiser``'s architecture (hidden, n_blocks,
    emb_dim, input_skip, …); its output width follows from the objective.
    A "flow" model (``flow.FlowObjective``) lives on the T + 1 time levels t = k/T (its schedule is kept only
    for the checkpoint's format); time_distribution, logit_mean, logit_std: how training draws t.
    """

    def __init__(self, data_dim: int, objective: str = "epsilon", T: int = 1000, schedule: str = "linear",
                 schedule_kwargs: dict | None = None, variance: str | None = None, prediction: str = "eps",
                 min_snr_gamma: float | None = None, num_classes: int | None = None, label_dropout: float = 0.1,
                 time_distribution: str = "uniform", logit_mean: float = 0.0, logit_std: float = 1.0,
                 **denoiser_kwargs) -> None:
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
        if "out_dim" in denoiser_kwargs:
            raise ValueError("the output width follows from the objective; do not pass out_dim")
        variance = DEFAULT_VARIANCE[objective] if variance is None else variance
        if objective == "sohl_dickstein" and variance is not None:
            raise ValueError("the Sohl-Dickstein chain learns its own variance; do not pass variance")
        if objective == "hybrid" and variance != "learned_range":
            raise ValueError("the hybrid objective trains a learned-range variance; variance must be 'learned_range'")
        if objective != "epsilon" and (prediction != "eps" or min_snr_gamma is not None):
            raise ValueError("prediction and min_snr_gamma belong to the 'epsilon' objective")
        if objective not in ("epsilon", "flow") and num_classes is not None:
            raise ValueError("class labels (num_classes) are supported with the 'epsilon' and 'flow' objectives")
        if objective != "flow" and (time_distribution, logit_mean, logit_std) != ("uniform", 0.0, 1.0):
            raise ValueError("time_distribution, logit_mean and logit_std belong to the 'flow' objective")
        self.schedule = Schedule(T, schedule, **(schedule_kwargs or {}))
        if objective == "flow":
            self.model = Denoiser(data_dim, out_dim=data_dim, num_classes=num_classes, **denoiser_kwargs)
            self.objective = FlowObjective(T, time_distribution, logit_mean, logit_std, label_dropout)
        elif objective == "sohl_dickstein":
            self.model = make_model(data_dim, **denoiser_kwargs)
            self.objective = BoundObjective(self.schedule)
        else:
            factor = 2 if objective == "hybrid" else 1
            self.model = Denoiser(data_dim, out_dim=factor * data_dim, num_classes=num_classes, **denoiser_kwargs)
            self.objective = (HybridObjective(self.schedule) if objective == "hybrid"
                              else EpsilonObjective(self.schedule, prediction, min_snr_gamma, label_dropout))
        self.objective.check_model(self.model)
        self.config = {"objective": objective, "variance": variance, "prediction": prediction,
                       "min_snr_gamma": min_snr_gamma, "label_dropout": float(label_dropout)}
        if objective == "flow":
            self.config.update(time_distribution=time_distribution, logit_mean=float(logit_mean),
                               logit_std=float(logit_std))
        else:
            self.chain()  # the chain checks the model against its variance now, not at the first sample
        self.optimizer, self.ema, self.history = None, None, None

    @property
    def process(self):
        """The reverse chain that ``sample`` and ``bound`` use."""
        return self.chain()

    @property
    def num_classes(self) -> int | None:
        return self.model.config.get("num_classes")

    def chain(self, clip_x0=None, max_gain: float | None = 10.0, labels=None, guidance: float = 0.0):
        """The reverse process of this model; ε-models take ``clip_x0``, ``max_gain``, and for a class-conditional
        model the samples' ``labels`` (N,) and the ``guidance`` scale w (``ddpm.EpsilonChain``). A flow model's
        "chain" is its velocity field v_θ(x_t, t) (``flow.FlowVelocity``), which only the ODE samplers take."""
        if self.config["objective"] == "flow":
            if clip_x0 is not None:
                raise ValueError("clip_x0 applies to ε-prediction chains; a flow model samples its velocity as it is")
            return FlowVelocity(self.model, self.objective.time, labels, guidance)
        if self.config["objective"] == "sohl_dickstein":
            if clip_x0 is not None:
                raise ValueError("clip_x0 applies to ε-prediction chains, not to the Sohl-Dickstein chain")
            return SohlDicksteinChain(self.model, self.schedule)
        return EpsilonChain(self.model, self.schedule, self.config["variance"], clip_x0=clip_x0, max_gain=max_gain,
                            prediction=self.config["prediction"], labels=labels, guidance=guidance)

    def fit(self, x, steps: int, batch_size: int = 256, lr: float = 1e-3, *, labels=None, optimizer=None,
            ema: float | None = None, clip: float | None = 1.0, seed: int = 0, rng=None, lr_schedule=None,
            **fit_kwargs) -> train.History:
        """Train on x (N, D), with class labels (N,) for a class-conditional model, for ``steps`` steps; returns
        the History (``train.fit`` takes ``fit_kwargs``).

        Defaults: AdamW (lr, no weight decay), lr warmed up over min(100, steps/10) steps then cosine-decayed
        to 0, gradient norm clipped at ``clip``. ema: a decay (e.g. 0.999) to keep an EMA of the weights,
        which ``sample`` and ``bound`` then use. rng: the generator of batches and draws (default from seed).
        """
        if self.optimizer is None or optimizer is not None:
            self.optimizer = optimizer if optimizer is not None else AdamW(self.model, lr=lr, weight_decay=0.0)
        if ema is not None and self.ema is None:
            self.ema = EMA(self.model, ema)
        if lr_schedule is None:
            lr_schedule = cosine_lr(lr, steps, warmup=min(100, steps // 10)) if steps >= 1 else None
        fit_kwargs.setdefault("schedule", self.schedule)  # checkpoints store it (a flow objective has none)
        self.history = train.fit(self.model, x, self.objective, steps=steps, batch_size=batch_size,
                                 optimizer=self.optimizer, rng=backend.default_rng(seed) if rng is None else rng,
                                 lr_schedule=lr_schedule, clip=clip, ema=self.ema, labels=labels, **fit_kwargs)
        return self.history

    def _averaged(self, fn):
        """fn() run with the EMA weights in the model when there are any."""
        if self.ema is None:
            return fn()
        self.ema.swap()
        try:
            return fn()
        finally:
            self.ema.swap()

    def sample(self, n: int, seed: int = 0, rng=None, *, sampler: str | None = None, ddim_steps: int | None = None,
               eta: float = 0.0, clip_x0=None, x_T=None, record: bool = False, labels=None, guidance: float = 0.0,
               given=None, observed=None, noise_std=None, condition: str = "paper", steps: int | None = None,
               grid: str = "ddim", rho: float = 7.0, **churn):
        """n samples (n, D) as a host NumPy array (``sampling.sample``; record=True adds (ts, xs)).

        sampler: "ancestral" (the default; a flow model's default is "euler"), "ddim", or an ODE solver "euler",
        "heun", "dpmpp_2m" with ``steps`` steps on ``grid`` "ddim" or "karras" (ρ = ``rho``); Heun takes EDM's
        s_churn, s_tmin, s_tmax, s_noise.

        labels (class-conditional models): one class for every sample (an int), one per sample (n,), or
        "balanced" (classes in turn); None samples the unconditional model. guidance: w of classifier-free
        guidance (``npdiff.processes.guidance``; 0 is the plain conditional model).

        given / observed / noise_std: sample p(x0) r(x0) instead, conditioned on known coordinates (NaN =
        free) or on a noisy observation y = x0 + N(0, noise_std²), (D,) or (n, D) in the model's coordinates;
        condition: r_t along the chain, "paper" or "replace" (``conditioning.Conditioned``, ancestral); with an ODE
        sampler the denoiser is conditioned instead (``ode.ConditionedDenoiser``; ``condition`` does not apply).
        The chain starts at a draw of p̃(x_T) unless x_T is given.
        """
        rng = backend.default_rng(seed) if rng is None else rng
        flow = self.config["objective"] in CHAINLESS
        sampler = ("euler" if flow else "ancestral") if sampler is None else sampler
        if flow and sampler not in sampling.ODE_SAMPLERS:
            raise ValueError(f"a flow model has no reverse chain for sampler={sampler!r}; sample it with one of "
                             f"{', '.join(sampling.ODE_SAMPLERS)}")
        if self.num_classes is not None:
            check_guidance(guidance, self.config["label_dropout"], labels is not None)
        if labels is not None:
            if self.num_classes is None:
                raise ValueError("labels need a class-conditional model (Diffusion(..., num_classes=K))")
            labels = sample_labels(labels, n if x_T is None else len(x_T), self.num_classes)
        if given is None and observed is None and noise_std is None:
            if condition != "paper":
                raise ValueError("condition applies with given or observed (and noise_std)")
            process = self.chain(clip_x0, labels=labels, guidance=guidance)
        elif sampler in sampling.ODE_SAMPLERS:
            if condition != "paper":
                raise ValueError("condition ('paper' or 'replace') is the ancestral chain's r_t; the ODE samplers "
                                 "condition the denoiser itself (ode.ConditionedDenoiser)")
            m, v = conditioning.factor(self.model.config["data_dim"], given, observed, noise_std)
            chain = self.chain(clip_x0, labels=labels, guidance=guidance)
            process = ode.ConditionedDenoiser(FlowDenoiser(chain) if flow else ode.ChainDenoiser(chain), m, v)
        elif sampler != "ancestral":
            raise ValueError("a conditioned chain samples with sampler='ancestral' or an ODE sampler (it has no ε "
                             "prediction for DDIM)")
        else:
            chain = self.chain(clip_x0, labels=labels, guidance=guidance)
            process = conditioning.Conditioned(chain, given, observed, noise_std, method=condition)
            x_T = process.x_T(n, rng) if x_T is None else x_T
        out = self._averaged(lambda: sampling.sample(process, n, rng, sampler=sampler, ddim_steps=ddim_steps, eta=eta,
                                                     x_T=x_T, record=record, steps=steps, grid=grid, rho=rho,
                                                     **churn))
        if record:
            x, ts, xs = out
            return backend.to_numpy(x), ts, xs
        return backend.to_numpy(out)

    def bound(self, x, seed: int = 0, *, exact: bool = False, n_t: int = 1, log_det: float = 0.0) -> likelihood.Bound:
        """The variational bound on log p(x) per point (L_T + Σ L_{t−1} + L_0 negated), exact over t or
        Monte Carlo with ``n_t`` draws per point; data coordinates shift it by ``log_det`` = Σ log std."""
        if self.config["objective"] in CHAINLESS:
            raise ValueError("a flow model has no reverse chain, so no variational bound: use ode_likelihood")
        rng = np.random.default_rng(seed)
        if exact:
            return self._averaged(lambda: likelihood.exact_bound(self.process, x, rng, log_det=log_det))
        return self._averaged(lambda: likelihood.mc_bound(self.process, x, rng, n_t=n_t, log_det=log_det))

    def ode_likelihood(self, x, seed: int = 0, *, steps: int | None = None, trace: str = "auto", probes: int = 1,
                       log_det: float = 0.0, labels=None) -> ode_likelihood.OdeLogLikelihood:
        """log p(x) per point by the probability-flow ODE (``ode_likelihood.ode_log_likelihood``): the model's own
        levels σ_1 … σ_T (``steps`` of them evenly spaced in t; a flow model: t = k/T below 1), the trace exact
        for D ≤ 16 or by Hutchinson's ``probes``; data coordinates shift it by ``log_det`` = Σ log std (subtracted,
        as ``bound`` does). labels: a class-conditional model's class of each point (N,), or None."""
        if labels is not None:
            labels = sample_labels(labels, len(x), self.num_classes) if self.num_classes is not None else labels
        rng = np.random.default_rng(seed)
        if self.config["objective"] == "flow":  # in its own time t (ode_likelihood.flow_log_likelihood says why)
            velocity = self.chain(labels=labels)
            levels = velocity.time.levels
            ts = np.arange(1, levels) / levels if steps is None else np.unique(
                np.rint(np.linspace(1, levels - 1, steps + 1))) / levels
            result = self._averaged(lambda: ode_likelihood.flow_log_likelihood(
                velocity, np.asarray(x, dtype=np.float64), ts, trace=trace, probes=probes, rng=rng))
        elif self.config["objective"] == "sohl_dickstein":
            raise ValueError("the Sohl-Dickstein chain's mean is not a denoiser: its likelihood is the bound K")
        else:
            denoiser = ode.ChainDenoiser(self.chain(labels=labels))
            sigmas = ode_likelihood.model_sigmas(denoiser, steps)
            result = self._averaged(lambda: ode_likelihood.ode_log_likelihood(
                denoiser, np.asarray(x, dtype=np.float64), sigmas, trace=trace, probes=probes, rng=rng))
        if log_det:
            result.values = result.values - log_det
            result.method += f", data coordinates (Σ log std = {log_det:.4f})"
        return result

    def save(self, path, meta: dict | None = None) -> None:
        """A checkpoint of the weights (the EMA too), the optimizer, the schedule and this bundle's settings;
        ``meta``: more JSON-able facts to store beside them (the command line reads e.g. ``image_shape``)."""
        step = 0 if self.optimizer is None else self.optimizer.steps
        checkpoint.save(path, self.model, optimizer=self.optimizer, ema=self.ema, step=step,
                        schedule=self.schedule, meta={**(meta or {}), **self.config})

    @classmethod
    def load(cls, path) -> "Diffusion":
        """The bundle stored by ``save`` (weights as trained; sampling uses the EMA when one was stored)."""
        ckpt = checkpoint.load(path)
        meta, model_config = ckpt.info.get("meta") or {}, ckpt.info.get("model_config")
        schedule_config = ckpt.info.get("schedule_config")
        if not isinstance(model_config, dict) or not isinstance(schedule_config, dict) or "objective" not in meta:
            raise ValueError(f"{path}: not a Diffusion checkpoint (no model, schedule or objective stored)")
        schedule_config = dict(schedule_config)
        T, name = schedule_config.pop("T"), schedule_config.pop("name")
        architecture = {k: v for k, v in model_config.items() if k not in ("data_dim", "out_dim")}
        self = cls(model_config["data_dim"], meta["objective"], T, name, schedule_config,
                   variance=meta.get("variance"), prediction=meta.get("prediction", "eps"),
                   min_snr_gamma=meta.get("min_snr_gamma"), label_dropout=meta.get("label_dropout", 0.1),
                   **{k: meta[k] for k in ("time_distribution", "logit_mean", "logit_std") if k in meta},
                   **architecture)
        ckpt.restore(self.model)
        if "ema/shadow" in ckpt.arrays:
            self.ema = EMA(self.model, ckpt.info.get("ema_decay", 0.999), warmup=ckpt.info.get("ema_warmup", True))
            ckpt.restore(self.model, ema=self.ema)
        return self
