"""demos/conditional.py: the quick run passes its figures of merit, an untrained one fails them, bad flags: one line."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "demos"))
import conditional  # noqa: E402

PRINTED = re.compile(r"(paper|replace)\s+inpainting .*support distance ([0-9.]+) .*\n\1\s+denoising .*: KL ([0-9.]+) ")


def test_quick_demo_conditions_the_trained_roll_within_the_thresholds(tmp_path, run_demo):
    out = tmp_path / "cond"
    run = run_demo("conditional.py", "--quick", "--out", out)
    assert run.returncode == 0, run.stderr
    found = {m.group(1): (float(m.group(2)), float(m.group(3))) for m in PRINTED.finditer(run.stdout)}
    assert set(found) == {"paper", "replace"}, run.stdout
    for method, (support, kl) in found.items():
        assert support < conditional.THRESHOLDS["support"], (method, support)
        assert kl < conditional.THRESHOLDS["kl"], (method, kl)
    results = json.loads((out / "results.json").read_text())
    assert results["paper"]["support"] == pytest.approx(found["paper"][0], abs=1e-4)
    assert results["paper"]["support_floor"] < 0.1  # exact draws lie this close to the crossings
    assert (out / "conditional.png").stat().st_size > 20_000
    assert run.stdout.strip().splitlines()[-1] == str(out.resolve())


def test_an_untrained_model_fails_the_demos_thresholds():
    args = conditional.parse_args(["--quick"])  # the model is built here, never trained
    process = conditional.make_diffusion(args).process
    rng = np.random.default_rng(0)
    inpaint = conditional.inpaint_merit(process, conditional.inpaint_reference(args.a, 201), 200, rng)
    denoise = conditional.denoise_merit(process, conditional.denoise_reference(args.observed, args.noise_std, 16),
                                        200, rng)
    assert inpaint["support"] > 3 * conditional.THRESHOLDS["support"]
    assert denoise["kl"] > 1.5 * conditional.THRESHOLDS["kl"]


def test_the_gaussian_table_shows_the_unconditioned_chain_converging_and_the_conditioned_bias():
    rows = conditional.gaussian_table(Ts=(10, 100))
    text = conditional.table_md(rows)
    lines = {(r["chain"], r["case"], r["method"]) for r in rows}
    assert text.count("\n") == len(lines) + 2  # a header, a rule, one line per chain, case and method
    assert "| eps | inpaint x1 = 1.2 | paper | 0.1201 / 0.0637 | 0.0856 / 0.0945 |" in text
    plain = {r["T"]: r["cov_err"] for r in rows if r["chain"] == "eps" and r["case"] == "unconditioned"}
    assert plain[100] < plain[10] / 4  # the chain itself converges as β_t shrinks …
    biased = [r["mean_err"] for r in rows if r["T"] == 100 and r["case"] == "inpaint x1 = 1.2"]
    assert min(biased) > 0.05  # … the conditioned one keeps its bias


@pytest.mark.parametrize("flags, message", [
    (["--noise-std", "-1"], "--noise-std must be a finite number > 0"),
    (["--n", "3"], "--n must be >= 10"),
    (["--steps", "0"], "--steps must be >= 1, got 0"),
    (["--observed", "nan", "0"], "must be finite"),
    (["--steps", "x"], "invalid int value"),
])
def test_bad_flags_exit_2_with_one_line(flags, message, capsys):
    with pytest.raises(SystemExit) as info:
        conditional.parse_args(flags)
    text = capsys.readouterr().err
    assert info.value.code == 2 and message in text and text.strip().count("\n") == 0, text


def test_a_bad_flag_from_the_shell_prints_one_line(tmp_path, run_demo):
    run = run_demo("conditional.py", "--noise-std", "0", "--out", tmp_path / "x")
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.strip() == "conditional.py: error: --noise-std must be a finite number > 0, got 0.0"
