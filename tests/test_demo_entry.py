"""The demos speak like the command line (issue 19.4): every failure class is one line on stderr and exit status 1
or 2, never a traceback (``npdiff.cli.entry.run_demo``); the output folder is checked before any work. The heart
demo joins this table after its rewrite."""

from __future__ import annotations

import os
import re

import pytest

from npdiff.cli import entry

SWISS = ["--steps", "5", "--hidden", "8", "--n-blocks", "1", "--emb-dim", "8", "--eval-points", "50",
         "--entropy-points", "50", "--T", "5"]

# (demo, arguments, status, message); "{f}" is an existing file, "{d}" the test's folder
CASES = [
    ("covariance.py", ["--quick", "--out", "{f}"], 2, r"--out '.*taken' is a file; name a folder"),
    ("swissroll.py", ["--quick", "--out", "{f}"], 2, r"is a file; name a folder"),
    ("conditional.py", ["--quick", "--out", "{f}"], 2, r"is a file; name a folder"),
    ("guidance.py", ["--quick", "--out", "{f}"], 2, r"is a file; name a folder"),
    ("covariance.py", ["--quick", "--out", "{f}/sub"], 2, r"cannot write there: Not a directory"),
    ("swissroll.py", [*SWISS, "--lr", "1e30", "--out", "{d}/o"], 1, r"non-finite loss"),
    ("swissroll.py", [*SWISS, "--steps", "0", "--out", "{d}/o"], 2, r"--steps must be >= 1, got 0"),
    ("swissroll.py", [*SWISS, "--lr", "nan", "--out", "{d}/o"], 2, r"--lr must be a finite number > 0, got nan"),
    ("swissroll.py", [*SWISS, "--lr", "-1", "--out", "{d}/o"], 2, r"--lr must be a finite number > 0"),
    ("mnist.py", ["--quick", "--guidance", "1e6", "--out", "{d}/o"], 2, r"--guidance must be a finite number >= 0 and "
                                                                          r"<= 20"),
    ("mnist.py", ["--quick", "--sweep", "0", "-1", "--out", "{d}/o"], 2, r"--sweep must be a finite number >= 0"),
    ("mnist.py", ["--quick", "--steps", "0", "--out", "{d}/o"], 2, r"--steps must be >= 1, got 0"),
    ("mnist.py", ["--quick", "--lr", "inf", "--out", "{d}/o"], 2, r"--lr must be a finite number > 0"),
    ("mnist.py", ["--quick", "--label-dropout", "1", "--out", "{d}/o"], 2, r"--label-dropout must be a finite number "
                                                                             r"in \[0, 1\)"),
    ("inpainting.py", ["--quick", "--guidance", "21", "--out", "{d}/o"], 1, r"--guidance must be a finite number >= 0 "
                                                                             r"and <= 20"),
]


@pytest.mark.parametrize("demo, argv, status, message", CASES, ids=[f"{c[0]} {' '.join(c[1])}" for c in CASES])
def test_a_demo_failure_is_one_line_with_status_1_or_2(run_demo, tmp_path, demo, argv, status, message):
    taken = tmp_path / "taken"
    taken.write_text("a user's file")
    run = run_demo(demo, *[a.replace("{f}", str(taken)).replace("{d}", str(tmp_path)) for a in argv])
    assert run.returncode == status, run.stderr
    assert "Traceback" not in run.stderr and run.stderr.strip().count("\n") == 0, run.stderr
    assert re.search(message, run.stderr), run.stderr
    assert taken.read_text() == "a user's file"
    assert not (tmp_path / "o").exists() or status == 1  # refused before any output was made


@pytest.mark.parametrize("err, status, line", [
    (ValueError("bad value"), 2, "demo: error: bad value"),
    (FloatingPointError("samples are NaN"), 1, "demo: error: samples are NaN"),
    (PermissionError(13, "Permission denied", "/x/y.png"), 1, "demo: error: '/x/y.png': Permission denied"),
    (MemoryError(), 1, "demo: error: out of memory"),
    (KeyboardInterrupt(), 130, "demo: interrupted"),
    (ZeroDivisionError("x"), 1, "demo: internal error: ZeroDivisionError: x"),
])
def test_every_failure_class_maps_to_one_line_and_a_status(capsys, monkeypatch, err, status, line):
    monkeypatch.delenv("NPDIFF_TRACEBACK", raising=False)

    def main(argv):
        raise err

    assert entry.run_demo(main, [], name="demo") == status
    text = capsys.readouterr().err
    assert text.startswith(line) and text.count("\n") == 1, text


def test_demo_out_creates_the_folder_and_refuses_a_file(tmp_path):
    assert entry.demo_out(tmp_path / "a" / "b") == str(tmp_path / "a" / "b") and (tmp_path / "a" / "b").is_dir()
    assert os.listdir(tmp_path / "a" / "b") == []
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        entry.demo_out(tmp_path / "f")
