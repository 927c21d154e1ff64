"""Sample-quality figures: distances between a set of samples and a reference set of points.

All three take host NumPy arrays of points (backend arrays are brought over with
``backend.to_numpy``), compute in float64 and return a Python float. Inputs must be finite and agree
in D; a NaN sample is an error to report, not a number to average.

Shape glossary
    N   number of sample points (a)        M   number of reference points (b)
    D   data dimensions                    P   number of random projections

Chamfer distance (symmetric, in the units of the data):

    CD(a, b) = ½ [ (1/N) Σ_i min_j ‖a_i − b_j‖ + (1/M) Σ_j min_i ‖a_i − b_j‖ ]

Sliced Wasserstein-1 over unit directions u ~ Uniform(S^{D−1}), with F_u, G_u the CDFs of the
projections u·a and u·b:

    SW₁(a, b) = E_u W₁(u·a, u·b),   W₁ = ∫₀¹ |F_u⁻¹(q) − G_u⁻¹(q)| dq = ∫ |F_u(s) − G_u(s)| ds

Squared maximum mean discrepancy with k(x, y) = exp(−‖x − y‖² / (2h²)), unbiased estimator
(Gretton et al. 2012, "A Kernel Two-Sample Test", Lemma 6):

    MMD²_u = Σ_{i≠i'} k(a_i, a_i') / (N(N−1)) + Σ_{j≠j'} k(b_j, b_j') / (M(M−1))
             − 2 Σ_{i,j} k(a_i, b_j) / (NM)

For MNIST-format images, the classifier-judged figures (FCD, accuracy on intended classes, predicted-class
entropy, and their baselines) live in ``npdiff.images.quality``, which ``import npdiff`` does not load.
"""

from __future__ import annotations

import numpy as np

from npdiff import backend

MEDIAN_SUBSAMPLE = 1000  # at most this many pooled points enter the median-distance heuristic


def _points(x, name: str) -> np.ndarray:
    """Validate one point set and return it as a float64 host array (N, D)."""
    x = np.asarray(backend.to_numpy(x), dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{name} must be points of shape (N, D) with N, D >= 1, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    return x


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = _points(a, "a"), _points(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must have the same dimension D, got {a.shape[1]} and {b.shape[1]}")
    return a, b


def _check_chunk(chunk: int) -> int:
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ValueError(f"chunk must be a positive integer number of rows, got {chunk!r}")
    return int(chunk)


def nearest_distances(a: np.ndarray, b: np.ndarray, chunk: int = 128) -> np.ndarray:
    """For each row of a (N, D), the Euclidean distance to its nearest row of b (M, D); returns (N,).

    Rows of a go in blocks of `chunk`, so at most chunk × M distances exist at a time. The nearest
    neighbour is found with ‖a−b‖² = ‖a‖² − 2 a·b + ‖b‖² (one matrix product; ‖a‖² is constant
    along a row, so the argmin needs only ‖b‖² − 2 a·b), and its distance is then recomputed from
    the difference a_i − b_j. That is exact where the expansion would cancel catastrophically:
    identical points give exactly 0, without clamping or a square root of a rounding error.
    """
    a, b = _pair(a, b)
    chunk = _check_chunk(chunk)
    bT = np.ascontiguousarray(b.T)  # (D, M)
    bb = np.einsum("md,md->m", b, b)  # (M,)
    out = np.empty(a.shape[0])
    for start in range(0, a.shape[0], chunk):
        block = a[start : start + chunk]  # (c, D)
        score = block @ bT  # (c, M)  a·b
        score *= -2.0
        score += bb  # ‖a−b‖² − ‖a‖²
        nearest = score.argmin(axis=1)  # (c,)
        out[start : start + chunk] = np.linalg.norm(block - b[nearest], axis=1)
    return out


def chamfer(samples: np.ndarray, reference: np.ndarray, chunk: int = 128) -> float:
    """Symmetric Chamfer distance: half the sum of the mean nearest-neighbour distances both ways.

    samples: (N, D); reference: (M, D); chunk: rows per block (memory ~ 8·chunk·max(N, M) bytes).
    CD(x, x) = 0; moving one point of a one-point set by δ gives δ. On two CPU cores, 2000 samples
    against a 20,000-point curve in 2-D take about 0.1–0.15 s. Blocks of 64–128 rows are fastest
    (they stay in cache); 2048-row blocks were 1.5–6× slower in that test. Plain differences
    Σ_d (a_d − b_d)² were as fast in 2-D and 3–5× slower in 8–16 dimensions, so the matrix-product
    form is used at every D.
    """
    a, b = _pair(samples, reference)
    return 0.5 * float(nearest_distances(a, b, chunk).mean() + nearest_distances(b, a, chunk).mean())


def _w1_1d(pa: np.ndarray, pb: np.ndarray) -> np.ndarray:
    """Exact W₁ between the empirical distributions of each column of pa (N, P) and pb (M, P) → (P,).

    Equal sizes: the mean absolute difference of the sorted columns (matched quantiles). Otherwise,
    ∫ |F − G| ds over the pooled sorted values: the CDF difference F − G is a step function, the
    running sum of +1/N for each a-value and −1/M for each b-value, held over each gap. This equals
    ∫₀¹ |F⁻¹(q) − G⁻¹(q)| dq exactly, without interpolating quantiles.
    """
    n, m = pa.shape[0], pb.shape[0]
    if n == m:
        return np.abs(np.sort(pa, axis=0) - np.sort(pb, axis=0)).mean(axis=0)
    values = np.concatenate([pa, pb])  # (N+M, P)
    weights = np.concatenate([np.full(n, 1.0 / n), np.full(m, -1.0 / m)])  # (N+M,)
    order = np.argsort(values, axis=0, kind="stable")  # (N+M, P)
    sorted_values = np.take_along_axis(values, order, axis=0)
    cdf_diff = np.cumsum(weights[order], axis=0)[:-1]  # F − G on each gap, (N+M−1, P)
    gaps = np.diff(sorted_values, axis=0)  # (N+M−1, P)
    return (np.abs(cdf_diff) * gaps).sum(axis=0)


def sliced_wasserstein(
    a: np.ndarray, b: np.ndarray, n_projections: int = 128, *, rng: np.random.Generator
) -> float:
    """Sliced Wasserstein-1 distance between point sets a (N, D) and b (M, D); N and M may differ.

    Draws P = n_projections directions u = g/‖g‖, g ~ N(0, I_D) (uniform on the sphere), projects
    both sets, takes the exact 1-D W₁ of each projection pair (see _w1_1d) and averages over
    directions. A translation by δ gives E|u·δ|: ‖δ‖ in 1-D, ‖δ‖·2/π on average in 2-D.
    """
    a, b = _pair(a, b)
    if isinstance(n_projections, bool) or not isinstance(n_projections, (int, np.integer)) or n_projections < 1:
        raise ValueError(f"n_projections must be a positive integer, got {n_projections!r}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    u = rng.standard_normal((int(n_projections), a.shape[1]))  # (P, D)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    return float(_w1_1d(a @ u.T, b @ u.T).mean())  # (N, P), (M, P) → (P,) → mean


def _sq_dists(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """All squared distances (len(x), len(y)) by ‖x‖² + ‖y‖² − 2 x·y, clamped at 0 against rounding."""
    d2 = np.einsum("nd,nd->n", x, x)[:, None] + np.einsum("md,md->m", y, y)[None, :] - 2.0 * (x @ y.T)
    return np.maximum(d2, 0.0)


def median_bandwidth(a: np.ndarray, b: np.ndarray) -> float:
    """Median heuristic: the median Euclidean distance over distinct pairs of the pooled points.

    With more than MEDIAN_SUBSAMPLE pooled points, an evenly spaced subsample of that many is used
    (deterministic, so the figure needs no rng; shuffle inputs that are sorted).
    """
    a, b = _pair(a, b)
    pooled = np.concatenate([a, b])
    if pooled.shape[0] > MEDIAN_SUBSAMPLE:
        pooled = pooled[np.linspace(0, pooled.shape[0] - 1, MEDIAN_SUBSAMPLE).astype(int)]
    upper = np.triu_indices(pooled.shape[0], k=1)
    h = float(np.median(np.sqrt(_sq_dists(pooled, pooled)[upper])))
    if not h > 0.0:
        raise ValueError("median pairwise distance is 0 (the points coincide); pass a bandwidth explicitly")
    return h


def _kernel_sum(x: np.ndarray, y: np.ndarray, h: float, chunk: int) -> float:
    """Σ_{i,j} exp(−‖x_i − y_j‖² / (2h²)) over all pairs, in blocks of `chunk` rows of x."""
    total = 0.0
    for start in range(0, x.shape[0], chunk):
        total += float(np.exp(_sq_dists(x[start : start + chunk], y) / (-2.0 * h * h)).sum())
    return total


def mmd_rbf(a: np.ndarray, b: np.ndarray, bandwidth: float | None = None, chunk: int = 512) -> float:
    """Unbiased squared MMD between a (N, D) and b (M, D) with an RBF kernel of bandwidth h.

    The estimator is the module docstring's MMD²_u: its expectation is exactly MMD² (0 when a and b
    come from the same distribution), so a single value may be slightly negative. The diagonal terms
    k(x, x) = 1 are removed from the within-set sums. Needs N, M >= 2. bandwidth: h > 0, default
    median_bandwidth(a, b). Cost O((N + M)²), memory chunk × max(N, M).
    """
    a, b = _pair(a, b)
    chunk = _check_chunk(chunk)
    n, m = a.shape[0], b.shape[0]
    if n < 2 or m < 2:
        raise ValueError(f"the unbiased MMD needs at least 2 points in each set, got {n} and {m}")
    if bandwidth is None:
        h = median_bandwidth(a, b)
    else:
        h = float(bandwidth)
        if not (np.isfinite(h) and h > 0.0):
            raise ValueError(f"bandwidth must be a positive finite number, got {bandwidth!r}")
    k_aa = (_kernel_sum(a, a, h, chunk) - n) / (n * (n - 1))
    k_bb = (_kernel_sum(b, b, h, chunk) - m) / (m * (m - 1))
    k_ab = _kernel_sum(a, b, h, chunk) / (n * m)
    return float(k_aa + k_bb - 2.0 * k_ab)
