"""npdiff.nn.losses: log-softmax stability, the cross-entropy's value and its backward against finite differences
and PyTorch, and one-line errors for bad labels."""

import math

import numpy as np
import pytest

from npdiff.nn import gradcheck
from npdiff.nn.losses import SoftmaxCrossEntropy, cross_entropy, log_softmax, softmax


def rng(seed=0):
    return np.random.default_rng(seed)


def test_log_softmax_matches_the_direct_formula_and_rows_normalise():
    z = rng().standard_normal((5, 7)) * 3
    direct = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(log_softmax(z), direct, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(softmax(z).sum(axis=1), 1.0, rtol=1e-14)


def test_log_softmax_is_finite_and_exact_for_huge_logits():
    z = np.array([[1e4, 0.0, -1e4], [-1e4, -1e4 + math.log(3.0), -2e4]])  # exp(1e4) overflows
    out = log_softmax(z)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[0, :2], [0.0, -1e4], rtol=1e-15)
    # row 2: the two largest are e^a and 3e^a: log-probabilities ln(1/4) and ln(3/4)
    np.testing.assert_allclose(out[1, :2], [math.log(0.25), math.log(0.75)], rtol=1e-12)


def test_cross_entropy_hand_values():
    assert cross_entropy(np.zeros((3, 4)), [0, 1, 3]) == pytest.approx(math.log(4.0), rel=1e-15)
    z = np.array([[2.0, 0.0], [0.0, 1.0]])
    expected = -0.5 * (math.log(math.e**2 / (math.e**2 + 1)) + math.log(math.e / (1 + math.e)))
    assert cross_entropy(z, np.array([0, 1])) == pytest.approx(expected, rel=1e-14)


@pytest.mark.parametrize("dloss", [1.0, 2.5])
def test_backward_matches_finite_differences_in_float64(dloss):
    logits = rng(1).standard_normal((6, 5)) * 2
    labels = np.array([0, 4, 2, 2, 1, 3])
    loss_fn = SoftmaxCrossEntropy()
    loss_fn.forward(logits, labels)
    analytic = loss_fn.backward(dloss)
    report = gradcheck.check(lambda: dloss * cross_entropy(logits, labels), {"logits": logits},
                             {"logits": analytic})
    assert report["logits"]["rel_error"] < 1e-7, report


def test_backward_is_softmax_minus_onehot_over_n():
    logits = rng(2).standard_normal((4, 3))
    labels = np.array([2, 0, 1, 1])
    loss_fn = SoftmaxCrossEntropy()
    loss_fn.forward(logits, labels)
    expected = (softmax(logits) - np.eye(3)[labels]) / 4
    np.testing.assert_allclose(loss_fn.backward(), expected, rtol=1e-14, atol=1e-16)


def test_value_and_gradient_equal_pytorch(crosscheck):
    torch = crosscheck("torch")
    logits = rng(3).standard_normal((8, 10)) * 4
    labels = rng(4).integers(0, 10, 8)
    loss_fn = SoftmaxCrossEntropy()
    loss = loss_fn.forward(logits, labels)
    dlogits = loss_fn.backward()
    z = torch.tensor(logits, requires_grad=True)
    reference = torch.nn.functional.cross_entropy(z, torch.tensor(labels))
    reference.backward()
    assert loss == pytest.approx(reference.item(), rel=1e-13)
    np.testing.assert_allclose(dlogits, z.grad.numpy(), rtol=1e-12, atol=1e-15)


def test_backward_consumes_its_cache():
    loss_fn = SoftmaxCrossEntropy()
    with pytest.raises(RuntimeError, match="before forward"):
        loss_fn.backward()
    loss_fn.forward(np.zeros((2, 3)), [0, 1])
    loss_fn.backward()
    with pytest.raises(RuntimeError, match="twice"):
        loss_fn.backward()


@pytest.mark.parametrize("labels, message", [
    ([0, 3], r"labels must lie in 0\.\.2 \(the model has 3 classes\), got 3"),
    ([-1, 0], r"labels must lie in 0\.\.2 \(the model has 3 classes\), got -1"),
    ([0, 1, 2], r"labels must be a 1-D array of 2 class labels \(one per row\), got shape \(3,\)"),
    ([0.5, 1.0], r"labels must be whole numbers 0\.\.2, got dtype float64"),
    ([np.inf, 1.0], r"labels must be whole numbers 0\.\.2, got dtype float64"),
    ([True, False], r"labels must be whole numbers 0\.\.2, got dtype bool"),
])
def test_bad_labels_get_a_one_line_error(labels, message):
    with pytest.raises(ValueError, match=message) as err:
        cross_entropy(np.zeros((2, 3)), np.array(labels))
    assert "\n" not in str(err.value)


def test_logits_must_be_a_matrix():
    with pytest.raises(ValueError, match=r"logits must have shape \(N, K\)"):
        cross_entropy(np.zeros(3), [0])
