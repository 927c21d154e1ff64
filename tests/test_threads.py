"""The BLAS thread policy: one thread by default, set at run time (NumPy already loaded); the user's setting wins."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from npdiff.io import threads

ROOT = Path(__file__).resolve().parents[1]
PROBE = """
import json, sys
import numpy  # loaded first, as `npdiff` loads it before the command line applies the policy
if sys.argv[1] == "hide-threadpoolctl":
    sys.modules["threadpoolctl"] = None  # the ctypes route
from npdiff.io import threads
line = threads.apply_policy()
libs = threads._openblas_libraries()
import ctypes
counts = []
for path in libs:
    lib = ctypes.CDLL(path)
    for name in ("scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads", "openblas_get_num_threads",
                 "openblas_get_num_threads64_"):
        getter = getattr(lib, name, None)
        if getter is not None:
            getter.restype = ctypes.c_int
            counts.append(getter())
            break
print(json.dumps({"line": line, "threads": counts}))
"""


def _probe(route: str, **env_vars) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in threads.USER_VARIABLES}
    env.update(env_vars, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    out = subprocess.run([sys.executable, "-c", PROBE, route], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


needs_openblas = pytest.mark.skipif(not sys.platform.startswith("linux") or not threads._openblas_libraries(),
                                    reason="needs NumPy's OpenBLAS on Linux to read the thread count back")


@needs_openblas
@pytest.mark.parametrize("route", ["threadpoolctl", "hide-threadpoolctl"])
def test_one_thread_by_default_even_after_numpy_loaded(route):
    result = _probe(route)
    assert result["threads"] and set(result["threads"]) == {1}
    assert "npdiff's default" in result["line"]


@needs_openblas
@pytest.mark.parametrize("variable", ["OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"])
def test_the_users_own_setting_wins(variable):
    result = _probe("threadpoolctl", **{variable: "2"})
    assert set(result["threads"]) == {2} and f"{variable}=2 (your setting)" in result["line"]
