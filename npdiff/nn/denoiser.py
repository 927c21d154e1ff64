"""The denoiser MLP f(x_t, t), built from layers, with its backward pass.

Shape glossary: N batch, D data dims, E coordinate-embedding size, Et time-embedding size,
F first-layer input features from x_t (D·E, or D without the coordinate embedding), H hidden width,
O output channels (D for ε-prediction, 2·D for a mean and a variance per dim), U distinct timesteps.

    h_x = emb_c(x_t)  (N, D·E)   sinusoidal, scale ``coord_scale``; or x_t itself (N, D) for images
    h_t = emb_t(t)    (N, Et)    sinusoidal, scale ``time_scale`` (on NumPy a table lookup: t is an integer)
    h   = act(Linear([h_x, h_t]) + e_y)                 (N, H)   e_y = emb_y(y), only if ``num_classes``
    h   = h + act(Linear(LN(h)))   × n_blocks            (N, H)   (LN only if ``layernorm``)
    h   = LN(h)                                          (N, H)   (only if ``final_layernorm``)
    f   = Linear(h)                                      (N, O)
    f   = f + Linear_skip(x_t)                           (N, O)   (only if ``input_skip``)

A class-conditional denoiser (``num_classes`` = K) adds a learned vector per label e_y (N, H) to the
first layer's pre-activation (``embeddings.LabelEmbedding``; y = K, or y omitted, is "no label", the
unconditional model of classifier-free guidance, ``npdiff.processes.guidance``). ``input_skip`` adds a Linear map
of x_t itself to the output, a long skip around the MLP (for ε- and v-prediction the target is close
to a linear function of x_t at large t).

Initialisation: every Linear as PyTorch's default, W and b ~ U(−1/√fan_in, 1/√fan_in); LayerNorm
γ = 1, β = 0. Parameters live in one contiguous buffer (``npdiff.nn.flat``), in the dtype chosen here.

The first layer, ``EmbeddingLinear``, is the Linear on the concatenation [h_x, h_t] (``inp.0.W`` has
F + Et rows); for a large batch with few distinct timesteps it computes the timestep half once per
timestep, which gives the same numbers with less work.
"""

from __future__ import annotations

from npdiff import backend
from npdiff.nn.embeddings import LabelEmbedding, SinusoidalEmbedding, TimestepEmbedding
from npdiff.nn.flat import flatten
from npdiff.nn.layers import LayerNorm, Linear, Module, Residual, Sequential, activation as make_activation
from npdiff.nn.primitives import batch_sum, segment_sum, unique_inverse


class EmbeddingLinear(Linear):
    """z = [h_x, h_t]·W + b, h_x = emb_c(x_t), h_t = emb_t(t): the denoiser's first layer.

    x_t (N, D), t (N,) integers -> z (N, H). h_x (N, F) is the sinusoidal embedding of the coordinates
    (F = D·E), or x_t itself (F = D) when ``coord_emb`` is None; h_t (N, Et) is read from the timestep
    table. W (F + Et, H) and b are those of a Linear on the concatenation (the same initialisation,
    ``inp.0.W`` in checkpoints): its first F rows W_x act on h_x, its last Et rows W_t on h_t.
    Two routes give the same numbers up to rounding:

    * per row: the Linear itself, z = [h_x, h_t]·W + b, each embedding writing its half of [h_x, h_t]
      in place; backward dL/dW = [h_x, h_t]ᵀ·dz.
    * per timestep: h_t·W_t depends on t alone, so with steps the U distinct timesteps and
      t = steps[rows] (``primitives.unique_inverse``)
          z = h_x·W_x + (emb_t(steps)·W_t)[rows] + b,
      and backward sends each row's dL/dz back to its timestep (the gather's adjoint):
          dL/dW_x = h_xᵀ·dz,   dL/dW_t = emb_t(steps)ᵀ·segment_sum(dz, rows).
      It saves work when many rows share a timestep: a sampling step (one t for all rows), a
      training batch of 1000 over T = 50 (8 % of the tiny-diffusion step); it costs more than it saves
      on small batches or when most timesteps are distinct (benchmarks/README.md).
    * shared rows (``x_rows``): the batch's M rows read the N rows of x_t, row m reading x_t[x_rows[m]]
      (the guided pass of classifier-free guidance reads each x_t twice, with and without its label). The
      data half is then computed once per row of x_t, and gathered like the timestep half:
          z = (h_x·W_x)[x_rows] + (emb_t(steps)·W_t)[rows] + b,
      and backward sends each row's dL/dz back to the row of x_t it read:
          dL/dW_x = h_xᵀ·segment_sum(dz, x_rows),   dL/dh_x = segment_sum(dz, x_rows)·W_xᵀ.

    Both: dL/db = Σ_n dz, dL/dh_x = dz·W_xᵀ, then dL/dx_t through emb_c.
    """

    # by default, batches this large with ≤ N/4 distinct timesteps go per timestep: at 128 rows sharing one t the
    # first layer's forward takes 17 % less time that way on the image model and 15 % on tiny-diffusion's, and
    # the same on seed-heart's (28 against 30 µs); on 32 rows it costs more than it saves
    GROUP_MIN_ROWS = 128

    def __init__(self, coord_emb: SinusoidalEmbedding | None, x_features: int, time_emb: TimestepEmbedding,
                 out_features: int, rng, dtype="float32") -> None:
        super().__init__(x_features + time_emb.size, out_features, rng, dtype)
        self.coord_emb, self.time_emb = coord_emb, time_emb  # no parameters
        self.x_features = x_features  # F

    def timestep_groups(self, t, per_timestep: bool | None = None):
        """(steps, rows), t = steps[rows], when the route is per timestep; None when it is per row.

        per_timestep: force a route; None chooses per timestep for at least ``GROUP_MIN_ROWS`` rows with
        at most a quarter as many distinct timesteps, on NumPy. On a device None is per row: the number of
        distinct timesteps is data-dependent, and counting them would read t back (a sync) at every step.
        """
        if per_timestep is None and backend.name != "numpy":
            return None
        if per_timestep is False or (per_timestep is None and t.shape[0] < self.GROUP_MIN_ROWS):
            return None
        steps, rows = unique_inverse(t)
        if per_timestep is None and 4 * steps.shape[0] > t.shape[0]:
            return None
        return steps, rows

    def embed_coords(self, x_t, out=None):
        """h_x = emb_c(x_t), or x_t itself without a coordinate embedding; written into ``out`` if given."""
        if self.coord_emb is not None:
            return self.coord_emb.forward(x_t, out=out)
        if out is None:
            return x_t
        out[...] = x_t
        return out

    def forward(self, x_t, t, per_timestep: bool | None = None, x_rows=None):
        """per_timestep: the route (``timestep_groups``); by default chosen by the batch. x_rows: (M,) the row of
        x_t (N, D) that each of the M rows of t (M,) reads (shared rows), or None: row n reads x_t[n]."""
        nx = self.x_features
        W, b = self.params["W"], self.params["b"]
        groups = self.timestep_groups(t, per_timestep)
        if groups is None and x_rows is None:
            # [h_x, h_t] = concatenate([emb_c(x_t), emb_t(t)], axis=1), each half written in place
            h = backend.xp.empty((x_t.shape[0], W.shape[0]), dtype=W.dtype)  # (N, F + Et)
            self.embed_coords(x_t, out=h[:, :nx])
            self.time_emb.forward(t, out=h[:, nx:])
            self.cache = (h, None, None, None, None)  # dL/dW = [h_x, h_t]ᵀ·dz needs the whole input
            return h.dot(W) + b  # (N, H)
        steps, rows = (t, None) if groups is None else groups  # t = steps[rows]     (U,), (M,)
        h_x = self.embed_coords(x_t)  # (N, F)
        h_t = self.time_emb.forward(steps)  # emb_t(steps)  (U, Et)
        self.cache = (None, h_x, h_t, rows, x_rows)  # dL/dW needs both inputs, and which rows share each
        return _gather(h_x.dot(W[:nx]), x_rows) + _gather(h_t.dot(W[nx:]), rows) + b  # h_x·W_x + h_t·W_t + b  (M, H)

    def backward(self, dz, input_grad: bool = True):
        """dL/dx_t (N, D), or None when ``input_grad`` is False (training needs no input gradient)."""
        h, h_x, h_t, rows, x_rows = self.take_cache()
        nx = self.x_features
        self.grads["b"] += batch_sum(dz)  # dL/db = Σ_n dz                                        (H,)
        if h is not None:  # per row
            self.grads["W"] += h.T.dot(dz)  # dL/dW = [h_x, h_t]ᵀ·dz                             (F + Et, H)
            dz_x = dz
        else:  # each timestep, and each row of x_t, gets the dL/dz of the rows that read it
            dz_t = dz if rows is None else segment_sum(dz, rows, h_t.shape[0])  # (U, H)
            dz_x = dz if x_rows is None else segment_sum(dz, x_rows, h_x.shape[0])  # (N, H)
            self.grads["W"][nx:] += h_t.T.dot(dz_t)  # dL/dW_t = emb_t(steps)ᵀ·dz_t               (Et, H)
            self.grads["W"][:nx] += h_x.T.dot(dz_x)  # dL/dW_x = h_xᵀ·dz_x                         (F, H)
        if not input_grad:
            return None
        dh_x = dz_x.dot(self.params["W"][:nx].T)  # dL/dh_x = dz_x·W_xᵀ: the timestep half carries none  (N, F)
        return self.coord_emb.backward(dh_x) if self.coord_emb is not None else dh_x  # (N, D)


def _gather(a, rows):
    """a[rows], the rows that each row of the batch reads; a itself when rows is None (each reads its own)."""
    return a if rows is None else a[rows]


class Denoiser(Module):
    """f(x_t, t[, y]): (N, D) floats, (N,) integer timesteps and optional (N,) class labels -> (N, out_dim).

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
        num_classes: int | None = None,
        input_skip: bool = False,
        dtype: str = "float32",
        seed: int = 0,
    ) -> None:
        super().__init__()
        out_dim = data_dim if out_dim is None else out_dim
        time_emb_dim = emb_dim if time_emb_dim is None else time_emb_dim
        for label, value in (("data_dim", data_dim), ("out_dim", out_dim), ("hidden", hidden)):
            if int(value) < 1:
                raise ValueError(f"{label} must be >= 1, got {value}")
        if num_classes is not None and (isinstance(num_classes, bool) or int(num_classes) < 1):
            raise ValueError(f"num_classes must be >= 1 (or None for an unconditional model), got {num_classes!r}")
        if int(n_blocks) < 0:
            raise ValueError(f"n_blocks must be >= 0, got {n_blocks}")
        self.config = dict(
            data_dim=int(data_dim), out_dim=int(out_dim), hidden=int(hidden), n_blocks=int(n_blocks),
            emb_dim=int(emb_dim), time_emb_dim=int(time_emb_dim), coord_scale=float(coord_scale),
            time_scale=float(time_scale), embed_coords=bool(embed_coords), activation=str(activation),
            layernorm=bool(layernorm), final_layernorm=bool(final_layernorm),
            num_classes=None if num_classes is None else int(num_classes), input_skip=bool(input_skip),
            dtype=str(dtype), seed=int(seed),
        )
        self.dtype = backend.xp.dtype(dtype)
        rng = backend.default_rng(seed)
        self.coord_emb = SinusoidalEmbedding(emb_dim, coord_scale, dtype) if embed_coords else None
        self.time_emb = TimestepEmbedding(time_emb_dim, time_scale, dtype)
        self.x_features = data_dim * emb_dim if embed_coords else data_dim
        self.inp = Sequential(EmbeddingLinear(self.coord_emb, self.x_features, self.time_emb, hidden, rng, dtype),
                              make_activation(activation))
        blocks = []
        for _ in range(n_blocks):
            inner = [LayerNorm(hidden, dtype=dtype)] if layernorm else []
            blocks.append(Residual(Sequential(*inner, Linear(hidden, hidden, rng, dtype), make_activation(activation))))
        self.blocks = Sequential(*blocks)
        self.norm = LayerNorm(hidden, dtype=dtype) if final_layernorm else None
        self.out = Linear(hidden, out_dim, rng, dtype)
        # created last, so that they draw from the generator after every other layer: the same seed gives the
        # same initial weights with or without labels and the input skip
        self.label_emb = LabelEmbedding(num_classes, hidden, rng, dtype) if num_classes is not None else None
        self.skip = Linear(data_dim, out_dim, rng, dtype) if input_skip else None
        flatten(self)

    def children(self):
        named = [("coord_emb", self.coord_emb), ("time_emb", self.time_emb), ("inp", self.inp),
                 ("blocks", self.blocks), ("norm", self.norm), ("out", self.out), ("label_emb", self.label_emb),
                 ("skip", self.skip)]
        return [(name, m) for name, m in named if m is not None]

    def forward(self, x_t, t, y=None, x_rows=None):
        """y: (N,) class labels 0..K−1, or K ("no label"); None is "no label" for every row of a conditional
        model, and the only choice for an unconditional one.

        x_rows: shared rows, (M,) integers: the batch has M rows, row m at x_t[x_rows[m]] with timestep t[m] and
        label y[m] (t and y then have M entries, and so has the output). The first layer computes its product
        with x_t once per row of x_t (``EmbeddingLinear``): the guided pass reads each x_t twice, at the cost of
        one. The output equals that of ``forward(x_t[x_rows], t, y)`` up to rounding.
        """
        return self.head(self.features(x_t, t, y, x_rows), x_t, x_rows)  # (M, O)

    def features(self, x_t, t, y=None, x_rows=None):
        """h (M, H): the network up to its output layer (the final LayerNorm included); ``forward``'s arguments."""
        if x_t.ndim != 2 or x_t.shape[1] != self.config["data_dim"]:
            raise ValueError(f"x_t must have shape (N, {self.config['data_dim']}), got {tuple(x_t.shape)}")
        m = x_t.shape[0] if x_rows is None else self._check_rows(x_rows, x_t.shape[0])
        if t.shape != (m,):
            raise ValueError(f"t must have shape ({m},), got {tuple(t.shape)}")
        x_t = x_t.astype(self.dtype, copy=False)
        self.cache = (x_rows, x_t.shape[0])  # the input skip's backward needs the shared rows of x_t's N rows
        first, act = self.inp.layers
        z = first.forward(x_t, t, x_rows=x_rows)  # [h_x, h_t]·W + b  (M, H)
        if self.label_emb is not None:
            z += self.label_emb.forward(self._labels(y, m))  # + e_y
        elif y is not None:
            raise ValueError("this denoiser has no class labels (num_classes=None); do not pass y")
        h = self.blocks.forward(act.forward(z))
        return h if self.norm is None else self.norm.forward(h)  # (M, H)

    def head(self, h, x_t, x_rows=None):
        """f = Linear(h) (+ Linear_skip(x_t)[x_rows] with ``input_skip``): the output layer on the features h (M, H).

        An affine map of h: the guided prediction (1 + w) f(h_c) − w f(h_∅) is f((1 + w) h_c − w h_∅), one output
        layer of N rows where the guided pass has 2N (``guidance.Guided``).  -> (M, O)
        """
        f = self.out.forward(h)  # (M, O)
        if self.skip is None:
            return f
        skip = self.skip.forward(x_t.astype(self.dtype, copy=False))  # (N, O)
        return f + _gather(skip, x_rows)

    @staticmethod
    def _check_rows(x_rows, n: int) -> int:
        """The number M of shared rows, after checking that they are (M,) integers in 0..N−1 (on NumPy)."""
        if x_rows.ndim != 1 or x_rows.dtype.kind not in "iu":
            raise ValueError(f"x_rows must be a 1-D array of integer rows of x_t, got {x_rows.dtype} of shape "
                             f"{tuple(x_rows.shape)}")
        if backend.name == "numpy" and x_rows.size and not 0 <= int(x_rows.min()) <= int(x_rows.max()) < n:
            raise ValueError(f"x_rows must index the {n} rows of x_t (0..{n - 1})")
        return x_rows.shape[0]

    def _labels(self, y, n: int):
        """y as given, or the null label for every row; the shape is checked (the values are the caller's:
        ``guidance.check_labels`` checks them once, where they enter, so that no step reads them back)."""
        if y is None:
            return backend.xp.full(n, self.label_emb.null, dtype="int64")
        if y.shape != (n,) or y.dtype.kind not in "iu":
            raise ValueError(f"y must be a 1-D array of {n} integer labels, got {y.dtype} of shape {tuple(y.shape)}")
        return y

    def backward(self, dy, input_grad: bool = True):
        """dy = dL/df (M, O) -> dL/dx_t (N, D); parameter gradients are added into ``grads`` (M = N without
        shared rows).

        ``input_grad=False`` skips dL/dx_t (returns None): training needs only the parameters'
        gradients, and the first layer's input gradient is the widest matrix product of the pass.
        """
        x_rows, n = self.take_cache()
        dh = self.out.backward(dy)
        if self.norm is not None:
            dh = self.norm.backward(dh)
        dz = self.inp.layers[1].backward(self.blocks.backward(dh))  # through the blocks and act: dL/dz  (N, H)
        if self.label_emb is not None:
            self.label_emb.backward(dz)  # z = … + e_y: dL/de_y = dL/dz
        dx = self.inp.layers[0].backward(dz, input_grad=input_grad)  # dL/dx_t  (N, D), or None
        if self.skip is not None:  # f = … + skip(x_t), or + skip(x_t)[x_rows]: each row of x_t gets its rows' dL/df
            dy_skip = dy if x_rows is None else segment_sum(dy, x_rows, n)  # (N, O)
            dx_skip = self.skip.backward(dy_skip, input_grad=input_grad)
            dx = dx + dx_skip if input_grad else None
        return dx
