"""Named array primitives: each computes one plain formula, in the form NumPy runs fastest at npdiff's sizes.

Shape glossary: N rows (a batch), H features, P scalars of a flat parameter buffer; ``x`` any shape.

The layers, the denoiser and the optimizer read as the papers' formulas and call these where the plain
NumPy expression is measurably slower at the sizes npdiff trains, or is numerically unsafe
(benchmarks/README.md, "What made npdiff faster"): on small arrays every NumPy call costs about a
microsecond whatever its size, and BLAS does a sum over rows or a mean over features as a product with
a constant vector several times faster than ``sum``/``mean``. Each docstring states the plain formula;
``tests/test_primitives.py`` proves each fast form equal to it, in float32 and float64.
"""

from __future__ import annotations

import math

from npdiff import backend

_ONES: dict = {}  # (N, dtype, xp) -> (N,) ones
_MEAN_COLUMNS: dict = {}  # (H, dtype, xp) -> (H, 1) filled with 1/H


def _constant(store: dict, key: tuple, shape: tuple, value: float):
    """A constant array made once per key (callers never write to it); ``store`` is bounded."""
    if len(store) > 64:  # many batch sizes or widths seen: start over rather than grow without bound
        store.clear()
    array = store[key] = key[2].full(shape, value, dtype=key[1])
    return array


def batch_sum(a):
    """Σ_n a[n], the sum over the batch: ``a.sum(axis=0)``.  a (N, H) -> (H,)

    Computed as the product 1ᵀ·a with a cached vector of ones (0.9 µs against 2 µs at 32 × 32,
    20 µs against 60 µs at 1000 × 128).
    """
    xp = backend.xp
    key = (a.shape[0], a.dtype, xp)
    try:
        ones = _ONES[key]
    except KeyError:
        ones = _constant(_ONES, key, (a.shape[0],), 1.0)
    return xp.dot(ones, a)


def row_mean(a):
    """The mean over features of each row: ``a.mean(axis=-1, keepdims=True)``.  a (N, H) -> (N, 1)

    Computed as the product a·(1/H)·1 with a cached (H, 1) column (0.9 µs against 6 µs at 32 × 32).
    """
    xp = backend.xp
    key = (a.shape[-1], a.dtype, xp)
    try:
        column = _MEAN_COLUMNS[key]
    except KeyError:
        column = _constant(_MEAN_COLUMNS, key, (a.shape[-1], 1), 1.0 / a.shape[-1])
    return xp.dot(a, column)


def sigmoid(x):
    """σ(x) = 1/(1 + e^{−x}), elementwise, without overflow for any x.

    Only e^{−|x|} ≤ 1 is ever computed: σ(x) = 1/(1 + e^{−|x|}) for x ≥ 0 and e^{−|x|}/(1 + e^{−|x|})
    for x < 0 (the plain form overflows e^{−x} for x < −88.7 in float32 and keeps full relative
    precision on both sides). 1 − σ(x) = σ(−x), with the same precision.
    """
    xp = backend.xp
    e = xp.exp(-xp.abs(x))  # e^{−|x|} ∈ (0, 1]
    return xp.where(x >= 0, 1, e) / (1 + e)


def log_sigmoid(x):
    """log σ(x) = −log(1 + e^{−x}), elementwise, without overflow: min(x, 0) − log(1 + e^{−|x|})."""
    xp = backend.xp
    return xp.minimum(x, 0) - xp.log1p(xp.exp(-xp.abs(x)))


# GELU, tanh approximation (Hendrycks & Gimpel 2016; PyTorch's ``gelu(approximate="tanh")``):
#     GELU(x) = x·Φ(x),  Φ(x) ≈ ½(1 + tanh u),  u = √(2/π)(x + 0.044715 x³)
GELU_C = math.sqrt(2.0 / math.pi)
GELU_A = 0.044715


def normal_cdf_tanh(x, x_sq):
    """Φ(x) ≈ ½(1 + tanh(√(2/π)(x + 0.044715 x³))), the normal CDF in GELU's tanh approximation.  -> like x

    x_sq: x², which the caller computes once (GELU's derivative needs it too). Plain:
    ``0.5 * (1 + tanh(C * (x + A * x**3)))``. Written as x(C + CA·x²), with x³ never as ``x**3`` (float32
    powers go through the slow general routine: 8.6 ms against 27 µs at 1000 × 128), in place on
    its own temporary: 6 passes.
    """
    xp = backend.xp
    phi = x_sq * (GELU_C * GELU_A)
    phi += GELU_C
    phi *= x  # u = C(x + A x³)
    xp.tanh(phi, out=phi)
    phi += 1
    phi *= 0.5  # ½(1 + tanh u)
    return phi


def gelu_tanh_derivative(x_sq, phi, y):
    """GELU'(x) = Φ(x) + x·Φ'(x), from x², Φ(x) = ``normal_cdf_tanh(x, x²)`` and y = GELU(x) = x·Φ(x).

    In the tanh approximation Φ'(x) = ½(1 − tanh²u)·u' = 2Φ(1 − Φ)·u', u' = √(2/π)(1 + 3·0.044715 x²)
    (as 1 − tanh²u = (1 − tanh u)(1 + tanh u) = 4Φ(1 − Φ)), so x·Φ'(x) = 2y(1 − Φ)·u'. Plain:
    ``phi + x * 0.5 * (1 - tanh(u)**2) * C * (1 + 3 * A * x**2)``. In place on one temporary: 6 passes.
    -> like x
    """
    xp = backend.xp
    d = x_sq * (6 * GELU_C * GELU_A)
    d += 2 * GELU_C  # 2u'
    d *= y  # 2y·u'
    d *= xp.subtract(1, phi)  # 2y(1 − Φ)·u' = x·Φ'
    d += phi  # Φ + x·Φ'
    return d


def moving_average_(average, x, decay: float) -> None:
    """average ← decay·average + (1 − decay)·x, in place.  average, x (P,)

    The exponential moving average of Adam's moments and of the EMA of the weights. Computed as
    average += (1 − decay)(x − average): three passes and one temporary instead of four and two, and
    ``average`` stays the same array (views into it stay valid).
    """
    step = x - average
    step *= 1 - decay
    average += step
