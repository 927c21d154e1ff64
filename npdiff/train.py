"""The training loop: shuffled minibatches, lr schedule, clipping, EMA, progress line, checkpoints, NaN guard.

Shape glossary: M training points, D data dims, B batch size.

The loop knows nothing of diffusion: it drives an *objective*, any object with

    loss_and_backward(model, x0, rng) -> float   # forward, loss, model.backward (adds into grads)

(``npdiff.ddpm.EpsilonObjective``, the Sohl-Dickstein bound, …). One step of ``train_step`` is

    zero_grad → loss_and_backward → stop if the loss or ‖g‖ is not finite → clip ‖g‖ → optimizer → EMA

and ``fit`` repeats it over shuffled minibatches, writing a checkpoint every ``checkpoint_every`` steps
(atomically, ``npdiff.checkpoint``) so that a non-finite loss leaves the last good one in place.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from npdiff import backend, checkpoint
from npdiff.optim import clip_grad_norm, grad_norm


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss or gradient; the message names the step."""


class Batches:
    """Shuffled minibatches without replacement: each epoch is one permutation of the M points, cut
    into M // B batches (the last partial batch is dropped). The state (permutation, position) is
    saved in checkpoints, so a resumed run sees exactly the batches the uninterrupted run would.
    """

    def __init__(self, data, batch_size: int, rng) -> None:
        if not 1 <= batch_size <= data.shape[0]:
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
        return {"perm": backend.to_numpy(self.perm), "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self._shuffle(np.asarray(state["perm"]), state["pos"])


@dataclass
class History:
    """Per-step records of a run: loss, learning rate and gradient norm (before clipping)."""

    loss: list = field(default_factory=list)
    lr: list = field(default_factory=list)
    grad_norm: list = field(default_factory=list)
    seconds: float = 0.0  # wall time of the training steps (this call of fit)

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
        return cls(**{k: [float(v) for v in arrays[k]] for k in ("loss", "lr", "grad_norm")})


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


class Progress:
    """A one-line progress display on stderr (step, loss, steps/s, ETA), redrawn at most 4×/s."""

    def __init__(self, total: int, enabled: bool | None = None, stream=None) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.enabled = self.stream.isatty() if enabled is None else bool(enabled)
        self.total, self.start, self.last = total, time.perf_counter(), 0.0

    def update(self, step: int, loss: float, first: int = 0) -> None:
        now = time.perf_counter()
        if not self.enabled or (now - self.last < 0.25 and step < self.total):
            return
        self.last = now
        rate = (step - first) / max(now - self.start, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        self.stream.write(f"\rstep {step}/{self.total}  loss {loss:.4f}  {rate:.0f} steps/s  ETA {eta:.0f}s ")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def fit(model, data, objective, *, steps: int, batch_size: int, optimizer, rng, lr_schedule=None,
        clip: float | None = None, ema=None, checkpoint_path: str | os.PathLike | None = None,
        checkpoint_every: int | None = 1000, resume: bool = False, progress: bool | None = None,
        schedule=None, meta: dict | None = None) -> History:
    """Train ``model`` on ``data`` (M, D) for ``steps`` steps in total; returns the History.

    optimizer: ``optim.Adam``/``AdamW`` on the model. rng: the generator for batches and the
    objective's draws. lr_schedule: step -> lr (None keeps the optimizer's lr). clip: max ‖g‖₂.
    ema: an ``optim.EMA``, updated after every step. checkpoint_path: where to write checkpoints,
    every ``checkpoint_every`` steps (None: only at the end) and at the end; with ``resume=True`` and
    an existing file, training continues from it (model, optimizer, EMA, rng, batches, history) and
    reproduces the uninterrupted run exactly. progress: None shows the line only on a terminal.
    schedule: stored in checkpoints (default ``objective.schedule``); meta: extra JSON-able facts.
    A non-finite loss raises NonFiniteLossError naming the step; the last checkpoint is kept.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    model_dtype = getattr(model, "dtype", None)
    data = backend.asarray(data, dtype=model_dtype)
    schedule = getattr(objective, "schedule", None) if schedule is None else schedule
    batches = Batches(data, batch_size, rng)
    history, first = History(), 0
    if resume and checkpoint_path is not None and os.path.exists(checkpoint_path):
        ckpt = checkpoint.load(checkpoint_path)
        ckpt.restore(model, optimizer=optimizer, ema=ema, rng=rng)
        batches.load_state_dict(ckpt.group("batches"))
        history = History.from_arrays(ckpt.group("history"))
        first = ckpt.step

    saved = [first if first else None]  # the step of the last good checkpoint, for the NaN guard's message

    def save(step: int) -> None:
        saved[0] = step
        checkpoint.save(checkpoint_path, model, optimizer=optimizer, ema=ema, step=step, rng=rng,
                        schedule=schedule, meta=meta,
                        groups={"batches": batches.state_dict(), "history": history.arrays()})

    bar = Progress(steps, progress)
    if bar.enabled and schedule is not None:
        bar.stream.write(schedule.summary() + "\n")
    start = time.perf_counter()
    try:
        for step in range(first, steps):
            lr = optimizer.lr if lr_schedule is None else float(lr_schedule(step))
            loss, norm = train_step(model, objective, batches.next(), rng, optimizer, lr=lr, clip=clip,
                                    ema=ema, step=step)
            history.loss.append(loss)
            history.lr.append(lr)
            history.grad_norm.append(norm)
            bar.update(step + 1, loss, first)
            if checkpoint_path is not None and checkpoint_every and (step + 1) % checkpoint_every == 0:
                save(step + 1)
    except NonFiniteLossError as err:
        kept = (f"the last good checkpoint is {os.fspath(checkpoint_path)} (step {saved[0]})" if saved[0] is not None
                else "no checkpoint was written in this run")
        raise NonFiniteLossError(f"{err}; {kept}") from None
    finally:
        bar.close()
    history.seconds = time.perf_counter() - start
    if checkpoint_path is not None and first < steps:
        save(steps)
    return history
