"""demos/mnist.py end to end in --quick mode, on tiny IDX files the test writes (no real data needed)."""

import os
import re
from pathlib import Path

import numpy as np

from npdiff import idx


def write_tiny_dataset(root: Path, n_train: int = 48, n_test: int = 12) -> None:
    """Noisy bars of random position, length and brightness on 28×28 images; gzipped training files,
    uncompressed test files."""
    rng = np.random.default_rng(0)
    for split, n, ext in (("train", n_train, ".gz"), ("test", n_test, "")):
        images = rng.integers(0, 40, size=(n, 28, 28)).astype(np.uint8)
        for image in images:
            r, c, length = rng.integers(3, 25), rng.integers(1, 10), rng.integers(8, 18)
            image[r - 2 : r + 2, c : c + length] = rng.integers(150, 256)
        img_name, lab_name = idx.FILES[split]
        idx.write_idx(root / (img_name + ext), images)
        idx.write_idx(root / (lab_name + ext), (np.arange(n) % 10).astype(np.uint8))


def test_quick_run_writes_samples_figure_and_quality_figure(tmp_path, run_demo):
    data = tmp_path / "data"
    data.mkdir()
    write_tiny_dataset(data)
    out = tmp_path / "out"
    # --download with every file present fetches nothing (no network here), and leaves no .part file
    proc = run_demo("mnist.py", "--quick", "--download", "--data", str(data), "--out", str(out), "--seed", "3")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    samples = np.load(out / "samples.npy")
    assert samples.shape == (16, 784) and samples.dtype == np.float32
    assert np.isfinite(samples).all() and samples.min() >= -1.0 and samples.max() <= 1.0  # x̂_0 clipped to [-1, 1]
    for name in ("samples.png", "loss.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "checkpoint.npz").stat().st_size > 0
    assert "48 training and 12 test images of 28×28" in proc.stdout
    figures = dict(re.findall(r"^  (test images|DDPM samples|Gaussian baseline)\s+\(\s*\d+\):\s+([\d.]+)",
                              proc.stdout, re.M))
    assert len(figures) == 3 and all(float(v) > 0 for v in figures.values())
    assert re.search(r"samples / test = [\d.]+: ", proc.stdout)
    assert str(out.resolve()) in proc.stdout.splitlines()[-1]
    assert sorted(os.listdir(data)) == sorted([*(n + ".gz" for n in idx.FILES["train"]), *idx.FILES["test"]])


def test_missing_data_exits_with_a_message_naming_the_folder(tmp_path, run_demo):
    proc = run_demo("mnist.py", "--quick", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out"))
    assert proc.returncode == 1
    assert "train-images-idx3-ubyte" in proc.stderr and str(tmp_path / "nowhere") in proc.stderr
    assert "Traceback" not in proc.stderr
