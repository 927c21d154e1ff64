"""data.eight_gaussians_labelled: the FFJORD 8 Gaussians with each point's component as its label."""

import math

import numpy as np
import pytest

from npdiff import data


def test_default_std_draws_the_points_of_eight_gaussians():
    x, y = data.eight_gaussians_labelled(500, np.random.default_rng(3))
    assert np.allclose(x, data.eight_gaussians(500, np.random.default_rng(3)), rtol=0, atol=1e-12)
    assert y.dtype == np.int64 and y.shape == (500,) and set(np.unique(y)) == set(range(8))


def test_each_label_is_the_component_the_point_was_drawn_from():
    x, y = data.eight_gaussians_labelled(40_000, np.random.default_rng(0), std=0.7)
    centres = data.eight_gaussians_centres()
    offset = x - centres[y]  # std · ε for the right component, nothing like it for a wrong one
    assert np.allclose(offset.mean(0), 0, atol=0.02)
    assert np.allclose(offset.std(0), 0.7, rtol=0.02)
    assert np.allclose(np.linalg.norm(centres, axis=1), 4 / 1.414)
    assert np.allclose(np.arctan2(centres[:, 1], centres[:, 0]) % (2 * math.pi), np.arange(8) * math.pi / 4)
    # the Bayes classifier (nearest centre) of overlapping components agrees with the labels at the rate
    # 1 − 2 Φ(−d/σ), d = 2.83 sin(π/8) the half-distance between neighbours (two neighbours, ignoring others)
    nearest = np.linalg.norm(x[:, None] - centres[None], axis=2).argmin(1)
    d = 4 / 1.414 * math.sin(math.pi / 8)
    expected = 1 - 2 * 0.5 * math.erfc(d / 0.7 / math.sqrt(2))
    assert abs((nearest == y).mean() - expected) < 0.01


@pytest.mark.parametrize("std", [0, -1.0, float("nan"), float("inf"), "0.5"])
def test_bad_std_is_a_one_line_error(std):
    with pytest.raises(ValueError, match="std must be a finite number > 0"):
        data.eight_gaussians_labelled(10, np.random.default_rng(0), std=std)


def test_bad_count_and_generator_are_refused():
    with pytest.raises(ValueError, match="n must be >= 1"):
        data.eight_gaussians_labelled(0, np.random.default_rng(0))
    with pytest.raises(TypeError, match="rng must be a numpy.random.Generator"):
        data.eight_gaussians_labelled(5, 0)
