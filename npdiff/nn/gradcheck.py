"""Gradient checking by central finite differences (CS231n's ``gradient_check.py`` discipline).

    ∂L/∂θ_i ≈ (L(θ + h e_i) − L(θ − h e_i)) / (2h),   h = 1e-5

Run it in float64: in float32 the rounding error of L swamps the difference. ``rel_error`` compares
whole arrays, ‖a − n‖ / (‖a‖ + ‖n‖), so that entries whose gradient is nearly zero (where an elementwise
ratio is pure rounding noise) do not decide the verdict; it is 0 when both are exactly zero.
A module is checked through the scalar L = Σ y·dy with a random dy (llm.c's trick), which makes
dy the upstream gradient that ``backward`` receives.
"""

from __future__ import annotations

from typing import Callable

import numpy

from npdiff import backend


def rel_error(analytic, numeric) -> float:
    """‖a − n‖₂ / (‖a‖₂ + ‖n‖₂), or 0 when both are exactly zero."""
    a, n = backend.to_numpy(analytic).ravel(), backend.to_numpy(numeric).ravel()
    denom = numpy.linalg.norm(a) + numpy.linalg.norm(n)
    return 0.0 if denom == 0 else float(numpy.linalg.norm(a - n) / denom)


def numerical_gradient(loss: Callable[[], float], x, h: float = 1e-5):
    """Central differences of the scalar ``loss()`` w.r.t. every entry of ``x``, perturbed in place.

    x: any backend array that ``loss`` reads; it is restored exactly afterwards. -> array like x
    """
    grad = backend.xp.zeros_like(x)
    # index x itself: x.reshape(-1) would be a copy, not a view, for a non-contiguous x (a transpose,
    # a column slice), and perturbing the copy would silently give a zero gradient
    for i in numpy.ndindex(x.shape):
        old = x[i].copy()
        x[i] = old + h
        plus = loss()
        x[i] = old - h
        minus = loss()
        x[i] = old
        grad[i] = (plus - minus) / (2 * h)
    return grad


def check(loss: Callable[[], float], arrays: dict, analytic: dict, h: float = 1e-5) -> dict:
    """Compare analytic gradients with central differences, array by array.

    arrays: name -> array that ``loss()`` depends on; analytic: name -> dL/d(array), same shapes.
    -> name -> {"shape", "rel_error", "max_abs_diff", "analytic_norm", "numeric_norm"}
    """
    report = {}
    for name, x in arrays.items():
        a = backend.to_numpy(analytic[name]).astype(numpy.float64)
        n = backend.to_numpy(numerical_gradient(loss, x, h)).astype(numpy.float64)
        report[name] = {
            "shape": tuple(x.shape),
            "rel_error": rel_error(a, n),
            "max_abs_diff": float(numpy.max(numpy.abs(a - n))) if a.size else 0.0,
            "analytic_norm": float(numpy.linalg.norm(a)),
            "numeric_norm": float(numpy.linalg.norm(n)),
        }
    return report


def check_module(module, x, *rest, rng=None, h: float = 1e-5, check_input: bool = True) -> dict:
    """Check every parameter of ``module`` and (optionally) its first input through L = Σ y·dy.

    module.forward(x, *rest) -> y; module.backward(dy) -> dL/dx. ``rest`` (e.g. integer timesteps)
    gets no gradient. Use float64 parameters and inputs. -> report as in ``check``, input under "x".
    """
    rng = numpy.random.default_rng(0) if rng is None else rng
    y = module.forward(x, *rest)
    dy = backend.asarray(rng.standard_normal(y.shape), dtype=y.dtype)
    module.zero_grad()
    module.forward(x, *rest)
    dx = module.backward(dy)
    analytic = {name: g.copy() for name, g in module.gradients().items()}
    arrays = dict(module.parameters())
    if check_input:
        arrays["x"], analytic["x"] = x, dx

    def loss():
        return float((module.forward(x, *rest) * dy).sum())

    return check(loss, arrays, analytic, h)


def format_report(report: dict) -> str:
    """One row per array: name, shape, relative error, analytic and numeric gradient norms."""
    rows = [f"{'parameter':<24} {'shape':<12} {'rel_error':>10} {'|analytic|':>12} {'|numeric|':>12}"]
    for name, r in report.items():
        rows.append(f"{name:<24} {str(r['shape']):<12} {r['rel_error']:>10.2e} "
                    f"{r['analytic_norm']:>12.6g} {r['numeric_norm']:>12.6g}")
    return "\n".join(rows)


def worst(report: dict) -> float:
    """The largest relative error in a report."""
    return max(r["rel_error"] for r in report.values())
