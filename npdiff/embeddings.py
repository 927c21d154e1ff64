"""Sinusoidal embeddings of the timestep and of each input coordinate.

Shape glossary: N batch, D data dims, E embedding size (even), F = E/2 frequencies.

For a scalar s and scale c (Vaswani et al. 2017, as used by Ho et al. 2020 and tiny-diffusion):

    ω_k = exp(−log(10000)·k/(F − 1)),  k = 0..F−1
    emb(s) = [sin(c·s·ω_0), …, sin(c·s·ω_{F−1}), cos(c·s·ω_0), …, cos(c·s·ω_{F−1})]

The seed tutorial's heart model uses c = 25 for coordinates (so a 2-D point on a scale of a few units
gets high-frequency features) and c = 1 for the integer timestep. The embedding of an integer timestep
is a constant, so ``TimestepEmbedding`` computes the rows emb(0), …, emb(t_max) once and looks them up.
"""

from __future__ import annotations

import math

from npdiff import backend
from npdiff.layers import Module


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
    """emb(t) of integer timesteps t ≥ 0, looked up in a table of constants.  t (N,) -> y (N, E).

    Row k of ``table`` is emb(k), computed by ``SinusoidalEmbedding`` (so the numbers are the same to
    the last bit) for k = 0 … t_max; the table grows when a larger t arrives. A lookup is one gather,
    where embedding a row costs a sine and a cosine per feature. t gets no gradient: no backward.
    """

    def __init__(self, size: int, scale: float = 1.0, dtype="float32") -> None:
        super().__init__()
        self.size = size
        self.sinusoidal = SinusoidalEmbedding(size, scale, dtype)
        self.table = None  # (t_max + 1, E): row k is emb(k)
        self.table_backend = None  # the backend the table lives on (``backend.set_backend`` may switch)

    def forward(self, t, out=None):
        """out: an optional (N, E) array to write into (a column slice of a wider one is fine)."""
        xp = backend.xp
        if t.ndim != 1 or t.dtype.kind not in "iu":
            raise TypeError(f"timesteps must be a 1-D array of integers, got {t.dtype} of shape {tuple(t.shape)}")
        t_min, t_max = int(t.min()), int(t.max())
        if t_min < 0:
            raise ValueError(f"timesteps must be >= 0, got {t_min}")
        if self.table is None or t_max >= self.table.shape[0] or self.table_backend != backend.name:
            size = 0 if self.table is None else self.table.shape[0]
            steps = xp.arange(max(t_max + 1, 2 * size), dtype=self.sinusoidal.omega.dtype)  # grow geometrically
            self.table = self.sinusoidal.forward(steps[:, None])
            self.sinusoidal.cache = None  # the table is a constant: no backward through it
            self.table_backend = backend.name
        if out is None:
            return self.table[t]  # emb(t)  (N, E)
        out[...] = self.table[t]
        return out
