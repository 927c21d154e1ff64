"""Layers with hand-written backward passes: Linear, activations, LayerNorm, Residual, Sequential.

Shape glossary: N batch, I input features, H output/hidden features.

The layer contract (DESIGN.md): ``params`` and ``grads`` are dicts with the same keys and shapes;
``forward(x)`` keeps in ``self.cache`` exactly what ``backward`` needs (each entry says why);
``backward(dy)`` returns dL/dx and ADDS (+=) dL/dparam into ``grads``; ``zero_grad()`` resets them;
backward before forward raises. Each backward sits right below its forward, and each line of it names
the chain-rule step it takes. Composites name children's parameters with dots ("1.fn.0.W").

Speed (benchmarks/train_step.py): on small batches every NumPy call costs about a microsecond whatever
its size, so the passes below are written with few calls and in-place updates of their own fresh
temporaries (never of an input or of an array another layer keeps); sums over the batch and means over
features are matrix products with a constant vector, which BLAS does several times faster than
``sum``/``mean``. Each fused form has its plain formula beside it.
"""

from __future__ import annotations

import math

from npdiff import backend

_ONES: dict = {}


def ones(n: int, dtype):
    """A cached (n,) vector of ones: ``ones(N) · dy`` is Σ_n dy, faster than ``dy.sum(axis=0)``."""
    key = (backend.xp, n, dtype)
    try:
        return _ONES[key]
    except KeyError:
        if len(_ONES) > 64:  # many batch sizes seen: start over rather than grow without bound
            _ONES.clear()
        vector = _ONES[key] = backend.xp.ones(n, dtype=dtype)
        return vector


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
        y = backend.xp.dot(x, self.params["W"])  # x W  (N, H); dot: less call overhead than @
        y += self.params["b"]  # y = x W + b, the bias added in place
        return y

    def backward(self, dy, input_grad: bool = True):
        """dL/dx (N, I), or None when ``input_grad`` is False (a first layer's input needs none)."""
        x = self._cached()
        dot = backend.xp.dot
        self.grads["W"] += dot(x.T, dy)  # dL/dW = xᵀ · dL/dy          (I, H)
        self.grads["b"] += dot(ones(dy.shape[0], dy.dtype), dy)  # dL/db = Σ_n dL/dy  (H,)
        return dot(dy, self.params["W"].T) if input_grad else None  # dL/dx = dL/dy · Wᵀ  (N, I)


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
        xp = backend.xp
        x2 = x * x  # x³ as x·x², never x**3 (float32 power is the slow general routine)
        u = x2 * (self.C * self.A)
        u += self.C
        u *= x  # u = C(x + A x³) = x(C + CA x²)
        g = xp.tanh(u, out=u)
        g += 1
        g *= 0.5  # g = ½(1 + tanh u)
        y = x * g  # y = ½x(1 + tanh u) = x·g
        self.cache = (x2, g, y)  # the derivative is built from x², g and y (so y must not be modified)
        return y

    def backward(self, dy):
        x2, g, y = self._cached()
        # plain: dy/dx = ½(1 + tanh u) + ½x(1 − tanh²u)u',  u' = C(1 + 3A x²);
        # with g = ½(1 + tanh u) and y = x·g, ½x(1 − tanh²u) = 2x·g(1 − g) = 2y(1 − g), so
        # dy/dx = g + y(1 − g)·2u'
        d = x2 * (6 * self.A * self.C)
        d += 2 * self.C  # 2u'
        d *= y
        d *= backend.xp.subtract(1, g)  # y(1 − g)·2u'
        d += g  # dy/dx
        d *= dy  # dL/dx = dL/dy · dy/dx
        return d


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
        self.avg = xp.full((features, 1), 1.0 / features, dtype=dtype)  # z·avg: mean over features (N, 1)

    def forward(self, x):
        xp = backend.xp
        # plain: x̂ = (x − x.mean(1)) / √(x.var(1) + ε), both statistics over the last axis
        xc = x - xp.dot(x, self.avg)  # x − μ                   (N, H)
        rstd = xp.dot(xc * xc, self.avg)  # σ²                  (N, 1)
        rstd += self.eps
        xp.sqrt(rstd, out=rstd)
        xp.divide(1, rstd, out=rstd)  # 1/√(σ² + ε)
        xc *= rstd  # x̂, in place of x − μ
        self.cache = (xc, rstd)  # x̂ and 1/σ are all the backward needs
        y = xc * self.params["gamma"]
        y += self.params["beta"]  # y = γ·x̂ + β
        return y

    def backward(self, dy):
        xhat, rstd = self._cached()
        xp, gamma = backend.xp, self.params["gamma"]
        one = ones(dy.shape[0], dy.dtype)
        t = dy * xhat  # (N, H)
        self.grads["gamma"] += xp.dot(one, t)  # dL/dγ = Σ_n dy·x̂
        self.grads["beta"] += xp.dot(one, dy)  # dL/dβ = Σ_n dy
        # dL/dx = (1/σ)(dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂)), dx̂ = dy·γ: the mean and variance also depend
        # on x. The two means are (dy·γ)/H and (dy·x̂·γ)/H summed over features: products with γ/H.
        gamma_avg = gamma[:, None] * (1.0 / gamma.shape[0])  # (H, 1)
        mean_dxhat = xp.dot(dy, gamma_avg)  # mean(dx̂)       (N, 1)
        xp.multiply(xhat, xp.dot(t, gamma_avg), out=t)  # x̂·mean(dx̂·x̂), reusing t
        dx = dy * gamma  # dx̂
        dx -= mean_dxhat
        dx -= t
        dx *= rstd
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
