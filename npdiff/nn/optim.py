"""Adam and AdamW, global gradient-norm clipping, learning-rate schedules, and an EMA of the weights.

Shape glossary: P, the number of scalar parameters; every array here is a (P,) flat buffer
(``npdiff.nn.flat``), so each update is a handful of vectorised calls whatever the model's depth.

Adam (Kingma & Ba 2015, Algorithm 1), step k with gradient g:
    m ← β1 m + (1 − β1) g,   v ← β2 v + (1 − β2) g²
    θ ← θ − lr · m̂ / (√v̂ + ε),   m̂ = m/(1 − β1^k),  v̂ = v/(1 − β2^k)
  computed as θ ← θ − α_k·m/(√v + ε̂), α_k = lr·√(1 − β2^k)/(1 − β1^k), ε̂ = ε·√(1 − β2^k), the same
  update reordered as the paper suggests (Section 2), with two passes over (P,) fewer
AdamW (Loshchilov & Hutter 2019) first decays the weights, decoupled from g: θ ← θ(1 − lr·λ).

``Adam.update`` and the EMA's update are these lines. ``step`` runs them block by block of the flat buffers
(``primitives.blockwise``), each block small enough to stay in the cache, with one scratch buffer for the
temporaries: the same numbers, in less than half the time for a model of a million parameters or more.
The training loop's gradient step (``npdiff.training.loop.update``: clip ‖g‖, Adam, the EMA) is one such
pass, ``step(lr, grad_scale=c, ema=ema)``: each block is clipped, updated and averaged while it is in the
cache, instead of three passes over buffers of P numbers.
"""

from __future__ import annotations

import math

from npdiff import backend
from npdiff.nn.flat import flatten
from npdiff.nn.primitives import adam_step_, blockwise, moving_average_


class Adam:
    """Adam on a model's flat buffers.  ``step(lr=None)`` applies one update (lr overrides)."""

    weight_decay = 0.0

    def __init__(self, model, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8) -> None:
        if lr <= 0 or not 0 <= betas[0] < 1 or not 0 <= betas[1] < 1 or eps <= 0:
            raise ValueError(f"invalid Adam settings lr={lr}, betas={betas}, eps={eps}")
        xp = backend.xp
        self.params, self.grads = flatten(model)  # θ and g, the model's flat buffers  (P,)
        self.lr, self.betas, self.eps = float(lr), (float(betas[0]), float(betas[1])), float(eps)
        self.m = xp.zeros_like(self.params)  # first moment, E[g]    (P,)
        self.v = xp.zeros_like(self.params)  # second moment, E[g²]  (P,)
        self.steps = 0  # k, the number of updates taken

    def step(self, lr: float | None = None, *, grad_scale=None, ema=None) -> None:
        """One update of θ from the gradient g in ``grads``.

        grad_scale: c, applied first, g ← c·g (gradient clipping's factor, ``clip_factor``; None: g as it is).
        ema: an ``EMA`` of this model's weights, updated after θ in the same pass, θ̄ ← d θ̄ + (1 − d) θ. The
        result is that of ``g *= c``, ``step(lr)``, ``ema.update()`` in turn, to the bit (tested).
        """
        if ema is not None and ema.params is not self.params:
            raise ValueError("the EMA averages another model's weights than this optimizer updates")
        lr = self.lr if lr is None else float(lr)
        b2 = self.betas[1]
        self.steps += 1
        k = self.steps
        # θ ← θ − lr·m̂/(√v̂ + ε), m̂ = m/(1 − β1^k), v̂ = v/(1 − β2^k), in Kingma & Ba's own reordering
        # (Section 2): θ ← θ − α_k·m/(√v + ε̂), α_k = lr·√(1 − β2^k)/(1 − β1^k), ε̂ = ε·√(1 − β2^k)
        alpha = lr * math.sqrt(1 - b2**k) / (1 - self.betas[0] ** k)
        eps_hat = self.eps * math.sqrt(1 - b2**k)
        shrink = 1 - lr * self.weight_decay
        decay = None if ema is None else ema.current_decay()

        def block(theta, g, m, v, *rest):  # one block of each flat buffer (and of the EMA's), and the scratch
            *shadow, scratch = rest
            if grad_scale is not None:
                g *= grad_scale  # clipping: g ← c·g
            self.update(theta, g, m, v, alpha, eps_hat, shrink, scratch)
            if shadow:
                ema.average(shadow[0], theta, decay, scratch)  # θ̄ ← d θ̄ + (1 − d) θ

        # the lines above, block by block of the flat buffers (``primitives.blockwise``: the same numbers)
        blockwise(block, self.params, self.grads, self.m, self.v, *([] if ema is None else [ema.shadow]))
        if ema is not None:
            ema.updates += 1

    def update(self, theta, g, m, v, alpha: float, eps_hat: float, shrink: float = 1.0, scratch=None) -> None:
        """One Adam(W) update of θ, m and v in place from the gradient g.  theta, g, m, v (P,) (or one block of each)

        alpha, eps_hat: α_k and ε̂ of step k (``step``); shrink: AdamW's 1 − lr·λ; scratch: a buffer for
        the temporaries (None allocates them).
        """
        b1, b2 = self.betas
        if self.weight_decay:
            theta *= shrink  # AdamW: θ ← θ(1 − lr·λ)
        moving_average_(m, g, b1, scratch)  # m ← β1 m + (1 − β1) g
        g_sq = backend.xp.multiply(g, g, out=scratch)  # g²
        moving_average_(v, g_sq, b2, scratch)  # v ← β2 v + (1 − β2) g²
        adam_step_(theta, m, v, alpha, eps_hat, scratch)  # θ ← θ − α_k·m/(√v + ε̂)

    def state_dict(self) -> dict:
        """Arrays and counters needed to resume exactly (host NumPy arrays)."""
        return {"m": backend.to_numpy(self.m).copy(), "v": backend.to_numpy(self.v).copy(),
                "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        for key in ("m", "v"):
            if tuple(state[key].shape) != tuple(self.m.shape):
                raise ValueError(f"optimizer state {key!r} has shape {state[key].shape}, expected {self.m.shape}")
            getattr(self, key)[...] = backend.asarray(state[key])
        self.steps = int(state["steps"])


class AdamW(Adam):
    """Adam with decoupled weight decay λ (``weight_decay``, PyTorch's default 0.01)."""

    def __init__(self, model, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01) -> None:
        super().__init__(model, lr, betas, eps)
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        self.weight_decay = float(weight_decay)


def grad_norm(grads):
    """‖g‖₂ of the flat gradient buffer (P,), in float64 (the sum of squares accumulated in g's dtype).

    A 0-d backend array, so nothing is read back on a device; on NumPy a float64 scalar, which is a float.
    """
    xp = backend.xp
    return xp.sqrt(grads.dot(grads).astype(xp.float64))


def clip_grad_norm(grads, max_norm: float, norm=None):
    """Scale the flat gradient so that ‖g‖₂ ≤ max_norm (PyTorch's rule: g ← g·max_norm/(‖g‖ + 1e−6) when
    ‖g‖ > max_norm), in place.

    norm: ‖g‖₂ if the caller has it already (``grad_norm``; the training loop logs it). A host number (a
    float; NumPy's float64 is one) is compared on the host; a 0-d device array on the device, so that
    nothing is read back: g is scaled by the factor or by 1. Either way the factor is rounded to g's dtype
    before the product (as PyTorch does in float32), so both give the same numbers to the bit (tested).
    Returns the norm before clipping, so callers can log it; clipping is never silent.
    """
    norm = grad_norm(grads) if norm is None else norm
    factor = clip_factor(norm, max_norm, grads.dtype)
    if factor is not None:
        grads *= factor
    return norm


def clip_factor(norm, max_norm: float, dtype):
    """c such that g ← c·g clips ‖g‖₂ = ``norm`` to ``max_norm`` (``clip_grad_norm``'s rule), in ``dtype``.

    A host norm (a float) gives max_norm/(‖g‖ + 1e−6) when ‖g‖ > max_norm, else None: nothing to scale. A 0-d
    device array gives a 0-d array, that factor or 1, decided on the device (nothing is read back).
    """
    if isinstance(norm, float):
        return backend.xp.dtype(dtype).type(max_norm / (norm + 1e-6)) if norm > max_norm else None
    xp = backend.xp
    return xp.where(norm > max_norm, max_norm / (norm + 1e-6), 1.0).astype(dtype)  # decided on the device


def _check_schedule(total_steps: int, warmup: int = 0) -> None:
    if int(total_steps) < 1 or not 0 <= int(warmup) <= int(total_steps):
        raise ValueError(f"an lr schedule needs total_steps >= 1 and 0 <= warmup <= total_steps, "
                         f"got total_steps={total_steps}, warmup={warmup}")


def constant_lr(lr: float):
    """lr(k) = lr."""
    return lambda step: lr


def linear_decay_lr(lr: float, total_steps: int, final: float = 0.0):
    """lr(k) = lr + (final − lr)·k/total_steps, held at ``final`` after the end."""
    _check_schedule(total_steps)
    return lambda step: lr + (final - lr) * min(step, total_steps) / total_steps


def cosine_lr(lr: float, total_steps: int, final: float = 0.0, warmup: int = 0):
    """Linear warm-up over ``warmup`` steps, then lr(k) = final + ½(lr − final)(1 + cos(π·p)), p ∈ [0, 1]."""
    _check_schedule(total_steps, warmup)

    def schedule(step):
        if step < warmup:
            return lr * (step + 1) / warmup
        p = min(step - warmup, total_steps - warmup) / max(1, total_steps - warmup)
        return final + 0.5 * (lr - final) * (1 + math.cos(math.pi * p))

    return schedule


class EMA:
    """Exponential moving average of a model's weights: θ̄ ← d_n θ̄ + (1 − d_n) θ after the n-th update.

    d_n = decay, or with ``warmup`` (the default) d_n = min(decay, (1 + n)/(10 + n)) (TensorFlow's
    ``ExponentialMovingAverage`` with ``num_updates``): without it, θ̄ keeps a weight decay^n of the
    random initial weights (0.22 after 1500 steps at 0.999), which spoils the average of a short run.
    ``swap()`` exchanges the live and averaged weights in place (call it again to swap back); sampling
    from the averaged weights is ``ema.swap(); sample(…); ema.swap()``.
    """

    def __init__(self, model, decay: float = 0.999, warmup: bool = True) -> None:
        if not 0 <= decay < 1:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.params, _ = flatten(model)  # θ, the model's flat buffer  (P,)
        self.decay, self.warmup = float(decay), bool(warmup)
        self.shadow = self.params.copy()  # θ̄  (P,)
        self.updates = 0  # n, the updates so far (checkpoints keep it)

    def current_decay(self) -> float:
        """d_n for the next update: decay, or min(decay, (1 + n)/(10 + n)) with warmup."""
        n = self.updates
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    def update(self) -> None:
        """One update after the optimizer's step (``Adam.step(ema=…)`` takes it in the optimizer's pass)."""
        decay = self.current_decay()
        # block by block (``primitives.blockwise``: the same numbers)
        blockwise(lambda shadow, theta, scratch: self.average(shadow, theta, decay, scratch), self.shadow, self.params)
        self.updates += 1

    @staticmethod
    def average(shadow, theta, decay: float, scratch=None) -> None:
        """θ̄ ← d·θ̄ + (1 − d)·θ in place.  shadow, theta (P,) (or one block of each)"""
        moving_average_(shadow, theta, decay, scratch)

    def swap(self) -> None:
        live = self.params.copy()
        self.params[...] = self.shadow
        self.shadow[...] = live
