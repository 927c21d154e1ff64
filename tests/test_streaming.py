"""Streaming statistics: ``RunningMean`` merged over uneven chunks with different means equals the one-pass formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest

from npdiff.io import streaming


def _chunks(rng, sizes, means):
    return [rng.normal(mean, 1.0 + k, size) for k, (size, mean) in enumerate(zip(sizes, means))]


@pytest.mark.parametrize("sizes, means", [
    ([1, 7, 300, 2, 45], [0.0, 50.0, -3.0, 1e3, 7.5]),
    ([5000, 1], [1e6, -1e6]),
    ([1, 1, 1], [2.0, -2.0, 10.0]),
    ([3, 0, 4], [1.0, 99.0, -1.0]),  # an empty chunk changes nothing
])
def test_merged_mean_and_standard_error_equal_the_one_pass_formulas(sizes, means):
    rng = np.random.default_rng(0)
    chunks = _chunks(rng, sizes, means)
    running = streaming.RunningMean()
    for chunk in chunks:
        running.add(chunk)
    every = np.concatenate(chunks)
    n = every.size
    mean = every.sum() / n
    var = ((every - mean) ** 2).sum() / (n - 1)  # the unbiased sample variance
    assert running.n == n
    assert running.mean == pytest.approx(mean, rel=1e-12, abs=1e-9)
    assert running.m2 == pytest.approx(((every - mean) ** 2).sum(), rel=1e-10)
    assert running.se == pytest.approx(math.sqrt(var / n), rel=1e-10)


def test_the_merge_term_between_chunks_is_what_makes_the_spread():
    """Two constant chunks: every value's deviation comes from the between-chunk term δ²·n·k/(n+k) alone."""
    running = streaming.RunningMean()
    running.add(np.zeros(3))
    running.add(np.full(5, 8.0))
    # mean 5, M2 = 3·25 + 5·9 = 120 = δ² n k/(n + k) = 64 · 15/8
    assert running.mean == 5.0 and running.m2 == pytest.approx(120.0, rel=1e-15)
    assert running.se == pytest.approx(math.sqrt(120.0 / 7 / 8), rel=1e-15)


def test_one_value_has_no_standard_error():
    running = streaming.RunningMean()
    running.add([3.0])
    assert running.mean == 3.0 and math.isnan(running.se)
