"""The losses and their gradients: the squared error of a regression target (the diffusion objectives'),
and softmax cross-entropy for classification with a numerically stable log-softmax.

Shape glossary: N batch, D outputs per row, K classes. ``logits`` z (N, K) are unnormalised scores;
``labels`` y (N,) are integers in 0..K−1.

Softmax and its logarithm (Bishop 2006, "Pattern Recognition and Machine Learning", §4.3.4;
Goodfellow, Bengio & Courville 2016, "Deep Learning", §6.2.2.3):

    softmax(z)_k = exp(z_k) / Σ_j exp(z_j)
    log softmax(z)_k = z_k − log Σ_j exp(z_j) = (z_k − m) − log Σ_j exp(z_j − m),   m = max_j z_j

The second form is the same number for any m; with m the row maximum every exp(z_j − m) ≤ 1 (no
overflow) and the largest is exactly 1 (the sum cannot underflow to 0, so the log is finite).

The mean cross-entropy of the labels under the softmax, and its gradient:

    L = −(1/N) Σ_n log softmax(z_n)_{y_n}
    ∂L/∂z_{nk} = (softmax(z_n)_k − 1[k = y_n]) / N

The squared error of predictions f (N, D) against targets y (N, D), with optional per-row weights w_n:

    L = (1/(N·D)) Σ_{n,d} w_n (f_nd − y_nd)²,   ∂L/∂f_nd = 2 w_n (f_nd − y_nd) / (N·D)     (w_n = 1 unweighted)
"""

from __future__ import annotations

import numpy as np

from npdiff import backend


def squared_error(pred, target, weight=None):
    """L = mean_{n,d} w_n (pred − target)² over all N·D entries, and dL/dpred = 2 w_n (pred − target)/(N·D).

    pred, target (N, D); weight: None (w_n = 1) or per-row weights (N, 1). -> (0-d array, (N, D))
    The loss stays on the backend (a GPU would sync to read it); ``float(loss)`` reads it.
    """
    diff = pred - target  # (N, D)
    weighted = diff if weight is None else weight * diff  # w_n (pred − target)   (N, D)
    return (weighted * diff).mean(), weighted * (2.0 / diff.size)


def log_softmax(logits):
    """log softmax over the last axis, computed as (z − m) − log Σ exp(z − m), m the row maximum.  (N, K) -> (N, K)"""
    xp = backend.xp
    shifted = logits - logits.max(axis=-1, keepdims=True)  # z − m, every entry ≤ 0           (N, K)
    return shifted - xp.log(xp.exp(shifted).sum(axis=-1, keepdims=True))  # (z − m) − log Σ e^(z−m)


def softmax(logits):
    """softmax over the last axis, exp(log_softmax(z)): rows are probabilities summing to 1.  (N, K) -> (N, K)"""
    return backend.xp.exp(log_softmax(logits))


def check_labels(labels, n: int, n_classes: int):
    """``labels`` as a backend int64 array (N,) of classes 0..K−1, or a one-line ValueError saying what is
    wrong. Whole numbers stored as floats (3.0 read from a CSV) are the classes they name. The checks run
    where the labels are (host or device); only min and max, or the first bad value, are read back."""
    on_backend = isinstance(labels, backend.xp.ndarray)
    am = backend.xp if on_backend else np  # the array module that holds the labels
    labels = labels if on_backend else np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"labels must be a 1-D array of {n} class labels (one per row), got shape "
                         f"{tuple(labels.shape)}")
    if labels.dtype.kind == "f" and bool(am.all(am.isfinite(labels)) and am.all(labels == am.round(labels))):
        labels = labels.astype(np.int64)
    if labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be whole numbers 0..{n_classes - 1}, got dtype {labels.dtype}")
    if n and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
        bad = int(labels[(labels < 0) | (labels >= n_classes)][0])
        raise ValueError(f"labels must lie in 0..{n_classes - 1} (the model has {n_classes} classes), got {bad}")
    return backend.asarray(labels.astype(np.int64, copy=False))


class SoftmaxCrossEntropy:
    """L = −(1/N) Σ_n log softmax(z_n)_{y_n}, the mean over the batch.  logits (N, K), labels (N,) -> scalar.

    ``forward(logits, labels)`` returns L as a Python float and keeps what ``backward`` needs;
    ``backward(dloss=1.0)`` consumes it and returns dL/dz (N, K), scaled by the upstream dloss.
    """

    def __init__(self) -> None:
        self.cache = None

    def forward(self, logits, labels) -> float:
        if logits.ndim != 2 or logits.shape[0] < 1 or logits.shape[1] < 1:
            raise ValueError(f"logits must have shape (N, K) with N, K >= 1, got {tuple(logits.shape)}")
        n, k = logits.shape
        labels = check_labels(labels, n, k)
        log_p = log_softmax(logits)  # log softmax(z)                              (N, K)
        picked = log_p[backend.xp.arange(n), labels]  # log softmax(z_n)_{y_n}        (N,)
        self.cache = (log_p, labels)  # dL/dz needs softmax(z) = exp(log_p) and the labels
        return float(-picked.mean())  # L = −(1/N) Σ_n log softmax(z_n)_{y_n}

    def backward(self, dloss: float = 1.0):
        if self.cache is None:
            raise RuntimeError("SoftmaxCrossEntropy.backward called before forward (or twice after one forward)")
        log_p, labels = self.cache
        self.cache = None
        n = log_p.shape[0]
        dlogits = backend.xp.exp(log_p)  # softmax(z)                                    (N, K)
        dlogits[backend.xp.arange(n), labels] -= 1  # softmax(z) − onehot(y)
        dlogits *= dloss / n  # dL/dz = dloss · (softmax(z) − onehot(y)) / N
        return dlogits


def cross_entropy(logits, labels) -> float:
    """The mean softmax cross-entropy of ``labels`` (N,) under ``logits`` (N, K), forward only."""
    return SoftmaxCrossEntropy().forward(logits, labels)
