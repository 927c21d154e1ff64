"""The npdiff train step of two source trees, side by side under the same load: is one slower than the other?

    git worktree add /tmp/base 9d8bee1
    python benchmarks/compare_trees.py --old /tmp/base [--new .] [--config all] [--rounds 8] [--threads 1]

One worker process per tree imports that tree's npdiff (the flat layout of before the sub-packages, or
``npdiff.nn``/``npdiff.processes``/``npdiff.training``), builds the configuration's model, optimizer, EMA and
objective exactly as ``train_step.py`` does (same seeds, same data), and waits. The driver then asks the two
in turn, old-new, new-old, …, for a block of steps; each worker times every step with its own thread's CPU
clock (``--threads 1``; wall clock otherwise) and answers the block's median. Reported per configuration: the
median of old and of new over the blocks and the median over rounds of the per-round ratio new/old (< 1:
the new tree is faster), with the load average before and after.

Both workers are pinned to the same cores (the first ``--threads`` of those this process may use), and the
pair is started afresh ``--sessions`` times: on a machine shared with other jobs a process that the
scheduler keeps on the busier core runs up to 20 % slower for its whole life, even by its own CPU clock
(another process's work evicts its cache), which two workers on different cores would report as a
difference between the trees (measured: one tree against itself gave 0.98, 1.18 and 0.99).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG_NAMES = ("seed-heart", "tiny-diffusion", "image")

WORKER = r'''
import json, os, statistics, sys, time
tree, threads, clock = sys.argv[1], int(sys.argv[2]), sys.argv[3]
os.sched_setaffinity(0, set(json.loads(sys.argv[4])))
sys.path.insert(0, tree)
os.environ.setdefault("OPENBLAS_NUM_THREADS", str(threads))
from threadpoolctl import threadpool_limits
threadpool_limits(threads, user_api="blas")
import numpy as np
# an editable install of npdiff maps npdiff.* to its own tree whatever sys.path says: only the path finder
sys.meta_path = [f for f in sys.meta_path if "editable" not in (getattr(f, "__name__", "") or type(f).__name__).lower()
                 and "editable" not in getattr(f, "__module__", "").lower()]
if os.path.isdir(os.path.join(tree, "npdiff", "nn")):
    from npdiff.nn.denoiser import Denoiser
    from npdiff.nn.optim import EMA, AdamW
    from npdiff.processes import ddpm
    from npdiff.processes.schedules import Schedule
    from npdiff.training import train
    from npdiff.nn import primitives
    if hasattr(primitives, "set_threads"):
        primitives.set_threads(threads)
else:  # the flat layout
    from npdiff.models import Denoiser
    from npdiff.optim import EMA, AdamW
    from npdiff import ddpm, train
    from npdiff.schedules import Schedule
from npdiff import backend, data
outside = [m.__file__ for name, m in list(sys.modules.items())
           if name.split(".")[0] == "npdiff" and getattr(m, "__file__", None)
           and not os.path.abspath(m.__file__).startswith(os.path.abspath(tree) + os.sep)]
assert not outside, f"modules from outside {tree}: {outside}"
cfg = json.loads(sys.argv[5])
timer = time.thread_time if clock == "cpu" else time.perf_counter
COMMON = dict(coord_scale=25.0, time_scale=1.0, activation="gelu", dtype="float32", seed=0)
kw = dict(num_classes=cfg["num_classes"]) if cfg.get("num_classes") else {}
model = Denoiser(**COMMON, data_dim=cfg.get("data_dim", 2), **kw, **cfg["model"])
opt = AdamW(model, lr=cfg.get("lr", 1e-3), weight_decay=cfg.get("weight_decay", 0.01))
ema = EMA(model, cfg["ema"]) if cfg.get("ema") else None
schedule = Schedule(cfg["T"], "linear")
objective = ddpm.EpsilonObjective(schedule, cfg.get("prediction", "eps"), label_dropout=cfg.get("label_dropout", 0.0))
rng = backend.default_rng(1)
n, dim = cfg["batch"], cfg.get("data_dim", 2)
src = np.random.default_rng(0)
points = (data.heart(max(n * 64, 4096), src) if dim == 2 else src.uniform(-1, 1, (n * 16, dim))).astype("float32")
classes = src.integers(0, cfg["num_classes"], len(points)) if cfg.get("num_classes") else None
batches = [(points[i:i + n], None if classes is None else classes[i:i + n]) for i in range(0, len(points) - n + 1, n)]

def step(k):
    x0, y = batches[k % len(batches)]
    train.train_step(model, objective, x0, rng, opt, y=y, clip=cfg["clip"], ema=ema, check=False)

for k in range(cfg["warmup"]):
    step(k)
print("ready", flush=True)
k = 0
for line in sys.stdin:
    count = int(line)
    times = []
    for _ in range(count):
        start = timer()
        step(k)
        times.append(timer() - start)
        k += 1
    skip = max(1, count // 10)
    print(json.dumps(statistics.median(times[skip:])), flush=True)
'''


def load_average() -> str:
    with open("/proc/loadavg") as fh:
        return ", ".join(fh.read().split()[:3])


def start(tree: str, args, cfg: dict):
    cores = sorted(os.sched_getaffinity(0))[:args.threads]
    proc = subprocess.Popen([sys.executable, "-c", WORKER, os.path.abspath(tree), str(args.threads), args.clock,
                             json.dumps(cores), json.dumps(cfg)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, cwd=os.path.abspath(tree), env={**os.environ, "PYTHONPATH": os.path.abspath(tree)})
    line = proc.stdout.readline()
    if line.strip() != "ready":
        raise RuntimeError(f"the worker for {tree} did not start: {line!r}")
    return proc


def ask(proc, count: int) -> float:
    proc.stdin.write(f"{count}\n")
    proc.stdin.flush()
    return json.loads(proc.stdout.readline())


def compare(name: str, args) -> dict:
    sys.path.insert(0, HERE)
    from train_step import ALL_CONFIGS
    cfg = {k: v for k, v in ALL_CONFIGS[name].items() if k != "sample"}
    block = args.block or cfg["block"]
    before = load_average()
    medians = {"old": [], "new": []}
    for session in range(args.sessions):
        workers = {"old": start(args.old, args, cfg), "new": start(args.new, args, cfg)}
        try:
            for r in range(args.rounds):
                for who in (("old", "new") if (r + session) % 2 == 0 else ("new", "old")):
                    medians[who].append(ask(workers[who], block))
        finally:
            for proc in workers.values():
                proc.stdin.close()
                proc.wait()
    ratios = [b / a for a, b in zip(medians["old"], medians["new"])]
    return {"name": name, "old_ms": 1e3 * statistics.median(medians["old"]),
            "new_ms": 1e3 * statistics.median(medians["new"]), "new_over_old": statistics.median(ratios),
            "ratios": ratios, "load_before": before, "load_after": load_average()}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True, help="the old tree (e.g. a git worktree)")
    parser.add_argument("--new", default=os.path.join(HERE, ".."), help="the new tree (default: this one)")
    parser.add_argument("--config", default="all", choices=["all", *CONFIG_NAMES])
    parser.add_argument("--rounds", type=int, default=4, help="blocks per tree and session")
    parser.add_argument("--sessions", type=int, default=3, help="pairs of worker processes, one after the other")
    parser.add_argument("--block", type=int, default=0, help="steps per block (default: the configuration's)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=["wall", "cpu"], default=None, help="default: cpu with 1 thread")
    parser.add_argument("--json", help="write the results to this JSON file")
    args = parser.parse_args(argv)
    args.clock = args.clock or ("cpu" if args.threads == 1 else "wall")
    results = []
    for name in CONFIG_NAMES if args.config == "all" else [args.config]:
        r = compare(name, args)
        results.append(r)
        print(f"[{name}] old {r['old_ms']:.3f} ms, new {r['new_ms']:.3f} ms, new/old {r['new_over_old']:.3f} "
              f"(per round {min(r['ratios']):.3f}..{max(r['ratios']):.3f}); {args.threads} thread(s), {args.clock} "
              f"clock; load average {r['load_before']} -> {r['load_after']}", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return results


if __name__ == "__main__":
    main()
