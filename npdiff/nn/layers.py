"""Layers with hand-written backward passes: Linear, activations, LayerNorm, Residual, Sequential.

Shape glossary: N batch, I input features, H output/hidden features.

The layer contract (docs/architecture.md): ``params`` and ``grads`` are dicts with the same keys and shapes;
``forward(x)`` keeps in ``self.cache`` exactly what ``backward`` needs (each entry says why);
``backward(dy)`` takes that cache (it is used once: a second backward needs a new forward), returns
dL/dx and ADDS (+=) dL/dparam into ``grads``; ``zero_grad()`` resets them. Each backward sits right
below its forward, and each line of it names the chain-rule step it takes. Composites name children's
parameters with dots ("1.fn.0.W").

Every line is the textbook formula. Where the plain NumPy expression is slow at npdiff's sizes (a sum
over the batch, a mean over features, the GELU) or unsafe (the sigmoid), the line calls a named
primitive from ``npdiff.nn.primitives`` whose docstring gives the plain formula and whose test proves the
two equal. Products are written ``x.dot(W)``: the array method skips NumPy's dispatch layer, about
0.3 µs a call (a tenth of a small layer's forward pass).
"""

from __future__ import annotations

import math

from npdiff import backend
from npdiff.nn.primitives import batch_sum, gelu_tanh_derivative, normal_cdf_tanh, row_mean, sigmoid


class Module:
    """Base class: parameter bookkeeping shared by every layer and composite."""

    def __init__(self) -> None:
        self.params: dict = {}
        self.grads: dict = {}
        self.cache = None  # what forward kept for backward; None before forward and after backward
        self.spent_cache = None  # the cache backward last took (see take_cache)

    def children(self) -> list[tuple[str, "Module"]]:
        """(name, module) pairs of sub-modules; leaves have none."""
        return []

    def parameters(self) -> dict:
        """All trainable arrays under dotted names, this module's own first."""
        out = dict(self.params)
        for name, child in self.children():
            out.update({f"{name}.{k}": v for k, v in child.parameters().items()})
        return out

    def gradients(self) -> dict:
        """All gradient arrays, same keys as ``parameters()``."""
        out = dict(self.grads)
        for name, child in self.children():
            out.update({f"{name}.{k}": v for k, v in child.gradients().items()})
        return out

    def zero_grad(self) -> None:
        """Set every gradient to 0 in place (one call on the flat buffer after ``flat.flatten``)."""
        flat = getattr(self, "flat_grads", None)
        if flat is not None:
            flat[...] = 0
            return
        for g in self.gradients().values():
            g[...] = 0

    def take_cache(self):
        """The cache of the last forward, handed over once: backward consumes it.

        The consumed arrays stay referenced (``spent_cache``) until the next backward takes a new
        cache: released all at once at the end of a step, they would let glibc return the freed heap
        to the system, and the next step would fault every page back in (measured: 1,577 page faults
        and +35 % time per tiny-diffusion train step).
        """
        cache = self.cache
        if cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward (or twice after one "
                               "forward: each backward consumes the cache its forward kept)")
        self.cache, self.spent_cache = None, cache
        return cache

    def __call__(self, *args):
        return self.forward(*args)


class Linear(Module):
    """y = x W + b (PyTorch's default init: W, b ~ U(−1/√I, 1/√I)).  x (N, I) -> y (N, H)."""

    def __init__(self, in_features: int, out_features: int, rng, dtype="float32") -> None:
        super().__init__()
        xp = backend.xp
        bound = 1.0 / math.sqrt(in_features)
        self.params["W"] = rng.uniform(-bound, bound, (in_features, out_features)).astype(dtype)
        self.params["b"] = rng.uniform(-bound, bound, (out_features,)).astype(dtype)
        self.grads = {k: xp.zeros_like(v) for k, v in self.params.items()}

    def forward(self, x):
        self.cache = x  # dL/dW needs the input
        return x.dot(self.params["W"]) + self.params["b"]  # x W + b  (N, H)

    def backward(self, dy, input_grad: bool = True):
        """dL/dx (N, I), or None when ``input_grad`` is False (a first layer's input needs none)."""
        x = self.take_cache()
        self.grads["W"] += x.T.dot(dy)  # dL/dW = xᵀ · dL/dy     (I, H)
        self.grads["b"] += batch_sum(dy)  # dL/db = Σ_n dL/dy      (H,)
        return dy.dot(self.params["W"].T) if input_grad else None  # dL/dx = dL/dy · Wᵀ  (N, I)


class ReLU(Module):
    """y = max(x, 0), elementwise."""

    def forward(self, x):
        positive = x > 0
        self.cache = positive  # the mask 1[x > 0] is the whole derivative
        return x * positive

    def backward(self, dy):
        return dy * self.take_cache()  # dL/dx = dL/dy · 1[x > 0]


class Tanh(Module):
    """y = tanh(x), elementwise."""

    def forward(self, x):
        y = backend.xp.tanh(x)
        self.cache = y  # tanh' = 1 − y²
        return y

    def backward(self, dy):
        y = self.take_cache()
        return dy * (1 - y * y)  # dL/dx = dL/dy · (1 − tanh²x)


class SiLU(Module):
    """y = x·σ(x) (a.k.a. swish), elementwise; σ is the overflow-free ``primitives.sigmoid``."""

    def forward(self, x):
        s = sigmoid(x)  # σ(x)
        self.cache = (x, s)  # the derivative σ + xσ(1 − σ) needs x and σ(x)
        return x * s

    def backward(self, dy):
        x, s = self.take_cache()
        return dy * (s + x * s * (1 - s))  # dL/dx = dL/dy · (σ + xσ(1 − σ))


class GELU(Module):
    """GELU(x) = x·Φ(x), Φ the standard normal CDF (Hendrycks & Gimpel 2016), in the tanh approximation
    Φ(x) ≈ ½(1 + tanh(√(2/π)(x + 0.044715x³))), elementwise.

    NumPy has no erf, so the exact x·Φ(x) is not available; this is PyTorch's
    ``gelu(approximate="tanh")``. Its largest difference from the exact form is about 3e-4.
    """

    def forward(self, x):
        x_sq = x * x  # x², never x**3-style powers (slow in float32)
        phi = normal_cdf_tanh(x, x_sq)  # Φ(x)  (N, H)
        y = x * phi  # x·Φ(x)
        self.cache = (x_sq, phi, y)  # GELU'(x) = Φ(x) + x·Φ'(x) is built from x², Φ(x) and y (left unmodified)
        return y

    def backward(self, dy):
        x_sq, phi, y = self.take_cache()
        return dy * gelu_tanh_derivative(x_sq, phi, y)  # dL/dx = dL/dy · (Φ(x) + x·Φ'(x))


ACTIVATIONS = {"relu": ReLU, "silu": SiLU, "gelu": GELU, "tanh": Tanh}


def activation(name: str) -> Module:
    """An activation layer by name: relu, silu, gelu or tanh."""
    try:
        return ACTIVATIONS[name.lower()]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}") from None


class LayerNorm(Module):
    """y = γ·x̂ + β, x̂ = (x − μ)/√(σ² + ε), μ and σ² over the last axis (Ba et al. 2016).  x (N, H) -> y (N, H).

    γ starts at 1 and β at 0, as in PyTorch.
    """

    def __init__(self, features: int, eps: float = 1e-5, dtype="float32") -> None:
        super().__init__()
        xp = backend.xp
        self.eps = eps
        self.params["gamma"] = xp.ones(features, dtype=dtype)
        self.params["beta"] = xp.zeros(features, dtype=dtype)
        self.grads = {k: xp.zeros_like(v) for k, v in self.params.items()}

    def forward(self, x):
        xp = backend.xp
        centered = x - row_mean(x)  # x − μ                     (N, H)
        var = row_mean(centered * centered)  # σ²               (N, 1)
        inv_std = 1 / xp.sqrt(var + self.eps)  # 1/√(σ² + ε)    (N, 1)
        xhat = centered * inv_std  # x̂                          (N, H)
        self.cache = (xhat, inv_std)  # x̂ and 1/√(σ² + ε) are all the backward needs
        return xhat * self.params["gamma"] + self.params["beta"]  # γ·x̂ + β

    def backward(self, dy):
        xhat, inv_std = self.take_cache()
        self.grads["gamma"] += batch_sum(dy * xhat)  # dL/dγ = Σ_n dy·x̂     (H,)
        self.grads["beta"] += batch_sum(dy)  # dL/dβ = Σ_n dy                 (H,)
        dxhat = dy * self.params["gamma"]  # dL/dx̂ = dy·γ                   (N, H)
        # x̂ depends on x directly and through μ and σ² (llm.c's layernorm_backward, term for term):
        # dL/dx = (dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂)) / √(σ² + ε), means over features
        dxhat_mean = row_mean(dxhat)  # (N, 1)
        dxhat_xhat_mean = row_mean(dxhat * xhat)  # (N, 1)
        dx = dxhat - dxhat_mean - xhat * dxhat_xhat_mean  # (N, H)
        dx *= inv_std
        return dx


class Sequential(Module):
    """y = f_k(…f_1(x)); children are named "0", "1", …"""

    def __init__(self, *layers: Module) -> None:
        super().__init__()
        self.layers = list(layers)

    def children(self):
        return [(str(i), layer) for i, layer in enumerate(self.layers)]

    def forward(self, x):
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, dy):
        for layer in reversed(self.layers):
            dy = layer.backward(dy)
        return dy


class Residual(Module):
    """y = x + f(x); the child is named "fn"."""

    def __init__(self, fn: Module) -> None:
        super().__init__()
        self.fn = fn

    def children(self):
        return [("fn", self.fn)]

    def forward(self, x):
        return x + self.fn.forward(x)

    def backward(self, dy):
        return dy + self.fn.backward(dy)  # dL/dx = dy + dy·∂f/∂x: both paths add
