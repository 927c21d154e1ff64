"""Peak memory of ``npdiff sample`` and ``npdiff eval`` against ``--n``: flat with chunks, growing without.

    python benchmarks/memory.py [--n 10000 1000000] [--chunk 4096] [--T 20] [--hidden 32]

Trains a small model once (a toy set, a few steps: memory does not depend on how well it is trained),
then runs each command in a fresh Python process for every ``--n`` and reports that process's peak
resident memory (``ru_maxrss``) and its wall time. The last rows repeat the largest n with one chunk
of all n points, which is what ``sample``/``eval`` did before they streamed. The "ratio" column is
peak RSS / the peak RSS of the smallest n for the same command and chunk.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = ("import json, resource, sys, time\nfrom npdiff import cli\nstart = time.perf_counter()\n"
         "rc = cli.main(sys.argv[1:])\n"
         "print(json.dumps({'rc': rc, 'seconds': time.perf_counter() - start,\n"
         "                  'peak_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))\n")


def run(argv: list[str]) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    out = subprocess.run([sys.executable, "-c", PROBE, *argv], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, nargs="+", default=[10_000, 1_000_000])
    p.add_argument("--chunk", type=int, default=4096)
    p.add_argument("--T", type=int, default=20)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--unchunked", action=argparse.BooleanOptionalAction, default=True,
                   help="also run the largest n as one chunk (the memory before streaming)")
    args = p.parse_args(argv)
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores (the machine may be shared)")
    with tempfile.TemporaryDirectory() as d:
        model = os.path.join(d, "m.npz")
        train = ["train", "8gaussians", "--out", model, "--T", str(args.T), "--hidden", str(args.hidden),
                 "--n-blocks", "1", "--emb-dim", "16", "--steps", "50"]
        assert run(train)["rc"] == 0
        cases = [(cmd, n, args.chunk) for cmd in ("sample", "eval") for n in args.n]
        if args.unchunked:
            cases += [(cmd, max(args.n), max(args.n) * (4 if cmd == "eval" else 1)) for cmd in ("sample", "eval")]
        base = {}
        print(f"{'command':<8} {'n':>9} {'chunk':>9} {'peak RSS':>10} {'ratio':>6} {'time':>8}")
        for cmd, n, chunk in cases:
            what = (["sample", model, "--out", os.path.join(d, "s.npy")] if cmd == "sample"
                    else ["eval", model, "8gaussians"])
            result = run([*what, "--n", str(n), "--chunk", str(chunk)])
            assert result["rc"] == 0, result
            base.setdefault((cmd, chunk), result["peak_mb"])
            ratio = result["peak_mb"] / base[(cmd, chunk)] if chunk == args.chunk else float("nan")
            print(f"{cmd:<8} {n:>9} {chunk:>9} {result['peak_mb']:>7.1f} MB {ratio:>6.2f} {result['seconds']:>7.1f}s",
                  flush=True)
            if cmd == "sample":
                os.remove(os.path.join(d, "s.npy"))


if __name__ == "__main__":
    main()
