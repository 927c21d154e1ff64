"""demos/guidance.py: the quick run's guided samples land on their label, guidance raises the accuracy, an
untrained model stays near chance, the exact mixture ε is the score of the diffused mixture, bad flags: one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from npdiff import EpsilonChain, Schedule, data
from npdiff.diffusion import GUIDANCE_RANGE
from npdiff.processes import sampling

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "demos"))
import guidance  # noqa: E402


def test_quick_demo_guides_samples_onto_their_label(tmp_path, run_demo):
    out = tmp_path / "guid"
    run = run_demo("guidance.py", "--quick", "--out", out)
    assert run.returncode == 0, run.stderr
    results = json.loads((out / "results.json").read_text())
    model, exact = results["figures"]["model"], results["figures"]["exact"]
    data_accuracy = results["data"]["labelled"]["accuracy"]
    assert 0.85 < data_accuracy < 0.92  # std 0.7: the components overlap
    assert model["0"]["accuracy"] > guidance.THRESHOLDS["accuracy_w0"], model["0"]  # chance is 1/8
    assert model["1"]["accuracy"] > guidance.THRESHOLDS["accuracy_w1"], model["1"]
    assert model["1"]["accuracy"] > model["0"]["accuracy"] + 0.03  # guidance sharpens past the data's own labels
    assert model["none"]["accuracy"] is None and 0.7 < model["none"]["radius"] < 1.3
    # the exact ε at w = 0 samples the true conditionals: the data's accuracy within ~3 standard errors
    assert abs(exact["0"]["accuracy"] - data_accuracy) < 3 * np.sqrt(0.12 * 0.88 / results["n"]) + 0.01
    assert results["figures"]["model DDIM"]["1"]["accuracy"] > guidance.THRESHOLDS["accuracy_w1"]
    assert "| 1 | 2 | " in run.stdout and "| labels=None | — |" in run.stdout  # the printed table
    assert (out / "table.md").read_text() in run.stdout
    assert (out / "guidance.png").stat().st_size > 30_000 and (out / "guidance_sweep.png").stat().st_size > 30_000
    assert run.stdout.strip().splitlines()[-1] == str(out.resolve())


def test_an_untrained_model_stays_near_chance_guided_or_not():
    diffusion = guidance.make_diffusion(guidance.parse_args(["--quick"]))  # built, not yet trained
    exact = guidance.MixtureEpsilon(diffusion.schedule, data.eight_gaussians_centres(), 0.7)
    labels = np.arange(200) % guidance.K
    for w in (0.0, 2.0):
        x = guidance.draw_samples(diffusion, exact, "model", 200, w, seed=1)
        accuracy = guidance.merit(x, exact.centres, labels)["accuracy"]
        assert accuracy < guidance.THRESHOLDS["untrained"], (w, accuracy)


def _log_q(x, t, schedule, centres, std, k=None):
    """log q_t(x) of the diffused mixture (up to a constant), or of its component k.  x (N, 2) -> (N,)"""
    a = schedule.alpha_bar[t]
    v = a * std**2 + 1 - a
    d2 = ((x[:, None] - np.sqrt(a) * centres[None]) ** 2).sum(2) / (2 * v)  # (N, K)
    if k is not None:
        return -d2[:, k]
    return -d2.min(1) + np.log(np.exp(-(d2 - d2.min(1, keepdims=True))).sum(1))


@pytest.mark.parametrize("t", [1, 40, 150])
def test_exact_mixture_epsilon_is_the_scaled_score_of_the_diffused_mixture(t):
    """E[ε | x_t] = −√(1 − ᾱ_t) ∇ log q_t(x_t), unlabelled and per label, against central differences."""
    schedule, centres, std = Schedule(200, "linear", scale_to_T=True), data.eight_gaussians_centres(), 0.7
    oracle = guidance.MixtureEpsilon(schedule, centres, std)
    x = np.random.default_rng(0).normal(0, 2, (6, 2))
    ts = np.full(6, t)
    h = 1e-5
    for k in (None, 0, 5):
        grad = np.stack([(_log_q(x + h * e, t, schedule, centres, std, k) -
                          _log_q(x - h * e, t, schedule, centres, std, k)) / (2 * h) for e in np.eye(2)], 1)
        y = None if k is None else np.full(6, k)
        eps = oracle.forward(x, ts, y)
        assert np.allclose(eps, -np.sqrt(1 - schedule.alpha_bar[t]) * grad, rtol=1e-6, atol=1e-8), k
    assert np.array_equal(oracle.forward(x, ts, np.full(6, 8)), oracle.forward(x, ts))  # 8 = no label


def test_exact_guided_chain_sharpens_the_true_conditionals():
    schedule, centres = Schedule(200, "linear", scale_to_T=True), data.eight_gaussians_centres()
    oracle = guidance.MixtureEpsilon(schedule, centres, 0.7)
    labels = np.arange(800) % guidance.K
    accuracy = {}
    for w in (0.0, 1.0):
        chain = EpsilonChain(oracle, schedule, labels=labels, guidance=w)
        x = sampling.sample(chain, 800, np.random.default_rng(int(w)))
        accuracy[w] = guidance.merit(x, centres, labels)["accuracy"]
    assert abs(accuracy[0.0] - 0.884) < 0.035  # the data's own labels' accuracy at std 0.7
    assert accuracy[1.0] > 0.97


def test_merit_counts_the_nearest_centre():
    centres = data.eight_gaussians_centres()
    labels = np.arange(8)
    right = guidance.merit(centres * 1.1, centres, labels)
    assert right["accuracy"] == 1.0 and right["dist"] == pytest.approx(0.1 * 4 / 1.414)
    assert right["radius"] == pytest.approx(1.1 * 4 / 1.414)
    assert guidance.merit(centres, centres, (labels + 1) % 8)["accuracy"] == 0.0
    assert guidance.merit(centres, centres)["accuracy"] is None


RANGE = f">= {GUIDANCE_RANGE[0]:g} and <= {GUIDANCE_RANGE[1]:g} (the guidance range"


@pytest.mark.parametrize("flags, message", [
    (["--guidance", "nan"], "--guidance must be a finite number " + RANGE),
    (["--guidance", "0", "-0.5"], "--guidance must be a finite number " + RANGE),  # below the range: refused
    (["--guidance", str(GUIDANCE_RANGE[1] + 1)], "--guidance must be a finite number " + RANGE),
    (["--w", "-1"], "--w must be a finite number " + RANGE),
    (["--steps", "0"], "--steps must be >= 1, got 0"),
    (["--n", "3"], "--n must be >= 8"),
    (["--std", "0"], "--std must be a finite number > 0"),
    (["--steps", "x"], "invalid int value"),
])
def test_bad_flags_exit_2_with_one_line(flags, message, capsys):
    with pytest.raises(SystemExit) as info:
        guidance.parse_args(flags)
    text = capsys.readouterr().err
    assert info.value.code == 2 and message in text and text.strip().count("\n") == 0, text


def test_the_ends_of_the_guidance_range_are_accepted():
    args = guidance.parse_args(["--guidance", *(f"{w:g}" for w in GUIDANCE_RANGE), "--w", f"{GUIDANCE_RANGE[1]:g}"])
    assert args.guidance == list(GUIDANCE_RANGE) and args.w == GUIDANCE_RANGE[1]
