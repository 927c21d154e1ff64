"""What keeps a training run safe: the last good state to fall back to, SIGINT/SIGTERM deferred to the end of
a step, and a checkpoint path checked before the first step is spent (``npdiff.training.train.fit`` uses all three).

Shape glossary: P, the number of scalar parameters (flat buffers, ``npdiff.nn.flat``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

from npdiff.io import fileio


class LastGoodState:
    """The training state at the last check that found every step finite, copied on the device: the
    weights, Adam's moments and step count, and the EMA (4·P numbers). ``restore`` puts it back."""

    def __init__(self, optimizer, ema) -> None:
        self.optimizer = optimizer
        self.live = [optimizer.params, optimizer.m, optimizer.v] + ([ema.shadow] if ema is not None else [])
        self.saved = [a.copy() for a in self.live]
        self.steps = optimizer.steps

    def mark(self) -> None:
        for kept, live in zip(self.saved, self.live):
            kept[...] = live
        self.steps = self.optimizer.steps

    def restore(self) -> None:
        for kept, live in zip(self.saved, self.live):
            live[...] = kept
        self.optimizer.steps = self.steps


@contextlib.contextmanager
def deferred_signals(enabled: bool):
    """Record SIGINT/SIGTERM in the yielded list instead of stopping; a second signal stops at once.
    A signal the process ignores (SIG_IGN) stays ignored."""
    received: list[int] = []
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum, frame):
        if received:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}")
        received.append(signum)

    ignored = signal.SIG_IGN  # e.g. SIGINT of a background job (`cmd &`, nohup) stays ignored
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) != ignored}
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def check_checkpoint_path(path) -> str:
    """Refuse a checkpoint path that cannot be written, before any training: returns it as a str."""
    path = os.fspath(path)
    if not path or os.path.basename(path) in ("", ".", ".."):
        raise ValueError(f"the checkpoint path {path!r} names no file")
    if os.path.isdir(path):
        raise ValueError(f"the checkpoint path {path!r} is a folder; name a file in it, "
                         f"e.g. {os.path.join(path, 'model.npz')!r}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"the folder of the checkpoint path {path!r} does not exist (create it first)")
    fileio.check_writable_folder(path)  # OSError (read-only, no permission) before any step is spent
    return path
