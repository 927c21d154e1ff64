"""The command line: train on a user's .csv, sample in data coordinates, evaluate the bound; clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from npdiff import checkpoint, cli


@pytest.fixture()
def points_csv(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal([10.0, -5.0], [4.0, 2.0], size=(400, 2))  # far from standardised on purpose
    path = tmp_path / "points.csv"
    np.savetxt(path, x, delimiter=",", header="a,b", comments="")
    return path, x


# ε-models sample with the plain ancestral step, which the β_T ≈ 1 of a short Sohl-Dickstein schedule
# would amplify 30-fold; the learned chain is made for that schedule.
SCHEDULE = {"epsilon": ["--T", "200", "--schedule", "linear"],
            "sohl_dickstein": ["--T", "20", "--schedule", "sohl_dickstein"]}


def _train(tmp_path, csv, objective):
    ckpt = tmp_path / f"{objective}.npz"
    rc = cli.main(["train", str(csv), "--out", str(ckpt), "--objective", objective, *SCHEDULE[objective],
                   "--steps", "1500", "--batch-size", "64", "--width", "32", "--blocks", "1", "--emb", "16",
                   "--coord-scale", "1", "--lr", "3e-3"])
    assert rc == 0
    return ckpt


@pytest.mark.parametrize("objective", ["epsilon", "sohl_dickstein"])
def test_train_sample_eval_round_trip_in_data_coordinates(tmp_path, points_csv, capsys, objective):
    csv, x = points_csv
    ckpt = _train(tmp_path, csv, objective)
    meta = checkpoint.load(ckpt).info["meta"]
    np.testing.assert_allclose(meta["data_mean"], x.mean(axis=0))
    np.testing.assert_allclose(meta["data_std"], x.std(axis=0))

    out = tmp_path / "samples.npy"
    assert cli.main(["sample", str(ckpt), "--out", str(out), "--n", "500"]) == 0
    samples = np.load(out)
    assert samples.shape == (500, 2)
    # samples come back in the data's coordinates: mean and spread close to the data's
    np.testing.assert_allclose(samples.mean(axis=0), x.mean(axis=0), atol=0.6)
    np.testing.assert_allclose(samples.std(axis=0), x.std(axis=0), rtol=0.35)

    capsys.readouterr()
    assert cli.main(["eval", str(ckpt), str(csv), "--exact", "--n", "400"]) == 0
    text = capsys.readouterr().out
    value = float(text.split("log-likelihood bound ")[1].split(" ")[0])
    # the data are Gaussian with entropy ½Σ log(2πe σ²) = 2.838 + log(4·2) nats; a bound sits below −H
    entropy = float(np.sum(0.5 * np.log(2 * np.pi * np.e * x.var(axis=0))))
    # Σ log std = log 8 = 2.08 nats separates data from standardised coordinates, so a missing or
    # wrongly signed log-det lands above −H; the ε-model's bound is looser (its t = 1 decoder is sharp)
    slack = {"epsilon": 2.5, "sohl_dickstein": 1.0}[objective]
    assert -entropy - slack < value < -entropy + 0.1


def test_errors_are_one_line_messages_not_tracebacks(tmp_path, capsys):
    assert cli.main(["eval", str(tmp_path / "missing.npz"), "8gaussians"]) == 1
    assert "no checkpoint at" in capsys.readouterr().err
    assert cli.main(["train", "no_such_set", "--out", str(tmp_path / "m.npz")]) == 1
    assert "neither a file nor a toy set" in capsys.readouterr().err
