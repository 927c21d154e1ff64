"""A strict stand-in for CuPy 14 on a machine without a GPU: the evidence that npdiff runs on device arrays.

``install(monkeypatch)`` puts this module in ``sys.modules["cupy"]``, so ``npdiff.backend.set_backend("cupy")``
selects it through the same path as the real CuPy (``importlib.import_module("cupy")``, the version check,
``cuda.runtime.getDeviceCount()``). The ``strict_cupy`` fixture in ``conftest.py`` does that.

Its arrays (``ndarray``) wrap NumPy arrays (views stay views, so npdiff's flat parameter buffers work) but
are a distinct type that behaves like ``cupy.ndarray`` where porting code usually breaks:

* no implicit conversion to NumPy: ``__array__`` raises TypeError with CuPy's message, so ``np.asarray``,
  ``np.savez``, ``json``, a host array on the left of an operator all fail as they do on a GPU;
* NumPy functions called on them are refused (``__array_function__``, ``__array_ufunc__``): CuPy would
  dispatch some of them through NEP 13/18, but npdiff's rule is one ``xp`` chosen up front, and a NumPy
  call on device data is either a bug on CuPy (a host array mixed in) or a hidden conversion. The one
  exception is a NumPy *scalar* on the left of an operator (``np.float64(2) * x``), which CuPy supports;
* the module's functions refuse host ``numpy.ndarray`` inputs (CuPy raises "Unsupported type"); host data
  enter only through ``asarray``/``array``;
* ``.get()`` / ``asnumpy`` are the way back; ``float()``, ``int()``, ``bool()``, ``.item()``, ``.tolist()``,
  ``format()`` and ``repr()`` work for what CuPy allows them on, but each is a device→host copy with a sync
  on a GPU, so each is recorded in ``TRANSFERS`` with its kind and the line of the caller; so are the
  implicit syncs of data-dependent shapes (boolean-mask indexing, ``nonzero``, ``flatnonzero``, ``unique``,
  ``bincount``), which CuPy performs to size its output;
* integer-array indices out of range wrap around (CuPy's documented difference) instead of raising;
* the random ``Generator`` has only the methods of ``cupy.random.Generator`` (cupy/random/_generator_api.pyx):
  no ``permutation``, ``choice``, ``shuffle`` or ``normal``; its stream differs from NumPy's for the same
  seed (as CuPy's XORWOW does), and its state is a device byte array ``bit_generator._state`` (as in CuPy,
  whose BitGenerator has no ``state`` dict);
* functions and keywords CuPy lacks are absent: ``argsort``/``sort`` accept only ``kind=None``/``"stable"``,
  ``unique`` has no ``sorted=``.

Arithmetic and dtype promotion are NumPy 2's (NEP 50), which is what CuPy follows from v14 on.
"""

from __future__ import annotations

import builtins
import collections
import os
import sys
import types

import numpy

__version__ = "14.2.0"
_HERE = os.path.abspath(__file__)
_IMPLICIT = ("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct a NumPy "
             "array explicitly.")


# ---- the transfer log -------------------------------------------------------------------------------

class TransferLog:
    """Device→host copies and syncs: (kind, "file:line" of the first caller outside this module)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def reset(self) -> None:
        self.events.clear()

    @property
    def count(self) -> int:
        return len(self.events)

    def by_site(self) -> collections.Counter:
        return collections.Counter(self.events)

    def sites(self, under: str = "") -> collections.Counter:
        """Events per caller line, only those whose file path contains ``under`` (e.g. "npdiff/")."""
        return collections.Counter(site for _, site in self.events if under in site)

    def record(self, kind: str) -> None:
        frame = sys._getframe(1)  # the caller: skip this module and npdiff.backend's exits (to_numpy)
        while frame is not None and (os.path.abspath(frame.f_code.co_filename) == _HERE
                                     or frame.f_code.co_filename.endswith(os.path.join("npdiff", "backend.py"))):
            frame = frame.f_back
        if frame is None:
            where = "?"
        else:
            path = frame.f_code.co_filename
            root = os.path.dirname(os.path.dirname(_HERE))
            where = f"{os.path.relpath(path, root) if path.startswith(root) else path}:{frame.f_lineno}"
        self.events.append((kind, where))


TRANSFERS = TransferLog()


# ---- wrapping and unwrapping ------------------------------------------------------------------------

def _wrap(value):
    """NumPy results as device arrays (NumPy scalars become 0-d arrays, as CuPy returns)."""
    if isinstance(value, numpy.ndarray):
        out = ndarray.__new__(ndarray)
        out._a = value
        return out
    if isinstance(value, numpy.generic):
        return _wrap(numpy.asarray(value))
    if isinstance(value, tuple):
        return tuple(_wrap(v) for v in value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


def _unwrap(value, what: str = "this function"):
    """Device arrays as their NumPy storage; a host numpy.ndarray is refused, as CuPy refuses it."""
    if isinstance(value, ndarray):
        return value._a
    if isinstance(value, numpy.ndarray):
        raise TypeError(f"Unsupported type <class 'numpy.ndarray'> in {what}: a host array mixed into device "
                        "math (move it with backend.asarray first)")
    if isinstance(value, (list, tuple)):
        return type(value)(_unwrap(v, what) for v in value)
    if isinstance(value, dict):
        return {k: _unwrap(v, what) for k, v in value.items()}
    return value


def _call(name: str, func, args, kwargs):
    return _wrap(func(*_unwrap(args, name), **_unwrap(kwargs, name)))


def _scalar_transfer(a: "ndarray", kind: str = "scalar"):
    if a._a.size != 1:
        raise TypeError("only size-1 arrays can be converted to Python scalars")
    TRANSFERS.record(kind)
    return a._a.reshape(()).item()


def _wrap_index(key, shape):
    """A NumPy index from a device one: device arrays unwrapped, integer arrays wrapped around their axis
    (CuPy does not raise for out-of-range integer-array indices), boolean masks logged as a sync."""
    key = key if isinstance(key, tuple) else (key,)

    def consumed(k):
        if k is None or k is Ellipsis:
            return 0
        a = k._a if isinstance(k, ndarray) else k
        return a.ndim if isinstance(a, numpy.ndarray) and a.dtype == bool else 1

    used = builtins.sum(consumed(k) for k in key)
    out, axis = [], 0
    for k in key:
        if k is Ellipsis:
            out.append(k)
            axis += len(shape) - used
            continue
        if k is None:
            out.append(k)
            continue
        a = k._a if isinstance(k, ndarray) else (numpy.asarray(k) if isinstance(k, list) else k)
        if isinstance(a, numpy.ndarray) and a.dtype == bool:
            TRANSFERS.record("sync")  # the result's length is the number of True entries
            out.append(a)
            axis += a.ndim
        elif isinstance(a, numpy.ndarray) and a.dtype.kind in "iu" and a.ndim > 0:
            out.append(a % shape[axis] if shape[axis] else a)
            axis += 1
        else:
            out.append(a)
            axis += 1
    return tuple(out)


# ---- the device array -------------------------------------------------------------------------------

def _binary(ufunc):
    def op(self, other):
        return _call(ufunc.__name__, ufunc, (self, other), {})

    def rop(self, other):
        return _call(ufunc.__name__, ufunc, (other, self), {})

    def iop(self, other):
        ufunc(self._a, _unwrap(other, ufunc.__name__), out=self._a)
        return self

    return op, rop, iop


class ndarray:
    """A device array (a NumPy array behind a wall: see the module docstring for what it refuses)."""

    __slots__ = ("_a", "__weakref__")
    __array_priority__ = 100
    __hash__ = None

    def __init__(self, shape, dtype=float, memptr=None, strides=None, order="C"):
        self._a = numpy.empty(shape, dtype=dtype, order=order)

    # -- the wall
    def __array__(self, dtype=None, copy=None):
        raise TypeError(_IMPLICIT)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        scalar_left = (method == "__call__" and not kwargs and len(inputs) == 2
                       and isinstance(inputs[0], numpy.generic) and isinstance(inputs[1], ndarray))
        if scalar_left:  # np.float64(2) * x: CuPy handles a NumPy scalar on the left of an operator
            return _call(ufunc.__name__, ufunc, inputs, {})
        raise TypeError(f"numpy.{ufunc.__name__}{'' if method == '__call__' else '.' + method} called on a device "
                        "array (use backend.xp; a host array on the left of an operator fails on CuPy too)")

    def __array_function__(self, func, types_, args, kwargs):
        raise TypeError(f"numpy.{func.__name__}() called on a device array: use backend.xp.{func.__name__}, or "
                        "backend.to_numpy first")

    # -- the way back, and what it costs
    def get(self, stream=None, order="C", out=None, blocking=True):
        TRANSFERS.record("get")
        return self._a.copy()

    def item(self):
        return _scalar_transfer(self)

    def tolist(self):
        TRANSFERS.record("get")
        return self._a.tolist()

    def __float__(self):
        return float(_scalar_transfer(self))

    def __int__(self):
        return int(_scalar_transfer(self))

    def __index__(self):
        if self._a.dtype.kind not in "iu":
            raise TypeError("only integer arrays can be used as an index")
        return int(_scalar_transfer(self))

    def __bool__(self):
        return builtins.bool(_scalar_transfer(self))

    def __complex__(self):
        return complex(_scalar_transfer(self))

    def __format__(self, spec):
        TRANSFERS.record("scalar")
        return format(self._a.reshape(()).item() if self._a.size == 1 else self._a, spec)

    def __repr__(self):
        TRANSFERS.record("get")
        return f"strict_cupy.{self._a!r}"

    __str__ = __repr__

    # -- metadata (host-side in CuPy too)
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    device = property(lambda self: cuda.Device(0))
    T = property(lambda self: _wrap(self._a.T))
    real = property(lambda self: _wrap(self._a.real))
    imag = property(lambda self: _wrap(self._a.imag))

    @property
    def base(self):
        return None if self._a.base is None else _wrap(self._a.base)

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        if self._a.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(len(self._a)))

    # -- indexing
    def __getitem__(self, key):
        return _wrap(self._a[_wrap_index(key, self._a.shape)])

    def __setitem__(self, key, value):
        self._a[_wrap_index(key, self._a.shape)] = _unwrap(value, "__setitem__")

    # -- methods
    def astype(self, dtype, order="K", casting=None, subok=None, copy=True):
        return _wrap(self._a.astype(dtype, order=order, copy=copy))

    def argsort(self, axis=-1, kind=None):
        return argsort(self, axis, kind)

    def sort(self, axis=-1, kind=None):
        _check_kind(kind)
        self._a.sort(axis=axis, kind="stable")

    def nonzero(self):
        TRANSFERS.record("sync")
        return _wrap(self._a.nonzero())

    def __neg__(self):
        return _wrap(-self._a)

    def __pos__(self):
        return _wrap(+self._a)

    def __abs__(self):
        return _wrap(builtins.abs(self._a))

    def __invert__(self):
        return _wrap(~self._a)


def _method(name):
    def method(self, *args, **kwargs):
        return _call(f"ndarray.{name}", getattr(self._a, name), args, kwargs)

    method.__name__ = name
    return method


for _name in ("reshape", "ravel", "flatten", "copy", "transpose", "swapaxes", "squeeze", "sum", "mean", "max",
              "min", "prod", "std", "var", "all", "any", "argmax", "argmin", "cumsum", "cumprod", "clip", "dot",
              "take", "repeat", "fill", "view", "round", "conj", "diagonal", "trace"):
    setattr(ndarray, _name, _method(_name))

for _ufunc, _names in ((numpy.add, "add"), (numpy.subtract, "sub"), (numpy.multiply, "mul"),
                       (numpy.true_divide, "truediv"), (numpy.floor_divide, "floordiv"), (numpy.remainder, "mod"),
                       (numpy.power, "pow"), (numpy.matmul, "matmul"), (numpy.bitwise_and, "and"),
                       (numpy.bitwise_or, "or"), (numpy.bitwise_xor, "xor"), (numpy.left_shift, "lshift"),
                       (numpy.right_shift, "rshift")):
    _op, _rop, _iop = _binary(_ufunc)
    setattr(ndarray, f"__{_names}__", _op)
    setattr(ndarray, f"__r{_names}__", _rop)
    setattr(ndarray, f"__i{_names}__", _iop)

for _ufunc, _name in ((numpy.equal, "eq"), (numpy.not_equal, "ne"), (numpy.less, "lt"), (numpy.less_equal, "le"),
                      (numpy.greater, "gt"), (numpy.greater_equal, "ge")):
    setattr(ndarray, f"__{_name}__", _binary(_ufunc)[0])


# ---- module functions -------------------------------------------------------------------------------

def _delegate(name: str, func=None, *, sync: bool = False, host: bool = False):
    """cupy.<name>: NumPy's function behind the wall. sync: its output's shape depends on the data (CuPy
    syncs to size it). host: it returns host metadata (shapes, dtypes), no arrays."""
    func = func or getattr(numpy, name)

    def function(*args, **kwargs):
        if sync:
            TRANSFERS.record("sync")
        if host:
            return func(*_unwrap(args, name), **_unwrap(kwargs, name))
        return _call(name, func, args, kwargs)

    function.__name__ = name
    return function


class ufunc:
    """A universal function with CuPy 14's methods: __call__, reduce, accumulate, reduceat, outer, at."""

    def __init__(self, np_ufunc) -> None:
        self._u, self.__name__ = np_ufunc, np_ufunc.__name__
        self.nin, self.nout, self.nargs = np_ufunc.nin, np_ufunc.nout, np_ufunc.nargs

    def __call__(self, *args, **kwargs):
        return _call(self.__name__, self._u, args, kwargs)

    def reduce(self, array, axis=0, dtype=None, out=None, keepdims=False):
        return _call(f"{self.__name__}.reduce", self._u.reduce, (array,),
                     dict(axis=axis, dtype=dtype, out=out, keepdims=keepdims))

    def accumulate(self, array, axis=0, dtype=None, out=None):
        return _call(f"{self.__name__}.accumulate", self._u.accumulate, (array,), dict(axis=axis, dtype=dtype, out=out))

    def reduceat(self, array, indices, axis=0, dtype=None, out=None):
        return _call(f"{self.__name__}.reduceat", self._u.reduceat, (array, indices),
                     dict(axis=axis, dtype=dtype, out=out))

    def outer(self, a, b, **kwargs):
        return _call(f"{self.__name__}.outer", self._u.outer, (a, b), kwargs)

    def at(self, a, indices, b=None):
        self._u.at(_unwrap(a), _unwrap(indices), _unwrap(b))


_UFUNCS = ("add subtract multiply divide true_divide floor_divide remainder mod power float_power negative positive "
           "absolute abs fabs sign sqrt square cbrt reciprocal exp exp2 expm1 log log2 log10 log1p sin cos tan "
           "arcsin arccos arctan arctan2 sinh cosh tanh arcsinh arccosh arctanh hypot maximum minimum fmax fmin "
           "logaddexp logaddexp2 isfinite isinf isnan signbit copysign floor ceil trunc rint equal not_equal less "
           "less_equal greater greater_equal logical_and logical_or logical_xor logical_not bitwise_and bitwise_or "
           "bitwise_xor invert left_shift right_shift deg2rad rad2deg").split()
_FUNCTIONS = ("where clip concatenate stack vstack hstack column_stack full full_like zeros zeros_like ones ones_like "
              "empty empty_like arange linspace logspace eye identity reshape ravel transpose swapaxes moveaxis "
              "expand_dims squeeze broadcast_to broadcast_arrays atleast_1d atleast_2d repeat tile take "
              "take_along_axis flip roll sum mean std var prod max amax min amin argmax argmin all any cumsum "
              "cumprod dot vdot matmul einsum outer inner tensordot kron searchsorted isclose allclose array_equal "
              "diff copy ascontiguousarray around round diag diagonal trace tril triu meshgrid nan_to_num "
              "count_nonzero pad split array_split cross interp histogram percentile quantile median nanmean "
              "nansum copyto").split()
_SYNC = ("flatnonzero", "nonzero", "argwhere", "unique", "bincount", "extract", "compress")
_HOST = ("shape", "ndim", "size", "result_type", "can_cast", "promote_types", "isscalar", "iscomplexobj",
         "isrealobj")


def _check_kind(kind) -> None:
    if kind not in (None, "stable"):
        raise ValueError(f"kind={kind!r}: CuPy's sort is always stable and accepts only kind=None or 'stable'")


def argsort(a, axis=-1, kind=None):
    _check_kind(kind)
    return _wrap(numpy.argsort(_unwrap(a, "argsort"), axis=axis, kind="stable"))


def sort(a, axis=-1, kind=None):
    _check_kind(kind)
    return _wrap(numpy.sort(_unwrap(a, "sort"), axis=axis, kind="stable"))


def unique(ar, return_index=False, return_inverse=False, return_counts=False, axis=None, *, equal_nan=True):
    TRANSFERS.record("sync")
    return _wrap(numpy.unique(_unwrap(ar, "unique"), return_index, return_inverse, return_counts, axis,
                              equal_nan=equal_nan))


def asarray(a, dtype=None, order=None, *, blocking=False):
    """Host data (NumPy arrays, lists, scalars) or device arrays as a device array: the way in."""
    if isinstance(a, ndarray):
        return a if dtype is None or a.dtype == numpy.dtype(dtype) else a.astype(dtype)
    if isinstance(a, (list, tuple)) and builtins.any(isinstance(v, ndarray) for v in a):
        return _wrap(numpy.array(_unwrap(a), dtype=dtype))
    return _wrap(numpy.array(a, dtype=dtype, order=order or "K", copy=True))


def array(obj, dtype=None, copy=True, order="K", subok=False, ndmin=0, *, blocking=False):
    out = asarray(obj, dtype)
    out = _wrap(numpy.array(out._a, copy=copy, ndmin=ndmin))
    return out


def asnumpy(a, stream=None, order="C", out=None, *, blocking=True):
    if isinstance(a, ndarray):
        return a.get()
    return numpy.asarray(a)


def get_array_module(*args):
    return sys.modules[__name__]


for _name in _UFUNCS:
    globals()[_name] = ufunc(getattr(numpy, _name))
for _name in _FUNCTIONS:
    if hasattr(numpy, _name):
        globals()[_name] = _delegate(_name)
for _name in _SYNC:
    if _name not in globals():
        globals()[_name] = _delegate(_name, sync=True)
for _name in _HOST:
    globals()[_name] = _delegate(_name, host=True)

for _name in ("dtype", "float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16",
              "uint32", "uint64", "intp", "bool_", "complex64", "complex128", "integer", "floating", "number",
              "signedinteger", "unsignedinteger", "inexact", "finfo", "iinfo", "inf", "nan", "pi", "e", "newaxis"):
    globals()[_name] = getattr(numpy, _name)
bool = numpy.bool_  # noqa: A001  (cupy.bool, as NumPy 2 has numpy.bool)

linalg = types.SimpleNamespace(norm=_delegate("norm", numpy.linalg.norm), inv=_delegate("inv", numpy.linalg.inv),
                               solve=_delegate("solve", numpy.linalg.solve),
                               cholesky=_delegate("cholesky", numpy.linalg.cholesky))


# ---- random: cupy.random.default_rng, Generator, XORWOW ---------------------------------------------

class XORWOW:
    """The bit generator: as in CuPy, the state is a device byte array (``_state``), ``state()`` its address,
    and there is no ``state`` dict. Here the bytes hold a PCG64 state salted so that the stream differs
    from ``numpy.random.default_rng(seed)`` (CuPy's differs too)."""

    def __init__(self, seed=None) -> None:
        bits = numpy.random.PCG64(numpy.random.SeedSequence([0x5EED_C0DE, *numpy.atleast_1d(seed or 0)])
                                  if seed is not None else None)
        self._state = asarray(numpy.zeros(48, dtype=numpy.int8))
        self._store(bits.state)

    def state(self) -> int:
        return id(self._state)

    def _store(self, state: dict) -> None:
        s = state["state"]
        raw = (s["state"].to_bytes(16, "little") + s["inc"].to_bytes(16, "little")
               + int(state["has_uint32"]).to_bytes(8, "little") + int(state["uinteger"]).to_bytes(8, "little"))
        self._state._a[...] = numpy.frombuffer(raw, dtype=numpy.int8)

    def _load(self) -> numpy.random.Generator:
        raw = self._state._a.tobytes()
        bits = numpy.random.PCG64()
        word = [int.from_bytes(raw[i:i + 16], "little") for i in (0, 16)]
        bits.state = {"bit_generator": "PCG64", "state": {"state": word[0], "inc": word[1]},
                      "has_uint32": int.from_bytes(raw[32:40], "little"),
                      "uinteger": int.from_bytes(raw[40:48], "little")}
        return numpy.random.Generator(bits)


class Generator:
    """``cupy.random.Generator``'s methods only (cupy/random/_generator_api.pyx, CuPy 14): random, uniform,
    integers, standard_normal, standard_exponential, exponential, gamma, standard_gamma, beta, chisquare,
    binomial, poisson, geometric, power. No permutation, choice, shuffle or normal."""

    def __init__(self, bit_generator) -> None:
        self.bit_generator = bit_generator

    def _draw(self, method: str, *args, **kwargs):
        g = self.bit_generator._load()
        out = getattr(g, method)(*args, **kwargs)
        self.bit_generator._store(g.bit_generator.state)
        return _wrap(numpy.asarray(out))

    @staticmethod
    def _float_dtype(dtype):
        dtype = numpy.dtype(dtype)
        if dtype.char not in "fd":
            raise TypeError(f"Unsupported dtype {dtype.name}")
        return dtype

    def random(self, size=None, dtype=numpy.float64, out=None):
        y = self._draw("random", size, dtype=self._float_dtype(dtype))
        return y if out is None else _fill(out, y)

    def uniform(self, low=0.0, high=1.0, size=None, dtype=numpy.float64):
        return self._draw("uniform", _unwrap(low), _unwrap(high), size).astype(dtype, copy=False)

    def integers(self, low, high=None, size=None, dtype=numpy.int64, endpoint=False):
        low, high = (0, int(low)) if high is None else (int(low), int(high))
        return self._draw("integers", low, high, size, dtype=dtype, endpoint=endpoint)

    def standard_normal(self, size=None, dtype=numpy.float64, out=None):
        y = self._draw("standard_normal", size, dtype=self._float_dtype(dtype))
        return y if out is None else _fill(out, y)

    def standard_exponential(self, size=None, dtype=numpy.float64, method="inv", out=None):
        y = self._draw("standard_exponential", size).astype(dtype, copy=False)
        return y if out is None else _fill(out, y)

    def exponential(self, scale=1.0, size=None):
        return self.standard_exponential(size) * scale

    def gamma(self, shape, scale=1.0, size=None):
        return self._draw("gamma", _unwrap(shape), _unwrap(scale), size)

    def standard_gamma(self, shape, size=None, dtype=numpy.float64, out=None):
        y = self._draw("standard_gamma", _unwrap(shape), size).astype(dtype, copy=False)
        return y if out is None else _fill(out, y)

    def beta(self, a, b, size=None, dtype=numpy.float64):
        return self._draw("beta", _unwrap(a), _unwrap(b), size).astype(dtype, copy=False)

    def chisquare(self, df, size=None):
        return self._draw("chisquare", _unwrap(df), size)

    def binomial(self, n, p, size=None):
        return self._draw("binomial", _unwrap(n), _unwrap(p), size)

    def poisson(self, lam=1.0, size=None):
        return self._draw("poisson", _unwrap(lam), size)

    def geometric(self, p, size=None):
        return self._draw("geometric", _unwrap(p), size)

    def power(self, a, size=None):
        return self._draw("power", _unwrap(a), size)


def _fill(out: ndarray, y: ndarray) -> ndarray:
    out[...] = y
    return out


def default_rng(seed=None) -> Generator:
    return Generator(XORWOW(seed))


random = types.SimpleNamespace(default_rng=default_rng, Generator=Generator, XORWOW=XORWOW, BitGenerator=XORWOW)


# ---- cuda -------------------------------------------------------------------------------------------

class _Device:
    def __init__(self, device=0) -> None:
        self.id = int(device)

    def synchronize(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


DEVICE_COUNT = [1]  # set to 0 (or an exception) to simulate a machine whose CUDA sees no device


def _get_device_count() -> int:
    if isinstance(DEVICE_COUNT[0], Exception):
        raise DEVICE_COUNT[0]
    return DEVICE_COUNT[0]


cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=_get_device_count), Device=_Device,
                             get_device_id=lambda: 0,
                             Stream=types.SimpleNamespace(null=types.SimpleNamespace(synchronize=lambda: None)))


def install(monkeypatch):
    """Make ``import cupy`` give this module (for the test's duration); returns the module."""
    module = sys.modules[__name__]
    monkeypatch.setitem(sys.modules, "cupy", module)
    return module
