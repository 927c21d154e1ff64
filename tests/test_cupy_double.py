"""npdiff on device arrays: every end-to-end path under the strict CuPy double (``tests/strict_cupy.py``).

The double is selected through ``backend.set_backend("cupy")`` (the ``strict_cupy`` fixture), refuses
what CuPy refuses (implicit conversion to NumPy, NumPy calls on device arrays, host arrays in device math,
methods CuPy's Generator lacks) and records every device→host transfer with the line that made it. Where
the results can be compared with NumPy's (given weights, noise and timesteps: the bounds, DDIM with
η = 0, a training step's gradient) they are; elsewhere the test runs the path and checks what it gives.

The end-to-end tests take the ``device`` fixture: the double here, and also the real CuPy on a machine
with a GPU (``gpu`` mark), where the comparisons with NumPy are the float64 agreement of the two devices.

Every transfer counts, the model's own included: a training step makes none (``fit`` reads the losses
back once per check), the denoiser's forward and backward none, a sampler one (its finiteness check).
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from npdiff import Diffusion, backend, cli, data, metrics
from npdiff.processes import ddpm, likelihood, sampling
from npdiff.diffusion import OBJECTIVES as DIFFUSION_OBJECTIVES
from npdiff.training import checkpoint, train
from npdiff.processes.conditioning import Conditioned, exact_moments
from npdiff.nn.embeddings import TimestepEmbedding
from npdiff.processes.hybrid import HybridObjective
from npdiff.nn.denoiser import Denoiser
from npdiff.nn.optim import EMA, AdamW, clip_grad_norm, grad_norm
from npdiff.processes.oracles import GaussianOracle
from npdiff.processes.schedules import Schedule
from npdiff.processes.sohl_dickstein import BoundObjective, SohlDicksteinChain

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(hidden=16, n_blocks=1, emb_dim=8, layernorm=True, final_layernorm=True)


@pytest.fixture(params=["double", pytest.param("cupy", marks=pytest.mark.gpu)])
def device(request):
    """A device backend, selected with ``set_backend("cupy")``: the strict double everywhere, and the real
    CuPy where one sees a CUDA device (the ``gpu`` mark; ``benchmarks/gpu_check.py`` runs those)."""
    if request.param == "double":
        yield request.getfixturevalue("strict_cupy")
        return
    try:
        yield backend.set_backend("cupy")
    finally:
        backend.set_backend("numpy")


def is_double(xp) -> bool:
    return hasattr(xp, "TRANSFERS")


def same_weights(model):
    """A copy of ``model`` built on the current backend with the same weights (the generators differ)."""
    copy = Denoiser(**model.config)
    copy.flat_params[...] = backend.asarray(backend.to_numpy(model.flat_params))
    return copy


def heart(n=512, seed=0):
    return data.heart(n, np.random.default_rng(seed))


# ---- the double itself ------------------------------------------------------------------------------

def test_the_double_is_selected_like_cupy_and_its_arrays_are_device_arrays(strict_cupy):
    assert backend.xp is strict_cupy and backend.name == "cupy"
    x = backend.asarray(np.arange(6.0).reshape(2, 3))
    assert isinstance(x, strict_cupy.ndarray) and not isinstance(x, np.ndarray)
    assert isinstance(backend.default_rng(0), strict_cupy.Generator)
    host = backend.to_numpy(x * 2)
    assert isinstance(host, np.ndarray) and host.tolist() == [[0, 2, 4], [6, 8, 10]]
    assert strict_cupy.TRANSFERS.count == 1
    strict_cupy.DEVICE_COUNT[0] = 0
    with pytest.raises(RuntimeError, match="no CUDA device"):
        backend.set_backend("cupy")


def test_the_double_refuses_what_cupy_refuses(strict_cupy):
    xp = strict_cupy
    x = xp.asarray(np.ones(3))
    refused = {
        "np.asarray": lambda: np.asarray(x),
        "np.exp": lambda: np.exp(x),
        "np.concatenate": lambda: np.concatenate([x, x]),
        "host array on the left": lambda: np.ones(3) * x,
        "host array into xp": lambda: xp.exp(np.ones(3)),
        "host array into a device slot": lambda: x.__setitem__(slice(None), np.zeros(3)),
        "float() of many": lambda: float(x),
    }
    for what, call in refused.items():
        with pytest.raises(TypeError):
            call()
            pytest.fail(what)
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
        np.array(x)
    with pytest.raises(TypeError):
        np.savez(os.devnull, x=x)
    assert isinstance(np.float64(2.0) * x, xp.ndarray)  # a NumPy scalar on the left works, as on CuPy
    rng = xp.random.default_rng(0)
    for method in ("permutation", "choice", "shuffle", "normal"):
        assert not hasattr(rng, method), method  # cupy.random.Generator has none of these
    assert rng.standard_normal((2,), dtype=np.float32).dtype == np.float32
    assert not np.allclose(rng.random(4).get(), np.random.default_rng(0).random(4))  # another stream
    with pytest.raises(ValueError, match="stable"):
        xp.argsort(x, kind="quicksort")
    with pytest.raises(TypeError):
        xp.unique(x, sorted=True)


def test_every_read_back_is_counted_with_its_kind_and_line(strict_cupy):
    xp, log = strict_cupy, strict_cupy.TRANSFERS
    x = xp.asarray(np.array([1.0, -2.0, 3.0]))
    float(x.sum()), int(x.argmax()), bool(x.all()), x[0].item(), f"{x.max():.2f}", x.get()
    kinds = [kind for kind, _ in log.events]
    assert kinds == ["scalar"] * 5 + ["get"]
    assert all(site.startswith("tests/test_cupy_double.py:") for _, site in log.events)
    log.reset()
    x[x > 0], xp.flatnonzero(x), xp.unique(x), xp.bincount(xp.asarray(np.array([0, 2])))
    assert [kind for kind, _ in log.events] == ["sync"] * 4  # data-dependent shapes: CuPy syncs to size them
    assert xp.arange(3)[xp.asarray(np.array([0, 5, -1]))].get().tolist() == [0, 2, 2]  # wraps, as on CuPy


# ---- training -----------------------------------------------------------------------------------------

OBJECTIVES = {
    "epsilon": (lambda s: ddpm.EpsilonObjective(s), 1),
    "epsilon-v-minsnr": (lambda s: ddpm.EpsilonObjective(s, "v", min_snr_gamma=5.0), 1),
    "hybrid": (lambda s: HybridObjective(s), 2),
    "sohl_dickstein": (lambda s: BoundObjective(s), 2),
}


@pytest.mark.parametrize("name", OBJECTIVES)
def test_a_training_step_gives_numpys_loss_and_gradient_on_device(device, name):
    make, factor = OBJECTIVES[name]
    schedule = Schedule(20)
    rng = np.random.default_rng(1)
    x0, noise = rng.standard_normal((16, 2)), rng.standard_normal((16, 2))
    t = rng.integers(2, 21, size=16)
    backend.set_backend("numpy")
    cpu = Denoiser(2, out_dim=2 * factor, dtype="float64", **SMALL)
    loss_cpu = make(schedule).loss_and_backward(cpu, x0, t=t, noise=noise)
    backend.set_backend("cupy")
    gpu = same_weights(cpu)
    if is_double(device):
        device.TRANSFERS.reset()
    loss_gpu = make(schedule).loss_and_backward(gpu, x0, t=t, noise=noise)
    assert isinstance(loss_gpu, device.ndarray) and loss_gpu.shape == ()  # the loss stays on the device
    if is_double(device):
        assert device.TRANSFERS.count == 0, device.TRANSFERS.sites()
    assert float(loss_gpu) == pytest.approx(float(loss_cpu), rel=1e-12)
    np.testing.assert_allclose(backend.to_numpy(gpu.flat_grads), cpu.flat_grads, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("name", DIFFUSION_OBJECTIVES)
def test_fit_trains_each_objective_on_device_reading_losses_back_once_per_check(device, name):
    x = heart()
    if name == "sohl_dickstein":
        x = data.standardize(x)[0]
    diffusion = Diffusion(2, name, T=20, **SMALL)
    before = backend.to_numpy(diffusion.model.flat_params)
    if is_double(device):
        device.TRANSFERS.reset()
    history = diffusion.fit(x, steps=60, batch_size=64, lr=1e-2, ema=0.9, check_every=20, progress=False)
    if is_double(device):
        assert device.TRANSFERS.count == 3, device.TRANSFERS.sites()  # 60 steps, one read every 20
    assert len(history.loss) == len(history.grad_norm) == 60 and np.isfinite(history.loss).all()
    assert isinstance(diffusion.model.flat_params, device.ndarray)
    assert not np.array_equal(backend.to_numpy(diffusion.model.flat_params), before)
    if name != "sohl_dickstein":  # its Monte-Carlo −K̂ is too noisy to compare over 20 steps
        assert np.mean(history.loss[-20:]) < np.mean(history.loss[:20])  # it learns


@pytest.mark.parametrize("check_every", [1, 7, 30])
def test_fit_reads_back_at_its_checks_only_and_nothing_in_between(strict_cupy, check_every):
    diffusion = Diffusion(2, "epsilon", T=20, **SMALL)
    strict_cupy.TRANSFERS.reset()
    diffusion.fit(heart(), steps=30, batch_size=64, clip=1.0, ema=0.9, check_every=check_every, progress=False)
    sites = strict_cupy.TRANSFERS.sites()
    assert strict_cupy.TRANSFERS.count == -(-30 // check_every), sites  # one read per check: 0 per step between
    assert len(sites) == 1 and next(iter(sites)).startswith("npdiff/training/train.py:"), sites  # all at the check


def test_labelled_training_and_guided_sampling_run_on_device_without_per_step_reads(device):
    """Class labels: fit reads back only at its checks; a guided chain (ancestral and DDIM) once per chain."""
    x, y = heart(), np.arange(512) % 3
    diffusion = Diffusion(2, "epsilon", T=20, prediction="x0", num_classes=3, **SMALL)
    if is_double(device):
        device.TRANSFERS.reset()
    diffusion.fit(x, steps=30, labels=y, batch_size=64, ema=0.9, check_every=10, progress=False)
    if is_double(device):
        assert device.TRANSFERS.count == 3, device.TRANSFERS.sites()  # the labels were checked on the host
    labels = backend.asarray(np.arange(16) % 3)
    for sampler, kw in (("ancestral", {}), ("ddim", {"ddim_steps": 5})):
        chain = diffusion.chain(labels=labels, guidance=1.5)
        if is_double(device):
            device.TRANSFERS.reset()
        out = sampling.sample(chain, 16, backend.default_rng(0), sampler=sampler, **kw)
        if is_double(device):
            assert device.TRANSFERS.count == 1, device.TRANSFERS.sites()  # the finiteness check, not one per step
        assert isinstance(out, device.ndarray) and np.isfinite(backend.to_numpy(out)).all()
    samples = diffusion.sample(16, labels="balanced", guidance=1.0, sampler="ddim", ddim_steps=5)
    assert isinstance(samples, np.ndarray) and samples.shape == (16, 2)


def test_the_denoiser_forward_and_backward_make_no_host_transfer(strict_cupy):
    model = Denoiser(2, **SMALL)
    t = backend.default_rng(0).integers(1, 20, size=8)
    strict_cupy.TRANSFERS.reset()
    y = model.forward(backend.asarray(np.ones((8, 2)), "float32"), t)
    model.backward(y, input_grad=False)
    assert strict_cupy.TRANSFERS.count == 0, strict_cupy.TRANSFERS.sites()


def test_a_large_batch_of_few_timesteps_goes_per_row_on_the_device_with_numpys_numbers(strict_cupy):
    n = 2 * Denoiser(2, **SMALL).inp.layers[0].GROUP_MIN_ROWS  # on NumPy: the per-timestep route
    rng = np.random.default_rng(0)
    x_t, t, dy = rng.standard_normal((n, 2)), rng.integers(1, 4, size=n), rng.standard_normal((n, 2))
    backend.set_backend("numpy")
    cpu = Denoiser(2, dtype="float64", **SMALL)
    assert cpu.inp.layers[0].timestep_groups(t) is not None
    y_cpu = cpu.forward(x_t, t)
    cpu.backward(dy, input_grad=False)
    backend.set_backend("cupy")
    gpu = same_weights(cpu)
    x_t, t, dy = backend.asarray(x_t), backend.asarray(t), backend.asarray(dy)
    strict_cupy.TRANSFERS.reset()
    assert gpu.inp.layers[0].timestep_groups(t) is None  # counting the distinct t would read them back
    y_gpu = gpu.forward(x_t, t)
    gpu.backward(dy, input_grad=False)
    assert strict_cupy.TRANSFERS.count == 0, strict_cupy.TRANSFERS.sites()
    np.testing.assert_allclose(backend.to_numpy(y_gpu), y_cpu, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(backend.to_numpy(gpu.flat_grads), cpu.flat_grads, rtol=1e-10, atol=1e-13)
    assert gpu.inp.layers[0].timestep_groups(t, per_timestep=True) is not None  # forced: allowed, and it syncs
    assert strict_cupy.TRANSFERS.count > 0


def test_the_timestep_embedding_on_the_device_is_numpys_table_to_the_bit(strict_cupy):
    t = np.array([0, 7, 3, 7, 199, 1])
    backend.set_backend("numpy")
    table = TimestepEmbedding(16, 0.5).forward(t)
    backend.set_backend("cupy")
    device = TimestepEmbedding(16, 0.5)
    wide = backend.asarray(np.full((6, 20), 7.0, dtype=np.float32))
    device.forward(backend.asarray(t), out=wide[:, 2:18])
    assert strict_cupy.TRANSFERS.count == 0, strict_cupy.TRANSFERS.sites()
    np.testing.assert_array_equal(backend.to_numpy(wide[:, 2:18]), table)
    assert (backend.to_numpy(wide[:, :2]) == 7).all() and (backend.to_numpy(wide[:, 18:]) == 7).all()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gradient_clipping_in_optim_decides_on_the_device_with_the_host_rules_numbers(strict_cupy, dtype):
    g = np.random.default_rng(0).standard_normal(1000).astype(dtype) * 10
    host = g.copy()
    backend.set_backend("numpy")
    host_norm = clip_grad_norm(host, 1.0)
    backend.set_backend("cupy")
    device = backend.asarray(g)
    strict_cupy.TRANSFERS.reset()
    norm = clip_grad_norm(device, 1.0)  # ‖g‖ by grad_norm, compared and applied on the device
    assert isinstance(norm, strict_cupy.ndarray) and isinstance(grad_norm(device), strict_cupy.ndarray)
    small = backend.asarray(g / 1e4)
    clip_grad_norm(small, 1.0, 0.5)  # a host norm, decided on the host: no transfer either
    assert strict_cupy.TRANSFERS.count == 0, strict_cupy.TRANSFERS.sites()
    np.testing.assert_array_equal(backend.to_numpy(device), host)
    assert float(norm) == host_norm
    np.testing.assert_array_equal(backend.to_numpy(small), g / 1e4)  # below max_norm: untouched


def test_a_nan_on_device_stops_fit_at_its_step_with_the_last_checks_weights(device):
    class NanAt(ddpm.EpsilonObjective):
        calls = 0

        def loss_and_backward(self, model, x0, rng=None, **kwargs):
            NanAt.calls += 1
            loss = super().loss_and_backward(model, x0, rng, **kwargs)
            return loss * math.nan if NanAt.calls == 14 else loss

    model = Denoiser(2, **SMALL)
    weights = []

    class Spy(AdamW):
        def step(self, lr=None, **fused):  # fused: the clipping factor and the EMA of ``loop.update``
            weights.append(backend.to_numpy(self.params).copy())
            super().step(lr, **fused)

    with pytest.raises(train.NonFiniteLossError, match="non-finite loss at step 13 .*those of step 10"):
        train.fit(model, heart(), NanAt(Schedule(20)), steps=30, batch_size=32, optimizer=Spy(model, lr=1e-2),
                  rng=backend.default_rng(0), check_every=5, progress=False)
    np.testing.assert_array_equal(backend.to_numpy(model.flat_params), weights[10])  # before steps 10..14


# ---- sampling and bounds ------------------------------------------------------------------------------

def test_every_sampler_and_chain_runs_on_device_checking_finiteness_once(device):
    schedule = Schedule(20)
    eps_model, two_model = Denoiser(2, **SMALL), Denoiser(2, out_dim=4, **SMALL)
    chains = [ddpm.EpsilonChain(eps_model, schedule, v) for v in ("fixed_small", "fixed_large")]
    chains += [ddpm.EpsilonChain(two_model, schedule, "learned_range"),
               ddpm.EpsilonChain(eps_model, schedule, clip_x0=(-2.0, 2.0)), SohlDicksteinChain(two_model, schedule),
               Conditioned(GaussianOracle(schedule, 1.0, 2), given=[0.5, np.nan])]
    rng = backend.default_rng(0)
    for chain in chains:
        if is_double(device):
            device.TRANSFERS.reset()
        x = sampling.sample(chain, 16, rng)
        assert isinstance(x, device.ndarray) and x.shape == (16, 2)
        if is_double(device):
            assert device.TRANSFERS.count == 1, (type(chain).__name__, device.TRANSFERS.sites())  # finiteness
        assert np.isfinite(backend.to_numpy(x)).all()
    for eta in (0.0, 1.0):
        x = sampling.sample(chains[0], 16, rng, sampler="ddim", ddim_steps=5, eta=eta)
        assert np.isfinite(backend.to_numpy(x)).all()
    x, ts, xs = sampling.sample(chains[0], 16, rng, record=True)
    assert isinstance(xs, np.ndarray) and xs.shape == (21, 16, 2) and ts.tolist() == list(range(20, -1, -1))


def test_timesteps_from_the_host_are_checked_then_moved_to_the_device(device):
    schedule = Schedule(10)
    chain = ddpm.EpsilonChain(Denoiser(2, dtype="float64", **SMALL), schedule, max_gain=None)
    x_t = backend.asarray(np.zeros((3, 2)))
    mean, log_var = chain.kernel(x_t, np.full(3, 5))  # host t, as conditioning.exact_moments passes it
    assert isinstance(mean, device.ndarray) and mean.shape == log_var.shape == (3, 2)
    with pytest.raises(ValueError, match="timesteps must lie in 0..10"):  # CuPy itself would wrap 11 to 0
        chain.kernel(x_t, np.full(3, 11))
    for t in (np.array([5, -1, 3]), np.array([-2, 4, 4], dtype=np.int32)):  # and a negative t from the end
        with pytest.raises(ValueError, match=f"timesteps must lie in 0..10; got min {t.min()}, max {t.max()}$"):
            chain.kernel(x_t, t)
    assert exact_moments(chain)[1].shape == (2, 2)


def test_ddim_with_eta_0_gives_numpys_samples_from_the_same_start(device):
    schedule = Schedule(20)
    x_T = np.random.default_rng(3).standard_normal((32, 2))
    backend.set_backend("numpy")
    cpu = Denoiser(2, dtype="float64", **SMALL)
    expected = sampling.sample(ddpm.EpsilonChain(cpu, schedule), 0, None, sampler="ddim", ddim_steps=7, x_T=x_T)
    backend.set_backend("cupy")
    got = sampling.sample(ddpm.EpsilonChain(same_weights(cpu), schedule), 0, None, sampler="ddim", ddim_steps=7,
                          x_T=x_T)
    np.testing.assert_allclose(backend.to_numpy(got), expected, rtol=1e-10, atol=1e-12)


def test_the_bounds_give_numpys_values_on_device(device):
    schedule = Schedule(20)
    z = data.standardize(heart(64, seed=2))[0]
    p = np.linspace(1.0, 2.0, 20)

    def bounds(eps_model, sd_model):
        eps, sd = ddpm.EpsilonChain(eps_model, schedule), SohlDicksteinChain(sd_model, schedule)
        return [likelihood.exact_bound(eps, z[:8], np.random.default_rng(0)).values,
                likelihood.mc_bound(eps, z, np.random.default_rng(0), n_t=2).values,
                likelihood.mc_bound(eps, z, np.random.default_rng(0), t_probs=p / p.sum()).values,
                likelihood.eq14_bound(sd, z, np.random.default_rng(0)).values,
                likelihood.eq14_bound(sd, z[:8], np.random.default_rng(0), exact=True).values]

    backend.set_backend("numpy")
    cpu_eps, cpu_sd = Denoiser(2, dtype="float64", **SMALL), Denoiser(2, out_dim=4, dtype="float64", **SMALL)
    expected = bounds(cpu_eps, cpu_sd)
    backend.set_backend("cupy")
    for got, want in zip(bounds(same_weights(cpu_eps), same_weights(cpu_sd)), expected):
        np.testing.assert_allclose(got, want, rtol=1e-10)


# ---- checkpoints, the bundle, the demo, the command line ----------------------------------------------

def test_resuming_on_device_is_bit_exact_and_the_generator_state_is_kept(device, tmp_path):
    x, schedule = heart(), Schedule(20)

    def run(steps, path=None, resume=False):
        model = Denoiser(2, **SMALL)
        history = train.fit(model, x, ddpm.EpsilonObjective(schedule), steps=steps, batch_size=64,
                            optimizer=AdamW(model, lr=1e-2), ema=EMA(model, 0.9), rng=backend.default_rng(0),
                            checkpoint_path=path, resume=resume, check_every=4, progress=False)
        return backend.to_numpy(model.flat_params), history

    whole, whole_history = run(16)
    run(10, tmp_path / "run.npz")
    resumed, history = run(16, tmp_path / "run.npz", resume=True)
    np.testing.assert_array_equal(resumed, whole)
    assert history.loss == whole_history.loss
    stored = checkpoint.load(tmp_path / "run.npz")
    assert stored.info["rng_state"]["bit_generator"] == "XORWOW" and "rng/device_state" in stored.arrays
    backend.set_backend("numpy")  # the weights load anywhere; the device generator's state does not
    model = Denoiser(2, **SMALL)
    stored.restore(model)
    with pytest.raises(ValueError, match="XORWOW generator; this run's generator is a PCG64"):
        stored.restore(model, rng=np.random.default_rng(0))


def test_the_diffusion_bundle_fits_samples_bounds_saves_and_loads_on_device(device, tmp_path):
    diffusion = Diffusion(2, "epsilon", T=20, **SMALL)
    diffusion.fit(heart(), steps=20, batch_size=64, ema=0.9, progress=False)
    samples = diffusion.sample(64, seed=1)
    assert isinstance(samples, np.ndarray) and samples.shape == (64, 2) and np.isfinite(samples).all()
    bound = diffusion.bound(heart(32, seed=3))
    assert np.isfinite(bound.nats)
    diffusion.save(tmp_path / "d.npz")
    loaded = Diffusion.load(tmp_path / "d.npz")
    assert isinstance(loaded.model.flat_params, device.ndarray)
    np.testing.assert_array_equal(loaded.sample(64, seed=1), samples)
    assert loaded.bound(heart(32, seed=3)).nats == pytest.approx(bound.nats, rel=1e-12)


def test_the_heart_demo_quick_draws_a_heart_on_device(device, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "demos"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    sys.modules.pop("heart", None)
    import heart as demo

    result = demo.main(["--quick", "--out", str(tmp_path / "heart")])
    assert result["chamfer"] < 0.03  # the NumPy run's bar (test_demo_heart.py)
    assert (tmp_path / "heart" / "heart.gif").stat().st_size > 0
    assert metrics.chamfer(np.load(tmp_path / "heart" / "samples.npy"), data.heart_curve(20_000)) == result["chamfer"]


@pytest.mark.parametrize("objective", ["epsilon", "sohl_dickstein"])
def test_the_command_line_trains_samples_and_evaluates_on_device(device, tmp_path, capsys, objective):
    ckpt, out = str(tmp_path / "m.npz"), str(tmp_path / "s.npy")
    tiny = ["--T", "20", "--hidden", "16", "--n-blocks", "1", "--emb-dim", "8", "--n", "256"]
    assert cli.main(["train", "heart", "--out", ckpt, "--steps", "30", "--objective", objective, *tiny]) == 0
    assert cli.main(["sample", ckpt, "--n", "64", "--out", out]) == 0
    assert np.load(out).shape == (64, 2) and np.isfinite(np.load(out)).all()
    assert cli.main(["eval", ckpt, "heart", "--n", "64"]) == 0
    assert cli.main(["train", "heart", "--out", ckpt, "--steps", "40", "--resume", *tiny,
                     "--objective", objective]) == 0
    assert "K = " in capsys.readouterr().out
    assert checkpoint.load(ckpt).step == 40


# ---- the prepared GPU check ---------------------------------------------------------------------------

def _gpu_check(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    monkeypatch.setitem(sys.modules, "cupy", sys.modules.get("cupy"))  # whatever the check installs is undone
    sys.modules.pop("gpu_check", None)
    import gpu_check

    return gpu_check


def test_the_gpu_check_fails_loudly_without_a_gpu(tmp_path, monkeypatch, capsys):
    gpu_check = _gpu_check(monkeypatch)
    monkeypatch.setitem(sys.modules, "cupy", None)  # CuPy not installed
    try:
        assert gpu_check.main(["--out", str(tmp_path)]) == 2
    finally:
        backend.set_backend("numpy")
    assert "no GPU to check" in capsys.readouterr().err
    assert "not installed" in (tmp_path / "gpu_check.md").read_text()


def test_the_gpu_check_rehearses_on_the_double(tmp_path, monkeypatch):
    gpu_check = _gpu_check(monkeypatch)
    try:
        status = gpu_check.main(["--out", str(tmp_path), "--double", "--quick", "--parts", "agreement,mnist"])
    finally:
        backend.set_backend("numpy")
    results = __import__("json").loads((tmp_path / "gpu_check.json").read_text())
    assert status == 0, results
    assert results["agreement"]["ok"] and set(results["agreement"]["steps"]) == {
        "seed-heart float64", "seed-heart float32", "tiny-diffusion float64", "tiny-diffusion float32"}
    mnist = results["mnist"]
    assert mnist["steps_per_s"] > 0 and mnist["projected_s"] == pytest.approx(200 * 468 / mnist["steps_per_s"])
    assert "Rehearsal on a CPU" in (tmp_path / "gpu_check.md").read_text()
