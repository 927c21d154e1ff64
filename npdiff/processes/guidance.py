"""Class labels and classifier-free guidance (Ho & Salimans 2022).

Shape glossary: N rows, K classes, D data dims.

One network learns both the conditional and the unconditional model. The denoiser gets a class label
y ∈ {0..K−1} through a learned embedding with one extra row, the null label ∅ = K ("no label",
``embeddings.LabelEmbedding``). Training replaces each row's label by ∅ with probability p
(``label_dropout``, 0.1 by default), so ε_θ(x_t, t, ∅) learns the unconditional model.

Sampling with guidance scale w combines the two predictions at every step:

    ε̃ = (1 + w) ε_θ(x_t, t, y) − w ε_θ(x_t, t, ∅)                 (Ho & Salimans 2022, Eq. 6)

The other common convention (GLIDE, Stable Diffusion, diffusers' ``guidance_scale`` s) writes
ε̃ = ε_∅ + s (ε_c − ε_∅): the same formula with s = 1 + w. So w = 0 (s = 1) is the plain conditional
model, w = −1 (s = 0) the unconditional one, and w > 0 pushes samples towards what makes y likely
(sharper, more typical of the class, less diverse). A network predicting x̂_0 or v instead of ε is
guided the same way: at fixed x_t both are affine in ε (``Schedule.x0_from_v`` …) and the weights
(1 + w) and −w sum to 1, so combining the two x̂_0 (or v) predictions gives exactly the x̂_0 (or v) of ε̃.
Both predictions come from one forward pass over 2N rows: [x_t; x_t] with labels [y; ∅] (``Guided``).

``Guided`` wraps a class-conditional model the way ``conditioning.Conditioned`` wraps a chain: it answers
``forward(x_t, t)`` like the model it wraps, with the guided prediction, so any chain built on a model
(``ddpm.EpsilonChain``) samples the guided model unchanged.
"""

from __future__ import annotations

import numpy as np

from npdiff import backend
from npdiff.nn.losses import check_labels
from npdiff.nn.denoiser import Denoiser


def sample_labels(labels, n: int, n_classes: int):
    """The N samples' labels from ``labels``: one class for all (an int), one per sample (N,), or
    ``"balanced"``: classes 0..K−1 in turn (n/K of each).  -> backend int64 (N,)"""
    if isinstance(labels, str):
        if labels != "balanced":
            raise ValueError(f"labels must be a class, an array of classes, or 'balanced'; got {labels!r}")
        return backend.asarray(np.arange(n, dtype=np.int64) % n_classes)
    if np.ndim(labels) == 0:
        return check_labels(np.full(n, labels), n, n_classes)
    return check_labels(labels, n, n_classes)


def drop_labels(y, p: float, null: int, rng):
    """Each row's label replaced by the null label with probability p: y_n ← ∅ if u_n < p, u_n ~ U(0, 1).  -> (N,)"""
    if p == 0:
        return y
    u = rng.random(y.shape[0])
    return backend.xp.where(u < p, null, y)


def forward_dropping_labels(model, x_t, t, y, p: float, rng):
    """f_θ(x_t, t, y) for training with classifier-free guidance: y's labels dropped at rate p (``drop_labels``);
    given draws (no rng) keep every label, and an unconditional model (y None) takes no y.  -> (N, out)"""
    if y is None:
        return model.forward(x_t, t)
    if rng is not None:
        y = drop_labels(y, p, model.label_emb.null, rng)
    return model.forward(x_t, t, y)


def guide(f_c, f_u, w: float):
    """f̃ = (1 + w) f_c − w f_u: the guided prediction from the conditional and unconditional ones.  -> (N, D)"""
    return (1.0 + w) * f_c - w * f_u


class Guided:
    """A class-conditional model asked about fixed labels, with classifier-free guidance of scale w.

    ``forward(x_t, t)`` -> (N, O): the guided prediction f̃ = (1 + w) f_c − w f_∅ in the first D outputs, from
    one forward pass of 2N rows [x_t; x_t] labelled [y; ∅] (read as shared rows, ``Denoiser.forward``); further
    outputs (a learned variance half) are the conditional model's. w = 0 is the conditional model alone, one pass of N rows.
    model: a Denoiser(num_classes=K); labels: the class of each of the N samples (N,), checked here.
    """

    def __init__(self, model, labels, w: float = 0.0) -> None:
        if getattr(model, "label_emb", None) is None:
            raise ValueError("labels need a class-conditional model (Denoiser(num_classes=K))")
        self.model, self.w = model, float(w)
        self.labels = check_labels(labels, len(labels), model.label_emb.n_classes)  # (N,)

    def forward(self, x_t, t):
        """The guided output (N, O) at x_t (N, D) and backend timesteps t (N,)."""
        xp, n, d = backend.xp, x_t.shape[0], x_t.shape[1]
        if self.labels.shape[0] != n:
            raise ValueError(f"the chain has {self.labels.shape[0]} labels for {n} samples")
        if self.w == 0:
            return self.model.forward(x_t, t, self.labels)
        null = xp.full(n, self.model.label_emb.null, dtype="int64")  # ∅
        t2, y2 = xp.concatenate([t, t]), xp.concatenate([self.labels, null])
        if isinstance(self.model, Denoiser):
            # [x_t; x_t] as shared rows (the first product with x_t is computed once), and guidance taken on the
            # features: the output layer is affine, so (1 + w) f_c − w f_∅ = head((1 + w) h_c − w h_∅), N rows
            rows = xp.arange(n)
            h = self.model.features(x_t, t2, y2, x_rows=xp.concatenate([rows, rows]))  # [h_c; h_∅]  (2N, H)
            out = self.model.head(guide(h[:n], h[n:], self.w), x_t)  # f̃  (N, O)
            if out.shape[1] > d:
                out[:, d:] = self.model.head(h[:n], x_t)[:, d:]  # the conditional model's variance half
            return out
        both = self.model.forward(xp.concatenate([x_t, x_t]), t2, y2)  # any model with forward(x, t, y) (the oracles)
        out = both[:n].copy()  # conditional: its variance half is the one used
        out[:, :d] = guide(both[:n, :d], both[n:, :d], self.w)
        return out
