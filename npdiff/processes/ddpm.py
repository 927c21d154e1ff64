"""DDPM (Ho et al. 2020): the denoising objective and the reverse process of a model parameterised through ε.

Shape glossary: N batch, D data dims, T diffusion steps. The forward process (q_sample, the posterior,
x̂_0, the timesteps) belongs to ``npdiff.processes.schedules.Schedule``; sampling to ``npdiff.processes.sampling``.

    L_simple = mean_{n,d} (ε_θ(x_t, t) − ε)²,  x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε         (DDPM Eq. 14)
        dL/dε_θ = 2(ε_θ − ε)/(N·D)
    the network may predict ε, x_0, or v = √ᾱ_t ε − √(1−ᾱ_t) x_0 (Salimans & Ho 2022) instead; the loss is
    then mean_{n,d} w_t (f_θ − target)², and ε_θ is derived from f_θ by the schedule's conversions.
    min-SNR-γ weighting (Hang et al. 2023, Eq. 8): the x_0-error weight min(SNR_t, γ), i.e.
        w_t = min(SNR_t, γ)/SNR_t for ε,  min(SNR_t, γ) for x_0,  min(SNR_t, γ)/(SNR_t + 1) for v
    reverse kernel p(x_{t−1}|x_t) = N(μ_θ, σ_t² I),
        μ_θ = (x_t − β_t/√(1−ᾱ_t) ε_θ)/√α_t                                         (DDPM Eq. 11)
        σ_t² = β̃_t ("fixed_small"), β_t ("fixed_large"), or learned in the range between them:
        log σ_θ² = v log β_t + (1 − v) log β̃_t,  v = (o + 1)/2                  (Nichol & Dhariwal 2021, Eq. 15)
    with x̂_0 clipped to (lo, hi) (``clip_x0``): μ_θ = μ̃_t(clip(x̂_0), x_t) and ε_θ replaced by the ε
    consistent with the clipped x̂_0 (improved-diffusion's sampler).

The names: ``noise`` is the true ε drawn by the forward process; ``eps_theta`` is the network's prediction.
"""

from __future__ import annotations

from npdiff import backend
from npdiff.processes.guidance import check_labels, drop_labels, guide
from npdiff.processes.schedules import Schedule

VARIANCES = ("fixed_small", "fixed_large", "learned_range")
PREDICTIONS = ("eps", "x0", "v")  # what the network outputs


def check_prediction(prediction: str) -> str:
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; choose one of {', '.join(PREDICTIONS)}")
    return prediction


def prediction_target(schedule: Schedule, prediction: str, x0, t, noise):
    """What the network should output for x_t = q_sample(x0, t, noise): ε, x_0 or v.  -> (N, D)"""
    if prediction == "eps":
        return noise
    return x0 if prediction == "x0" else schedule.v_target(x0, t, noise)


def min_snr_weight(schedule: Schedule, prediction: str, t, gamma: float, like):
    """w_t of min-SNR-γ (module docstring) for each row, shaped (N, 1) to broadcast against ``like``."""
    snr = schedule.at("snr", t, like)  # (N, 1)
    clipped = backend.xp.minimum(snr, gamma)
    return clipped / {"eps": snr, "x0": 1.0, "v": snr + 1.0}[prediction]


def epsilon_loss(eps_theta, noise):
    """L = mean (ε_θ − ε)² over all N·D entries, and dL/dε_θ = 2(ε_θ − ε)/(N·D).  -> (0-d array, (N, D))

    The loss stays on the backend (a GPU would sync to read it); ``float(loss)`` reads it.
    """
    diff = eps_theta - noise  # (N, D)
    loss = (diff * diff).mean()
    return loss, diff * (2.0 / diff.size)


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
        noise = rng.standard_normal(x0.shape, dtype=x0.dtype)
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
        self.schedule, self.prediction, self.min_snr_gamma = schedule, check_prediction(prediction), min_snr_gamma
        self.label_dropout = float(label_dropout)
        self.config = {"objective": "epsilon", "prediction": prediction, "min_snr_gamma": min_snr_gamma,
                       "label_dropout": self.label_dropout, "schedule": dict(schedule.config)}

    def _loss(self, f_theta, x0, t, noise):
        """(loss, dL/df_θ): the mean of w_t (f_θ − target)² over N·D entries (w_t = 1 without min-SNR)."""
        target = prediction_target(self.schedule, self.prediction, x0, t, noise)
        if self.min_snr_gamma is None:
            return epsilon_loss(f_theta, target)
        weight = min_snr_weight(self.schedule, self.prediction, t, self.min_snr_gamma, f_theta)  # (N, 1)
        diff = f_theta - target  # (N, D)
        return (weight * diff * diff).mean(), weight * diff * (2.0 / diff.size)

    def check_model(self, model) -> None:
        check_out_dim(model, self.out_factor, "the ε objective")

    def _forward(self, model, x_t, t, y, rng):
        """f_θ(x_t, t, y) with y's labels dropped at rate ``label_dropout`` (given draws: t and noise, no rng,
        keep every label); an unconditional model takes no y."""
        if y is None:
            return model.forward(x_t, t)
        if rng is not None:
            y = drop_labels(y, self.label_dropout, model.label_emb.null, rng)
        return model.forward(x_t, t, y)

    def loss(self, model, x0, rng=None, *, y=None, t=None, noise=None) -> float:
        """The loss alone (a forward pass, no gradient), as a Python float."""
        self.check_model(model)
        x0, t, noise = draw_inputs(self.schedule, model, x0, rng, t, noise)
        f_theta = self._forward(model, self.schedule.q_sample(x0, t, noise), t, y, rng)
        return float(self._loss(f_theta, x0, t, noise)[0])

    def loss_and_backward(self, model, x0, rng=None, *, y=None, t=None, noise=None):
        """Forward, L_simple, and model.backward(dL/dε_θ).  x0 (N, D); y (N,) class labels, t (N,) and
        noise (N, D) optional.

        Returns the loss as a 0-d backend array: it is not read back to the host (``float()`` does that).
        """
        self.check_model(model)
        x0, t, noise = draw_inputs(self.schedule, model, x0, rng, t, noise)
        x_t = self.schedule.q_sample(x0, t, noise)  # (N, D)
        loss, d_f_theta = self._loss(self._forward(model, x_t, t, y, rng), x0, t, noise)
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


class EpsilonChain:
    """The reverse process of a model parameterised through ε: ``kernel(x_t, t)`` with μ_θ from ε_θ and a named
    variance. prediction: what the model outputs, "eps" (ε_θ itself), "x0" or "v" (ε_θ derived from it).

    variance: "fixed_small" σ_t² = β̃_t (t = 1 uses β̃_2, β̃_1 being 0), "fixed_large" σ_t² = β_t, or
    "learned_range" (a model with 2·D outputs, Nichol & Dhariwal). A fixed variance also works on a
    learned-range model (its variance half is ignored), which separates the mean's and the variance's
    share of the bound. clip_x0: None, or (lo, hi) to clip x̂_0 to the data's range before the mean is
    formed. max_gain: the sampler refuses an unclipped chain whose steps amplify ε_θ's error more than
    this (``npdiff.processes.sampling``); None turns the check off. labels: for a class-conditional model, the
    class of each of the N samples (N,) (checked where they enter, ``guidance.sample_labels``), or None
    for the unconditional model; guidance: w of classifier-free guidance, f̃ = (1 + w) f_c − w f_∅ on
    the network's prediction (``npdiff.processes.guidance``; the variance half stays the conditional one's).
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
        if labels is not None and getattr(model, "label_emb", None) is None:
            raise ValueError("labels need a class-conditional model (Denoiser(num_classes=K))")
        if labels is not None:
            labels = check_labels(labels, len(labels), model.label_emb.n_classes)
        self.labels, self.guidance = labels, float(guidance)
        self.model, self.schedule, self.variance = model, schedule, variance
        self.clip_x0, self.max_gain, self.prediction = clip_x0, max_gain, check_prediction(prediction)
        self.data_dim = int(config["data_dim"]) if config is not None else int(model.data_dim)
        self.dtype = getattr(model, "dtype", None) or backend.xp.dtype("float64")

    def _forward(self, x_t, t):
        """The network's output split into f_θ (N, D) and the variance half (N, D) or None; guided when the
        chain has labels and a guidance scale: one forward pass of 2N rows, [x_t; x_t] labelled [y; ∅]."""
        t = self.schedule.as_timesteps(t)
        if self.labels is None:
            out = self.model.forward(x_t, t)
        elif self.guidance == 0:
            out = self.model.forward(x_t, t, self._labels(x_t))
        else:
            xp, n = backend.xp, x_t.shape[0]
            null = xp.full(n, self.model.label_emb.null, dtype="int64")
            both = self.model.forward(xp.concatenate([x_t, x_t]), xp.concatenate([t, t]),
                                      xp.concatenate([self._labels(x_t), null]))  # (2N, O)
            out = both[:n].copy()  # conditional: its variance half is the one used
            out[:, :self.data_dim] = guide(both[:n, :self.data_dim], both[n:, :self.data_dim], self.guidance)
        d = self.data_dim
        return out[:, :d], (out[:, d:] if out.shape[1] == 2 * d else None)

    def _labels(self, x_t):
        if self.labels.shape[0] != x_t.shape[0]:
            raise ValueError(f"the chain has {self.labels.shape[0]} labels for {x_t.shape[0]} samples")
        return self.labels

    def _x0_and_eps(self, x_t, t, f_theta):
        """(x̂_0, ε_θ) from the network's prediction f_θ, each (N, D), unclipped."""
        schedule = self.schedule
        if self.prediction == "eps":
            return schedule.predict_x0(x_t, t, f_theta), f_theta
        if self.prediction == "x0":
            return f_theta, schedule.eps_from_x0(x_t, t, f_theta)
        return schedule.x0_from_v(x_t, t, f_theta), schedule.eps_from_v(x_t, t, f_theta)

    def predict(self, x_t, t):
        """(x̂_0, ε_θ), each (N, D); with ``clip_x0``, x̂_0 is clipped and ε_θ made consistent with it."""
        x_t = x_t.astype(self.dtype, copy=False)
        x0_hat, eps_theta = self._x0_and_eps(x_t, t, self._forward(x_t, t)[0])
        if self.clip_x0 is not None:
            x0_hat = backend.xp.clip(x0_hat, *self.clip_x0)
            eps_theta = self.schedule.eps_from_x0(x_t, t, x0_hat)
        return x0_hat, eps_theta

    def kernel(self, x_t, t):
        """(mean, log_var), each (N, D), of p(x_{t−1}|x_t) = N(μ_θ, σ_t²).  x_t (N, D), t (N,)."""
        x_t = x_t.astype(self.dtype, copy=False)
        f_theta, o = self._forward(x_t, t)
        if self.clip_x0 is None and self.prediction == "eps":
            mean = self.schedule.posterior_mean_from_eps(x_t, t, f_theta)
        else:  # μ̃_t(x̂_0, x_t), x̂_0 clipped when asked
            x0_hat = self._x0_and_eps(x_t, t, f_theta)[0]
            if self.clip_x0 is not None:
                x0_hat = backend.xp.clip(x0_hat, *self.clip_x0)
            mean = self.schedule.q_posterior(x0_hat, x_t, t)[0]
        if self.variance == "learned_range":
            log_var = learned_range_log_var(self.schedule, o, t)[0]
        elif self.variance == "fixed_small":
            log_var = self.schedule.at("posterior_log_var_clipped", t, x_t)
        else:
            log_var = backend.xp.log(self.schedule.at("betas", t, x_t))
        return mean, backend.xp.broadcast_to(log_var, mean.shape)
