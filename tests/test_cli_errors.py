"""Every user error of the command line: the documented exit status, one line on stderr, no traceback, no file changed.

One folder holds good and bad data files, good and bad checkpoints and existing outputs; each case runs
``npdiff`` on it and the folder must be byte-for-byte (and mtime-for-mtime) what it was. The table of
messages in docs/command-line.md is this matrix in words.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os

import numpy as np
import pytest

from npdiff import cli
from npdiff.io import fileio, streaming
from npdiff.training import checkpoint

TINY = ["--hidden", "8", "--n-blocks", "1", "--emb-dim", "8", "--coord-scale", "1"]
RUN = ["--T", "20", *TINY, "--steps", "40", "--batch-size", "32", "--ema", "0.9", "--lr", "0.001"]


def _hand_made(path, base: checkpoint.Checkpoint, info_change=None, arrays_change=None) -> None:
    info = json.loads(json.dumps(base.info))
    info = info_change(info) if info_change else info
    arrays = {k: v.copy() for k, v in base.arrays.items()}
    if arrays_change:
        arrays_change(arrays)
    with open(path, "wb") as f:
        np.savez(f, format_version=np.array(1), meta=np.array(json.dumps(info)), **arrays)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("matrix")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 2))
    np.savetxt(d / "points.csv", x, delimiter=",")
    np.save(d / "points.npy", x)
    np.save(d / "points3d.npy", rng.normal(size=(50, 3)))
    assert cli.main(["train", str(d / "points.csv"), "--out", str(d / "model.npz"), *RUN]) == 0
    assert cli.main(["train", "8gaussians", "--out", str(d / "sd.npz"), "--objective", "sohl_dickstein",
                     "--schedule", "sohl_dickstein", "--T", "10", *TINY, "--steps", "20"]) == 0
    assert cli.main(["train", "8gaussians", "--out", str(d / "cosine.npz"), "--schedule", "cosine", "--T", "50", *TINY,
                     "--steps", "20"]) == 0
    assert cli.main(["sample", str(d / "model.npz"), "--out", str(d / "old_samples.npy"), "--n", "10"]) == 0
    # bad data files
    (d / "text.npy").write_text("1,2\n3,4\n")
    (d / "random.npy").write_bytes(bytes(np.random.default_rng(1).integers(0, 256, 500, dtype=np.uint8)))
    with open(d / "archive.npy", "wb") as f:
        np.savez(f, x=x)
    np.save(d / "objects.npy", np.array([{"a": 1}, None], dtype=object))
    np.save(d / "complex.npy", x + 1j)
    np.save(d / "flat.npy", x[:, 0])
    np.save(d / "huge.npy", x * 1e300)
    np.save(d / "one_row.npy", x[:1])
    np.save(d / "nan.npy", np.where(x > 2, np.nan, x))
    (d / "binary.csv").write_bytes(b"\xff\xfe\x00garbage\x81\n")
    (d / "empty.csv").write_text("")
    (d / "header_only.csv").write_text("a,b\n")
    (d / "ragged.csv").write_text("1,2\n3\n")
    (d / "constant.csv").write_text("1,2\n1,3\n1,4\n")
    (d / "points.txt").write_text("1,2\n")
    (d / "folder.npy").mkdir()
    # conditions of sample --given / --observed (data coordinates, NaN = free)
    (d / "given.csv").write_text("0.5,nan\n")
    (d / "given_all_known.csv").write_text("x,y\n0.5,-1\n")
    (d / "given_all_free.csv").write_text("nan,nan\n")
    np.save(d / "given_3d.npy", np.array([[0.5, np.nan, np.nan]]))
    np.save(d / "given_inf.npy", np.array([np.inf, np.nan]))
    np.save(d / "given_3rows.npy", np.array([[0.5, np.nan], [np.nan, 1.0], [0.0, np.nan]]))
    np.save(d / "given_second_row_known.npy", np.array([[0.5, np.nan], [0.5, 1.0]]))
    np.save(d / "observed.npy", np.array([0.5, 1.0]))
    np.save(d / "observed_2rows.npy", np.array([[0.5, 1.0], [0.0, 0.0]]))
    np.save(d / "observed_nan.npy", np.array([0.5, np.nan]))
    (d / "outdir").mkdir()
    # bad checkpoints
    good = checkpoint.load(d / "model.npz")
    _hand_made(d / "meta_list.npz", good, lambda info: [1, 2])
    _hand_made(d / "no_config.npz", good, lambda info: {**info, "model_config": None})
    _hand_made(d / "unknown_key.npz", good, lambda info: {**info, "model_config": {**info["model_config"], "x": 1}})
    _hand_made(d / "null_schedule.npz", good, lambda info: {**info, "schedule_config": None})
    _hand_made(d / "no_mean.npz", good, lambda info: {**info, "meta": {k: v for k, v in info["meta"].items()
                                                                        if k != "data_mean"}})
    _hand_made(d / "no_objective.npz", good, lambda info: {**info, "meta": {}})
    _hand_made(d / "new_objective.npz", good, lambda info: {**info, "meta": {**info["meta"], "objective": "bridge"}})
    _hand_made(d / "nan_weights.npz", good, arrays_change=lambda a: a["ema/shadow"].fill(np.nan))
    _hand_made(d / "huge_weights.npz", good, arrays_change=lambda a: a["ema/shadow"].fill(1e30))
    np.savez(d / "plain.npz", a=np.zeros(3))
    (d / "garbage.npz").write_bytes(b"PK\x03\x04 not really a zip")
    return d


def snapshot(d) -> dict:
    state = {}
    for root, dirs, files in os.walk(d):
        for name in dirs + files:
            p = os.path.join(root, name)
            st = os.stat(p)
            digest = hashlib.sha256(open(p, "rb").read()).hexdigest() if os.path.isfile(p) else "dir"
            state[os.path.relpath(p, d)] = (st.st_size, st.st_mtime_ns, digest)
    return state


def train(*extra):
    return ["train", "{d}/points.csv", "--out", "{d}/new.npz", *extra]


def resume(*changes):
    """Resume model.npz with its own settings, then ``changes`` (flags given later win in argparse)."""
    return ["train", "{d}/points.csv", "--out", "{d}/model.npz", *RUN, "--steps", "80", "--resume", *changes]


def sample(ckpt="model.npz", *extra, out="{d}/s.npy"):
    return ["sample", "{d}/" + ckpt, "--out", out, *extra]


def evaluate(ckpt="model.npz", data="{d}/points.csv", *extra):
    return ["eval", "{d}/" + ckpt, data, *extra]


USAGE, FAILURE = 2, 1
CASES = [
    # flags: refused where they are parsed
    ("unknown flag", train("--colour", "red"), USAGE, "unrecognized arguments: --colour red"),
    ("no command", [], USAGE, "the following arguments are required: command"),
    ("n not a number", sample("model.npz", "--n", "lots"), USAGE, "argument --n: expected an integer"),
    ("n zero", sample("model.npz", "--n", "0"), USAGE, r"argument --n: must be an integer >= 1, got 0"),
    ("steps zero", train("--steps", "0"), USAGE, "argument --steps: must be an integer >= 1"),
    ("T zero", train("--T", "0"), USAGE, "argument --T: must be an integer in 1..100000"),
    ("batch size zero", train("--batch-size", "0"), USAGE, "argument --batch-size/--batch: must be"),
    ("hidden zero", train("--hidden", "0"), USAGE, "argument --hidden/--width: must be"),
    ("lr nan", train("--lr", "nan"), USAGE, r"argument --lr: must be a finite number in \(0, inf\)"),
    ("lr negative", train("--lr", "-0.001"), USAGE, "argument --lr: must be a finite number"),
    ("ema nan", train("--ema", "nan"), USAGE, r"argument --ema: must be a finite number in \[0, 1\)"),
    ("ema one", train("--ema", "1"), USAGE, "argument --ema: must be a finite number"),
    ("negative checkpoint interval", train("--checkpoint-every", "-5"), USAGE,
     "argument --checkpoint-every: must be an integer >= 0"),
    ("clip zero", sample("model.npz", "--clip-x0", "0"), USAGE, r"argument --clip-x0: must be a finite number in \(0"),
    ("clip negative", sample("model.npz", "--clip-x0", "-2"), USAGE, "argument --clip-x0: must be a finite number"),
    ("clip inf", sample("model.npz", "--clip-x0", "inf"), USAGE, "argument --clip-x0: must be a finite number"),
    ("n-t zero", evaluate("model.npz", "{d}/points.csv", "--n-t", "0"), USAGE, "argument --n-t: must be"),
    ("chunk zero", sample("model.npz", "--chunk", "0"), USAGE, "argument --chunk: must be"),
    ("bad sampler", sample("model.npz", "--sampler", "euler_a"), USAGE, "argument --sampler: invalid choice"),
    ("bad max-output", sample("model.npz", "--max-output", "lots"), USAGE, "expected a size such as 500M"),
    ("resume and force", train("--resume", "--force"), USAGE, "pass one of them"),
    # data files
    ("missing data file", train()[:1] + ["{d}/nope.csv"] + train()[2:], USAGE, "no such data file"),
    ("neither file nor toy set", ["train", "hearts", "--out", "{d}/new.npz"], USAGE, "neither a file nor a toy set"),
    ("wrong extension", ["train", "{d}/points.txt", "--out", "{d}/new.npz"], USAGE, r"expected a \.npy or \.csv"),
    ("folder named .npy", ["train", "{d}/folder.npy", "--out", "{d}/new.npz"], USAGE, "is a folder, not a data file"),
    ("text in .npy", ["train", "{d}/text.npy", "--out", "{d}/new.npz"], USAGE, r"is not a \.npy file"),
    ("random bytes in .npy", ["train", "{d}/random.npy", "--out", "{d}/new.npz"], USAGE, r"is not a \.npy file"),
    ("npz named .npy", ["train", "{d}/archive.npy", "--out", "{d}/new.npz"], USAGE, r"is an \.npz archive"),
    ("object array", ["train", "{d}/objects.npy", "--out", "{d}/new.npz"], USAGE, "holds Python objects"),
    ("complex data", ["train", "{d}/complex.npy", "--out", "{d}/new.npz"], USAGE, "holds complex numbers"),
    ("1-D data", ["train", "{d}/flat.npy", "--out", "{d}/new.npz"], USAGE, "expected 2-D points"),
    ("NaN in data", ["train", "{d}/nan.npy", "--out", "{d}/new.npz"], USAGE, "non-finite value"),
    ("overflowing data", ["train", "{d}/huge.npy", "--out", "{d}/new.npz"], USAGE, "overflows float64"),
    ("one point", ["train", "{d}/one_row.npy", "--out", "{d}/new.npz"], USAGE, "needs at least 2 points, got 1"),
    ("constant column", ["train", "{d}/constant.csv", "--out", "{d}/new.npz"], USAGE, r"\[0\] are constant"),
    ("binary csv", ["train", "{d}/binary.csv", "--out", "{d}/new.npz"], USAGE, "binary.csv' is not a UTF-8 text"),
    ("empty csv", ["train", "{d}/empty.csv", "--out", "{d}/new.npz"], USAGE, "holds no points"),
    ("header-only csv", ["train", "{d}/header_only.csv", "--out", "{d}/new.npz"], USAGE, "holds no points"),
    ("ragged csv", ["train", "{d}/ragged.csv", "--out", "{d}/new.npz"], USAGE, "not a comma-separated table"),
    ("eval dimension mismatch", evaluate("model.npz", "{d}/points3d.npy"), USAGE, "has 3 dimensions; the model was"),
    ("eval data far out", evaluate("model.npz", "{d}/huge.npy"), FAILURE,
     "bound is not finite .*e\\+300 standard deviations"),
    # checkpoints
    ("missing checkpoint", evaluate("nope.npz", "8gaussians"), USAGE, "no checkpoint at"),
    ("data file as checkpoint", evaluate("points.npy", "{d}/model.npz"), USAGE, "single .npy array, not an .npz"),
    ("folder as checkpoint", sample("outdir"), USAGE, "is a folder, not a checkpoint"),
    ("corrupt zip", sample("garbage.npz"), USAGE, "not a readable npdiff checkpoint"),
    ("plain npz", sample("plain.npz"), USAGE, "not an npdiff checkpoint"),
    ("meta a JSON list", sample("meta_list.npz"), USAGE, "a JSON list, not an object"),
    ("no model config", sample("no_config.npz"), USAGE, "no model configuration stored"),
    ("unknown config key", sample("unknown_key.npz"), USAGE, "configuration cannot be built"),
    ("null schedule", sample("null_schedule.npz"), USAGE, "stores no schedule"),
    ("no data_mean", sample("no_mean.npz"), USAGE, "'data_mean' must be 2 finite numbers"),
    ("no objective", evaluate("no_objective.npz"), USAGE, "not written by `npdiff train`"),
    ("unknown objective", sample("new_objective.npz"), USAGE, "unknown objective 'bridge'"),
    ("NaN weights (sample)", sample("nan_weights.npz"), USAGE, "non-finite weights"),
    ("NaN weights (eval)", evaluate("nan_weights.npz"), USAGE, "non-finite weights"),
    # options that do not fit the model
    ("learned variance of an ε model", sample("model.npz", "--variance", "learned_range"), USAGE,
     "needs a hybrid model"),
    ("variance of a Sohl-Dickstein chain", evaluate("sd.npz", "8gaussians", "--variance", "fixed_large"), USAGE,
     "learns its own"),
    ("clip of a Sohl-Dickstein chain", sample("sd.npz", "--clip-x0", "3"), USAGE, "ε-model options"),
    ("ddim steps without ddim", sample("model.npz", "--ddim-steps", "5"), USAGE,
     r"--steps \(--ddim-steps\) needs --sampler ddim or an ODE sampler"),
    ("ode steps below 1", sample("model.npz", "--sampler", "heun", "--steps", "0"), USAGE,
     "argument --steps/--ddim-steps: must be an integer >= 1, got 0"),
    ("ode sampler of a Sohl-Dickstein chain", sample("sd.npz", "--sampler", "dpm++"), USAGE,
     "--sampler dpmpp_2m: the ODE samplers need a denoiser"),
    ("rho without the karras grid", sample("model.npz", "--sampler", "euler", "--rho", "3"), USAGE,
     "--rho is not used here: it shapes --grid karras"),
    ("churn without heun", sample("model.npz", "--sampler", "euler", "--s-churn", "1"), USAGE,
     "--s-churn is not used here"),
    ("grid without an ode sampler", sample("model.npz", "--grid", "karras"), USAGE, "--grid is not used here"),
    ("condition method with an ode sampler", sample("model.npz", "--given", "{d}/given.csv", "--sampler", "heun",
                                                    "--condition", "replace"), USAGE, "drop --condition"),
    ("ode likelihood of a Sohl-Dickstein chain", evaluate("sd.npz", "8gaussians", "--likelihood", "ode"), USAGE,
     "--likelihood ode needs a denoiser"),
    ("probes with the bound", evaluate("model.npz", "8gaussians", "--probes", "2"), USAGE, "--probes is not used"),
    ("exact with the ode likelihood", evaluate("model.npz", "8gaussians", "--likelihood", "ode", "--exact"), USAGE,
     "--exact is not used here"),
    ("more ddim steps than T", sample("model.npz", "--sampler", "ddim", "--ddim-steps", "50"), USAGE,
     "more than the model's T = 20"),
    ("cosine without clip", sample("cosine.npz"), USAGE, r"pass --clip-x0 R"),
    # conditions: sample --given FILE / --observed FILE --noise-std S
    ("given of the wrong width", sample("model.npz", "--given", "{d}/given_3d.npy"), USAGE,
     r"given file .*given_3d.npy' holds shape \(1, 3\); expected \(2,\) or \(N, 2\)"),
    ("given knows every coordinate", sample("model.npz", "--given", "{d}/given_all_known.csv"), USAGE,
     "row 0 of the condition knows every coordinate exactly; leave at least one free"),
    ("given, a per-sample row all known", sample("model.npz", "--given", "{d}/given_second_row_known.npy",
                                                 "--n", "2"), USAGE, "row 1 of the condition knows every coordinate"),
    ("given knows nothing", sample("model.npz", "--given", "{d}/given_all_free.csv"), USAGE, "no known coordinate"),
    ("given inf", sample("model.npz", "--given", "{d}/given_inf.npy"), USAGE, "given holds inf"),
    ("given rows differ from --n", sample("model.npz", "--given", "{d}/given_3rows.npy", "--n", "10"), USAGE,
     "given_3rows.npy' has 3 rows; give one row .* or one row per sample with --n 3"),
    ("given and observed rows differ", sample("model.npz", "--given", "{d}/given_3rows.npy", "--observed",
                                              "{d}/observed_2rows.npy", "--noise-std", "1", "--n", "3"), USAGE,
     r"same number of rows, got \[3, 2\]"),
    ("missing given file", sample("model.npz", "--given", "{d}/nope.csv"), USAGE, "no such given file"),
    ("given a folder", sample("model.npz", "--given", "{d}/folder.npy"), USAGE, "--given .*folder.npy' is a folder"),
    ("given random bytes", sample("model.npz", "--given", "{d}/random.npy"), USAGE, r"is not a \.npy file"),
    ("given binary csv", sample("model.npz", "--given", "{d}/binary.csv"), USAGE, "is not a UTF-8 text file"),
    ("given ragged csv", sample("model.npz", "--given", "{d}/ragged.csv"), USAGE, "not a comma-separated table"),
    ("given complex", sample("model.npz", "--given", "{d}/complex.npy"), USAGE, "does not hold real numbers"),
    ("given .txt", sample("model.npz", "--given", "{d}/points.txt"), USAGE, r"expected a \.npy or \.csv file"),
    ("observed NaN", sample("model.npz", "--observed", "{d}/observed_nan.npy", "--noise-std", "1"), USAGE,
     "observed holds NaN or inf"),
    ("observed without noise-std", sample("model.npz", "--observed", "{d}/observed.npy"), USAGE,
     "--observed FILE and --noise-std S go together"),
    ("noise-std without observed", sample("model.npz", "--given", "{d}/given.csv", "--noise-std", "1"), USAGE,
     "--observed FILE and --noise-std S go together"),
    ("noise-std negative", sample("model.npz", "--observed", "{d}/observed.npy", "--noise-std", "-1"), USAGE,
     r"argument --noise-std: must be a finite number in \(0, inf\), got '-1'"),
    ("noise-std zero", sample("model.npz", "--observed", "{d}/observed.npy", "--noise-std", "0"), USAGE,
     "argument --noise-std: must be a finite number"),
    ("noise-std nan", sample("model.npz", "--observed", "{d}/observed.npy", "--noise-std", "nan"), USAGE,
     "argument --noise-std: must be a finite number"),
    ("condition without a condition", sample("model.npz", "--condition", "replace"), USAGE,
     "--condition needs --given FILE or --observed FILE"),
    ("unknown condition", sample("model.npz", "--given", "{d}/given.csv", "--condition", "exact"), USAGE,
     "argument --condition: invalid choice: 'exact'"),
    ("given with ddim", sample("model.npz", "--given", "{d}/given.csv", "--sampler", "ddim"), USAGE,
     "sample with the ancestral sampler or an ODE sampler .*; drop --sampler ddim"),
    ("given beyond the disk", sample("model.npz", "--given", "{d}/given.csv", "--n", str(10**15)), USAGE,
     "more than the .* MB free on its disk"),
    # output paths and sizes
    ("sample out a folder", sample("model.npz", out="{d}/outdir"), USAGE, "name a .npy or .csv file"),
    ("sample out a folder named .npy", sample("model.npz", out="{d}/folder.npy"), USAGE, "is a folder"),
    ("sample out no extension", sample("model.npz", out="{d}/samples"), USAGE, "got extension 'none'"),
    ("sample out .txt", sample("model.npz", out="{d}/s.txt"), USAGE, "name a .npy or .csv file"),
    ("sample out missing folder", sample("model.npz", out="{d}/nowhere/s.npy"), USAGE, "folder does not exist"),
    ("sample out empty", sample("model.npz", out=""), USAGE, "name a .npy or .csv file"),
    ("sample beyond the disk", sample("model.npz", "--n", str(10**15)), USAGE, "more than the .* MB free on its disk"),
    ("sample beyond max-output", sample("model.npz", "--n", "100000", "--max-output", "1M"), USAGE,
     "allowed by --max-output"),
    ("train out a folder", ["train", "{d}/points.csv", "--out", "{d}/outdir"], USAGE, "name a .npz checkpoint"),
    ("train out a folder named .npz", ["train", "{d}/points.csv", "--out", "{d}/folder.npy/x"], USAGE,
     "name a .npz checkpoint"),
    ("train out missing folder", ["train", "{d}/points.csv", "--out", "{d}/nowhere/m.npz"], USAGE, "does not exist"),
    ("train out empty", ["train", "{d}/points.csv", "--out", ""], USAGE, "name a .npz checkpoint"),
    ("train out exists", ["train", "{d}/points.csv", "--out", "{d}/model.npz"], USAGE,
     "exists \\(a checkpoint of 40 steps\\); pass --resume to continue it or --force"),
    ("train out exists, not a checkpoint", ["train", "{d}/points.csv", "--out", "{d}/plain.npz"], USAGE,
     "exists and is not a readable npdiff checkpoint"),
    # resume mismatches: every setting that defines the run
    ("resume other T", resume("--T", "30"), USAGE, r"--T 30 \(checkpoint: 20\)"),
    ("resume other schedule", resume("--schedule", "cosine"), USAGE, r"--schedule cosine \(checkpoint: linear\)"),
    ("resume other width", resume("--hidden", "16"), USAGE, r"--hidden 16 \(checkpoint: 8\)"),
    ("resume other objective", resume("--objective", "hybrid"), USAGE, r"--objective hybrid \(checkpoint: epsilon\)"),
    ("resume without the EMA", resume("--ema", "0"), USAGE, r"--ema 0.0 \(checkpoint: 0.9\)"),
    ("resume other batch", resume("--batch-size", "16"), USAGE, r"--batch-size 16 \(checkpoint: 32\)"),
    ("resume other lr", resume("--lr", "0.01"), USAGE, r"--lr 0.01 \(checkpoint: 0.001\)"),
    ("resume other data", resume()[:1] + ["8gaussians"] + resume()[2:], USAGE, r"DATA of shape \(8000, 2\)"),
    ("resume other data file", resume()[:1] + ["{d}/points3d.npy"] + resume()[2:], USAGE, "DATA of shape"),
    ("resume two settings at once", resume("--T", "30", "--hidden", "16"), USAGE, r"--T 30 .*; --hidden 16"),
    ("resume fewer steps", resume("--steps", "10"), USAGE, "--steps 10 is below the 40 steps"),
    # runtime failures: exit status 1, still one line, nothing left behind
    ("non-finite loss", train("--lr", "1e30", "--T", "20", *TINY, "--steps", "20"), FAILURE,
     "non-finite loss at step .* no checkpoint was written"),
    ("non-finite bound", evaluate("huge_weights.npz"), FAILURE, "the bound is not finite"),
    ("non-finite samples", sample("huge_weights.npz"), FAILURE, "non-finite values"),
]


@pytest.mark.parametrize("argv, status, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_user_error_is_one_line_with_its_status_and_changes_no_file(folder, capsys, argv, status, message):
    before = snapshot(folder)
    capsys.readouterr()
    rc = cli.main([a.replace("{d}", str(folder)) for a in argv])
    err = capsys.readouterr().err
    assert rc == status, err
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith("npdiff") and ": error: " in err and "Traceback" not in err
    assert __import__("re").search(message, err), err
    assert snapshot(folder) == before


@pytest.mark.parametrize("failure, message", [
    (OSError(errno.ENOSPC, "No space left on device"),
     "No space left on device; the previous file, if any, is unchanged"),
    (OSError(errno.EROFS, "Read-only file system"), "Read-only file system"),
])
def test_a_failing_disk_during_sample_is_one_line_and_keeps_the_old_samples(folder, capsys, monkeypatch, failure,
                                                                           message):
    real_open = fileio._open

    def failing(path, mode):
        f = real_open(path, mode)
        f.write = lambda data: (_ for _ in ()).throw(failure)
        return f

    monkeypatch.setattr(fileio, "_open", failing)
    before = snapshot(folder)
    capsys.readouterr()
    rc = cli.main(["sample", str(folder / "model.npz"), "--out", str(folder / "old_samples.npy"), "--n", "20",
                   "--force"])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and message in err, err
    assert "old_samples.npy': " in err and "-tmp-" not in err  # the file asked for, not the temporary one
    assert snapshot(folder) == before


def test_an_unreadable_condition_file_is_one_line_with_status_2(folder, capsys, monkeypatch):
    real_open = open

    def denied(path, *args, **kwargs):
        if str(path).endswith("given.csv"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    before = snapshot(folder)
    capsys.readouterr()
    monkeypatch.setattr("builtins.open", denied)  # root reads a chmod-000 file, so the refusal is simulated
    rc = cli.main(["sample", str(folder / "model.npz"), "--out", str(folder / "s.npy"), "--given",
                   str(folder / "given.csv")])
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "cannot read" in err and "given.csv': Permission denied" in err, err
    assert snapshot(folder) == before


def test_an_unwritable_output_folder_is_refused_before_training(folder, capsys, monkeypatch):
    def read_only(path):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(fileio, "check_writable_folder", read_only)
    monkeypatch.setattr(streaming, "free_bytes", lambda path: 10**12)
    before = snapshot(folder)
    for argv in (["train", "moons", "--out", str(folder / "new.npz")],
                 ["sample", str(folder / "model.npz"), "--out", str(folder / "s.csv")]):
        rc = cli.main(argv)
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and "cannot write in its folder: Read-only file system" in err, err
    assert snapshot(folder) == before


def test_a_large_model_warns_once_about_its_checkpoint_size(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(checkpoint, "WARN_BYTES", 2**20)  # 1 MB stands in for 100 MB: the same code path, faster
    np.save(tmp_path / "wide.npy", np.random.default_rng(0).normal(size=(20, 100)))
    rc = cli.main(["train", str(tmp_path / "wide.npy"), "--out", str(tmp_path / "w.npz"), "--hidden", "64",
                   "--n-blocks", "0", "--emb-dim", "16", "--steps", "1", "--T", "10"])
    err = capsys.readouterr().err
    assert rc == 0 and err.count("\n") == 1 and "warning: the checkpoint will be about" in err, err
    said = float(err.split("about ")[1].split(" MB")[0])
    assert said == pytest.approx(os.path.getsize(tmp_path / "w.npz") / 2**20, abs=0.5)
    capsys.readouterr()
    assert cli.main(["train", "moons", "--out", str(tmp_path / "small.npz"), *TINY, "--steps", "1"]) == 0
    assert capsys.readouterr().err == ""
