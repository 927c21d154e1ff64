"""Property tests (hypothesis): whatever the bytes, arrays or meta JSON, the readers answer or refuse in words.

The data loader and the checkpoint reader face files users and bugs make; the only exceptions they may
raise are the documented ones (ValueError, and FileNotFoundError for a missing file), and the command
line turns every such file into one line and exit status 2, never an internal error.
"""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from npdiff import cli, data
from npdiff.training import checkpoint

# no example database: nothing is written into the checkout, and every run explores afresh
FAST = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
TINY = ["--hidden", "4", "--n-blocks", "1", "--emb-dim", "4", "--T", "10", "--steps", "5"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("properties")
    assert cli.main(["train", "moons", "--out", str(d / "model.npz"), *TINY, "--ema", "0.5"]) == 0
    return d


def _loads_or_refuses(path):
    try:
        x = data.load_points(path)
    except ValueError as err:
        assert str(path.name) in str(err)
        return None
    assert x.dtype == np.float64 and x.ndim == 2 and x.shape[0] >= 1 and x.shape[1] >= 1
    assert np.isfinite(x).all()
    return x


@FAST
@given(content=st.binary(max_size=400), ext=st.sampled_from([".npy", ".csv"]))
def test_load_points_on_arbitrary_bytes_returns_points_or_a_value_error(folder, content, ext):
    path = folder / f"bytes{ext}"
    path.write_bytes(content)
    _loads_or_refuses(path)


@FAST
@given(content=st.binary(max_size=300))
def test_load_points_on_a_damaged_npy_header_or_body(folder, content):
    path = folder / "damaged.npy"
    np.save(path, np.arange(12.0).reshape(6, 2))
    good = path.read_bytes()
    cut = len(content) % len(good)
    path.write_bytes(good[:cut] + content)  # a valid magic number followed by anything
    _loads_or_refuses(path)


@FAST
@given(text=st.text(alphabet=st.sampled_from(list("0123456789.,-+eEinfatyxNn \t\n")), max_size=200))
def test_load_points_on_arbitrary_number_like_csv(folder, text):
    path = folder / "t.csv"
    path.write_text(text, encoding="utf-8")
    _loads_or_refuses(path)


ARRAYS = hnp.arrays(
    dtype=st.one_of(hnp.scalar_dtypes(), hnp.byte_string_dtypes(), hnp.unicode_string_dtypes()),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
)


@FAST
@given(x=ARRAYS)
def test_load_points_on_arbitrary_small_arrays_and_dtypes(folder, x):
    path = folder / "a.npy"
    np.save(path, x, allow_pickle=False)
    loaded = _loads_or_refuses(path)
    if loaded is not None:
        assert x.dtype.kind in "biuf" and x.ndim == 2
        np.testing.assert_array_equal(loaded, x.astype(np.float64))
    elif x.dtype.kind in "biuf" and x.ndim == 2 and x.size and np.isfinite(x.astype(np.float64)).all():
        pytest.fail(f"refused a plain array {x!r}")


@FAST
@given(content=st.binary(max_size=400))
def test_checkpoint_load_on_arbitrary_bytes_raises_only_value_errors(folder, content):
    path = folder / "bytes.npz"
    path.write_bytes(b"PK\x03\x04" + content if content[:1] == b"P" else content)
    with pytest.raises(ValueError):
        checkpoint.load(path)


JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)


def _paths(value, prefix=()):
    """Every key path into a nested dict (the places a replacement can go)."""
    yield prefix
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _paths(inner, prefix + (key,))


def _replaced(info, path, new):
    if not path:
        return new
    out = dict(info)
    out[path[0]] = _replaced(info[path[0]], path[1:], new)
    return out


def _cli(argv) -> tuple[int, str]:
    """(exit status, stderr) of one command, run in this process."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = cli.main(argv)
    return rc, err.getvalue()


def _with_meta(folder, info) -> str:
    base = checkpoint.load(folder / "model.npz")
    path = folder / "edited.npz"
    with open(path, "wb") as f:
        np.savez(f, format_version=np.array(1), meta=np.array(json.dumps(info, allow_nan=True)), **base.arrays)
    return str(path)


@FAST
@given(data_=st.data())
def test_any_meta_json_gives_a_model_or_a_value_error_and_one_line_from_the_cli(folder, data_):
    info = checkpoint.load(folder / "model.npz").info
    where = data_.draw(st.sampled_from(list(_paths(info))))
    path = _with_meta(folder, _replaced(info, where, data_.draw(JSON)))
    try:
        checkpoint.load_model(path)
    except ValueError:
        pass
    rc, err = _cli(["sample", path, "--out", str(folder / "s.npy"), "--n", "3"])
    assert rc in (0, 2), err  # 1 would be a runtime failure or an internal error
    assert err.count("\n") <= 1 and "internal error" not in err, err


@FAST
@given(info=JSON)
def test_a_meta_that_is_any_json_at_all(folder, info):
    path = _with_meta(folder, info)
    with pytest.raises(ValueError):
        checkpoint.load_model(path)
    rc, err = _cli(["eval", path, "moons", "--n", "5"])
    assert rc == 2 and err.count("\n") == 1, err
