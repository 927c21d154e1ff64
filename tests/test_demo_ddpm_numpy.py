"""demos/ddpm_numpy.py, the one-file DDPM, pinned to the library: in float64, with the same weights, its loss,
gradients, AdamW step and sampling steps equal npdiff's, and its configuration is the heart demo's."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

import npdiff
from npdiff import AdamW, Denoiser, EpsilonChain, EpsilonObjective, data, metrics

ROOT = Path(__file__).resolve().parents[1]
RTOL = 1e-12  # float64 round-off of a few hundred operations; a wrong formula is off by far more
FLOOR = 1e-3  # an entry's error is scaled by max(|entry|, FLOOR·max|array|): tiny entries are not judged alone
MAX_CHAMFER = 0.03  # the quick run reaches ≈ 0.014; the untrained model ≈ 1.5 (test below)


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"demo_{name}", ROOT / "demos" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


demo = load("ddpm_numpy")


def rel_error(got, want) -> float:
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape
    return float((np.abs(got - want) / np.maximum(np.abs(want), FLOOR * np.abs(want).max())).max())


@pytest.fixture()
def library():
    """npdiff's heart model rebuilt in float64 (its config read from demos/heart.py), its schedule and variance,
    and the demo's params holding the same weights."""
    heart_demo = load("heart")
    heart = heart_demo.make_diffusion(heart_demo.parse_args([]))
    model = Denoiser(**{**heart.model.config, "dtype": "float64", "seed": 7})
    params = {name: w.copy() for name, w in model.parameters().items()}
    return model, heart.schedule, heart.config["variance"], params


def test_the_demo_has_the_heart_demos_schedule_and_architecture(library):
    model, schedule, _, params = library
    assert demo.T == schedule.T and schedule.config["name"] == "linear"
    assert np.array_equal(demo.betas, schedule.betas) and rel_error(demo.alpha_bar, schedule.alpha_bar) == 0
    assert rel_error(demo.posterior_var, schedule.posterior_var) < RTOL
    init = demo.init_params(seed=7, dtype="float64")  # the same draws as Denoiser(seed=7)
    assert init.keys() == params.keys()
    assert all(np.array_equal(init[k], params[k]) for k in params)


def test_loss_and_every_gradient_equal_npdiffs(library):
    model, schedule, _, params = library
    rng = np.random.default_rng(1)
    x0 = demo.heart(rng.uniform(0, 2 * np.pi, 64))
    t = rng.integers(1, schedule.T + 1, 64)
    t[:3] = [1, 2, schedule.T]  # both ends of the chain
    noise = rng.standard_normal(x0.shape)
    model.zero_grad()
    want = float(EpsilonObjective(schedule).loss_and_backward(model, x0, t=t, noise=noise))
    loss, grads = demo.loss_and_grads(params, x0, t, noise)
    assert rel_error(loss, want) < RTOL
    expected = model.gradients()
    assert grads.keys() == expected.keys()
    errors = {k: rel_error(grads[k], expected[k]) for k in expected}
    assert max(errors.values()) < RTOL, errors


def test_two_adamw_steps_equal_npdiffs(library):
    model, _, _, params = library
    optimizer = AdamW(model, lr=2e-2)  # as demos/heart.py builds it: PyTorch's betas, eps and weight decay
    state = demo.adam_state(params)
    rng = np.random.default_rng(2)
    for _ in range(2):  # the second step differs from the first in k and in the moments' history
        grads = {k: rng.standard_normal(g.shape) * 10.0 ** rng.uniform(-3, 0) for k, g in model.gradients().items()}
        for k, g in model.gradients().items():
            g[...] = grads[k]
        optimizer.step()
        demo.adam_step(params, grads, state, lr=2e-2)
    errors = {k: rel_error(params[k], w) for k, w in model.parameters().items()}
    assert max(errors.values()) < RTOL, errors


def test_sampling_steps_and_the_whole_chain_equal_npdiffs(library):
    model, schedule, variance, params = library
    chain = EpsilonChain(model, schedule, variance)
    rng = np.random.default_rng(3)
    x_t, z = 2 * rng.standard_normal((32, 2)), rng.standard_normal((32, 2))
    for t in (schedule.T, 57, 2, 1):
        mean, log_var = chain.kernel(x_t, np.full(32, t))
        want = mean if t == 1 else mean + np.exp(0.5 * log_var) * z  # no noise at the last step
        assert rel_error(demo.sampling_step(params, x_t, t, z), want) < RTOL, t
    # Algorithm 2 whole: the same generator gives the same x_T, the same z at t = T..2 and none at t = 1
    got = demo.sample(params, 16, np.random.default_rng(4))
    assert rel_error(got, npdiff.sample(chain, 16, np.random.default_rng(4))) < RTOL


def test_the_heart_and_the_chamfer_distance_are_npdiffs():
    assert rel_error(demo.heart(np.linspace(0, 2 * np.pi, 1000, endpoint=False)), data.heart_curve(1000)) < 1e-15
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((300, 2)), rng.standard_normal((700, 2))
    assert abs(demo.chamfer(a, b) - metrics.chamfer(a, b)) < 1e-14


def test_quick_run_writes_its_figure_and_prints_its_folder_last(tmp_path, run_demo):
    out = tmp_path / "ddpm"
    run = run_demo("ddpm_numpy.py", "--quick", "--out", out, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == str(out.resolve())
    assert (out / "heart.png").stat().st_size > 10_000
    cd = float(re.search(r"Chamfer distance to the true curve: ([0-9.]+)", run.stdout).group(1))
    assert cd < MAX_CHAMFER


def test_the_untrained_model_fails_the_quick_runs_quality_bar():
    samples = demo.sample(demo.init_params(seed=0), 500, np.random.default_rng(0))
    curve = demo.heart(np.linspace(0, 2 * np.pi, 20_000, endpoint=False))
    assert demo.chamfer(samples, curve) > 3 * MAX_CHAMFER
