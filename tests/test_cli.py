"""The command line end to end: data coordinates, every objective, .npy/.csv outputs, chunks, resume, signals.

The error cases (one line, exit status, nothing changed) are walked in ``test_cli_errors.py``.
"""

from __future__ import annotations

import os
import resource
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from npdiff import cli
from npdiff.diffusion import CHAINLESS, OBJECTIVES
from npdiff.processes.conditioning import METHODS
from npdiff.processes.predictions import PREDICTIONS
from npdiff.training import checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--hidden", "8", "--n-blocks", "1", "--emb-dim", "8", "--coord-scale", "1"]


@pytest.fixture()
def points_csv(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal([10.0, -5.0], [4.0, 2.0], size=(400, 2))  # far from standardised on purpose
    path = tmp_path / "points.csv"
    np.savetxt(path, x, delimiter=",", header="a,b", comments="")
    return path, x


# ε-models sample with the plain ancestral step, which the β_T ≈ 1 of a short Sohl-Dickstein schedule
# would amplify 30-fold; the learned chain is made for that schedule.
SCHEDULE = {"epsilon": ["--T", "200", "--schedule", "linear"], "hybrid": ["--T", "200", "--schedule", "linear"],
            "sohl_dickstein": ["--T", "20", "--schedule", "sohl_dickstein"]}


def _train(tmp_path, csv, objective):
    ckpt = tmp_path / f"{objective}.npz"
    rc = cli.main(["train", str(csv), "--out", str(ckpt), "--objective", objective, *SCHEDULE[objective],
                   "--steps", "1500", "--batch-size", "64", "--hidden", "32", "--n-blocks", "1", "--emb-dim", "16",
                   "--coord-scale", "1", "--lr", "3e-3"])
    assert rc == 0
    return ckpt


@pytest.mark.parametrize("objective", [o for o in OBJECTIVES if o not in CHAINLESS])  # flow: no bound
def test_train_sample_eval_round_trip_in_data_coordinates(tmp_path, points_csv, capsys, objective):
    csv, x = points_csv
    ckpt = _train(tmp_path, csv, objective)
    meta = checkpoint.load(ckpt).info["meta"]
    np.testing.assert_allclose(meta["data_mean"], x.mean(axis=0))
    np.testing.assert_allclose(meta["data_std"], x.std(axis=0))
    assert meta["objective"] == objective

    out = tmp_path / "samples.npy"
    assert cli.main(["sample", str(ckpt), "--out", str(out), "--n", "500", "--chunk", "200"]) == 0
    samples = np.load(out)
    assert samples.shape == (500, 2)
    # samples come back in the data's coordinates: mean and spread close to the data's
    np.testing.assert_allclose(samples.mean(axis=0), x.mean(axis=0), atol=0.6)
    np.testing.assert_allclose(samples.std(axis=0), x.std(axis=0), rtol=0.35)

    capsys.readouterr()
    assert cli.main(["eval", str(ckpt), str(csv), "--exact", "--chunk", "2000"]) == 0
    text = capsys.readouterr().out
    value = float(text.split("log-likelihood bound ")[1].split(" ")[0])
    # the data are Gaussian with entropy ½Σ log(2πe σ²) = 2.838 + log(4·2) nats; a bound sits below −H
    entropy = float(np.sum(0.5 * np.log(2 * np.pi * np.e * x.var(axis=0))))
    # Σ log std = log 8 = 2.08 nats separates data from standardised coordinates, so a missing or
    # wrongly signed log-det lands above −H; the ε-models' bounds are looser (their t = 1 decoder is sharp)
    slack = {"epsilon": 2.5, "hybrid": 2.5, "sohl_dickstein": 1.0}[objective]
    assert -entropy - slack < value < -entropy + 0.1


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("small")
    path = folder / "m.npz"
    assert cli.main(["train", "8gaussians", "--out", str(path), "--T", "50", "--steps", "200", *TINY]) == 0
    return path


def test_npy_and_csv_outputs_hold_the_same_numbers_and_are_named_as_asked(tmp_path, small_model):
    for name in ("s.npy", "s.csv"):
        assert cli.main(["sample", str(small_model), "--out", str(tmp_path / name), "--n", "300",
                         "--chunk", "64", "--seed", "3"]) == 0
    assert sorted(os.listdir(tmp_path)) == ["s.csv", "s.npy"]  # no s.csv.npy
    from npdiff.data import load_points
    np.testing.assert_array_equal(load_points(tmp_path / "s.csv"), np.load(tmp_path / "s.npy"))


def test_a_single_chunk_draws_what_the_library_sampler_draws(tmp_path, small_model):
    from npdiff import backend
    from npdiff.processes import sampling
    from npdiff.processes.ddpm import EpsilonChain

    assert cli.main(["sample", str(small_model), "--out", str(tmp_path / "one.npy"), "--n", "50"]) == 0
    model, schedule = checkpoint.load_model(small_model)
    meta = checkpoint.load(small_model).info["meta"]
    z = backend.to_numpy(sampling.sample(EpsilonChain(model, schedule), 50, backend.default_rng(0)))
    np.testing.assert_allclose(np.load(tmp_path / "one.npy"), z * meta["data_std"] + np.array(meta["data_mean"]),
                               rtol=1e-12)


def test_eval_streams_chunks_into_one_mean_and_standard_error(tmp_path, small_model, capsys):
    def bound(*extra):
        capsys.readouterr()
        assert cli.main(["eval", str(small_model), "8gaussians", "--n", "600", *extra]) == 0
        line = capsys.readouterr().out.splitlines()[0]
        return float(line.split("K = ")[1].split(" ")[0]), float(line.split(" ± ")[1].split(" ")[0])

    whole, se = bound("--chunk", "100000")
    chunked, se_chunked = bound("--chunk", "40")  # 10 points (40 rows of 4 draws of t) per chunk
    assert abs(whole - chunked) < 4 * se and 0.7 < se_chunked / se < 1.4


def test_resume_reports_the_steps_it_ran_and_force_replaces(tmp_path, capsys):
    path = str(tmp_path / "m.npz")
    base = ["train", "moons", "--out", path, "--T", "50", *TINY, "--checkpoint-every", "20"]
    assert cli.main([*base, "--steps", "60"]) == 0
    assert "trained 60 steps (steps 1–60)" in capsys.readouterr().out
    assert cli.main([*base, "--steps", "100", "--resume"]) == 0
    out = capsys.readouterr().out
    assert "resuming" in out and "trained 40 steps (steps 61–100)" in out
    assert checkpoint.load(path).step == 100
    assert cli.main([*base, "--steps", "100", "--resume"]) == 0
    assert "nothing to train" in capsys.readouterr().out
    assert cli.main([*base, "--steps", "30", "--force"]) == 0
    assert checkpoint.load(path).step == 30


def _env():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    env.pop("NPDIFF_BACKEND", None)
    return env


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_train_saves_the_step_and_the_printed_command_resumes_exactly(tmp_path, signum):
    args = ["8gaussians", "--T", "50", *TINY, "--steps", "3000", "--checkpoint-every", "200", "--batch-size", "32"]
    full = str(tmp_path / "full.npz")
    assert cli.main(["train", *args, "--out", full]) == 0
    path = tmp_path / "run.npz"
    proc = subprocess.Popen([sys.executable, "-m", "npdiff", "train", *args, "--out", str(path)], cwd=tmp_path,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("training finished before the signal arrived")
    assert proc.returncode == 128 + signum, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    step = checkpoint.load(path).step
    assert f"after step {step} of 3000; checkpoint of step {step} written" in err
    command = shlex.split(err.split("continue with: ")[1])
    assert command[:2] == ["npdiff", "train"] and command[-1] == "--resume"
    resumed = subprocess.run([sys.executable, "-m", "npdiff", *command[1:]], cwd=tmp_path, env=_env(),
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert f"trained {3000 - step} steps (steps {step + 1}–3000)" in resumed.stdout
    a, b = checkpoint.load(full), checkpoint.load(path)
    for key in a.arrays:
        if key.startswith(("param/", "optimizer/", "history/")):
            np.testing.assert_array_equal(a.arrays[key], b.arrays[key], err_msg=key)


def test_a_file_size_limit_is_checked_before_sampling_and_keeps_the_previous_samples(tmp_path, small_model):
    """A real file-size limit (ulimit -f) below the samples' size is refused before any sample is drawn, with
    status 2; the previous file stays (its replacement was asked for with --force)."""
    out = tmp_path / "s.npy"
    assert cli.main(["sample", str(small_model), "--out", str(out), "--n", "100"]) == 0
    good = out.read_bytes()

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG from write() instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    failed = subprocess.run([sys.executable, "-m", "npdiff", "sample", str(small_model), "--out", str(out),
                             "--n", "5000", "--chunk", "500", "--force"], env=_env(), capture_output=True, text=True,
                            preexec_fn=limit, timeout=120)
    assert failed.returncode == 2, failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1 and "Traceback" not in failed.stderr
    assert "allowed by the file-size limit (ulimit -f)" in failed.stderr and "sampled" not in failed.stderr
    assert out.read_bytes() == good and os.listdir(tmp_path) == ["s.npy"]


def test_python_m_npdiff_help_and_a_bad_flag(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "npdiff", "sample", "--help"], env=_env(), capture_output=True,
                        text=True, timeout=60)
    assert ok.returncode == 0 and "--chunk" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "npdiff", "sample", "m.npz", "--out", "s.npy", "--n", "lots"],
                         env=_env(), capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "argument --n: expected an integer, got 'lots'" in bad.stderr


def test_sample_and_eval_ask_the_library_for_at_most_a_chunk_and_see_every_point_once(tmp_path, small_model,
                                                                                     monkeypatch):
    from npdiff import data
    from npdiff.cli import sample as cli_sample

    seen = {"draw": [], "bound": []}
    draw, bound = cli_sample._draw_chunk, cli_sample._bound_chunk
    monkeypatch.setattr(cli_sample, "_draw_chunk", lambda *a: seen["draw"].append(a[-2]) or draw(*a))
    monkeypatch.setattr(cli_sample, "_bound_chunk", lambda *a: seen["bound"].append(a[-3]) or bound(*a))
    assert cli.main(["sample", str(small_model), "--out", str(tmp_path / "s.npy"), "--n", "1000", "--chunk", "64"]) == 0
    assert seen["draw"] == [64] * 15 + [40]
    assert cli.main(["eval", str(small_model), "moons", "--n", "50", "--n-t", "4", "--chunk", "12"]) == 0
    assert [len(z) for z in seen["bound"]] == [3] * 16 + [2]  # 12 rows = 3 points × 4 draws of t
    meta = checkpoint.load(small_model).info["meta"]
    held_out = data.make("moons", 50, np.random.default_rng(1))  # drawn whole, not 3 points at a time
    np.testing.assert_allclose(np.concatenate(seen["bound"]), (held_out - meta["data_mean"]) / meta["data_std"])


# ---- conditional sampling: --given FILE, --observed FILE --noise-std S (docs/conditioning.md) ----------------

EIGHT_MODES = 4.0 / 1.414 * np.stack([np.cos(np.arange(8) * np.pi / 4), np.sin(np.arange(8) * np.pi / 4)], 1)
EIGHT_VAR = (0.5 / 1.414) ** 2  # each mode's variance (data.eight_gaussians)


@pytest.fixture(scope="module")
def gaussians_model(tmp_path_factory):
    """An ε-model of 8gaussians good enough to tell a right conditional from a wrong one (~1.5 s)."""
    path = tmp_path_factory.mktemp("conditional") / "m.npz"
    assert cli.main(["train", "8gaussians", "--out", str(path), "--T", "50", "--steps", "2000", "--hidden", "32",
                     "--n-blocks", "1", "--emb-dim", "16", "--coord-scale", "1", "--lr", "3e-3"]) == 0
    return path


@pytest.mark.parametrize("method", METHODS)
def test_given_coordinates_come_back_exactly_and_the_free_ones_on_the_true_modes(tmp_path, gaussians_model, method):
    (tmp_path / "given.csv").write_text("x,y\n0.1,nan\n")  # x = 0.1 known: p(y | x) has modes at y ≈ ±2.83
    out = tmp_path / "s.npy"
    assert cli.main(["sample", str(gaussians_model), "--out", str(out), "--n", "600", "--chunk", "256",
                     "--given", str(tmp_path / "given.csv"), "--condition", method]) == 0
    x = np.load(out)
    assert (x[:, 0] == 0.1).all()  # exactly, though the chain ran in float32 standardised coordinates
    assert np.isfinite(x[:, 1]).all() and x[:, 1].std() > 1.0  # free, and on both modes
    # exact draws score 0.28; this model 0.42 (paper) / 0.46 (replace); untrained 1.49; unconditioned 1.7
    assert np.abs(np.abs(x[:, 1]) - 2.83).mean() < 0.6


def _eight_gaussians_posterior_mean(y, s: float) -> np.ndarray:
    """E[x0 | y] for y = x0 + N(0, s²) and x0 ~ 8gaussians: a mixture of the modes' Gaussian posteriors."""
    log_w = -((y - EIGHT_MODES) ** 2).sum(1) / (2 * (EIGHT_VAR + s * s))
    w = np.exp(log_w - log_w.max())
    means = (EIGHT_MODES * s * s + y * EIGHT_VAR) / (EIGHT_VAR + s * s)
    return (w[:, None] * means).sum(0) / w.sum()


def test_an_observation_gives_samples_around_the_exact_posterior_mean(tmp_path, gaussians_model):
    np.save(tmp_path / "y.npy", np.array([1.0, 1.0]))  # between the origin and the mode at (2, 2)
    means = {}
    for method in METHODS:
        out = tmp_path / f"{method}.npy"
        assert cli.main(["sample", str(gaussians_model), "--out", str(out), "--n", "1000", "--observed",
                         str(tmp_path / "y.npy"), "--noise-std", "0.5", "--condition", method]) == 0
        means[method] = np.load(out).mean(0)
    exact = _eight_gaussians_posterior_mean(np.array([1.0, 1.0]), 0.5)  # (1.64, 1.64)
    for method, mean in means.items():  # paper 0.13, replace 0.18 away; untrained 0.86
        assert np.linalg.norm(mean - exact) < 0.35, (method, mean, exact)
    assert not np.allclose(means["paper"], means["replace"])  # --condition reaches the chain


def test_a_per_sample_condition_is_sliced_across_chunks_as_the_library_samples_it(tmp_path, gaussians_model):
    from npdiff import backend
    from npdiff.processes.conditioning import Conditioned
    from npdiff.processes.ddpm import EpsilonChain

    given = np.full((10, 2), np.nan)
    given[::2, 0] = np.linspace(-2, 2, 5)  # even rows know x, odd rows know y, every row another value
    given[1::2, 1] = np.linspace(-1, 1, 5)
    np.save(tmp_path / "given.npy", given)
    np.savetxt(tmp_path / "y.csv", [[0.5, -0.5]], delimiter=",")  # one observation for every sample
    out = tmp_path / "s.csv"
    assert cli.main(["sample", str(gaussians_model), "--out", str(out), "--n", "10", "--chunk", "4", "--seed", "7",
                     "--given", str(tmp_path / "given.npy"), "--observed", str(tmp_path / "y.csv"),
                     "--noise-std", "1.5"]) == 0
    from npdiff.data import load_points
    x = load_points(out)
    known = ~np.isnan(given)
    np.testing.assert_array_equal(x[known], given[known])
    model, schedule = checkpoint.load_model(gaussians_model)
    meta = checkpoint.load(gaussians_model).info["meta"]
    mean, std = np.array(meta["data_mean"]), np.array(meta["data_std"])
    rng, expected = backend.default_rng(7), []
    for start, size in ((0, 4), (4, 4), (8, 2)):  # one random stream through the chunks, rows sliced alike
        cond = Conditioned(EpsilonChain(model, schedule), given=(given[start:start + size] - mean) / std,
                           observed=(np.array([0.5, -0.5]) - mean) / std, noise_std=1.5 / std)
        expected.append(backend.to_numpy(cond.sample(size, rng)) * std + mean)
    np.testing.assert_allclose(x[~known], np.concatenate(expected)[~known], rtol=1e-12)


def test_a_sohl_dickstein_chain_samples_given_coordinates_too(tmp_path):
    ckpt = tmp_path / "sd.npz"
    assert cli.main(["train", "moons", "--out", str(ckpt), "--objective", "sohl_dickstein", "--schedule",
                     "sohl_dickstein", "--T", "10", *TINY, "--steps", "20"]) == 0
    np.save(tmp_path / "given.npy", np.array([np.nan, 0.25]))
    assert cli.main(["sample", str(ckpt), "--out", str(tmp_path / "s.npy"), "--n", "50",
                     "--given", str(tmp_path / "given.npy")]) == 0
    x = np.load(tmp_path / "s.npy")
    assert (x[:, 1] == 0.25).all() and np.isfinite(x[:, 0]).all() and x[:, 0].std() > 0


@pytest.mark.parametrize("prediction", [p for p in PREDICTIONS if p != "eps"])  # eps: the default
def test_prediction_flag_trains_that_target_and_sampling_follows_it(tmp_path, points_csv, capsys, prediction):
    csv, x = points_csv
    ckpt = tmp_path / "m.npz"
    base = ["train", str(csv), "--out", str(ckpt), "--T", "1000", "--batch-size", "64", "--lr", "3e-3", "--hidden",
            "32", "--n-blocks", "1", "--emb-dim", "16", "--coord-scale", "1"]
    assert cli.main([*base, "--steps", "800", "--prediction", prediction]) == 0
    assert checkpoint.load(ckpt).info["meta"]["prediction"] == prediction
    out = tmp_path / "s.npy"
    assert cli.main(["sample", str(ckpt), "--out", str(out), "--n", "1000"]) == 0
    samples = np.load(out)
    # in the data's coordinates; read as ε (the stored target ignored), x0 or v outputs would land far off.
    # A short x0 run shrinks towards the mean (its loss weights the small-t error little), hence the loose std.
    np.testing.assert_allclose(samples.mean(axis=0), x.mean(axis=0), atol=1.0)
    np.testing.assert_allclose(samples.std(axis=0), x.std(axis=0), rtol=0.5)
    capsys.readouterr()
    other = "v" if prediction == "x0" else "x0"
    assert cli.main([*base, "--steps", "900", "--resume", "--prediction", other]) == 2
    assert f"--prediction {other} (checkpoint: {prediction})" in capsys.readouterr().err
    assert cli.main(["train", str(csv), "--out", str(tmp_path / "h.npz"), "--objective", "hybrid",
                     "--prediction", prediction, "--steps", "1"]) == 2
