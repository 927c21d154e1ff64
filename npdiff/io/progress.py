"""Progress lines on stderr for long loops (training steps, sampling and evaluation chunks).

On a terminal the line is redrawn in place at most 4 times a second. When stderr is not a terminal
(a log file, a pipe, a batch job, CI) a full line is written every ``LOG_INTERVAL`` seconds instead, so
that a long run is never silent and a log does not fill with redraws; a run that wrote such a line
also writes its final state. ``enabled=False`` silences it; ``enabled=True`` also writes the final
state of a short run.
"""

from __future__ import annotations

import sys
import time

TTY_INTERVAL = 0.25  # seconds between redraws on a terminal
LOG_INTERVAL = 15.0  # seconds between lines when stderr is not a terminal


class Progress:
    """``update(done, text)``: ``done`` of ``total`` units finished, shown with a rate and an ETA.

    label: the word before the count ("step 120/3000"); unit: the rate's unit ("steps/s").
    """

    def __init__(self, total: int, enabled: bool | None = None, stream=None, label: str = "step",
                 unit: str = "steps", interval: float | None = None) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.enabled, self.show_final = enabled is not False, enabled is True or self.tty
        self.interval = interval if interval is not None else (TTY_INTERVAL if self.tty else LOG_INTERVAL)
        self.total, self.label, self.unit = int(total), label, unit
        self.start = self.last = time.perf_counter()
        self.lines, self.finished = 0, False

    def update(self, done: int, text: str = "", first: int = 0) -> None:
        """Report ``done`` units, of which ``first`` were done before this run started (they set no rate)."""
        now = time.perf_counter()
        final = done >= self.total
        if not self.enabled or self.finished:
            return
        if now - self.last < self.interval and not (final and (self.show_final or self.lines)):
            return
        self.last, self.finished = now, final
        rate = (done - first) / max(now - self.start, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        detail = f"  {text}" if text else ""
        speed = f"{rate:.0f}" if rate >= 10 else f"{rate:.2f}"
        line = f"{self.label} {done}/{self.total}{detail}  {speed} {self.unit}/s  ETA {eta:.0f}s"
        self.stream.write(f"\r{line} " if self.tty else line + "\n")
        self.stream.flush()
        self.lines += 1

    def close(self) -> None:
        """End a terminal's redrawn line (log lines already end with a newline)."""
        if self.tty and self.lines:
            self.stream.write("\n")
            self.stream.flush()
