"""demos/swissroll.py --quick end to end: it trains, evaluates K, draws Figure 1 and prints its folder."""

import json


def test_quick_swissroll_demo_writes_figure_and_results(tmp_path, run_demo):
    out = tmp_path / "roll"
    proc = run_demo("swissroll.py", "--quick", "--out", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(out.resolve())
    assert (out / "figure1.png").stat().st_size > 10_000
    results = json.loads((out / "results.json").read_text())
    assert results["T"] == 40 and results["eval_points"] == 2000
    # the zero-initialised chain starts at K = L_null; 200 steps cannot be worse than that by much
    assert results["gain_bits"] > -0.2 and results["gain_bits"] < results["best_gain_bits"]
    assert "K − L_null" in proc.stdout
