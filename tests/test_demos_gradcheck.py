"""demos/gradcheck.py end to end: it runs, writes its report, and its verdict decides the exit code."""

import re
from pathlib import Path

import pytest

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
    import importlib.util

    from npdiff.nn.denoiser import Denoiser

    spec = importlib.util.spec_from_file_location("gradcheck_demo", DEMO)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    right = Denoiser.backward
    monkeypatch.setattr(Denoiser, "backward", lambda self, dy: 2 * right(self, dy))  # dL/dx doubled
    assert demo.main(["--quick", "--out", str(tmp_path)]) == 1
    text = (tmp_path / "gradcheck.txt").read_text()
    assert re.search(r"max relative error 3\.33e-01 \(>= 1e-6: FAIL\)", text), text
    assert "FAIL" in capsys.readouterr().out
