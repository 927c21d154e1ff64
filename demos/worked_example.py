"""One DDPM training step on two 2-D points, every intermediate printed: the worked example of docs/reading-order.md.

    python demos/worked_example.py [--out DIR]

A tiny float64 denoiser (embeddings of size 4, hidden width 4, one residual block with LayerNorm, GELU) takes
a batch of two heart points through Algorithm 1 of Ho et al. 2020 once: draw t and ε, form x_t, run the
network layer by layer, the loss L = mean (ε_θ − ε)², then the backward pass layer by layer and one AdamW
update. Every number comes from npdiff's own classes; the script walks their layers one by one so that
each intermediate can be printed, then checks that ``EpsilonObjective.loss_and_backward`` (the call
training makes) gives the same loss and gradients. The printout is also written to DIR/worked_example.txt (an
earlier one is replaced only with --force).

Shape glossary: N = 2 points, D = 2 data dims, E = 4 embedding size (per coordinate and for t),
H = 4 hidden width, T = 1000 steps. Read with docs/derivations.md beside it: each backward line printed
here is derived there.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from npdiff import AdamW, Denoiser, EpsilonObjective, Schedule, data
from npdiff.cli import entry
from npdiff.io import fileio

SEED, T, LR, WEIGHT_DECAY = 0, 1000, 1e-2, 0.01
CONFIG = dict(data_dim=2, hidden=4, n_blocks=1, emb_dim=4, activation="gelu", layernorm=True, dtype="float64",
              seed=SEED)
X0 = data.heart_from_theta(np.array([0.0, np.pi / 2]))  # two points of the heart curve: (0, 1) and (3.2, 0.8)


def parse_args(argv=None) -> argparse.Namespace:
    p = entry.DemoParser(prog="worked_example.py", description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.path.join("out", "worked_example"),
                   help="output folder for worked_example.txt (default out/worked_example)")
    p.add_argument("--force", action="store_true", help="replace the worked_example.txt of an earlier run in --out")
    return p.parse_args(argv)


def inputs():
    """(model, schedule, x0 (N, D), t (N,), noise (N, D)): the step's fixed inputs, t ~ U{1..T}, ε ~ N(0, I)."""
    model, schedule = Denoiser(**CONFIG), Schedule(T)
    rng = np.random.default_rng(SEED)
    t = schedule.sample_t(X0.shape[0], rng)  # (N,)
    noise = rng.standard_normal(X0.shape)  # ε  (N, D)
    return model, schedule, X0.copy(), t, noise


def _grads(show, layer, prefix: str) -> None:
    for name, g in layer.grads.items():
        show(f"{prefix}.{name}", g)


def training_step(model, schedule, x0, t, noise, show):
    """Algorithm 1 once, layer by layer, every intermediate passed to ``show(label, array)``.  -> (loss, grads)

    Adds dL/dθ into the model's gradients (zeroed first) and returns the loss and a copy of the flat gradient.
    """
    show("x_0", x0)
    show("t  ~ U{1..T}", t)
    show("ε  ~ N(0, I)", noise)
    show("√ᾱ_t", schedule.sqrt_alpha_bar[t])
    show("√(1 − ᾱ_t)", schedule.sqrt_one_minus_alpha_bar[t])
    x_t = schedule.q_sample(x0, t, noise)  # √ᾱ_t x_0 + √(1 − ᾱ_t) ε
    show("x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε", x_t)

    first, act = model.inp.layers  # EmbeddingLinear, GELU
    show("h_x = emb_c(x_t)  [sin | cos] per coordinate, scale 25", model.coord_emb.forward(x_t))
    model.coord_emb.cache = None  # printed only: the first layer embeds x_t again
    show("h_t = emb_t(t)  [sin | cos], scale 1", model.time_emb.forward(t))
    z = first.forward(x_t, t, per_timestep=False)
    show("z = [h_x, h_t]·W + b   (inp.0)", z)
    h = act.forward(z)
    show("h = GELU(z)", h)
    for i, block in enumerate(model.blocks.layers):  # Residual(Sequential(LayerNorm, Linear, GELU))
        u = h  # u0: the block's input
        for j, layer in enumerate(block.fn.layers):
            u = layer.forward(u)
            show(f"u{j + 1} = {type(layer).__name__}(u{j})   (blocks.{i}.fn.{j}{'; u0 = h' if j == 0 else ''})", u)
        h = h + u
        show(f"h = h + u{len(block.fn.layers)}   (block {i}'s residual: h + f(h))", h)
    eps_theta = model.out.forward(h)
    show("ε_θ = h·W + b   (out)", eps_theta)

    diff = eps_theta - noise  # (N, D)
    loss = float((diff * diff).mean())
    show("L = mean (ε_θ − ε)²", np.array(loss))
    d_eps = 2.0 * diff / diff.size  # dL/dε_θ = 2(ε_θ − ε)/(N·D)
    show("dL/dε_θ = 2(ε_θ − ε)/(N·D)", d_eps)

    model.zero_grad()
    dh = model.out.backward(d_eps)
    _grads(show, model.out, "dL/d out")
    show("dL/dh = dL/dε_θ·Wᵀ", dh)
    for i, block in reversed(list(enumerate(model.blocks.layers))):
        du = dh
        for j, layer in reversed(list(enumerate(block.fn.layers))):
            du = layer.backward(du)
            _grads(show, layer, f"dL/d blocks.{i}.fn.{j}")
            show(f"dL/du{j}   (back through the {type(layer).__name__})", du)
        dh = dh + du
        show(f"dL/dh = dL/dh + dL/dh·∂f/∂h   (block {i}'s residual)", dh)
    dz = act.backward(dh)
    show("dL/dz = dL/dh·GELU'(z)", dz)
    first.backward(dz, input_grad=False)
    _grads(show, first, "dL/d inp.0")
    return loss, model.flat_grads.copy()


def main(argv=None) -> int:
    args = parse_args(argv)
    with entry.demo_outputs(args.out, ["worked_example.txt"], force=args.force, command="demos/worked_example.py"):
        return run(args)


def run(args) -> int:
    np.set_printoptions(precision=4, suppress=True, linewidth=110)
    lines: list[str] = []

    def say(text: str) -> None:
        print(text)
        lines.append(text)

    def show(label: str, array, formatter=None) -> None:
        array = np.asarray(array)
        if array.ndim == 0:
            say(f"{label} = {float(array):.12f}")
            return
        body = np.array2string(array, prefix="    ", formatter=formatter)
        say(f"{label}  {array.shape}\n    {body}")

    model, schedule, x0, t, noise = inputs()
    say(f"one training step of a Denoiser({', '.join(f'{k}={v!r}' for k, v in CONFIG.items())}), "
        f"{model.flat_params.size} parameters, on Schedule({T}, 'linear')\n")
    loss, grads = training_step(model, schedule, x0, t, noise, show)

    # the same step as training makes it, in one call: the numbers must agree
    model.zero_grad()
    loss_lib = float(EpsilonObjective(schedule).loss_and_backward(model, x0, t=t, noise=noise))
    gap = max(abs(loss_lib - loss), float(np.abs(model.flat_grads - grads).max()))
    say(f"\nEpsilonObjective.loss_and_backward gives the same loss and gradients: largest difference {gap:.1e}")
    if gap > 1e-12:
        raise AssertionError("the layer-by-layer walk and the objective disagree")

    optimizer = AdamW(model, lr=LR, weight_decay=WEIGHT_DECAY)
    theta = model.flat_params.copy()
    optimizer.step()
    say(f"\nAdamW, step k = 1, lr = {LR}, λ = {WEIGHT_DECAY}, β1 = 0.9, β2 = 0.999, ε = 1e-8:")
    names = list(model.parameters())
    start = sum(value.size for value in list(model.parameters().values())[:names.index("out.W")])
    out_w = slice(start, start + model.out.params["W"].size)  # where out.W lies in the flat buffers
    show("m = 0.1·g   (out.W's entries)", optimizer.m[out_w].reshape(model.out.params["W"].shape))
    show("v = 0.001·g²   (out.W's entries)", optimizer.v[out_w].reshape(model.out.params["W"].shape),
         {"float_kind": "{:.3e}".format})
    say(f"α_1 = lr·√(1 − β2)/(1 − β1) = {LR * np.sqrt(1 - 0.999) / (1 - 0.9):.6f}")
    step = model.flat_params - theta
    offset = 0
    for name, value in model.parameters().items():
        show(f"Δ{name}", step[offset:offset + value.size].reshape(value.shape))
        offset += value.size
    sign_step = -LR * np.sign(grads) - LR * WEIGHT_DECAY * theta  # Adam's first step is lr·sign(g), plus the decay
    say(f"at k = 1, m/√v = sign(g): every Δθ = −lr·sign(g) − lr·λ·θ up to ε "
        f"(largest difference {np.abs(step - sign_step).max():.1e})")

    fileio.write_text(os.path.join(args.out, "worked_example.txt"), "\n".join(lines) + "\n")
    print(os.path.abspath(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(entry.run_demo(main, sys.argv[1:]))  # every failure: one line, status 1 or 2 (npdiff.cli.entry)
