"""The guarded runner: ``fit`` runs Algorithm 1 (``npdiff.training.loop``) inside the machinery a long run needs:
the lr schedule, the EMA, the non-finite guard and its rollback, SIGINT/SIGTERM, checkpoints with exact resume,
and the progress line. None of it is inside the loop; it acts between the steps the loop yields.

Shape glossary: M training points, D data dims, B batch size, P parameters.

``fit`` drives an *objective*, any object with

    loss_and_backward(model, x0, rng) -> loss   # forward, loss, model.backward (adds into grads)

(``npdiff.processes.ddpm.EpsilonObjective``, the Sohl-Dickstein bound, …), whose loss is a 0-d backend array (or a
float). With class labels (``fit(..., labels=y)``) the objective also takes the batch's labels,
``loss_and_backward(model, x0, rng, y=y_batch)``; objectives that can, say so with ``takes_labels = True``.
One step is

    zero_grad → loss_and_backward → ‖g‖ → clip ‖g‖ → optimizer → EMA

and ``fit`` takes them over shuffled minibatches (``npdiff.training.batches``), writing a checkpoint every
``checkpoint_every`` steps (atomically, ``npdiff.training.checkpoint``) so that a non-finite loss leaves the
last good one in place.

Host transfers. On a GPU, reading a number back (``float(loss)``) waits for the device and stalls the
queue of work, so ``fit`` keeps each step's loss and ‖g‖ on the device and reads them back in blocks: one
transfer every ``check_every`` steps (and before a checkpoint, at a signal, at the end). That read is the
NaN guard, the history and the progress line's loss. The guard's promise: a non-finite step never
reaches the weights a run ends with. At each check that finds every step finite, ``fit`` copies the
training state (weights, Adam's moments and step count, EMA) on the device (4·P numbers, no transfer);
when a check finds a NaN or inf, the state is put back to that copy, the weights of the last check
before the bad step, and NonFiniteLossError names the first bad step. A NaN is thus found up to
``check_every`` − 1 steps late, and those steps are undone with it. ``train_step``, one step on its own
(``check=True``), reads the loss and ‖g‖ at once and refuses to update.

Stopping. With a checkpoint path, ``fit`` catches SIGINT (Ctrl-C) and SIGTERM: the step under way
finishes, a checkpoint of it is written, and ``TrainingInterrupted`` (a KeyboardInterrupt) is raised
naming the step; ``resume=True`` continues from there exactly. A second signal stops at once (the
checkpoint being written, if any, is abandoned and the previous one stays intact).
"""

from __future__ import annotations

import math
import os
import signal
import time
from dataclasses import dataclass, field

import numpy as np

from npdiff import backend
from npdiff.io.progress import Progress
from npdiff.nn.optim import AdamW, grad_norm
from npdiff.processes.guidance import check_labels
from npdiff.training import checkpoint
from npdiff.training.batches import Batches
from npdiff.training.loop import training_loop, update
from npdiff.training.safeguards import LastGoodState, check_checkpoint_path, deferred_signals

CHECK_EVERY = 100  # steps between host reads of the losses in ``fit`` (module docstring)

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


def train_step(model, objective, x0, rng, optimizer, *, y=None, lr: float | None = None, clip: float | None = None,
               ema=None, step: int = 0, check: bool = True):
    """One update on the batch x0 (B, D), with its class labels y (B,) if any; returns (loss, gradient norm
    before clipping).

    check=True: both are read back (one host transfer) and returned as floats; a non-finite one raises
    NonFiniteLossError before the weights are touched. check=False: nothing is read back, both are
    returned as 0-d backend arrays, and the update is applied whatever they hold.
    """
    model.zero_grad()
    if y is None:
        loss = objective.loss_and_backward(model, x0, rng)
    else:
        loss = objective.loss_and_backward(model, x0, rng, y=y)
    norm = grad_norm(optimizer.grads)  # ‖g‖₂ of the flat gradient buffer, logged and used by clipping
    if check:
        loss, norm = float(loss), float(norm)
        if not (math.isfinite(loss) and math.isfinite(norm)):
            raise NonFiniteLossError(_non_finite(step, loss, norm) + "; the weights were not updated")
    update(optimizer, lr, clip=clip, ema=ema, norm=norm)
    return loss, norm


def _non_finite(step: int, loss: float, norm: float) -> str:
    what = "loss" if not math.isfinite(loss) else "gradient norm"
    return f"non-finite {what} at step {step} (loss={loss}, grad norm={norm})"


class _Checks:
    """The steps since the last read-back, and that read (``read``): one transfer for all of them, whose
    values go to the history, or, at a non-finite one, a rollback of them all to the last good state."""

    def __init__(self, history: History, optimizer, ema) -> None:
        self.history, self.last_good = history, LastGoodState(optimizer, ema)
        self.pending: list = []  # (step, loss, ‖g‖, lr) since the last read; loss and ‖g‖ on the device
        self.shown = ""  # the progress line's loss: the last one read back

    def add(self, step: int, loss, norm, lr: float) -> None:
        self.pending.append((step, loss, norm, lr))

    def read(self) -> None:
        """Read back the pending steps' loss and ‖g‖; record them, or undo them all and raise at the first
        non-finite one."""
        pending = self.pending
        if not pending:
            return
        xp = backend.xp
        values = backend.to_numpy(xp.stack([xp.asarray(v, dtype=xp.float64) for _, loss, norm, _ in pending
                                            for v in (loss, norm)])).reshape(-1, 2)  # (B, 2)
        finite = np.isfinite(values).all(axis=1)
        if not finite.all():
            k = int(np.argmin(finite))
            self.last_good.restore()
            good = pending[0][0]
            pending.clear()
            raise NonFiniteLossError(f"{_non_finite(good + k, *values[k])}; the weights are those of step {good} "
                                     f"(the last check before it), the {k + 1} step(s) since were undone")
        self.history.loss.extend(values[:, 0].tolist())
        self.history.grad_norm.extend(values[:, 1].tolist())
        self.history.lr.extend(lr for _, _, _, lr in pending)
        self.shown = f"loss {values[-1, 0]:.4f}"
        pending.clear()
        self.last_good.mark()


class _Checkpoints:
    """Writes the run's checkpoints to ``path``: the training state, the batch order and the history.
    ``saved``: the step of the last one written (None before any), for the messages."""

    def __init__(self, path: str, saved: int | None, batches: Batches, history: History, **state) -> None:
        self.path, self.saved, self.batches, self.history, self.state = path, saved, batches, history, state

    def save(self, step: int) -> None:
        try:
            checkpoint.save(self.path, step=step, **self.state,
                            groups={"batches": self.batches.state_dict(), "history": self.history.arrays()})
        except OSError as err:
            kept = f"the checkpoint of step {self.saved} is intact" if self.saved is not None else "nothing was written"
            raise CheckpointWriteError(f"could not write the checkpoint {self.path} at step {step}: "
                                       f"{err.strerror or err}; {kept}") from err
        self.saved = step


def fit(model, data, objective, *, steps: int, batch_size: int = 256, optimizer=None, rng, lr_schedule=None,
        clip: float | None = None, ema=None, checkpoint_path: str | os.PathLike | None = None,
        checkpoint_every: int | None = 1000, resume: bool = False, progress: bool | None = None,
        schedule=None, meta: dict | None = None, handle_signals: bool | None = None,
        check_every: int = CHECK_EVERY, labels=None) -> History:
    """Train ``model`` on ``data`` (M, D) for ``steps`` steps in total; returns the History.

    labels: (M,) class labels 0..K−1 of a class-conditional model (``Denoiser(num_classes=K)``), batched
    with their points and handed to the objective (which drops some for guidance, ``npdiff.processes.guidance``).

    optimizer: ``optim.Adam``/``AdamW`` on the model (default AdamW, lr 1e-3, no weight decay). rng:
    the generator for batches and the objective's draws. lr_schedule: step -> lr (None keeps the
    optimizer's lr). clip: max ‖g‖₂. ema: an ``optim.EMA``, updated after every step.
    checkpoint_path: where to write checkpoints (checked before training starts), every
    ``checkpoint_every`` steps (None or 0: only at the end) and at the end; with ``resume=True`` and an
    existing file, training continues from it (model, optimizer, EMA, rng, batches, history) and
    reproduces the uninterrupted run exactly. progress: None shows the line on a terminal, and a line
    every 15 s otherwise (``npdiff.io.progress``). schedule: stored in checkpoints (default
    ``objective.schedule``); meta: extra JSON-able facts. handle_signals: checkpoint and raise
    ``TrainingInterrupted`` on SIGINT/SIGTERM (default: when there is a checkpoint path).
    check_every: steps between reading the losses and gradient norms back to the host (the NaN check,
    the history and the progress line's loss; module docstring). A non-finite loss or gradient raises
    NonFiniteLossError naming the step, with the weights of the last check before it; the last checkpoint
    is kept.
    """
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    if checkpoint_every is not None and checkpoint_every < 0:
        raise ValueError(f"checkpoint_every must be >= 0 (0 or None: only at the end), got {checkpoint_every}")
    if isinstance(check_every, bool) or not isinstance(check_every, (int, np.integer)) or check_every < 1:
        raise ValueError(f"check_every must be an integer >= 1, got {check_every!r}")
    if checkpoint_path is not None:
        checkpoint_path = check_checkpoint_path(checkpoint_path)
    optimizer = AdamW(model, lr=1e-3, weight_decay=0.0) if optimizer is None else optimizer
    data = backend.asarray(data, dtype=getattr(model, "dtype", None))
    if labels is not None:
        labels = _check_fit_labels(model, objective, labels, data.shape[0])
    schedule = getattr(objective, "schedule", None) if schedule is None else schedule
    batches = Batches(data, batch_size, rng, labels)
    history, first = History(), 0
    if resume and checkpoint_path is not None and os.path.exists(checkpoint_path):
        ckpt = checkpoint.load(checkpoint_path)
        ckpt.restore(model, optimizer=optimizer, ema=ema, rng=rng)
        batches.load_state_dict(ckpt.group("batches"))
        history = History.from_arrays(ckpt.group("history"))
        first = history.start_step = ckpt.step
    checks = _Checks(history, optimizer, ema)
    saver = None if checkpoint_path is None else _Checkpoints(
        checkpoint_path, first if first else None, batches, history, model=model, optimizer=optimizer, ema=ema,
        rng=rng, schedule=schedule, meta=meta)

    bar = Progress(steps, progress)
    if bar.enabled and bar.tty and schedule is not None:
        bar.stream.write(schedule.summary() + "\n")
    loop = training_loop(model, objective, batches, optimizer, rng, steps, first=first, lr_schedule=lr_schedule,
                         clip=clip, ema=ema)
    start = time.perf_counter()
    handle = checkpoint_path is not None if handle_signals is None else handle_signals
    with deferred_signals(handle) as received:
        try:
            for step, loss, norm, lr in loop:
                checks.add(step, loss, norm, lr)
                save_now = saver is not None and checkpoint_every and (step + 1) % checkpoint_every == 0
                if received or save_now or step + 1 == steps or (step + 1 - first) % check_every == 0:
                    checks.read()  # a checkpoint, an interrupted run and a finished one hold only checked steps
                bar.update(step + 1, checks.shown, first)
                if received:
                    history.seconds = time.perf_counter() - start
                    _interrupt(received[0], step + 1, steps, saver)
                if save_now:
                    saver.save(step + 1)
        except NonFiniteLossError as err:
            kept = (f"the last good checkpoint is {checkpoint_path} (step {saver.saved})"
                    if saver is not None and saver.saved is not None else "no checkpoint was written in this run")
            raise NonFiniteLossError(f"{err}; {kept}") from None
        finally:
            bar.close()
        history.seconds = time.perf_counter() - start
        if saver is not None and first < steps:
            saver.save(steps)
    return history


def _check_fit_labels(model, objective, labels, m: int):
    """The labels as a backend array, or a one-line ValueError: they need a conditional model and an
    objective that takes them, and one class 0..K−1 per training point."""
    label_emb = getattr(model, "label_emb", None)
    if label_emb is None:
        raise ValueError("labels need a class-conditional model (Denoiser(num_classes=K)); this one has none")
    if not getattr(objective, "takes_labels", False):
        raise ValueError(f"{type(objective).__name__} does not take class labels (the epsilon objective does)")
    return check_labels(labels, m, label_emb.n_classes)


def _interrupt(signum: int, step: int, steps: int, saver: _Checkpoints | None) -> None:
    """Write the checkpoint of ``step`` (if there is a path) and raise TrainingInterrupted."""
    name = signal.Signals(signum).name
    if saver is None:
        raise TrainingInterrupted(f"{name} after step {step} of {steps}; no checkpoint path, nothing saved",
                                  step, signum, False)
    saver.save(step)
    raise TrainingInterrupted(f"{name} after step {step} of {steps}; checkpoint of step {step} written to "
                              f"{saver.path}", step, signum, True)
