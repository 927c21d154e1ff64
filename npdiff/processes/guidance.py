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
Both predictions come from one forward pass over 2N rows: [x_t; x_t] with labels [y; ∅].
"""

from __future__ import annotations

import numpy as np

from npdiff import backend


def check_labels(labels, n: int, n_classes: int):
    """``labels`` as a backend int64 array (N,) of classes 0..K−1, or a one-line ValueError saying what is
    wrong. Read on the host (labels come from the user: the check is made once, before any step)."""
    host = np.asarray(backend.to_numpy(labels) if not isinstance(labels, np.ndarray) else labels)
    if host.ndim != 1 or host.shape[0] != n:
        raise ValueError(f"labels must be a 1-D array of {n} class labels (one per row), got shape {host.shape}")
    if host.dtype.kind == "f" and np.all(np.isfinite(host)) and np.all(host == np.round(host)):
        host = host.astype(np.int64)  # 3.0 read from a CSV is the label 3
    if host.dtype.kind not in "iu":
        raise ValueError(f"labels must be whole numbers 0..{n_classes - 1}, got dtype {host.dtype}")
    if n and (host.min() < 0 or host.max() >= n_classes):
        bad = host[(host < 0) | (host >= n_classes)][0]
        raise ValueError(f"labels must lie in 0..{n_classes - 1} (the model has {n_classes} classes), got {bad}")
    return backend.asarray(host.astype(np.int64))


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


def guide(f_c, f_u, w: float):
    """f̃ = (1 + w) f_c − w f_u: the guided prediction from the conditional and unconditional ones.  -> (N, D)"""
    return (1.0 + w) * f_c - w * f_u
