"""Named array primitives: each computes one plain formula, in the form NumPy runs fastest at npdiff's sizes.

Shape glossary: N rows (a batch), H features, U segments (distinct timesteps), P scalars of a flat
parameter buffer; ``x`` any shape.

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

_ONES: dict = {}  # N -> (N,) ones
_MEAN_COLUMNS: dict = {}  # H -> (H, 1) filled with 1/H


def _constant(store: dict, n: int, shape: tuple, value: float, like):
    """store[n] := an array of ``shape`` filled with ``value``, in the dtype and on the backend of ``like``."""
    if len(store) > 64:  # many batch sizes or widths seen: start over rather than grow without bound
        store.clear()
    array = store[n] = backend.xp.full(shape, value, dtype=like.dtype)
    return array


# The cached constants are looked up by size and checked by identity, the cheapest test: one of another
# dtype (a float64 gradient check between float32 runs) or backend is made anew. Callers never write to them.

def batch_sum(a):
    """Σ_n a[n], the sum over the batch: ``a.sum(axis=0)``.  a (N, H) -> (H,)

    Computed as the product 1ᵀ·a with a cached vector of ones: BLAS does it 2× faster than ``sum`` at
    32 × 32 and 3× at 1000 × 128.
    """
    ones = _ONES.get(a.shape[0])
    if ones is None or ones.dtype is not a.dtype or type(ones) is not type(a):
        ones = _constant(_ONES, a.shape[0], (a.shape[0],), 1.0, a)
    return ones.dot(a)


def row_mean(a):
    """The mean over features of each row: ``a.mean(axis=-1, keepdims=True)``.  a (N, H) -> (N, 1)

    Computed as the product a·c with a cached (H, 1) column c of 1/H: about 4× faster than ``mean``
    at 32 × 32 and at 1000 × 128.
    """
    column = _MEAN_COLUMNS.get(a.shape[-1])
    if column is None or column.dtype is not a.dtype or type(column) is not type(a):
        column = _constant(_MEAN_COLUMNS, a.shape[-1], (a.shape[-1], 1), 1.0 / a.shape[-1], a)
    return a.dot(column)


def unique_inverse(t):
    """(steps, rows): the distinct values of t in ascending order and each entry's index among them, so
    that t = steps[rows].  t (N,) non-negative integers -> (U,), (N,)

    Plain: ``xp.unique(t, return_inverse=True)``. For timesteps, counting is faster than sorting: the
    values present are where ``bincount(t)`` is non-zero, and each entry's index is found by binary
    search among them (3× faster than ``unique`` at 32 rows, 2× at 1000). Negative t raise a ValueError.
    U depends on the data, so on a device the sizes are read back (CuPy syncs twice: ``bincount`` needs
    max t, ``flatnonzero`` the count); the denoiser groups timesteps there only when asked to.
    """
    xp = backend.xp
    steps = xp.flatnonzero(xp.bincount(t))  # the distinct values, ascending  (U,)
    return steps, xp.searchsorted(steps, t)  # steps[rows] = t                 (N,)


def segment_sum(a, segments, n_segments: int):
    """out[k] = Σ_{n : segments[n] = k} a[n], the rows of a summed per segment.  a (N, H), segments (N,) -> (U, H)

    Plain: ``out = zeros((U, H)); add.at(out, segments, a)``. Computed as the product S·a with the
    one-hot matrix S[k, n] = 1[segments[n] = k] (U, N): U·N·H multiply-adds, which BLAS does faster
    than ``add.at`` (2× at 32 rows, 6× at 1000 × 128 with U = 50) while U is small against N (the
    denoiser's per-timestep route takes it for U ≤ N/4).
    """
    xp = backend.xp
    one_hot = segments == xp.arange(n_segments)[:, None]  # S  (U, N)
    return one_hot.astype(a.dtype).dot(a)


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


BOX_MULLER_MIN = 4096  # ``standard_normal`` draws this many entries or more by Box–Muller


def standard_normal(rng, shape, dtype="float64"):
    """ε ~ N(0, I) of ``shape``: plain, ``rng.standard_normal(shape, dtype=dtype)``, NumPy's ziggurat.

    From ``BOX_MULLER_MIN`` entries on, on NumPy, drawn instead by the Box–Muller transform (Box & Muller
    1958): for independent u1, u2 ~ U[0, 1),
        z1 = √(−2 ln(1 − u1))·cos(2π u2),   z2 = √(−2 ln(1 − u1))·sin(2π u2)
    are independent N(0, 1) draws. Its ten vectorised passes take half the ziggurat's time in float32 (an image
    training step's 128 × 784 draws: 0.39 against 0.80 ms); on fewer entries the ziggurat is faster. Both are
    exact samplers of N(0, 1) with different streams: a seed gives other numbers than the plain form, the same
    ones every time. The uniforms have the dtype's resolution (2⁻²⁴ in float32, 2⁻⁵³ in float64), so |z| is at
    most √(−2 ln 2⁻²⁴) = 5.77 in float32 (the probability of a larger normal draw is 8e-9) and 8.57 in float64.
    A device backend uses its generator's own draw.
    """
    xp = backend.xp
    n = math.prod(shape)
    if backend.name != "numpy" or n < BOX_MULLER_MIN:
        return rng.standard_normal(shape, dtype=dtype)
    half = (n + 1) // 2
    u = rng.random(2 * half, dtype=dtype)  # u1 = u[:half], u2 = u[half:]
    radius = xp.subtract(1, u[:half], out=u[:half])
    xp.log(radius, out=radius)
    radius *= -2
    xp.sqrt(radius, out=radius)  # √(−2 ln(1 − u1))
    angle = u[half:]
    angle *= 2 * math.pi  # 2π u2
    z = xp.empty(2 * half, dtype=dtype)
    xp.cos(angle, out=z[:half])
    xp.sin(angle, out=z[half:])
    z[:half] *= radius
    z[half:] *= radius
    return z[:n].reshape(shape)


# --- in-place updates of flat (P,) buffers: the optimizer and the EMA of the weights -------------------------
#
# One pass over a model's P parameters reads and writes arrays far larger than a core's cache (P = 1.67 M
# float32 is 6.7 MB each for the image demo's MLP), so every NumPy call of an update streams its operands
# from memory and allocates a fresh (P,) temporary. ``blockwise`` runs the same update block by block
# instead, each block small enough that its operands and one scratch buffer stay in the cache between
# the update's calls; the update's own lines take that scratch (``out=``) rather than allocating.

BLOCK = 1 << 16  # entries per block: 256 KB of float32 per operand, five operands and a scratch fit in L2
_THREADS = [1]  # threads that share the blocks (``set_threads``)
_POOL: list = [None, 0]  # the worker threads (made on first use) and their number
_SCRATCH: dict = {}  # (thread, dtype) -> (BLOCK,) scratch buffer


def set_threads(n: int) -> int:
    """Share ``blockwise``'s blocks among n threads (default 1); returns the previous number.

    NumPy releases the GIL inside its loops, so n threads update n blocks at once on n free cores. On a
    machine whose cores are busy with other work, a thread that waits for a core stalls the others, as a
    BLAS thread does (``npdiff.io.threads``): the library never changes the number on its own.
    """
    if isinstance(n, bool) or int(n) < 1:
        raise ValueError(f"the number of threads must be >= 1, got {n!r}")
    previous, _THREADS[0] = _THREADS[0], int(n)
    return previous


def _scratch(worker: int, like):
    key = (worker, like.dtype)
    buffer = _SCRATCH.get(key)
    if buffer is None:
        buffer = _SCRATCH[key] = backend.xp.empty(BLOCK, dtype=like.dtype)
    return buffer


def _run_blocks(fn, arrays, start: int, stop: int, worker: int) -> None:
    scratch = _scratch(worker, arrays[0])
    for lo in range(start, stop, BLOCK):
        hi = min(lo + BLOCK, stop)
        fn(*[a[lo:hi] for a in arrays], scratch[:hi - lo])


def blockwise(fn, *arrays) -> None:
    """fn(*[a[lo:hi] for a in arrays], scratch) for consecutive blocks [lo, hi) of ``BLOCK`` entries.  arrays (P,)

    Plain: ``fn(*arrays, None)``, one call on the whole buffers (what runs on a device, where there is no
    cache to fit). fn updates its arrays in place and may use ``scratch`` (a buffer of the block's length and
    of arrays[0]'s dtype) for its temporaries. For an elementwise fn, each entry of its results depending
    only on the same entry of its inputs, as every update here is, the two give the same numbers to the bit:
    only the order in which entries are visited changes. With ``set_threads(n)``, up to n contiguous runs of
    at least four blocks each go to as many threads (the caller takes the first), each with its own scratch
    (kept between calls: one ``blockwise`` at a time). On the image demo's 1.67 M parameters (float32, 1
    thread, alternating in one process): AdamW 6.5 ms and the EMA 1.6 ms on the whole buffers with fresh
    temporaries, 3.1 and 0.85 ms block by block with a scratch.
    """
    size = arrays[0].shape[0]
    if backend.name != "numpy" or size <= BLOCK:
        fn(*arrays, None)
        return
    n = max(1, min(_THREADS[0], size // (4 * BLOCK)))  # a thread is worth its start-up for 4 blocks or more
    if n == 1:
        _run_blocks(fn, arrays, 0, size, 0)
        return
    if _POOL[1] < n - 1:
        from concurrent.futures import ThreadPoolExecutor
        if _POOL[0] is not None:
            _POOL[0].shutdown()
        _POOL[:] = ThreadPoolExecutor(max_workers=n - 1, thread_name_prefix="npdiff-blocks"), n - 1
    per = -(-size // (n * BLOCK)) * BLOCK  # each thread's run, whole blocks
    futures = [_POOL[0].submit(_run_blocks, fn, arrays, k * per, min((k + 1) * per, size), k) for k in range(1, n)]
    _run_blocks(fn, arrays, 0, per, 0)
    for future in futures:
        future.result()


def moving_average_(average, x, decay: float, scratch=None) -> None:
    """average ← decay·average + (1 − decay)·x, in place.  average, x (P,)

    The exponential moving average of Adam's moments and of the EMA of the weights. Computed in three
    passes with one temporary, ``average`` updated in place (views into it stay valid): average ·= decay,
    then average += (1 − decay)·x from the temporary. Every pass either updates its array in place or
    scales by a number: NumPy runs those about twice as fast as a product or difference of two arrays
    into a third (0.09 against 0.19 ns an entry on a 64 K block in the cache). scratch: a buffer of x's
    shape for the temporary (it may be x itself, when the caller no longer needs x); None allocates one.
    """
    average *= decay
    step = backend.xp.multiply(x, 1 - decay, out=scratch)
    average += step


def adam_step_(theta, m, v, alpha: float, eps_hat: float, scratch=None) -> None:
    """θ ← θ − α·m/(√v + ε̂), in place: Adam's parameter update from its moments.  theta, m, v (P,)

    Plain: ``theta -= alpha * m / (sqrt(v) + eps_hat)``. Computed as m/(√v + ε̂), then ·α, in one buffer
    (``scratch``, or one temporary) instead of four temporaries: five passes either way.
    """
    xp = backend.xp
    step = xp.sqrt(v, out=scratch)
    step += eps_hat  # √v + ε̂
    xp.divide(m, step, out=step)
    step *= alpha  # α·m/(√v + ε̂)
    theta -= step
