"""Sinusoidal embeddings of the timestep and of each input coordinate.

Shape glossary: N batch, D data dims, E embedding size (even), F = E/2 frequencies.

For a scalar s and scale c (Vaswani et al. 2017, as used by Ho et al. 2020 and tiny-diffusion):

    ω_k = exp(−log(10000)·k/(F − 1)),  k = 0..F−1
    emb(s) = [sin(c·s·ω_0), …, sin(c·s·ω_{F−1}), cos(c·s·ω_0), …, cos(c·s·ω_{F−1})]

The seed tutorial's heart model uses c = 25 for coordinates (so a 2-D point on a scale of a few units
gets high-frequency features) and c = 1 for the integer timestep. The embedding of an integer timestep
is a constant, so on NumPy ``TimestepEmbedding`` computes the rows emb(0), …, emb(t_max) once and looks
them up; on a device it computes emb(t) directly (sizing a table would read t back to the host).
"""

from __future__ import annotations

import math

from npdiff import backend
from npdiff.nn.layers import Module
from npdiff.nn.primitives import segment_sum


def frequencies(size: int, dtype="float32"):
    """ω_k = exp(−log(10000)·k/(F−1)), k = 0..F−1, F = size/2.  -> (F,)"""
    if size < 4 or size % 2:
        raise ValueError(f"embedding size must be even and >= 4, got {size}")
    half = size // 2
    xp = backend.xp
    return xp.exp(-math.log(10000.0) / (half - 1) * xp.arange(half, dtype="float64")).astype(dtype)


class SinusoidalEmbedding(Module):
    """Embeds each of D scalars per row into E features.  x (N, D) -> y (N, D·E).

    With D = 1 this is the timestep embedding (x = t as a column); the integer timestep gets no
    gradient, but for coordinates ``backward`` returns dL/dx:
        d sin(c x ω)/dx = c ω cos(c x ω),   d cos(c x ω)/dx = −c ω sin(c x ω).
    """

    def __init__(self, size: int, scale: float = 1.0, dtype="float32") -> None:
        super().__init__()
        self.size, self.scale = size, float(scale)
        self.omega = frequencies(size, dtype) * self.scale  # c·ω, (F,); a Python float keeps the dtype

    def forward(self, x, out=None):
        """out: an optional (N, D·E) array to write into (a column slice of a wider one is fine).

        The cache holds views of the output (sin and cos are their own derivatives' inputs), so do
        not modify the output in place before ``backward``.
        """
        xp = backend.xp
        n, d = x.shape
        f = self.size // 2
        arg = x[:, :, None] * self.omega  # c·x·ω  (N, D, F)
        if out is None:
            out = xp.empty((n, d * self.size), dtype=arg.dtype)
        elif out.shape != (n, d * self.size) or out.strides[-1] != out.itemsize:
            raise ValueError(f"out must have shape {(n, d * self.size)} with contiguous columns")
        # y = concatenate([sin(arg), cos(arg)], axis=2).reshape(N, D·E), each half written in place
        halves = out.reshape(n, d, 2, f)  # a view: [sin | cos] per coordinate
        xp.sin(arg, out=halves[:, :, 0])
        xp.cos(arg, out=halves[:, :, 1])
        self.cache = (halves[:, :, 0], halves[:, :, 1])  # sin and cos: each one's derivative is the other
        return out  # (N, D·E)

    def backward(self, dy):
        s, c = self.take_cache()
        n, d, f = s.shape
        d_sin_cos = dy.reshape(n, d, 2, f)  # [dL/dsin | dL/dcos] per coordinate
        # dL/dx = Σ_k cω_k (dL/dsin_k · cos_k − dL/dcos_k · sin_k)
        return (d_sin_cos[:, :, 0] * c - d_sin_cos[:, :, 1] * s).dot(self.omega)  # (N, D)


class TimestepEmbedding(Module):
    """emb(t) of integer timesteps t ≥ 0.  t (N,) -> y (N, E)

    The numbers are ``SinusoidalEmbedding``'s to the last bit. How they are found depends on where t
    lives; neither way reads a device array back to the host:

    * NumPy timesteps are looked up in ``table``, whose row k is emb(k) for k = 0 … t_max: one gather,
      where embedding a row costs a sine and a cosine per feature. The table grows (geometrically) when
      a larger t arrives. A negative t is refused with a ValueError (NumPy would read it from the end).
    * Device timesteps (CuPy) are embedded directly, emb(t) = ``SinusoidalEmbedding`` of t as a float:
      elementwise kernels, cheap on a GPU. A lookup there would need the table's size checked against
      max t, a read-back (a sync) at every step, and an index out of range would wrap around silently
      on CuPy. Device timesteps are not range-checked here: they come from the schedule, which draws
      them in 1..T (``Schedule.sample_t``) or checks host ones before moving them (``Schedule.as_timesteps``).

    t gets no gradient: no backward.
    """

    def __init__(self, size: int, scale: float = 1.0, dtype="float32") -> None:
        super().__init__()
        self.size = size
        self.sinusoidal = SinusoidalEmbedding(size, scale, dtype)
        self.table = backend.xp.empty((0, size), dtype=dtype)  # (t_max + 1, E): row k is emb(k), grown on demand

    def forward(self, t, out=None):
        """out: an optional (N, E) array to write into (a column slice of a wider one is fine)."""
        if t.ndim != 1 or t.dtype.kind not in "iu":
            raise TypeError(f"timesteps must be a 1-D array of integers, got {t.dtype} of shape {tuple(t.shape)}")
        if backend.name != "numpy":  # on the device: computed, nothing read back (class docstring)
            y = self.sinusoidal.forward(t[:, None].astype(self.sinusoidal.omega.dtype), out=out)  # emb(t)  (N, E)
            self.sinusoidal.cache = None  # t gets no gradient: nothing to keep for a backward
            return y
        if t.size and t.min() < 0:
            raise ValueError(f"timesteps must be >= 0, got {t.min()}")
        try:
            y = self.table[t]  # emb(t)  (N, E)
        except IndexError:  # a t beyond the table: grow it (at least doubling) to cover this batch
            rows = max(int(t.max()) + 1, 2 * self.table.shape[0])
            steps = backend.xp.arange(rows, dtype=self.sinusoidal.omega.dtype)
            self.table = self.sinusoidal.forward(steps[:, None])  # row k = emb(k)
            self.sinusoidal.cache = None  # the table is a constant: no backward through it
            y = self.table[t]
        if out is None:
            return y
        out[...] = y
        return out


class LabelEmbedding(Module):
    """A learned vector per class label, with one extra row for "no label".  y (N,) -> e_y (N, H).

    ``W`` (K + 1, H): row k is class k's vector, row K (``null``) the unconditional one that training
    uses for dropped labels and that classifier-free guidance contrasts with (``npdiff.processes.guidance``).
    A lookup is a Linear without bias on the one-hot label, e_y = onehot(y)·W, so its backward is
        dL/dW = onehot(y)ᵀ·dL/de = segment_sum(dL/de, y, K + 1)   (row k sums the rows labelled k).
    Initialised like that Linear, W ~ U(−1/√(K+1), 1/√(K+1)). The integer labels get no gradient.
    """

    def __init__(self, n_classes: int, size: int, rng, dtype="float32") -> None:
        super().__init__()
        if int(n_classes) < 1:
            raise ValueError(f"n_classes must be >= 1, got {n_classes}")
        self.n_classes, self.null = int(n_classes), int(n_classes)
        bound = 1.0 / math.sqrt(n_classes + 1)
        self.params["W"] = rng.uniform(-bound, bound, (n_classes + 1, size)).astype(dtype)
        self.grads["W"] = backend.xp.zeros_like(self.params["W"])

    def forward(self, y):
        """y: (N,) integers in 0..K (K = ``null``, no label) -> (N, H)."""
        self.cache = y  # which row each output came from
        return self.params["W"][y]  # onehot(y)·W  (N, H)

    def backward(self, de):
        y = self.take_cache()
        self.grads["W"] += segment_sum(de, y, self.n_classes + 1)  # dL/dW = onehot(y)ᵀ·de   (K + 1, H)
