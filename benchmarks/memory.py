"""Peak memory of ``npdiff sample`` and ``npdiff eval`` against ``--n``: flat with chunks, growing without.

    python benchmarks/memory.py [--n 10000 1000000] [--chunk 4096] [--T 20] [--hidden 32]
    python benchmarks/memory.py --formats [--image-n 2000 20000]

``--formats`` gives a row per input and output format instead: a model of 28×28 images samples ``--image-n``
images to .npy, .csv and a .png grid (the grid is written one row of tiles at a time, so its memory is flat in
n like the others'; "all float64" is what holding every sample as float64 would take), and ``train`` reads a
gzipped IDX folder, a small .gz that expands to 1 GiB, a .npy whose header promises 10¹² points and a
checkpoint whose member promises 800 GB (each refused before it is expanded or allocated).

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


def _image_folder(folder: str, n: int, side: int = 28) -> None:
    import numpy as np

    from npdiff.images import idx

    os.makedirs(folder)
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        idx.write_idx(os.path.join(folder, idx.FILES[split][0] + ".gz"), rng.integers(0, 256, (n, side, side),
                                                                                      dtype=np.uint8))
        idx.write_idx(os.path.join(folder, idx.FILES[split][1] + ".gz"), (np.arange(n) % 10).astype(np.uint8))


def _hostile_inputs(d: str) -> dict:
    """A gzip bomb folder, a lying .npy and a lying checkpoint; their paths by name."""
    import gzip
    import zipfile

    import numpy as np

    from npdiff.images import idx

    bomb = os.path.join(d, "bomb")
    os.makedirs(bomb)
    with gzip.open(os.path.join(bomb, idx.FILES["train"][0] + ".gz"), "wb", compresslevel=9) as f:
        f.write(bytes([0, 0, 8, 3]) + np.asarray((1, 4, 4), ">u4").tobytes())
        for _ in range(1024):
            f.write(bytes(2**20))  # 1 GiB of zeros past a header that promises 16 bytes
    idx.write_idx(os.path.join(bomb, idx.FILES["train"][1] + ".gz"), np.zeros(1, np.uint8))
    liar = os.path.join(d, "liar.npy")
    with open(liar, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": (10**12, 2)})
    ckpt = os.path.join(d, "liar.npz")
    with zipfile.ZipFile(ckpt, "w") as z, z.open("param/x.npy", "w") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": (10**11,)})
    return {"bomb": bomb, "liar": liar, "ckpt": ckpt}


def formats(args) -> None:
    """A row per output format (sample) and per hostile input format (train, sample): peak RSS and time."""
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores (the machine may be shared)")
    with tempfile.TemporaryDirectory() as d:
        folder, model = os.path.join(d, "images"), os.path.join(d, "m.npz")
        _image_folder(folder, 200)
        assert run(["train", folder, "--out", model, "--T", "5", "--hidden", "16", "--n-blocks", "0", "--emb-dim",
                    "8", "--steps", "5", "--batch-size", "32"])["rc"] == 0
        print(f"{'command':<8} {'format':<24} {'n':>7} {'peak RSS':>10} {'all float64':>12} {'file':>10} {'time':>7}")
        for n in args.image_n:
            for ext in (".npy", ".csv", ".png"):
                out = os.path.join(d, "s" + ext)
                result = run(["sample", model, "--out", out, "--n", str(n), "--chunk", str(args.chunk)])
                assert result["rc"] == 0, result
                size = os.path.getsize(out) / 2**20
                os.remove(out)
                print(f"{'sample':<8} {ext + ' out':<24} {n:>7} {result['peak_mb']:>7.1f} MB {8 * 784 * n / 2**20:>9.1f} MB "
                      f"{size:>7.1f} MB {result['seconds']:>6.1f}s", flush=True)
        hostile = _hostile_inputs(d)
        for what, argv in (("gzip IDX folder in", ["train", folder, "--out", os.path.join(d, "t.npz"), "--T", "5",
                                                    "--hidden", "16", "--n-blocks", "0", "--emb-dim", "8", "--steps",
                                                    "1"]),
                           (".gz bomb (1 GiB) in", ["train", hostile["bomb"], "--out", os.path.join(d, "b.npz")]),
                           (".npy promising 16 TB in", ["train", hostile["liar"], "--out", os.path.join(d, "l.npz")]),
                           (".npz promising 800 GB in", ["sample", hostile["ckpt"], "--out", os.path.join(d, "x.npy")])):
            result = run(argv)
            print(f"{argv[0]:<8} {what:<24} {'':>7} {result['peak_mb']:>7.1f} MB {'':>12} {'':>10} "
                  f"{result['seconds']:>6.1f}s  exit {result['rc']}", flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, nargs="+", default=[10_000, 1_000_000])
    p.add_argument("--chunk", type=int, default=4096)
    p.add_argument("--T", type=int, default=20)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--unchunked", action=argparse.BooleanOptionalAction, default=True,
                   help="also run the largest n as one chunk (the memory before streaming)")
    p.add_argument("--formats", action="store_true", help="a row per input and output format instead")
    p.add_argument("--image-n", type=int, nargs="+", default=[2000, 20000], help="images sampled with --formats")
    args = p.parse_args(argv)
    if args.formats:
        return formats(args)
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
            result = run([*what, "--n", str(n), "--chunk", str(chunk), *(["--force"] if cmd == "sample" else [])])
            assert result["rc"] == 0, result
            base.setdefault((cmd, chunk), result["peak_mb"])
            ratio = result["peak_mb"] / base[(cmd, chunk)] if chunk == args.chunk else float("nan")
            print(f"{cmd:<8} {n:>9} {chunk:>9} {result['peak_mb']:>7.1f} MB {ratio:>6.2f} {result['seconds']:>7.1f}s",
                  flush=True)
            if cmd == "sample":
                os.remove(os.path.join(d, "s.npy"))


if __name__ == "__main__":
    main()
