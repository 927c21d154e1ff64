"""Shared pytest set-up: one BLAS thread; tests marked ``gpu`` run only where CuPy sees a CUDA device."""

from __future__ import annotations

import os

# The test models are tiny; a second OpenBLAS thread only spins for a core on a busy 2-core machine
# (measured 5-10x slower). Set before any test module imports NumPy; a user's own setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pytest  # noqa: E402


def _cupy_device_reason() -> str | None:
    """None when CuPy imports and sees at least one CUDA device, else why not."""
    try:
        import cupy
    except Exception as exc:  # ImportError, or a broken CUDA install raising on import
        return f"CuPy is not importable ({type(exc).__name__})"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return f"CuPy has no usable CUDA device ({type(exc).__name__})"
    return None if count >= 1 else "CuPy sees no CUDA device"


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    reason = _cupy_device_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in gpu_items:
        item.add_marker(skip)
