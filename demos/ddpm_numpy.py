"""The whole DDPM in one NumPy file: learn the heart curve, then turn noise into hearts. Read this first.

npdiff's heart demo (demos/heart.py) written out plainly, with nothing but NumPy: the linear β schedule, the
sinusoidal embeddings, the MLP with its hand-written backward pass, AdamW, then Algorithm 1 (training) and
Algorithm 2 (sampling) of Ho et al. 2020, "Denoising Diffusion Probabilistic Models". ``python
demos/ddpm_numpy.py [--steps N] [--out DIR] [--quick] [--seed S] [--force]`` writes heart.png (the data
beside the samples) into DIR; an earlier heart.png is replaced only with --force. tests/test_demo_ddpm_numpy.py
proves each piece equal to npdiff's.

Shape glossary: N batch, D = 2 data dims, E embedding size, F = E/2 frequencies, H hidden width, T diffusion
steps. The schedule's arrays have length T + 1 and are indexed by the paper's t (entry 0 is t = 0).
"""

import argparse
import math
import os
import tempfile
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before NumPy loads: a 2nd BLAS thread spins, 10x slower here
import numpy as np  # noqa: E402

# the heart demo's model, schedule and training (demos/heart.py, with npdiff's Denoiser and Diffusion defaults)
T, D, H, E, N_BLOCKS = 200, 2, 64, 64, 1
COORD_SCALE, TIME_SCALE, LN_EPS, GELU_C, GELU_A = 25.0, 1.0, 1e-5, math.sqrt(2.0 / math.pi), 0.044715
STEPS, QUICK_STEPS, BATCH, LR, CLIP = 3000, 800, 512, 2e-2, 1.0  # AdamW: PyTorch's defaults, λ = 0.01

# --- the forward process: q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I)  (DDPM Eq. 4) ---
betas = np.concatenate([[0.0], np.linspace(1e-4, 0.02, T)])  # β_t; β_0 = 0 makes ᾱ_0 = 1     (T+1,)
alphas = 1.0 - betas  # α_t = 1 − β_t
alpha_bar = np.cumprod(alphas)  # ᾱ_t = Π_{s≤t} α_s
posterior_var = np.zeros(T + 1)  # β̃_t = β_t (1 − ᾱ_{t−1})/(1 − ᾱ_t), the variance of q(x_{t−1} | x_t, x_0)
posterior_var[1:] = betas[1:] * (1.0 - alpha_bar[:-1]) / (1.0 - alpha_bar[1:])  # β̃_1 = 0: ᾱ_0 = 1


# --- the network ε_θ(x_t, t) ---
def sinusoidal(x, scale: float):
    """emb(s) = [sin(c·s·ω_k) | cos(c·s·ω_k)], ω_k = 10000^(−k/(F−1)), k = 0..F−1, for each column s of x,
    scale c.  x (N, C) -> (N, C·E)"""
    omega = np.exp(-math.log(10000.0) / (E // 2 - 1) * np.arange(E // 2, dtype="float64")).astype(x.dtype) * scale
    arg = x[:, :, None] * omega  # c·s·ω_k                                         (N, C, F)
    return np.concatenate([np.sin(arg), np.cos(arg)], axis=2).reshape(x.shape[0], -1)  # (N, C·E)


def gelu(x):
    """GELU(x) = x·Φ(x), Φ(x) ≈ ½(1 + tanh u), u = √(2/π)(x + 0.044715x³) (PyTorch's approximate="tanh")."""
    return x * 0.5 * (1.0 + np.tanh(GELU_C * (x + GELU_A * x * x * x)))


def gelu_grad(x):
    """GELU'(x) = Φ(x) + x·Φ'(x), Φ'(x) = ½(1 − tanh²u)·u', u' = √(2/π)(1 + 3·0.044715x²)."""
    th = np.tanh(GELU_C * (x + GELU_A * x * x * x))  # tanh u
    return 0.5 * (1.0 + th) + x * 0.5 * (1.0 - th * th) * GELU_C * (1.0 + 3.0 * GELU_A * x * x)


def layernorm(x, gamma, beta):
    """y = γ·x̂ + β, x̂ = (x − μ)/√(σ² + ε), μ and σ² (biased) over the H features.  -> (y (N, H), cache)"""
    mu = x.sum(axis=1, keepdims=True) / x.shape[1]  # (N, 1)
    var = ((x - mu) ** 2).sum(axis=1, keepdims=True) / x.shape[1]  # divided by H, not H − 1 (N, 1)
    inv_std = 1.0 / np.sqrt(var + LN_EPS)  # (N, 1)
    xhat = (x - mu) * inv_std  # (N, H)
    return xhat * gamma + beta, (xhat, inv_std)  # x̂ and 1/√(σ² + ε) are all the backward needs


def layernorm_backward(dy, gamma, cache):
    """-> dL/dx (N, H), dL/dγ, dL/dβ (H,). x̂ depends on x directly and through μ and σ²; the three paths
    sum to dL/dx = (dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂))/√(σ² + ε), means over the features."""
    xhat, inv_std = cache
    dxhat = dy * gamma  # dL/dx̂ = dy·γ                                        (N, H)
    dx = (dxhat - dxhat.mean(axis=1, keepdims=True) - xhat * (dxhat * xhat).mean(axis=1, keepdims=True)) * inv_std
    return dx, (dy * xhat).sum(axis=0), dy.sum(axis=0)  # dL/dγ = Σ_n dy·x̂,  dL/dβ = Σ_n dy


def init_params(seed: int = 0, dtype: str = "float32") -> dict:
    """Each Linear as PyTorch's default, W, b ~ U(−1/√fan_in, 1/√fan_in); LayerNorm γ = 1, β = 0. The names
    and the order of the draws are npdiff's, so the weights equal Denoiser(seed=seed)'s."""
    rng, params = np.random.default_rng(seed), {}

    def linear(name, fan_in, fan_out):
        bound = 1.0 / math.sqrt(fan_in)
        params[name + ".W"] = rng.uniform(-bound, bound, (fan_in, fan_out)).astype(dtype)
        params[name + ".b"] = rng.uniform(-bound, bound, (fan_out,)).astype(dtype)
    linear("inp.0", D * E + E, H)  # acts on [emb(x_t), emb(t)]
    for i in range(N_BLOCKS):
        params[f"blocks.{i}.fn.0.gamma"], params[f"blocks.{i}.fn.0.beta"] = np.ones(H, dtype), np.zeros(H, dtype)
        linear(f"blocks.{i}.fn.1", H, H)
    params["norm.gamma"], params["norm.beta"] = np.ones(H, dtype), np.zeros(H, dtype)  # the final layernorm
    linear("out", H, D)
    return params


def forward(params: dict, x_t, t):
    """h = GELU(Linear([emb(x_t), emb(t)])); h = h + GELU(Linear(LN(h))) per block; ε_θ = Linear(LN(h)).
    x_t (N, D), t (N,) integers -> (eps_pred (N, D), cache)"""
    p = params
    h_t = sinusoidal(t[:, None].astype(x_t.dtype), TIME_SCALE)  # (N, E)
    h_in = np.concatenate([sinusoidal(x_t, COORD_SCALE), h_t], axis=1)  # [h_x, h_t]        (N, D·E + E)
    z = h_in @ p["inp.0.W"] + p["inp.0.b"]  # (N, H)
    cache = {"h_in": h_in, "z": z, "blocks": []}  # dL/dW needs each Linear's input; GELU' its pre-activation
    h = gelu(z)  # (N, H)
    for i in range(N_BLOCKS):
        h_norm, ln = layernorm(h, p[f"blocks.{i}.fn.0.gamma"], p[f"blocks.{i}.fn.0.beta"])  # (N, H)
        u = h_norm @ p[f"blocks.{i}.fn.1.W"] + p[f"blocks.{i}.fn.1.b"]  # (N, H)
        cache["blocks"].append((ln, h_norm, u))
        h = h + gelu(u)  # the residual connection                                  (N, H)
    h_out, cache["norm"] = layernorm(h, p["norm.gamma"], p["norm.beta"])  # (N, H)
    cache["h_out"] = h_out
    return h_out @ p["out.W"] + p["out.b"], cache  # (N, D)


def backward(params: dict, cache: dict, d_eps_pred) -> dict:
    """dL/dθ for every parameter (the keys of params) from dL/dε_θ (N, D). Training needs no dL/dx_t."""
    p, g = params, {}
    g["out.W"] = cache["h_out"].T @ d_eps_pred  # dL/dW = h_outᵀ·dy                 (H, D)
    g["out.b"] = d_eps_pred.sum(axis=0)  # dL/db = Σ_n dy                            (D,)
    d_h_out = d_eps_pred @ p["out.W"].T  # dL/dh_out = dy·Wᵀ                         (N, H)
    dh, g["norm.gamma"], g["norm.beta"] = layernorm_backward(d_h_out, p["norm.gamma"], cache["norm"])
    for i in reversed(range(N_BLOCKS)):
        ln, h_norm, u = cache["blocks"][i]
        du = dh * gelu_grad(u)  # dL/du = dL/dh·GELU'(u)                             (N, H)
        g[f"blocks.{i}.fn.1.W"] = h_norm.T @ du  # dL/dW = h_normᵀ·du                (H, H)
        g[f"blocks.{i}.fn.1.b"] = du.sum(axis=0)  # (H,)
        d_h_block, g[f"blocks.{i}.fn.0.gamma"], g[f"blocks.{i}.fn.0.beta"] = layernorm_backward(
            du @ p[f"blocks.{i}.fn.1.W"].T, p[f"blocks.{i}.fn.0.gamma"], ln)  # through dL/dh_norm = du·Wᵀ
        dh = dh + d_h_block  # h + f(h): the skip path and the block's path add      (N, H)
    dz = dh * gelu_grad(cache["z"])  # (N, H)
    g["inp.0.W"] = cache["h_in"].T @ dz  # dL/dW = [h_x, h_t]ᵀ·dz                  (D·E + E, H)
    g["inp.0.b"] = dz.sum(axis=0)  # (H,)
    return g


# --- Algorithm 1: training ---
def loss_and_grads(params: dict, x0, t, noise):
    """L = mean_{n,d} (ε − ε_θ(√ᾱ_t x_0 + √(1−ᾱ_t) ε, t))² (DDPM Eq. 14) and dL/dθ.
    x0, noise (N, D), t (N,) in 1..T -> (loss, grads)"""
    sqrt_ab = np.sqrt(alpha_bar[t]).astype(x0.dtype)[:, None]  # √ᾱ_t              (N, 1)
    x_t = sqrt_ab * x0 + np.sqrt(1.0 - alpha_bar[t]).astype(x0.dtype)[:, None] * noise  # a draw of q(x_t | x_0)
    eps_pred, cache = forward(params, x_t, t)  # (N, D)
    diff = eps_pred - noise  # (N, D)
    loss = (diff * diff).mean()
    return loss, backward(params, cache, 2.0 * diff / diff.size)  # dL/dε_θ = 2(ε_θ − ε)/(N·D)


def adam_state(params: dict) -> dict:
    """AdamW's state: the step count k and the moments m, v of every parameter, all zero."""
    return {"k": 0, "m": {k: np.zeros_like(v) for k, v in params.items()},
            "v": {k: np.zeros_like(v) for k, v in params.items()}}


def adam_step(params: dict, grads: dict, state: dict, lr: float, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01):
    """One AdamW update, in place (Loshchilov & Hutter 2019; Adam: Kingma & Ba 2015, Algorithm 1):
    θ ← θ(1 − lr·λ);  m ← β1 m + (1 − β1) g;  v ← β2 v + (1 − β2) g²;  θ ← θ − lr·m̂/(√v̂ + ε)."""
    k = state["k"] = state["k"] + 1
    for name, theta in params.items():
        g = grads[name]
        theta *= 1.0 - lr * weight_decay  # the decay, decoupled from g
        m = state["m"][name] = b1 * state["m"][name] + (1.0 - b1) * g
        v = state["v"][name] = b2 * state["v"][name] + (1.0 - b2) * g * g
        m_hat, v_hat = m / (1.0 - b1**k), v / (1.0 - b2**k)  # bias-corrected: the moments start at 0
        theta -= lr * m_hat / (np.sqrt(v_hat) + eps)


def train(params: dict, x, steps: int, rng, batch: int = BATCH, lr: float = LR) -> list:
    """Algorithm 1 for ``steps`` steps on the points x (M, D), with the heart demo's extras: the lr warmed up
    over 100 steps then cosine-decayed to 0, and the gradient norm clipped at 1.  -> the losses"""
    state, losses, warmup = adam_state(params), [], min(100, steps)
    for step in range(steps):
        x0 = x[rng.integers(0, x.shape[0], batch)]  # x_0 ~ q(x_0)                  (N, D)
        t = rng.integers(1, T + 1, batch)  # t ~ Uniform({1, …, T})                  (N,)
        noise = rng.standard_normal(x0.shape, dtype=x0.dtype)  # ε ~ N(0, I)         (N, D)
        loss, grads = loss_and_grads(params, x0, t, noise)
        norm = math.sqrt(sum(float((g * g).sum()) for g in grads.values()))  # ‖g‖₂ over all parameters
        if norm > CLIP:
            for g in grads.values():
                g *= CLIP / (norm + 1e-6)
        progress = max(0, step - warmup) / max(1, steps - warmup)
        lr_now = lr * (step + 1) / warmup if step < warmup else 0.5 * lr * (1.0 + math.cos(math.pi * progress))
        adam_step(params, grads, state, lr_now)
        losses.append(float(loss))
        if (step + 1) % max(1, steps // 5) == 0:
            print(f"step {step + 1}/{steps}: loss {np.mean(losses[-100:]):.4f}", flush=True)
    return losses


# --- Algorithm 2: sampling ---
def sampling_step(params: dict, x_t, t: int, z):
    """x_{t−1} = (x_t − β_t/√(1−ᾱ_t) ε_θ(x_t, t))/√α_t + σ_t z (DDPM Eq. 11), σ_t² = β̃_t (npdiff's
    "fixed_small"); σ_1 = 0, so the last step adds no noise.  x_t, z (N, D) -> x_{t−1} (N, D)"""
    eps_pred, _ = forward(params, x_t, np.full(x_t.shape[0], t))  # (N, D)
    mean = (x_t - float(betas[t] / np.sqrt(1.0 - alpha_bar[t])) * eps_pred) / float(np.sqrt(alphas[t]))
    return mean + float(np.sqrt(posterior_var[t])) * z


def sample(params: dict, n: int, rng):
    """x_T ~ N(0, I); for t = T, …, 1: z ~ N(0, I) if t > 1 else z = 0, and one sampling step.  -> x_0 (n, D)"""
    x = rng.standard_normal((n, D), dtype=params["out.W"].dtype)  # x_T                  (n, D)
    for t in range(T, 0, -1):
        z = rng.standard_normal(x.shape, dtype=x.dtype) if t > 1 else np.zeros_like(x)
        x = sampling_step(params, x, t, z)
    return x


# --- the data and the score ---
def heart(theta):
    """The heart at angles θ (M,): x = 16 sin³θ/5, y = (13 cos θ − 5 cos 2θ − 2 cos 3θ − cos 4θ)/5.  -> (M, 2)"""
    s = np.sin(theta)
    y = 13.0 * np.cos(theta) - 5.0 * np.cos(2 * theta) - 2.0 * np.cos(3 * theta) - np.cos(4 * theta)
    return np.stack([16.0 * s * s * s, y], axis=1) / 5.0


def chamfer(a, b) -> float:
    """CD(a, b) = ½[mean_i min_j ‖a_i − b_j‖ + mean_j min_i ‖a_i − b_j‖], a (N, D), b (M, D)."""
    def nearest(p, q):  # ‖p_i − q_j‖ to the nearest q_j, found by argmin_j ‖q_j‖² − 2 p_i·q_j, 256 rows at a time
        j = np.concatenate([((q * q).sum(axis=1) - 2.0 * p[i:i + 256] @ q.T).argmin(axis=1)
                            for i in range(0, p.shape[0], 256)])
        return np.sqrt(((p - q[j]) ** 2).sum(axis=1))  # from the difference: exact where the expansion cancels
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return 0.5 * float(nearest(a, b).mean() + nearest(b, a).mean())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, help=f"training steps (default {STEPS}; {QUICK_STEPS} with --quick)")
    parser.add_argument("--out", default=os.path.join("out", "ddpm_numpy"), help="output folder")
    parser.add_argument("--quick", action="store_true", help="a short run, for the tests")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random draw")
    parser.add_argument("--force", action="store_true", help="replace the heart.png of an earlier run in --out")
    parser.error = lambda message: parser.exit(2, f"{parser.prog}: error: {message}\n")  # one line, status 2
    args = parser.parse_args(argv)
    steps = args.steps if args.steps is not None else QUICK_STEPS if args.quick else STEPS
    if steps < 1:  # every flag and the output folder are checked before any work
        parser.error(f"--steps must be >= 1, got {steps}")
    figure = os.path.join(args.out, "heart.png")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        parser.error(f"--out {args.out!r} is a file; name a folder")
    if os.path.lexists(figure) and not args.force:
        parser.error(f"--out {args.out!r} holds heart.png already; pass --force to replace it or choose another --out")
    try:
        os.makedirs(args.out, exist_ok=True)
        tempfile.TemporaryFile(dir=args.out).close()  # a file can be written there
    except OSError as err:
        parser.error(f"--out {args.out!r}: cannot write there: {err.strerror or err}")
    start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    x = heart(rng.uniform(0.0, 2 * math.pi, 8000)).astype(np.float32)  # the training set    (8000, 2)
    params = init_params(args.seed, "float32")  # float32 for speed; the test checks every piece in float64
    losses = train(params, x, steps, rng)
    if not np.all(np.isfinite(losses)):  # stop with one line (exit status 1) rather than draw NaN hearts
        raise SystemExit(f"ddpm_numpy.py: error: non-finite loss at step {int(np.argmin(np.isfinite(losses))) + 1}; "
                         "nothing was written")
    samples = sample(params, 2000, rng)  # (2000, 2)
    cd = chamfer(samples, heart(np.linspace(0.0, 2 * math.pi, 20_000, endpoint=False)))
    print(f"Chamfer distance to the true curve: {cd:.4f} ({steps} steps, final loss {np.mean(losses[-100:]):.4f})")

    import matplotlib.pyplot as plt  # only the figure needs it
    fig, axes = plt.subplots(1, 2, figsize=(7.2, 3.6))
    for ax, (title, pts) in zip(axes, {"training data": x[:2000], f"samples (Chamfer {cd:.4f})": samples}.items()):
        ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.5, linewidths=0)
        ax.set(title=title, xlim=(-5, 5), ylim=(-5, 5), aspect="equal")
    fig.savefig(figure, dpi=100)
    plt.close(fig)
    print(f"elapsed {time.perf_counter() - start:.1f} s")
    print(os.path.abspath(args.out))


if __name__ == "__main__":
    main()
