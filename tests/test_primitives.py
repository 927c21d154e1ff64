"""Each named primitive equals the plain formula its docstring states, in float32 and float64."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from npdiff.nn import primitives

DTYPES = ["float32", "float64"]
TOL = {"float32": dict(rtol=2e-6, atol=2e-6), "float64": dict(rtol=1e-13, atol=1e-13)}


def data(shape, dtype, seed=0, scale=3.0):
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (32, 32), (1000, 128), (7, 3)])
def test_batch_sum_and_row_mean_are_the_plain_sum_and_mean(dtype, shape):
    a = data(shape, dtype)
    exact, eps = a.astype(np.float64), np.finfo(dtype).eps
    assert primitives.batch_sum(a).dtype == np.dtype(dtype)
    # any summation order errs by at most N·eps·Σ|a| (the bound of recursive summation)
    bound = shape[0] * eps * np.abs(exact).sum(axis=0)
    assert np.all(np.abs(primitives.batch_sum(a) - exact.sum(axis=0)) <= bound)
    bound = shape[1] * eps * np.abs(exact).mean(axis=-1, keepdims=True)
    assert np.all(np.abs(primitives.row_mean(a) - exact.mean(axis=-1, keepdims=True)) <= bound)
    assert primitives.row_mean(a).shape == (shape[0], 1)


def test_the_cached_constants_follow_the_shape_and_dtype_asked_for():
    for n in (3, 5, 3):
        for dtype in DTYPES:
            a = np.ones((n, 4), dtype=dtype)
            np.testing.assert_array_equal(primitives.batch_sum(a), np.full(4, n, dtype=dtype))
            np.testing.assert_array_equal(primitives.row_mean(a), np.ones((n, 1), dtype=dtype))


@pytest.mark.parametrize("t", [np.array([5, 1, 5, 9, 1, 1]), np.array([0]), np.arange(50)[::-1],
                               np.random.default_rng(1).integers(1, 1001, 512)])
def test_unique_inverse_is_numpys_unique_with_return_inverse(t):
    steps, rows = primitives.unique_inverse(t)
    plain_steps, plain_rows = np.unique(t, return_inverse=True)
    np.testing.assert_array_equal(steps, plain_steps)
    np.testing.assert_array_equal(rows, plain_rows)


@pytest.mark.parametrize("dtype", DTYPES)
def test_segment_sum_is_the_scatter_add(dtype):
    rng = np.random.default_rng(2)
    a, segments = data((40, 6), dtype), rng.integers(0, 5, 40)
    plain = np.zeros((7, 6), dtype=np.float64)  # 7 segments: the last two receive nothing
    np.add.at(plain, segments, a.astype(np.float64))
    np.testing.assert_allclose(primitives.segment_sum(a, segments, 7), plain, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_and_log_sigmoid_are_exact_and_silent_at_the_extremes(dtype):
    x = np.array([-1000, -100, -88.8, -30, -1, 0, 1, 30, 88.8, 100, 1000], dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow RuntimeWarning anywhere
        s, log_s, s_neg = primitives.sigmoid(x), primitives.log_sigmoid(x), primitives.sigmoid(-x)
    sig = lambda v: 1 / (1 + math.exp(-v)) if v > -700 else 0.0  # noqa: E731
    values = x.astype(float)
    log_ref = np.array([-math.log1p(math.exp(-v)) if v > -700 else v for v in values])
    tiny = np.finfo(dtype).tiny  # below it, subnormals keep fewer digits
    assert s.dtype == log_s.dtype == np.dtype(dtype)
    np.testing.assert_allclose(s, [sig(v) for v in values], rtol=TOL[dtype]["rtol"], atol=tiny)
    np.testing.assert_allclose(s_neg, [sig(-v) for v in values], rtol=TOL[dtype]["rtol"], atol=tiny)  # 1 − σ(x)
    np.testing.assert_allclose(log_s, log_ref, rtol=TOL[dtype]["rtol"], atol=TOL[dtype]["atol"])


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_gelu_pieces_are_the_plain_tanh_formulas(dtype):
    x = np.linspace(-6, 6, 241).astype(dtype)[None, :]
    c, a = math.sqrt(2 / math.pi), 0.044715
    x64 = x.astype(np.float64)
    th = np.tanh(c * (x64 + a * x64**3))
    phi = primitives.normal_cdf_tanh(x, x * x)
    np.testing.assert_allclose(phi, 0.5 * (1 + th), **TOL[dtype])
    y = x * phi
    derivative = primitives.gelu_tanh_derivative(x * x, phi, y)
    plain = 0.5 * (1 + th) + 0.5 * x64 * (1 - th**2) * c * (1 + 3 * a * x64**2)
    np.testing.assert_allclose(derivative, plain, rtol=TOL[dtype]["rtol"] * 10, atol=TOL[dtype]["atol"] * 10)


@pytest.mark.parametrize("decay", [0.0, 0.9, 0.999])
@pytest.mark.parametrize("dtype", DTYPES)
def test_moving_average_is_the_textbook_update_in_place(decay, dtype):
    average, x = data((50,), dtype, 3), data((50,), dtype, 4)
    exact = decay * average.astype(np.float64) + (1 - decay) * x.astype(np.float64)
    before, view = average.copy(), average[10:20]
    primitives.moving_average_(average, x, decay)
    np.testing.assert_allclose(average, exact, **TOL[dtype])
    assert view.base is average  # the same array, updated in place
    with_scratch, scratch = before.copy(), np.full(50, np.nan, dtype=dtype)
    primitives.moving_average_(with_scratch, x, decay, scratch)
    np.testing.assert_array_equal(with_scratch, average)  # the scratch changes where, not what
    own, spent = before.copy(), x.copy()
    primitives.moving_average_(own, spent, decay, spent)  # x may serve as its own scratch
    np.testing.assert_array_equal(own, average)


@pytest.mark.parametrize("dtype", DTYPES)
def test_adam_step_is_theta_minus_alpha_m_over_sqrt_v_plus_eps(dtype):
    theta, m = data((300,), dtype, 5), data((300,), dtype, 6)
    v = data((300,), dtype, 7) ** 2
    v[:5] = 0  # where √v = 0 the step is α·m/ε̂
    alpha, eps_hat = 1e-3, 1e-8
    plain = theta.astype(np.float64) - alpha * m.astype(np.float64) / (np.sqrt(v.astype(np.float64)) + eps_hat)
    scratch = np.empty(300, dtype=dtype)
    for buffer in (None, scratch):
        got = theta.copy()
        primitives.adam_step_(got, m, v, alpha, eps_hat, buffer)
        np.testing.assert_allclose(got, plain, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_standard_normal_is_the_generators_draw_below_box_muller_min(dtype):
    shape = (3, primitives.BOX_MULLER_MIN // 3 - 1)
    got = primitives.standard_normal(np.random.default_rng(4), shape, dtype=dtype)
    np.testing.assert_array_equal(got, np.random.default_rng(4).standard_normal(shape, dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_standard_normal_by_box_muller_is_n01_and_repeatable(dtype):
    """From BOX_MULLER_MIN entries: N(0, 1) by the Box–Muller transform, checked against the normal CDF (the
    Kolmogorov–Smirnov distance of 200,001 draws, whose 1e-6 quantile is 0.0059), its moments, the independence of
    the cos and sin halves, and the tail bound of the dtype's uniforms."""
    n = 200_001  # odd: the last pair is cut in half
    z = primitives.standard_normal(np.random.default_rng(5), (n,), dtype=dtype)
    assert z.dtype == np.dtype(dtype) and z.shape == (n,)
    np.testing.assert_array_equal(z, primitives.standard_normal(np.random.default_rng(5), (n,), dtype=dtype))
    x = np.sort(z.astype(np.float64))
    cdf = 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
    ks = max(np.max(np.arange(1, n + 1) / n - cdf), np.max(cdf - np.arange(n) / n))
    assert ks < 0.0059
    se = 1 / math.sqrt(n)  # the moments' standard errors are about 1, √2, √15 and √96 times this
    assert abs(x.mean()) < 5 * se and abs(x.var() - 1) < 5 * math.sqrt(2) * se
    assert abs((x ** 3).mean()) < 5 * math.sqrt(15) * se and abs((x ** 4).mean() - 3) < 5 * math.sqrt(96) * se
    half = (n + 1) // 2
    z64 = z.astype(np.float64)
    assert abs(np.mean(z64[:half - 1] * z64[half:half + half - 1])) < 5 * se  # z1 and z2 of a pair: uncorrelated
    assert np.abs(z).max() <= math.sqrt(-2 * math.log(np.finfo(dtype).eps / 2)) * (1 + 1e-6)
    shaped = primitives.standard_normal(np.random.default_rng(5), (5, 1001), dtype=dtype)
    assert shaped.shape == (5, 1001) and np.isfinite(shaped).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_standard_normal_is_finite_at_the_ends_of_the_uniforms(dtype):
    """u1 = 0 gives radius √(−2 ln 1) = 0 (never ln 0), and the largest u1 below 1 the largest radius."""

    class Fixed:  # a generator whose uniforms are all u
        def __init__(self, u):
            self.u = u

        def random(self, n, dtype):
            return np.full(n, self.u, dtype=dtype)

    n = primitives.BOX_MULLER_MIN
    np.testing.assert_array_equal(primitives.standard_normal(Fixed(0.0), (n,), dtype), 0)
    top = 1 - np.finfo(dtype).eps / 2  # the largest uniform below 1
    z = primitives.standard_normal(Fixed(top), (n,), dtype).astype(np.float64)
    radius = math.sqrt(-2 * math.log(np.finfo(dtype).eps / 2))
    np.testing.assert_allclose(z[:n // 2], radius * math.cos(2 * math.pi * float(np.asarray(top, dtype))), rtol=1e-5)


def _adamw_and_ema_block(theta, g, m, v, shadow, scratch):
    """An elementwise update touching every operand and the scratch: one AdamW step and one EMA step."""
    theta *= 1 - 1e-4
    primitives.moving_average_(m, g, 0.9, scratch)
    primitives.moving_average_(v, np.multiply(g, g, out=scratch), 0.999, scratch)
    primitives.adam_step_(theta, m, v, 1e-3, 1e-8, scratch)
    primitives.moving_average_(shadow, theta, 0.99, scratch)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [1, 1000, primitives.BLOCK, 5 * primitives.BLOCK + 17, 12 * primitives.BLOCK + 3])
def test_blockwise_gives_the_whole_buffer_update_to_the_bit(size, dtype, threads):
    arrays = [data((size,), dtype, seed) for seed in range(5)]
    arrays[3] = arrays[3] ** 2  # v ≥ 0
    whole = [a.copy() for a in arrays]
    _adamw_and_ema_block(*whole, None)  # plain: one call on the whole buffers
    previous = primitives.set_threads(threads)
    try:
        for _ in range(2):  # the second time reuses the workers and the scratch buffers
            blocks = [a.copy() for a in arrays]
            primitives.blockwise(_adamw_and_ema_block, *blocks)
            for got, want in zip(blocks, whole):
                np.testing.assert_array_equal(got, want)
    finally:
        primitives.set_threads(previous)


def test_blockwise_visits_every_entry_once_in_blocks_of_at_most_block():
    size = 9 * primitives.BLOCK + 5
    seen, counts = [], np.zeros(size)

    def visit(counter, scratch):
        seen.append(counter.shape[0])
        assert scratch.shape == counter.shape
        counter += 1

    for threads in (1, 2):
        previous = primitives.set_threads(threads)
        try:
            primitives.blockwise(visit, counts)
        finally:
            primitives.set_threads(previous)
    np.testing.assert_array_equal(counts, 2)
    assert max(seen) == primitives.BLOCK and sum(seen) == 2 * size


def test_set_threads_refuses_fewer_than_one():
    with pytest.raises(ValueError, match="threads"):
        primitives.set_threads(0)
