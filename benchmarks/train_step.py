"""Train-step speed of npdiff against PyTorch eager, same model, same step, same process.

    python benchmarks/train_step.py [--config seed-heart|tiny-diffusion|all] [--json FILE]
    NPDIFF_BACKEND=cupy python benchmarks/train_step.py      # GPU (CuPy; torch on CUDA if it has it)

Configurations (DDPM ε-prediction, float32, AdamW lr 1e-3, linear β schedule 1e-4..0.02):
  seed-heart      batch 32, embedding 32 (coords ×25, t ×1), width 32, 1 pre-LayerNorm residual block
                  + final LayerNorm, GELU, T = 200, gradient clipping at 1.0
  tiny-diffusion  batch 1000, embedding 128, width 128, 3 residual blocks without LayerNorm, GELU, T = 50

One train step = draw t and ε, q_sample, forward, MSE ε-loss, backward, clip, AdamW step: for npdiff
the library's own path (``train.train_step`` + ``ddpm.EpsilonObjective``), for PyTorch the same model
(``torch_reference.py``, weights copied) and step in eager mode. Both run in one process, float32, after
a warm-up, alternating in blocks of steps; the medians are printed with the ratio PyTorch/npdiff (> 1:
npdiff is faster). Threads: PyTorch and NumPy's BLAS both get ``--threads`` (default 2; NumPy's through
threadpoolctl when it is installed, else its BLAS default, which is printed). Also printed: sampling
throughput (points × steps per second, ancestral DDPM, 1000 points) and the train step's achieved matmul
GFLOP/s beside the BLAS's own float32 rate on exactly the same matrix shapes, with no Python in between.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

from npdiff import backend, data
from npdiff.processes import ddpm, sampling
from npdiff.training import train  # noqa: E402
from npdiff.nn.layers import Linear  # noqa: E402
from npdiff.nn.denoiser import Denoiser  # noqa: E402
from npdiff.nn.optim import AdamW  # noqa: E402
from npdiff.processes.schedules import Schedule  # noqa: E402

CONFIGS = {
    "seed-heart": dict(batch=32, T=200, clip=1.0, steps=3000, warmup=300, block=200,
                       model=dict(hidden=32, n_blocks=1, emb_dim=32, layernorm=True, final_layernorm=True)),
    "tiny-diffusion": dict(batch=1000, T=50, clip=None, steps=300, warmup=30, block=30,
                           model=dict(hidden=128, n_blocks=3, emb_dim=128, layernorm=False, final_layernorm=False)),
}
COMMON = dict(data_dim=2, coord_scale=25.0, time_scale=1.0, activation="gelu", dtype="float32", seed=0)
LR = 1e-3
# wall clock by default; ``--clock cpu`` (with ``--threads 1``) counts only this thread's CPU time, which
# other processes competing for the cores do not inflate
CLOCK = [time.perf_counter]


def sync() -> None:
    """Wait for the GPU (CuPy) so that a timer measures finished work; a no-op on NumPy."""
    if backend.name == "cupy":
        backend.xp.cuda.Device().synchronize()


class NpdiffDDPM:
    """npdiff's own DDPM code path: ``train.train_step`` with ``ddpm.EpsilonObjective``, and
    ``sampling.sample``, exactly what ``train.fit`` and the demos run."""

    def __init__(self, cfg: dict, schedule: Schedule) -> None:
        self.model = Denoiser(**COMMON, **cfg["model"])
        self.opt = AdamW(self.model, lr=LR)
        self.schedule, self.clip = schedule, cfg["clip"]
        self.objective = ddpm.EpsilonObjective(schedule)
        self.rng = backend.default_rng(1)

    def train_step(self, x0):
        return train.train_step(self.model, self.objective, x0, self.rng, self.opt, clip=self.clip)

    def sample(self, n: int, dim: int):
        return sampling.sample(ddpm.EpsilonChain(self.model, self.schedule), n, self.rng)


def matmul_shapes(model, n: int) -> list[tuple[int, int, int]]:
    """(m, k, n) of every matmul a train step needs: per Linear x·W, xᵀ·dy and dy·Wᵀ, except the
    first layer's dy·Wᵀ (training needs no gradient with respect to the embedded input). These are the
    model's products as written; the Denoiser's per-timestep route does fewer at batch 1000."""
    shapes = []
    for j, layer in enumerate(_linears(model)):
        i, h = layer.params["W"].shape
        shapes += [(n, i, h), (i, n, h)] + ([(n, h, i)] if j else [])
    return shapes


def _linears(module):
    if isinstance(module, Linear):
        yield module
    for _, child in module.children():
        yield from _linears(child)


def numpy_matmul_rate(shapes, repeats: int = 200) -> float:
    """GFLOP/s of xp.matmul alone on the given shapes, preallocated operands and outputs."""
    xp = backend.xp
    ops = [(xp.ones((m, k), "float32"), xp.ones((k, n), "float32"), xp.empty((m, n), "float32"))
           for m, k, n in shapes]
    flops = sum(2 * m * k * n for m, k, n in shapes)
    times = []
    for _ in range(repeats):
        sync()
        start = CLOCK[0]()
        for a, b, c in ops:
            xp.matmul(a, b, out=c)
        sync()
        times.append(CLOCK[0]() - start)
    return flops / statistics.median(times) / 1e9


def timed(fn, *args) -> float:
    sync()
    start = CLOCK[0]()
    fn(*args)
    sync()
    return CLOCK[0]() - start


def run_blocks(steps: dict, batches: dict, n_steps: int, warmup: int, block: int) -> dict:
    """Median seconds per step of each library, run alternately in blocks of ``block`` steps.

    Blocks rather than single steps: after a library stops, its BLAS/OpenMP worker threads spin for a
    few milliseconds and slow whoever runs next, so the first tenth of every block is not counted.
    """
    times = {name: [] for name in steps}
    for name, step in steps.items():
        for k in range(warmup):
            step(batches[name][k % len(batches[name])])
    skip = max(1, block // 10)
    for r in range(-(-n_steps // (block - skip))):
        for name in (list(steps) if r % 2 == 0 else list(steps)[::-1]):
            step, data_ = steps[name], batches[name]
            for k in range(block):
                dt = timed(step, data_[(r * block + k) % len(data_)])
                if k >= skip:
                    times[name].append(dt)
    return {name: statistics.median(t[:n_steps]) for name, t in times.items()}


def run_config(name: str, cfg: dict, args, torch_side) -> dict:
    schedule = Schedule(cfg["T"], "linear")
    npd = NpdiffDDPM(cfg, schedule)
    n = cfg["batch"]
    points = data.heart(max(n * 64, 4096), np.random.default_rng(0)).astype("float32")
    host_batches = [points[i:i + n] for i in range(0, len(points) - n + 1, n)]
    steps = {"npdiff": npd.train_step}
    batches = {"npdiff": [backend.asarray(b) for b in host_batches]}
    trt = None
    if torch_side is not None:
        torch, tr = torch_side
        tmodel = tr.Denoiser(**{k: COMMON[k] for k in ("data_dim", "coord_scale", "time_scale")}, **cfg["model"])
        tmodel.load_from(npd.model)
        trt = tr.TorchDDPM(tmodel, schedule, LR, cfg["clip"], device=args.torch_device)
        steps["torch"] = lambda x0: _torch_step(trt, x0, args.torch_device, torch)
        batches["torch"] = [torch.from_numpy(b).to(args.torch_device) for b in host_batches]
    medians = run_blocks(steps, batches, args.steps or cfg["steps"], cfg["warmup"], cfg["block"])
    res = {"name": name, "npdiff_ms": 1e3 * medians["npdiff"],
           "torch_ms": 1e3 * medians["torch"] if "torch" in medians else None}
    res["ratio"] = res["torch_ms"] / res["npdiff_ms"] if res["torch_ms"] else None
    shapes = matmul_shapes(npd.model, n)
    res["train_gflops"] = sum(2 * a * b * c for a, b, c in shapes) / medians["npdiff"] / 1e9
    res["numpy_matmul_gflops"] = numpy_matmul_rate(shapes)
    ns = args.sample_points
    npd.sample(ns, 2)
    res["npdiff_sample_pts_steps_per_s"] = ns * cfg["T"] / min(timed(npd.sample, ns, 2) for _ in range(3))
    if trt is not None:
        trt.sample(ns, 2)
        res["torch_sample_pts_steps_per_s"] = ns * cfg["T"] / min(timed(trt.sample, ns, 2) for _ in range(3))
    return res


def _torch_step(trt, x0, device, torch):
    trt.train_step(x0)
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def load_torch(args):
    if args.no_torch:
        return None
    try:
        import torch
        import torch_reference as tr
    except ImportError as exc:
        print(f"PyTorch not importable ({exc}); timing npdiff alone", flush=True)
        return None
    torch.set_num_threads(args.threads)
    if args.torch_device == "auto":
        args.torch_device = "cuda" if backend.name == "cupy" and torch.cuda.is_available() else "cpu"
    return torch, tr


def blas_info() -> str:
    try:
        from threadpoolctl import threadpool_info
        return "; ".join(f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')} "
                         f"threads={i.get('num_threads')}" for i in threadpool_info() if i["user_api"] == "blas")
    except ImportError:
        return "threadpoolctl not installed"


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="all", choices=["all", *CONFIGS])
    parser.add_argument("--steps", type=int, default=0, help="timed steps per library (default per config)")
    parser.add_argument("--threads", type=int, default=2, help="threads of PyTorch and of NumPy's BLAS")
    parser.add_argument("--sample-points", type=int, default=1000, help="points per sampling run")
    parser.add_argument("--torch-device", default="auto", help="cpu, cuda, or auto (cuda with CuPy)")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: this thread's CPU time, for a busy machine (needs --threads 1)")
    parser.add_argument("--json", help="write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.clock == "cpu" and (args.threads != 1 or backend.name != "numpy"):
        parser.error("--clock cpu measures one thread's CPU time: use it with --threads 1 on NumPy")
    CLOCK[0] = time.thread_time if args.clock == "cpu" else time.perf_counter
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    torch_side = load_torch(args)
    with contextlib.ExitStack() as stack:
        try:
            from threadpoolctl import threadpool_limits
            stack.enter_context(threadpool_limits(args.threads, user_api="blas"))  # restored on exit
        except ImportError:
            if args.clock == "cpu" and os.environ.get("OPENBLAS_NUM_THREADS") != "1":
                parser.error("--clock cpu needs threadpoolctl installed or OPENBLAS_NUM_THREADS=1")
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus; python "
              f"{platform.python_version()}; numpy {np.__version__}; backend {backend.name}; BLAS: {blas_info()}")
        env = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS",
                                          "OMP_NUM_THREADS") if k in os.environ}
        print(f"env: {env or 'no BLAS variables set'}; clock: {args.clock}")
        if torch_side:
            torch = torch_side[0]
            print(f"torch {torch.__version__} on {args.torch_device}, {torch.get_num_threads()} threads")
        results = []
        for name in CONFIGS if args.config == "all" else [args.config]:
            results.append(run_config(name, CONFIGS[name], args, torch_side))
            report(results[-1])
    CLOCK[0] = time.perf_counter
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return results


def report(r: dict) -> None:
    torch_ms = f"{r['torch_ms']:.3f} ms" if r["torch_ms"] else "n/a"
    ratio = f"{r['ratio']:.2f}x" if r["ratio"] else "n/a"
    print(f"\n[{r['name']}] median train step: npdiff {r['npdiff_ms']:.3f} ms, PyTorch {torch_ms}, "
          f"ratio PyTorch/npdiff {ratio}")
    print(f"  sampling (points x steps / s): npdiff {r['npdiff_sample_pts_steps_per_s']:.3g}"
          + (f", PyTorch {r['torch_sample_pts_steps_per_s']:.3g}" if "torch_sample_pts_steps_per_s" in r else ""))
    print(f"  train-step matmul GFLOP/s: npdiff {r['train_gflops']:.2f} vs {backend.name} matmul alone "
          f"{r['numpy_matmul_gflops']:.2f} at the same shapes", flush=True)

if __name__ == "__main__":
    main()
