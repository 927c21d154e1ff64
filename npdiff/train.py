"""The training loop: shuffled minibatches, lr schedule, clipping, EMA, progress line, checkpoints, NaN guard.

Shape glossary: M training points, D data dims, B batch size.

The loop knows nothing of diffusion: it drives an *objective*, any object with

    loss_and_backward(model, x0, rng) -> float   # forward, loss, model.backward (adds into grads)

(``npdiff.ddpm.EpsilonObjective``, the Sohl-Dickstein bound, …). One step of ``train_step`` is

    zero_grad → loss_and_backward → stop if the loss or ‖g‖ is not finite → clip ‖g‖ → optimizer → EMA

and ``fit`` repeats it over shuffled minibatches, writing a checkpoint every ``checkpoint_every`` steps
(atomically, ``npdiff.checkpoint``) so that a non-finite loss leaves the last good one in place.

Stopping. With a checkpoint path, ``fit`` catches SIGINT (Ctrl-C) and SIGTERM: the step under way
finishes, a checkpoint of it is written, and ``TrainingInterrupted`` (a KeyboardInterrupt) is raised
naming the step; ``resume=True`` continues from there exactly. A second signal stops at once (the
checkpoint being written, if any, is abandoned and the previous one stays intact).
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from npdiff import backend, checkpoint, fileio
from npdiff.optim import AdamW, clip_grad_norm, grad_norm
from npdiff.progress import Progress

__all__ = ["Batches", "History", "NonFiniteLossError", "CheckpointWriteError", "TrainingInterrupted", "Progress",
           "train_step", "fit"]


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss or gradient; the message names the step."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (disk full, read-only, …); the previous one is intact."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped ``fit`` after ``step`` steps; ``saved`` says whether a checkpoint was written."""

    def __init__(self, message: str, step: int, signum: int, saved: bool) -> None:
        super().__init__(message)
        self.step, self.signum, self.saved = step, signum, saved


class Batches:
    """Shuffled minibatches without replacement: each epoch is one permutation of the M points, cut
    into M // B batches (the last partial batch is dropped). The state (permutation, position) is
    saved in checkpoints, so a resumed run sees exactly the batches the uninterrupted run would.
    """

    def __init__(self, data, batch_size: int, rng) -> None:
        if isinstance(batch_size, bool) or not 1 <= batch_size <= data.shape[0]:
            raise ValueError(f"batch_size must lie in 1..{data.shape[0]} (the number of points), got {batch_size}")
        self.data, self.batch_size, self.rng = data, int(batch_size), rng
        self.perm, self.pos, self.shuffled = None, 0, None

    def next(self):
        """The next (B, D) batch, a view into this epoch's shuffled copy of the data."""
        if self.perm is None or self.pos + self.batch_size > self.data.shape[0]:
            self._shuffle(self.rng.permutation(self.data.shape[0]), 0)
        batch = self.shuffled[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        return batch

    def _shuffle(self, perm, pos: int) -> None:
        self.perm, self.pos = perm, int(pos)
        self.shuffled = self.data[backend.asarray(perm)]  # one gather per epoch; batches are slices

    def state_dict(self) -> dict:
        if self.perm is None:
            return {}
        return {"perm": backend.to_numpy(self.perm), "pos": self.pos, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        """Continue a stored epoch; refuses a state made for other data or another batch size."""
        if not state:
            return
        perm, m = np.asarray(state["perm"]), self.data.shape[0]
        if perm.shape != (m,) or perm.dtype.kind not in "iu" or not np.array_equal(np.sort(perm), np.arange(m)):
            raise ValueError(f"the checkpoint's batch order is for {perm.size} points; the data have {m} "
                             "(resume with the data the run started with)")
        stored = state.get("batch_size", self.batch_size)
        if stored != self.batch_size:
            raise ValueError(f"the checkpoint was trained with batch_size {stored}; this run has {self.batch_size}")
        self._shuffle(perm, state["pos"])


@dataclass
class History:
    """Per-step records of a run: loss, learning rate and gradient norm (before clipping).

    After a resumed ``fit`` the records start at step 0 (the stored ones first); ``start_step`` is
    where this call of ``fit`` began, so ``steps_run`` is what it actually trained.
    """

    loss: list = field(default_factory=list)
    lr: list = field(default_factory=list)
    grad_norm: list = field(default_factory=list)
    seconds: float = 0.0  # wall time of the training steps (this call of fit)
    start_step: int = 0

    @property
    def steps_run(self) -> int:
        return len(self.loss) - self.start_step

    def smoothed(self, window: int = 100) -> np.ndarray:
        """Running mean of the loss over ``window`` steps (shorter at the start)."""
        loss = np.asarray(self.loss, dtype=np.float64)
        c = np.concatenate([[0.0], np.cumsum(loss)])
        k = np.arange(1, loss.size + 1)
        return (c[k] - c[np.maximum(k - window, 0)]) / np.minimum(k, window)

    def arrays(self) -> dict:
        return {k: np.asarray(getattr(self, k), dtype=np.float64) for k in ("loss", "lr", "grad_norm")}

    @classmethod
    def from_arrays(cls, arrays: dict) -> "History":
        return cls(**{k: [float(v) for v in np.atleast_1d(arrays.get(k, []))] for k in ("loss", "lr", "grad_norm")})


def train_step(model, objective, x0, rng, optimizer, *, lr: float | None = None, clip: float | None = None,
               ema=None, step: int = 0) -> tuple[float, float]:
    """One update; returns (loss, gradient norm before clipping). Raises NonFiniteLossError before
    touching the weights if the loss or the gradient is not finite."""
    model.zero_grad()
    loss = objective.loss_and_backward(model, x0, rng)
    norm = grad_norm(optimizer.grads)  # ‖g‖₂ of the flat gradient buffer, logged and used by clipping
    if not (math.isfinite(loss) and math.isfinite(norm)):
        raise NonFiniteLossError(f"non-finite {'loss' if not math.isfinite(loss) else 'gradient norm'} at step "
                                 f"{step} (loss={loss}, grad norm={norm}); the weights were not updated")
    if clip is not None:
        clip_grad_norm(optimizer.grads, clip, norm)
    optimizer.step(lr)
    if ema is not None:
        ema.update()
    return loss, norm


@contextlib.contextmanager
def _deferred_signals(enabled: bool):
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


def fit(model, data, objective, *, steps: int, batch_size: int = 256, optimizer=None, rng, lr_schedule=None,
        clip: float | None = None, ema=None, checkpoint_path: str | os.PathLike | None = None,
        checkpoint_every: int | None = 1000, resume: bool = False, progress: bool | None = None,
        schedule=None, meta: dict | None = None, handle_signals: bool | None = None) -> History:
    """Train ``model`` on ``data`` (M, D) for ``steps`` steps in total; returns the History.

    optimizer: ``optim.Adam``/``AdamW`` on the model (default AdamW, lr 1e-3, no weight decay). rng:
    the generator for batches and the objective's draws. lr_schedule: step -> lr (None keeps the
    optimizer's lr). clip: max ‖g‖₂. ema: an ``optim.EMA``, updated after every step.
    checkpoint_path: where to write checkpoints (checked before training starts), every
    ``checkpoint_every`` steps (None or 0: only at the end) and at the end; with ``resume=True`` and an
    existing file, training continues from it (model, optimizer, EMA, rng, batches, history) and
    reproduces the uninterrupted run exactly. progress: None shows the line on a terminal, and a line
    every 15 s otherwise (``npdiff.progress``). schedule: stored in checkpoints (default
    ``objective.schedule``); meta: extra JSON-able facts. handle_signals: checkpoint and raise
    ``TrainingInterrupted`` on SIGINT/SIGTERM (default: when there is a checkpoint path).
    A non-finite loss raises NonFiniteLossError naming the step; the last checkpoint is kept.
    """
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    if checkpoint_every is not None and checkpoint_every < 0:
        raise ValueError(f"checkpoint_every must be >= 0 (0 or None: only at the end), got {checkpoint_every}")
    if checkpoint_path is not None:
        checkpoint_path = check_checkpoint_path(checkpoint_path)
    optimizer = AdamW(model, lr=1e-3, weight_decay=0.0) if optimizer is None else optimizer
    data = backend.asarray(data, dtype=getattr(model, "dtype", None))
    schedule = getattr(objective, "schedule", None) if schedule is None else schedule
    batches = Batches(data, batch_size, rng)
    history, first = History(), 0
    if resume and checkpoint_path is not None and os.path.exists(checkpoint_path):
        ckpt = checkpoint.load(checkpoint_path)
        ckpt.restore(model, optimizer=optimizer, ema=ema, rng=rng)
        batches.load_state_dict(ckpt.group("batches"))
        history = History.from_arrays(ckpt.group("history"))
        first = history.start_step = ckpt.step

    saved = [first if first else None]  # the step of the last good checkpoint, for the messages

    def save(step: int) -> None:
        try:
            checkpoint.save(checkpoint_path, model, optimizer=optimizer, ema=ema, step=step, rng=rng,
                            schedule=schedule, meta=meta,
                            groups={"batches": batches.state_dict(), "history": history.arrays()})
        except OSError as err:
            kept = f"the checkpoint of step {saved[0]} is intact" if saved[0] is not None else "nothing was written"
            raise CheckpointWriteError(f"could not write the checkpoint {checkpoint_path} at step {step}: "
                                       f"{err.strerror or err}; {kept}") from err
        saved[0] = step

    bar = Progress(steps, progress)
    if bar.enabled and bar.tty and schedule is not None:
        bar.stream.write(schedule.summary() + "\n")
    start = time.perf_counter()
    handle = checkpoint_path is not None if handle_signals is None else handle_signals
    with _deferred_signals(handle) as received:
        try:
            for step in range(first, steps):
                lr = optimizer.lr if lr_schedule is None else float(lr_schedule(step))
                loss, norm = train_step(model, objective, batches.next(), rng, optimizer, lr=lr, clip=clip,
                                        ema=ema, step=step)
                history.loss.append(loss)
                history.lr.append(lr)
                history.grad_norm.append(norm)
                bar.update(step + 1, f"loss {loss:.4f}", first)
                if received:
                    history.seconds = time.perf_counter() - start
                    _interrupt(received[0], step + 1, steps, checkpoint_path, save)
                if checkpoint_path is not None and checkpoint_every and (step + 1) % checkpoint_every == 0:
                    save(step + 1)
        except NonFiniteLossError as err:
            kept = (f"the last good checkpoint is {checkpoint_path} (step {saved[0]})" if saved[0] is not None
                    else "no checkpoint was written in this run")
            raise NonFiniteLossError(f"{err}; {kept}") from None
        finally:
            bar.close()
        history.seconds = time.perf_counter() - start
        if checkpoint_path is not None and first < steps:
            save(steps)
    return history


def _interrupt(signum: int, step: int, steps: int, path, save) -> None:
    """Write the checkpoint of ``step`` (if there is a path) and raise TrainingInterrupted."""
    name = signal.Signals(signum).name
    if path is None:
        raise TrainingInterrupted(f"{name} after step {step} of {steps}; no checkpoint path, nothing saved",
                                  step, signum, False)
    save(step)
    raise TrainingInterrupted(f"{name} after step {step} of {steps}; checkpoint of step {step} written to {path}",
                              step, signum, True)
