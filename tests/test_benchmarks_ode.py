"""benchmarks/nfe.py, benchmarks/heart_objectives.py and likelihood_table.py's ODE rows run, and say something true."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

from npdiff import data
from npdiff.processes import ddpm, ode, ode_likelihood

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_sampler_makes_the_nfe_it_names():
    nfe = _load("nfe")
    assert nfe.sampler_kwargs("ancestral", 1000, 1000, "ddim") == ({"sampler": "ancestral"}, 1000)
    assert nfe.sampler_kwargs("ancestral", 20, 1000, "ddim") == ({"sampler": "ddim", "steps": 20, "eta": 1.0}, 20)
    assert nfe.sampler_kwargs("heun", 20, 1000, "karras") == ({"sampler": "heun", "steps": 10, "grid": "karras"}, 19)
    assert nfe.sampler_kwargs("dpm++", 5, 1000, "ddim")[1] == 5
    assert nfe.sampler_kwargs("ddim", 50, 1000, "ddim", flow=True)[0]["sampler"] == "euler"


def test_the_quick_nfe_sweep_writes_its_curves_and_more_steps_help(tmp_path):
    records = _load("nfe").main(["heart", "--quick", "--out", str(tmp_path)])
    assert (tmp_path / "nfe_heart.png").exists()
    assert json.loads((tmp_path / "nfe_heart.json").read_text()) == json.loads(json.dumps(records))
    assert {r["sampler"] for r in records} == {"ancestral", "ddim", "heun", "dpm++"}
    ddim = {r["nfe"]: r["chamfer"] for r in records if r["sampler"] == "ddim"}
    assert ddim[20] < ddim[5] / 2  # 20 DDIM steps trace the heart far better than 5


def test_the_quick_objective_comparison_covers_every_target_and_sampler(tmp_path):
    records = _load("heart_objectives").main(["--quick", "--out", str(tmp_path)])
    scored = [r for r in records if "chamfer" in r]
    assert {r["model"] for r in scored} == {"ε", "x̂_0", "flow"}
    assert not any(r["model"] == "flow" and r["sampler"].startswith(("ancestral", "DDIM")) for r in scored)
    assert all(np.isfinite(r["chamfer"]) for r in scored)


def test_the_likelihood_tables_ode_row_is_the_ode_likelihood_in_data_coordinates():
    lt = _load("likelihood_table")
    model, _, s = lt.build("eps", 0)
    mean, std = np.array([0.5, -1.0]), np.array([2.0, 0.7])  # Σ log std = 0.336
    nll, se, _, sigmas = lt.evaluate_ode(model, s, "8gaussians", mean, std, np.random.default_rng(0), 50, 20)
    assert np.isfinite(nll) and se > 0 and sigmas.size == 20 and sigmas[0] == s.sqrt_recipm1_alpha_bar[1]
    x = data.make("8gaussians", 50, np.random.default_rng(0))  # the same held-out draw
    denoiser = ode.ChainDenoiser(ddpm.EpsilonChain(model, s, max_gain=None))
    model_coords = ode_likelihood.ode_log_likelihood(denoiser, (x - mean) / std, sigmas)
    np.testing.assert_allclose(nll, -(model_coords.nats - np.log(std).sum()), rtol=1e-12)
