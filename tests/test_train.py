"""The training loop and its runner: batches, one step, the plain loop under ``fit``, the NaN guard, lr schedules,
progress, and a short run that learns."""

from __future__ import annotations

import errno
import io
import os
import signal

import numpy as np
import pytest

from npdiff import data, metrics
from npdiff.io import fileio, progress
from npdiff.processes import ddpm, sampling
from npdiff.training import checkpoint, loop, train
from npdiff.nn.denoiser import Denoiser
from npdiff.nn.optim import EMA, AdamW, clip_grad_norm, cosine_lr, grad_norm
from npdiff.processes.schedules import Schedule


def small_model(dtype="float32", seed=0):
    return Denoiser(2, hidden=16, n_blocks=1, emb_dim=16, layernorm=True, final_layernorm=True, dtype=dtype, seed=seed)


def test_batches_cover_every_point_once_per_epoch_then_reshuffle():
    x = np.arange(10, dtype=np.float64)[:, None]
    b = train.Batches(x, 3, np.random.default_rng(0))
    epoch1 = np.concatenate([b.next()[0] for _ in range(3)])[:, 0]  # 10 // 3 = 3 batches, one point dropped
    assert len(set(epoch1)) == 9
    epoch2 = np.concatenate([b.next()[0] for _ in range(3)])[:, 0]
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
    opt, ema = AdamW(model, 1e-3), EMA(model, 0.9, warmup=False)
    x = np.random.default_rng(0).standard_normal((8, 2))
    before = model.flat_params.copy()
    loss, norm = train.train_step(model, ScaledObjective(1e4), x, None, opt, clip=1.0, ema=ema)
    assert norm > 1.0  # the norm is reported before clipping …
    assert np.linalg.norm(model.flat_grads) == pytest.approx(1.0, rel=1e-4)  # … and the gradient clipped to 1
    assert not np.array_equal(model.flat_params, before)
    np.testing.assert_allclose(ema.shadow, 0.9 * before + 0.1 * model.flat_params, rtol=1e-5, atol=1e-7)


def test_fit_is_the_plain_loop_wrapped_driving_the_loop_by_hand_gives_fits_run_to_the_bit():
    x = np.random.default_rng(0).standard_normal((64, 2))
    objective, lr_schedule = ddpm.EpsilonObjective(Schedule(20)), cosine_lr(1e-2, 25, warmup=5)
    fitted = small_model()
    fit_ema = EMA(fitted, 0.9)
    h = train.fit(fitted, x, objective, steps=25, batch_size=8, optimizer=AdamW(fitted, 1e-2), clip=0.5,
                  ema=fit_ema, lr_schedule=lr_schedule, rng=np.random.default_rng(0), check_every=10, progress=False)
    model = small_model()
    opt, ema, rng = AdamW(model, 1e-2), EMA(model, 0.9), np.random.default_rng(0)
    batches = train.Batches(x.astype(model.dtype), 8, rng)
    steps = list(loop.training_loop(model, objective, batches, opt, rng, 25, lr_schedule=lr_schedule, clip=0.5,
                                    ema=ema))
    assert [step for step, *_ in steps] == list(range(25)) and [lr for *_, lr in steps] == h.lr
    assert [float(loss) for _, loss, _, _ in steps] == h.loss and [float(n) for _, _, n, _ in steps] == h.grad_norm
    np.testing.assert_array_equal(model.flat_params, fitted.flat_params)
    np.testing.assert_array_equal(ema.shadow, fit_ema.shadow)


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


def test_fit_reads_a_nan_at_its_check_and_ends_with_the_weights_of_the_check_before_it():
    x = np.random.default_rng(0).standard_normal((64, 2))

    def run(steps, objective, model):
        opt = AdamW(model, 1e-2)
        h = train.fit(model, x, objective, steps=steps, batch_size=8, optimizer=opt, clip=0.5, ema=EMA(model, 0.9),
                      rng=np.random.default_rng(0), check_every=10, progress=False)
        return opt, h

    failed, reference = small_model("float64"), small_model("float64")
    with pytest.raises(train.NonFiniteLossError, match=r"loss at step 24 .*those of step 20 .*5 step\(s\) since"):
        run(30, ScaledObjective(nan_at_call=25), failed)
    opt, h = run(20, ScaledObjective(), reference)
    np.testing.assert_array_equal(failed.flat_params, reference.flat_params)  # steps 20..24 were undone
    assert opt.steps == 20 and len(h.loss) == 20


def test_the_check_interval_does_not_change_the_run():
    x = np.random.default_rng(0).standard_normal((64, 2))
    runs = []
    for check_every in (1, 7, 100):
        model = small_model()
        h = train.fit(model, x, ddpm.EpsilonObjective(Schedule(20)), steps=20, batch_size=8, clip=1.0,
                      rng=np.random.default_rng(0), check_every=check_every, progress=False)
        runs.append((model.flat_params.copy(), h.loss, h.grad_norm))
    for params, loss, norm in runs[1:]:
        np.testing.assert_array_equal(params, runs[0][0])
        assert loss == runs[0][1] and norm == runs[0][2]
    with pytest.raises(ValueError, match="check_every"):
        train.fit(small_model(), x, ScaledObjective(), steps=2, batch_size=8, rng=np.random.default_rng(0),
                  check_every=0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e4])
def test_clipping_decided_on_the_device_equals_optims_rule_to_the_bit(dtype, scale):
    g = np.random.default_rng(0).standard_normal(1000).astype(dtype) * scale
    host, device = g.copy(), g.copy()
    clip_grad_norm(host, 1.0, grad_norm(host))
    norm = np.sqrt(np.dot(g, g).astype(np.float64))
    clip_grad_norm(device, 1.0, np.asarray(norm))  # a 0-d array, as on a device: decided by xp.where
    np.testing.assert_array_equal(device, host)
    assert (scale > 1e-3) == (not np.array_equal(device, g))  # the small gradient is left alone


def test_fit_follows_the_lr_schedule_and_records_history():
    model = small_model()
    sched = cosine_lr(1e-2, 30, warmup=5)
    h = train.fit(model, np.random.default_rng(0).standard_normal((64, 2)), ScaledObjective(), steps=30,
                  batch_size=16, optimizer=AdamW(model), rng=np.random.default_rng(0), lr_schedule=sched)
    assert h.lr == [sched(k) for k in range(30)]
    assert len(h.loss) == len(h.grad_norm) == 30 and h.seconds > 0
    assert h.smoothed(10).shape == (30,) and h.smoothed(10)[0] == h.loss[0]


def test_progress_line_shows_step_loss_rate_and_eta_when_enabled():
    shown, short_log = io.StringIO(), io.StringIO()
    for stream, enabled in ((shown, True), (short_log, None)):  # None: a StringIO is not a terminal
        bar = train.Progress(100, enabled, stream)
        bar.update(100, "loss 0.2500")
        bar.close()
    assert "step 100/100" in shown.getvalue() and "loss 0.2500" in shown.getvalue()
    assert "steps/s" in shown.getvalue() and "ETA" in shown.getvalue()
    assert short_log.getvalue() == ""  # a run shorter than one log interval writes nothing to a log


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_progress_writes_whole_lines_at_a_modest_rate_when_stderr_is_not_a_terminal(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(progress.time, "perf_counter", clock)
    log = io.StringIO()
    bar = progress.Progress(1000, stream=log)  # a log file: not a terminal
    for step in range(1, 1001):
        clock.now = step * 0.1  # 100 s in all, 10 steps/s
        bar.update(step, "loss 1.0")
    bar.close()
    lines = log.getvalue().splitlines()
    assert len(lines) == 100 // progress.LOG_INTERVAL + 1  # one line per interval, then the final state
    assert "\r" not in log.getvalue() and lines[-1].startswith("step 1000/1000")
    assert "10 steps/s" in lines[0]  # whole steps per second from 10 on, two decimals below
    assert not progress.Progress(10, enabled=False, stream=log).enabled


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
    samples = sampling.sample(ddpm.EpsilonChain(model, s), 1000, np.random.default_rng(1))
    curve = data.heart_curve(20_000)
    noise = metrics.chamfer(np.random.default_rng(2).standard_normal((1000, 2)), curve)  # ≈ 0.55, the ceiling
    cd = metrics.chamfer(samples, curve)
    assert cd < 0.06 < noise / 9, (cd, noise)


def _run(path, steps, resume=False, objective=None, **kwargs):
    """A float64 ε run with AdamW, EMA and checkpoints every 5 steps; returns (model, ema, history)."""
    model = small_model("float64")
    opt, ema, rng = AdamW(model, 1e-2), EMA(model, 0.9), np.random.default_rng(0)
    x = np.random.default_rng(1).standard_normal((40, 2))
    h = train.fit(model, x, objective or ddpm.EpsilonObjective(Schedule(20)), steps=steps, batch_size=16,
                  optimizer=opt, rng=rng, clip=0.5, ema=ema, checkpoint_path=path, checkpoint_every=5,
                  resume=resume, **kwargs)
    return model, ema, h


class SignalAt(ddpm.EpsilonObjective):
    """The ε objective, sending this process ``signum`` during its ``at``-th call (in the middle of a step)."""

    def __init__(self, schedule, at, signum):
        super().__init__(schedule)
        self.at, self.signum, self.calls = at, signum, 0

    def loss_and_backward(self, model, x0, rng=None, **kwargs):
        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), self.signum)
        return super().loss_and_backward(model, x0, rng, **kwargs)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_finishes_the_step_writes_its_checkpoint_and_resuming_is_exact(tmp_path, signum):
    full_model, full_ema, full = _run(tmp_path / "full.npz", 12)
    path = tmp_path / "stopped.npz"
    with pytest.raises(train.TrainingInterrupted, match=r"after step 8 of 12; checkpoint of step 8") as stop:
        _run(path, 12, objective=SignalAt(Schedule(20), 8, signum))
    assert stop.value.step == 8 and stop.value.saved and stop.value.signum == signum
    assert isinstance(stop.value, KeyboardInterrupt)  # code that catches Ctrl-C still does
    assert checkpoint.load(path).step == 8  # not the step-5 checkpoint: no work is lost
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handlers are restored
    model, ema, resumed = _run(path, 12, resume=True)
    assert resumed.start_step == 8 and resumed.steps_run == 4
    np.testing.assert_array_equal(model.flat_params, full_model.flat_params)
    np.testing.assert_array_equal(ema.shadow, full_ema.shadow)
    assert resumed.loss == full.loss


def test_without_a_checkpoint_path_ctrl_c_is_left_alone():
    model = small_model()
    x = np.random.default_rng(1).standard_normal((40, 2))
    with pytest.raises(KeyboardInterrupt) as stop:
        train.fit(model, x, SignalAt(Schedule(20), 3, signal.SIGINT), steps=10, batch_size=8,
                  rng=np.random.default_rng(0))
    assert not isinstance(stop.value, train.TrainingInterrupted)


def test_fit_defaults_to_adamw_and_batches_of_256():
    model = small_model("float64")
    before = model.flat_params.copy()
    x = np.random.default_rng(1).standard_normal((600, 2))
    objective = ScaledObjective()
    h = train.fit(model, x, objective, steps=3, rng=np.random.default_rng(0))
    assert len(h.loss) == 3 and not np.array_equal(model.flat_params, before)
    reference = small_model("float64")
    opt = AdamW(reference, lr=1e-3, weight_decay=0.0)
    batches = train.Batches(x, 256, np.random.default_rng(0))
    for _ in range(3):
        train.train_step(reference, ScaledObjective(), batches.next()[0], None, opt)
    np.testing.assert_allclose(model.flat_params, reference.flat_params, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("make_path, message", [
    (lambda tmp: tmp, "is a folder"),
    (lambda tmp: tmp / "no_such_folder" / "m.npz", "does not exist"),
    (lambda tmp: "", "names no file"),
])
def test_the_checkpoint_path_is_checked_before_any_step(tmp_path, make_path, message):
    objective = ScaledObjective()
    model = small_model()
    with pytest.raises(ValueError, match=message):
        train.fit(model, np.ones((16, 2)), objective, steps=5, batch_size=4, rng=np.random.default_rng(0),
                  checkpoint_path=make_path(tmp_path))
    assert objective.calls == 0


def test_a_full_disk_at_a_checkpoint_stops_training_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "run.npz"
    _run(path, 5)
    good = path.read_bytes()
    real_open = fileio._open

    def full_disk(file, mode):
        f = real_open(file, mode)
        write = f.write

        def fail_after_a_few_bytes(data):
            if f.tell() > 1000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return write(data)

        f.write = fail_after_a_few_bytes
        return f

    monkeypatch.setattr(fileio, "_open", full_disk)
    with pytest.raises(train.CheckpointWriteError, match=r"at step 10: No space left on device; the checkpoint of "
                                                         r"step 5 is intact"):
        _run(path, 12, resume=True)
    assert path.read_bytes() == good
    assert sorted(os.listdir(tmp_path)) == ["run.npz"]


def test_resuming_with_other_data_or_batch_size_is_refused_by_name(tmp_path):
    path = tmp_path / "run.npz"
    _run(path, 5)
    model = small_model("float64")
    with pytest.raises(ValueError, match="batch order is for 40 points; the data have 30"):
        train.fit(model, np.ones((30, 2)), ScaledObjective(), steps=8, batch_size=16, rng=np.random.default_rng(0),
                  checkpoint_path=path, resume=True)
    with pytest.raises(ValueError, match="batch_size 16; this run has 8"):
        train.fit(small_model("float64"), np.ones((40, 2)), ScaledObjective(), steps=8, batch_size=8,
                  rng=np.random.default_rng(0), checkpoint_path=path, resume=True)


def test_a_signal_the_process_ignores_stays_ignored(tmp_path):
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as for a background job started with `&`
    try:
        _, _, h = _run(tmp_path / "run.npz", 12, objective=SignalAt(Schedule(20), 3, signal.SIGINT))
        assert len(h.loss) == 12 and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
