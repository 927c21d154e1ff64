"""Check every hand-written gradient of a small denoiser against central finite differences.

    python demos/gradcheck.py [--dim 2] [--hidden 16] [--n-blocks 2] [--activation gelu] [--layernorm]
                              [--out-dim-mult 1] [--seed 0] [--out out/gradcheck]

Builds a float64 ``Denoiser``, checks it through L = Σ y·dy with a random dy (so dy is the upstream
gradient ``backward`` receives), and prints one row per parameter plus the input x: its shape, the
relative error ‖a − n‖/(‖a‖ + ‖n‖), and the norms of the analytic and numeric gradients. The report is
also written to DIR/gradcheck.txt. Exit code 1 if any relative error reaches the threshold (1e-6).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from npdiff.io import fileio, threads
from npdiff.nn import gradcheck
from npdiff.nn.layers import ACTIVATIONS
from npdiff.nn.denoiser import Denoiser

THRESHOLD = 1e-6


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dim", type=int, default=2, help="data dimensions D (default 2)")
    p.add_argument("--hidden", type=int, default=16, help="hidden width H (default 16)")
    p.add_argument("--n-blocks", "--blocks", type=int, default=2, help="residual blocks (default 2)")
    p.add_argument("--emb-dim", type=int, default=8, help="sinusoidal embedding size, even >= 4 (default 8)")
    p.add_argument("--activation", default="gelu", choices=sorted(ACTIVATIONS))
    p.add_argument("--layernorm", action="store_true", help="LayerNorm in every block and before the output")
    p.add_argument("--out-dim-mult", type=int, choices=(1, 2), default=1,
                   help="1: D outputs (ε-prediction); 2: 2·D outputs (mean and variance)")
    p.add_argument("--batch-size", "--batch", type=int, default=4, help="batch size N (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny sizes (hidden 8, 1 block) for tests")
    p.add_argument("--out", default=os.path.join("out", "gradcheck"), help="output folder (default out/gradcheck)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    print(threads.apply_policy())  # one BLAS thread unless you set OPENBLAS_NUM_THREADS (docs/command-line.md)
    if args.quick:
        args.hidden, args.n_blocks, args.emb_dim, args.batch_size = 8, 1, 4, 2
    model = Denoiser(args.dim, out_dim=args.out_dim_mult * args.dim, hidden=args.hidden, n_blocks=args.n_blocks,
                     emb_dim=args.emb_dim, activation=args.activation, layernorm=args.layernorm,
                     final_layernorm=args.layernorm, dtype="float64", seed=args.seed)
    rng = np.random.default_rng(args.seed)
    x = rng.standard_normal((args.batch_size, args.dim))
    t = rng.integers(1, 1001, size=args.batch_size)

    n_params = model.flat_params.size
    print(f"checking {n_params} parameters and the input x of a float64 denoiser "
          f"(D={args.dim}, out={args.out_dim_mult}·D, H={args.hidden}, blocks={args.n_blocks}, "
          f"{args.activation}, layernorm={'on' if args.layernorm else 'off'}) with {2 * (n_params + x.size)} "
          f"forward passes...", flush=True)
    start = time.perf_counter()
    report = gradcheck.check_module(model, x, t, rng=np.random.default_rng(args.seed + 1))
    elapsed = time.perf_counter() - start

    worst = gradcheck.worst(report)
    ok = worst < THRESHOLD
    verdict = f"max relative error {worst:.2e} ({'<' if ok else '>='} 1e-6: {'OK' if ok else 'FAIL'})"
    text = "\n".join([gradcheck.format_report(report), verdict])
    print(text)
    print(f"({elapsed:.1f} s)")

    os.makedirs(args.out, exist_ok=True)
    command = " ".join(["python", "demos/gradcheck.py", *(sys.argv[1:] if argv is None else argv)])
    fileio.write_text(os.path.join(args.out, "gradcheck.txt"), f"{command}\n{text}\n")  # written atomically
    print(f"outputs in {os.path.abspath(args.out)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
