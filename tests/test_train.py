"""The training loop: batches, one step, the NaN guard, lr schedules, progress, and a short run that learns."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest

from npdiff import checkpoint, data, ddpm, metrics, train
from npdiff.models import Denoiser
from npdiff.optim import EMA, AdamW, cosine_lr
from npdiff.schedules import Schedule


def small_model(dtype="float32", seed=0):
    return Denoiser(2, hidden=16, n_blocks=1, emb_dim=16, layernorm=True, final_layernorm=True, dtype=dtype, seed=seed)


def test_batches_cover_every_point_once_per_epoch_then_reshuffle():
    x = np.arange(10, dtype=np.float64)[:, None]
    b = train.Batches(x, 3, np.random.default_rng(0))
    epoch1 = np.concatenate([b.next() for _ in range(3)])[:, 0]  # 10 // 3 = 3 batches, one point dropped
    assert len(set(epoch1)) == 9
    epoch2 = np.concatenate([b.next() for _ in range(3)])[:, 0]
    assert not np.array_equal(epoch1, epoch2)
    with pytest.raises(ValueError, match="batch_size"):
        train.Batches(x, 11, np.random.default_rng(0))


class ScaledObjective:
    """L = scale · mean(f(x, 1)²): gradients as large as wanted, and a NaN on request."""

    def __init__(self, scale=1.0, nan_at_call=None):
        self.scale, self.nan_at_call, self.calls = scale, nan_at_call, 0

    def loss_and_backward(self, model, x0, rng):
        self.calls += 1
        y = model.forward(x0.astype(model.dtype), np.ones(x0.shape[0], dtype=np.int64))
        model.backward(self.scale * 2 * y / y.size)
        if self.calls == self.nan_at_call:
            return float("nan")
        return float(self.scale * (y * y).mean())


def test_train_step_clips_the_gradient_norm_and_updates_ema():
    model = small_model()
    opt, ema = AdamW(model, 1e-3), EMA(model, 0.9)
    x = np.random.default_rng(0).standard_normal((8, 2))
    before = model.flat_params.copy()
    loss, norm = train.train_step(model, ScaledObjective(1e4), x, None, opt, clip=1.0, ema=ema)
    assert norm > 1.0  # the norm is reported before clipping …
    assert np.linalg.norm(model.flat_grads) == pytest.approx(1.0, rel=1e-4)  # … and the gradient clipped to 1
    assert not np.array_equal(model.flat_params, before)
    np.testing.assert_allclose(ema.shadow, 0.9 * before + 0.1 * model.flat_params, rtol=1e-5, atol=1e-7)


def test_train_step_stops_on_a_non_finite_loss_without_touching_the_weights():
    model = small_model()
    opt = AdamW(model, 1e-3)
    before = model.flat_params.copy()
    with pytest.raises(train.NonFiniteLossError, match="step 41"):
        train.train_step(model, ScaledObjective(nan_at_call=1), np.ones((4, 2)), None, opt, step=41)
    np.testing.assert_array_equal(model.flat_params, before)


def test_fit_stops_at_the_bad_step_and_keeps_the_last_good_checkpoint(tmp_path):
    model = small_model()
    path = tmp_path / "run.npz"
    x = np.random.default_rng(0).standard_normal((64, 2))
    with pytest.raises(train.NonFiniteLossError, match=r"step 24 .*last good checkpoint .*\(step 20\)"):
        train.fit(model, x, ScaledObjective(nan_at_call=25), steps=50, batch_size=8, optimizer=AdamW(model),
                  rng=np.random.default_rng(0), checkpoint_path=path, checkpoint_every=10)
    ckpt = checkpoint.load(path)
    assert ckpt.step == 20 and len(ckpt.group("history")["loss"]) == 20
    assert np.all(np.isfinite(ckpt.group("history")["loss"]))
    assert not [f for f in os.listdir(tmp_path) if f != "run.npz"]  # no temporary files left behind


def test_fit_follows_the_lr_schedule_and_records_history():
    model = small_model()
    sched = cosine_lr(1e-2, 30, warmup=5)
    h = train.fit(model, np.random.default_rng(0).standard_normal((64, 2)), ScaledObjective(), steps=30,
                  batch_size=16, optimizer=AdamW(model), rng=np.random.default_rng(0), lr_schedule=sched)
    assert h.lr == [sched(k) for k in range(30)]
    assert len(h.loss) == len(h.grad_norm) == 30 and h.seconds > 0
    assert h.smoothed(10).shape == (30,) and h.smoothed(10)[0] == h.loss[0]


def test_progress_line_shows_step_loss_rate_and_eta_only_when_enabled():
    shown, hidden = io.StringIO(), io.StringIO()
    for stream, enabled in ((shown, True), (hidden, None)):  # None: a StringIO is not a terminal
        bar = train.Progress(100, enabled, stream)
        bar.update(100, 0.25)
        bar.close()
    assert "step 100/100" in shown.getvalue() and "loss 0.2500" in shown.getvalue()
    assert "steps/s" in shown.getvalue() and "ETA" in shown.getvalue()
    assert hidden.getvalue() == ""


def test_short_training_run_on_the_heart_beats_noise_by_far():
    """End to end: 1200 steps of batch 128 (about a second) put samples close to the heart curve."""
    rng = np.random.default_rng(0)
    x = data.heart(4000, rng)
    s = Schedule(100)
    model = Denoiser(2, hidden=32, n_blocks=1, emb_dim=32, layernorm=True, final_layernorm=True)
    opt, ema = AdamW(model, 3e-3), EMA(model, 0.99)
    h = train.fit(model, x, ddpm.EpsilonObjective(s), steps=1200, batch_size=128, optimizer=opt, rng=rng,
                  lr_schedule=cosine_lr(3e-3, 1200, warmup=50), clip=1.0, ema=ema)
    assert np.mean(h.loss[-100:]) < 0.8 * np.mean(h.loss[:100])
    ema.swap()
    samples = ddpm.sample(model, s, 1000, np.random.default_rng(1))
    curve = data.heart_curve(20_000)
    noise = metrics.chamfer(np.random.default_rng(2).standard_normal((1000, 2)), curve)  # ≈ 0.55, the ceiling
    cd = metrics.chamfer(samples, curve)
    assert cd < 0.06 < noise / 9, (cd, noise)
