"""Sinusoidal embeddings: the formula, the scale, dL/dx by finite differences, size validation."""

import math

import numpy as np
import pytest

from npdiff.nn import gradcheck
from npdiff.nn.embeddings import SinusoidalEmbedding, TimestepEmbedding, frequencies


def formula(x, size, scale):
    """[sin(c x ω_0..F−1), cos(c x ω_0..F−1)] per coordinate, written out element by element."""
    half = size // 2
    omega = [math.exp(-math.log(10000.0) * k / (half - 1)) for k in range(half)]
    n, d = x.shape
    out = np.zeros((n, d * size))
    for i in range(n):
        for j in range(d):
            for k in range(half):
                out[i, j * size + k] = math.sin(scale * x[i, j] * omega[k])
                out[i, j * size + half + k] = math.cos(scale * x[i, j] * omega[k])
    return out


def test_frequencies_run_geometrically_from_1_to_1e_minus_4():
    w = frequencies(10, dtype="float64")
    assert w.shape == (5,) and w[0] == 1.0
    assert w[-1] == pytest.approx(1e-4, rel=1e-12)
    np.testing.assert_allclose(w[1:] / w[:-1], 10000.0 ** (-1 / 4), rtol=1e-12)


@pytest.mark.parametrize("size,scale", [(4, 1.0), (8, 1.0), (8, 25.0), (16, 2.0)])
def test_forward_matches_formula_per_coordinate(size, scale):
    x = np.random.default_rng(0).standard_normal((3, 2))
    emb = SinusoidalEmbedding(size, scale, dtype="float64")
    y = emb.forward(x)
    assert y.shape == (3, 2 * size) and y.dtype == np.float64
    np.testing.assert_allclose(y, formula(x, size, scale), rtol=1e-12, atol=1e-12)


def test_timestep_column_embedding_with_integer_values():
    t = np.array([1, 10, 500, 1000])
    y = SinusoidalEmbedding(8, dtype="float64").forward(t.astype("float64")[:, None])
    np.testing.assert_allclose(y, formula(t[:, None].astype(float), 8, 1.0), rtol=1e-12, atol=1e-12)


def test_scale_c_equals_embedding_of_c_times_x():
    x = np.random.default_rng(1).standard_normal((4, 3))
    scaled = SinusoidalEmbedding(8, 25.0, dtype="float64").forward(x)
    plain = SinusoidalEmbedding(8, 1.0, dtype="float64").forward(25.0 * x)
    np.testing.assert_allclose(scaled, plain, rtol=1e-12, atol=1e-12)


def test_float32_by_default():
    emb = SinusoidalEmbedding(8, 25.0)
    assert emb.omega.dtype == np.float32
    assert emb.forward(np.zeros((2, 2), dtype=np.float32)).dtype == np.float32


@pytest.mark.parametrize("scale,spread", [(1.0, 1.0), (2.0, 1.0), (25.0, 0.05)])
@pytest.mark.parametrize("size", [4, 8])
def test_gradient_wrt_coordinates_matches_finite_differences(scale, spread, size):
    emb = SinusoidalEmbedding(size, scale, dtype="float64")
    x = spread * np.random.default_rng(2).standard_normal((3, 2))
    report = gradcheck.check_module(emb, x, rng=np.random.default_rng(5))
    assert set(report) == {"x"}  # the embedding itself has no parameters
    assert report["x"]["rel_error"] < 1e-7, report
    assert report["x"]["numeric_norm"] > 1e-2


def test_backward_is_exact_derivative_for_a_single_frequency_direction():
    # L = sin(c x ω_1) for one coordinate: dL/dx = c ω_1 cos(c x ω_1)
    emb = SinusoidalEmbedding(4, 3.0, dtype="float64")
    x = np.array([[0.7]])
    emb.forward(x)
    dy = np.array([[0.0, 1.0, 0.0, 0.0]])
    w1 = 1e-4  # F = 2: ω = [1, 1e-4]
    assert emb.backward(dy)[0, 0] == pytest.approx(3.0 * w1 * math.cos(3.0 * 0.7 * w1), rel=1e-12)


def test_backward_before_forward_raises():
    with pytest.raises(RuntimeError, match="SinusoidalEmbedding"):
        SinusoidalEmbedding(4).backward(np.zeros((1, 4)))


@pytest.mark.parametrize("size", [0, 2, 3, 5, 7, -4])
def test_odd_or_too_small_sizes_raise_value_error(size):
    with pytest.raises(ValueError, match="even and >= 4"):
        SinusoidalEmbedding(size)
    with pytest.raises(ValueError, match=str(size)):
        frequencies(size)


def test_backward_consumes_the_cache_so_a_second_backward_raises():
    emb = SinusoidalEmbedding(4, 2.0, dtype="float64")
    x = np.random.default_rng(3).standard_normal((3, 2))
    emb.backward(np.ones_like(emb.forward(x)))
    with pytest.raises(RuntimeError, match="twice after one forward"):
        emb.backward(np.ones((3, 8)))


# --- the timestep table ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_timestep_lookup_is_the_sinusoidal_embedding_to_the_last_bit(dtype):
    t = np.array([0, 7, 3, 7, 199, 1])
    table = TimestepEmbedding(16, 0.5, dtype=dtype)
    direct = SinusoidalEmbedding(16, 0.5, dtype=dtype).forward(t.astype(dtype)[:, None])
    y = table.forward(t)
    assert y.dtype == np.dtype(dtype) and y.shape == (6, 16)
    np.testing.assert_array_equal(y, direct)
    tol = 1e-12 if dtype == "float64" else 1e-5  # float32: c·t·ω is rounded before the sine
    np.testing.assert_allclose(y, formula(t[:, None].astype(float), 16, 0.5), rtol=tol, atol=tol)


def test_timestep_table_grows_for_a_larger_t_and_writes_into_a_column_slice():
    emb = TimestepEmbedding(8, dtype="float64")
    emb.forward(np.array([3, 1]))
    assert emb.table.shape == (4, 8)
    wide = np.full((2, 12), 7.0)
    emb.forward(np.array([10, 2]), out=wide[:, 2:10])
    assert emb.table.shape[0] >= 11  # grown (geometrically: at least twice the old size)
    direct = SinusoidalEmbedding(8, dtype="float64").forward(np.array([[10.0], [2.0]]))
    np.testing.assert_array_equal(wide[:, 2:10], direct)
    assert (wide[:, :2] == 7).all() and (wide[:, 10:] == 7).all()


@pytest.mark.parametrize("t,error", [(np.array([2, -1]), ValueError), (np.array([1.0, 2.0]), TypeError),
                                     (np.array([[1, 2]]), TypeError)])
def test_timestep_lookup_refuses_negative_fractional_or_misshapen_t(t, error):
    with pytest.raises(error, match="timesteps"):
        TimestepEmbedding(4).forward(t)
