"""What an ε-model predicts: the targets ε, x_0 and v, and the conversions between them at a fixed x_t."""

import numpy as np
import pytest

from npdiff.processes import predictions
from npdiff.processes.schedules import SCHEDULES, Schedule


@pytest.mark.parametrize("name", [name for name in SCHEDULES if name != "custom"])  # custom takes β's
@pytest.mark.parametrize("prediction", predictions.PREDICTIONS)
def test_each_target_converts_back_to_the_noise_and_the_data_that_made_x_t(name, prediction):
    """Fed its own exact target, every prediction gives back ε_θ = ε and x̂_0 = x_0: ε ↔ x̂_0 ↔ v round-trip."""
    s, rng = Schedule(100, name), np.random.default_rng(0)
    x0, noise, t = rng.standard_normal((6, 3)), rng.standard_normal((6, 3)), np.array([1, 2, 30, 70, 99, 100])
    x_t = s.q_sample(x0, t, noise)
    f_theta = predictions.target(s, prediction, x0, t, noise)
    np.testing.assert_allclose(predictions.eps_theta(s, prediction, x_t, t, f_theta), noise, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(predictions.x0_hat(s, prediction, x_t, t, f_theta), x0, rtol=1e-9, atol=1e-9)


def test_the_targets_are_the_papers():
    s, rng = Schedule(50), np.random.default_rng(1)
    x0, noise, t = rng.standard_normal((4, 2)), rng.standard_normal((4, 2)), np.array([1, 10, 25, 50])
    ab = np.cumprod(1 - s.betas)[t][:, None]
    assert predictions.target(s, "eps", x0, t, noise) is noise and predictions.target(s, "x0", x0, t, noise) is x0
    v = np.sqrt(ab) * noise - np.sqrt(1 - ab) * x0  # Salimans & Ho 2022, Sec. 4
    np.testing.assert_allclose(predictions.target(s, "v", x0, t, noise), v, rtol=1e-13)


def test_an_eps_prediction_is_eps_theta_itself_and_an_unknown_one_is_refused():
    f_theta = np.ones((2, 2))
    assert predictions.eps_theta(Schedule(10), "eps", np.zeros((2, 2)), np.array([1, 2]), f_theta) is f_theta
    with pytest.raises(ValueError, match="unknown prediction 'score'"):
        predictions.check_prediction("score")
