"""The fused fast paths agree with the plain formulas they replace (the speed work must not change math)."""

import json
import math
import os
import sys

import numpy as np
import pytest

from npdiff.nn import gradcheck
from npdiff.nn.embeddings import SinusoidalEmbedding
from npdiff.nn.layers import GELU, LayerNorm, Linear
from npdiff.nn.denoiser import Denoiser
from npdiff.nn.optim import EMA, AdamW

F64 = "float64"


def test_gelu_forward_and_derivative_match_the_plain_tanh_formulas():
    x = np.linspace(-6, 6, 241)[None, :]
    gelu = GELU()
    y = gelu.forward(x)
    dx = gelu.backward(np.ones_like(x))
    c, a = math.sqrt(2 / math.pi), 0.044715
    th = np.tanh(c * (x + a * x**3))
    np.testing.assert_allclose(y, 0.5 * x * (1 + th), rtol=1e-14, atol=1e-15)
    plain = 0.5 * (1 + th) + 0.5 * x * (1 - th**2) * c * (1 + 3 * a * x**2)
    np.testing.assert_allclose(dx, plain, rtol=1e-13, atol=1e-15)


def test_layernorm_backward_matches_the_plain_three_term_formula():
    rng = np.random.default_rng(0)
    ln = LayerNorm(7, dtype=F64)
    ln.params["gamma"][...] = rng.uniform(0.5, 1.5, 7)
    x, dy = 3 * rng.standard_normal((5, 7)) + 2, rng.standard_normal((5, 7))
    ln.forward(x)
    dx = ln.backward(dy)
    xhat = (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + ln.eps)
    dxhat = dy * ln.params["gamma"]
    plain = (dxhat - dxhat.mean(1, keepdims=True) - xhat * (dxhat * xhat).mean(1, keepdims=True)) \
        / np.sqrt(x.var(1, keepdims=True) + ln.eps)
    np.testing.assert_allclose(dx, plain, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(ln.grads["gamma"], (dy * xhat).sum(0), rtol=1e-12)
    np.testing.assert_allclose(ln.grads["beta"], dy.sum(0), rtol=1e-12)


def test_linear_without_input_grad_returns_none_and_the_same_parameter_gradients():
    rng = np.random.default_rng(1)
    a, b = Linear(4, 3, np.random.default_rng(0), dtype=F64), Linear(4, 3, np.random.default_rng(0), dtype=F64)
    x, dy = rng.standard_normal((6, 4)), rng.standard_normal((6, 3))
    a.forward(x)
    b.forward(x)
    assert a.backward(dy, input_grad=False) is None
    b.backward(dy)
    for key in ("W", "b"):
        np.testing.assert_array_equal(a.grads[key], b.grads[key])
    np.testing.assert_allclose(a.grads["b"], dy.sum(0), rtol=1e-13)


@pytest.mark.parametrize("n", [1, 5])
def test_denoiser_without_input_grad_returns_none_and_identical_parameter_gradients(n):
    rng = np.random.default_rng(2)
    x, t, dy = rng.standard_normal((n, 2)), rng.integers(1, 50, n), rng.standard_normal((n, 2))
    grads = []
    for input_grad in (True, False):
        model = Denoiser(2, hidden=8, n_blocks=2, emb_dim=4, layernorm=True, final_layernorm=True, dtype=F64)
        model.zero_grad()
        model.forward(x, t)
        dx = model.backward(dy, input_grad=input_grad)
        assert (dx is None) == (not input_grad)
        grads.append(model.flat_grads.copy())
    np.testing.assert_array_equal(grads[0], grads[1])


def test_embedding_writes_into_a_column_slice_and_matches_the_concatenated_form():
    rng = np.random.default_rng(3)
    emb = SinusoidalEmbedding(8, 3.0, dtype=F64)
    x = rng.standard_normal((4, 2))
    wide = np.full((4, 20), 7.0)
    y = emb.forward(x, out=wide[:, 2:18])
    arg = x[:, :, None] * emb.omega
    plain = np.concatenate([np.sin(arg), np.cos(arg)], axis=2).reshape(4, 16)
    np.testing.assert_array_equal(y, plain)
    np.testing.assert_array_equal(wide[:, 2:18], plain)
    assert (wide[:, :2] == 7).all() and (wide[:, 18:] == 7).all()
    report = gradcheck.check_module(emb, x)
    assert report["x"]["rel_error"] < 1e-7


def test_embedding_rejects_an_output_of_the_wrong_shape_or_layout():
    emb = SinusoidalEmbedding(4, dtype=F64)
    x = np.zeros((3, 1))
    with pytest.raises(ValueError):
        emb.forward(x, out=np.empty((3, 5)))
    with pytest.raises(ValueError):
        emb.forward(x, out=np.empty((3, 8))[:, ::2])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(3, 2), (300, 500)])  # 8 parameters, and 150,500: whole blocks and a partial one
def test_adamw_step_and_ema_match_the_textbook_updates(shape, dtype):
    model = Linear(*shape, np.random.default_rng(0), dtype=dtype)
    opt = AdamW(model, lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
    ema = EMA(model, decay=0.9)
    p = model.flat_params.size
    theta, m, v = model.flat_params.astype(np.float64), np.zeros(p), np.zeros(p)
    shadow = theta.copy()
    rng = np.random.default_rng(4)
    tol = dict(rtol=1e-13, atol=1e-15) if dtype == F64 else dict(rtol=1e-5, atol=1e-6)
    for k in range(1, 4):
        g = rng.standard_normal(p).astype(dtype)
        model.flat_grads[...] = g
        opt.step()
        ema.update()
        theta *= 1 - 0.01 * 0.1
        m, v = 0.9 * m + 0.1 * g, 0.99 * v + 0.01 * g * g
        theta -= 0.01 * (m / (1 - 0.9**k)) / (np.sqrt(v / (1 - 0.99**k)) + 1e-8)
        d = min(0.9, k / (9 + k))  # the EMA's warm-up, n = k − 1
        shadow = d * shadow + (1 - d) * model.flat_params.astype(np.float64)
        np.testing.assert_allclose(model.flat_params, theta, **tol)
        np.testing.assert_allclose(opt.m, m, **tol)
        np.testing.assert_allclose(opt.v, v, **tol)
        np.testing.assert_allclose(ema.shadow, shadow, **tol)


def _train_step_benchmark():
    """benchmarks/train_step.py as a module (the folder is not a package)."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
    try:
        import train_step
    finally:
        sys.path.pop(0)
    return train_step


def test_train_step_benchmark_runs_and_writes_json(tmp_path):
    train_step = _train_step_benchmark()
    out = tmp_path / "speed.json"
    train_step.main(["--config", "seed-heart", "--steps", "20", "--no-torch", "--sample-points", "64",
                     "--json", str(out)])
    (result,) = json.loads(out.read_text())
    assert result["name"] == "seed-heart" and result["npdiff_ms"] > 0
    assert result["torch_ms"] is None and result["ratio"] is None


def test_train_step_benchmark_times_the_image_step_by_part_and_its_sampling(tmp_path):
    train_step = _train_step_benchmark()
    out = tmp_path / "speed.json"
    train_step.main(["--config", "image", "--steps", "3", "--no-torch", "--threads", "1", "--sample-images", "4",
                     "--json", str(out)])
    (result,) = json.loads(out.read_text())
    parts = result["parts_ms"]
    assert result["name"] == "image" and result["npdiff_ms"] > 0 and result["floor_ms"] > 0
    assert {"matrix products", train_step.OPTIMIZER_PART, "inputs and loss (the rest)"} <= set(parts)
    assert parts["beside: the EMA as a pass of its own"] > 0
    in_step = [v for k, v in parts.items() if k != "step (sum)" and not k.startswith("beside")]
    assert sum(in_step) == pytest.approx(parts["step (sum)"], rel=1e-9)
    assert result["npdiff_images_per_s"] > 0 and result["sample_images"] == 4
