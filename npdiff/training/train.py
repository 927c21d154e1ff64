"""The training loop: shuffled minibatches, lr schedule, clipping, EMA, progress line, checkpoints, NaN guard.

Shape glossary: M training points, D data dims, B batch size, P parameters.

The loop knows nothing of diffusion: it drives an *objective*, any object with

    loss_and_backward(model, x0, rng) -> loss   # forward, loss, model.backward (adds into grads)

(``npdiff.processes.ddpm.EpsilonObjective``, the Sohl-Dickstein bound, …), whose loss is a 0-d backend array (or a
float). With class labels (``fit(..., labels=y)``) the objective also takes the batch's labels,
``loss_and_backward(model, x0, rng, y=y_batch)``; objectives that can, say so with ``takes_labels = True``. One step of ``train_step`` is

    zero_grad → loss_and_backward → ‖g‖ → clip ‖g‖ → optimizer → EMA

and ``fit`` repeats it over shuffled minibatches, writing a checkpoint every ``checkpoint_every`` steps
(atomically, ``npdiff.training.checkpoint``) so that a non-finite loss leaves the last good one in place.

Host transfers. On a GPU, reading a number back (``float(loss)``) waits for the device and stalls the
queue of work, so ``fit`` keeps each step's loss and ‖g‖ on the device and reads them back in blocks: one
transfer every ``check_every`` steps (and before a checkpoint, at a signal, at the end). That read is the
NaN guard, the history and the progress line's loss. The guard's promise stays: a non-finite step never
reaches the weights a run ends with. At each check that finds every step finite, ``fit`` copies the
training state (weights, Adam's moments and step count, EMA) on the device (4·P numbers, no transfer);
when a check finds a NaN or inf, the state is put back to that copy, the weights of the last check
before the bad step, and NonFiniteLossError names the first bad step. A NaN is thus found up to
``check_every`` − 1 steps late, and those steps are undone with it. ``train_step`` called on its own
(``check=True``) reads the loss and ‖g‖ at once and refuses to update, as before.

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
from npdiff.training import checkpoint
from npdiff.processes.guidance import check_labels
from npdiff.nn.optim import AdamW, clip_grad_norm, grad_norm
from npdiff.io.progress import Progress
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


class Batches:
    """Shuffled minibatches without replacement: each epoch is one permutation of the M points, cut
    into M // B batches (the last partial batch is dropped). The state (permutation, position) is
    saved in checkpoints, so a resumed run sees exactly the batches the uninterrupted run would.
    labels: optional (M,) class labels, shuffled with the points.
    """

    def __init__(self, data, batch_size: int, rng, labels=None) -> None:
        if isinstance(batch_size, bool) or not 1 <= batch_size <= data.shape[0]:
            raise ValueError(f"batch_size must lie in 1..{data.shape[0]} (the number of points), got {batch_size}")
        self.data, self.labels, self.batch_size, self.rng = data, labels, int(batch_size), rng
        self.perm, self.pos, self.shuffled, self.shuffled_labels = None, 0, None, None

    def next(self):
        """(x0, y): the next (B, D) batch, a view into this epoch's shuffled copy of the data, and its (B,)
        labels (None without labels)."""
        if self.perm is None or self.pos + self.batch_size > self.data.shape[0]:
            self._shuffle(backend.permutation(self.rng, self.data.shape[0]), 0)
        rows = slice(self.pos, self.pos + self.batch_size)
        self.pos += self.batch_size
        return self.shuffled[rows], None if self.labels is None else self.shuffled_labels[rows]

    def _shuffle(self, perm, pos: int) -> None:
        self.perm, self.pos = perm, int(pos)
        perm = backend.asarray(perm)
        self.shuffled = self.data[perm]  # one gather per epoch; batches are slices
        if self.labels is not None:
            self.shuffled_labels = self.labels[perm]

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


def train_step(model, objective, x0, rng, optimizer, *, y=None, lr: float | None = None, clip: float | None = None,
               ema=None, step: int = 0, check: bool = True):
    """One update on the batch x0 (B, D), with its class labels y (B,) if any; returns (loss, gradient norm
    before clipping).

    check=True: both are read back (one host transfer) and returned as floats; a non-finite one raises
    NonFiniteLossError before the weights are touched. check=False (``fit``): nothing is read back, both
    are returned as 0-d backend arrays, and the update is applied whatever they hold; the caller checks
    them later (``fit`` undoes a non-finite step; module docstring).
    """
    xp = backend.xp
    model.zero_grad()
    loss = objective.loss_and_backward(model, x0, rng) if y is None else objective.loss_and_backward(model, x0, rng, y=y)
    g = optimizer.grads
    norm = grad_norm(g)  # ‖g‖₂ of the flat gradient buffer, logged and used by clipping
    if check:
        loss, norm = float(loss), float(norm)
        if not (math.isfinite(loss) and math.isfinite(norm)):
            raise NonFiniteLossError(_non_finite(step, loss, norm) + "; the weights were not updated")
    if clip is not None:
        clip_grad_norm(g, clip, norm)
    optimizer.step(lr)
    if ema is not None:
        ema.update()
    return loss, norm


def _non_finite(step: int, loss: float, norm: float) -> str:
    what = "loss" if not math.isfinite(loss) else "gradient norm"
    return f"non-finite {what} at step {step} (loss={loss}, grad norm={norm})"


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

    last_check = LastGoodState(optimizer, ema)
    pending: list = []  # (step, loss, ‖g‖, lr) of the steps since the last check; loss and ‖g‖ on the device
    shown = [""]  # the progress line's loss: the last one read back

    def check() -> None:
        """Read back the pending steps' loss and ‖g‖ (one transfer); record them, or undo them all and
        raise at the first non-finite one."""
        if not pending:
            return
        xp = backend.xp
        values = backend.to_numpy(xp.stack([xp.asarray(v, dtype=xp.float64) for _, loss, norm, _ in pending
                                            for v in (loss, norm)])).reshape(-1, 2)  # (B, 2)
        finite = np.isfinite(values).all(axis=1)
        if not finite.all():
            k = int(np.argmin(finite))
            last_check.restore()
            good = pending[0][0]
            pending.clear()
            raise NonFiniteLossError(f"{_non_finite(good + k, *values[k])}; the weights are those of step {good} "
                                     f"(the last check before it), the {k + 1} step(s) since were undone")
        history.loss.extend(values[:, 0].tolist())
        history.grad_norm.extend(values[:, 1].tolist())
        history.lr.extend(lr for _, _, _, lr in pending)
        shown[0] = f"loss {values[-1, 0]:.4f}"
        pending.clear()
        last_check.mark()

    bar = Progress(steps, progress)
    if bar.enabled and bar.tty and schedule is not None:
        bar.stream.write(schedule.summary() + "\n")
    start = time.perf_counter()
    handle = checkpoint_path is not None if handle_signals is None else handle_signals
    with deferred_signals(handle) as received:
        try:
            for step in range(first, steps):
                lr = optimizer.lr if lr_schedule is None else float(lr_schedule(step))
                x0, y = batches.next()
                loss, norm = train_step(model, objective, x0, rng, optimizer, y=y, lr=lr, clip=clip,
                                        ema=ema, step=step, check=False)
                pending.append((step, loss, norm, lr))
                save_now = checkpoint_path is not None and checkpoint_every and (step + 1) % checkpoint_every == 0
                if received or save_now or step + 1 == steps or (step + 1 - first) % check_every == 0:
                    check()  # a checkpoint, an interrupted run and a finished one hold only checked steps
                bar.update(step + 1, shown[0], first)
                if received:
                    history.seconds = time.perf_counter() - start
                    _interrupt(received[0], step + 1, steps, checkpoint_path, save)
                if save_now:
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


def _check_fit_labels(model, objective, labels, m: int):
    """The labels as a backend array, or a one-line ValueError: they need a conditional model and an
    objective that takes them, and one class 0..K−1 per training point."""
    label_emb = getattr(model, "label_emb", None)
    if label_emb is None:
        raise ValueError("labels need a class-conditional model (Denoiser(num_classes=K)); this one has none")
    if not getattr(objective, "takes_labels", False):
        raise ValueError(f"{type(objective).__name__} does not take class labels (the epsilon objective does)")
    return check_labels(labels, m, label_emb.n_classes)


def _interrupt(signum: int, step: int, steps: int, path, save) -> None:
    """Write the checkpoint of ``step`` (if there is a path) and raise TrainingInterrupted."""
    name = signal.Signals(signum).name
    if path is None:
        raise TrainingInterrupted(f"{name} after step {step} of {steps}; no checkpoint path, nothing saved",
                                  step, signum, False)
    save(step)
    raise TrainingInterrupted(f"{name} after step {step} of {steps}; checkpoint of step {step} written to {path}",
                              step, signum, True)
