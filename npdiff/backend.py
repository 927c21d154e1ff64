"""The array backend: one module `xp` (NumPy by default, CuPy on request) for all library math.

Library code reads the module at call time, ``xp = backend.xp``, never ``import cupy as np``, so a
``set_backend`` call switches every later computation. Arrays reach the host only through
``to_numpy`` (the CuPy/Chainer ``get_array_module`` idiom, with the choice made once, up front).

Selection: the environment variable ``NPDIFF_BACKEND`` (``numpy`` or ``cupy``) is read at import;
``set_backend(name)`` changes it later. Asking for CuPy without CuPy installed, with a CuPy older than
14, or without a CUDA device, raises a ``RuntimeError`` that says which. CuPy 14 is the first to follow
NumPy 2's promotion rules (NEP 50, e.g. a NumPy float64 scalar times a float32 array is float64, a Python
float keeps it float32); with an older CuPy the same code could compute in another dtype than on NumPy.

Random generators differ between the backends: ``default_rng(seed)`` is NumPy's PCG64 or CuPy's cuRAND
XORWOW, so a seed does not give the same numbers on both. CuPy's ``Generator`` also lacks some methods
(``permutation``, ``choice``, ``shuffle``, ``normal``) and has no ``bit_generator.state`` dict; the helpers
``permutation``, ``rng_state`` and ``set_rng_state`` work with either.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import numpy

xp: ModuleType = numpy
name: str = "numpy"

_NAMES = ("numpy", "cupy")
MIN_CUPY = 14  # the first CuPy with NumPy 2's promotion rules (NEP 50)
_INSTALL = "`pip install -e .[gpu]` (CUDA 12; `.[gpu-cuda13]` for CUDA 13)"


def _major(version: str) -> int | None:
    head = str(version).split(".")[0]
    return int(head) if head.isdigit() else None


def _load_cupy() -> ModuleType:
    try:
        cupy = importlib.import_module("cupy")
    except ImportError as exc:
        raise RuntimeError(
            f"NPDIFF backend 'cupy' was requested but CuPy is not installed; install it with {_INSTALL} "
            "or use the 'numpy' backend"
        ) from exc
    version = getattr(cupy, "__version__", "unknown")
    major = _major(version)
    if major is None or major < MIN_CUPY:
        raise RuntimeError(
            f"CuPy {version} is older than {MIN_CUPY}: npdiff needs NumPy 2's promotion rules (NEP 50), which "
            f"CuPy follows from version {MIN_CUPY} on (with an older CuPy, mixed scalar/array math can get "
            f"another dtype than on NumPy); upgrade with {_INSTALL}"
        )
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


def permutation(rng, n: int):
    """A uniformly random permutation of 0..n−1 on the generator's backend.  -> (n,) integers

    ``rng.permutation(n)`` where the generator has it (NumPy); CuPy's ``Generator`` has none, so there it is
    the argsort of n uniform draws (a uniform permutation up to ties, whose probability is below n²/2⁵³).
    """
    if hasattr(rng, "permutation"):
        return rng.permutation(n)
    return xp.argsort(rng.random(int(n)))


def rng_state(rng) -> dict:
    """The generator's state on the host, for checkpoints.

    NumPy: ``rng.bit_generator.state`` (a JSON-able dict). CuPy's bit generators have no such dict; their
    state is a device byte array (``bit_generator._state``, a private attribute of CuPy 14), returned as
    ``{"bit_generator": name, "device_state": uint8 array}``.
    """
    bits = rng.bit_generator
    state = getattr(bits, "state", None)
    if isinstance(state, dict):  # NumPy's; CuPy's ``state`` is a method returning the device address
        return state
    device = getattr(bits, "_state", None)
    if device is None:
        raise TypeError(f"cannot read the state of a {type(bits).__name__} generator")
    return {"bit_generator": type(bits).__name__, "device_state": to_numpy(device).view(numpy.uint8).copy()}


def set_rng_state(rng, state: dict, *, check_only: bool = False) -> None:
    """Put a state from ``rng_state`` back into ``rng`` (or, with ``check_only``, only check that it fits).

    Raises ValueError (or TypeError/KeyError for a malformed dict) when the state does not fit this
    generator, e.g. when it was written on the other backend.
    """
    bits = rng.bit_generator
    kind = type(bits).__name__
    if state.get("bit_generator") != kind:
        raise ValueError(f"it is the state of a {state.get('bit_generator')} generator; this run's generator is "
                         f"a {kind} (resume on the backend that wrote it)")
    if "device_state" in state:
        stored, device = numpy.asarray(state["device_state"]), bits._state
        if stored.dtype != numpy.uint8 or stored.size != device.nbytes:
            raise ValueError(f"it has {stored.size} bytes; this device's {kind} state has {device.nbytes}")
        if not check_only:
            device[...] = xp.asarray(stored.view(device.dtype).reshape(device.shape))
        return
    probe = type(bits)()
    probe.state = state  # NumPy validates the dict here
    if not check_only:
        bits.state = state


def asarray(a, dtype=None):
    """Move host data (NumPy arrays, lists) onto the selected backend."""
    return xp.asarray(a, dtype=dtype)


set_backend(os.environ.get("NPDIFF_BACKEND", "numpy"))
