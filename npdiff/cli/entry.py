"""One entry for every program, ``npdiff`` and the demos alike: a failure is one line on stderr and an exit status.

    if __name__ == "__main__":
        sys.exit(entry.run_demo(main, sys.argv[1:]))

Exit status (the same as ``npdiff``'s, docs/command-line.md): 0 success; 2 a usage or input error (a flag, an
input file, an output path, a request too large for the disk), nothing written; 1 a runtime failure (a
non-finite loss or sample, a failed write, out of memory); 128 + n after signal n. A bug is still one line,
``internal error: …``; ``NPDIFF_TRACEBACK=1`` shows its traceback.

``DemoParser`` is a demo's argparse: a bad flag is one line and exit status 2. ``check_demo_flags`` is the flag rule
of a demo, before any work: counts ≥ 1, finite positive numbers, fractions in [0, 1), guidance scales in
``npdiff.diffusion.GUIDANCE_RANGE`` (the command line's range). ``demo_out`` is the output rule of a demo's
``--out DIR``: a folder (created if needed) where a file can be written, checked before any work; a path that
names a file, or a folder that cannot be written, is a UsageError. ``demo_outputs`` adds the rest of the writers'
rule (docs/command-line.md, "Outputs"), as ``npdiff``'s commands apply it: the folder is held by a lock for the
run (``.<DIR>.npdiff-lock`` beside it, ``args.holding``), a file the demo writes that is there already is
refused without ``--force``, and one that is also an input (``args.check_distinct``) always.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import sys
import warnings

from npdiff.cli.args import UsageError, check_distinct, holding
from npdiff.diffusion import GUIDANCE_RANGE
from npdiff.io import fileio, streaming
from npdiff.training.train import CheckpointWriteError, NonFiniteLossError, TrainingInterrupted

EXIT_FAILURE, EXIT_USAGE = 1, 2


def one_line(text) -> str:
    return " ".join(str(text).split()) or "(no message)"


class Warnings:
    """Collects warnings (e.g. NumPy overflow) during a run: one summary line after a success; after a failure the
    error line says what went wrong, and the warnings that led to it are not repeated."""

    def __init__(self) -> None:
        self.count, self.first = 0, None

    def show(self, message, category, filename, lineno, file=None, line=None) -> None:
        self.count += 1
        if self.first is None:
            self.first = f"{one_line(message)} ({category.__name__}, {os.path.basename(filename)}:{lineno})"

    def summary(self, name: str) -> None:
        if self.count:
            more = f" and {self.count - 1} more" if self.count > 1 else ""
            print(f"{name}: warning: {self.first}{more}", file=sys.stderr)


def failure(name: str, err: BaseException) -> int:
    """Print the one line of ``err`` for program ``name`` on stderr; returns the exit status. Re-raises a bug when
    NPDIFF_TRACEBACK is set."""
    def say(text: str) -> None:
        print(f"{name}: {text}", file=sys.stderr)

    if isinstance(err, KeyboardInterrupt):
        say("interrupted; no file was left half-written")
        return 128 + signal.SIGINT
    if isinstance(err, (UsageError, ValueError, FileNotFoundError)):
        say(f"error: {one_line(err)}")
        return EXIT_USAGE
    if isinstance(err, (NonFiniteLossError, CheckpointWriteError, FloatingPointError)):
        say(f"error: {one_line(err)}")
        return EXIT_FAILURE
    if isinstance(err, OSError):
        where = f" {err.filename!r}:" if err.filename else ""
        say(f"error:{where} {one_line(err.strerror or err)}; the previous file, if any, is unchanged")
        return EXIT_FAILURE
    if isinstance(err, MemoryError):
        say("error: out of memory; lower --chunk (sample, eval) or --batch-size/--hidden (train)")
        return EXIT_FAILURE
    if os.environ.get("NPDIFF_TRACEBACK"):
        raise err
    say(f"internal error: {type(err).__name__}: {one_line(err)} (please report it; NPDIFF_TRACEBACK=1 shows the "
        "traceback)")
    return EXIT_FAILURE


def run_demo(main, argv=None, name: str | None = None) -> int:
    """Run a demo's ``main(argv)``: 0 on success (or the int that ``main`` returns), else ``failure``'s one line
    and status (argparse's exits and a demo's own ``sys.exit(message)`` keep Python's status)."""
    name = name or os.path.basename(sys.argv[0])
    caught = Warnings()
    with warnings.catch_warnings():
        warnings.showwarning = caught.show
        try:
            status = main(argv)
        except (Exception, KeyboardInterrupt, SystemExit) as err:  # every failure becomes one line
            return _demo_failure(name, err)
    caught.summary(name)
    return status if type(status) is int else 0  # a demo's own verdict (gradcheck: 1 for a failed check)


def _demo_failure(name: str, err: BaseException) -> int:
    if isinstance(err, SystemExit):  # --help, argparse's usage errors, a demo's own sys.exit(message): as Python exits
        if isinstance(err.code, str):
            print(err.code, file=sys.stderr)
            return 1
        return int(err.code or 0)
    if isinstance(err, TrainingInterrupted):
        print(f"{name}: stopped: {one_line(err)}", file=sys.stderr)
        return 128 + err.signum
    return failure(name, err)


class DemoParser(argparse.ArgumentParser):
    """argparse for a demo: a bad flag is one line, ``PROG: error: message``, and exit status 2 (no usage block)."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {one_line(message)}\n")


def demo_out(path) -> str:
    """The output folder of a demo, created if needed and tried with a file, before any work; returns it."""
    path = os.fspath(path)
    if not path:
        raise UsageError("--out names no folder")
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"--out {path!r} is a file; name a folder for the demo's outputs")
    try:
        os.makedirs(path, exist_ok=True)
        fileio.check_writable_folder(os.path.join(path, "probe"))
    except OSError as err:
        raise UsageError(f"--out {path!r}: cannot write there: {err.strerror or err}") from None
    return path


DEMO_FILE_BYTES = 4 << 20  # the largest file a 2-D demo writes (a checkpoint or a GIF) is under 1 MB
DEMO_TOTAL_BYTES = 16 << 20


@contextlib.contextmanager
def demo_outputs(path, names, *, force: bool = False, command: str = "a demo", inputs=(),
                 largest_bytes: int = DEMO_FILE_BYTES, total_bytes: int = DEMO_TOTAL_BYTES):
    """``with demo_outputs(args.out, ["samples.npy", …], force=args.force, command="demos/heart.py"):`` run the
    demo's work with its output folder ``path`` checked (``demo_out``) and held by a lock for the run (a second run
    on it is refused, naming this one); a file ``names`` lists that is there already is refused without ``force``,
    and one that is an input (``inputs``: (flag, path or None) pairs) always; a file-size limit (``ulimit -f``)
    below ``largest_bytes`` or free space below ``total_bytes`` is refused before any work. Yields the folder."""
    folder = demo_out(path)
    with holding(folder, command):  # taken before the checks: no run can write a name between them and the work
        for name in names:
            out = os.path.join(folder, name)
            check_distinct(out, inputs)
            if os.path.lexists(out) and not force:
                raise UsageError(f"--out {path!r} holds {name} already; pass --force to replace it or choose "
                                 "another --out")
        check_room(os.path.join(folder, "outputs"), largest_bytes, total_bytes, command)
        yield folder


def check_room(path, largest_bytes: int, total_bytes: int, command: str) -> None:
    """A UsageError, before any work, when the file-size limit cannot hold the largest output or the disk of
    ``path`` cannot hold them all (``streaming.file_size_limit``, ``streaming.free_bytes``)."""
    cap = streaming.file_size_limit()
    if cap is not None and cap < largest_bytes:
        raise UsageError(f"the file-size limit (ulimit -f) allows {cap} bytes per file, and {command} writes files "
                         f"of up to {largest_bytes} bytes; raise the limit or run elsewhere")
    free = streaming.free_bytes(path)
    if free < total_bytes:
        raise UsageError(f"{free} bytes are free where {command} writes, it needs up to {total_bytes}; free some "
                         "space or choose another --out")


def check_demo_flags(args, *, counts=(), positive=(), fractions=(), guidance=(), error=None) -> None:
    """A UsageError (or ``error(message)``, e.g. a parser's one-line ``error``) for the first bad flag among the
    named attributes of ``args`` (None: not given): ``counts`` integers ≥ 1, ``positive`` finite numbers > 0,
    ``fractions`` finite numbers in [0, 1), ``guidance`` scales (a number or a list) finite and in GUIDANCE_RANGE."""
    def fail(message: str):
        if error is not None:
            error(message)
        raise UsageError(message)

    def flag(name: str) -> str:
        return "--" + name.replace("_", "-")

    def finite(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    for name in counts:
        v = getattr(args, name)
        if v is not None and v < 1:
            fail(f"{flag(name)} must be >= 1, got {v}")
    for name in positive:
        v = getattr(args, name)
        if v is not None and not (finite(v) and v > 0):
            fail(f"{flag(name)} must be a finite number > 0, got {v}")
    for name in fractions:
        v = getattr(args, name)
        if v is not None and not (finite(v) and 0 <= v < 1):
            fail(f"{flag(name)} must be a finite number in [0, 1), got {v}")
    low, high = GUIDANCE_RANGE
    for name in guidance:
        values = getattr(args, name)
        for w in values if isinstance(values, (list, tuple)) else [values]:
            if w is not None and not (finite(w) and low <= w <= high):
                fail(f"{flag(name)} must be a finite number >= {low:g} and <= {high:g} (the guidance range "
                             f"of npdiff.diffusion.GUIDANCE_RANGE), got {w}")
