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

The first layer is one Linear on the concatenation [h_x, h_t] (``inp.0.W`` has D·E + Et rows): the
embeddings write their halves of its input in place, and h_t is looked up in a table of the constant
embeddings of integer timesteps (``embeddings.TimestepEmbedding``) rather than recomputed per row.
"""

from __future__ import annotations

from npdiff import backend
from npdiff.embeddings import SinusoidalEmbedding, TimestepEmbedding
from npdiff.flat import flatten
from npdiff.layers import LayerNorm, Linear, Module, Residual, Sequential, activation as make_activation


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
        self.time_emb = TimestepEmbedding(time_emb_dim, time_scale, dtype)
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
        xp, nx = backend.xp, self.x_features
        # the first layer's input [h_x, h_t]; each embedding writes its half in place (no concatenate)
        h = xp.empty((x_t.shape[0], nx + self.config["time_emb_dim"]), dtype=self.dtype)  # (N, D·E + Et)
        if self.coord_emb is not None:
            self.coord_emb.forward(x_t.astype(self.dtype, copy=False), out=h[:, :nx])  # h_x = emb_c(x_t)  (N, D·E)
        else:
            h[:, :nx] = x_t  # h_x = x_t  (N, D)
        self.time_emb.forward(t, out=h[:, nx:])  # h_t = emb_t(t)  (N, Et)
        h = self.inp.forward(h)  # act(Linear([h_x, h_t]))  (N, H)
        h = self.blocks.forward(h)
        if self.norm is not None:
            h = self.norm.forward(h)
        return self.out.forward(h)  # (N, O)

    def backward(self, dy, input_grad: bool = True):
        """dy = dL/df (N, O) -> dL/dx_t (N, D); parameter gradients are added into ``grads``.

        ``input_grad=False`` skips dL/dx_t (returns None): training needs only the parameters'
        gradients, and the first layer's input gradient is the widest matrix product of the pass.
        """
        dh = self.out.backward(dy)
        if self.norm is not None:
            dh = self.norm.backward(dh)
        dh = self.blocks.backward(dh)
        linear, act = self.inp.layers
        d_input = linear.backward(act.backward(dh), input_grad=input_grad)  # dL/d[h_x, h_t]  (N, D·E + Et)
        if not input_grad:
            return None
        dh_x = d_input[:, :self.x_features]  # the timestep half carries no gradient on
        return self.coord_emb.backward(dh_x) if self.coord_emb is not None else dh_x  # dL/dx_t  (N, D)
