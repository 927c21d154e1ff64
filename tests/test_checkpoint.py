"""Checkpoints: round trip, atomic writes, clear errors, and exact resumption of training."""

from __future__ import annotations

import errno
import json
import os

import numpy as np
import pytest

from npdiff.io import fileio
from npdiff.processes import ddpm
from npdiff.training import checkpoint, train
from npdiff.nn.denoiser import Denoiser
from npdiff.nn.optim import EMA, AdamW, cosine_lr
from npdiff.processes.schedules import Schedule


def model_of(width=8, dtype="float64", seed=0):
    return Denoiser(2, hidden=width, n_blocks=1, emb_dim=8, layernorm=True, final_layernorm=True, dtype=dtype,
                    seed=seed)


def trained(steps=5):
    model = model_of()
    opt, ema = AdamW(model, 1e-2), EMA(model, 0.9)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 2))
    train.fit(model, x, ddpm.EpsilonObjective(Schedule(20)), steps=steps, batch_size=8, optimizer=opt, rng=rng, ema=ema)
    return model, opt, ema, rng


def test_round_trip_restores_every_piece_of_state(tmp_path):
    model, opt, ema, rng = trained()
    path = tmp_path / "c.npz"
    checkpoint.save(path, model, optimizer=opt, ema=ema, step=5, rng=rng, schedule=Schedule(20, "cosine"),
                    meta={"note": "hi"})
    expected_draw = np.random.default_rng(0)
    expected_draw.bit_generator.state = rng.bit_generator.state
    m2 = model_of(seed=9)
    o2, e2, r2 = AdamW(m2, 1e-2), EMA(m2, 0.9), np.random.default_rng(123)
    ckpt = checkpoint.load(path)
    ckpt.restore(m2, optimizer=o2, ema=e2, rng=r2)
    np.testing.assert_array_equal(m2.flat_params, model.flat_params)
    np.testing.assert_array_equal(o2.m, opt.m)
    np.testing.assert_array_equal(o2.v, opt.v)
    assert o2.steps == opt.steps == 5
    np.testing.assert_array_equal(e2.shadow, ema.shadow)
    assert r2.standard_normal() == expected_draw.standard_normal()
    assert ckpt.step == 5 and ckpt.info["meta"] == {"note": "hi"}
    rebuilt, schedule = checkpoint.load_model(path)  # the EMA weights, by default
    np.testing.assert_array_equal(rebuilt.flat_params, ema.shadow)
    assert schedule.name == "cosine" and schedule.T == 20
    np.testing.assert_array_equal(checkpoint.load_model(path, use_ema=False)[0].flat_params, model.flat_params)


def test_written_atomically_a_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    model, opt, ema, rng = trained()
    path = tmp_path / "c.npz"
    checkpoint.save(path, model, step=1)
    old = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(path, model, optimizer=opt, step=2)
    assert path.read_bytes() == old
    assert os.listdir(tmp_path) == ["c.npz"]  # the temporary file was removed


def test_loading_errors_say_what_is_wrong(tmp_path):
    model, opt, ema, rng = trained()
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        checkpoint.load(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="corrupt"):
        checkpoint.load(bad)
    plain = tmp_path / "plain.npz"
    np.savez(plain, a=np.zeros(3))
    with pytest.raises(ValueError, match="not an npdiff checkpoint"):
        checkpoint.load(plain)
    future = tmp_path / "future.npz"
    np.savez(future, format_version=np.array(99), meta=np.array(json.dumps({"step": 0})))
    with pytest.raises(ValueError, match="format 99"):
        checkpoint.load(future)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, format_version=np.array(1), meta=np.array("{}"), evil=np.array([{"x": 1}], dtype=object))
    with pytest.raises(ValueError):  # allow_pickle=False: object arrays are refused
        checkpoint.load(pickled)
    good = tmp_path / "good.npz"
    checkpoint.save(good, model, step=1)
    with pytest.raises(ValueError, match="configuration differs"):
        checkpoint.load(good).restore(model_of(width=16))
    with pytest.raises(ValueError, match="no optimizer state"):
        checkpoint.load(good).restore(model, optimizer=opt)


def run(path, steps, resume):
    """A float64 run with every kind of state: AdamW, cosine lr, clipping, EMA, checkpoints."""
    model = model_of()
    opt, ema, rng = AdamW(model, 1e-2), EMA(model, 0.9), np.random.default_rng(0)
    x = np.random.default_rng(1).standard_normal((40, 2))  # 40 // 16 = 2 batches: epochs end mid-run
    h = train.fit(model, x, ddpm.EpsilonObjective(Schedule(20)), steps=steps, batch_size=16, optimizer=opt, rng=rng,
                  lr_schedule=cosine_lr(1e-2, 12, warmup=2), clip=0.5, ema=ema, checkpoint_path=path,
                  checkpoint_every=5, resume=resume)
    return model, ema, h


def test_resuming_reproduces_the_uninterrupted_run_exactly(tmp_path):
    full_model, full_ema, full = run(tmp_path / "full.npz", 12, resume=False)
    run(tmp_path / "part.npz", 7, resume=False)  # stopped after step 7 (checkpoint written at the end)
    model, ema, resumed = run(tmp_path / "part.npz", 12, resume=True)
    np.testing.assert_array_equal(model.flat_params, full_model.flat_params)
    np.testing.assert_array_equal(ema.shadow, full_ema.shadow)
    assert resumed.loss == full.loss and resumed.lr == full.lr and resumed.grad_norm == full.grad_norm


def write_checkpoint(path, info, arrays=None):
    """A hand-made checkpoint: the given meta (any JSON) and arrays, as a user or a bug might write it."""
    np.savez(path, format_version=np.array(checkpoint.FORMAT_VERSION), meta=np.array(json.dumps(info)),
             **(arrays or {}))


def good_info_and_arrays(tmp_path):
    model, opt, ema, rng = trained()
    checkpoint.save(tmp_path / "good.npz", model, optimizer=opt, ema=ema, step=5, rng=rng, schedule=Schedule(20))
    ckpt = checkpoint.load(tmp_path / "good.npz")
    return ckpt.info, {k.replace("/", "_SLASH_"): v for k, v in ckpt.arrays.items()}


@pytest.mark.parametrize("change, message", [
    (lambda info: [1, 2, 3], "a JSON list, not an object"),
    (lambda info: "text", "a JSON str, not an object"),
    (lambda info: {**info, "step": -1}, "'step' must be an integer >= 0"),
    (lambda info: {**info, "step": "5"}, "'step' must be an integer"),
    (lambda info: {**info, "model_config": None}, "no model configuration stored"),
    (lambda info: {**info, "model_config": [1]}, "'model_config' must be an object"),
    (lambda info: {**info, "model_config": {**info["model_config"], "colour": "red"}}, "cannot be built"),
    (lambda info: {**info, "model_config": {**info["model_config"], "hidden": 10**9}}, "needs at least"),
    (lambda info: {**info, "model_config": {**info["model_config"], "hidden": "wide"}}, "must be an integer"),
    (lambda info: {**info, "model_config": {**info["model_config"], "dtype": "complex64"}}, "'dtype' must be"),
    (lambda info: {**info, "schedule_config": {"T": 10**12, "name": "linear"}}, "expected an integer in 1"),
    (lambda info: {**info, "schedule_config": {"T": 20, "name": "wiggly"}}, "schedule configuration cannot be built"),
    (lambda info: {**info, "meta": 7}, "'meta' must be an object"),
    (lambda info: {**info, "ema_decay": float("nan")}, "'ema_decay' must be a number in"),
    (lambda info: {**info, "optimizer": {"steps": -3}}, "'optimizer' must be an object"),
])
def test_malformed_meta_is_refused_with_a_message_before_anything_is_built(tmp_path, change, message):
    info, arrays = good_info_and_arrays(tmp_path)
    path = tmp_path / "bad.npz"
    with open(path, "wb") as f:
        np.savez(f, format_version=np.array(1), meta=np.array(json.dumps(change(info))),
                 **{k.replace("_SLASH_", "/"): v for k, v in arrays.items()})
    with pytest.raises(ValueError, match=message) as err:
        checkpoint.load_model(path)
    assert "bad.npz" in str(err.value)


def test_stored_arrays_of_the_wrong_kind_are_refused_before_the_model_is_touched(tmp_path):
    model, opt, ema, rng = trained()
    checkpoint.save(tmp_path / "good.npz", model, optimizer=opt, ema=ema, step=5, rng=rng)
    arrays = dict(checkpoint.load(tmp_path / "good.npz").arrays)
    info = checkpoint.load(tmp_path / "good.npz").info
    target = model_of(seed=3)
    before = target.flat_params.copy()
    for key, value, message in [("param/out.W", np.full(arrays["param/out.W"].shape, "x"), "dtype <U1"),
                                ("ema/shadow", np.zeros(3), "EMA weights have shape"),
                                ("optimizer/m", np.zeros((2, 2)), "Adam moments have shape")]:
        path = tmp_path / "bad.npz"
        with open(path, "wb") as f:
            np.savez(f, format_version=np.array(1), meta=np.array(json.dumps(info)), **{**arrays, key: value})
        with pytest.raises(ValueError, match=message):
            checkpoint.load(path).restore(target, optimizer=AdamW(target), ema=EMA(target, 0.9))
        np.testing.assert_array_equal(target.flat_params, before)
    with open(tmp_path / "rng.npz", "wb") as f:
        bad_rng = {**info, "rng_state": {"bit_generator": "?"}}
        np.savez(f, format_version=np.array(1), meta=np.array(json.dumps(bad_rng)), **arrays)
    with pytest.raises(ValueError, match="random-generator state does not fit"):
        checkpoint.load(tmp_path / "rng.npz").restore(target, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(target.flat_params, before)


def test_a_folder_or_a_single_npy_is_named_for_what_it_is(tmp_path):
    (tmp_path / "dir.npz").mkdir()
    with pytest.raises(ValueError, match="is a folder"):
        checkpoint.load(tmp_path / "dir.npz")
    np.save(tmp_path / "points.npy", np.ones((3, 2)))
    with pytest.raises(ValueError, match="not an .npz archive"):
        checkpoint.load(tmp_path / "points.npy")


def test_estimated_size_matches_the_written_file(tmp_path):
    model, opt, ema, rng = trained()
    big = Denoiser(2, hidden=256, n_blocks=3, emb_dim=64)
    checkpoint.save(tmp_path / "big.npz", big, optimizer=AdamW(big), ema=EMA(big, 0.9))
    estimate = checkpoint.estimate_bytes(big, optimizer=True, ema=True)
    assert 0.97 < estimate / os.path.getsize(tmp_path / "big.npz") < 1.0  # the .npz adds headers only


def test_a_full_disk_leaves_the_previous_checkpoint_and_no_temporary_file(tmp_path, monkeypatch):
    model, opt, ema, rng = trained()
    path = tmp_path / "c.npz"
    checkpoint.save(path, model, step=1)
    old = path.read_bytes()
    real_open = fileio._open

    def full_disk(file, mode):
        f = real_open(file, mode)
        f.write = lambda data: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device"))
        return f

    monkeypatch.setattr(fileio, "_open", full_disk)
    with pytest.raises(OSError, match="No space left"):
        checkpoint.save(path, model, optimizer=opt, step=2)
    assert path.read_bytes() == old and os.listdir(tmp_path) == ["c.npz"]


def test_a_checkpoint_is_measured_before_it_is_expanded(tmp_path, monkeypatch):
    """The archive's declared sizes against the cap, and each member's .npy header against the member's size."""
    import zipfile

    path = tmp_path / "m.npz"
    checkpoint.save(path, Denoiser(2, hidden=4, n_blocks=0, emb_dim=4))
    monkeypatch.setattr(checkpoint, "MAX_BYTES", 100)
    with pytest.raises(ValueError, match=r"its arrays declare \d+ bytes, more than the 100"):
        checkpoint.load(path)
    monkeypatch.undo()
    liar = tmp_path / "liar.npz"
    with zipfile.ZipFile(liar, "w") as z, z.open("param/w.npy", "w") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (10**12,)})
        f.write(bytes(16))
    with pytest.raises(ValueError, match=r"member 'param/w.npy' promises 4000000000000 bytes .* but holds 16"):
        checkpoint.load(liar)
