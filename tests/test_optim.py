"""Adam/AdamW against hand calculations, clipping, learning-rate schedules, EMA, optimizer state."""

import math

import numpy as np
import pytest

from npdiff.nn.flat import flatten
from npdiff.nn.layers import Linear
from npdiff.nn.denoiser import Denoiser
from npdiff.nn import primitives
from npdiff.nn.optim import (EMA, Adam, AdamW, clip_factor, clip_grad_norm, constant_lr, cosine_lr,
                               linear_decay_lr)


def toy(W=0.3, b=-0.2):
    """A Linear(1, 1) in float64 with hand-set weights: two scalar parameters."""
    lin = Linear(1, 1, np.random.default_rng(0), dtype="float64")
    flatten(lin)
    lin.params["W"][...] = W
    lin.params["b"][...] = b
    return lin


def set_grads(lin, gW, gb):
    lin.grads["W"][...] = gW
    lin.grads["b"][...] = gb


# --- Adam ---------------------------------------------------------------------------------------

def test_first_two_adam_steps_match_hand_calculation():
    lin = toy(W=0.3, b=-0.2)
    opt = Adam(lin, lr=0.1, betas=(0.9, 0.999), eps=1e-8)
    # step 1, g = (0.5, −2): m = 0.1g, v = 0.001g², m̂ = g, v̂ = g² -> θ −= 0.1·g/(|g| + 1e−8)
    set_grads(lin, 0.5, -2.0)
    opt.step()
    assert lin.params["W"][0, 0] == pytest.approx(0.3 - 0.1 * 0.5 / (0.5 + 1e-8), abs=1e-15)
    assert lin.params["W"][0, 0] == pytest.approx(0.200000002, abs=1e-15)
    assert lin.params["b"][0] == pytest.approx(-0.1000000005, abs=1e-15)
    # step 2, g = (−1, 0.25): W: m = 0.9·0.05 + 0.1·(−1) = −0.055, v = 0.999·0.00025 + 0.001·1 = 0.00124975
    #   θ −= 0.1·(−0.055/0.19)/(√(0.00124975/0.001999) + 1e−8)
    # b: m = 0.9·(−0.2) + 0.1·0.25 = −0.155, v = 0.999·0.004 + 0.001·0.0625 = 0.0040585
    set_grads(lin, -1.0, 0.25)
    opt.step()
    W_expected = 0.200000002 - 0.1 * (-0.055 / 0.19) / (math.sqrt(0.00124975 / 0.001999) + 1e-8)
    b_expected = -0.1000000005 - 0.1 * (-0.155 / 0.19) / (math.sqrt(0.0040585 / 0.001999) + 1e-8)
    assert lin.params["W"][0, 0] == pytest.approx(W_expected, abs=1e-13)
    assert lin.params["b"][0] == pytest.approx(b_expected, abs=1e-13)
    assert lin.params["W"][0, 0] == pytest.approx(0.2366103542405653, abs=1e-13)
    assert lin.params["b"][0] == pytest.approx(-0.0427465433289555, abs=1e-13)
    np.testing.assert_allclose(opt.m, [-0.055, -0.155], rtol=1e-13)
    np.testing.assert_allclose(opt.v, [0.00124975, 0.0040585], rtol=1e-13)
    assert opt.steps == 2


def test_step_lr_argument_overrides_the_default():
    a, b = toy(), toy()
    opt_a, opt_b = Adam(a, lr=0.1), Adam(b, lr=0.5)
    for lin in (a, b):
        set_grads(lin, 0.5, -2.0)
    opt_a.step(lr=0.5)
    opt_b.step()
    np.testing.assert_array_equal(a.flat_params, b.flat_params)


def test_adam_acts_on_the_models_flat_buffers():
    model = Denoiser(2, hidden=8, n_blocks=1, emb_dim=4, dtype="float64")
    opt = Adam(model)
    assert opt.params is model.flat_params and opt.grads is model.flat_grads


def test_adamw_with_zero_gradient_shrinks_by_one_minus_lr_lambda_per_step():
    lin = toy(W=0.8, b=-1.5)
    opt = AdamW(lin, lr=0.01, weight_decay=0.1)
    set_grads(lin, 0.0, 0.0)  # Adam's own term is 0/(0 + ε) = 0
    for k in range(1, 4):
        opt.step()
        np.testing.assert_allclose(lin.flat_params, np.array([0.8, -1.5]) * (1 - 0.01 * 0.1) ** k, rtol=1e-15)
    opt.step(lr=0.5)  # a scheduled lr decays by its own value: θ ← θ(1 − lr_k·λ)
    np.testing.assert_allclose(lin.flat_params, np.array([0.8, -1.5]) * (1 - 0.001) ** 3 * (1 - 0.05), rtol=1e-15)


def test_adamw_decay_is_decoupled_from_the_adam_update():
    plain, decayed = toy(W=0.8, b=-1.5), toy(W=0.8, b=-1.5)
    adam, adamw = Adam(plain, lr=0.01), AdamW(decayed, lr=0.01, weight_decay=0.1)
    for g in ((0.3, -0.7), (-0.2, 0.4)):
        before = decayed.flat_params.copy()
        start = plain.flat_params.copy()
        set_grads(plain, *g)
        set_grads(decayed, *g)
        adam.step()
        adamw.step()
        adam_update = plain.flat_params - start  # same m, v in both: λ never enters the moments
        np.testing.assert_allclose(decayed.flat_params, before * (1 - 0.01 * 0.1) + adam_update, rtol=1e-14)
        plain.flat_params[...] = decayed.flat_params  # continue from the same point
    np.testing.assert_array_equal(adam.m, adamw.m)
    np.testing.assert_array_equal(adam.v, adamw.v)


def test_adamw_defaults_and_adam_has_no_decay():
    assert AdamW(toy()).weight_decay == 0.01
    assert Adam(toy()).weight_decay == 0.0


@pytest.mark.parametrize("shape", [(3, 2), (300, 400)])  # 8 parameters, and 120,400: blocks and a partial one
def test_adam_matches_pytorch_adamw_when_torch_is_installed(crosscheck, shape):
    torch = crosscheck("torch")
    rng = np.random.default_rng(0)
    lin = Linear(*shape, rng, dtype="float64")
    opt = AdamW(lin, lr=0.05, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.2)
    p = torch.nn.Parameter(torch.tensor(lin.flat_params.copy()))
    ref = torch.optim.AdamW([p], lr=0.05, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.2)
    for _ in range(4):
        g = rng.standard_normal(lin.flat_grads.size)
        lin.flat_grads[...] = g
        p.grad = torch.tensor(g)
        opt.step()
        ref.step()
    np.testing.assert_allclose(lin.flat_params, p.detach().numpy(), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("kwargs", [dict(lr=0.0), dict(lr=-1e-3), dict(betas=(1.0, 0.999)), dict(betas=(0.9, 1.0)),
                                    dict(betas=(-0.1, 0.999)), dict(eps=0.0)])
def test_invalid_adam_settings_raise_value_error(kwargs):
    for cls in (Adam, AdamW):
        with pytest.raises(ValueError):
            cls(toy(), **kwargs)


def test_negative_weight_decay_raises_value_error():
    with pytest.raises(ValueError, match="weight_decay"):
        AdamW(toy(), weight_decay=-0.01)


# --- optimizer state ----------------------------------------------------------------------------

def test_state_dict_round_trip_gives_identical_subsequent_steps():
    rng = np.random.default_rng(1)
    grads = rng.standard_normal((5, 8))
    a = Linear(3, 2, np.random.default_rng(2), dtype="float64")
    opt_a = AdamW(a, lr=0.05, weight_decay=0.1)
    for g in grads[:3]:
        a.flat_grads[...] = g
        opt_a.step()
    state = opt_a.state_dict()
    assert state["steps"] == 3 and isinstance(state["m"], np.ndarray)
    b = Linear(3, 2, np.random.default_rng(99), dtype="float64")
    opt_b = AdamW(b, lr=0.05, weight_decay=0.1)
    b.flat_params[...] = a.flat_params
    opt_b.load_state_dict(state)
    saved_m = state["m"].copy()
    for g in grads[3:]:
        a.flat_grads[...] = g
        b.flat_grads[...] = g
        opt_a.step()
        opt_b.step()
        np.testing.assert_array_equal(b.flat_params, a.flat_params)
    np.testing.assert_array_equal(state["m"], saved_m)  # the saved state is a copy, not a live view
    assert opt_b.steps == 5


def test_fresh_optimizer_without_state_diverges_from_resumed_one():
    # the round trip above must matter: without the state, bias correction and moments differ
    a, b = toy(), toy()
    opt_a, opt_b = Adam(a, lr=0.1), Adam(b, lr=0.1)
    set_grads(a, 1.0, 1.0)
    opt_a.step()
    b.flat_params[...] = a.flat_params
    set_grads(a, -0.5, 0.2)
    set_grads(b, -0.5, 0.2)
    opt_a.step()
    opt_b.step()
    assert not np.allclose(a.flat_params, b.flat_params)


def test_load_state_dict_with_wrong_shape_raises_value_error():
    opt = Adam(toy())
    with pytest.raises(ValueError, match="shape"):
        opt.load_state_dict({"m": np.zeros(3), "v": np.zeros(3), "steps": 1})


# --- gradient clipping --------------------------------------------------------------------------

def test_clip_grad_norm_scales_to_max_norm_over_norm_plus_1e_6_when_above():
    g = np.array([3.0, 0.0, -4.0])
    norm = clip_grad_norm(g, 1.0)
    assert norm == 5.0
    assert np.linalg.norm(g) == pytest.approx(1.0 * 5.0 / (5.0 + 1e-6), rel=1e-14)
    np.testing.assert_allclose(g, np.array([3.0, 0.0, -4.0]) / (5.0 + 1e-6), rtol=1e-14)


@pytest.mark.parametrize("max_norm", [5.0, 10.0])
def test_clip_grad_norm_leaves_gradients_at_or_below_max_norm_untouched(max_norm):
    g = np.array([3.0, 0.0, -4.0])
    assert clip_grad_norm(g, max_norm) == 5.0
    np.testing.assert_array_equal(g, [3.0, 0.0, -4.0])


def test_clip_grad_norm_acts_in_place_on_the_model_gradients():
    lin = toy()
    set_grads(lin, 30.0, 40.0)
    assert clip_grad_norm(lin.flat_grads, 0.5) == 50.0
    assert lin.grads["W"][0, 0] == pytest.approx(30.0 * 0.5 / (50.0 + 1e-6), rel=1e-14)


@pytest.mark.parametrize("max_norm, norm", [(1.0, 5.0), (1.0, 0.5), (2.0, 2.0)])
def test_clip_factor_is_clip_grad_norms_scale_and_none_at_or_below_max_norm(max_norm, norm):
    factor = clip_factor(norm, max_norm, np.float32)
    if norm <= max_norm:
        assert factor is None
    else:
        assert factor.dtype == np.float32 and factor == np.float32(max_norm / (norm + 1e-6))
    device = clip_factor(np.asarray(norm), max_norm, np.float32)  # a 0-d array, as on a device: no read-back
    assert device.shape == () and device == (1 if factor is None else factor)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("size", [7, 3 * primitives.BLOCK + 5])  # one call, and block by block
@pytest.mark.parametrize("clip", [None, 0.9])
def test_the_fused_step_is_clip_then_adamw_then_ema_to_the_bit(dtype, size, clip):
    """step(lr, grad_scale=c, ema=ema) (the training loop's one pass) equals g ← c·g, step(lr), ema.update()."""
    runs = []
    for fused in (False, True):
        lin = Linear(size, 1, np.random.default_rng(12), dtype)
        flatten(lin)
        opt, ema = AdamW(lin, lr=0.01, weight_decay=0.1), EMA(lin, decay=0.9)
        for step in range(3):
            opt.grads[...] = np.random.default_rng(step).standard_normal(opt.grads.shape)
            c = None if clip is None else clip_factor(float(np.linalg.norm(opt.grads)) / 30, clip, opt.grads.dtype)
            if fused:
                opt.step(0.02, grad_scale=c, ema=ema)
            else:
                if c is not None:
                    opt.grads *= c
                opt.step(0.02)
                ema.update()
        runs.append((opt.params.copy(), opt.m.copy(), opt.v.copy(), ema.shadow.copy(), opt.grads.copy(), ema.updates))
    for separate, fused in zip(*runs):
        np.testing.assert_array_equal(fused, separate)


def test_the_fused_step_refuses_an_ema_of_another_model():
    opt, other = AdamW(toy(W=1.0, b=-2.0)), EMA(toy(W=1.0, b=-2.0))
    with pytest.raises(ValueError, match="another model"):
        opt.step(ema=other)


# --- learning-rate schedules --------------------------------------------------------------------

def test_constant_lr():
    schedule = constant_lr(3e-4)
    assert [schedule(k) for k in (0, 1, 10**6)] == [3e-4] * 3


def test_linear_decay_endpoints_midpoint_and_hold():
    schedule = linear_decay_lr(1.0, 100, final=0.1)
    assert schedule(0) == 1.0
    assert schedule(50) == pytest.approx(0.55, rel=1e-14)
    assert schedule(100) == pytest.approx(0.1, rel=1e-14)
    assert schedule(1000) == pytest.approx(0.1, rel=1e-14)
    assert linear_decay_lr(2e-3, 10)(10) == 0.0


def test_cosine_endpoints_and_midpoint_without_warmup():
    schedule = cosine_lr(1.0, 100, final=0.1)
    assert schedule(0) == pytest.approx(1.0, rel=1e-14)
    assert schedule(50) == pytest.approx(0.55, rel=1e-14)
    assert schedule(25) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 4)), rel=1e-14)
    assert schedule(100) == pytest.approx(0.1, rel=1e-14)
    assert schedule(500) == pytest.approx(0.1, rel=1e-14)


def test_cosine_linear_warmup_then_decay():
    schedule = cosine_lr(1.0, 110, final=0.0, warmup=10)
    np.testing.assert_allclose([schedule(k) for k in range(10)], np.arange(1, 11) / 10, rtol=1e-14)
    assert schedule(10) == pytest.approx(1.0, rel=1e-14)
    assert schedule(60) == pytest.approx(0.5, rel=1e-14)
    assert schedule(110) == pytest.approx(0.0, abs=1e-15)
    values = [schedule(k) for k in range(10, 111)]
    assert all(b <= a for a, b in zip(values, values[1:]))


# --- EMA ----------------------------------------------------------------------------------------

def test_ema_update_follows_the_recurrence_over_three_steps():
    lin = toy(W=1.0, b=-2.0)
    ema = EMA(lin, decay=0.9, warmup=False)
    shadow = np.array([1.0, -2.0])
    for theta in ([2.0, 0.0], [4.0, 1.0], [-1.0, 3.0]):
        lin.flat_params[...] = theta
        ema.update()
        shadow = 0.9 * shadow + 0.1 * np.array(theta)  # θ̄ ← decay·θ̄ + (1 − decay)·θ
        np.testing.assert_allclose(ema.shadow, shadow, rtol=1e-14)
    # by hand: 1 -> 1.1 -> 1.39 -> 1.151 and -2 -> -1.8 -> -1.52 -> -1.068
    np.testing.assert_allclose(ema.shadow, [1.151, -1.068], rtol=1e-14)
    np.testing.assert_array_equal(lin.flat_params, [-1.0, 3.0])  # live weights untouched


def test_ema_warmup_uses_the_smaller_decay_for_early_updates():
    """d_n = min(decay, (1 + n)/(10 + n)): 0.1, 2/11, 3/12, … until it reaches decay (here at n = 8)."""
    lin = toy(W=1.0, b=-2.0)
    ema = EMA(lin, decay=0.5)
    shadow = np.array([1.0, -2.0])
    for n in range(12):
        theta = np.array([float(n), -float(n) ** 2])
        lin.flat_params[...] = theta
        d = min(0.5, (1 + n) / (10 + n))
        assert ema.current_decay() == d
        ema.update()
        shadow = d * shadow + (1 - d) * theta
        np.testing.assert_allclose(ema.shadow, shadow, rtol=1e-14)
    assert ema.updates == 12 and ema.current_decay() == 0.5


def test_ema_updates_survive_a_checkpoint(tmp_path):
    from npdiff.training import checkpoint

    lin = toy(W=1.0, b=-2.0)
    ema = EMA(lin, decay=0.99)
    for _ in range(5):
        ema.update()
    checkpoint.save(tmp_path / "c.npz", lin, ema=ema)
    fresh = EMA(lin, decay=0.99)
    checkpoint.load(tmp_path / "c.npz").restore(lin, ema=fresh)
    assert fresh.updates == 5 and fresh.current_decay() == ema.current_decay()


def test_ema_shadow_is_a_copy_of_the_weights():
    lin = toy(W=1.0, b=-2.0)
    ema = EMA(lin)
    lin.flat_params[...] = 7.0
    np.testing.assert_array_equal(ema.shadow, [1.0, -2.0])


def test_ema_swap_exchanges_weights_and_swapping_twice_restores():
    lin = toy(W=1.0, b=-2.0)
    ema = EMA(lin, decay=0.5, warmup=False)
    lin.flat_params[...] = [3.0, 4.0]
    ema.update()  # shadow = [2, 1]
    ema.swap()
    np.testing.assert_array_equal(lin.flat_params, [2.0, 1.0])
    np.testing.assert_array_equal(lin.params["W"], [[2.0]])  # the layer sees the averaged weights
    np.testing.assert_array_equal(ema.shadow, [3.0, 4.0])
    ema.swap()
    np.testing.assert_array_equal(lin.flat_params, [3.0, 4.0])
    np.testing.assert_array_equal(ema.shadow, [2.0, 1.0])


@pytest.mark.parametrize("decay", [1.0, -0.1, 1.5])
def test_invalid_ema_decay_raises_value_error(decay):
    with pytest.raises(ValueError, match="decay"):
        EMA(toy(), decay=decay)


def test_lr_schedules_reject_empty_or_inconsistent_lengths():
    with pytest.raises(ValueError, match="total_steps"):
        linear_decay_lr(1e-3, 0)
    with pytest.raises(ValueError, match="warmup"):
        cosine_lr(1e-3, 100, warmup=200)
