"""The image-quality figure on an MNIST-format data set: train (or load) the judge, print the baseline table.

    python benchmarks/image_quality.py [--data DIR] [--out DIR] [--n 256 1000] [--samples S.npy [--labels L.npy]]

Trains npdiff's MLP classifier on the folder's train split (Fashion-MNIST by default, from Debian's
``dataset-fashion-mnist``) and caches it as ``<out>/classifier.npz``, or loads it from there when it was
trained on the same data with the same settings. Then prints, for each sample count n, the FCD, the
accuracy on intended classes and the predicted-class entropy of the four baselines (held-out real
images, a Gaussian fitted to the training pixels, one Gaussian per class, N(0, I) noise), all at n.
``--samples`` adds a row for your own images (an .npy of vectors (N, 784) on [−1, 1] or uint8 images
(N, 28, 28)); ``--labels`` (an .npy of N integers) scores them against their intended classes.
The classifier trains with one BLAS thread unless OPENBLAS_NUM_THREADS says otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from npdiff.images import idx
from npdiff.io import fileio, threads
from npdiff.images.quality import ImageJudge


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=idx.FASHION_MNIST_DIR,
                   help=f"MNIST-format folder (default {idx.FASHION_MNIST_DIR})")
    p.add_argument("--out", default=os.path.join("out", "image_quality"),
                   help="output folder: the cached classifier.npz and quality.json (default ./out/image_quality)")
    p.add_argument("--n", type=int, nargs="+", default=[256, 1000], help="sample counts (default 256 1000)")
    p.add_argument("--samples", help="an .npy of images to score beside the baselines (its length is the n)")
    p.add_argument("--labels", help="an .npy of the samples' intended classes")
    p.add_argument("--seed", type=int, default=0, help="seed of the baselines' draws and of the reference split")
    p.add_argument("--epochs", type=int, default=15, help="classifier training epochs (default 15)")
    return p.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    print(threads.apply_policy())
    print(f"load average: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores (other jobs slow the timings)")
    samples = None if args.samples is None else np.load(args.samples, allow_pickle=False)
    labels = None if args.labels is None else np.load(args.labels, allow_pickle=False)
    start = time.perf_counter()
    judge = ImageJudge.from_folder(args.out, args.data, seed=args.seed, epochs=args.epochs)
    c = judge.classifier
    training = c.meta["training"]
    print(f"classifier {c.source} ({os.path.join(args.out, 'classifier.npz')}): {c.config['hidden']} hidden, "
          f"test accuracy {100 * c.meta['test_accuracy']:.2f} % on {c.meta['n_test']} images; trained "
          f"{training['epochs']} epochs in {training['seconds']:.1f} s; judge ready in "
          f"{time.perf_counter() - start:.1f} s")
    rows = []
    for n in [len(samples)] if samples is not None else args.n:
        start = time.perf_counter()
        print()
        rows += judge.report(samples, labels, n=n, seed=args.seed)
        print(f"({time.perf_counter() - start:.1f} s)")
    record = {"classifier": {"config": c.config, **c.meta}, "rows": rows}
    with fileio.replacing(os.path.join(args.out, "quality.json"), "w") as f:
        json.dump(record, f, indent=1)
    print(f"outputs in {os.path.abspath(args.out)}")
    return rows


if __name__ == "__main__":
    main()
