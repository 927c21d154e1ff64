"""demos/mnist.py end to end in --quick mode, on tiny IDX files the test writes (no real data needed)."""

import json
import os
import re
from pathlib import Path

import numpy as np

from npdiff import cli
from npdiff.images import idx


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


def test_quick_run_writes_figures_samples_and_the_quality_table(tmp_path, run_demo):
    data = tmp_path / "data"
    data.mkdir()
    write_tiny_dataset(data, n_train=200, n_test=80)  # the judge needs held-out images beyond its features
    out = tmp_path / "out"
    # --download with every file present fetches nothing (no network here), and leaves no .part file
    proc = run_demo("mnist.py", "--quick", "--download", "--data", str(data), "--out", str(out), "--seed", "3")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    samples, labels = np.load(out / "samples.npy"), np.load(out / "labels.npy")
    assert samples.shape == (20, 784) and samples.dtype == np.float32
    assert np.isfinite(samples).all() and samples.min() >= -1.0 and samples.max() <= 1.0  # x̂_0 clipped to [-1, 1]
    assert list(labels) == [k % 10 for k in range(20)]  # balanced classes
    for name in ("classes.png", "guidance.png", "loss.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "forming.gif").read_bytes()[:6] == b"GIF89a"
    assert (out / "checkpoint.npz").stat().st_size > 0 and (out / "classifier.npz").stat().st_size > 0
    assert "200 training images of 28×28 in 10 classes" in proc.stdout
    names = re.findall(r"^(held-out real \(floor\)|Gaussian fit to train pixels|one Gaussian per class|"
                       r"noise N\(0, I\) \(ceiling\)|npdiff, no label|npdiff, label, w = [\d.]+)\s+20\s+[\d.]+",
                       proc.stdout, re.M)
    assert len(names) == 7, proc.stdout  # four baselines, the unconditional row and the sweep's w = 0 and 0.5
    assert len(re.findall(r"^target .*: (met|MISSED)", proc.stdout, re.M)) == 3
    quality = json.loads((out / "quality.json").read_text())
    assert len(quality["rows"]) == 7 and len(quality["per_class_accuracy"]) == 10
    assert str(out.resolve()) in proc.stdout.splitlines()[-1]
    # the checkpoint is the command line's too: `npdiff sample` draws labelled images from it
    assert cli.main(["sample", str(out / "checkpoint.npz"), "--label", "3", "--n", "4", "--sampler", "ddim",
                     "--ddim-steps", "5", "--out", str(tmp_path / "s.npy")]) == 0
    assert np.load(tmp_path / "s.npy").shape == (4, 784)
    assert sorted(os.listdir(data)) == sorted([*(n + ".gz" for n in idx.FILES["train"]), *idx.FILES["test"]])


def test_missing_data_exits_with_a_message_naming_the_folder(tmp_path, run_demo):
    proc = run_demo("mnist.py", "--quick", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr  # an input error: one line
    assert "train-images-idx3-ubyte" in proc.stderr and str(tmp_path / "nowhere") in proc.stderr
    assert "Traceback" not in proc.stderr
