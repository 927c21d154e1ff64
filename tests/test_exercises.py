"""The exercises of docs/reading-order.md: break one line of npdiff on purpose and watch a gradient check fail.

Each break is a one-line textual replacement in a copy of the package (the replaced text must occur exactly
once). ``checks()`` runs a small gradient check for every derived backward, in float64, and prints one JSON
line {check: relative error}; the tests run it in a subprocess whose PYTHONPATH puts the copy first, once
for the unbroken package (every check passes) and once per break (the break's check fails).

    python tests/test_exercises.py            # the table of docs/reading-order.md: each break's error
    python tests/test_exercises.py --checks   # the checks alone, on whatever npdiff is importable
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PASS_BELOW = 1e-6  # float64 central differences agree to ~1e-9 on these sizes
FAIL_ABOVE = 1e-3  # every break below moves its check's error to 0.01 or more

# name -> (file, the text as it is, the broken text, the check that must fail)
BREAKS = {
    "drop the 2 in dL/dε_θ": ("npdiff/nn/losses.py", "weighted * (2.0 / diff.size)", "weighted * (1.0 / diff.size)",
                              "epsilon_objective"),
    "use H − 1 in LayerNorm's variance": (
        "npdiff/nn/layers.py", "var = row_mean(centered * centered)",
        "var = row_mean(centered * centered) * x.shape[-1] / (x.shape[-1] - 1)", "layernorm"),
    "drop GELU's x·Φ'(x) term": ("npdiff/nn/layers.py", "return dy * gelu_tanh_derivative(x_sq, phi, y)",
                                 "return dy * phi", "gelu"),
    "= instead of += in Linear's dL/dW": ("npdiff/nn/layers.py", 'self.grads["W"] += x.T.dot(dy)',
                                          'self.grads["W"] = x.T.dot(dy)', "linear_accumulate"),
    "drop the skip path of the residual's backward": ("npdiff/nn/layers.py", "return dy + self.fn.backward(dy)",
                                                      "return self.fn.backward(dy)", "epsilon_objective"),
    "flip the sign of d cos in the sinusoidal embedding": (
        "npdiff/nn/embeddings.py", "d_sin_cos[:, :, 0] * c - d_sin_cos[:, :, 1] * s",
        "d_sin_cos[:, :, 0] * c + d_sin_cos[:, :, 1] * s", "sinusoidal"),
    "forget the 1/N of the mean cross-entropy": ("npdiff/nn/losses.py", "dlogits *= dloss / n", "dlogits *= dloss",
                                                 "cross_entropy"),
    "sign error in the KL's log-variance gradient": ("npdiff/processes/gaussian.py", "- diff ** 2 * inv_var_p) * dkl",
                                                     "+ diff ** 2 * inv_var_p) * dkl", "kl"),
    "swap β_t and β̃_t in the learned range": ("npdiff/processes/ddpm.py",
                                               "return v * log_max + (1.0 - v) * log_min, cache",
                                               "return v * log_min + (1.0 - v) * log_max, cache", "learned_range"),
    "σ(a) for 1 − σ(a) in the logit-β variance": ("npdiff/processes/sohl_dickstein.py",
                                                  "dlog_var * sigmoid(-a)", "dlog_var * sigmoid(a)",
                                                  "sohl_dickstein"),
}


def checks() -> dict:
    """{check: relative error ‖a − n‖/(‖a‖ + ‖n‖)} of each derived backward against central differences;
    a check whose code cannot run reports the error's text instead."""
    import numpy as np

    import npdiff
    from npdiff.nn import gradcheck

    def module_check(make):
        def run():
            module, x = make()
            return gradcheck.worst(gradcheck.check_module(module, x))
        return run

    def linear_accumulate():  # two backward passes must add: L = Σ f(x1)·dy1 + Σ f(x2)·dy2
        from npdiff.nn.layers import Linear
        rng = np.random.default_rng(1)
        layer = Linear(3, 2, rng, "float64")
        x1, x2, dy1, dy2 = (rng.standard_normal(s) for s in ((4, 3), (4, 3), (4, 2), (4, 2)))
        layer.zero_grad()
        for x, dy in ((x1, dy1), (x2, dy2)):
            layer.forward(x)
            layer.backward(dy)
        analytic = {k: g.copy() for k, g in layer.grads.items()}
        return gradcheck.worst(gradcheck.check(
            lambda: float((layer.forward(x1) * dy1).sum() + (layer.forward(x2) * dy2).sum()), layer.params, analytic))

    def layernorm():
        from npdiff.nn.layers import LayerNorm
        rng = np.random.default_rng(2)
        layer = LayerNorm(5, dtype="float64")
        layer.params["gamma"][...] = rng.standard_normal(5)
        layer.params["beta"][...] = rng.standard_normal(5)
        return layer, rng.standard_normal((3, 5))

    def gelu():
        from npdiff.nn.layers import GELU
        return GELU(), np.random.default_rng(3).standard_normal((3, 4))

    def sinusoidal():
        from npdiff.nn.embeddings import SinusoidalEmbedding
        return SinusoidalEmbedding(4, 1.0, "float64"), np.random.default_rng(4).standard_normal((3, 2))

    def cross_entropy():
        from npdiff.nn.losses import SoftmaxCrossEntropy
        rng = np.random.default_rng(5)
        logits, labels, loss = rng.standard_normal((4, 3)), np.array([0, 2, 1, 2]), SoftmaxCrossEntropy()
        loss.forward(logits, labels)
        analytic = loss.backward()
        return gradcheck.worst(gradcheck.check(lambda: loss.forward(logits, labels), {"z": logits}, {"z": analytic}))

    def kl():
        from npdiff.processes import gaussian
        rng = np.random.default_rng(6)
        mean_q, log_var_q, mean_p, log_var_p, w = (rng.standard_normal((3, 2)) for _ in range(5))
        dmean, dlog_var = gaussian.kl_backward(mean_q, log_var_q, mean_p, log_var_p, w)
        return gradcheck.worst(gradcheck.check(
            lambda: float((w * gaussian.kl(mean_q, log_var_q, mean_p, log_var_p)).sum()),
            {"mean_p": mean_p, "log_var_p": log_var_p}, {"mean_p": dmean, "log_var_p": dlog_var}))

    def learned_range():
        from npdiff.processes import ddpm
        schedule, rng = npdiff.Schedule(10), np.random.default_rng(7)
        o, t, w = rng.standard_normal((3, 2)), np.array([1, 4, 9]), rng.standard_normal((3, 2))
        _, cache = ddpm.learned_range_log_var(schedule, o, t)
        analytic = ddpm.learned_range_log_var_backward(cache, w)
        return gradcheck.worst(gradcheck.check(
            lambda: float((w * ddpm.learned_range_log_var(schedule, o, t)[0]).sum()), {"o": o}, {"o": analytic}))

    def sohl_dickstein():
        from npdiff.processes import sohl_dickstein as sd
        schedule, rng = npdiff.Schedule(10), np.random.default_rng(8)
        out, x_t, t = rng.standard_normal((3, 4)), rng.standard_normal((3, 2)), np.array([2, 5, 10])
        w_mean, w_log_var = rng.standard_normal((3, 2)), rng.standard_normal((3, 2))
        _, _, cache = sd.reverse_kernel(schedule, out, x_t, t)
        analytic = sd.reverse_kernel_backward(cache, w_mean, w_log_var)

        def loss():
            mean, log_var, _ = sd.reverse_kernel(schedule, out, x_t, t)
            return float((w_mean * mean + w_log_var * log_var).sum())
        return gradcheck.worst(gradcheck.check(loss, {"out": out}, {"out": analytic}))

    def epsilon_objective():  # the whole model through L_simple: every parameter
        model = npdiff.Denoiser(2, hidden=4, n_blocks=1, emb_dim=4, dtype="float64", seed=0)
        objective, rng = npdiff.EpsilonObjective(npdiff.Schedule(10)), np.random.default_rng(9)
        x0, t, noise = rng.standard_normal((3, 2)), np.array([1, 5, 10]), rng.standard_normal((3, 2))
        model.zero_grad()
        objective.loss_and_backward(model, x0, t=t, noise=noise)
        analytic = {k: g.copy() for k, g in model.gradients().items()}
        return gradcheck.worst(gradcheck.check(lambda: objective.loss(model, x0, t=t, noise=noise),
                                               model.parameters(), analytic))

    runs = {"linear_accumulate": linear_accumulate, "layernorm": module_check(layernorm),
            "gelu": module_check(gelu), "sinusoidal": module_check(sinusoidal), "cross_entropy": cross_entropy,
            "kl": kl, "learned_range": learned_range, "sohl_dickstein": sohl_dickstein,
            "epsilon_objective": epsilon_objective}
    report = {"npdiff": npdiff.__file__}
    for name, run in runs.items():
        try:
            report[name] = float(run())
        except Exception as error:  # a check that cannot run (an API renamed) is reported, not fatal
            report[name] = f"{type(error).__name__}: {error}"
    return report


def broken_copy(folder: Path, file: str | None = None, old: str = "", new: str = "") -> Path:
    """A copy of the npdiff package under ``folder`` with ``old`` replaced by ``new`` once in ``file``."""
    shutil.copytree(ROOT / "npdiff", folder / "npdiff", ignore=shutil.ignore_patterns("__pycache__"))
    if file is not None:
        path = folder / file
        text = path.read_text(encoding="utf-8")
        count = text.count(old)
        assert count == 1, f"{file} holds {old!r} {count} times, not once: the exercise needs updating"
        path.write_text(text.replace(old, new), encoding="utf-8")
    return folder


def run_checks(folder: Path) -> dict:
    """``checks()`` in a fresh interpreter that imports npdiff from ``folder``."""
    env = dict(os.environ, PYTHONPATH=str(folder), OPENBLAS_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    env.pop("NPDIFF_BACKEND", None)
    run = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--checks"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert Path(report.pop("npdiff")).resolve().is_relative_to(folder.resolve()), "npdiff was not the copy's"
    return report


def test_every_check_passes_on_the_unbroken_package(tmp_path):
    report = run_checks(broken_copy(tmp_path))
    assert {check for *_, check in BREAKS.values()} <= set(report)
    bad = {name: error for name, error in report.items() if not (isinstance(error, float) and error < PASS_BELOW)}
    assert not bad, bad


@pytest.mark.parametrize("name", list(BREAKS))
def test_each_break_makes_its_gradient_check_fail(name, tmp_path):
    file, old, new, check = BREAKS[name]
    report = run_checks(broken_copy(tmp_path, file, old, new))
    assert isinstance(report[check], float), f"{check}: {report[check]}"
    assert report[check] > FAIL_ABOVE, f"{name}: {check} still passes with relative error {report[check]:.2e}"
    row = documented_rows().get(name)
    assert row is not None, f"docs/reading-order.md's exercise table has no row for {name!r}"
    assert row[1:5] == [f"`{file}`", f"`{old}`", f"`{new}`", check], f"the docs' row is not this break: {row}"
    documented = float(row[5])
    assert report[check] == pytest.approx(documented, rel=0.05, abs=0.006), (
        f"{name}: the docs give {documented}, the check measures {report[check]:.2g} "
        "(`python tests/test_exercises.py` prints the table)")


def table(folder: Path) -> str:
    """The exercises' table of docs/reading-order.md: each break, where, the replacement, the check it turns red
    and the relative error it produces there."""
    rows = ["| break | file | the line … | … broken | check | relative error |", "|---|---|---|---|---|---|"]
    for name, (file, old, new, check) in BREAKS.items():
        target = folder / f"break{len(rows)}"
        error = run_checks(broken_copy(target, file, old, new))[check]
        error = f"{error:.2g}" if isinstance(error, float) else error
        rows.append(f"| {name} | `{file}` | `{old}` | `{new}` | {check} | {error} |")
    return "\n".join(rows)


def documented_rows() -> dict:
    """{break: its row's cells} of the exercise table in docs/reading-order.md."""
    text = (ROOT / "docs" / "reading-order.md").read_text(encoding="utf-8")
    rows = ([cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in text.splitlines() if line.startswith("| "))
    return {cells[0]: cells for cells in rows if cells[0] in BREAKS}


if __name__ == "__main__":
    if sys.argv[1:] == ["--checks"]:
        print(json.dumps(checks()))
    else:
        import tempfile
        with tempfile.TemporaryDirectory() as scratch:
            print(table(Path(scratch)))
