"""Labels, guidance and images on the command line: each flag end to end, and each bad label as one error line.

Tiny data written into a temporary folder: a 2-D CSV of four clusters with a label column, the same as a
.npy with a second .npy of labels, and an MNIST-format folder of 8 × 8 images (written with
``idx.write_idx``) whose class k lights quadrant k. Tiny models throughout; only the model whose samples
are checked against their class trains a few hundred steps.
"""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np
import pytest

from npdiff import cli
from npdiff.images import idx
from npdiff.training import checkpoint

TINY = ["--hidden", "16", "--n-blocks", "1", "--emb-dim", "8", "--T", "20", "--steps", "20", "--batch-size", "32"]
CENTRES = np.array([[4.0, 4.0], [-4.0, 4.0], [-4.0, -4.0], [4.0, -4.0]])  # class k lives around CENTRES[k]


def _quadrant_images(n: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """n uint8 images (n, 8, 8) of faint noise with quadrant k bright for class k = i mod 4; labels uint8 (n,)."""
    labels = (np.arange(n) % 4).astype(np.uint8)
    images = rng.integers(0, 40, (n, 8, 8))
    for i, k in enumerate(labels):
        r, c = divmod(int(k), 2)
        images[i, 4 * r:4 * r + 4, 4 * c:4 * c + 4] += 200
    return images.astype(np.uint8), labels


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    """The folder: data files, label files good and bad, and the checkpoints every test shares."""
    d = tmp_path_factory.mktemp("labels")
    rng = np.random.default_rng(0)
    y = np.arange(800) % 4
    x = CENTRES[y] + 0.5 * rng.standard_normal((800, 2))
    np.savetxt(d / "points.csv", np.c_[x, y], delimiter=",", header="a,b,cls", comments="",
               fmt=["%.17g", "%.17g", "%d"])
    np.save(d / "points.npy", x)
    np.save(d / "y.npy", y)
    np.save(d / "y_float.npy", y.astype(np.float64))  # 3.0 is the class 3
    np.save(d / "y10.npy", y[:10])
    np.save(d / "negative.npy", np.where(np.arange(800) == 5, -1, y))
    np.save(d / "fraction.npy", np.where(np.arange(800) == 7, 2.5, y))
    np.save(d / "nan.npy", np.where(np.arange(800) == 3, np.nan, y))
    np.save(d / "short.npy", y[:799])
    np.save(d / "nine.npy", np.where(np.arange(800) == 2, 9, y))
    np.save(d / "text.npy", np.array(["a"] * 800))
    (d / "text_column.csv").write_text("a,b,cls\n1,2,0\n2,3,cat\n3,4,1\n")
    (d / "nan_column.csv").write_text("a,b,cls\n1,2,0\n2,3,nan\n3,4,1\n")
    (d / "fraction_column.csv").write_text("1,2,0\n2,3,2.5\n3,4,1\n")
    folder = d / "mnist"
    folder.mkdir()
    for split, n, ext in (("train", 256, ".gz"), ("test", 240, "")):
        images, labels = _quadrant_images(n, rng)
        idx.write_idx(folder / (idx.FILES[split][0] + ext), images)
        idx.write_idx(folder / (idx.FILES[split][1] + ext), labels)
    (d / "empty").mkdir()
    for name, argv in (("cond.npz", [str(d / "points.csv"), "--label-column", "cls"]),
                       ("uncond.npz", [str(d / "points.npy")]),
                       ("images.npz", [str(folder)]),
                       ("images_u.npz", [str(folder), "--no-labels"])):
        assert cli.main(["train", *argv, "--out", str(d / name), *TINY]) == 0
    # one model that learns its classes: 4 clusters, T = 200 so that x_T is near N(0, I) (~2 s)
    assert cli.main(["train", str(d / "points.csv"), "--label-column", "cls", "--out", str(d / "learned.npz"),
                     "--hidden", "32", "--n-blocks", "1", "--emb-dim", "16", "--coord-scale", "1", "--T", "200",
                     "--steps", "600", "--batch-size", "64", "--lr", "3e-3"]) == 0
    return d


def _nearest_centre(x: np.ndarray) -> np.ndarray:
    return np.argmin(((x[:, None, :] - CENTRES[None]) ** 2).sum(-1), axis=1)


# ---- train -----------------------------------------------------------------------------------------------

def test_label_column_trains_a_conditional_model_on_the_other_columns(d):
    ckpt = checkpoint.load(d / "cond.npz")
    meta, config = ckpt.info["meta"], ckpt.info["model_config"]
    assert config["num_classes"] == 4 and config["data_dim"] == 2  # the label column left the coordinates
    assert meta["label_dropout"] == 0.1 and "cls" in meta["labels"]
    x = np.load(d / "points.npy")
    np.testing.assert_allclose(meta["data_mean"], x.mean(axis=0))  # standardised without the labels
    assert "labels_sha256" in meta["data_fingerprint"]


def test_labels_file_trains_the_same_model_as_the_column(d, tmp_path):
    out = tmp_path / "m.npz"
    assert cli.main(["train", str(d / "points.npy"), "--labels", str(d / "y_float.npy"), "--out", str(out),
                     *TINY]) == 0
    mine, theirs = checkpoint.load(out), checkpoint.load(d / "cond.npz")
    assert set(mine.arrays) == set(theirs.arrays)
    for key, value in theirs.arrays.items():  # same points, same labels, same seed: the same weights
        np.testing.assert_array_equal(mine.arrays[key], value, err_msg=key)


def test_num_classes_and_label_dropout_are_the_models(d, tmp_path):
    out = tmp_path / "m.npz"
    assert cli.main(["train", str(d / "points.npy"), "--labels", str(d / "y.npy"), "--num-classes", "6",
                     "--label-dropout", "0.3", "--out", str(out), *TINY]) == 0
    ckpt = checkpoint.load(out)
    assert ckpt.info["model_config"]["num_classes"] == 6 and ckpt.info["meta"]["label_dropout"] == 0.3


def test_resume_refuses_other_labels_or_dropout(d, tmp_path, capsys):
    out = tmp_path / "m.npz"
    base = ["train", str(d / "points.npy"), "--out", str(out), *TINY[:-4], "--batch-size", "32"]
    assert cli.main([*base, "--labels", str(d / "y.npy"), "--steps", "10"]) == 0
    capsys.readouterr()
    assert cli.main([*base, "--labels", str(d / "nine.npy"), "--steps", "20", "--num-classes", "10",
                     "--resume"]) == 2
    err = capsys.readouterr().err
    assert "--num-classes" in err and "labels of SHA-256" in err
    assert cli.main([*base, "--labels", str(d / "y.npy"), "--steps", "20", "--label-dropout", "0.2", "--resume"]) == 2
    assert "--label-dropout 0.2 (checkpoint: 0.1)" in capsys.readouterr().err
    assert cli.main([*base, "--labels", str(d / "y.npy"), "--steps", "20", "--resume"]) == 0


# ---- sample ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sampler", [["--sampler", "ancestral"], ["--sampler", "ddim", "--ddim-steps", "50"]])
@pytest.mark.parametrize("guidance", [[], ["--guidance", "2"]])
def test_sampled_classes_land_on_their_clusters(d, tmp_path, sampler, guidance):
    out = tmp_path / "s.npy"
    assert cli.main(["sample", str(d / "learned.npz"), "--label", "balanced", "--n", "200", "--out", str(out),
                     "--chunk", "64", *sampler, *guidance]) == 0
    hits = (_nearest_centre(np.load(out)) == np.arange(200) % 4).mean()
    assert hits > 0.9, hits  # unconditional samples would hit their "class" a quarter of the time


@pytest.mark.parametrize("sampler", [["--sampler", "ancestral"], ["--sampler", "ddim", "--ddim-steps", "50"]])
def test_guidance_pushes_samples_along_their_class_away_from_the_unconditional_mean(d, tmp_path, sampler):
    """ε̃ = (1 + w) ε_c − w ε_∅ extrapolates from the unconditional model (mean 0) past the conditional one:
    the samples' projection on their class's direction grows with w (5.5, 6.8, 7.8 at w = 0, 1, 3)."""
    reach = []
    for w in ("0", "3"):
        out = tmp_path / f"w{w}.npy"
        assert cli.main(["sample", str(d / "learned.npz"), "--label", "balanced", "--guidance", w, "--n", "200",
                         "--out", str(out), *sampler]) == 0
        direction = CENTRES[np.arange(200) % 4] / np.linalg.norm(CENTRES[0])
        reach.append((np.load(out) * direction).sum(axis=1).mean())
    assert reach[1] > reach[0] + 1.0, reach


def test_label_and_labels_file_choose_each_samples_class(d, tmp_path):
    assert cli.main(["sample", str(d / "learned.npz"), "--label", "2", "--guidance", "1", "--n", "100",
                     "--out", str(tmp_path / "two.npy")]) == 0
    assert (_nearest_centre(np.load(tmp_path / "two.npy")) == 2).mean() > 0.9
    labels = np.random.default_rng(1).integers(0, 4, 150)
    np.save(tmp_path / "mine.npy", labels)
    assert cli.main(["sample", str(d / "learned.npz"), "--labels", str(tmp_path / "mine.npy"),
                     "--out", str(tmp_path / "mine_s.npy")]) == 0  # --n defaults to the file's length
    x = np.load(tmp_path / "mine_s.npy")
    assert x.shape == (150, 2) and (_nearest_centre(x) == labels).mean() > 0.9
    assert cli.main(["sample", str(d / "learned.npz"), "--label", "none", "--n", "400",
                     "--out", str(tmp_path / "none.npy")]) == 0
    counts = np.bincount(_nearest_centre(np.load(tmp_path / "none.npy")), minlength=4)
    assert counts.min() > 40, counts  # label dropped: every cluster, not one


def _read_png(path) -> np.ndarray:
    """The pixels (height, width) of an 8-bit greyscale PNG with unfiltered lines, every chunk's CRC checked."""
    raw = open(path, "rb").read()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(raw):
        (length,), kind = struct.unpack(">I", raw[pos:pos + 4]), raw[pos + 4:pos + 8]
        body = raw[pos + 8:pos + 8 + length]
        assert struct.unpack(">I", raw[pos + 8 + length:pos + 12 + length])[0] == zlib.crc32(kind + body)
        chunks[kind] = chunks.get(kind, b"") + body
        pos += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, colour) == (8, 0)
    lines = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(height, width + 1)
    assert (lines[:, 0] == 0).all()
    return lines[:, 1:]


def test_an_image_checkpoint_samples_a_png_grid_with_one_column_per_class(d, tmp_path):
    ckpt = checkpoint.load(d / "images.npz")
    meta, config = ckpt.info["meta"], ckpt.info["model_config"]
    assert meta["image_shape"] == [8, 8] and config["num_classes"] == 4 and config["embed_coords"] is False
    assert meta["data_mean"] == [0.0] * 64 and meta["data_std"] == [1.0] * 64  # pixels in [-1, 1] as they are
    same = ["--label", "balanced", "--guidance", "1", "--n", "10", "--seed", "3"]
    assert cli.main(["sample", str(d / "images.npz"), *same, "--out", str(tmp_path / "s.npy")]) == 0
    assert cli.main(["sample", str(d / "images.npz"), *same, "--out", str(tmp_path / "s.png")]) == 0
    vectors = np.load(tmp_path / "s.npy")
    assert vectors.shape == (10, 64) and np.abs(vectors).max() <= 1.0 + 1e-6  # x0-hat clipped to the pixel range
    grid = _read_png(tmp_path / "s.png")
    assert grid.shape == (3 * 9 + 1, 4 * 9 + 1)  # 10 images in 4 columns (the classes), 1-pixel lines
    tiles = idx.vectors_to_images(vectors, (8, 8))
    for i, tile in enumerate(tiles):
        r, c = divmod(i, 4)
        np.testing.assert_array_equal(grid[1 + 9 * r:9 + 9 * r, 1 + 9 * c:9 + 9 * c], tile)
    assert checkpoint.load(d / "images_u.npz").info["model_config"]["num_classes"] is None  # --no-labels


# ---- eval of images --------------------------------------------------------------------------------------

def test_eval_of_an_image_folder_prints_the_figure_beside_the_baselines(d, tmp_path, capsys):
    judge = tmp_path / "judge"
    argv = ["eval", str(d / "images.npz"), str(d / "mnist"), "--n", "80", "--guidance", "1", "--judge-dir", str(judge),
            "--sampler", "ddim", "--ddim-steps", "10"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "classifier trained" in out and (judge / "classifier.npz").is_file()
    for row in ("held-out real (floor)", "Gaussian fit to train pixels", "one Gaussian per class",
                "noise N(0, I) (ceiling)", "npdiff samples"):
        assert row in out, row
    samples = next(line for line in out.splitlines() if line.startswith("npdiff samples")).split()
    assert samples[2] == "80" and samples[5] == "%"  # an accuracy: the samples had intended classes
    assert "guidance w = 1" in out and "classes 0..3 in turn" in out
    assert cli.main(["eval", str(d / "images_u.npz"), str(d / "mnist"), "--n", "70", "--judge-dir", str(judge)]) == 0
    out = capsys.readouterr().out
    assert "classifier loaded" in out  # cached where the outputs go
    assert next(line for line in out.splitlines() if line.startswith("npdiff samples")).split()[4] == "—"


# ---- bad labels: one line, status 2, nothing written ----------------------------------------------------

ERRORS = [
    # train
    ("train", ["points.npy", "--labels", "negative.npy"], r"negative.npy': row 5 holds the negative class -1"),
    ("train", ["points.npy", "--labels", "fraction.npy"], r"row 7 holds 2.5, not a class number"),
    ("train", ["points.npy", "--labels", "nan.npy"], r"row 3 holds nan, not a class number"),
    ("train", ["points.npy", "--labels", "text.npy"], r"row 0 holds 'a', not a class number"),
    ("train", ["points.npy", "--labels", "short.npy"], r"holds 799 labels for 800 points"),
    ("train", ["points.npy", "--labels", "nine.npy", "--num-classes", "4"], r"row 2 holds the class 9, outside "
                                                                              r"--num-classes 4"),
    ("train", ["points.npy", "--labels", "points.csv"], r"name a .npy file of class numbers"),
    ("train", ["points.npy", "--labels", "missing.npy"], r"missing.npy': no such file"),
    ("train", ["text_column.csv", "--label-column", "cls"], r"'cls' of .*row 1 holds 'cat', not a class number"),
    ("train", ["nan_column.csv", "--label-column", "cls"], r"row 1 holds nan, not a class number"),
    ("train", ["fraction_column.csv", "--label-column", "2"], r"row 1 holds 2.5, not a class number"),
    ("train", ["points.csv", "--label-column", "nope"], r"has the columns a, b, cls"),
    ("train", ["points.csv", "--label-column", "3"], r"has 3 columns"),
    ("train", ["points.npy", "--label-column", "cls"], r"a .npy file has no column names"),
    ("train", ["points.csv", "--label-column", "cls", "--labels", "y.npy"], r"pass one"),
    ("train", ["points.csv", "--num-classes", "3"], r"--num-classes applies to a class-conditional model"),
    ("train", ["points.csv", "--label-column", "cls", "--objective", "hybrid"], r"train with --objective epsilon"),
    ("train", ["mnist", "--labels", "y.npy"], r"is an image folder: its labels come from its label file"),
    ("train", ["empty"], r"not an MNIST-format one: it lacks train-images-idx3-ubyte"),
    # sample
    ("sample", ["uncond.npz", "--label", "1"], r"--label 1: .*uncond.npz' is an unconditional model"),
    ("sample", ["uncond.npz", "--labels", "y.npy"], r"--labels: .*is an unconditional model"),
    ("sample", ["uncond.npz", "--guidance", "2"], r"--guidance: .*is an unconditional model"),
    ("sample", ["cond.npz", "--guidance", "2"], r"--guidance W steers each sample towards its class: give --label"),
    ("sample", ["cond.npz", "--label", "none", "--guidance", "1"], r"--guidance W steers"),
    ("sample", ["cond.npz", "--label", "4"], r"--label 4: the model has 4 classes \(0..3\)"),
    ("sample", ["images.npz", "--label", "7"], r"--label 7: the model has 4 classes"),
    ("sample", ["cond.npz", "--label", "-1"], r"argument --label: classes are numbered 0, 1, …; got -1"),
    ("sample", ["cond.npz", "--label", "2.5"], r"argument --label: expected a class number"),
    ("sample", ["cond.npz", "--guidance", "nan", "--label", "1"], r"argument --guidance: must be a finite number"),
    ("sample", ["cond.npz", "--labels", "y.npy", "--n", "10"], r"holds 800 labels but --n is 10"),
    ("sample", ["cond.npz", "--labels", "nine.npy"], r"nine.npy': labels must lie in 0..3 \(the model has 4 "
                                                     r"classes\), got 9"),
    ("sample", ["cond.npz", "--labels", "fraction.npy"], r"row 7 holds 2.5"),
    ("sample", ["cond.npz", "--label", "1", "--labels", "y.npy"], r"--label and --labels both choose"),
    ("sample", ["uncond.npz", "--out", "grid.png"], r"a PNG grid needs a model of images"),
    # eval
    ("eval", ["cond.npz", "points.csv", "--guidance", "1"], r"--guidance: options of eval on an image folder"),
    ("eval", ["cond.npz", "mnist"], r"cond.npz' was trained on points of dimension 2"),
    ("eval", ["images.npz", "mnist", "--label", "9"], r"--label 9: the model has 4 classes"),
    ("eval", ["images.npz", "mnist", "--n", "20"], r"--n 20: the image figure takes between 65 samples"),
    ("eval", ["images.npz", "mnist", "--n", "110", "--label", "1"], r"the floor needs 110 held-out images of "
                                                                     r"class 1"),
    ("eval", ["images_u.npz", "mnist", "--n", "80", "--label", "1"], r"--label 1: .* is an unconditional model"),
]


def _args(command, argv, d, tmp_path):
    paths = [str(d / a) if (d / a).exists() or a.endswith((".npy", ".npz")) else a for a in argv]
    if command == "eval":
        return [command, *paths, *(["--judge-dir", str(tmp_path / "judge")] if "mnist" in argv else [])]
    if command == "sample" and "--out" in argv:
        paths[paths.index("--out") + 1] = str(tmp_path / argv[argv.index("--out") + 1])
        return [command, *paths]
    out = "m.npz" if command == "train" else "s.npy"
    return [command, *paths, "--out", str(tmp_path / out), *(TINY if command == "train" else [])]


@pytest.mark.parametrize("command, argv, message", ERRORS, ids=[f"{c} {' '.join(a)}" for c, a, _ in ERRORS])
def test_bad_labels_are_one_line_with_status_2_and_write_nothing(d, tmp_path, capsys, command, argv, message):
    import re

    capsys.readouterr()
    assert cli.main(_args(command, argv, d, tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"npdiff {command}: error: "), err
    assert re.search(message, err), err
    assert not [p for p in os.listdir(tmp_path) if p != "judge"], "an output was written"


def test_labels_guidance_and_images_run_on_a_device_backend(d, tmp_path, strict_cupy):
    """The strict CuPy double (tests/strict_cupy.py): labels go to the device where the chain needs them, and
    nothing converts a device array implicitly."""
    out = tmp_path / "m.npz"
    assert cli.main(["train", str(d / "points.csv"), "--label-column", "cls", "--out", str(out), *TINY]) == 0
    for sampler in (["--sampler", "ancestral"], ["--sampler", "ddim", "--ddim-steps", "5"]):
        assert cli.main(["sample", str(out), "--label", "balanced", "--guidance", "2", "--n", "12", "--chunk", "10",
                         "--out", str(tmp_path / "s.npy"), "--force", *sampler]) == 0
    assert cli.main(["train", str(d / "mnist"), "--out", str(tmp_path / "i.npz"), *TINY]) == 0
    assert cli.main(["sample", str(tmp_path / "i.npz"), "--label", "1", "--guidance", "1", "--n", "5",
                     "--out", str(tmp_path / "s.png")]) == 0
    assert _read_png(tmp_path / "s.png").shape == (2 * 9 + 1, 3 * 9 + 1)  # 5 images in ⌈√5⌉ = 3 columns
