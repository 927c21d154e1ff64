"""demos/gradcheck.py end to end: it runs, writes its report, and its verdict decides the exit code; with
--objective it checks every objective of the library through its loss, and a broken loss gradient fails it."""

import importlib.util
import re
import sys
from pathlib import Path

import pytest

from npdiff.diffusion import OBJECTIVES
from npdiff.processes.predictions import PREDICTIONS

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "demos" / "gradcheck.py"


@pytest.mark.parametrize("flags", [
    ["--quick"],
    ["--quick", "--dim", "3", "--activation", "relu", "--layernorm", "--out-dim-mult", "2", "--seed", "5"],
])
def test_demo_passes_and_writes_gradcheck_txt(tmp_path, flags, run_demo):
    out = tmp_path / "report"
    proc = run_demo("gradcheck.py", "--out", str(out), *flags)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = (out / "gradcheck.txt").read_text()
    verdict = re.search(r"max relative error (\S+) \(< 1e-6: OK\)", text)
    assert verdict and float(verdict.group(1)) < 1e-6
    rows = [line.split()[0] for line in text.splitlines()[2:-1]]
    assert "out.W" in rows and "inp.0.W" in rows and rows[-1] == "x"
    if "--layernorm" in flags:
        assert "norm.gamma" in rows and "blocks.0.fn.0.beta" in rows
    assert str(out.resolve()) in proc.stdout.splitlines()[-1]


def test_demo_default_out_folder_is_under_the_working_directory(tmp_path, run_demo):
    proc = run_demo("gradcheck.py", "--quick")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "out" / "gradcheck" / "gradcheck.txt").is_file()


def test_demo_rejects_invalid_flags(tmp_path, run_demo):
    proc = run_demo("gradcheck.py", "--out-dim-mult", "3", "--out", str(tmp_path))
    assert proc.returncode == 2 and "out-dim-mult" in proc.stderr


def test_demo_exits_1_and_says_fail_when_a_gradient_is_wrong(tmp_path, monkeypatch, capsys):
    from npdiff.nn.denoiser import Denoiser

    demo = _demo()
    right = Denoiser.backward
    monkeypatch.setattr(Denoiser, "backward", lambda self, dy: 2 * right(self, dy))  # dL/dx doubled
    assert demo.main(["--quick", "--out", str(tmp_path)]) == 1
    text = (tmp_path / "gradcheck.txt").read_text()
    assert re.search(r"max relative error 3\.33e-01 \(>= 1e-6: FAIL\)", text), text
    assert "FAIL" in capsys.readouterr().out


# --- --objective: every parameter's gradient through the whole model and an objective's loss ------------

def _demo():
    spec = importlib.util.spec_from_file_location("gradcheck_demo", DEMO)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    return demo


def _objective_cases():
    """Every objective of the library, every prediction and weighting of the epsilon objective, labels, and
    a class named the way a learner names their own (FILE.py:CLASS, MODULE:CLASS), from the registries."""
    cases = [["--objective", name] for name in OBJECTIVES]
    cases += [["--objective", "epsilon", "--prediction", p] for p in PREDICTIONS if p != "eps"]
    cases += [["--objective", "epsilon", "--prediction", p, "--min-snr-gamma", "5"] for p in PREDICTIONS]
    cases += [["--objective", "epsilon", "--num-classes", "3"],
              ["--objective", "npdiff/processes/hybrid.py:HybridObjective", "--layernorm"],
              ["--objective", "npdiff.processes.sohl_dickstein:BoundObjective", "--activation", "silu"]]
    return cases


@pytest.mark.parametrize("flags", _objective_cases(), ids=" ".join)
def test_every_objective_passes_for_every_parameter(flags, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # FILE.py:CLASS is a path from the working directory
    assert _demo().main([*flags, "--quick", "--out", str(tmp_path)]) == 0, capsys.readouterr().out
    text = (tmp_path / "gradcheck.txt").read_text()
    assert re.search(r"max relative error (\S+) \(< 1e-6: OK\)", text), text
    assert re.search(r"^loss \S+ \(loss_and_backward\), \S+ \(loss\): equal$", text, flags=re.M), text
    rows = [line.split()[0] for line in text.splitlines()[2:-2]]
    assert "inp.0.W" in rows and "out.W" in rows and "x" not in rows
    if "--num-classes" in flags:
        assert "label_emb.W" in rows
    weights = [line.split() for line in text.splitlines()[2:-2] if line.split()[0].endswith("W")]
    assert all(float(row[-1]) > 1e-3 for row in weights), text  # gradients that exist, not 0 against 0


def _fails_with(flags, tmp_path, capsys):
    """The demo's exit code and verdict line for flags."""
    code = _demo().main([*flags, "--quick", "--out", str(tmp_path)])
    capsys.readouterr()
    return code, (tmp_path / "gradcheck.txt").read_text().splitlines()[-1]


SQUARED_ERROR_USERS = [["--objective", "epsilon", "--prediction", p] for p in PREDICTIONS] + [
    ["--objective", "epsilon", "--min-snr-gamma", "5"], ["--objective", "hybrid"]]


@pytest.mark.parametrize("flags", SQUARED_ERROR_USERS, ids=" ".join)
def test_a_squared_error_gradient_without_its_factor_2_fails(flags, tmp_path, monkeypatch, capsys):
    """L = mean w (f − target)² has dL/df = 2 w (f − target)/(N·D); with the 2 dropped every parameter's
    gradient is half the true one, relative error 1/3 (in L_hybrid too, where λ = 0.001 leaves
    the variance's share of each gradient small), whichever module calls the shared loss."""
    from npdiff.nn import losses

    right = losses.squared_error

    def without_the_2(*args, **kwargs):
        loss, grad = right(*args, **kwargs)
        return loss, grad / 2

    for name, module in list(sys.modules.items()):
        if name.startswith("npdiff") and getattr(module, "squared_error", None) is right:
            monkeypatch.setattr(module, "squared_error", without_the_2)
    code, verdict = _fails_with(flags, tmp_path, capsys)
    assert code == 1 and verdict == "max relative error 3.33e-01 (>= 1e-6: FAIL)", verdict


def test_a_wrong_variance_gradient_fails_even_at_the_hybrid_objectives_small_weight(tmp_path, monkeypatch, capsys):
    from npdiff.processes import hybrid

    right = hybrid.learned_range_log_var_backward
    monkeypatch.setattr(hybrid, "learned_range_log_var_backward", lambda cache, d: 2 * right(cache, d))
    code, verdict = _fails_with(["--objective", "hybrid"], tmp_path, capsys)
    assert code == 1 and "FAIL" in verdict
    assert float(verdict.split()[3]) > 1e-4  # λ = 0.001 scales the variance's share, not its visibility


def test_a_wrong_kernel_gradient_of_the_sohl_dickstein_bound_fails(tmp_path, monkeypatch, capsys):
    from npdiff.processes import sohl_dickstein

    right = sohl_dickstein.reverse_kernel_backward
    monkeypatch.setattr(sohl_dickstein, "reverse_kernel_backward",
                        lambda cache, dmean, dlog_var: right(cache, dmean, 0.9 * dlog_var))
    code, verdict = _fails_with(["--objective", "sohl_dickstein"], tmp_path, capsys)
    assert code == 1 and "FAIL" in verdict and float(verdict.split()[3]) > 1e-3


def test_a_loss_that_differs_between_loss_and_loss_and_backward_fails(tmp_path, monkeypatch, capsys):
    """A changed loss edited in one of its two code paths only: the gradient agrees (a constant shift), the
    losses do not."""
    from npdiff.processes.ddpm import EpsilonObjective

    right = EpsilonObjective.loss
    monkeypatch.setattr(EpsilonObjective, "loss", lambda self, *a, **k: right(self, *a, **k) + 1.0)
    code, verdict = _fails_with(["--objective", "epsilon"], tmp_path, capsys)
    text = (tmp_path / "gradcheck.txt").read_text()
    assert code == 1 and "FAIL" in verdict and "DIFFERENT: FAIL" in text


def test_objective_runs_end_to_end_from_a_shell(tmp_path, run_demo):
    proc = run_demo("gradcheck.py", "--objective", "hybrid", "--quick", "--out", str(tmp_path / "r"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "through the loss of the hybrid objective" in proc.stdout
    assert (tmp_path / "r" / "gradcheck.txt").is_file()


@pytest.mark.parametrize("flags, message", [
    (["--objective", "no_such_objective"], "neither one of"),
    (["--objective", "hybrid", "--prediction", "x0"], "prediction"),
    (["--objective", "sohl_dickstein", "--out-dim-mult", "1"], "fixes the output width"),
    (["--prediction", "v"], "need --objective"),
    (["--objective", "npdiff.processes.ddpm:NoSuchObjective"], "NoSuchObjective"),
])
def test_demo_refuses_an_objective_that_cannot_be_checked(flags, message, tmp_path, run_demo):
    proc = run_demo("gradcheck.py", *flags, "--out", str(tmp_path))
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
