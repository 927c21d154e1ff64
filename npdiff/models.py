"""The denoiser MLP f(x_t, t), built from layers, with its backward pass.

Shape glossary: N batch, D data dims, E coordinate-embedding size, Et time-embedding size,
H hidden width, O output channels (D for ε-prediction, 2·D for a mean and a variance per dim).

    h_x = emb_c(x_t)  (N, D·E)   sinusoidal, scale ``coord_scale``; or x_t itself (N, D) for images
    h_t = emb_t(t)    (N, Et)    sinusoidal, scale ``time_scale``
    h   = act(Linear([h_x, h_t]))                       (N, H)
    h   = h + act(Linear(LN(h)))   × n_blocks            (N, H)   (LN only if ``layernorm``)
    h   = LN(h)                                          (N, H)   (only if ``final_layernorm``)
    y   = Linear(h)                                      (N, O)

Initialisation: every Linear as PyTorch's default, W and b ~ U(−1/√fan_in, 1/√fan_in); LayerNorm
γ = 1, β = 0. Parameters live in one contiguous buffer (``npdiff.flat``), in the dtype chosen here.

The first layer splits: Linear([h_x, h_t]) = h_x·W_x + h_t·W_t + b, with W_x the first D·E rows of W
and W_t the rest, and h_t·W_t depends on t alone. A large batch holds few distinct timesteps (at most T
in training, one in sampling), so there the time half is embedded and multiplied once per distinct t,
and in backward dL/dW_t = h_tᵀ·(the rows' dL/dz summed per timestep). Smaller batches take the plain
concatenation; both routes give the same numbers up to rounding.
"""

from __future__ import annotations

from npdiff import backend
from npdiff.embeddings import SinusoidalEmbedding
from npdiff.flat import flatten
from npdiff.layers import LayerNorm, Linear, Module, Residual, Sequential, activation as make_activation, ones


class Denoiser(Module):
    """f(x_t, t): (N, D) floats and (N,) integer timesteps -> (N, out_dim).

    All constructor arguments are kept in ``config`` so that ``Denoiser(**config)`` rebuilds the
    architecture (checkpoints store it).
    """

    def __init__(
        self,
        data_dim: int,
        out_dim: int | None = None,
        hidden: int = 128,
        n_blocks: int = 3,
        emb_dim: int = 128,
        time_emb_dim: int | None = None,
        coord_scale: float = 25.0,
        time_scale: float = 1.0,
        embed_coords: bool = True,
        activation: str = "gelu",
        layernorm: bool = False,
        final_layernorm: bool = False,
        dtype: str = "float32",
        seed: int = 0,
    ) -> None:
        super().__init__()
        out_dim = data_dim if out_dim is None else out_dim
        time_emb_dim = emb_dim if time_emb_dim is None else time_emb_dim
        for label, value in (("data_dim", data_dim), ("out_dim", out_dim), ("hidden", hidden)):
            if int(value) < 1:
                raise ValueError(f"{label} must be >= 1, got {value}")
        if int(n_blocks) < 0:
            raise ValueError(f"n_blocks must be >= 0, got {n_blocks}")
        self.config = dict(
            data_dim=int(data_dim), out_dim=int(out_dim), hidden=int(hidden), n_blocks=int(n_blocks),
            emb_dim=int(emb_dim), time_emb_dim=int(time_emb_dim), coord_scale=float(coord_scale),
            time_scale=float(time_scale), embed_coords=bool(embed_coords), activation=str(activation),
            layernorm=bool(layernorm), final_layernorm=bool(final_layernorm), dtype=str(dtype), seed=int(seed),
        )
        self.dtype = backend.xp.dtype(dtype)
        rng = backend.default_rng(seed)
        self.coord_emb = SinusoidalEmbedding(emb_dim, coord_scale, dtype) if embed_coords else None
        self.time_emb = SinusoidalEmbedding(time_emb_dim, time_scale, dtype)
        self.x_features = data_dim * emb_dim if embed_coords else data_dim
        self.inp = Sequential(Linear(self.x_features + time_emb_dim, hidden, rng, dtype), make_activation(activation))
        blocks = []
        for _ in range(n_blocks):
            inner = [LayerNorm(hidden, dtype=dtype)] if layernorm else []
            blocks.append(Residual(Sequential(*inner, Linear(hidden, hidden, rng, dtype), make_activation(activation))))
        self.blocks = Sequential(*blocks)
        self.norm = LayerNorm(hidden, dtype=dtype) if final_layernorm else None
        self.out = Linear(hidden, out_dim, rng, dtype)
        flatten(self)

    def children(self):
        named = [("coord_emb", self.coord_emb), ("time_emb", self.time_emb), ("inp", self.inp),
                 ("blocks", self.blocks), ("norm", self.norm), ("out", self.out)]
        return [(name, m) for name, m in named if m is not None]

    def forward(self, x_t, t):
        if x_t.ndim != 2 or x_t.shape[1] != self.config["data_dim"]:
            raise ValueError(f"x_t must have shape (N, {self.config['data_dim']}), got {tuple(x_t.shape)}")
        if t.shape != (x_t.shape[0],):
            raise ValueError(f"t must have shape ({x_t.shape[0]},), got {tuple(t.shape)}")
        h = self._inp_forward(x_t.astype(self.dtype, copy=False), t)  # (N, H)
        h = self.blocks.forward(h)
        if self.norm is not None:
            h = self.norm.forward(h)
        return self.out.forward(h)  # (N, O)

    # batches of at least this many rows, with at most a quarter as many distinct t, go per timestep
    PER_STEP_MIN_ROWS = 512

    def _inp_forward(self, x_t, t):
        """act(Linear([h_x, h_t])), the embeddings and the first layer (module docstring).  -> (N, H)"""
        xp = backend.xp
        linear, act = self.inp.layers
        n, nx = x_t.shape[0], self.x_features
        self.cache = None
        if n >= self.PER_STEP_MIN_ROWS:
            steps, rows, counts = xp.unique(t, return_inverse=True, return_counts=True)  # t = steps[rows]
            if 4 * steps.shape[0] <= n:
                h_x = self.coord_emb.forward(x_t) if self.coord_emb is not None else x_t  # (N, D·E)
                h_t = self.time_emb.forward(steps.astype(self.dtype)[:, None])  # one row per t  (U, Et)
                W = linear.params["W"]
                z = xp.dot(h_x, W[:nx])  # h_x·W_x                   (N, H)
                z += xp.dot(h_t, W[nx:])[rows]  # + h_t·W_t, computed once per distinct t
                z += linear.params["b"]
                self.cache = (h_x, h_t, rows, counts)  # both inputs, and which rows share a timestep
                return act.forward(z)
        # plain: h = concatenate([h_x, h_t], axis=1); the embeddings write their halves in place
        h = xp.empty((n, nx + self.config["time_emb_dim"]), dtype=self.dtype)
        h_x, h_t = h[:, :nx], h[:, nx:]
        if self.coord_emb is not None:
            self.coord_emb.forward(x_t, out=h_x)  # (N, D·E)
        else:
            h_x[...] = x_t  # (N, D)
        self.time_emb.forward(t.astype(self.dtype)[:, None], out=h_t)  # (N, Et)
        return act.forward(linear.forward(h))

    def backward(self, dy, input_grad: bool = True):
        """dy = dL/df (N, O) -> dL/dx_t (N, D); parameter gradients are added into ``grads``.

        ``input_grad=False`` skips dL/dx_t (returns None): training needs only the parameters'
        gradients, and the first layer's input gradient is the widest matrix product of the pass.
        """
        xp = backend.xp
        dh = self.out.backward(dy)
        if self.norm is not None:
            dh = self.norm.backward(dh)
        dh = self.blocks.backward(dh)
        linear, act = self.inp.layers
        dz = act.backward(dh)  # dL/dz, z = [h_x, h_t]·W + b  (N, H)
        nx = self.x_features
        if self.cache is None:  # the plain route
            linear.backward(dz, input_grad=False)  # dL/dW, dL/db of the first layer
        else:
            h_x, h_t, rows, counts = self.cache
            linear.grads["W"][:nx] += xp.dot(h_x.T, dz)  # dL/dW_x = h_xᵀ·dz
            # dL/dW_t = Σ_n h_t[rows_n]ᵀ dz_n = h_tᵀ·(dz summed over the rows of each timestep)
            by_step = xp.argsort(rows, kind="stable")  # rows grouped by timestep
            dz_t = xp.add.reduceat(dz[by_step], xp.cumsum(counts) - counts, axis=0)  # (U, H)
            linear.grads["W"][nx:] += xp.dot(h_t.T, dz_t)
            linear.grads["b"] += xp.dot(ones(dz.shape[0], dz.dtype), dz)  # dL/db = Σ_n dz
        if not input_grad:
            return None
        # dL/dh_x = dL/dz · W_xᵀ, the embedding rows of W only: the time half carries no gradient
        dh_x = xp.dot(dz, linear.params["W"][:nx].T)  # (N, D·E) or (N, D)
        return self.coord_emb.backward(dh_x) if self.coord_emb is not None else dh_x
