"""The demos speak like the command line (issue 19.1, 19.3, 19.4): every flag is checked before any work (one
line, exit status 2), every runtime failure is one line and exit status 1, never a traceback
(``npdiff.cli.entry.run_demo``); an output already in --out is never replaced without --force, --out is held by
a lock for the run, and guidance scales lie in ``npdiff.diffusion.GUIDANCE_RANGE``, as on the command line.

The table runs each demo as a user runs it, in a fresh process. Failures that no flag provokes are provoked
from outside by a patch applied before the demo runs (``POISONS``): the sampler's start made NaN (and the ε
chain's kernel mean, which the heart demo's written-out Algorithm 2 calls), or a learning rate 1e30 given to
``Diffusion.fit`` by the demos that have no --lr."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from npdiff import Diffusion
from npdiff.cli import entry

ROOT = Path(__file__).resolve().parents[1]

SWISS = ["--steps", "5", "--hidden", "8", "--n-blocks", "1", "--emb-dim", "8", "--eval-points", "50",
         "--entropy-points", "50", "--T", "5"]
HEART = ["--steps", "5", "--T", "10"]
GUIDE = ["--quick", "--steps", "5", "--n", "16", "--guidance", "0", "1"]
COND = ["--quick", "--steps", "5", "--n", "10"]
MNIST = ["--quick", "--steps", "3", "--data", "{data}"]
INPAINT = ["--quick", "--n", "2", "--methods", "paper", "--data", "{data}", "--checkpoint", "{ckpt}"]
GRAD = ["--quick"]

# the first output of each demo (the existing-output cases put a user's file there) and its quick arguments
DEMOS = {"heart.py": ("samples.npy", HEART), "swissroll.py": ("samples.npy", SWISS),
         "covariance.py": ("covariance.png", ["--quick", "--n", "100"]), "guidance.py": ("guidance.png", GUIDE),
         "conditional.py": ("conditional.png", COND), "mnist.py": ("checkpoint.npz", MNIST),
         "inpainting.py": ("inpainting.png", INPAINT), "gradcheck.py": ("gradcheck.txt", GRAD),
         "worked_example.py": ("worked_example.txt", []), "ddpm_numpy.py": ("heart.png", ["--steps", "1"])}
LOCKED = [name for name in DEMOS if name != "ddpm_numpy.py"]  # the NumPy-only file imports no npdiff lock

POISONS = {
    "sample": """
from npdiff.processes import ddpm, sampling
start, kernel = sampling._start, ddpm.EpsilonChain.kernel
sampling._start = lambda *args: start(*args) * float("nan")
def nan_mean(self, x_t, t):
    mean, log_var = kernel(self, x_t, t)
    return mean * float("nan"), log_var
ddpm.EpsilonChain.kernel = nan_mean
""",
    "loss": """
import inspect
from npdiff import Diffusion
fit = Diffusion.fit
def huge_lr(*args, **kwargs):
    bound = inspect.signature(fit).bind(*args, **kwargs)
    bound.apply_defaults()
    bound.arguments["lr"] = 1e30
    return fit(*bound.args, **bound.kwargs)
Diffusion.fit = huge_lr
""",
}
RANGE = r"must be a finite number >= 0 and <= 20 \(the guidance range"

# (demo, arguments, poison or None, status, message); "{d}" is the test's folder, the output folder "{d}/o"
CASES = [
    # a non-finite loss
    ("heart.py", [*HEART, "--lr", "1e30"], None, 1, r"heart.py: error: non-finite loss"),
    ("swissroll.py", [*SWISS, "--lr", "1e30"], None, 1, r"non-finite loss"),
    ("mnist.py", [*MNIST, "--lr", "1e30"], None, 1, r"non-finite loss"),
    ("guidance.py", GUIDE, "loss", 1, r"non-finite loss"),
    ("conditional.py", COND, "loss", 1, r"non-finite loss"),
    # a non-finite sample
    ("heart.py", HEART, "sample", 1, r"heart.py: error: sampling produced non-finite values"),
    ("heart.py", [*HEART, "--sampler", "ddim", "--ddim-steps", "5"], "sample", 1, r"sampling produced non-finite"),
    ("swissroll.py", SWISS, "sample", 1, r"sampling produced non-finite values"),
    ("guidance.py", GUIDE, "sample", 1, r"sampling produced non-finite values"),
    ("conditional.py", COND, "sample", 1, r"sampling produced non-finite values"),
    ("mnist.py", MNIST, "sample", 1, r"sampling produced non-finite values"),
    ("inpainting.py", INPAINT, "sample", 1, r"sampling produced non-finite values"),
    # --steps 0 (and the other counts of a demo without --steps)
    ("heart.py", ["--steps", "0"], None, 2, r"^heart.py: error: --steps must be >= 1, got 0$"),
    ("swissroll.py", [*SWISS, "--steps", "0"], None, 2, r"--steps must be >= 1, got 0"),
    ("guidance.py", ["--quick", "--steps", "0"], None, 2, r"^guidance.py: error: --steps must be >= 1, got 0$"),
    ("conditional.py", ["--quick", "--steps", "0"], None, 2, r"--steps must be >= 1, got 0"),
    ("mnist.py", ["--quick", "--steps", "0"], None, 2, r"--steps must be >= 1, got 0"),
    ("ddpm_numpy.py", ["--steps", "0"], None, 2, r"^ddpm_numpy.py: error: --steps must be >= 1, got 0$"),
    ("covariance.py", ["--T", "0"], None, 2, r"--T must be >= 1, got 0"),
    ("inpainting.py", ["--n", "0"], None, 2, r"--n must be >= 1, got 0"),
    ("gradcheck.py", ["--batch-size", "0"], None, 2, r"--batch-size must be >= 1, got 0"),
    # other flags checked before any work
    ("heart.py", ["--lr", "nan"], None, 2, r"--lr must be a finite number > 0, got nan"),
    ("swissroll.py", [*SWISS, "--lr", "-1"], None, 2, r"--lr must be a finite number > 0"),
    ("mnist.py", ["--quick", "--lr", "inf"], None, 2, r"--lr must be a finite number > 0"),
    ("mnist.py", ["--quick", "--label-dropout", "1"], None, 2, r"--label-dropout must be a finite number in \[0, 1\)"),
    ("guidance.py", ["--std", "0"], None, 2, r"--std must be a finite number > 0"),
    ("conditional.py", ["--noise-std", "-1"], None, 2, r"--noise-std must be a finite number > 0"),
    ("gradcheck.py", ["--emb-dim", "5"], None, 2, r"--emb-dim must be even and >= 4, got 5"),
    ("heart.py", ["--bogus"], None, 2, r"^heart.py: error: unrecognized arguments: --bogus$"),
    # guidance out of GUIDANCE_RANGE, the command line's range
    ("guidance.py", ["--guidance", "0", "-0.5"], None, 2, r"--guidance " + RANGE),
    ("guidance.py", ["--w", "-1"], None, 2, r"--w " + RANGE),
    ("guidance.py", ["--guidance", "21"], None, 2, r"--guidance " + RANGE),
    ("guidance.py", ["--guidance", "nan"], None, 2, r"--guidance " + RANGE),
    ("mnist.py", ["--quick", "--guidance", "1e6"], None, 2, r"--guidance " + RANGE),
    ("mnist.py", ["--quick", "--sweep", "0", "-1"], None, 2, r"--sweep " + RANGE),
    ("inpainting.py", ["--quick", "--guidance", "21"], None, 2, r"--guidance " + RANGE),
    ("inpainting.py", ["--guidance", "-0.1"], None, 2, r"--guidance " + RANGE),
]
# --out naming a file, or a path below a file: every demo
CASES += [(demo, [*args, "--out", "{f}"], None, 2, r"--out '.*taken' is a file; name a folder")
          for demo, (_, args) in DEMOS.items()]
CASES += [(demo, [*args, "--out", "{f}/sub"], None, 2, r"Not a directory") for demo, (_, args) in DEMOS.items()]


def _ids(cases):
    return [f"{c[0]} {' '.join(c[1])}{' +' + c[2] if c[2] else ''}" for c in cases]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Tiny IDX data and a tiny untrained class-conditional image checkpoint: {"{data}": …, "{ckpt}": …}."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_demo_mnist import write_tiny_dataset

    root = tmp_path_factory.mktemp("inputs")
    write_tiny_dataset(root, n_train=200, n_test=80)
    diffusion = Diffusion(784, T=5, prediction="v", num_classes=10, label_dropout=0.1, hidden=8, n_blocks=1,
                          emb_dim=8, embed_coords=False, seed=0)
    diffusion.save(root / "checkpoint.npz")
    return {"{data}": str(root), "{ckpt}": str(root / "checkpoint.npz")}


def run(demo: str, argv, cwd, poison: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python demos/DEMO ARGV`` in a fresh process (a poison first, if named), as tests/conftest.py's run_demo."""
    env = dict(os.environ, MPLBACKEND="Agg")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("NPDIFF_BACKEND", None)
    env.pop("NPDIFF_TRACEBACK", None)
    path = str(ROOT / "demos" / demo)
    if poison is None:
        cmd = [sys.executable, path, *argv]
    else:
        prelude = f"{POISONS[poison]}\nimport runpy, sys\nsys.argv = sys.argv[1:]\nrunpy.run_path(sys.argv[0], " \
                  "run_name='__main__')"
        cmd = [sys.executable, "-c", prelude, path, *argv]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def one_line(result, status: int, message: str) -> None:
    """The run exits with ``status`` and one line of error, the last on stderr (progress lines may precede it)."""
    assert result.returncode == status, result.stderr
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr and lines, result.stderr
    assert not any(line.startswith("usage:") for line in lines), result.stderr  # no usage block either
    assert [line for line in lines if "error" in line] == lines[-1:], result.stderr
    assert re.search(message, lines[-1]), result.stderr


def fill(argv, values: dict):
    out = []
    for a in argv:
        for key, value in values.items():
            a = a.replace(key, value)
        out.append(a)
    return out


@pytest.mark.parametrize("demo, argv, poison, status, message", CASES, ids=_ids(CASES))
def test_a_demo_failure_is_one_line_with_status_1_or_2(tmp_path, inputs, demo, argv, poison, status, message):
    taken = tmp_path / "taken"
    taken.write_text("a user's file")
    values = {**inputs, "{f}": str(taken), "{d}": str(tmp_path)}
    if "--out" not in argv:
        argv = [*argv, "--out", "{d}/o"]
    result = run(demo, fill(argv, values), tmp_path, poison)
    one_line(result, status, message)
    assert taken.read_text() == "a user's file"
    if status == 2:
        assert not (tmp_path / "o").exists()  # refused before any output was made
    assert not list(tmp_path.glob(".*npdiff-lock")) and not list(tmp_path.glob("**/*npdiff-tmp*"))


@pytest.mark.parametrize("demo", list(DEMOS))
def test_an_output_already_there_is_replaced_only_with_force(tmp_path, inputs, demo):
    name, args = DEMOS[demo]
    out = tmp_path / "o"
    out.mkdir()
    (out / name).write_text("a user's file")
    result = run(demo, fill([*args, "--out", str(out)], inputs), tmp_path)
    one_line(result, 2, rf"--out '.*o' holds {re.escape(name)} already; pass --force to replace it")
    assert (out / name).read_text() == "a user's file" and os.listdir(out) == [name]


@pytest.mark.parametrize("demo", ["heart.py", "covariance.py", "worked_example.py", "ddpm_numpy.py"])
def test_force_replaces_an_earlier_output(tmp_path, demo):
    name, args = DEMOS[demo]
    out = tmp_path / "o"
    out.mkdir()
    (out / name).write_text("an earlier run's file")
    result = run(demo, [*args, "--out", str(out), "--force"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert (out / name).read_bytes() != b"an earlier run's file" and (out / name).stat().st_size > 100
    assert not list(tmp_path.glob(".*npdiff-lock"))  # the lock is gone after the run


@pytest.mark.parametrize("demo", LOCKED)
def test_a_second_run_on_one_output_folder_is_refused_naming_the_holder(tmp_path, inputs, demo):
    """The lock of --out, ``.o.npdiff-lock`` beside it (fileio.output_lock), held by a live process: this one."""
    _, args = DEMOS[demo]
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": "demos/other.py",
              "started": "2026-01-01 00:00:00", "nonce": "0"}
    (tmp_path / ".o.npdiff-lock").write_text(json.dumps(holder))
    result = run(demo, fill([*args, "--out", str(tmp_path / "o")], inputs), tmp_path)
    one_line(result, 2, rf"'.*o' is being written by demos/other.py \(pid {os.getpid()} on ")
    assert json.loads((tmp_path / ".o.npdiff-lock").read_text()) == holder  # the holder's lock is left alone


@pytest.mark.parametrize("demo", list(DEMOS))
def test_a_read_only_output_folder_is_refused_before_any_work(tmp_path, inputs, demo):
    _, args = DEMOS[demo]
    out = tmp_path / "o"
    out.mkdir()
    out.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        if os.access(out, os.W_OK):
            pytest.skip("this user (root?) can write a read-only folder")
        result = run(demo, fill([*args, "--out", str(out)], inputs), tmp_path)
    finally:
        out.chmod(stat.S_IRWXU)
    one_line(result, 2, r"--out '.*o': cannot write there: Permission denied")
    assert os.listdir(out) == []


def test_an_output_that_is_an_input_is_refused_even_with_force(tmp_path, inputs):
    out = tmp_path / "o"
    out.mkdir()
    checkpoint = out / "completions.npz"  # the name of one of inpainting.py's outputs
    checkpoint.write_bytes(Path(inputs["{ckpt}"]).read_bytes())
    result = run("inpainting.py", ["--quick", "--data", inputs["{data}"], "--checkpoint", str(checkpoint),
                                   "--out", str(out), "--force"], tmp_path)
    one_line(result, 2, r"completions.npz' is the same file as --checkpoint")
    assert checkpoint.read_bytes() == Path(inputs["{ckpt}"]).read_bytes()


def test_the_heart_demo_from_a_shell_checks_its_flags_before_its_cells_run(tmp_path):
    result = run("heart.py", ["--batch-size", "9000", "--out", str(tmp_path / "o")], tmp_path)
    one_line(result, 2, r"^heart.py: error: --batch-size must be at most the 8000 training points, got 9000$")
    assert result.stdout == "" and not (tmp_path / "o").exists()  # nothing printed: no cell ran


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the overflow that the guard reports
def test_the_numpy_ddpm_stops_in_one_line_on_a_non_finite_loss(tmp_path, monkeypatch):
    """demos/ddpm_numpy.py has no --lr: its train() is given lr = 1e30 from here."""
    spec = importlib.util.spec_from_file_location("entry_ddpm_numpy", ROOT / "demos" / "ddpm_numpy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    real = module.train
    monkeypatch.setattr(module, "train", lambda params, x, steps, rng: real(params, x, steps, rng, lr=1e30))
    with pytest.raises(SystemExit) as info:
        module.main(["--steps", "3", "--out", str(tmp_path / "o")])
    assert re.fullmatch(r"ddpm_numpy.py: error: non-finite loss at step \d; nothing was written", str(info.value.code))
    assert os.listdir(tmp_path / "o") == []


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


def test_a_demos_own_exit_status_is_kept():
    assert entry.run_demo(lambda argv: 1, [], name="demo") == 1  # gradcheck's failed check
    assert entry.run_demo(lambda argv: {"chamfer": 0.01}, [], name="demo") == 0


def test_demo_out_creates_the_folder_and_refuses_a_file(tmp_path):
    assert entry.demo_out(tmp_path / "a" / "b") == str(tmp_path / "a" / "b") and (tmp_path / "a" / "b").is_dir()
    assert os.listdir(tmp_path / "a" / "b") == []
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        entry.demo_out(tmp_path / "f")


def test_demo_outputs_holds_the_folder_for_the_run_and_releases_it(tmp_path):
    out = tmp_path / "o"
    with entry.demo_outputs(out, ["a.txt"], command="demos/x.py") as folder:
        assert folder == str(out) and (tmp_path / ".o.npdiff-lock").is_file()
        with pytest.raises(ValueError, match=r"is being written by demos/x.py"):
            with entry.demo_outputs(out, ["b.txt"], command="demos/y.py"):
                pass
        (out / "a.txt").write_text("x")
    assert not (tmp_path / ".o.npdiff-lock").exists()
    with pytest.raises(ValueError, match="holds a.txt already; pass --force"):
        with entry.demo_outputs(out, ["a.txt"]):
            pass
    with entry.demo_outputs(out, ["a.txt"], force=True):
        pass
    assert os.listdir(out) == ["a.txt"]


def test_demo_outputs_refuses_a_file_size_limit_or_a_full_disk_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr(entry.streaming, "file_size_limit", lambda: 1 << 20)
    with pytest.raises(ValueError, match=r"file-size limit \(ulimit -f\) allows 1048576 bytes per file"):
        with entry.demo_outputs(tmp_path / "o", ["a.txt"], command="demos/x.py", largest_bytes=2 << 20):
            pytest.fail("the work ran")
    monkeypatch.setattr(entry.streaming, "file_size_limit", lambda: None)
    monkeypatch.setattr(entry.streaming, "free_bytes", lambda path: 1000)
    with pytest.raises(ValueError, match="1000 bytes are free where demos/x.py writes"):
        with entry.demo_outputs(tmp_path / "o", ["a.txt"], command="demos/x.py"):
            pytest.fail("the work ran")
    assert not (tmp_path / ".o.npdiff-lock").exists()  # the lock is released on the refusal


def test_a_demo_under_a_small_ulimit_f_stops_in_one_line_before_any_work(tmp_path):
    import resource

    def small_file_limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    out = tmp_path / "out"
    run = subprocess.run([sys.executable, str(ROOT / "demos" / "covariance.py"), "--quick", "--out", str(out)],
                         capture_output=True, text=True, timeout=120, preexec_fn=small_file_limit)
    one_line(run, 2, r"file-size limit \(ulimit -f\)")
    assert os.listdir(out) == []
