"""The array backend: NumPy by default, CuPy on request (faked here), the env var, and to_numpy."""

import importlib
import sys
import types

import numpy as np
import pytest

from npdiff import backend


@pytest.fixture(autouse=True)
def restore_numpy_backend():
    """Every test leaves NumPy selected, whatever it switched to (runs after monkeypatch's undo)."""
    yield
    backend.set_backend("numpy")


def fake_cupy(device_count, version="14.2.0"):
    """A stand-in ``cupy`` module of ``version`` whose getDeviceCount returns ``device_count`` (or raises it)."""

    def get_device_count():
        if isinstance(device_count, Exception):
            raise device_count
        return device_count

    module = types.ModuleType("cupy")
    module.__version__ = version
    module.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=get_device_count))
    return module


def test_numpy_is_the_default_backend():
    assert backend.xp is np
    assert backend.name == "numpy"
    assert isinstance(backend.asarray([1, 2], dtype="float64"), np.ndarray)
    assert isinstance(backend.default_rng(0), np.random.Generator)


def test_set_backend_numpy_returns_numpy_case_insensitively():
    assert backend.set_backend(" NumPy ") is np
    assert backend.xp is np and backend.name == "numpy"


def test_set_backend_cupy_selects_fake_cupy_with_one_device(monkeypatch):
    fake = fake_cupy(1)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    assert backend.set_backend("CuPy") is fake
    assert backend.xp is fake and backend.name == "cupy"


@pytest.mark.parametrize("count", [0, OSError("cudaErrorNoDevice")])
def test_set_backend_cupy_without_device_raises_and_keeps_numpy(monkeypatch, count):
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(count))
    with pytest.raises(RuntimeError, match="CUDA device"):
        backend.set_backend("cupy")
    assert backend.xp is np and backend.name == "numpy"


@pytest.mark.parametrize("version", ["13.6.0", "12.3.0", "dev"])
def test_a_cupy_older_than_14_is_refused_for_its_promotion_rules(monkeypatch, version):
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(1, version))
    with pytest.raises(RuntimeError, match=rf"CuPy {version} is older than 14: .*NEP 50.*\.\[gpu\]"):
        backend.set_backend("cupy")
    assert backend.xp is np and backend.name == "numpy"


def test_the_version_is_checked_before_the_device(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(0, "13.0.0"))  # old and no device: the version is named
    with pytest.raises(RuntimeError, match="older than 14"):
        backend.set_backend("cupy")


def test_set_backend_cupy_not_installed_raises_with_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes `import cupy` raise ImportError
    with pytest.raises(RuntimeError, match="not installed.*install"):
        backend.set_backend("cupy")
    assert backend.xp is np


def test_unknown_backend_name_raises_value_error():
    with pytest.raises(ValueError, match="jax"):
        backend.set_backend("jax")
    assert backend.xp is np


def test_env_var_npdiff_backend_is_read_at_import(monkeypatch):
    fake = fake_cupy(1)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    try:
        monkeypatch.setenv("NPDIFF_BACKEND", "cupy")
        importlib.reload(backend)
        assert backend.xp is fake and backend.name == "cupy"
        monkeypatch.setenv("NPDIFF_BACKEND", "numpy")
        importlib.reload(backend)
        assert backend.xp is np
        monkeypatch.delenv("NPDIFF_BACKEND")
        importlib.reload(backend)
        assert backend.xp is np and backend.name == "numpy"
        monkeypatch.setenv("NPDIFF_BACKEND", "tensorflow")
        with pytest.raises(ValueError, match="tensorflow"):
            importlib.reload(backend)
    finally:
        monkeypatch.delenv("NPDIFF_BACKEND", raising=False)
        importlib.reload(backend)
    assert backend.xp is np


def test_to_numpy_returns_numpy_arrays_unchanged():
    a = np.arange(6.0).reshape(2, 3)
    assert backend.to_numpy(a) is a


def test_to_numpy_converts_lists_and_scalars():
    out = backend.to_numpy([[1.5, 2.5], [3.5, 4.5]])
    assert isinstance(out, np.ndarray) and out.shape == (2, 2)
    np.testing.assert_array_equal(out, [[1.5, 2.5], [3.5, 4.5]])
    assert backend.to_numpy(3.0).shape == () and float(backend.to_numpy(3.0)) == 3.0


def test_to_numpy_calls_get_on_device_arrays():
    host = np.array([1.0, -2.0, 3.0])

    class DeviceArray:  # like cupy.ndarray: .get() copies device -> host
        def get(self):
            return host.copy()

    out = backend.to_numpy(DeviceArray())
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, host)


@pytest.mark.gpu
def test_denoiser_forward_on_cupy_matches_numpy():
    from npdiff.nn.denoiser import Denoiser

    config = dict(data_dim=2, hidden=8, n_blocks=2, emb_dim=8, layernorm=True, final_layernorm=True,
                  dtype="float64", seed=0)
    rng = np.random.default_rng(0)
    x, t = rng.standard_normal((5, 2)), rng.integers(1, 100, size=5)
    cpu = Denoiser(**config)
    y_cpu = cpu.forward(x, t)

    cupy = backend.set_backend("cupy")
    gpu = Denoiser(**config)
    gpu.flat_params[...] = cupy.asarray(cpu.flat_params)  # CuPy's generator draws other numbers
    y_gpu = gpu.forward(cupy.asarray(x), cupy.asarray(t))
    assert isinstance(y_gpu, cupy.ndarray)
    np.testing.assert_allclose(backend.to_numpy(y_gpu), y_cpu, rtol=1e-10, atol=1e-12)
