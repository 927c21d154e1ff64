"""Shared pytest set-up: one BLAS thread; tests marked ``gpu`` run only where CuPy sees a CUDA device."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


ROOT = Path(__file__).resolve().parents[1]


def crosscheck_import(name: str):
    """Import a cross-check package (torch, scipy.stats): skip the test without it, unless
    NPDIFF_CROSSCHECK=1 (as .ci/run sets), where a missing package is a failure, not a skip."""
    if os.environ.get("NPDIFF_CROSSCHECK") == "1":
        import importlib

        return importlib.import_module(name)
    return pytest.importorskip(name)


@pytest.fixture()
def crosscheck():
    """``crosscheck("torch")``: the package, or a skip (a failure under NPDIFF_CROSSCHECK=1)."""
    return crosscheck_import


@pytest.fixture()
def run_demo(tmp_path):
    """Run ``demos/<name>`` in a fresh process, as a user runs it from a shell, with the repository on
    PYTHONPATH, the NumPy backend and a headless matplotlib. -> ``subprocess.CompletedProcess``"""

    def run(name: str, *args: str, timeout: float = 300):
        env = dict(os.environ, MPLBACKEND="Agg")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        env.pop("NPDIFF_BACKEND", None)
        return subprocess.run([sys.executable, str(ROOT / "demos" / name), *map(str, args)], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=timeout)

    return run


@pytest.fixture()
def strict_cupy(monkeypatch):
    """The strict CuPy double (``tests/strict_cupy.py``) selected as the backend through
    ``backend.set_backend("cupy")``, its transfer log cleared; NumPy is selected again afterwards.
    Yields the double's module (``strict_cupy.TRANSFERS`` counts device→host transfers)."""
    import strict_cupy as double

    from npdiff import backend

    double.install(monkeypatch)
    double.DEVICE_COUNT[0] = 1
    backend.set_backend("cupy")
    double.TRANSFERS.reset()
    try:
        yield double
    finally:
        backend.set_backend("numpy")
