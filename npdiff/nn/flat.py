"""One contiguous parameter buffer and one gradient buffer per model, with per-layer views.

Every layer keeps its ``params``/``grads`` dicts, but after ``flatten(model)`` each array in them is a
view into ``model.flat_params`` / ``model.flat_grads`` (shape (P,), P = number of scalars). The
optimizer, gradient clipping, the EMA and ``zero_grad`` then act on the whole model in a few
vectorised calls instead of one call per array. Layers must therefore update parameters in place
(``W[...] = …``, ``W -= …``), never rebind them.
"""

from __future__ import annotations

from npdiff import backend


def _leaves(module, prefix=""):
    """(dotted prefix, leaf module) for every module that owns parameters."""
    if module.params:
        yield prefix, module
    for name, child in module.children():
        yield from _leaves(child, f"{prefix}{name}.")


def flatten(module) -> tuple:
    """Move ``module``'s parameters and gradients into two contiguous buffers; returns them.

    Idempotent: a module flattened before returns its existing buffers. The buffers take the dtype of
    the parameters (all must share one). -> (flat_params (P,), flat_grads (P,))
    """
    if getattr(module, "flat_params", None) is not None:
        return module.flat_params, module.flat_grads
    xp = backend.xp
    leaves = list(_leaves(module))
    arrays = [a for _, leaf in leaves for a in leaf.params.values()]
    dtypes = {a.dtype for a in arrays}
    if len(dtypes) != 1:
        raise ValueError(f"all parameters must share one dtype to flatten, found {sorted(map(str, dtypes))}")
    total = sum(a.size for a in arrays)
    flat_params = xp.empty(total, dtype=dtypes.pop())
    flat_grads = xp.zeros_like(flat_params)
    offset = 0
    for _, leaf in leaves:
        for key, value in leaf.params.items():
            view = slice(offset, offset + value.size)
            flat_params[view] = value.ravel()
            leaf.params[key] = flat_params[view].reshape(value.shape)
            leaf.grads[key] = flat_grads[view].reshape(value.shape)
            offset += value.size
    module.flat_params, module.flat_grads = flat_params, flat_grads
    return flat_params, flat_grads
