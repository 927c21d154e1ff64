"""Layers: forward against direct formulas, backward against finite differences, and the contract."""

import math

import numpy as np
import pytest

from npdiff.nn import gradcheck
from npdiff.nn.layers import (ACTIVATIONS, GELU, LayerNorm, Linear, Module, ReLU, Residual, Sequential, SiLU,
                              Tanh, activation)

F64 = "float64"


def rng(seed=0):
    return np.random.default_rng(seed)


def layernorm_with(features, seed=1):
    """A float64 LayerNorm with non-trivial γ and β (γ = 1, β = 0 would hide mistakes)."""
    ln = LayerNorm(features, dtype=F64)
    r = rng(seed)
    ln.params["gamma"][...] = r.uniform(0.5, 1.5, features)
    ln.params["beta"][...] = r.standard_normal(features)
    return ln


def make(kind):
    """Float64 instances of every layer kind, fixed seeds."""
    if kind == "linear":
        return Linear(3, 4, rng(), dtype=F64)
    if kind == "layernorm":
        return layernorm_with(4)
    if kind == "residual":
        return Residual(Sequential(Linear(4, 4, rng(), dtype=F64), Tanh()))
    if kind == "sequential":
        r = rng()
        return Sequential(Linear(4, 5, r, dtype=F64), GELU(), layernorm_with(5), Linear(5, 3, r, dtype=F64),
                          SiLU())
    return ACTIVATIONS[kind]()  # every registered activation, by its name


def input_for(kind, n=3):
    features = 3 if kind == "linear" else 4
    x = rng(7).standard_normal((n, features))
    if kind in ACTIVATIONS:
        x = np.sign(x) * (0.1 + np.abs(x))  # stay ≥ 0.1 away from 0, where ReLU-like activations have a kink
    return x


# The activations come from the registry: one added to ACTIVATIONS is gradient-checked and held to the
# contract here without editing this file.
ALL = ["linear", *ACTIVATIONS, "layernorm", "residual", "sequential"]
WITH_PARAMS = ["linear", "layernorm", "residual", "sequential"]


# --- forward against formulas -------------------------------------------------------------------

def test_linear_forward_is_x_W_plus_b():
    layer, x = make("linear"), input_for("linear")
    W, b = layer.params["W"], layer.params["b"]
    expected = np.array([[sum(x[n, i] * W[i, h] for i in range(3)) + b[h] for h in range(4)] for n in range(3)])
    np.testing.assert_allclose(layer.forward(x), expected, rtol=1e-14, atol=1e-15)


def test_linear_init_is_uniform_within_one_over_sqrt_fan_in_float32_by_default():
    layer = Linear(16, 32, rng())
    bound = 1 / math.sqrt(16)
    for key, shape in (("W", (16, 32)), ("b", (32,))):
        p = layer.params[key]
        assert p.shape == shape and p.dtype == np.float32
        assert np.all(np.abs(p) <= bound) and np.abs(p).max() > 0.8 * bound


def test_relu_tanh_silu_forward_formulas():
    x = np.linspace(-4, 4, 33).reshape(3, 11)
    np.testing.assert_array_equal(ReLU().forward(x), np.where(x > 0, x, 0.0))
    np.testing.assert_allclose(Tanh().forward(x), np.tanh(x), rtol=1e-15)
    np.testing.assert_allclose(SiLU().forward(x), x / (1 + np.exp(-x)), rtol=1e-14, atol=1e-16)


def test_gelu_forward_is_tanh_form():
    x = np.linspace(-5, 5, 41).reshape(1, -1)
    expected = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    np.testing.assert_allclose(GELU().forward(x), expected, rtol=1e-14, atol=1e-16)


def test_gelu_tanh_form_is_within_5e_4_of_exact_erf_gelu():
    x = np.linspace(-6, 6, 121).reshape(1, -1)
    exact = np.array([[v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x[0]]])
    diff = np.abs(GELU().forward(x) - exact)
    assert diff.max() < 5e-4
    assert diff.max() > 1e-5  # it is the tanh approximation, not erf itself


def test_layernorm_forward_formula_with_nontrivial_gamma_beta():
    ln, x = layernorm_with(4), input_for("layernorm") * 3 + 2
    mean = x.mean(axis=1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=1, keepdims=True)
    expected = (x - mean) / np.sqrt(var + ln.eps) * ln.params["gamma"] + ln.params["beta"]
    np.testing.assert_allclose(ln.forward(x), expected, rtol=1e-13, atol=1e-14)


def test_residual_forward_is_x_plus_f_x():
    layer, x = make("residual"), input_for("residual")
    inner = layer.fn.layers[0]
    expected = x + np.tanh(x @ inner.params["W"] + inner.params["b"])
    np.testing.assert_allclose(layer.forward(x), expected, rtol=1e-14, atol=1e-15)


def test_sequential_forward_composes_in_order():
    seq, x = make("sequential"), input_for("sequential")
    h = x
    for layer in seq.layers:
        h = layer.forward(h)
    np.testing.assert_array_equal(seq.forward(x), h)
    assert seq.forward(x).shape == (3, 3)


# --- gradients against finite differences ------------------------------------------------------

@pytest.mark.parametrize("kind", ALL)
def test_backward_matches_finite_differences_for_every_param_and_input(kind):
    layer, x = make(kind), input_for(kind)
    report = gradcheck.check_module(layer, x, rng=rng(3))
    assert set(report) == set(layer.parameters()) | {"x"}
    for name, r in report.items():
        assert r["rel_error"] < 1e-7, (kind, name, r)
        assert r["numeric_norm"] > 1e-3, (kind, name)  # a gradient that exists, not 0 vs 0


def test_layernorm_gradcheck_on_wide_shifted_input():
    ln, x = layernorm_with(7, seed=5), rng(9).standard_normal((4, 7)) * 5 + 10
    for name, r in gradcheck.check_module(ln, x).items():
        assert r["rel_error"] < 1e-7, (name, r)


# --- the layer contract -------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["linear", *ACTIVATIONS, "layernorm"])
def test_backward_before_forward_raises_runtime_error_naming_the_class(kind):
    layer = make(kind)
    with pytest.raises(RuntimeError, match=type(layer).__name__):
        layer.backward(np.ones((3, 4)))


def test_sequential_backward_before_forward_raises():
    with pytest.raises(RuntimeError, match="backward called before forward"):
        make("sequential").backward(np.ones((3, 3)))


@pytest.mark.parametrize("kind", WITH_PARAMS)
def test_two_backward_passes_accumulate_twice_the_gradients(kind):
    layer, x = make(kind), input_for(kind)
    arrays = layer.gradients()
    y = layer.forward(x)
    dy = rng(4).standard_normal(y.shape)
    dx1 = layer.backward(dy)
    for k, g in layer.gradients().items():
        assert g is arrays[k], k  # updated in place, never rebound (flat-buffer views depend on it)
    once = {k: g.copy() for k, g in layer.gradients().items()}
    assert all(np.abs(g).max() > 0 for g in once.values())
    layer.forward(x)
    dx2 = layer.backward(dy)
    for k, g in layer.gradients().items():
        np.testing.assert_array_equal(g, 2 * once[k], err_msg=k)
    np.testing.assert_array_equal(dx1, dx2)  # dx is returned, never accumulated


@pytest.mark.parametrize("kind", WITH_PARAMS)
def test_zero_grad_zeroes_every_gradient_in_place(kind):
    layer, x = make(kind), input_for(kind)
    y = layer.forward(x)
    layer.backward(np.ones_like(y))
    before = layer.gradients()
    layer.zero_grad()
    after = layer.gradients()
    for k in before:
        assert after[k] is before[k]  # the same arrays: views held elsewhere stay valid
        assert not after[k].any(), k


@pytest.mark.parametrize("kind", ALL)
def test_params_and_grads_have_same_keys_shapes_and_dtypes(kind):
    layer = make(kind)
    params, grads = layer.parameters(), layer.gradients()
    assert list(params) == list(grads)
    for k in params:
        assert params[k].shape == grads[k].shape and params[k].dtype == grads[k].dtype, k
        assert not np.shares_memory(params[k], grads[k]), k


@pytest.mark.parametrize("kind", ACTIVATIONS)
def test_activations_have_no_parameters(kind):
    assert make(kind).parameters() == {} and make(kind).gradients() == {}


def test_composites_use_dotted_names_that_point_at_the_leaf_arrays():
    r = rng()
    lin0, ln, lin1 = Linear(2, 3, r, dtype=F64), LayerNorm(3, dtype=F64), Linear(3, 3, r, dtype=F64)
    model = Sequential(lin0, ReLU(), Residual(Sequential(ln, lin1)))
    params = model.parameters()
    assert list(params) == ["0.W", "0.b", "2.fn.0.gamma", "2.fn.0.beta", "2.fn.1.W", "2.fn.1.b"]
    assert params["0.W"] is lin0.params["W"]
    assert params["2.fn.0.gamma"] is ln.params["gamma"]
    assert model.gradients()["2.fn.1.b"] is lin1.grads["b"]


def test_module_call_is_forward():
    layer, x = make("linear"), input_for("linear")
    np.testing.assert_array_equal(layer(x), layer.forward(x))
    assert isinstance(layer, Module)


def test_activation_by_name_is_case_insensitive_and_rejects_unknown_names():
    assert isinstance(activation("GELU"), GELU)
    assert {ReLU, SiLU, Tanh, GELU} <= set(ACTIVATIONS.values())
    for name, cls in ACTIVATIONS.items():
        assert type(activation(name)) is cls and type(activation(name.upper())) is cls
    with pytest.raises(ValueError, match="'no-such-activation'; choose one of"):
        activation("no-such-activation")


@pytest.mark.parametrize("kind", ALL)
def test_backward_consumes_the_cache_so_a_second_backward_raises(kind):
    """Each backward takes its forward's cache: a second one without a new forward would otherwise add the
    same gradients twice without a word."""
    layer, x = make(kind), input_for(kind)
    y = layer.forward(x)
    layer.backward(np.ones_like(y))
    with pytest.raises(RuntimeError, match="twice after one forward"):
        layer.backward(np.ones_like(y))


def test_the_denoiser_refuses_a_second_backward_without_a_new_forward():
    from npdiff.nn.denoiser import Denoiser

    model = Denoiser(2, hidden=8, n_blocks=2, emb_dim=4, layernorm=True, final_layernorm=True, dtype=F64)
    x, t = np.zeros((600, 2)), np.repeat(np.arange(1, 7), 100)  # 600 rows: the per-timestep route as well
    for rows in (slice(0, 5), slice(None)):
        model.forward(x[rows], t[rows])
        model.backward(np.ones((x[rows].shape[0], 2)))
        with pytest.raises(RuntimeError, match="backward called before forward"):
            model.backward(np.ones((x[rows].shape[0], 2)), input_grad=False)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_silu_is_finite_and_silent_at_the_extremes(dtype):
    import warnings

    layer = make("silu")
    x = np.array([[-1000.0, -100.0, -89.0, 0.0, 89.0, 100.0, 1000.0]], dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # exp(−x) overflowed for x < −88.7 in float32 before
        y = layer.forward(x)
        dx = layer.backward(np.ones_like(x))
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(dx))
    np.testing.assert_allclose(y[0, [0, 3, 6]], [0.0, 0.0, 1000.0], atol=1e-30)
    np.testing.assert_allclose(dx[0, [0, 3, 6]], [0.0, 0.5, 1.0], atol=1e-30)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gelu_is_finite_and_silent_at_the_extremes(dtype):
    import warnings

    layer = make("gelu")
    x = np.array([[-1000.0, -100.0, -10.0, 0.0, 10.0, 100.0, 1000.0]], dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = layer.forward(x)
        dx = layer.backward(np.ones_like(x))
    np.testing.assert_allclose(y, np.maximum(x, 0), atol=1e-6)  # GELU(x) → max(x, 0) away from 0
    np.testing.assert_allclose(dx[0, [0, 1, 3, 5, 6]], [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-6)
