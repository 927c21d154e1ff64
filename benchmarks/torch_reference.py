"""The same denoiser and DDPM train step in PyTorch eager, for ``train_step.py`` to time side by side.

Shape glossary: N batch, D data dims, E embedding size, H hidden width, K classes, T diffusion steps.

The model mirrors ``npdiff.nn.denoiser.Denoiser`` layer for layer: sinusoidal embeddings of each coordinate
(scale ``coord_scale``; or x_t itself, ``embed_coords=False``) and of t (scale ``time_scale``), concatenated as
[emb(x_1), …, emb(x_D), emb(t)]; Linear, plus a learned vector per class label (K + 1 rows, the last one "no
label") when ``num_classes`` is set, then GELU(tanh); residual blocks x + GELU(Linear(LN(x))); optional final
LayerNorm; Linear out. ``load_from`` copies an npdiff model's weights, so both start from the same point.
The step can predict ε or x_0, drop labels for classifier-free guidance and keep an EMA of the weights
(``torch._foreach_lerp_``, as timm's ``ModelEmaV3`` does); ``sample_ddim`` is npdiff's guided DDIM with x̂_0
clipping (``ddpm.EpsilonChain.predict`` and ``sampling.ddim_step``), η = 0.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


class SinusoidalEmbedding(nn.Module):
    """(N, D) -> (N, D·E): [sin(c x ω), cos(c x ω)] per coordinate, ω_k = exp(−log(10⁴) k/(F−1))."""

    def __init__(self, size: int, scale: float) -> None:
        super().__init__()
        half = size // 2
        omega = torch.exp(-math.log(10000.0) / (half - 1) * torch.arange(half, dtype=torch.float64))
        self.register_buffer("omega", (omega * scale).float())

    def forward(self, x):
        arg = x[:, :, None] * self.omega  # (N, D, F)
        return torch.cat([torch.sin(arg), torch.cos(arg)], dim=2).reshape(x.shape[0], -1)


class Block(nn.Module):
    """x + GELU(Linear(LN(x))) (LN optional)."""

    def __init__(self, hidden: int, layernorm: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden) if layernorm else nn.Identity()
        self.fc = nn.Linear(hidden, hidden)
        self.act = nn.GELU(approximate="tanh")

    def forward(self, x):
        return x + self.act(self.fc(self.norm(x)))


class Denoiser(nn.Module):
    """f(x_t, t) with the architecture of ``npdiff.nn.denoiser.Denoiser`` (coordinate embeddings on)."""

    def __init__(self, data_dim, hidden, n_blocks, emb_dim, coord_scale, time_scale, layernorm,
                 final_layernorm, embed_coords: bool = True, num_classes: int | None = None) -> None:
        super().__init__()
        self.coord_emb = SinusoidalEmbedding(emb_dim, coord_scale) if embed_coords else nn.Identity()
        self.time_emb = SinusoidalEmbedding(emb_dim, time_scale)
        self.inp = nn.Linear((data_dim * emb_dim if embed_coords else data_dim) + emb_dim, hidden)
        self.label_emb = nn.Embedding(num_classes + 1, hidden) if num_classes is not None else None
        self.act = nn.GELU(approximate="tanh")
        self.blocks = nn.Sequential(*[Block(hidden, layernorm) for _ in range(n_blocks)])
        self.norm = nn.LayerNorm(hidden) if final_layernorm else nn.Identity()
        self.out = nn.Linear(hidden, data_dim)

    def forward(self, x, t, y=None):
        h = torch.cat([self.coord_emb(x), self.time_emb(t[:, None].float())], dim=1)
        z = self.inp(h)
        if self.label_emb is not None:
            z = z + self.label_emb(y)
        h = self.act(z)
        return self.out(self.norm(self.blocks(h)))

    def load_from(self, model) -> None:
        """Copy the weights of an npdiff Denoiser (its W is (in, out); torch's weight is (out, in))."""
        from npdiff import backend
        p = {k: backend.to_numpy(v) for k, v in model.parameters().items()}
        linears = [(self.inp, "inp.0")] + [(b.fc, f"blocks.{i}.fn.{int(model.config['layernorm'])}")
                                           for i, b in enumerate(self.blocks)] + [(self.out, "out")]
        norms = [(b.norm, f"blocks.{i}.fn.0") for i, b in enumerate(self.blocks) if model.config["layernorm"]]
        if model.config["final_layernorm"]:
            norms.append((self.norm, "norm"))
        with torch.no_grad():
            for lin, key in linears:
                lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(p[key + ".W"].T)))
                lin.bias.copy_(torch.from_numpy(p[key + ".b"]))
            for ln, key in norms:
                ln.weight.copy_(torch.from_numpy(p[key + ".gamma"]))
                ln.bias.copy_(torch.from_numpy(p[key + ".beta"]))
            if self.label_emb is not None:
                self.label_emb.weight.copy_(torch.from_numpy(p["label_emb.W"]))


class TorchDDPM:
    """A DDPM train step (ε- or x_0-prediction, optional labels and EMA), an ancestral sampler and guided DDIM
    around a torch Denoiser."""

    def __init__(self, model, schedule, lr: float, clip: float | None, device: str = "cpu", prediction: str = "eps",
                 label_dropout: float = 0.0, ema: float | None = None, weight_decay: float = 0.01) -> None:
        self.model, self.clip, self.device = model.to(device), clip, device
        self.T, self.schedule = schedule.T, schedule
        self.prediction, self.label_dropout = prediction, label_dropout
        tensor = lambda a: torch.tensor(a, dtype=torch.float32, device=device)
        self.sqrt_ab = tensor(schedule.sqrt_alpha_bar)[:, None]  # (T+1, 1)
        self.sqrt_1mab = tensor(schedule.sqrt_one_minus_alpha_bar)[:, None]
        self.eps_coef = tensor(schedule.betas / np.maximum(schedule.sqrt_one_minus_alpha_bar, 1e-12))
        self.recip_sqrt_alpha = tensor(1 / np.sqrt(schedule.alphas))
        self.sigma = tensor(np.sqrt(schedule.posterior_var))  # σ_t² = β̃_t, ddpm's "fixed_small"
        self.opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        self.params = list(model.parameters())
        self.ema_decay, self.ema_updates = ema, 0
        self.shadow = [p.detach().clone() for p in self.params] if ema is not None else None

    def train_step(self, x0, y=None, clock=None) -> float:
        """t ~ U{1..T}, ε ~ N(0, I), x_t = √ᾱ_t x0 + √(1−ᾱ_t) ε, loss = mean (target − f(x_t, t[, y]))², AdamW,
        then θ̄ ← d θ̄ + (1 − d) θ with npdiff's warm-up d = min(decay, (1 + n)/(10 + n)).

        clock: a timer (``time.thread_time``) to time the parts, kept in ``self.parts`` (seconds); None: not timed.
        """
        marks = [] if clock is not None else None
        mark = (lambda: marks.append(clock())) if clock is not None else (lambda: None)
        mark()
        n = x0.shape[0]
        t = torch.randint(1, self.T + 1, (n,), device=self.device)
        noise = torch.randn(x0.shape, device=self.device)
        x_t = self.sqrt_ab[t] * x0 + self.sqrt_1mab[t] * noise
        if y is not None and self.label_dropout:
            y = torch.where(torch.rand(n, device=self.device) < self.label_dropout, self.model.label_emb.num_embeddings - 1, y)
        target = noise if self.prediction == "eps" else x0
        mark()
        loss = nn.functional.mse_loss(self.model(x_t, t, y), target)
        mark()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        mark()
        if self.clip is not None:
            nn.utils.clip_grad_norm_(self.params, self.clip)
        mark()
        self.opt.step()
        mark()
        if self.shadow is not None:
            decay = min(self.ema_decay, (1 + self.ema_updates) / (10 + self.ema_updates))
            with torch.no_grad():
                torch._foreach_lerp_(self.shadow, self.params, 1 - decay)
            self.ema_updates += 1
        mark()
        if marks is not None:
            names = ("inputs", "forward and loss", "backward", "‖g‖ and clipping", "optimizer (AdamW)", "EMA")
            self.parts = dict(zip(names, (b - a for a, b in zip(marks, marks[1:]))))
        return loss

    @torch.no_grad()
    def sample(self, n: int, dim: int):
        """x_T ~ N(0, I); x_{t−1} = (x_t − β_t/√(1−ᾱ_t) ε_θ)/√α_t + σ_t z, no noise at t = 1."""
        x = torch.randn(n, dim, device=self.device)
        for t in range(self.T, 0, -1):
            tt = torch.full((n,), t, device=self.device)
            x = (x - self.eps_coef[t] * self.model(x, tt)) * self.recip_sqrt_alpha[t]
            if t > 1:
                x += self.sigma[t] * torch.randn_like(x)
        return x

    @torch.no_grad()
    def sample_ddim(self, labels, dim: int, ddim_steps: int, guidance: float, clip=(-1.0, 1.0)):
        """Guided DDIM (η = 0) of an x_0-predicting model: per step one forward pass of 2N rows [x_t; x_t] labelled
        [y; ∅], x̂_0 = (1 + w) f_c − w f_∅ clipped, ε = (x_t − √ᾱ_t x̂_0)/√(1−ᾱ_t), x_s = √ᾱ_s x̂_0 + √(1−ᾱ_s) ε."""
        n = labels.shape[0]
        ts = self.schedule.reverse_t(ddim_steps)
        both_y = torch.cat([labels, torch.full((n,), self.model.label_emb.num_embeddings - 1, device=self.device)])
        x = torch.randn(n, dim, device=self.device)
        for t, s in zip(ts, ts[1:] + [0]):
            tt = torch.full((2 * n,), t, device=self.device)
            both = self.model(torch.cat([x, x]), tt, both_y)
            x0 = ((1 + guidance) * both[:n] - guidance * both[n:]).clamp_(*clip)
            eps = (x - self.sqrt_ab[t] * x0) / self.sqrt_1mab[t]
            x = self.sqrt_ab[s] * x0 + self.sqrt_1mab[s] * eps
        return x
