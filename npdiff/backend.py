"""The array backend: one module `xp` (NumPy by default, CuPy on request) for all library math.

Library code reads the module at call time, ``xp = backend.xp``, never ``import cupy as np``, so a
``set_backend`` call switches every later computation. Arrays reach the host only through
``to_numpy`` (the CuPy/Chainer ``get_array_module`` idiom, with the choice made once, up front).

Selection: the environment variable ``NPDIFF_BACKEND`` (``numpy`` or ``cupy``) is read at import;
``set_backend(name)`` changes it later. Asking for CuPy without CuPy installed, or without a CUDA
device, raises a ``RuntimeError`` that says which of the two is missing.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import numpy

xp: ModuleType = numpy
name: str = "numpy"

_NAMES = ("numpy", "cupy")


def _load_cupy() -> ModuleType:
    try:
        cupy = importlib.import_module("cupy")
    except ImportError as exc:
        raise RuntimeError(
            "NPDIFF backend 'cupy' was requested but CuPy is not installed; "
            "install it with `pip install -e .[gpu]` (CUDA 12) or use the 'numpy' backend"
        ) from exc
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CuPy raises its own CUDARuntimeError when no driver is present
        raise RuntimeError(f"CuPy is installed but no CUDA device is usable: {exc}") from exc
    if count < 1:
        raise RuntimeError("CuPy is installed but no CUDA device is present")
    return cupy


def set_backend(backend: str) -> ModuleType:
    """Select the array module for all later library math; returns it.

    backend: ``"numpy"`` or ``"cupy"`` (case-insensitive).
    """
    global xp, name
    key = str(backend).strip().lower()
    if key not in _NAMES:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(_NAMES)}")
    xp = numpy if key == "numpy" else _load_cupy()
    name = key
    return xp


def to_numpy(a) -> numpy.ndarray:
    """The one exit to the host: a NumPy array for any backend array (or scalar, or list)."""
    if isinstance(a, numpy.ndarray):
        return a
    get = getattr(a, "get", None)  # cupy.ndarray.get() copies device -> host
    if get is not None and not isinstance(a, (list, tuple)):
        return get()
    return numpy.asarray(a)


def default_rng(seed=None):
    """A random generator of the selected backend (``numpy.random.Generator`` or CuPy's)."""
    return xp.random.default_rng(seed)


def asarray(a, dtype=None):
    """Move host data (NumPy arrays, lists) onto the selected backend."""
    return xp.asarray(a, dtype=dtype)


set_backend(os.environ.get("NPDIFF_BACKEND", "numpy"))
