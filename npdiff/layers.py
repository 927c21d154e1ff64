"""Layers with hand-written backward passes: Linear, activations, LayerNorm, Residual, Sequential.

Shape glossary: N batch, I input features, H output/hidden features.

The layer contract (DESIGN.md): ``params`` and ``grads`` are dicts with the same keys and shapes;
``forward(x)`` keeps in ``self.cache`` exactly what ``backward`` needs (each entry says why);
``backward(dy)`` returns dL/dx and ADDS (+=) dL/dparam into ``grads``; ``zero_grad()`` resets them;
backward before forward raises. Each backward sits right below its forward, and each line of it names
the chain-rule step it takes. Composites name children's parameters with dots ("1.fn.0.W").
"""

from __future__ import annotations

import math

from npdiff import backend


class Module:
    """Base class: parameter bookkeeping shared by every layer and composite."""

    def __init__(self) -> None:
        self.params: dict = {}
        self.grads: dict = {}
        self.cache = None

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
        flat = getattr(self, "flat_grads", None)  # one contiguous buffer after flat.flatten()
        if flat is not None:
            flat[...] = 0
            return
        for g in self.gradients().values():
            g[...] = 0

    def _cached(self):
        if self.cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        return self.cache

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
        self.cache = x  # x: dL/dW needs the input
        return x @ self.params["W"] + self.params["b"]  # (N, H)

    def backward(self, dy):
        x = self._cached()
        self.grads["W"] += x.T @ dy  # dL/dW = xᵀ · dL/dy          (I, H)
        self.grads["b"] += dy.sum(axis=0)  # dL/db = Σ_n dL/dy     (H,)
        return dy @ self.params["W"].T  # dL/dx = dL/dy · Wᵀ       (N, I)


class ReLU(Module):
    """y = max(x, 0), elementwise."""

    def forward(self, x):
        self.cache = x > 0  # the mask is the whole derivative
        return x * self.cache

    def backward(self, dy):
        return dy * self._cached()  # dL/dx = dL/dy · 1[x > 0]


class Tanh(Module):
    """y = tanh(x), elementwise."""

    def forward(self, x):
        y = backend.xp.tanh(x)
        self.cache = y  # tanh' = 1 − y²
        return y

    def backward(self, dy):
        y = self._cached()
        return dy * (1 - y * y)  # dL/dx = dL/dy · (1 − tanh²x)


class SiLU(Module):
    """y = x·σ(x) (a.k.a. swish), elementwise."""

    def forward(self, x):
        s = 1 / (1 + backend.xp.exp(-x))
        self.cache = (x, s)  # x and σ(x) give the derivative
        return x * s

    def backward(self, dy):
        x, s = self._cached()
        return dy * s * (1 + x * (1 - s))  # d(xσ)/dx = σ + xσ(1 − σ)


class GELU(Module):
    """GELU, tanh approximation: y = ½x(1 + tanh(√(2/π)(x + 0.044715x³))) (Hendrycks & Gimpel).

    NumPy has no erf, so the exact x·Φ(x) is not available; this is PyTorch's
    ``gelu(approximate="tanh")``. Its largest difference from the exact form is about 3e-4.
    """

    C = math.sqrt(2.0 / math.pi)
    A = 0.044715

    def forward(self, x):
        x2 = x * x
        th = backend.xp.tanh(self.C * x * (1 + self.A * x2))  # x³ as x·x², not x**3 (slow)
        self.cache = (x, x2, th)  # all three appear in the derivative
        return 0.5 * x * (1 + th)

    def backward(self, dy):
        x, x2, th = self._cached()
        du = self.C * (1 + 3 * self.A * x2)  # du/dx, u = C(x + A x³)
        return dy * (0.5 * (1 + th) + 0.5 * x * (1 - th * th) * du)  # dy/dx = ½(1+th) + ½x·sech²u·u'


ACTIVATIONS = {"relu": ReLU, "silu": SiLU, "gelu": GELU, "tanh": Tanh}


def activation(name: str) -> Module:
    """An activation layer by name: relu, silu, gelu or tanh."""
    try:
        return ACTIVATIONS[name.lower()]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}") from None


class LayerNorm(Module):
    """y = γ·(x − μ)/√(σ² + ε) + β over the last axis (Ba et al. 2016).  x (N, H) -> y (N, H).

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
        xc = x - x.mean(axis=1, keepdims=True)  # (N, H)
        rstd = 1 / xp.sqrt((xc * xc).mean(axis=1, keepdims=True) + self.eps)  # (N, 1)
        xhat = xc * rstd  # (N, H)
        self.cache = (xhat, rstd)  # x̂ and 1/σ are all the backward needs
        return xhat * self.params["gamma"] + self.params["beta"]

    def backward(self, dy):
        xhat, rstd = self._cached()
        self.grads["gamma"] += (dy * xhat).sum(axis=0)  # dL/dγ = Σ_n dy·x̂
        self.grads["beta"] += dy.sum(axis=0)  # dL/dβ = Σ_n dy
        dxhat = dy * self.params["gamma"]  # dL/dx̂ = dy·γ
        # dL/dx = (1/σ)(dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂)): the mean and variance also depend on x
        return rstd * (
            dxhat - dxhat.mean(axis=1, keepdims=True) - xhat * (dxhat * xhat).mean(axis=1, keepdims=True)
        )


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
