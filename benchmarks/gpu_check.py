"""The prepared GPU check: npdiff on CuPy, tested and measured in one command of under five minutes.

    PYTHONPATH=. python3 benchmarks/gpu_check.py --out DIR            # a machine with an NVIDIA GPU, CuPy >= 14
    python benchmarks/gpu_check.py --out DIR --double --quick         # a rehearsal on a CPU (see below)

Parts, each recorded even when another fails:

  tests       the ``gpu``-marked tests (``pytest -m gpu tests/``): the end-to-end paths of
              tests/test_cupy_double.py on the real CuPy, float64 agreement with NumPy included; the log is
              DIR/gpu_tests.log
  train_step  benchmarks/train_step.py, seed-heart and tiny-diffusion: npdiff on CuPy against PyTorch on
              CUDA, float32, in the same process, alternating blocks of steps, as on the CPU
  agreement   one training step (ε loss, clipping, AdamW) of the same model on the same batch, noise and
              timesteps on NumPy (CPU) and on CuPy (GPU): relative differences of the loss, the gradient and
              the weights; float64 must agree to 1e-10, the float32 figure is reported
  mnist       the seed tutorial's MNIST configuration (784 → 2048 wide MLP, 5 pre-LN residual blocks, time
              embedding 100, batch 128, T = 1000; synthetic pixels, as speed does not depend on them): steps
              per second of ``train.fit`` and the projected time of the seed's 200 epochs of 60,000 images,
              beside the seed's "within 3 minutes in gpu"

Writes DIR/gpu_check.json (every figure, written after each part) and DIR/gpu_check.md (the summary for
docs/performance.md), and prints the summary. Exit status: 0 every part ran and float64 agreed; 1 a part
failed; 2 no GPU: nothing was measured (the message says why: CuPy missing, older than 14, no device).

``--double`` installs tests/strict_cupy.py as ``cupy`` and runs every part on the CPU through the same code,
so the script can be checked where there is no GPU; its timings are not GPU figures and its "agreement"
compares NumPy with NumPy. ``--quick`` shortens the runs and narrows the MNIST model (for rehearsals).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import numpy as np  # noqa: E402

from npdiff import backend, data
from npdiff.processes import ddpm
from npdiff.training import train  # noqa: E402
from npdiff.nn.denoiser import Denoiser  # noqa: E402
from npdiff.nn.optim import AdamW  # noqa: E402
from npdiff.processes.schedules import Schedule  # noqa: E402

PARTS = ("tests", "train_step", "agreement", "mnist")
MNIST = dict(data_dim=784, hidden=2048, n_blocks=5, emb_dim=100, embed_coords=False, layernorm=True,
             final_layernorm=True, activation="gelu", dtype="float32")
MNIST_QUICK = dict(MNIST, hidden=128, n_blocks=1)
MNIST_IMAGES, MNIST_BATCH, MNIST_T, SEED_EPOCHS, SEED_SECONDS = 60_000, 128, 1000, 200, 180.0
FLOAT64_TOLERANCE = 1e-10


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="gpu_check", help="folder for gpu_check.json, gpu_check.md, gpu_tests.log")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    p.add_argument("--double", action="store_true",
                   help="rehearse on a CPU with tests/strict_cupy.py in place of CuPy (timings mean nothing)")
    p.add_argument("--quick", action="store_true", help="short runs and a narrow MNIST model (rehearsals)")
    args = p.parse_args(argv)
    args.parts = [part.strip() for part in args.parts.split(",") if part.strip()]
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        p.error(f"unknown part(s) {sorted(unknown)}; choose from {', '.join(PARTS)}")
    return args


def sync() -> None:
    backend.xp.cuda.Device().synchronize()


# ---- the parts ----------------------------------------------------------------------------------------

def environment(xp, double: bool) -> dict:
    env = {"date": datetime.date.today().isoformat(), "python": platform.python_version(),
           "numpy": np.__version__, "cupy": getattr(xp, "__version__", "?"),
           "backend": "tests/strict_cupy.py (CPU rehearsal)" if double else "cupy", "cpu": platform.processor()}
    try:
        props = xp.cuda.runtime.getDeviceProperties(0)
        env["device"] = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        env["device_memory_gib"] = round(props["totalGlobalMem"] / 2**30, 1)
    except Exception as exc:  # the double has no device properties
        env["device"] = f"none ({type(exc).__name__})" if double else f"unknown: {exc}"
    try:
        import torch

        env["torch"] = torch.__version__
        env["torch_cuda"] = bool(torch.cuda.is_available())
    except ImportError:
        env["torch"] = None
    return env


def run_gpu_tests(args) -> dict:
    """``pytest -m gpu tests/`` in a fresh process; its whole output goes to DIR/gpu_tests.log."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])),
               MPLBACKEND="Agg")
    env.pop("NPDIFF_BACKEND", None)
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "-rs", "tests"]
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=200)
    with open(os.path.join(args.out, "gpu_tests.log"), "w") as f:
        f.write(run.stdout + run.stderr)
    lines = run.stdout.strip().splitlines()
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error|errors|deselected|xfailed)",
                                               lines[-1] if lines else "")}
    ran = counts.get("passed", 0) > 0 or args.double  # in a rehearsal there is no CuPy: they all skip
    return {"command": " ".join(cmd), "returncode": run.returncode, "summary": lines[-1] if lines else "",
            "counts": counts, "ok": run.returncode == 0 and ran}


def run_train_step(args) -> dict:
    """benchmarks/train_step.py in this process (CuPy selected, PyTorch on CUDA where it has it)."""
    import train_step

    path = os.path.join(args.out, "train_step.json")
    argv = ["--json", path] + (["--steps", "40", "--sample-points", "100"] if args.quick else ["--steps", "1000"])
    results = train_step.main(argv)
    return {"configs": results, "ok": all(r.get("npdiff_ms") for r in results)}


class GivenDraws:
    """The ε objective with given timesteps and noise: the same draws on both devices."""

    def __init__(self, schedule, t, noise) -> None:
        self.objective, self.t, self.noise = ddpm.EpsilonObjective(schedule), t, noise

    def loss_and_backward(self, model, x0, rng):
        return self.objective.loss_and_backward(model, x0, t=self.t, noise=self.noise)


def one_step(cfg: dict, dtype: str, seed: int = 0) -> dict:
    """One train step on NumPy and on the device from the same weights and draws: relative differences."""
    import train_step

    schedule, rng, n = Schedule(cfg["T"]), np.random.default_rng(seed), cfg["batch"]
    x0, t, noise = data.heart(n, rng), rng.integers(1, cfg["T"] + 1, size=n), rng.standard_normal((n, 2))
    config = dict(train_step.COMMON, **cfg["model"], dtype=dtype)
    out, start = {}, None
    for name in ("numpy", "cupy"):
        backend.set_backend(name)
        model = Denoiser(**config)
        if start is None:
            start = backend.to_numpy(model.flat_params).copy()
        model.flat_params[...] = backend.asarray(start)  # the generators differ between the backends
        loss, norm = train.train_step(model, GivenDraws(schedule, t, noise), x0, None, AdamW(model, lr=train_step.LR),
                                      clip=cfg["clip"])
        out[name] = dict(loss=loss, norm=norm, grad=backend.to_numpy(model.flat_grads).astype(np.float64),
                         weights=backend.to_numpy(model.flat_params).astype(np.float64))
    cpu, gpu = out["numpy"], out["cupy"]

    def rel(a, b):
        return float(np.linalg.norm(np.asarray(a) - b) / max(np.linalg.norm(b), 1e-300))

    return {"loss": rel(gpu["loss"], cpu["loss"]), "grad_norm": rel(gpu["norm"], cpu["norm"]),
            "gradient": rel(gpu["grad"], cpu["grad"]), "weights": rel(gpu["weights"], cpu["weights"]),
            "update": rel(gpu["weights"] - start, cpu["weights"] - start)}


def run_agreement(args) -> dict:
    import train_step

    out = {}
    for name, cfg in train_step.CONFIGS.items():
        for dtype in ("float64", "float32"):
            out[f"{name} {dtype}"] = one_step(cfg, dtype)
    backend.set_backend("cupy")
    worst64 = max(max(v["loss"], v["gradient"], v["weights"]) for k, v in out.items() if k.endswith("float64"))
    return {"steps": out, "worst_float64": worst64, "tolerance": FLOAT64_TOLERANCE, "ok": worst64 <= FLOAT64_TOLERANCE}


def run_mnist(args) -> dict:
    """Steps per second of ``train.fit`` on the seed's MNIST configuration, and the 200-epoch projection."""
    config = MNIST_QUICK if args.quick else MNIST
    warmup, timed = (3, 10) if args.quick else (30, 300)
    images = 4 * MNIST_BATCH if args.quick else MNIST_IMAGES
    x = np.random.default_rng(0).uniform(-1, 1, (images, config["data_dim"])).astype(np.float32)
    model = Denoiser(**config)
    objective, optimizer = ddpm.EpsilonObjective(Schedule(MNIST_T)), AdamW(model, lr=2e-4)
    fit = dict(batch_size=MNIST_BATCH, optimizer=optimizer, rng=backend.default_rng(0), clip=1.0, progress=False)
    train.fit(model, x, objective, steps=warmup, **fit)  # kernels compiled, the memory pool filled
    sync()
    history = train.fit(model, x, objective, steps=timed, **fit)  # its clock ends after the last read-back
    rate = timed / history.seconds
    steps_per_epoch = MNIST_IMAGES // MNIST_BATCH  # npdiff's batches drop the partial one
    projected = SEED_EPOCHS * steps_per_epoch / rate
    return {"config": config, "batch_size": MNIST_BATCH, "T": MNIST_T, "parameters": int(model.flat_params.size),
            "timed_steps": timed, "steps_per_s": rate, "ms_per_step": 1e3 / rate,
            "epochs": SEED_EPOCHS, "steps_per_epoch": steps_per_epoch, "projected_s": projected,
            "seed_claim_s": SEED_SECONDS, "ok": bool(np.isfinite(history.loss).all())}


# ---- the report -------------------------------------------------------------------------------------

def summary(results: dict) -> str:
    if "error" in results:
        return f"# GPU check: not run\n\n{results['error']}\n"
    env = results.get("environment", {})
    lines = [f"# GPU check, {env.get('date', '?')}", ""]
    if results.get("double"):
        lines += ["**Rehearsal on a CPU with tests/strict_cupy.py: no figure below is a GPU measurement.**", ""]
    lines.append(f"Machine: {env.get('device')}; CuPy {env.get('cupy')}, NumPy {env.get('numpy')}, "
                 f"PyTorch {env.get('torch')} (CUDA: {env.get('torch_cuda')}), Python {env.get('python')}.")
    tests = results.get("tests")
    if tests:
        lines.append(f"\n* gpu-marked tests: {tests.get('summary') or tests.get('error', '?').splitlines()[-1]}")
    steps = results.get("train_step")
    for r in (steps or {}).get("configs", []):
        torch_ms = f"{r['torch_ms']:.3f} ms" if r.get("torch_ms") else "n/a"
        ratio = f"{r['ratio']:.2f}×" if r.get("ratio") else "n/a"
        lines.append(f"* train step, {r['name']}: npdiff (CuPy) {r['npdiff_ms']:.3f} ms, PyTorch {torch_ms}, "
                     f"ratio PyTorch/npdiff {ratio}")
    agreement = results.get("agreement")
    if agreement and "steps" in agreement:
        for name, v in agreement["steps"].items():
            lines.append(f"* one step NumPy-CPU vs device, {name}: relative difference loss {v['loss']:.1e}, "
                         f"gradient {v['gradient']:.1e}, weights {v['weights']:.1e}, update {v['update']:.1e}")
        verdict = "holds" if agreement["ok"] else "FAILS"
        lines.append(f"* float64 agreement ≤ {agreement['tolerance']:.0e}: {verdict} "
                     f"(worst {agreement['worst_float64']:.1e})")
    mnist = results.get("mnist")
    if mnist and "steps_per_s" in mnist:
        lines.append(f"* seed MNIST configuration ({mnist['parameters']:,} parameters, batch {mnist['batch_size']}, "
                     f"T = {mnist['T']}): {mnist['steps_per_s']:.1f} steps/s ({mnist['ms_per_step']:.2f} ms/step); "
                     f"{mnist['epochs']} epochs of {mnist['steps_per_epoch']} steps: "
                     f"{mnist['projected_s'] / 60:.1f} min projected, against the seed's "
                     f"\"within {mnist['seed_claim_s'] / 60:.0f} minutes\"")
    for part in PARTS:
        if isinstance(results.get(part), dict) and "error" in results[part]:
            lines.append(f"* {part} FAILED: {results[part]['error'].strip().splitlines()[-1]}")
    lines.append(f"\nTotal {results.get('seconds', 0):.0f} s.")
    return "\n".join(lines) + "\n"


def write(args, results: dict) -> None:
    with open(os.path.join(args.out, "gpu_check.json"), "w") as f:
        json.dump(results, f, indent=2, default=float)
    with open(os.path.join(args.out, "gpu_check.md"), "w") as f:
        f.write(summary(results))


def main(argv=None) -> int:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    start = time.perf_counter()
    results = {"double": args.double, "parts": args.parts}
    if args.double:
        sys.path.insert(0, os.path.join(ROOT, "tests"))
        import strict_cupy

        sys.modules["cupy"] = strict_cupy
    try:
        xp = backend.set_backend("cupy")
    except RuntimeError as err:
        results["error"] = f"no GPU to check: {err}"
        write(args, results)
        print(f"gpu_check: {results['error']}", file=sys.stderr)
        return 2
    results["environment"] = environment(xp, args.double)
    runners = {"tests": run_gpu_tests, "train_step": run_train_step, "agreement": run_agreement, "mnist": run_mnist}
    ok = True
    for part in args.parts:
        part_start = time.perf_counter()
        print(f"gpu_check: {part} …", flush=True)
        try:
            results[part] = runners[part](args)
        except Exception:  # one part failing must not lose the others' figures
            results[part] = {"error": traceback.format_exc(), "ok": False}
        finally:
            backend.set_backend("cupy")
        results[part]["seconds"] = time.perf_counter() - part_start
        ok = ok and results[part]["ok"]
        results["seconds"] = time.perf_counter() - start
        write(args, results)
    print(summary(results))
    print(f"gpu_check: results in {os.path.abspath(args.out)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
