"""Atomic writes: the new file appears whole or not at all, a failed write keeps the old one, orphans are swept."""

from __future__ import annotations

import errno
import json
import os
import socket
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from npdiff.io import fileio
from npdiff.training import checkpoint
from npdiff.nn.denoiser import Denoiser

ROOT = Path(__file__).resolve().parents[1]


def test_replacing_writes_the_exact_name_and_leaves_nothing_else(tmp_path):
    path = tmp_path / "samples.csv"  # np.save would append .npy to a name without it; the file object does not
    with fileio.replacing(path) as f:
        np.save(f, np.arange(6.0).reshape(3, 2))
    assert os.listdir(tmp_path) == ["samples.csv"]
    np.testing.assert_array_equal(np.load(path), np.arange(6.0).reshape(3, 2))


def test_temporary_name_is_in_the_same_folder_and_keeps_the_extension(tmp_path):
    tmp = fileio.temp_path(tmp_path / "heart.png", pid=123, nonce="0badf00d")
    check = fileio._check("heart.png", 123, "0badf00d")
    assert tmp == str(tmp_path / f"heart.npdiff-tmp-123-0badf00d-{check}.png")
    assert fileio.temp_path(tmp_path / "heart.png") != fileio.temp_path(tmp_path / "heart.png")  # a fresh nonce


def test_cleanup_removes_only_npdiffs_own_orphans_never_a_users_file_of_a_similar_name(tmp_path):
    path = tmp_path / "model.npz"
    dead = _dead_pid()
    ours = Path(fileio.temp_path(path, dead))
    users = [tmp_path / f"model.tmp-{dead}.npz", tmp_path / f"model.npdiff-tmp-{dead}-0badf00d-12345678.npz",
             tmp_path / f"model.npdiff-tmp-{dead}-0badf00d.npz",
             Path(fileio.temp_path(tmp_path / "other.npz", dead)).with_name(ours.name.replace("model", "other"))]
    for p in (ours, *users):
        p.write_bytes(b"precious")
    assert fileio.remove_stale(path) == [ours.name]
    assert all(p.read_bytes() == b"precious" for p in users)


def test_a_write_never_opens_an_existing_file_under_its_temporary_name(tmp_path, monkeypatch):
    path = tmp_path / "x.npy"
    taken = fileio.temp_path(path, nonce="0badf00d")
    Path(taken).write_bytes(b"a user's file")
    monkeypatch.setattr(fileio, "temp_path", lambda p, pid=None, nonce=None: taken)
    with pytest.raises(FileExistsError):
        fileio.save_array(path, np.zeros(3))
    assert Path(taken).read_bytes() == b"a user's file" and not path.exists()


def test_an_atomic_write_syncs_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace, real_open = os.fsync, os.replace, os.open
    folders = {}

    def fsync(fd):
        calls.append(("fsync", folders.get(fd, "file")))
        real_fsync(fd)

    def opened(path, flags, *args):
        fd = real_open(path, flags, *args)
        if os.path.isdir(path):
            folders[fd] = "folder"
        return fd

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "open", opened)
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append(("replace", os.path.basename(b))), real_replace(a, b)))
    fileio.save_array(tmp_path / "x.npy", np.arange(3.0))
    rename = calls.index(("replace", "x.npy"))
    assert ("fsync", "file") in calls[:rename], calls
    assert calls[rename + 1:] == [("fsync", "folder")], calls
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), np.arange(3.0))


def test_a_second_run_on_one_output_is_refused_naming_the_holder_and_a_dead_holder_is_replaced(tmp_path):
    path = tmp_path / "model.npz"
    with fileio.output_lock(path, "npdiff train first"):
        with pytest.raises(fileio.OutputBusy, match=f"npdiff train first \\(pid {os.getpid()} on"):
            with fileio.output_lock(path, "npdiff train second"):
                pass
    assert os.listdir(tmp_path) == []
    lock = Path(fileio.lock_path(path))
    lock.write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "command": "killed"}))
    with fileio.output_lock(path, "npdiff train"):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary_one(tmp_path):
    path = tmp_path / "figure.png"
    path.write_bytes(b"the old figure")
    with pytest.raises(OSError, match="No space left"):
        with fileio.atomic_path(path) as tmp:
            Path(tmp).write_bytes(b"half a fig")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert path.read_bytes() == b"the old figure" and os.listdir(tmp_path) == ["figure.png"]


def test_a_failed_write_names_the_target_not_the_temporary_file(tmp_path):
    path = tmp_path / "samples.npy"
    with pytest.raises(OSError) as err:
        with fileio.replacing(path) as f:
            f.write(b"x")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert err.value.filename == str(path)
    with pytest.raises(OSError) as err:
        with fileio.atomic_path(path) as tmp:
            raise OSError(errno.EACCES, "Permission denied", tmp)  # as open(tmp) raises it
    assert err.value.filename == str(path) and ".tmp-" not in str(err.value)


def test_a_figure_written_through_atomic_path_is_a_png(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(1, 1))
    with fileio.atomic_path(tmp_path / "f.png") as tmp:
        fig.savefig(tmp)  # the format comes from the temporary name's extension
    plt.close(fig)
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(tmp_path) == ["f.png"]


def _dead_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(child.stdout)


def test_orphans_of_dead_writers_are_removed_on_the_next_write_and_live_ones_kept(tmp_path):
    path = tmp_path / "model.npz"
    dead, alive = fileio.temp_path(path, _dead_pid()), fileio.temp_path(path, os.getppid())
    other = tmp_path / "model.npdiff-tmp-notapid.npz"
    for p in (dead, alive, other):
        Path(p).write_bytes(b"partial")
    checkpoint.save(path, Denoiser(2, hidden=4, n_blocks=0, emb_dim=4))
    assert sorted(os.listdir(tmp_path)) == sorted(["model.npz", os.path.basename(alive), other.name])


def test_a_writer_killed_mid_write_leaves_the_old_file_and_an_orphan_the_next_write_sweeps(tmp_path):
    path = tmp_path / "model.npz"
    checkpoint.save(path, Denoiser(2, hidden=4, n_blocks=0, emb_dim=4))
    old = path.read_bytes()
    code = ("import os, signal, sys\nfrom npdiff.io import fileio\n"
            "with fileio.replacing(sys.argv[1]) as f:\n    f.write(b'x' * 10000)\n    f.flush()\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    killed = subprocess.run([sys.executable, "-c", code, str(path)], env=env)
    assert killed.returncode == -signal.SIGKILL
    assert path.read_bytes() == old and len(os.listdir(tmp_path)) == 2  # the orphan
    checkpoint.save(path, Denoiser(2, hidden=4, n_blocks=0, emb_dim=4), step=1)
    assert os.listdir(tmp_path) == ["model.npz"] and checkpoint.load(path).step == 1


def test_check_writable_folder_tries_a_file(tmp_path):
    fileio.check_writable_folder(tmp_path / "x.npz")
    assert os.listdir(tmp_path) == []
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(PermissionError):
            fileio.check_writable_folder(locked / "x.npz")


def test_two_names_of_one_output_share_its_lock(tmp_path):
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "alias")
    with fileio.output_lock(tmp_path / "real" / "s.npy", "first"):
        with pytest.raises(fileio.OutputBusy, match="first"):
            with fileio.output_lock(tmp_path / "alias" / ".." / "alias" / "s.npy", "second"):
                pass
