"""The Denoiser: whole-model gradient checks with an MSE loss, shapes, dtypes, config, flat buffers."""

import itertools

import numpy as np
import pytest

from npdiff.nn import gradcheck
from npdiff.nn.denoiser import Denoiser
from npdiff.nn.layers import ACTIVATIONS

TINY = dict(hidden=8, n_blocks=2, emb_dim=4, time_emb_dim=6, dtype="float64")


def mse_gradcheck(model, x, t, target):
    """Check every parameter and x through L = mean((f(x, t) − target)²), dL/df = 2(f − target)/size."""
    model.zero_grad()
    f = model.forward(x, t)
    dx = model.backward(2 * (f - target) / f.size)
    analytic = {name: g.copy() for name, g in model.gradients().items()}
    arrays = dict(model.parameters())
    arrays["x"], analytic["x"] = x, dx

    def loss():
        return float(((model.forward(x, t) - target) ** 2).mean())

    return gradcheck.check(loss, arrays, analytic)


def inputs(data_dim, out_dim, n=3, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, data_dim)), rng.integers(1, 1000, size=n),
            rng.standard_normal((n, out_dim)))


def assert_all_close(model, report):
    assert set(report) == set(model.parameters()) | {"x"}
    for name, r in report.items():
        assert r["rel_error"] < 1e-6, (name, r)
    # every array receives a non-trivial gradient (a detached branch would show 0 vs 0 = "exact")
    assert min(r["numeric_norm"] for r in report.values()) > 1e-6


CASES = [
    dict(activation=act, layernorm=ln, final_layernorm=ln, data_dim=d, out_mult=mult)
    for act, ln, d, mult in itertools.product(sorted(ACTIVATIONS), [False, True], [2, 16], [1, 2])
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "{activation}-ln{layernorm:d}-D{data_dim}-x{out_mult}".format(**c))
def test_mse_gradient_matches_finite_differences(case):
    case = dict(case)
    d, mult = case.pop("data_dim"), case.pop("out_mult")
    model = Denoiser(d, out_dim=mult * d, seed=1, **TINY, **case)
    x, t, target = inputs(d, mult * d)
    assert_all_close(model, mse_gradcheck(model, x, t, target))


@pytest.mark.parametrize("layernorm,final", [(True, False), (False, True)])
def test_mse_gradient_with_only_one_kind_of_layernorm(layernorm, final):
    model = Denoiser(2, out_dim=4, layernorm=layernorm, final_layernorm=final, seed=2, **TINY)
    x, t, target = inputs(2, 4, seed=1)
    assert_all_close(model, mse_gradcheck(model, x, t, target))


@pytest.mark.parametrize("activation", ["gelu", "silu"])
@pytest.mark.parametrize("out_mult", [1, 2])
def test_mse_gradient_without_coordinate_embedding(activation, out_mult):
    model = Denoiser(16, out_dim=16 * out_mult, embed_coords=False, activation=activation, layernorm=True,
                     final_layernorm=True, seed=3, **TINY)
    assert "coord_emb" not in {name for name, _ in model.children()}
    x, t, target = inputs(16, 16 * out_mult, seed=2)
    assert_all_close(model, mse_gradcheck(model, x, t, target))


def test_mse_gradient_with_no_residual_blocks():
    model = Denoiser(2, n_blocks=0, hidden=8, emb_dim=4, dtype="float64", seed=4)
    x, t, target = inputs(2, 2, seed=3)
    assert_all_close(model, mse_gradcheck(model, x, t, target))


def test_timestep_gets_no_gradient_and_dx_has_x_shape():
    model = Denoiser(3, out_dim=6, **TINY)
    x, t, _ = inputs(3, 6, n=5)
    y = model.forward(x, t)
    dx = model.backward(np.ones_like(y))
    assert y.shape == (5, 6) and dx.shape == (5, 3)


def test_output_is_float32_by_default_and_float64_when_asked():
    x, t, _ = inputs(2, 2, n=4)
    m32 = Denoiser(2, hidden=8, n_blocks=1, emb_dim=4)
    y32 = m32.forward(x, t)  # float64 input is cast to the model's dtype
    assert y32.shape == (4, 2) and y32.dtype == np.float32
    assert m32.flat_params.dtype == np.float32
    assert all(p.dtype == np.float32 for p in m32.parameters().values())
    m64 = Denoiser(2, hidden=8, n_blocks=1, emb_dim=4, dtype="float64")
    y64 = m64.forward(x.astype(np.float32), t)
    assert y64.shape == (4, 2) and y64.dtype == np.float64
    assert Denoiser(2, out_dim=4, hidden=8, n_blocks=1, emb_dim=4).forward(x, t).shape == (4, 4)


def test_config_round_trip_rebuilds_identical_parameters():
    m = Denoiser(3, out_dim=6, hidden=8, n_blocks=2, emb_dim=6, time_emb_dim=4, coord_scale=5.0,
                 time_scale=0.5, activation="silu", layernorm=True, final_layernorm=False, dtype="float64",
                 seed=7)
    twin = Denoiser(**m.config)
    assert twin.config == m.config
    assert list(twin.parameters()) == list(m.parameters())
    np.testing.assert_array_equal(twin.flat_params, m.flat_params)
    x, t, _ = inputs(3, 6)
    np.testing.assert_array_equal(twin.forward(x, t), m.forward(x, t))
    other_seed = Denoiser(**{**m.config, "seed": 8})
    assert not np.array_equal(other_seed.flat_params, m.flat_params)


def test_parameter_names_are_dotted_paths():
    names = set(Denoiser(2, hidden=8, n_blocks=2, emb_dim=4, layernorm=True, final_layernorm=True).parameters())
    expected = {"inp.0.W", "inp.0.b", "norm.gamma", "norm.beta", "out.W", "out.b"}
    for i in range(2):
        expected |= {f"blocks.{i}.fn.0.gamma", f"blocks.{i}.fn.0.beta", f"blocks.{i}.fn.1.W", f"blocks.{i}.fn.1.b"}
    assert names == expected


def test_every_parameter_and_gradient_is_a_view_into_the_flat_buffers():
    m = Denoiser(2, out_dim=4, hidden=8, n_blocks=2, emb_dim=4, layernorm=True, final_layernorm=True)
    params, grads = m.parameters(), m.gradients()
    assert m.flat_params.shape == (sum(p.size for p in params.values()),)
    for name in params:
        assert np.shares_memory(params[name], m.flat_params), name
        assert np.shares_memory(grads[name], m.flat_grads), name
    m.flat_params[...] = np.arange(m.flat_params.size)  # writing the buffer changes the layers
    assert m.out.params["b"][-1] == m.flat_params.size - 1
    x, t, _ = inputs(2, 4)
    m.zero_grad()
    m.backward(np.ones_like(m.forward(x, t)))
    np.testing.assert_array_equal(m.flat_grads, np.concatenate([g.ravel() for g in grads.values()]))
    for name, g in m.gradients().items():  # backward wrote into the views; nothing was rebound
        assert g is grads[name] and np.abs(g).max() > 0, name


def test_zero_grad_zeroes_the_flat_gradient_buffer():
    m = Denoiser(2, hidden=8, n_blocks=1, emb_dim=4, dtype="float64")
    x, t, _ = inputs(2, 2)
    m.backward(np.ones_like(m.forward(x, t)))
    assert np.abs(m.flat_grads).max() > 0
    buffer = m.flat_grads
    m.zero_grad()
    assert m.flat_grads is buffer and not buffer.any()
    assert all(not g.any() for g in m.gradients().values())


@pytest.mark.parametrize("x_shape,t_shape,bad", [
    ((3,), (3,), "x_t"), ((3, 3), (3,), "x_t"), ((3, 2, 1), (3,), "x_t"),
    ((3, 2), (4,), "t"), ((3, 2), (3, 1), "t"), ((3, 2), (), "t"),
])
def test_invalid_shapes_of_x_t_or_t_raise_value_error(x_shape, t_shape, bad):
    m = Denoiser(2, hidden=8, n_blocks=1, emb_dim=4)
    with pytest.raises(ValueError, match=rf"^{bad} must have shape"):
        m.forward(np.zeros(x_shape), np.ones(t_shape, dtype=int))


@pytest.mark.parametrize("kwargs", [dict(data_dim=0), dict(data_dim=2, out_dim=0), dict(data_dim=2, hidden=0),
                                    dict(data_dim=2, n_blocks=-1)])
def test_invalid_sizes_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        Denoiser(**kwargs)


# --- the first layer's two routes (EmbeddingLinear) ------------------------------------------------

@pytest.mark.parametrize("embed_coords", [True, False])
def test_mse_gradient_on_the_per_timestep_route_matches_finite_differences(embed_coords):
    d = 2 if embed_coords else 5
    model = Denoiser(d, out_dim=2 * d, embed_coords=embed_coords, layernorm=True, final_layernorm=True, seed=5,
                     **TINY)
    first = model.inp.layers[0]
    first.GROUP_MIN_ROWS = 1  # this instance takes the per-timestep route for small batches too
    rng = np.random.default_rng(6)
    x, t, target = rng.standard_normal((12, d)), rng.choice([3, 40], size=12), rng.standard_normal((12, 2 * d))
    steps, rows = first.timestep_groups(t)
    assert list(steps) == [3, 40] and np.array_equal(steps[rows], t)
    assert_all_close(model, mse_gradcheck(model, x, t, target))


@pytest.mark.parametrize("t", [np.full(9, 17), np.array([5, 1, 5, 5, 1, 9, 9, 1, 5])], ids=["one t", "three t"])
def test_both_routes_give_the_same_outputs_and_gradients(t):
    model = Denoiser(3, out_dim=6, seed=2, **TINY)
    first = model.inp.layers[0]
    rng = np.random.default_rng(7)
    x, dz = rng.standard_normal((9, 3)), rng.standard_normal((9, 8))
    results = []
    for per_timestep in (False, True):
        first.zero_grad()
        z = first.forward(x, t, per_timestep=per_timestep)
        dx = first.backward(dz)
        results.append((z, dx, first.grads["W"].copy(), first.grads["b"].copy()))
    for per_row, per_step in zip(*results):
        np.testing.assert_allclose(per_step, per_row, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("per_timestep", [False, True], ids=["timesteps per row", "per timestep"])
@pytest.mark.parametrize("embed_coords", [True, False])
def test_shared_rows_gradients_match_finite_differences(embed_coords, per_timestep):
    """x_rows (the guided pass's [x_t; x_t]): every parameter and x_t through L = mean((f − target)²), the
    input skip and the labels included, on both routes of the timestep half."""
    d = 2 if embed_coords else 5
    model = Denoiser(d, out_dim=2 * d, embed_coords=embed_coords, layernorm=True, num_classes=3, input_skip=True,
                     seed=8, **TINY)
    first = model.inp.layers[0]
    rng = np.random.default_rng(9)
    x, x_rows = rng.standard_normal((4, d)), np.array([0, 1, 2, 3, 2, 0, 1, 3, 3])  # row 3 read three times
    t, y = rng.choice([3, 40], size=9), rng.integers(0, 4, size=9)  # two timesteps: ≤ N/4, groupable
    target = rng.standard_normal((9, 2 * d))
    model.zero_grad()
    f = model.forward(x, t, y, x_rows=x_rows)
    np.testing.assert_allclose(f, model.forward(x[x_rows], t, y), rtol=1e-12, atol=1e-13)  # the gathered rows
    if per_timestep:
        first.GROUP_MIN_ROWS = 1
        assert first.timestep_groups(t) is not None
    model.zero_grad()
    dx = model.backward(2 * (model.forward(x, t, y, x_rows=x_rows) - target) / f.size)
    analytic = {name: g.copy() for name, g in model.gradients().items()}
    arrays = dict(model.parameters())
    arrays["x"], analytic["x"] = x, dx

    def loss():
        return float(((model.forward(x, t, y, x_rows=x_rows) - target) ** 2).mean())

    assert_all_close(model, gradcheck.check(loss, arrays, analytic))


def test_shared_rows_are_checked_in_one_line():
    model = Denoiser(2, num_classes=3, **TINY)
    x, t = np.zeros((3, 2)), np.full(4, 5)
    with pytest.raises(ValueError, match="index the 3 rows"):
        model.forward(x, t, x_rows=np.array([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="integer rows"):
        model.forward(x, t, x_rows=np.array([0.0, 1.0, 2.0, 0.0]))
    with pytest.raises(ValueError, match=r"t must have shape \(4,\)"):
        model.forward(x, t[:3], x_rows=np.array([0, 1, 2, 0]))


def test_the_default_route_depends_on_batch_size_and_repeated_timesteps():
    first = Denoiser(2, hidden=8, n_blocks=1, emb_dim=4).inp.layers[0]
    assert first.timestep_groups(np.full(127, 3)) is None  # below GROUP_MIN_ROWS: per row
    assert first.timestep_groups(np.full(128, 3)) is not None  # a sampling step: one t for all rows
    assert first.timestep_groups(np.arange(512) % 128) is not None  # 128 = N/4 distinct
    assert first.timestep_groups(np.arange(512) % 129) is None  # more than N/4 distinct
    assert first.timestep_groups(np.arange(128) % 33) is None  # a training batch: most timesteps distinct
    assert first.timestep_groups(np.full(4, 3), per_timestep=True) is not None
    assert first.timestep_groups(np.full(600, 3), per_timestep=False) is None


def test_first_layer_weights_are_those_of_the_plain_linear_on_the_concatenation():
    """Checkpoints stay loadable: ``inp.0.W`` is (D·E + Et, H), drawn exactly as Linear(D·E + Et, H) draws it."""
    from npdiff import backend
    from npdiff.nn.layers import Linear

    model = Denoiser(2, hidden=8, n_blocks=1, emb_dim=4, time_emb_dim=6, dtype="float64", seed=3)
    plain = Linear(2 * 4 + 6, 8, backend.default_rng(3), dtype="float64")
    np.testing.assert_array_equal(model.parameters()["inp.0.W"], plain.params["W"])
    np.testing.assert_array_equal(model.parameters()["inp.0.b"], plain.params["b"])


def test_sampling_batches_with_one_timestep_give_the_per_row_outputs():
    model = Denoiser(2, hidden=8, n_blocks=2, emb_dim=4, layernorm=True, dtype="float64", seed=4)
    x = np.random.default_rng(8).standard_normal((600, 2))
    t = np.full(600, 37)
    grouped = model.forward(x, t)  # 600 rows, one timestep: the per-timestep route
    per_row = np.concatenate([model.forward(x[i:i + 100], t[i:i + 100]) for i in range(0, 600, 100)])
    np.testing.assert_allclose(grouped, per_row, rtol=1e-12, atol=1e-13)
