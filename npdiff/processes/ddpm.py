"""DDPM (Ho et al. 2020): the denoising objective and the reverse process of a model parameterised through ε.

Shape glossary: N batch, D data dims, T diffusion steps. The forward process (q_sample, the posterior,
the timesteps) belongs to ``npdiff.processes.schedules.Schedule``; what the network predicts (ε, x_0 or v)
and the conversions between them to ``npdiff.processes.predictions``; sampling to ``npdiff.processes.sampling``.

    L_simple = mean_{n,d} (ε_θ(x_t, t) − ε)²,  x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε         (DDPM Eq. 14)
        dL/dε_θ = 2(ε_θ − ε)/(N·D)                                   (``losses.squared_error``)
    the network may predict ε, x_0, or v = √ᾱ_t ε − √(1−ᾱ_t) x_0 (Salimans & Ho 2022) instead; the loss is
    then the same squared error mean_{n,d} w_t (f_θ − target)² against that target.
    min-SNR-γ weighting (Hang et al. 2023, Eq. 8): the x_0-error weight min(SNR_t, γ), i.e.
        w_t = min(SNR_t, γ)/SNR_t for ε,  min(SNR_t, γ) for x_0,  min(SNR_t, γ)/(SNR_t + 1) for v
    reverse kernel p(x_{t−1}|x_t) = N(μ_θ, σ_t² I),
        μ_θ = (x_t − β_t/√(1−ᾱ_t) ε_θ)/√α_t                                         (DDPM Eq. 11)
        σ_t² = β̃_t ("fixed_small"), β_t ("fixed_large"), or learned in the range between them:
        log σ_θ² = v log β_t + (1 − v) log β̃_t,  v = (o + 1)/2                  (Nichol & Dhariwal 2021, Eq. 15)
    with x̂_0 clipped to (lo, hi) (``clip_x0``): μ_θ = μ̃_t(clip(x̂_0), x_t), the posterior mean of the
    clipped x̂_0 (DDPM Eq. 7), and DDIM's ε_θ is the ε consistent with it (improved-diffusion's sampler).
    One ancestral step (Algorithm 2) is this kernel, then x_{t−1} = μ_θ + σ_t z (``sampling.ancestral_step``).

The names: ``noise`` is the true ε drawn by the forward process; ``eps_theta`` is the network's prediction.
"""

from __future__ import annotations

from npdiff import backend
from npdiff.nn.losses import squared_error
from npdiff.nn.primitives import standard_normal
from npdiff.processes import predictions
from npdiff.processes.guidance import Guided, forward_dropping_labels
from npdiff.processes.predictions import PREDICTIONS  # noqa: F401  the command line's choices (npdiff.cli.args)
from npdiff.processes.schedules import Schedule

VARIANCES = ("fixed_small", "fixed_large", "learned_range")


def min_snr_weight(schedule: Schedule, prediction: str, t, gamma: float, like):
    """w_t of min-SNR-γ (module docstring) for each row, shaped (N, 1) to broadcast against ``like``."""
    snr = schedule.at("snr", t, like)  # (N, 1)
    clipped = backend.xp.minimum(snr, gamma)
    return clipped / {"eps": snr, "x0": 1.0, "v": snr + 1.0}[prediction]


def draw_inputs(schedule: Schedule, model, x0, rng, t=None, noise=None, first: int = 1):
    """A training batch's inputs: x0 on the backend in the model's dtype, t ~ U{first..T} and ε ~ N(0, I)
    drawn with ``rng`` unless given (given t and noise make a loss deterministic, for gradient checks).
    -> (x0 (N, D), t (N,), noise (N, D))"""
    if rng is None and (t is None or noise is None):
        raise ValueError("pass rng (a random generator) to draw t and the noise, or give both t= and noise=")
    x0 = backend.asarray(x0, dtype=getattr(model, "dtype", None))
    if t is None:
        t = schedule.sample_t(x0.shape[0], rng, first)
    if noise is None:
        noise = standard_normal(rng, x0.shape, dtype=x0.dtype)  # ε ~ N(0, I)
    return x0, schedule.as_timesteps(t), backend.asarray(noise, dtype=x0.dtype)  # a given t is checked first


def check_out_dim(model, factor: int, what: str) -> None:
    """Refuse a model whose output width is not ``factor``·D (D = its data dimension)."""
    config = getattr(model, "config", None)
    if config is not None and config["out_dim"] != factor * config["data_dim"]:
        widths = "D outputs (ε_θ)" if factor == 1 else f"{factor}·D outputs"
        raise ValueError(f"{what} needs a model with {widths}; this one has {config['out_dim']} outputs "
                         f"for D = {config['data_dim']}")


class EpsilonObjective:
    """DDPM's L_simple for a model f(x_t, t) of shape (N, D); the object ``train.fit`` drives.

    ``loss_and_backward(model, x0, rng)`` draws t ∈ {1..T} and ε ~ N(0, I) (or takes them given, for
    deterministic gradient checks), runs the forward pass, and ADDS dL/dθ into the model's ``grads``
    through ``model.backward`` (the caller zeroes them). Returns the loss, a 0-d backend array.
    prediction: what f predicts, "eps" (DDPM), "x0" or "v"; min_snr_gamma: None (uniform weights, L_simple)
    or γ of the min-SNR-γ weighting (Hang et al. use 5). A class-conditional model (``Denoiser(num_classes=K)``)
    takes the batch's labels ``y``; each is replaced by "no label" with probability ``label_dropout``
    (classifier-free guidance's training, ``npdiff.processes.guidance``).
    """

    out_factor = 1  # the model predicts one target: D outputs
    takes_labels = True  # ``train.fit`` may pass the batch's class labels as y

    def __init__(self, schedule: Schedule, prediction: str = "eps", min_snr_gamma: float | None = None,
                 label_dropout: float = 0.1) -> None:
        if min_snr_gamma is not None and not min_snr_gamma > 0:
            raise ValueError(f"min_snr_gamma must be > 0 (or None for uniform weights), got {min_snr_gamma!r}")
        if not 0 <= label_dropout < 1:
            raise ValueError(f"label_dropout must lie in [0, 1), got {label_dropout!r}")
        self.schedule, self.min_snr_gamma = schedule, min_snr_gamma
        self.prediction = predictions.check_prediction(prediction)
        self.label_dropout = float(label_dropout)
        self.config = {"objective": "epsilon", "prediction": prediction, "min_snr_gamma": min_snr_gamma,
                       "label_dropout": self.label_dropout, "schedule": dict(schedule.config)}

    def _loss(self, f_theta, x0, t, noise):
        """(loss, dL/df_θ): the mean of w_t (f_θ − target)² over N·D entries (w_t = 1 without min-SNR)."""
        target = predictions.target(self.schedule, self.prediction, x0, t, noise)  # (N, D)
        weight = None
        if self.min_snr_gamma is not None:
            weight = min_snr_weight(self.schedule, self.prediction, t, self.min_snr_gamma, f_theta)  # (N, 1)
        return squared_error(f_theta, target, weight)

    def check_model(self, model) -> None:
        check_out_dim(model, self.out_factor, "the ε objective")

    def loss(self, model, x0, rng=None, *, y=None, t=None, noise=None) -> float:
        """The loss alone (a forward pass, no gradient), as a Python float."""
        self.check_model(model)
        x0, t, noise = draw_inputs(self.schedule, model, x0, rng, t, noise)
        f_theta = forward_dropping_labels(model, self.schedule.q_sample(x0, t, noise), t, y, self.label_dropout, rng)
        return float(self._loss(f_theta, x0, t, noise)[0])

    def loss_and_backward(self, model, x0, rng=None, *, y=None, t=None, noise=None):
        """Forward, L_simple, and model.backward(dL/dε_θ).  x0 (N, D); y (N,) class labels, t (N,) and
        noise (N, D) optional.

        Returns the loss as a 0-d backend array: it is not read back to the host (``float()`` does that).
        """
        self.check_model(model)
        x0, t, noise = draw_inputs(self.schedule, model, x0, rng, t, noise)
        x_t = self.schedule.q_sample(x0, t, noise)  # (N, D)
        loss, d_f_theta = self._loss(forward_dropping_labels(model, x_t, t, y, self.label_dropout, rng), x0, t, noise)
        model.backward(d_f_theta, input_grad=False)  # training needs only dL/dθ
        return loss


def learned_range_log_var(schedule: Schedule, o, t):
    """(log σ_θ² (N, D), cache) from the variance half o (N, D): v log β_t + (1 − v) log β̃_t, v = (o + 1)/2.

    log β̃_t is ``posterior_log_var_clipped`` (β̃_1 = 0, so t = 1 uses log β̃_2), as in improved-diffusion.
    """
    log_max = backend.xp.log(schedule.at("betas", t, o))  # log β_t      (N, 1)
    log_min = schedule.at("posterior_log_var_clipped", t, o)  # log β̃_t  (N, 1)
    v = 0.5 * (o + 1.0)
    cache = 0.5 * (log_max - log_min)  # d log σ²/do = ½(log β_t − log β̃_t)
    return v * log_max + (1.0 - v) * log_min, cache


def learned_range_log_var_backward(cache, dlog_var):
    """dL/do (N, D) from dL/dlog σ_θ² (N, D)."""
    return dlog_var * cache


def mean_from_eps(schedule: Schedule, x_t, t, eps_theta):
    """μ_θ = (x_t − β_t/√(1−ᾱ_t) ε_θ)/√α_t, the mean of the reverse step (DDPM Eq. 11).  -> (N, D)

    It is the posterior mean μ̃_t(x̂_0, x_t) of the x̂_0 that ε_θ implies, written without 1/√ᾱ_t, which at
    ᾱ_t ≈ 0 (the cosine schedule's last step) would cancel catastrophically in float32.
    """
    coef = schedule.at("betas", t, x_t) / schedule.at("sqrt_one_minus_alpha_bar", t, x_t)  # β_t/√(1−ᾱ_t)  (N, 1)
    return (x_t - coef * eps_theta) / schedule.at("alphas", t, x_t) ** 0.5


def log_variance(schedule: Schedule, variance: str, t, o, like):
    """log σ_t² of the reverse step, broadcast to ``like`` (N, D): log β̃_t ("fixed_small"; t = 1 uses β̃_2,
    β̃_1 being 0), log β_t ("fixed_large"), or learned in the range between them from the variance half o."""
    if variance == "learned_range":
        log_var = learned_range_log_var(schedule, o, t)[0]  # (N, D)
    elif variance == "fixed_small":
        log_var = schedule.at("posterior_log_var_clipped", t, like)  # (N, 1)
    else:
        log_var = backend.xp.log(schedule.at("betas", t, like))  # (N, 1)
    return backend.xp.broadcast_to(log_var, like.shape)


class EpsilonChain:
    """The reverse process of a model parameterised through ε: ``kernel(x_t, t)`` is DDPM's Eq. 11 with a named
    variance. prediction: what the model outputs, "eps" (ε_θ itself), "x0" or "v" (x̂_0 and ε_θ converted
    from it, ``npdiff.processes.predictions``).

    variance: "fixed_small" σ_t² = β̃_t (t = 1 uses β̃_2, β̃_1 being 0), "fixed_large" σ_t² = β_t, or
    "learned_range" (a model with 2·D outputs, Nichol & Dhariwal). A fixed variance also works on a
    learned-range model (its variance half is ignored), which separates the mean's and the variance's
    share of the bound. clip_x0: None, or (lo, hi) to clip x̂_0 to the data's range; the mean is then the
    posterior mean of the clipped x̂_0. max_gain: the sampler refuses an unclipped chain whose steps amplify
    ε_θ's error more than this (``npdiff.processes.sampling``); None turns the check off. labels: for a
    class-conditional model, the class of each of the N samples (N,), or None for the unconditional model;
    guidance: w of classifier-free guidance, f̃ = (1 + w) f_c − w f_∅ on the network's prediction. With
    labels the chain asks ``guidance.Guided(model, labels, guidance)`` instead of the model itself.
    """

    predicts_eps = True  # DDIM can step this chain, and its error gain is checked before sampling

    def __init__(self, model, schedule: Schedule, variance: str = "fixed_small", *, clip_x0=None,
                 max_gain: float | None = 10.0, prediction: str = "eps", labels=None, guidance: float = 0.0) -> None:
        if variance not in VARIANCES:
            raise ValueError(f"unknown variance {variance!r}; choose one of {', '.join(VARIANCES)}")
        config = getattr(model, "config", None)  # oracles (npdiff.processes.oracles.GaussianEpsilon) have none
        if config is not None:
            if variance == "learned_range":
                check_out_dim(model, 2, "the learned-range variance")
            elif config["out_dim"] not in (config["data_dim"], 2 * config["data_dim"]):
                check_out_dim(model, 1, f"variance {variance!r}")
        if clip_x0 is not None:
            lo, hi = (float(v) for v in clip_x0)
            if not lo < hi:
                raise ValueError(f"clip_x0 must be a range (lo, hi) with lo < hi, got {clip_x0!r}")
            clip_x0 = (lo, hi)
        if labels is None and guidance != 0:
            raise ValueError("guidance needs labels: the class of each sample")
        self.network = model if labels is None else Guided(model, labels, guidance)  # what the chain asks
        self.model, self.schedule, self.variance = model, schedule, variance
        self.clip_x0, self.max_gain = clip_x0, max_gain
        self.prediction = predictions.check_prediction(prediction)
        self.through_x0 = prediction != "eps" or clip_x0 is not None  # the mean from x̂_0 (``kernel`` says why)
        self.data_dim = int(config["data_dim"]) if config is not None else int(model.data_dim)
        self.dtype = getattr(model, "dtype", None) or backend.xp.dtype("float64")

    def _forward(self, x_t, t):
        """The network's output at (x_t, t) split into f_θ (N, D) and the variance half (N, D) or None."""
        out = self.network.forward(x_t, self.schedule.as_timesteps(t))  # (N, D) or (N, 2D)
        d = self.data_dim
        return out[:, :d], (out[:, d:] if out.shape[1] == 2 * d else None)

    def x0_hat(self, x_t, t, f_theta):
        """x̂_0 (N, D) from the network's prediction f_θ, clipped to ``clip_x0`` when the chain has one."""
        x0_hat = predictions.x0_hat(self.schedule, self.prediction, x_t, t, f_theta)
        return x0_hat if self.clip_x0 is None else backend.xp.clip(x0_hat, *self.clip_x0)

    def kernel(self, x_t, t):
        """(mean, log_var), each (N, D), of p(x_{t−1}|x_t) = N(μ_θ, σ_t² I).  x_t (N, D), t (N,).

            μ_θ = (x_t − β_t/√(1−ᾱ_t) ε_θ)/√α_t  (DDPM Eq. 11),   log σ_t² of the chain's variance.
        A chain through x̂_0 (the model predicts x_0 or v, or x̂_0 is clipped) forms μ_θ as the posterior mean
        μ̃_t(x̂_0, x_t) of Eq. 7 instead: the same mean, but at the cosine schedule's last step (√α_T ≈ 0.03)
        Eq. 11 would divide the cancellation x_t − β_t/√(1−ᾱ_t) ε_θ, with ε_θ converted from x̂_0 or v, by
        √α_T (float32, cosine T = 1000: a relative error of 3e-4 at t = T, against 3e-7 for μ̃_t).
        """
        x_t = x_t.astype(self.dtype, copy=False)
        f_theta, o = self._forward(x_t, t)
        if self.through_x0:
            mean = self.schedule.q_posterior(self.x0_hat(x_t, t, f_theta), x_t, t)[0]  # μ̃_t(x̂_0, x_t)
        else:
            mean = mean_from_eps(self.schedule, x_t, t, f_theta)  # Eq. 11, f_θ = ε_θ
        return mean, log_variance(self.schedule, self.variance, t, o, x_t)

    def predict(self, x_t, t):
        """(x̂_0, ε_θ), each (N, D), for DDIM; with ``clip_x0``, x̂_0 is clipped and ε_θ made consistent with it."""
        x_t = x_t.astype(self.dtype, copy=False)
        f_theta = self._forward(x_t, t)[0]
        if self.clip_x0 is not None:
            x0_hat = self.x0_hat(x_t, t, f_theta)
            return x0_hat, self.schedule.eps_from_x0(x_t, t, x0_hat)
        return self.x0_hat(x_t, t, f_theta), predictions.eps_theta(self.schedule, self.prediction, x_t, t, f_theta)
