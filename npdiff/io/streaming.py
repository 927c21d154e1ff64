"""Work in bounded memory: chunked loops, point files written chunk by chunk, running means with errors.

``npdiff sample`` and ``npdiff eval`` use these so that their memory does not grow with ``--n``: points
are drawn or evaluated ``chunk`` at a time, samples go to disk as each chunk is ready (through an atomic
``npdiff.io.fileio.replacing`` write, so a failure leaves the previous file), and statistics are merged
chunk by chunk (``RunningMean``) instead of keeping one value per point.

Shape glossary: N points in all, C points in a chunk, D data dims.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil

import numpy as np

from npdiff.io import fileio

POINT_FORMATS = (".npy", ".csv")
CSV_FORMAT = "%.17g"  # round-trips every float64, so .csv and .npy hold the same numbers
CSV_BYTES_PER_VALUE = 25  # the longest "%.17g" value with its separator: "-1.2345678901234567e-308,"


def chunk_sizes(n: int, chunk: int):
    """The sizes of consecutive chunks of at most ``chunk`` that add up to ``n``."""
    for start in range(0, n, chunk):
        yield min(chunk, n - start)


def point_format(path) -> str:
    """The file format named by ``path``'s extension, ".npy" or ".csv"; ValueError for anything else."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext not in POINT_FORMATS:
        raise ValueError(f"{os.fspath(path)!r}: name a .npy or .csv file (got extension {ext or 'none'!r})")
    return ext


def estimate_bytes(path, n: int, d: int) -> int:
    """An upper bound on the size of the file of n points of dimension d that ``write_points`` makes."""
    if point_format(path) == ".npy":
        return 128 + 8 * n * d
    return CSV_BYTES_PER_VALUE * n * d + 8 * d + 1


def free_bytes(path) -> int:
    """Free space, in bytes, in the folder that ``path`` would be written to."""
    return shutil.disk_usage(os.path.dirname(os.path.abspath(os.fspath(path)))).free


def file_size_limit() -> int | None:
    """The largest file this process may write (``ulimit -f``, RLIMIT_FSIZE), or None when unlimited."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return None if soft == resource.RLIM_INFINITY or soft < 0 else int(soft)


def write_limit(path) -> tuple[int, str]:
    """(bytes, what limits them): the most that can be written to ``path``, the free space of its disk or the
    file-size limit, whichever is smaller; checked before any work so that a run does not fail at its end."""
    free, cap = free_bytes(path), file_size_limit()
    if cap is not None and cap < free:
        return cap, "allowed by the file-size limit (ulimit -f)"
    return free, "free on its disk"


class _PointWriter:
    """Appends float64 rows (C, D) to an open file in the format of its name; checks the count at the end."""

    def __init__(self, f, fmt: str, n: int, d: int) -> None:
        self.f, self.fmt, self.n, self.d, self.rows = f, fmt, n, d, 0
        if fmt == ".npy":
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f8")), "fortran_order": False, "shape": (n, d)}
            np.lib.format.write_array_header_1_0(f, header)
        else:
            f.write((",".join(f"x{k + 1}" for k in range(d)) + "\n").encode())

    def write(self, x) -> None:
        x = np.ascontiguousarray(x, dtype="<f8")
        if x.ndim != 2 or x.shape[1] != self.d or self.rows + x.shape[0] > self.n:
            raise ValueError(f"rows of shape {x.shape} do not fit a file of {self.n} points of dimension {self.d} "
                             f"({self.rows} written)")
        if self.fmt == ".npy":
            self.f.write(x.tobytes())
        else:
            np.savetxt(self.f, x, delimiter=",", fmt=CSV_FORMAT)
        self.rows += x.shape[0]


@contextlib.contextmanager
def write_points(path, n: int, d: int):
    """``with write_points(p, n, d) as w: w.write(chunk)…``: the file appears at ``p`` only when all n rows
    were written; on an error (or too few rows) the previous file at ``p`` is left as it was."""
    fmt = point_format(path)
    with fileio.replacing(path) as f:
        writer = _PointWriter(f, fmt, n, d)
        yield writer
        if writer.rows != n:
            raise ValueError(f"{writer.rows} of {n} points were written to {os.fspath(path)!r}")


class RunningMean:
    """Mean and standard error of a stream of values, merged chunk by chunk (Chan et al.'s pairwise update).

    For a chunk with k values, mean m_b and summed squared deviations M2_b, merged into (n, m, M2):
    δ = m_b − m;  m += δ·k/(n+k);  M2 += M2_b + δ²·n·k/(n+k);  n += k. SE = √(M2/(n−1)/n).
    """

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, values) -> None:
        values = np.asarray(values, dtype=np.float64).ravel()
        k = values.size
        if k == 0:
            return
        mean_b = float(values.mean())
        m2_b = float(((values - mean_b) ** 2).sum())
        delta, total = mean_b - self.mean, self.n + k
        self.mean += delta * k / total
        self.m2 += m2_b + delta * delta * self.n * k / total
        self.n = total

    @property
    def se(self) -> float:
        return math.sqrt(self.m2 / (self.n - 1) / self.n) if self.n > 1 else float("nan")
