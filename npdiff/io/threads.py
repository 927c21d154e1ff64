"""The BLAS thread policy of the command line and the demos: one thread unless the user says otherwise.

NumPy's matrix products run in a BLAS (OpenBLAS in NumPy's wheels) that starts one thread per core.
npdiff's matrices are small (at most 128 × 1024 · 1024 × 1024, in the MNIST demo), and a second BLAS
thread that has to wait for a core held by another process spins instead of working. Measured with
``benchmarks/blas_threads.py`` on the project's 2-core machine (each demo's step, 2 threads / 1 thread):
with another process on one core, 7.2× slower (heart, Swiss roll), 8.3× (the command line's default
model), 4.2× (MNIST); with the other core mostly free, MNIST alone gained (0.79×, i.e. 1.3× faster) and
the others lost or tied. So the command line and every demo call ``apply_policy()`` first, which
limits the BLAS to one thread, unless the user has set one of ``USER_VARIABLES`` (then their setting
wins and nothing is changed): ``OPENBLAS_NUM_THREADS=2 python demos/mnist.py`` on an idle machine.

The library itself never changes the thread count: importing npdiff leaves the process as it was.
The limit is set through ``threadpoolctl`` when it is installed, else directly through OpenBLAS's own
``openblas_set_num_threads`` in the library NumPy has loaded (found in ``/proc/self/maps``, Linux),
and the environment variable is set too, for BLAS libraries loaded later and for child processes.
"""

from __future__ import annotations

import ctypes
import os

USER_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")
DEFAULT_THREADS = 1
_SETTERS = ("openblas_set_num_threads", "openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
            "scipy_openblas_set_num_threads64_")


def user_setting() -> str | None:
    """``"NAME=value"`` of the first thread variable the user has set, or None."""
    for name in USER_VARIABLES:
        if os.environ.get(name, "").strip():
            return f"{name}={os.environ[name].strip()}"
    return None


def _openblas_libraries() -> list[str]:
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line}
    except OSError:  # not Linux
        return []
    return sorted(p for p in paths if os.path.isfile(p))


def set_blas_threads(n: int) -> bool:
    """Limit the BLAS libraries loaded in this process to ``n`` threads; True if one was found."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
    if threadpool_limits is not None:
        return bool(threadpool_limits(limits=int(n), user_api="blas").get_original_num_threads().get("blas"))
    found = False
    for path in _openblas_libraries():
        library = ctypes.CDLL(path)  # the loaded library itself: dlopen of a loaded path returns it
        for name in _SETTERS:
            setter = getattr(library, name, None)
            if setter is not None:
                setter(ctypes.c_int(int(n)))
                found = True
                break
    return found


def apply_policy(threads: int = DEFAULT_THREADS) -> str:
    """Use ``threads`` BLAS threads unless the user set a thread variable; returns a line saying which."""
    mine = user_setting()
    if mine is not None:
        return f"BLAS threads: {mine} (your setting)"
    os.environ["OPENBLAS_NUM_THREADS"] = str(int(threads))  # BLAS loaded later, child processes
    set_blas_threads(threads)
    return f"BLAS threads: {threads} (npdiff's default; set OPENBLAS_NUM_THREADS to choose)"
