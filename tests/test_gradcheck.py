"""The gradient checker itself: rel_error, central differences, and that it catches a wrong backward."""

import numpy as np
import pytest

from npdiff.nn import gradcheck
from npdiff.nn.layers import Linear, Tanh


def test_rel_error_is_zero_for_equal_arrays_and_for_both_zero():
    a = np.array([1.0, -2.0, 3.0])
    assert gradcheck.rel_error(a, a.copy()) == 0.0
    assert gradcheck.rel_error(np.zeros(4), np.zeros(4)) == 0.0


def test_rel_error_is_one_for_opposite_signs_and_for_one_side_zero():
    a = np.array([[1.0, -2.0], [0.5, 4.0]])
    assert gradcheck.rel_error(a, -a) == pytest.approx(1.0, rel=1e-15)
    assert gradcheck.rel_error(a, np.zeros_like(a)) == 1.0


def test_rel_error_is_norm_of_difference_over_sum_of_norms():
    a, n = np.array([3.0, 4.0]), np.array([3.0, 4.5])
    assert gradcheck.rel_error(a, n) == pytest.approx(0.5 / (5.0 + np.hypot(3.0, 4.5)), rel=1e-14)
    assert gradcheck.rel_error([1.0, 2.0], (1.0, 2.0)) == 0.0  # lists are accepted


def test_numerical_gradient_of_sum_of_cubes_is_3x_squared_and_x_is_restored():
    x = np.random.default_rng(0).standard_normal((3, 4))
    original = x.copy()
    grad = gradcheck.numerical_gradient(lambda: float((x**3).sum()), x)
    assert grad.shape == x.shape
    # central-difference error is h²·f'''/6 = h² = 1e-10 per entry for x³
    np.testing.assert_allclose(grad, 3 * x**2, rtol=0, atol=1e-8)
    np.testing.assert_array_equal(x, original)


def test_numerical_gradient_perturbs_non_contiguous_arrays_in_place():
    base = np.random.default_rng(1).standard_normal((4, 3))
    x = base.T  # not C-contiguous: a reshape(-1) of it would be a copy
    original = base.copy()
    grad = gradcheck.numerical_gradient(lambda: float(np.sin(x).sum()), x)
    np.testing.assert_allclose(grad, np.cos(x), rtol=0, atol=1e-9)
    np.testing.assert_array_equal(base, original)


def test_numerical_gradient_of_a_linear_function_is_exact_to_rounding():
    w = np.array([0.5, -1.25, 2.0])
    x = np.zeros(3)
    np.testing.assert_allclose(gradcheck.numerical_gradient(lambda: float(w @ x), x), w, rtol=1e-10)


def test_check_reports_every_field_per_array():
    x = np.array([1.0, 2.0])
    report = gradcheck.check(lambda: float((x**2).sum()), {"x": x}, {"x": 2 * x})
    r = report["x"]
    assert set(r) == {"shape", "rel_error", "max_abs_diff", "analytic_norm", "numeric_norm"}
    assert r["shape"] == (2,) and r["rel_error"] < 1e-9 and r["max_abs_diff"] < 1e-8
    assert r["analytic_norm"] == pytest.approx(np.sqrt(20.0), rel=1e-14)
    assert r["numeric_norm"] == pytest.approx(np.sqrt(20.0), rel=1e-9)


def test_check_module_passes_a_correct_layer_and_restores_its_parameters():
    layer = Linear(3, 2, np.random.default_rng(0), dtype="float64")
    before = {k: v.copy() for k, v in layer.params.items()}
    x = np.random.default_rng(1).standard_normal((4, 3))
    report = gradcheck.check_module(layer, x)
    assert set(report) == {"W", "b", "x"}
    assert gradcheck.worst(report) < 1e-9
    for k, v in layer.params.items():
        np.testing.assert_array_equal(v, before[k])


class TanhWithDoubledInputGradient(Tanh):
    def backward(self, dy):
        return 2 * super().backward(dy)


class LinearForgettingBias(Linear):
    def backward(self, dy):
        x = self.take_cache()
        self.grads["W"] += x.T @ dy
        return dy @ self.params["W"].T


def test_check_module_catches_a_backward_returning_twice_dx():
    x = np.random.default_rng(2).standard_normal((3, 4))
    report = gradcheck.check_module(TanhWithDoubledInputGradient(), x)
    # ‖2a − a‖ / (‖2a‖ + ‖a‖) = 1/3
    assert report["x"]["rel_error"] == pytest.approx(1 / 3, abs=1e-8)
    assert gradcheck.worst(report) > 1e-7


def test_check_module_catches_a_missing_parameter_gradient():
    layer = LinearForgettingBias(3, 2, np.random.default_rng(0), dtype="float64")
    report = gradcheck.check_module(layer, np.random.default_rng(1).standard_normal((4, 3)))
    assert report["W"]["rel_error"] < 1e-9 and report["x"]["rel_error"] < 1e-9
    assert report["b"]["rel_error"] == 1.0 and report["b"]["analytic_norm"] == 0.0


def test_check_module_can_skip_the_input():
    layer = Linear(2, 2, np.random.default_rng(0), dtype="float64")
    report = gradcheck.check_module(layer, np.ones((1, 2)), check_input=False)
    assert set(report) == {"W", "b"}


def test_format_report_has_a_header_and_one_row_per_array_and_worst_is_the_max():
    report = {
        "blocks.0.fn.1.W": dict(shape=(8, 8), rel_error=3e-9, analytic_norm=1.5, numeric_norm=1.5),
        "x": dict(shape=(3, 2), rel_error=2e-2, analytic_norm=0.25, numeric_norm=0.26),
    }
    lines = gradcheck.format_report(report).splitlines()
    assert len(lines) == 3 and "rel_error" in lines[0]
    assert lines[1].split()[0] == "blocks.0.fn.1.W" and "3.00e-09" in lines[1] and "(8, 8)" in lines[1]
    assert lines[2].split()[0] == "x" and "2.00e-02" in lines[2]
    assert gradcheck.worst(report) == 2e-2
