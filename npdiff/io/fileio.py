"""Atomic file writes, and the rules every writer follows: no clobbering, no racing, no surprise at the end.

Every file the command line and the demos write (checkpoints, samples, figures, reports) goes through
here (``replacing`` for a file object, ``atomic_path`` for writers that open the file themselves,
``save_array`` and ``write_text`` for the common cases), so a full disk, a crash or a ``kill -9``
mid-write leaves either the old file or the new one, never a truncated mix:

    1. write a temporary file in the target's own folder (a rename is atomic only within one file
       system), created exclusively (``O_EXCL``: it never opens a file that is already there);
    2. flush and ``fsync`` it, so the data are on disk before the name points at them;
    3. ``os.replace`` it over the target (atomic on POSIX and Windows), then ``fsync`` the folder.

The temporary name is ``<root>.npdiff-tmp-<pid>-<nonce>-<check><ext>``: the extension is kept (writers that
infer the format from it still work), the nonce is random, and ``check`` is a hash of the target's name, the
pid and the nonce. On any failure the temporary file is removed and the target is untouched. A writer killed
between steps 1 and 3 cannot clean up; the next write of the same target removes its orphans
(``remove_stale``): only names whose check matches (no user file shares them by accident) and whose
process is no longer running.

The other rules of a writer (docs/command-line.md, "Outputs"): ``output_lock`` refuses a second run on the
same output while the first holds it (the lock file names its holder; a holder that died is replaced);
``same_file`` tells an output that is one of the inputs; ``npdiff.io.streaming.write_limit`` is the free
space and the file-size limit (``ulimit -f``) checked before any work.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import socket
import time

TMP_MARK = ".npdiff-tmp-"
LOCK_SUFFIX = ".npdiff-lock"


def _check(name: str, pid: int, nonce: str) -> str:
    """The hash that marks a temporary name as npdiff's own: of the target's file name, the pid and the nonce."""
    return hashlib.sha256(f"{name}\0{pid}\0{nonce}".encode()).hexdigest()[:8]


def temp_path(path, pid: int | None = None, nonce: str | None = None) -> str:
    """A temporary name of ``path`` for process ``pid`` (default: this one), in the same folder; a fresh random
    nonce unless one is given."""
    path = os.fspath(path)
    root, ext = os.path.splitext(path)
    pid = os.getpid() if pid is None else pid
    nonce = secrets.token_hex(4) if nonce is None else nonce
    return f"{root}{TMP_MARK}{pid}-{nonce}-{_check(os.path.basename(path), pid, nonce)}{ext}"


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):  # exists but not ours, or a platform without signal 0
        return True
    return True


def remove_stale(path) -> list[str]:
    """Remove temporary files of ``path`` left by writers that are no longer running; returns their names."""
    folder, name = os.path.split(os.path.abspath(os.fspath(path)))
    root, ext = os.path.splitext(name)
    pattern = re.compile(re.escape(root + TMP_MARK) + r"(\d+)-([0-9a-f]{8})-([0-9a-f]{8})" + re.escape(ext) + r"\Z")
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for entry in names:
        match = pattern.match(entry)
        if not match or match.group(3) != _check(name, int(match.group(1)), match.group(2)):
            continue  # not a name npdiff made for this target: a user's file, left alone
        pid = int(match.group(1))
        if pid != os.getpid() and not _pid_running(pid) and os.path.isfile(os.path.join(folder, entry)):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(folder, entry))
                removed.append(entry)
    return removed


def _fsync_folder(folder: str) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path):
    """``with atomic_path(p) as tmp:`` write the file at ``tmp`` (any writer); on success it becomes ``p``.

    For writers that open the file themselves (``savefig``, ``imageio``). The temporary name keeps
    ``p``'s extension. On an exception the temporary file is removed and ``p`` is left as it was.
    """
    path = os.fspath(path)
    remove_stale(path)
    tmp = temp_path(path)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # ours alone: never an existing file
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(exc, OSError) and exc.strerror is not None and exc.filename in (None, tmp):
            exc.filename, exc.filename2 = path, None  # messages name the file the user asked for
        raise
    _fsync_folder(os.path.dirname(path))


def _open(path, mode):
    """``open``; a seam for tests that simulate a full disk."""
    return open(path, mode)


@contextlib.contextmanager
def replacing(path, mode: str = "wb"):
    """``with replacing(p) as f:`` write through the open file ``f``; on success the file becomes ``p``."""
    with atomic_path(path) as tmp:
        with _open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def save_array(path, array) -> str:
    """``numpy.save`` to exactly ``path`` (no ``.npy`` appended), atomically; returns the path."""
    import numpy as np

    with replacing(path) as f:
        np.save(f, array, allow_pickle=False)
    return os.fspath(path)


def write_text(path, text: str) -> str:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with replacing(path) as f:
        f.write(text.encode("utf-8"))
    return os.fspath(path)


def check_writable_folder(path) -> None:
    """Raise OSError unless a file can be created in ``path``'s folder (tried, not guessed from permissions)."""
    tmp = temp_path(path)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    os.remove(tmp)


def same_file(a, b) -> bool:
    """True when paths ``a`` and ``b`` name one file (links and ``..`` resolved; an absent file by its real path)."""
    a, b = os.fspath(a), os.fspath(b)
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


class OutputBusy(OSError):
    """Another run holds the lock of this output."""


def lock_path(path) -> str:
    """The lock file of output ``path``: ``.<name>.npdiff-lock`` beside it (``output_lock`` resolves links first)."""
    folder, name = os.path.split(os.fspath(path))
    return os.path.join(folder, f".{name}{LOCK_SUFFIX}")


def _holder(lock: str) -> dict | None:
    try:
        with open(lock, encoding="utf-8") as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def output_lock(path, command: str = "npdiff"):
    """``with output_lock(p, "npdiff train"):`` hold ``p`` for one run. A second run on ``p`` raises OutputBusy
    naming the holder (its command, pid, host and start) instead of racing it; a lock whose process on this
    host has died is taken over. The lock file is removed at the end if it is still this run's."""
    lock = lock_path(os.path.realpath(os.fspath(path)))  # one lock whichever link or ../ names the output
    me = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
          "started": time.strftime("%Y-%m-%d %H:%M:%S"), "nonce": secrets.token_hex(8)}
    for attempt in range(2):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = _holder(lock)
            dead = (isinstance(holder, dict) and holder.get("host") == me["host"] and isinstance(holder.get("pid"), int)
                    and not _pid_running(holder["pid"]))
            if dead and attempt == 0 and _holder(lock) == holder:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(lock)
                continue
            who = (f"{holder.get('command')} (pid {holder.get('pid')} on {holder.get('host')}, started "
                   f"{holder.get('started')})" if isinstance(holder, dict) else "another run")
            raise OutputBusy(f"{os.fspath(path)!r} is being written by {who}; wait for it to finish, or remove "
                             f"{lock!r} if that run is gone") from None
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(me))
        break
    try:
        yield lock
    finally:
        if _holder(lock) == me:
            with contextlib.suppress(OSError):
                os.remove(lock)
