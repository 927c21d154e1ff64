"""The training loop of DDPM's Algorithm 1 (Ho et al. 2020), and nothing around it.

Shape glossary: B batch size, D data dims, P parameters.

    repeat
        x_0 ~ q(x_0)                                                     a minibatch (``Batches``)
        t ~ U{1..T},  ε ~ N(0, I)
        gradient step on ∇_θ ‖ε − ε_θ(√ᾱ_t x_0 + √(1−ᾱ_t) ε, t)‖²
    until converged

The middle lines are the objective's ``loss_and_backward(model, x0, rng)``: it draws t and ε, forms x_t,
predicts, computes L and dL/dε_θ, and runs ``model.backward``, which adds dL/dθ into the model's
gradient (``npdiff.processes.ddpm.EpsilonObjective``; the Sohl-Dickstein bound and the hybrid loss fit
the same slot). The gradient step is ``update``: clip ‖g‖, one optimizer step, the EMA.

``training_loop`` yields after every step and keeps no record. Whoever runs it keeps the history and wraps
the loop in the machinery (``npdiff.training.train.fit``: non-finite rollback, signals, checkpoints,
progress); ``demos/heart.py`` writes the same loop out with the ε objective's own steps.
"""

from __future__ import annotations

from npdiff.nn.optim import clip_factor, grad_norm


def update(optimizer, lr: float | None, *, clip: float | None = None, ema=None, norm=None):
    """The gradient step on the gradient in ``optimizer.grads`` (P,): scale it to ‖g‖₂ ≤ ``clip``, take one
    optimizer step with learning rate ``lr`` (None: the optimizer's own), then update the ``ema``.
    norm: ‖g‖₂ if the caller has it already.  Returns ‖g‖₂ before clipping, a 0-d backend array.
    The three run as one pass: ``optimizer.step(lr, grad_scale=c, ema=ema)`` (``optim.Adam``; a subclass that
    overrides ``step`` passes those on)."""
    norm = grad_norm(optimizer.grads) if norm is None else norm
    c = None if clip is None else clip_factor(norm, clip, optimizer.grads.dtype)  # g ← c·g when ‖g‖ > clip
    # g ← c·g, the optimizer step, then θ̄ ← d θ̄ + (1 − d) θ: one pass over the flat buffers, block by block
    optimizer.step(lr, grad_scale=c, ema=ema)
    return norm


def training_loop(model, objective, batches, optimizer, rng, steps: int, *, first: int = 0, lr_schedule=None,
                  clip: float | None = None, ema=None):
    """Algorithm 1 for the steps first, …, steps − 1: yields (step, loss, ‖g‖, lr) after each update.

    batches: ``next()`` gives a batch x0 (B, D) and its class labels (B,) or None; rng draws t and ε.
    lr_schedule: step -> lr (None keeps the optimizer's). The loss and ‖g‖ are 0-d backend arrays, not read
    back: on a GPU each read would wait for the device, so the caller decides when to look.
    """
    for step in range(first, steps):
        lr = optimizer.lr if lr_schedule is None else float(lr_schedule(step))
        x0, y = batches.next()  # x_0 ~ q(x_0)  (B, D)
        model.zero_grad()
        if y is None:  # t ~ U{1..T}, ε ~ N(0, I), x_t, ε_θ(x_t, t), L, and dL/dθ into the gradient
            loss = objective.loss_and_backward(model, x0, rng)
        else:  # a class-conditional model sees the batch's labels
            loss = objective.loss_and_backward(model, x0, rng, y=y)
        norm = update(optimizer, lr, clip=clip, ema=ema)
        yield step, loss, norm, lr
