"""Atomic file writes: a temporary file in the target's folder, flushed to disk, then renamed over the target.

Every file the command line and the demos write (checkpoints, samples, figures, reports) goes through
here (``replacing`` for a file object, ``atomic_path`` for writers that open the file themselves,
``save_array`` and ``write_text`` for the common cases), so a full disk, a crash or a ``kill -9``
mid-write leaves either the old file or the new one, never a truncated mix:

    1. write ``<root>.tmp-<pid><ext>`` in the target's own folder (a rename is atomic only within one
       file system; the extension is kept so that writers that infer the format from it still work);
    2. flush and ``fsync`` it, so the data are on disk before the name points at them;
    3. ``os.replace`` it over the target (atomic on POSIX and Windows) and ``fsync`` the folder.

On any failure the temporary file is removed and the target is untouched. A writer killed between
steps 1 and 3 cannot clean up; the next write of the same target removes such orphans
(``remove_stale``): temporary files of that target whose process is no longer running.
"""

from __future__ import annotations

import contextlib
import os
import re

TMP_MARK = ".tmp-"


def temp_path(path, pid: int | None = None) -> str:
    """The temporary name of ``path`` for process ``pid`` (default: this one), in the same folder."""
    root, ext = os.path.splitext(os.fspath(path))
    return f"{root}{TMP_MARK}{os.getpid() if pid is None else pid}{ext}"


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
    pattern = re.compile(re.escape(root + TMP_MARK) + r"(\d+)" + re.escape(ext) + r"\Z")
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for entry in names:
        match = pattern.match(entry)
        if match and int(match.group(1)) != os.getpid() and not _pid_running(int(match.group(1))):
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
    with open(tmp, "wb"):
        pass
    os.remove(tmp)
