"""demos/swissroll.py --quick end to end: it trains, evaluates K, draws Figure 1 and prints its folder."""

import importlib.util
import json
from pathlib import Path

import numpy as np

from npdiff import data
from npdiff.processes import likelihood
from npdiff.processes.schedules import Schedule
from npdiff.processes.sohl_dickstein import SohlDicksteinChain, make_model

MIN_GAIN_BITS = 0.3  # the quick run reaches ≈ 0.5; the untrained chain scores 0 (test below)


def test_quick_swissroll_demo_writes_figure_and_results(tmp_path, run_demo):
    out = tmp_path / "roll"
    proc = run_demo("swissroll.py", "--quick", "--out", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(out.resolve())
    assert (out / "figure1.png").stat().st_size > 10_000
    results = json.loads((out / "results.json").read_text())
    assert results["T"] == 40 and results["eval_points"] == 2000
    assert MIN_GAIN_BITS < results["gain_bits"] < results["best_gain_bits"]
    assert "K − L_null" in proc.stdout


def test_the_untrained_chain_fails_the_quick_demos_quality_bar():
    """The demo's zero-initialised chain before training: K = L_null, so K − L_null ≈ 0 < MIN_GAIN_BITS."""
    rng = np.random.default_rng(0)
    z, _, _ = data.standardize(data.swissroll(20_000, rng, noise=0.5))
    chain = SohlDicksteinChain(make_model(2, hidden=32, n_blocks=1, emb_dim=16), Schedule(40, "sohl_dickstein"))
    bound = likelihood.eq14_bound(chain, z[:2000], rng, exact=True)
    assert bound.gain / np.log(2) < MIN_GAIN_BITS - 5 * bound.gain_se / np.log(2)


def test_a_flag_given_wins_over_quicks_defaults():
    spec = importlib.util.spec_from_file_location("demo_swissroll", Path(__file__).resolve().parents[1] / "demos" /
                                                  "swissroll.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    quick = demo.parse_args(["--quick"])
    assert (quick.steps, quick.lr, quick.hidden) == (demo.QUICK["steps"], demo.QUICK["lr"], demo.QUICK["hidden"])
    given = demo.parse_args(["--quick", "--steps", "7", "--lr", "0.01", "--hidden", "12"])
    assert (given.steps, given.lr, given.hidden, given.n_blocks) == (7, 0.01, 12, demo.QUICK["n_blocks"])
    assert demo.parse_args([]).steps == demo.DEFAULTS["steps"]
