"""Train-step speed of npdiff against PyTorch eager, same model, same step, same process.

    python benchmarks/train_step.py [--config seed-heart|tiny-diffusion|image|all] [--json FILE]
    NPDIFF_BACKEND=cupy python benchmarks/train_step.py      # GPU (CuPy; torch on CUDA if it has it)

Configurations (float32, AdamW, linear β schedule 1e-4..0.02):
  seed-heart      2-D, ε-prediction, batch 32, embedding 32 (coords ×25, t ×1), width 32, 1 pre-LayerNorm
                  residual block + final LayerNorm, GELU, T = 200, gradient clipping at 1.0, lr 1e-3
  tiny-diffusion  2-D, ε-prediction, batch 1000, embedding 128, width 128, 3 residual blocks without
                  LayerNorm, GELU, T = 50, lr 1e-3
  image           the image demo's model (demos/mnist.py): 784 pixels in, time embedding 128, width 512,
                  3 pre-LayerNorm blocks + final LayerNorm, 10 class labels (20 % dropped), x_0-prediction,
                  batch 128, T = 1000, clipping at 1.0, AdamW lr 2e-3 without weight decay, EMA 0.999
                  (1.67 M parameters); random pixels in [−1, 1] (the data's values do not change the time)

One train step = draw t and ε (and drop labels), q_sample, forward, MSE loss, backward, clip, AdamW step
(and the EMA): for npdiff the library's own path (``train.train_step`` + ``ddpm.EpsilonObjective``, as
``fit`` calls it), for PyTorch the same model (``torch_reference.py``, weights copied) and step in eager
mode, and the floor: the step's matrix products alone on preallocated operands. All run in one process,
float32, after a warm-up, alternating in blocks of steps; the medians are printed with the ratio
PyTorch/npdiff (> 1: npdiff is faster) and npdiff/floor. Threads: PyTorch, NumPy's BLAS and npdiff's
blockwise updates (``primitives.set_threads``; ``--block-threads`` sets them apart) all get ``--threads``
(default 2; NumPy's BLAS through threadpoolctl when it is installed, else its BLAS default, which is printed). Also printed: where the npdiff
step's time goes (``--parts``, on by default for the image configuration), sampling throughput (2-D:
points × steps per second, ancestral, 1000 points; image: images per second, guided DDIM, 50 steps, w =
0.25, 2N rows per step, PyTorch under no_grad) and the step's achieved matmul GFLOP/s beside the BLAS's own.
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

from npdiff import backend, data  # noqa: E402
from npdiff.nn import primitives  # noqa: E402
from npdiff.nn.denoiser import Denoiser  # noqa: E402
from npdiff.nn.layers import Linear  # noqa: E402
from npdiff.nn.optim import EMA, AdamW  # noqa: E402
from npdiff.processes import ddpm, sampling  # noqa: E402
from npdiff.processes.schedules import Schedule  # noqa: E402
from npdiff.training import train  # noqa: E402

CONFIGS = {
    "seed-heart": dict(batch=32, T=200, clip=1.0, steps=3000, warmup=300, block=200,
                       model=dict(hidden=32, n_blocks=1, emb_dim=32, layernorm=True, final_layernorm=True)),
    "tiny-diffusion": dict(batch=1000, T=50, clip=None, steps=300, warmup=30, block=30,
                           model=dict(hidden=128, n_blocks=3, emb_dim=128, layernorm=False, final_layernorm=False)),
}
IMAGE_CONFIGS = {  # the 2-D ones above are also ``gpu_check.py``'s agreement checks
    "image": dict(batch=128, T=1000, clip=1.0, steps=300, warmup=20, block=100, data_dim=784, prediction="x0",
                  num_classes=10, label_dropout=0.2, ema=0.999, lr=2e-3, weight_decay=0.0, parts=True,
                  model=dict(hidden=512, n_blocks=3, emb_dim=128, layernorm=True, final_layernorm=True,
                             embed_coords=False),
                  sample=dict(images=64, ddim_steps=50, guidance=0.25)),
}
ALL_CONFIGS = {**CONFIGS, **IMAGE_CONFIGS}
COMMON = dict(data_dim=2, coord_scale=25.0, time_scale=1.0, activation="gelu", dtype="float32", seed=0)
LR = 1e-3
# wall clock by default; ``--clock cpu`` (with ``--threads 1``) counts only this thread's CPU time, which
# other processes competing for the cores do not inflate
CLOCK = [time.perf_counter]
OPTIMIZER_PART = "clipping's scale, AdamW and the EMA (one pass)"


def sync() -> None:
    """Wait for the GPU (CuPy) so that a timer measures finished work; a no-op on NumPy."""
    if backend.name == "cupy":
        backend.xp.cuda.Device().synchronize()


class NpdiffDDPM:
    """npdiff's own DDPM code path: ``train.train_step`` with ``ddpm.EpsilonObjective``, and
    ``sampling.sample``, exactly what ``train.fit`` and the demos run."""

    def __init__(self, cfg: dict, schedule: Schedule) -> None:
        self.model = Denoiser(**{**COMMON, "data_dim": cfg.get("data_dim", 2)}, num_classes=cfg.get("num_classes"),
                              **cfg["model"])
        self.lr = cfg.get("lr", LR)
        self.opt = AdamW(self.model, lr=self.lr, weight_decay=cfg.get("weight_decay", 0.01))
        self.ema = EMA(self.model, cfg["ema"]) if cfg.get("ema") else None
        self.schedule, self.clip = schedule, cfg["clip"]
        self.objective = ddpm.EpsilonObjective(schedule, cfg.get("prediction", "eps"),
                                               label_dropout=cfg.get("label_dropout", 0.0))
        self.rng = backend.default_rng(1)

    def train_step(self, x0, y=None):
        """One step as ``fit`` takes it (``check=False``: the loss stays an array, read back in blocks)."""
        return train.train_step(self.model, self.objective, x0, self.rng, self.opt, y=y, clip=self.clip,
                                ema=self.ema, check=False)

    def sample(self, n: int, dim: int):
        return sampling.sample(ddpm.EpsilonChain(self.model, self.schedule), n, self.rng)

    def sample_ddim(self, labels, ddim_steps: int, guidance: float):
        chain = ddpm.EpsilonChain(self.model, self.schedule, clip_x0=(-1.0, 1.0),
                                  prediction=self.objective.prediction, labels=labels, guidance=guidance)
        return sampling.sample(chain, labels.shape[0], self.rng, sampler="ddim", ddim_steps=ddim_steps)


class MatmulFloor:
    """The step's matrix products alone (``matmul_shapes``), on preallocated float32 operands and outputs."""

    def __init__(self, shapes) -> None:
        xp = backend.xp
        self.ops = [(xp.ones((m, k), "float32"), xp.ones((k, n), "float32"), xp.empty((m, n), "float32"))
                    for m, k, n in shapes]

    def __call__(self, *_) -> None:
        matmul = backend.xp.matmul
        for a, b, c in self.ops:
            matmul(a, b, out=c)


def matmul_shapes(model, n: int, which: str = "all") -> list[tuple[int, int, int]]:
    """(m, k, n) of every matmul a train step needs: per Linear x·W (forward), xᵀ·dy and dy·Wᵀ (backward),
    except the first layer's dy·Wᵀ (training needs no gradient with respect to the embedded input).
    which: "all", "forward" or "backward". These are the model's products as written; the Denoiser's
    per-timestep route does fewer at batch 1000."""
    shapes = []
    for j, layer in enumerate(_linears(model)):
        i, h = layer.params["W"].shape
        forward, backward = [(n, i, h)], [(i, n, h)] + ([(n, h, i)] if j else [])
        shapes += {"all": forward + backward, "forward": forward, "backward": backward}[which]
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
            step(*batches[name][k % len(batches[name])])
    skip = max(1, block // 10)
    for r in range(-(-n_steps // (block - skip))):
        for name in (list(steps) if r % 2 == 0 else list(steps)[::-1]):
            step, data_ = steps[name], batches[name]
            for k in range(block):
                dt = timed(step, *data_[(r * block + k) % len(data_)])
                if k >= skip:
                    times[name].append(dt)
    return {name: statistics.median(t[:n_steps]) for name, t in times.items()}


def npdiff_parts(npd: NpdiffDDPM, batches: list, n_steps: int) -> dict:
    """Median ms per part of the npdiff step, from the library's own step with its public pieces timed:
    ``model.zero_grad``, ``model.forward``, ``model.backward``, ``opt.step``, ``ema.update``; ‖g‖ and clipping
    (``optim.grad_norm``, ``optim.clip_grad_norm``) timed beside it on the same gradient, and the rest of
    the step (drawing t, ε and the dropped labels, q_sample, the loss) as the remainder. The products of the
    forward and of the backward pass are timed alone on the same shapes in the same iteration, so that
    "elementwise" is the pass's time less its products."""
    from npdiff.nn.optim import clip_grad_norm, grad_norm
    model, clock = npd.model, CLOCK[0]
    n = batches[0][0].shape[0]
    floors = {"forward": MatmulFloor(matmul_shapes(model, n, "forward")),
              "backward": MatmulFloor(matmul_shapes(model, n, "backward"))}
    spent: dict = {}

    def timer(name, fn):
        def wrapped(*args, **kwargs):
            sync()
            start = clock()
            out = fn(*args, **kwargs)
            sync()
            spent[name] = spent.get(name, 0.0) + clock() - start
            return out
        return wrapped

    pieces = [(model, "zero_grad", "zero_grad"), (model, "forward", "forward"), (model, "backward", "backward"),
              (npd.opt, "step", "optimizer")]  # the step takes clipping's scale and the EMA in the optimizer's pass
    spare = None if npd.ema is None else npd.ema.shadow.copy()  # the EMA as a pass of its own, timed beside
    for obj, attr, name in pieces:
        setattr(obj, attr, timer(name, getattr(obj, attr)))
    rows = []
    try:
        for k in range(n_steps + 10):
            spent.clear()
            total = timed(npd.train_step, *batches[k % len(batches)])
            g = npd.opt.grads
            norm_s = timed(lambda: clip_grad_norm(g, float("inf"), grad_norm(g)))
            floor = {name: timed(f) for name, f in floors.items()}
            if spare is not None:
                spent["EMA_alone"] = timed(primitives.blockwise, lambda a, p, scratch: EMA.average(a, p, 0.999, scratch),
                                           spare, npd.opt.params)
            if k >= 10:
                rows.append(dict(spent, total=total, norm=norm_s, **{f"{k_}_products": v for k_, v in floor.items()}))
    finally:
        for obj, attr, _ in pieces:
            del obj.__dict__[attr]
    med = {key: 1e3 * statistics.median(r[key] for r in rows) for key in rows[0]}
    parts = {"matrix products": med["forward_products"] + med["backward_products"],
             "elementwise forward": med["forward"] - med["forward_products"],
             "elementwise backward": med["backward"] - med["backward_products"],
             "inputs and loss (the rest)": med["total"] - med["forward"] - med["backward"] - med["zero_grad"]
             - med["optimizer"] - med["norm"],
             "zero_grad": med["zero_grad"], "‖g‖": med["norm"],
             OPTIMIZER_PART if npd.ema is not None else "clipping's scale and AdamW": med["optimizer"]}
    parts["step (sum)"] = med["total"]
    if "EMA_alone" in med:  # not a part of the step: what the EMA costs as a separate pass (as before the fusion)
        parts["beside: the EMA as a pass of its own"] = med["EMA_alone"]
    return parts


def torch_parts(trt, batches: list, n_steps: int, torch) -> dict:
    """Median ms per part of the PyTorch step (``TorchDDPM.train_step`` with a clock), with its products alone
    (``torch.matmul`` on the same shapes, preallocated) timed in the same iteration."""
    shapes = {"forward": [], "backward": []}
    for j, lin in enumerate(m for m in trt.model.modules() if isinstance(m, torch.nn.Linear)):
        h, i = lin.weight.shape
        n = batches[0][0].shape[0]
        shapes["forward"].append((n, i, h))
        shapes["backward"] += [(i, n, h)] + ([(n, h, i)] if j else [])
    ops = {k: [(torch.ones(m, k_), torch.ones(k_, n_), torch.empty(m, n_)) for m, k_, n_ in v] for k, v in shapes.items()}

    def products(which):
        for a, b, c in ops[which]:
            torch.matmul(a, b, out=c)

    rows = []
    for k in range(n_steps + 10):
        trt.train_step(*batches[k % len(batches)], clock=CLOCK[0])
        row = dict(trt.parts)
        for which in ops:
            row[f"{which} products"] = timed(products, which)
        if k >= 10:
            rows.append(row)
    med = {key: 1e3 * statistics.median(r[key] for r in rows) for key in rows[0]}
    med["step (sum)"] = sum(v for k, v in med.items() if "products" not in k)
    return med


def run_config(name: str, cfg: dict, args, torch_side) -> dict:
    schedule = Schedule(cfg["T"], "linear")
    npd = NpdiffDDPM(cfg, schedule)
    n, dim, labelled = cfg["batch"], cfg.get("data_dim", 2), cfg.get("num_classes") is not None
    rng = np.random.default_rng(0)
    if dim == 2:
        points = data.heart(max(n * 64, 4096), rng).astype("float32")
    else:
        points = rng.uniform(-1, 1, (n * 16, dim)).astype("float32")
    classes = rng.integers(0, cfg["num_classes"], len(points)) if labelled else None
    host_batches = [(points[i:i + n], None if classes is None else classes[i:i + n])
                    for i in range(0, len(points) - n + 1, n)]
    steps = {"npdiff": npd.train_step}
    batches = {"npdiff": [(backend.asarray(x), None if y is None else backend.asarray(y)) for x, y in host_batches]}
    trt = None
    if torch_side is not None:
        torch, tr = torch_side
        tmodel = tr.Denoiser(data_dim=dim, coord_scale=COMMON["coord_scale"], time_scale=COMMON["time_scale"],
                             num_classes=cfg.get("num_classes"), **cfg["model"])
        tmodel.load_from(npd.model)
        trt = tr.TorchDDPM(tmodel, schedule, npd.lr, cfg["clip"], device=args.torch_device,
                           prediction=cfg.get("prediction", "eps"), label_dropout=cfg.get("label_dropout", 0.0),
                           ema=cfg.get("ema"), weight_decay=cfg.get("weight_decay", 0.01))
        steps["torch"] = lambda x0, y=None: _torch_step(trt, x0, y, args.torch_device, torch)
        batches["torch"] = [(torch.from_numpy(x).to(args.torch_device),
                             None if y is None else torch.from_numpy(y).to(args.torch_device)) for x, y in host_batches]
    shapes = matmul_shapes(npd.model, n)
    steps["floor"] = MatmulFloor(shapes)
    batches["floor"] = [(None,)]
    medians = run_blocks(steps, batches, args.steps or cfg["steps"], cfg["warmup"], cfg["block"])
    res = {"name": name, "npdiff_ms": 1e3 * medians["npdiff"], "floor_ms": 1e3 * medians["floor"],
           "torch_ms": 1e3 * medians["torch"] if "torch" in medians else None}
    res["ratio"] = res["torch_ms"] / res["npdiff_ms"] if res["torch_ms"] else None
    res["npdiff_over_floor"] = res["npdiff_ms"] / res["floor_ms"]
    res["train_gflops"] = sum(2 * a * b * c for a, b, c in shapes) / medians["npdiff"] / 1e9
    res["numpy_matmul_gflops"] = numpy_matmul_rate(shapes, max(5, min(200, int(0.5 / medians["floor"]))))
    if args.parts if args.parts is not None else cfg.get("parts", False):
        res["parts_ms"] = npdiff_parts(npd, batches["npdiff"], min(200, args.steps or cfg["steps"]))
        if trt is not None:
            res["torch_parts_ms"] = torch_parts(trt, batches["torch"], min(200, args.steps or cfg["steps"]), torch_side[0])
    if "sample" in cfg:
        res.update(sample_images(npd, trt, cfg, args, torch_side))
        return res
    ns = args.sample_points
    npd.sample(ns, 2)
    res["npdiff_sample_pts_steps_per_s"] = ns * cfg["T"] / min(timed(npd.sample, ns, 2) for _ in range(3))
    if trt is not None:
        trt.sample(ns, 2)
        res["torch_sample_pts_steps_per_s"] = ns * cfg["T"] / min(timed(trt.sample, ns, 2) for _ in range(3))
    return res


def sample_images(npd: NpdiffDDPM, trt, cfg: dict, args, torch_side) -> dict:
    """Images per second of guided DDIM (2N rows per step), npdiff and PyTorch (no_grad) alternating, best of 3."""
    spec = cfg["sample"]
    n = args.sample_images or spec["images"]
    labels = np.arange(n) % cfg["num_classes"]
    runs = {"npdiff": lambda: npd.sample_ddim(backend.asarray(labels), spec["ddim_steps"], spec["guidance"])}
    if trt is not None:
        torch = torch_side[0]
        y = torch.from_numpy(labels).to(args.torch_device)
        runs["torch"] = lambda: trt.sample_ddim(y, cfg["data_dim"], spec["ddim_steps"], spec["guidance"])
    for run in runs.values():
        run()
    best = {name: float("inf") for name in runs}
    for _ in range(3):
        for name, run in runs.items():
            best[name] = min(best[name], timed(run))
    out = {f"{name}_images_per_s": n / t for name, t in best.items()}
    out["sample_images"] = n
    return out


def _torch_step(trt, x0, y, device, torch):
    trt.train_step(x0, y)
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
    parser.add_argument("--config", default="all", choices=["all", *ALL_CONFIGS])
    parser.add_argument("--steps", type=int, default=0, help="timed steps per library (default per config)")
    parser.add_argument("--threads", type=int, default=2, help="threads of PyTorch and of NumPy's BLAS")
    parser.add_argument("--block-threads", type=int, default=0,
                        help="threads of npdiff's blockwise updates (primitives.set_threads; default --threads)")
    parser.add_argument("--sample-points", type=int, default=1000, help="points per sampling run (2-D)")
    parser.add_argument("--sample-images", type=int, default=0, help="images per sampling run (image; default 64)")
    parser.add_argument("--parts", action=argparse.BooleanOptionalAction, default=None,
                        help="time the parts of the npdiff step (default: on for the image configuration)")
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
    args.block_threads = args.block_threads or args.threads
    previous_threads = primitives.set_threads(args.block_threads)
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
        print(f"env: {env or 'no BLAS variables set'}; clock: {args.clock}; npdiff blockwise threads {args.block_threads}; "
              f"uptime: {_uptime()}")
        if torch_side:
            torch = torch_side[0]
            print(f"torch {torch.__version__} on {args.torch_device}, {torch.get_num_threads()} threads")
        results = []
        for name in ALL_CONFIGS if args.config == "all" else [args.config]:
            results.append(run_config(name, ALL_CONFIGS[name], args, torch_side))
            report(results[-1])
    CLOCK[0] = time.perf_counter
    primitives.set_threads(previous_threads)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return results


def _uptime() -> str:
    try:
        with open("/proc/loadavg") as fh:
            return "load average " + ", ".join(fh.read().split()[:3])
    except OSError:
        return "unknown"


def report(r: dict) -> None:
    torch_ms = f"{r['torch_ms']:.3f} ms" if r["torch_ms"] else "n/a"
    ratio = f"{r['ratio']:.2f}x" if r["ratio"] else "n/a"
    print(f"\n[{r['name']}] median train step: npdiff {r['npdiff_ms']:.3f} ms, PyTorch {torch_ms}, "
          f"ratio PyTorch/npdiff {ratio}; matrix products alone {r['floor_ms']:.3f} ms "
          f"(npdiff/floor {r['npdiff_over_floor']:.2f}x)  [{_uptime()}]")
    if "parts_ms" in r:
        parts = r["parts_ms"]
        step = parts["step (sum)"]
        print("  npdiff step by part (medians, ms): " + "; ".join(
            f"{k} {v:.3f}" + ("" if k == "step (sum)" or k.startswith("beside") else f" ({100 * v / step:.0f} %)")
            for k, v in parts.items()))
    if "torch_parts_ms" in r:
        print("  PyTorch step by part (medians, ms): " + "; ".join(f"{k} {v:.3f}" for k, v in r["torch_parts_ms"].items()))
    if "npdiff_images_per_s" in r:
        print(f"  guided DDIM sampling ({r['sample_images']} images, images / s): npdiff {r['npdiff_images_per_s']:.3g}"
              + (f", PyTorch {r['torch_images_per_s']:.3g}" if "torch_images_per_s" in r else ""))
    else:
        print(f"  sampling (points x steps / s): npdiff {r['npdiff_sample_pts_steps_per_s']:.3g}"
              + (f", PyTorch {r['torch_sample_pts_steps_per_s']:.3g}" if "torch_sample_pts_steps_per_s" in r else ""))
    print(f"  train-step matmul GFLOP/s: npdiff {r['train_gflops']:.2f} vs {backend.name} matmul alone "
          f"{r['numpy_matmul_gflops']:.2f} at the same shapes", flush=True)


if __name__ == "__main__":
    main()
