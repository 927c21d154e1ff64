"""Datasets: the heart of the seed tutorial, the standard 2-D toy sets, and the user's own points.

Every generator draws through an explicit ``numpy.random.Generator`` ``rng`` (no global seeding) and
returns a float64 NumPy array of shape (N, D) on the host; callers choose the dtype and move the
array to the backend (``backend.asarray``). Nothing here depends on scikit-learn.

Shape glossary
    N   number of points
    D   data dimensions (2 for every toy set here)

The heart (seed tutorial), with θ ~ U[0, 2π):

    x = 16 sin³θ / 5,        y = (13 cos θ − 5 cos 2θ − 2 cos 3θ − cos 4θ) / 5

The toy sets follow ``inf_train_gen`` in ``lib/toy_data.py`` of the FFJORD code (Grathwohl, Chen et
al. 2019, github.com/rtqichen/ffjord), re-derived here; each docstring states the distribution. They
are returned in float64, where FFJORD casts to float32.
"""

from __future__ import annotations

import math
import os
from typing import Callable

import numpy as np

HEART_TRAIN_SIZE = 8000  # default training-set size of the heart demo


def _check(n: int, rng: np.random.Generator | None = None) -> int:
    """Validate a point count (and a generator, when one is needed); returns n as an int."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"n must be an integer number of points, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"n must be >= 1 point, got {n}")
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"rng must be a numpy.random.Generator (numpy.random.default_rng(seed)), got {type(rng).__name__}"
        )
    return int(n)


def heart_from_theta(theta: np.ndarray) -> np.ndarray:
    """Points of the heart curve at angles theta (N,) → (N, 2); the formula in the module docstring."""
    theta = np.asarray(theta, dtype=np.float64)
    s = np.sin(theta)
    x = 16.0 * s * s * s
    y = 13.0 * np.cos(theta) - 5.0 * np.cos(2 * theta) - 2.0 * np.cos(3 * theta) - np.cos(4 * theta)
    return np.stack([x, y], axis=1) / 5.0  # (N, 2)


def heart(n: int, rng: np.random.Generator) -> np.ndarray:
    """n points on the heart curve at θ ~ U[0, 2π) (no added noise), shape (n, 2)."""
    n = _check(n, rng)
    return heart_from_theta(rng.uniform(0.0, 2.0 * math.pi, size=n))


def heart_curve(n: int) -> np.ndarray:
    """A dense deterministic sampling of the true heart: θ = n evenly spaced angles in [0, 2π), (n, 2).

    This is the reference of the Chamfer distance (the demos use n = 20,000).
    """
    n = _check(n)
    return heart_from_theta(np.linspace(0.0, 2.0 * math.pi, n, endpoint=False))


def eight_gaussians(n: int, rng: np.random.Generator) -> np.ndarray:
    """FFJORD "8gaussians": a uniform mixture of 8 isotropic Gaussians, shape (n, 2).

    Centres c_k = 4 · (cos(kπ/4), sin(kπ/4)), k = 0..7 (the compass points (±1, 0), (0, ±1),
    (±1/√2, ±1/√2) scaled by 4); x = (c_k + 0.5 · ε) / 1.414 with k ~ U{0..7}, ε ~ N(0, I).
    So the modes sit at radius 4/1.414 ≈ 2.83 with standard deviation 0.5/1.414 ≈ 0.354.
    """
    n = _check(n, rng)
    angles = np.arange(8) * (math.pi / 4)
    centres = 4.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)  # (8, 2)
    k = rng.integers(0, 8, size=n)
    return (centres[k] + 0.5 * rng.standard_normal((n, 2))) / 1.414


def moons(n: int, rng: np.random.Generator, noise: float = 0.1) -> np.ndarray:
    """FFJORD "moons": scikit-learn's make_moons(n, noise=0.1), then x ↦ 2x + (−1, −0.2), shape (n, 2).

    make_moons puts n_out = n // 2 points evenly on the upper half circle (cos s, sin s),
    s = linspace(0, π, n_out), and n_in = n − n_out on the lower moon (1 − cos s, 1 − sin s − 0.5),
    shuffles them and adds N(0, noise²) to each coordinate.
    """
    n = _check(n, rng)
    n_out = n // 2
    n_in = n - n_out
    s_out = np.linspace(0.0, math.pi, n_out)
    s_in = np.linspace(0.0, math.pi, n_in)
    outer = np.stack([np.cos(s_out), np.sin(s_out)], axis=1)
    inner = np.stack([1.0 - np.cos(s_in), 1.0 - np.sin(s_in) - 0.5], axis=1)
    x = np.concatenate([outer, inner])[rng.permutation(n)]
    x = x + noise * rng.standard_normal((n, 2))
    return 2.0 * x + np.array([-1.0, -0.2])


def swissroll(n: int, rng: np.random.Generator, noise: float = 1.0) -> np.ndarray:
    """FFJORD "swissroll": columns (x, z) of scikit-learn's make_swiss_roll(n, noise=1.0), / 5, (n, 2).

    make_swiss_roll draws t = 1.5π (1 + 2u), u ~ U[0, 1), and the 3-D point
    (t cos t, 21 u₂, t sin t) with u₂ ~ U[0, 1), plus N(0, noise²) on every coordinate. The height
    21 u₂ is dropped; it is drawn anyway so the random stream matches the 3-D recipe.
    """
    n = _check(n, rng)
    t = 1.5 * math.pi * (1.0 + 2.0 * rng.uniform(size=n))
    height = 21.0 * rng.uniform(size=n)
    roll = np.stack([t * np.cos(t), height, t * np.sin(t)], axis=1)  # (n, 3)
    roll = roll + noise * rng.standard_normal((n, 3))
    return roll[:, [0, 2]] / 5.0


def checkerboard(n: int, rng: np.random.Generator) -> np.ndarray:
    """FFJORD "checkerboard": uniform on the 8 dark squares of a 4×4 board over [−4, 4)², (n, 2).

    x₁ ~ U[−2, 2); x₂ ~ U[0, 1) shifted by −2 with probability ½ and then by +1 when ⌊x₁⌋ is odd;
    the point is 2 (x₁, x₂). Equivalently: squares of side 2 with ⌊x/2⌋ + ⌊y/2⌋ even.
    """
    n = _check(n, rng)
    x1 = rng.uniform(-2.0, 2.0, size=n)
    x2 = rng.uniform(size=n) - 2.0 * rng.integers(0, 2, size=n) + np.floor(x1) % 2
    return 2.0 * np.stack([x1, x2], axis=1)


def circles(n: int, rng: np.random.Generator, factor: float = 0.5, noise: float = 0.08) -> np.ndarray:
    """FFJORD "circles": scikit-learn's make_circles(n, factor=0.5, noise=0.08), times 3, (n, 2).

    n_out = n // 2 points evenly spaced on the unit circle (angles linspace(0, 2π) without the end
    point) and n_in = n − n_out on the circle of radius `factor`, shuffled, plus N(0, noise²) per
    coordinate; the radii are therefore 3 and 1.5 after scaling.
    """
    n = _check(n, rng)
    n_out = n // 2
    n_in = n - n_out
    a_out = np.linspace(0.0, 2.0 * math.pi, n_out, endpoint=False)
    a_in = np.linspace(0.0, 2.0 * math.pi, n_in, endpoint=False)
    outer = np.stack([np.cos(a_out), np.sin(a_out)], axis=1)
    inner = factor * np.stack([np.cos(a_in), np.sin(a_in)], axis=1)
    x = np.concatenate([outer, inner])[rng.permutation(n)]
    return 3.0 * (x + noise * rng.standard_normal((n, 2)))


TOY_SETS: dict[str, Callable[[int, np.random.Generator], np.ndarray]] = {
    "heart": heart,
    "8gaussians": eight_gaussians,
    "moons": moons,
    "swissroll": swissroll,
    "checkerboard": checkerboard,
    "circles": circles,
}


def make(name: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """n points of the toy set `name` (a key of TOY_SETS), float64 (n, 2) on the host."""
    if name not in TOY_SETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(TOY_SETS)}")
    return TOY_SETS[name](n, rng)


def standardize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-dimension standardisation z = (x − mean) / std (population std); returns (z, mean, std).

    x: (N, D); mean, std: (D,). A constant dimension (std = 0) cannot be standardised and raises.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"standardize expects points of shape (N, D) with N >= 1, got shape {x.shape}")
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    constant = np.flatnonzero(std == 0)
    if constant.size:
        raise ValueError(f"cannot standardize: dimension(s) {constant.tolist()} are constant (std = 0)")
    return (x - mean) / std, mean, std


def unstandardize(z: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Inverse of standardize: x = z · std + mean, per dimension; z: (N, D), mean and std: (D,)."""
    return np.asarray(z, dtype=np.float64) * std + mean


def _is_number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"


def _check_npy_size(path: str) -> None:
    """Refuse a .npy whose header promises more data than the file holds, before any memory is allocated for it."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version not in read_header:
                return  # np.load says what is wrong
            shape, _, dtype = read_header[version](f, max_header_size=10_000)
            offset = f.tell()
    except Exception:  # a damaged header: np.load's message names it
        return
    if dtype.hasobject or not all(isinstance(k, int) and k >= 0 for k in shape):
        return
    promised, held = math.prod(shape) * dtype.itemsize, os.path.getsize(path) - offset
    if promised > held:
        raise ValueError(f"{path!r} is a damaged or truncated .npy file: its header promises shape {shape} of {dtype} "
                         f"({promised} bytes), the file holds {held}")


def _read_npy(path: str) -> np.ndarray:
    """The array of a .npy file; ValueError (naming the file) for anything that is not a plain .npy."""
    with open(path, "rb") as f:
        magic = f.read(len(NPY_MAGIC))
    if magic != NPY_MAGIC:
        if magic.startswith(ZIP_MAGIC):
            raise ValueError(f"{path!r} is an .npz archive (numpy.savez), not a single .npy array; "
                             "save the points with numpy.save")
        raise ValueError(f"{path!r} is not a .npy file (it does not start with NumPy's header); "
                         "save the points with numpy.save, or use a .csv file")
    _check_npy_size(path)
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc):  # object arrays need pickles, which are never loaded
            raise ValueError(f"{path!r} holds Python objects (dtype=object), which npdiff never unpickles; "
                             "save a numeric array") from None
        raise ValueError(f"{path!r} is a damaged or truncated .npy file: {exc}") from None
    except Exception as exc:  # an untrusted header or body: EOFError, struct and allocation errors, …
        raise ValueError(f"{path!r} is a damaged or truncated .npy file: {type(exc).__name__}: {exc}") from None


def _read_csv(path: str) -> np.ndarray:
    """Comma-separated numbers, one point per line; a first line that is not all numbers is a header."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line for line in f if line.strip()]
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path!r} is not a UTF-8 text file (an undecodable byte at offset {exc.start}); "
                         "a .csv must hold comma-separated numbers") from None
    if lines and not all(_is_number(field) for field in lines[0].split(",")):
        lines = lines[1:]  # a header line
    if not lines:
        raise ValueError(f"{path!r} holds no points")
    try:
        return np.loadtxt(lines, delimiter=",", ndmin=2, dtype=np.float64)
    except ValueError as exc:
        raise ValueError(f"{path!r} is not a comma-separated table of numbers: {' '.join(str(exc).split())}") from None


def load_points(path: str | os.PathLike) -> np.ndarray:
    """Load a user's low-dimensional points from `.npy` or `.csv` as float64 (N, D).

    `.npy` must hold a 2-D array of real numbers (integers, floats or booleans; no pickles, no complex
    numbers). `.csv` is UTF-8, comma-separated, one point per line; a first line that is not all numbers
    is taken as a header and skipped; a single column gives D = 1. Raises FileNotFoundError for a missing
    file and ValueError, naming the file, for anything else that cannot give points: another extension,
    a folder, bytes that are not a .npy or not UTF-8 text, data that is not 2-D or is empty, complex or
    non-numeric values, non-finite values (NaN, ±inf, or too large for float64). OSError if the file
    cannot be read (permissions, I/O).
    """
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".npy", ".csv"):
        raise ValueError(f"cannot load {path!r}: expected a .npy or .csv file, got extension {ext!r}")
    if os.path.isdir(path):
        raise ValueError(f"{path!r} is a folder, not a data file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such data file: {path!r}")
    x = _read_npy(path) if ext == ".npy" else _read_csv(path)
    if x.dtype.kind == "c":
        raise ValueError(f"{path!r} holds complex numbers; store the real and imaginary parts as separate columns")
    if x.dtype.kind not in "biuf":
        raise ValueError(f"{path!r} does not hold numbers (dtype {x.dtype})")
    if x.ndim != 2:
        raise ValueError(
            f"{path!r} holds an array of shape {x.shape}; expected 2-D points (N, D) "
            "(reshape 1-D data with x.reshape(-1, 1))"
        )
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{path!r} holds no points (shape {x.shape})")
    with np.errstate(over="ignore"):  # a float128 beyond float64's range becomes inf, refused below
        x = x.astype(np.float64)
    bad = ~np.isfinite(x)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(
            f"{path!r} has {int(bad.sum())} non-finite value(s) (NaN, inf, or beyond float64's range), "
            f"first at row {row}, column {col}"
        )
    return x


def eight_gaussians_centres() -> np.ndarray:
    """The centres of ``eight_gaussians``' components after its /1.414: c_k = (4/1.414) (cos kπ/4, sin kπ/4),
    k = 0..7, shape (8, 2); radius ≈ 2.83."""
    angles = np.arange(8) * (math.pi / 4)
    return 4.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1) / 1.414


def eight_gaussians_labelled(n: int, rng: np.random.Generator, std: float = 0.5 / 1.414) -> tuple[np.ndarray, np.ndarray]:
    """``eight_gaussians`` with each point's component as its label: x = c_k + std · ε, k ~ U{0..7}, ε ~ N(0, I).

    Returns (x (n, 2) float64, y (n,) int64 in 0..7, y_n = k of point n). std: each component's standard
    deviation; the default, FFJORD's 0.5/1.414 ≈ 0.354, draws the points of ``eight_gaussians`` for the same
    rng (up to rounding). The components share weight and covariance, so the Bayes classifier of the density
    is the nearest centre (``eight_gaussians_centres``).
    """
    n = _check(n, rng)
    if not (isinstance(std, (int, float, np.floating)) and math.isfinite(std) and std > 0):
        raise ValueError(f"std must be a finite number > 0, got {std!r}")
    k = rng.integers(0, 8, size=n)
    return eight_gaussians_centres()[k] + float(std) * rng.standard_normal((n, 2)), k.astype(np.int64)
