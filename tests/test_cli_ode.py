"""The command line's ODE samplers (``sample --sampler euler|heun|dpm++ --steps N --grid --rho --s-churn``), flow
models (``train --objective flow``) and the ODE likelihood (``eval --likelihood ode [--probes P]``)."""

from __future__ import annotations

import numpy as np
import pytest

from npdiff import Diffusion, cli
from npdiff.training import checkpoint

MODEL = ["--hidden", "32", "--n-blocks", "1", "--emb-dim", "16", "--coord-scale", "1", "--batch-size", "64",
         "--lr", "3e-3"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Gaussian points far from standardised, an ε-model and a flow model trained on them by the command line."""
    folder = tmp_path_factory.mktemp("ode_cli")
    x = np.random.default_rng(0).normal([10.0, -5.0], [4.0, 2.0], size=(400, 2))
    csv = folder / "points.csv"
    np.savetxt(csv, x, delimiter=",", header="a,b", comments="")
    paths = {}
    for objective in ("epsilon", "flow"):
        paths[objective] = folder / f"{objective}.npz"
        assert cli.main(["train", str(csv), "--out", str(paths[objective]), "--objective", objective, "--T", "200",
                         "--steps", "1500", *MODEL]) == 0
    return folder, csv, x, paths


def _sample(ckpt, out, *flags, n=500):
    assert cli.main(["sample", str(ckpt), "--out", str(out), "--n", str(n), "--force", *flags]) == 0
    return np.load(out)


def _eval(capsys, ckpt, csv, *flags):
    capsys.readouterr()
    assert cli.main(["eval", str(ckpt), str(csv), *flags]) == 0
    text = capsys.readouterr().out
    return text, float(text.split("data coordinates: log-likelihood ")[1].removeprefix("bound ").split(" ")[0])


def test_a_flow_model_trains_samples_and_reports_its_ode_likelihood_in_data_coordinates(trained, capsys):
    folder, csv, x, paths = trained
    meta = checkpoint.load(paths["flow"]).info["meta"]
    assert meta["objective"] == "flow" and meta["time_distribution"] == "uniform"
    assert Diffusion.load(paths["flow"]).config["objective"] == "flow"
    for flags in ([], ["--sampler", "heun", "--steps", "20"], ["--sampler", "dpm++", "--steps", "20", "--grid",
                                                                "karras"]):
        samples = _sample(paths["flow"], folder / "f.npy", *flags)
        np.testing.assert_allclose(samples.mean(axis=0), x.mean(axis=0), atol=0.6)
        np.testing.assert_allclose(samples.std(axis=0), x.std(axis=0), rtol=0.2)
    text, value = _eval(capsys, paths["flow"], csv, "--steps", "50")  # the ODE: a flow model's only likelihood
    assert "ODE log-likelihood (flow" in text
    entropy = float(np.sum(0.5 * np.log(2 * np.pi * np.e * x.var(axis=0))))
    # a model's expected log-likelihood lies below −H (cross-entropy ≥ entropy); a missing or wrongly signed
    # Σ log std = log 8 = 2.08 nats would land far from it
    assert -entropy - 0.3 < value < -entropy + 0.1, (value, -entropy)


def test_the_ode_likelihood_of_an_eps_model_beside_its_bound(trained, capsys):
    folder, csv, x, paths = trained
    entropy = float(np.sum(0.5 * np.log(2 * np.pi * np.e * x.var(axis=0))))
    text, ode_value = _eval(capsys, paths["epsilon"], csv, "--likelihood", "ode", "--steps", "50")
    assert "exact trace" in text
    assert -entropy - 0.3 < ode_value < -entropy + 0.1, (ode_value, -entropy)
    _, hutchinson = _eval(capsys, paths["epsilon"], csv, "--likelihood", "ode", "--steps", "50", "--probes", "4")
    assert abs(hutchinson - ode_value) < 0.1
    _, bound = _eval(capsys, paths["epsilon"], csv, "--exact")
    assert bound < ode_value  # the bound K lies below the likelihood (docs/likelihood.md says by how much)


def test_euler_is_ddim_and_every_ode_flag_changes_the_samples(trained):
    folder, _, _, paths = trained
    eps = paths["epsilon"]

    def run(*flags):
        return _sample(eps, folder / "e.npy", *flags, n=200)

    ddim = run("--sampler", "ddim", "--steps", "10")
    np.testing.assert_allclose(run("--sampler", "euler", "--steps", "10"), ddim, atol=1e-4)  # float32
    heun = run("--sampler", "heun", "--steps", "10")
    np.testing.assert_array_equal(run("--sampler", "heun", "--ddim-steps", "10"), heun)  # the older spelling
    np.testing.assert_array_equal(run("--sampler", "dpm++", "--steps", "10"), run("--sampler", "dpmpp_2m",
                                                                                   "--steps", "10"))
    for flags in (["--sampler", "heun", "--steps", "8"], ["--sampler", "heun", "--steps", "10", "--grid", "karras"],
                  ["--sampler", "heun", "--steps", "10", "--s-churn", "2"], ["--sampler", "dpm++", "--steps", "10"]):
        assert np.abs(run(*flags) - heun).max() > 1e-3, flags
    karras = run("--sampler", "heun", "--steps", "10", "--grid", "karras")
    assert np.abs(run("--sampler", "heun", "--steps", "10", "--grid", "karras", "--rho", "3") - karras).max() > 1e-3


def test_the_ode_samplers_condition_on_given_coordinates(trained):
    folder, _, _, paths = trained
    given = folder / "given.csv"
    np.savetxt(given, [[12.0, np.nan]], delimiter=",")
    for objective, sampler in (("epsilon", "heun"), ("flow", "dpm++")):
        samples = _sample(paths[objective], folder / "c.npy", "--given", str(given), "--sampler", sampler,
                          "--steps", "20", n=200)
        np.testing.assert_array_equal(samples[:, 0], 12.0)
        assert np.isfinite(samples).all() and samples[:, 1].std() > 0.5


@pytest.mark.parametrize("flags,message", [
    (["--sampler", "ancestral"], "a flow model has no reverse chain"),
    (["--sampler", "ddim"], "a flow model has no reverse chain"),
    (["--clip-x0", "2"], "a flow model samples its velocity as it is"),
    (["--variance", "fixed_large"], "a flow model has no reverse chain"),
    (["--sampler", "euler", "--grid", "karras"], "Euler on a flow model steps evenly in t"),
    (["--steps", "201"], "more than the flow model's T = 200 levels")])
def test_a_flow_model_refuses_what_it_has_not_in_one_line(trained, capsys, flags, message):
    folder, _, _, paths = trained
    capsys.readouterr()
    assert cli.main(["sample", str(paths["flow"]), "--out", str(folder / "no.npy"), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (folder / "no.npy").exists()


def test_eval_of_a_flow_model_refuses_the_bound(trained, capsys):
    _, csv, _, paths = trained
    capsys.readouterr()
    assert cli.main(["eval", str(paths["flow"]), str(csv), "--likelihood", "bound"]) == 2
    assert "no variational bound; use --likelihood ode" in capsys.readouterr().err
    assert cli.main(["eval", str(paths["flow"]), str(csv), "--exact"]) == 2
    assert "--exact is not used here" in capsys.readouterr().err
