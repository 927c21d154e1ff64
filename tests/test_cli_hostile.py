"""The command line used as a hostile or careless user would (issue 19): every case in ``CASES`` is tagged with
its class and its command, and ``python tests/test_cli_hostile.py`` prints the count per class and per command.

    data loss   an output that replaces a file it should not (an existing file, an input, a cache, a user's file
                named like a temporary one), two runs racing on one output, a limit that stops a write late
    memory      an input or output whose size is not bounded before it is read or written
    nonsense    exit 0 with a result that means nothing: a flag that is ignored, an untrained 'no label' row,
                guidance far out of range, a checkpoint whose meta does not fit its model
    traceback   hostile bytes that must still give one line

Each case runs ``npdiff`` in a folder of good and bad files and must give its exit status and one line on stderr
matching its message; a refused case must leave the folder exactly as it was (``snapshot``). Reproduce them all:

    python -m pytest -q tests/test_cli_hostile.py
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import resource
import socket
import struct
import subprocess
import sys
import zipfile
from collections import Counter

import numpy as np
import pytest

from npdiff import cli
from npdiff.images import idx
from npdiff.io import fileio
from npdiff.training import checkpoint

TINY = ["--hidden", "8", "--n-blocks", "1", "--emb-dim", "8", "--T", "20", "--steps", "20", "--batch-size", "32"]
USAGE, FAILURE, OK = 2, 1, 0


def _dead_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(child.stdout)


def _images(n: int, rng, side: int = 8) -> tuple[np.ndarray, np.ndarray]:
    labels = (np.arange(n) % 4).astype(np.uint8)
    images = rng.integers(0, 40, (n, side, side)).astype(np.uint8)
    return images, labels


def _hand_made(path, base: checkpoint.Checkpoint, change) -> None:
    info = change(json.loads(json.dumps(base.info)))
    with open(path, "wb") as f:
        np.savez(f, format_version=np.array(1), meta=np.array(json.dumps(info)), **base.arrays)


def _gzip_bomb(path, promised_shape, body_bytes: int) -> None:
    """A gzipped IDX file whose header promises ``promised_shape`` uint8 and whose stream expands to ``body_bytes``
    zeros after it: a few kB on disk."""
    header = bytes([0, 0, 0x08, len(promised_shape)]) + np.asarray(promised_shape, ">u4").tobytes()
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write(header)
        block = bytes(1 << 20)
        for start in range(0, body_bytes, len(block)):
            f.write(block[:min(len(block), body_bytes - start)])


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 2))
    y = np.arange(200) % 4
    np.savetxt(d / "points.csv", x, delimiter=",")
    np.save(d / "points.npy", x)
    np.save(d / "other.npy", rng.normal(size=(200, 2)))  # the same shape, other numbers
    np.save(d / "y.npy", y)
    np.savetxt(d / "labelled.csv", np.c_[x, y], delimiter=",", fmt=["%.17g", "%.17g", "%d"])
    np.save(d / "given.npy", np.array([[0.5, np.nan]]))
    for name, argv in (("model.npz", ["{d}/points.csv"]),
                       ("cond.npz", ["{d}/points.npy", "--labels", "{d}/y.npy"]),
                       ("nodrop.npz", ["{d}/points.npy", "--labels", "{d}/y.npy", "--label-dropout", "0"])):
        assert cli.main(["train", *[a.replace("{d}", str(d)) for a in argv], "--out", str(d / name), *TINY]) == 0
    folder = d / "mnist"
    folder.mkdir()
    for split, n in (("train", 64), ("test", 160)):
        images, labels = _images(n, rng)
        idx.write_idx(folder / (idx.FILES[split][0] + ".gz"), images)
        idx.write_idx(folder / (idx.FILES[split][1] + ".gz"), labels)
    wide = d / "mnist5"
    wide.mkdir()
    for split, n in (("train", 64), ("test", 160)):
        images, labels = _images(n, rng, side=5)
        idx.write_idx(wide / (idx.FILES[split][0] + ".gz"), images)
        idx.write_idx(wide / (idx.FILES[split][1] + ".gz"), labels)
    assert cli.main(["train", str(folder), "--out", str(d / "images.npz"), *TINY]) == 0
    # a small .gz that expands to 64 MiB past a header that promises 16 bytes
    bomb = d / "bomb"
    bomb.mkdir()
    _gzip_bomb(bomb / (idx.FILES["train"][0] + ".gz"), (1, 4, 4), 64 * 2**20)
    idx.write_idx(bomb / (idx.FILES["train"][1] + ".gz"), np.zeros(1, np.uint8))
    # a header promising 2**40 bytes of images in a file of a few bytes
    huge = d / "huge"
    huge.mkdir()
    _gzip_bomb(huge / (idx.FILES["train"][0] + ".gz"), (2**24, 256, 256), 0)
    idx.write_idx(huge / (idx.FILES["train"][1] + ".gz"), np.zeros(1, np.uint8))
    # a .npy whose header promises 10**12 points
    with open(d / "liar.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": (10**12, 2)})
        f.write(bytes(64))
    # checkpoints whose meta does not fit their model
    good, images = checkpoint.load(d / "model.npz"), checkpoint.load(d / "images.npz")
    _hand_made(d / "bad_shape.npz", images, lambda i: {**i, "meta": {**i["meta"], "image_shape": [7, 7]}})
    _hand_made(d / "bad_print.npz", good,
               lambda i: {**i, "meta": {**i["meta"], "data_fingerprint": {"shape": [200, 3], "sha256": "0"}}})
    _hand_made(d / "bad_dropout.npz", checkpoint.load(d / "cond.npz"),
               lambda i: {**i, "meta": {**i["meta"], "label_dropout": 1.5}})
    _hand_made(d / "bad_classes.npz", good, lambda i: {**i, "meta": {**i["meta"], "labels": "y.npy"}})
    _hand_made(d / "bad_prediction.npz", good, lambda i: {**i, "meta": {**i["meta"], "prediction": "score"}})
    # a checkpoint member whose .npy header promises far more than the member holds
    with zipfile.ZipFile(d / "zip_liar.npz", "w") as z:
        with z.open("format_version.npy", "w") as f:
            np.lib.format.write_array(f, np.array(1))
        with z.open("param/x.npy", "w") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": (10**11,)})
            f.write(bytes(80))
    (d / "zip_garbage.npz").write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4)
    badgz = d / "badgz"
    badgz.mkdir()
    valid = bytes([0, 0, 0x08, 1]) + (96).to_bytes(4, "big") + bytes(96)  # an IDX file of 96 bytes
    (badgz / (idx.FILES["train"][0] + ".gz")).write_bytes(gzip.compress(valid)[:-9] + b"\xff" * 9)
    idx.write_idx(badgz / (idx.FILES["train"][1] + ".gz"), np.zeros(1, np.uint8))
    (d / "outdir").mkdir()
    np.save(d / "old.npy", np.arange(4.0))
    (d / "old.png").write_bytes(b"\x89PNG the user's figure")
    os.symlink(d / "nowhere.npy", d / "dangling.npy")
    os.symlink(d / "points.csv", d / "link.npz")
    (d / "judgeckpt").mkdir()
    os.link(d / "images.npz", d / "judgeckpt" / "classifier.npz")  # the cache path names the checkpoint itself
    return d


def snapshot(d) -> dict:
    state = {}
    for root, dirs, files in os.walk(d):
        for name in dirs + files:
            p = os.path.join(root, name)
            st = os.lstat(p)
            regular = os.path.isfile(p) and not os.path.islink(p)
            digest = hashlib.sha256(open(p, "rb").read()).hexdigest() if regular else "dir or link"
            state[os.path.relpath(p, d)] = (st.st_size, st.st_mtime_ns, digest)
    return state


def sample(ckpt="model.npz", *extra, out="{d}/s.npy"):
    return ["sample", "{d}/" + ckpt, "--out", out, "--n", "8", *extra]


def train(data="{d}/points.csv", *extra, out="{d}/new.npz"):
    return ["train", data, "--out", out, *TINY, *extra]


def evaluate(ckpt="model.npz", data="{d}/points.csv", *extra):
    return ["eval", "{d}/" + ckpt, data, *extra]


def _held_lock(d) -> None:
    """A live run (this process) holds s.npy and new.npz."""
    for name in ("s.npy", "new.npz"):
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": "npdiff sample (another terminal)",
                  "started": "now"}
        with open(fileio.lock_path(d / name), "w") as f:
            json.dump(holder, f)


def _no_lock(d) -> None:
    for name in ("s.npy", "new.npz"):
        if os.path.exists(fileio.lock_path(d / name)):
            os.remove(fileio.lock_path(d / name))


# (class, command, id, argv, status, message); "{d}" is the folder
CASES = [
    # ---- data loss ----
    ("data loss", "sample", "out is an existing file", sample(out="{d}/old.npy"), USAGE, "exists; pass --force"),
    ("data loss", "sample", "out is the training data", sample(out="{d}/points.npy"), USAGE, "exists; pass --force"),
    ("data loss", "sample", "out is the csv training data", sample(out="{d}/points.csv"), USAGE, "exists; pass --force"),
    ("data loss", "sample", "out is its own --given", sample("model.npz", "--given", "{d}/given.npy", "--force",
                                                             out="{d}/given.npy"), USAGE, "same file as --given"),
    ("data loss", "sample", "out is its own --given by another path",
     sample("model.npz", "--given", "{d}/outdir/../given.npy", "--force", out="{d}/given.npy"), USAGE,
     "same file as --given"),
    ("data loss", "sample", "out is its own --labels", ["sample", "{d}/cond.npz", "--out", "{d}/y.npy", "--labels",
                                                        "{d}/y.npy", "--force"], USAGE, "same file as --labels"),
    ("data loss", "sample", "out is an existing png", sample("images.npz", out="{d}/old.png"), USAGE, "exists"),
    ("data loss", "sample", "out is a dangling link", sample(out="{d}/dangling.npy"), USAGE, "exists; pass --force"),
    ("data loss", "sample", "out held by a run whose lock is garbage", ["garbagelock"] + sample(), USAGE,
     "is being written by another run"),
    ("data loss", "sample", "out held by a running sample", ["lock"] + sample(), USAGE,
     r"is being written by npdiff sample \(another terminal\) \(pid \d+"),
    ("data loss", "train", "out held by a running train", ["lock"] + train(), USAGE, "is being written by"),
    ("data loss", "train", "out is the --labels file", ["train", "{d}/points.npy", "--labels", "{d}/y.npy", "--out",
                                                        "{d}/y.npy", *TINY], USAGE, "same file as --labels"),
    ("data loss", "train", "out --force is a link to the data", train("{d}/points.csv", "--force",
                                                                      out="{d}/link.npz"), USAGE,
     "same file as DATA"),
    ("data loss", "train", "resume on same-shape other data",
     ["train", "{d}/other.npy", "--out", "{d}/cond.npz", "--labels", "{d}/y.npy", *TINY[:-4], "--steps", "40",
      "--batch-size", "32", "--resume"], USAGE, r"DATA of shape \(200, 2\) and SHA-256"),
    ("data loss", "train", "file-size limit below the checkpoint", ["fsize"] + train(), USAGE,
     r"file-size limit \(ulimit -f\)"),
    ("data loss", "sample", "file-size limit below the samples", ["fsize"] + sample("model.npz", "--n", "5000"), USAGE,
     r"file-size limit \(ulimit -f\)"),
    ("data loss", "sample", "a user's file named like a temporary one", ["userfile"] + sample(), OK, ""),
    ("data loss", "train", "a user's file named like a temporary one", ["userfile"] + train(), OK, ""),
    ("data loss", "sample", "a dead run's lock is taken over", ["deadlock"] + sample(), OK, ""),
    ("data loss", "eval", "a cache of other data is not replaced", ["othercache"] + evaluate(
        "images.npz", "{d}/mnist", "--n", "70", "--judge-dir", "{d}/judge"), USAGE,
     "does not fit: it was trained on elsewhere.* --retrain-judge"),
    ("data loss", "eval", "a refused image input leaves the cache", ["othercache"] + evaluate(
        "images.npz", "{d}/mnist5", "--n", "70", "--judge-dir", "{d}/judge", "--retrain-judge"), USAGE,
     r"holds 5×5 images; the model makes 8×8"),
    ("data loss", "eval", "judge cache is the checkpoint", evaluate("images.npz", "{d}/mnist", "--n", "70",
                                                                    "--judge-dir", "{d}/judgeckpt"), USAGE,
     "same file as the checkpoint"),
    # ---- memory ----
    ("memory", "train", "gzip expanding far past its header", train("{d}/bomb"), USAGE, "trailing bytes|trailer declares"),
    ("memory", "train", "gzip header promising 2**40 bytes", train("{d}/huge"), USAGE,
     "more than the .* bytes npdiff expands"),
    ("memory", "train", ".npy header promising 10**12 points", train("{d}/liar.npy"), USAGE,
     r"truncated \.npy file: its header promises shape \(1000000000000, 2\)"),
    ("memory", "sample", "checkpoint member promising 800 GB", sample("zip_liar.npz"), USAGE,
     "promises 800000000000 bytes"),
    ("memory", "sample", ".npy --given promising 10**12 rows", sample("model.npz", "--given", "{d}/liar.npy"), USAGE,
     r"truncated \.npy file"),
    ("memory", "sample", "png grid beyond the PNG limit", sample("images.npz", "--n", str(10**19), out="{d}/g.png"),
     USAGE, "beyond the PNG limit"),
    # ---- nonsense ----
    ("nonsense", "sample", "label none on dropout 0", sample("nodrop.npz", "--label", "none"), USAGE,
     "--label none: this model was trained with label dropout 0"),
    ("nonsense", "sample", "guidance on dropout 0", sample("nodrop.npz", "--label", "1", "--guidance", "2"), USAGE,
     "--guidance 2: this model was trained with label dropout 0"),
    ("nonsense", "sample", "labels file and guidance on dropout 0",
     sample("nodrop.npz", "--guidance", "1")[:4] + ["--labels", "{d}/y.npy", "--guidance", "1"], USAGE,
     "label dropout 0"),
    ("nonsense", "eval", "guidance on dropout 0 (no image)", evaluate("nodrop.npz", "{d}/points.csv", "--guidance", "1"),
     USAGE, "options of eval on an image folder"),
    ("nonsense", "sample", "guidance 1e6", sample("cond.npz", "--label", "1", "--guidance", "1e6"), USAGE,
     r"argument --guidance: must be a finite number in \[0, 20\]"),
    ("nonsense", "sample", "guidance 21", sample("cond.npz", "--label", "1", "--guidance", "21"), USAGE,
     r"must be a finite number in \[0, 20\]"),
    ("nonsense", "eval", "guidance 1e6", evaluate("images.npz", "{d}/mnist", "--guidance", "1e6"), USAGE,
     r"must be a finite number in \[0, 20\]"),
    ("nonsense", "sample", "guidance 0 on dropout 0 is the conditional model", sample("nodrop.npz", "--label", "1",
                                                                                      "--guidance", "0"), OK, ""),
    ("nonsense", "train", "--n with a data file", train("{d}/points.csv", "--n", "50"), USAGE,
     "--n is not used here"),
    ("nonsense", "train", "--no-labels with points", train("{d}/points.csv", "--no-labels"), USAGE,
     "--no-labels is not used here"),
    ("nonsense", "train", "--coord-scale with images", train("{d}/mnist", "--coord-scale", "3"), USAGE,
     "--coord-scale is not used here"),
    ("nonsense", "eval", "--n with a data file", evaluate("model.npz", "{d}/points.csv", "--n", "5"), USAGE,
     "--n is not used here"),
    ("nonsense", "eval", "--n-t with --exact", evaluate("model.npz", "{d}/points.csv", "--exact", "--n-t", "3"), USAGE,
     "--n-t is not used here"),
    ("nonsense", "eval", "--judge-dir on points", evaluate("model.npz", "{d}/points.csv", "--judge-dir", "{d}/j"),
     USAGE, "--judge-dir is not used here"),
    ("nonsense", "eval", "--exact on an image folder", evaluate("images.npz", "{d}/mnist", "--exact"), USAGE,
     "--exact is not used here"),
    ("nonsense", "eval", "--n-t on an image folder", evaluate("images.npz", "{d}/mnist", "--n-t", "2"), USAGE,
     "--n-t is not used here"),
    ("nonsense", "eval", "--retrain-judge on points", evaluate("model.npz", "{d}/points.csv", "--retrain-judge"),
     USAGE, "--retrain-judge is not used here"),
    ("nonsense", "sample", "image_shape that does not fit the dimension", sample("bad_shape.npz"), USAGE,
     r"image_shape 7×7 holds 49 pixels; the model's dimension is 64"),
    ("nonsense", "sample", "data shape that does not fit the dimension", sample("bad_print.npz"), USAGE,
     r"data of shape \(200, 3\)"),
    ("nonsense", "sample", "label dropout 1.5 in the meta", sample("bad_dropout.npz"), USAGE,
     r"label_dropout must be a number in \[0, 1\)"),
    ("nonsense", "sample", "labels in the meta of a model without classes", sample("bad_classes.npz"), USAGE,
     "trained on the labels of 'y.npy', but the model has no classes"),
    ("nonsense", "sample", "unknown prediction in the meta", sample("bad_prediction.npz"), USAGE,
     "prediction 'score' is not one of"),
    ("nonsense", "train", "a negative --label-column", ["train", "{d}/labelled.csv", "--label-column", "-1", "--out",
                                                        "{d}/new.npz", *TINY], OK, ""),
    # ---- tracebacks ----
    ("traceback", "train", "out in a folder named like a file", train(out="{d}/points.npy/m.npz"), USAGE,
     "does not exist|is a folder|name"),
    ("traceback", "eval", "a judge cache of garbage bytes", ["garbagecache"] + evaluate(
        "images.npz", "{d}/mnist", "--n", "70", "--judge-dir", "{d}/judge"), USAGE, "not a readable classifier"),
    ("traceback", "sample", "a checkpoint of garbage after a zip header", sample("zip_garbage.npz"), USAGE,
     "not a readable npdiff checkpoint"),
    ("traceback", "train", "an IDX folder with a corrupt gzip", train("{d}/badgz"), USAGE, "corrupt or truncated gzip"),
]


def _prepare(d, kind: str) -> None:
    if kind == "lock":
        _held_lock(d)
    elif kind == "deadlock":
        holder = {"pid": _dead_pid(), "host": socket.gethostname(), "command": "killed", "started": "then"}
        with open(fileio.lock_path(d / "s.npy"), "w") as f:
            json.dump(holder, f)
    elif kind == "garbagelock":
        with open(fileio.lock_path(d / "s.npy"), "wb") as f:
            f.write(b"\xff\x00 not json")
    elif kind == "userfile":
        dead = _dead_pid()
        for name in (f"s.tmp-{dead}.npy", f"new.tmp-{dead}.npz", f"s.npdiff-tmp-{dead}-0badf00d-00000000.npy"):
            (d / name).write_bytes(b"the user's own file")
    elif kind == "othercache":
        from npdiff.images import classifier

        model = classifier.Classifier(64, 4, classifier.DEFAULTS["hidden"], classifier.DEFAULTS["activation"], (8, 8))
        model.meta.update(data={"folder": "elsewhere", "sha256": "0" * 64},
                          training={k: v for k, v in classifier.DEFAULTS.items() if k not in ("hidden", "activation")},
                          test_accuracy=0.5, n_test=10)
        os.makedirs(d / "judge", exist_ok=True)
        classifier.save(d / "judge" / classifier.CACHE_NAME, model)
    elif kind == "garbagecache":
        os.makedirs(d / "judge", exist_ok=True)
        (d / "judge" / "classifier.npz").write_bytes(b"PK\x03\x04 garbage")


@pytest.mark.parametrize("kind, command, argv, status, message", [c[:2] + c[3:] for c in CASES],
                         ids=[f"{c[0]}: {c[1]}: {c[2]}" for c in CASES])
def test_a_hostile_case_gives_its_status_and_one_line_and_loses_nothing(d, tmp_path, capsys, kind, command, argv,
                                                                         status, message):
    setup = argv[0] if argv[0] not in ("train", "sample", "eval") else None
    argv = argv[1:] if setup else argv
    for name in ("s.npy", "new.npz", "g.png"):
        if (d / name).exists():
            os.remove(d / name)
    _no_lock(d)
    if setup not in ("othercache", "garbagecache") and (d / "judge").exists():
        import shutil

        shutil.rmtree(d / "judge")
    _prepare(d, setup or "")
    before = snapshot(d)
    capsys.readouterr()
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    if setup == "fsize":
        resource.setrlimit(resource.RLIMIT_FSIZE, (2_000, limits[1]))
    try:
        rc = cli.main([a.replace("{d}", str(d)) for a in argv])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
    err = capsys.readouterr().err
    assert rc == status, err
    assert "Traceback" not in err
    if status:
        assert err.count("\n") == 1 and ": error: " in err, err
        assert re.search(message, err), err
        assert snapshot(d) == before, "a refused command changed the folder"
    else:
        after = snapshot(d)
        assert all(after.get(k) == v for k, v in before.items() if "lock" not in k), "an existing file changed"
        assert not [k for k in after if k.endswith(fileio.LOCK_SUFFIX)], "a lock was left behind"
    if setup == "userfile":
        assert sorted(p for p in os.listdir(d) if "tmp-" in p) == sorted(
            k for k in before if "tmp-" in k), "a user's file was removed"


def test_two_samples_started_together_on_one_output_one_is_refused(d, tmp_path):
    """Real processes: the second run finds the first one's lock (it names the holder) and changes nothing."""
    out = tmp_path / "s.npy"
    code = ("import sys, time\nfrom npdiff.io import fileio\n"
            "with fileio.output_lock(sys.argv[1], 'npdiff sample (first)'):\n    print('held', flush=True)\n"
            "    time.sleep(30)\n")
    first = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "held"
        second = subprocess.run([sys.executable, "-m", "npdiff", "sample", str(d / "model.npz"), "--out", str(out),
                                 "--n", "8"], capture_output=True, text=True)
        assert second.returncode == USAGE and "npdiff sample (first) (pid" in second.stderr, second.stderr
        assert not out.exists()
    finally:
        first.kill()
        first.wait()


def test_a_png_grid_is_written_one_row_of_tiles_at_a_time(d, tmp_path, monkeypatch):
    """The grid writer never holds the samples: it sees each chunk once and keeps one row of tiles."""
    from npdiff.cli import images as cli_images

    seen = []
    real = cli_images.GridWriter.write
    monkeypatch.setattr(cli_images.GridWriter, "write", lambda self, x: (seen.append(len(x)), real(self, x)))
    out = tmp_path / "g.png"
    assert cli.main(["sample", str(d / "images.npz"), "--out", str(out), "--n", "30", "--chunk", "7"]) == 0
    assert max(seen) <= 7 and sum(seen) == 30
    raw = out.read_bytes()
    chunks, pos = [], 8
    while pos < len(raw):
        length = struct.unpack(">I", raw[pos:pos + 4])[0]
        chunks.append(raw[pos + 4:pos + 8])
        pos += 12 + length
    assert chunks[0] == b"IHDR" and chunks[-1] == b"IEND" and chunks.count(b"IDAT") >= 2


def counts() -> tuple[Counter, Counter]:
    return Counter(c[0] for c in CASES), Counter((c[0], c[1]) for c in CASES)


if __name__ == "__main__":
    by_class, by_command = counts()
    for kind, n in by_class.items():
        per = ", ".join(f"{cmd} {m}" for (k, cmd), m in sorted(by_command.items()) if k == kind)
        print(f"{kind:<10} {n:>3}  ({per})")
    print(f"{'total':<10} {len(CASES):>3}")


def _png_pixels(raw: bytes) -> np.ndarray:
    """The pixels of an 8-bit greyscale PNG whose scanlines all use filter 0 (what npdiff writes)."""
    pos, data, size = 8, b"", None
    while pos < len(raw):
        length = struct.unpack(">I", raw[pos:pos + 4])[0]
        kind, body = raw[pos + 4:pos + 8], raw[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            data += body
        pos += 12 + length
    width, height = size
    lines = np.frombuffer(__import__("zlib").decompress(data), np.uint8).reshape(height, width + 1)
    assert not lines[:, 0].any()
    return lines[:, 1:]


@pytest.mark.parametrize("n, columns, chunks", [(9, 4, [3, 1, 5]), (8, 4, [8]), (5, 3, [1, 1, 1, 1, 1]), (1, 1, [1])])
def test_the_streamed_grid_is_the_mosaic_of_all_samples(tmp_path, n, columns, chunks):
    from npdiff.cli import images as cli_images

    vectors = np.random.default_rng(n).uniform(-1.2, 1.2, (n, 6))  # beyond ±1 too: clipped to the pixel range
    with cli_images.write_grid_rows(tmp_path / "g.png", n, (2, 3), columns) as grid:
        start = 0
        for size in chunks:
            grid.write(vectors[start:start + size])
            start += size
    np.testing.assert_array_equal(_png_pixels((tmp_path / "g.png").read_bytes()),
                                  cli_images.mosaic(vectors, (2, 3), columns))
    assert _png_pixels(cli_images.png_bytes(cli_images.mosaic(vectors, (2, 3), columns))).shape == \
        cli_images.grid_size(n, (2, 3), columns)
