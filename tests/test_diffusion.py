"""The Diffusion bundle and the public API: build, train, sample, bound, save and load, in a few statements."""

from __future__ import annotations

import numpy as np
import pytest

import npdiff
from npdiff import Diffusion, data, metrics

SMALL = dict(hidden=16, n_blocks=1, emb_dim=8, dtype="float64")


def test_the_public_api_exports_every_piece_of_a_run():
    for name in ("Diffusion", "Denoiser", "Schedule", "EpsilonObjective", "HybridObjective", "BoundObjective",
                 "Adam", "AdamW", "EMA", "cosine_lr", "fit", "sample", "EpsilonChain", "SohlDicksteinChain",
                 "exact_bound", "mc_bound", "eq14_bound", "data", "metrics"):
        assert hasattr(npdiff, name), name
    assert sorted(npdiff.__all__) == sorted(set(npdiff.__all__))


@pytest.mark.parametrize("objective, out", [("epsilon", 2), ("hybrid", 4), ("sohl_dickstein", 4)])
def test_the_objective_fixes_the_output_width_and_the_chain(objective, out):
    diffusion = Diffusion(2, objective, T=10, **SMALL)
    assert diffusion.model.config["out_dim"] == out
    assert diffusion.process.schedule is diffusion.schedule is diffusion.objective.schedule


@pytest.mark.parametrize("kwargs, match", [
    (dict(objective="score"), "objective"),
    (dict(out_dim=4), "out_dim"),
    (dict(objective="sohl_dickstein", variance="fixed_small"), "variance"),
    (dict(objective="hybrid", variance="fixed_large"), "learned_range"),
    (dict(objective="hybrid", prediction="v"), "prediction"),
    (dict(variance="learned_range"), "2·D outputs"),
    (dict(prediction="score"), "prediction"),
])
def test_settings_that_cannot_agree_are_refused_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Diffusion(2, T=10, **{**SMALL, **kwargs})


def test_a_trained_heart_beats_the_untrained_model_in_a_few_statements():
    x = data.heart(4000, np.random.default_rng(0))
    curve = data.heart_curve(5000)
    diffusion = Diffusion(2, T=100, hidden=32, n_blocks=1, emb_dim=32, layernorm=True, final_layernorm=True)
    before = metrics.chamfer(diffusion.sample(500, seed=1), curve)
    history = diffusion.fit(x, steps=400, batch_size=256, lr=1e-2)
    after = metrics.chamfer(diffusion.sample(500, seed=1), curve)
    assert len(history.loss) == 400 and after < 0.1 < before, (before, after)


@pytest.mark.parametrize("objective, options", [("epsilon", dict(prediction="v", min_snr_gamma=5.0)),
                                                ("hybrid", {}), ("sohl_dickstein", {})])
def test_save_and_load_give_back_the_same_samples_and_bound(tmp_path, objective, options):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((256, 2))
    diffusion = Diffusion(2, objective, T=10, **options, **SMALL)
    diffusion.fit(x, steps=20, batch_size=64, ema=0.9)
    diffusion.save(tmp_path / "model.npz")
    loaded = Diffusion.load(tmp_path / "model.npz")
    assert loaded.config == diffusion.config and loaded.schedule.config == diffusion.schedule.config
    np.testing.assert_array_equal(loaded.sample(5, seed=3), diffusion.sample(5, seed=3))  # both from the EMA
    assert loaded.bound(x[:50], seed=4).nats == diffusion.bound(x[:50], seed=4).nats


def test_load_refuses_a_checkpoint_without_a_bundle(tmp_path):
    from npdiff.training import checkpoint
    from npdiff.nn.denoiser import Denoiser

    checkpoint.save(tmp_path / "plain.npz", Denoiser(2, **SMALL))
    with pytest.raises(ValueError, match="not a Diffusion checkpoint"):
        Diffusion.load(tmp_path / "plain.npz")


def test_sampling_options_reach_the_sampler():
    diffusion = Diffusion(2, T=20, **SMALL)
    a = diffusion.sample(4, seed=0, sampler="ddim", ddim_steps=5)
    b = diffusion.sample(4, seed=0, sampler="ddim", ddim_steps=5, eta=1.0)
    c = diffusion.sample(4, seed=0, sampler="ddim", ddim_steps=5, clip_x0=(-0.1, 0.1))
    assert a.shape == (4, 2) and not np.allclose(a, b) and not np.allclose(a, c)
    x0, ts, xs = diffusion.sample(4, seed=0, record=True)
    assert list(ts) == list(range(20, -1, -1)) and xs.shape == (21, 4, 2)


def test_a_conditioned_sample_runs_the_conditioned_chain_from_the_ema_weights():
    from npdiff import backend
    from npdiff.processes.conditioning import Conditioned

    diffusion = Diffusion(2, T=10, **SMALL)
    diffusion.fit(np.random.default_rng(5).standard_normal((256, 2)), steps=20, batch_size=64, ema=0.9)
    given, observed = np.array([0.7, np.nan]), dict(observed=[0.3, -0.2], noise_std=0.5)

    def conditioned(method="paper", **condition):
        cond = Conditioned(diffusion.process, method=method, **condition)
        return backend.to_numpy(cond.sample(50, backend.default_rng(3)))

    live = conditioned(given=given)
    diffusion.ema.swap()
    try:
        ema, ema_observed = conditioned(given=given), conditioned("replace", **observed)
    finally:
        diffusion.ema.swap()
    x = diffusion.sample(50, seed=3, given=given)
    assert (x[:, 0] == 0.7).all() and np.isfinite(x[:, 1]).all()
    np.testing.assert_array_equal(x, ema)
    assert not np.allclose(x[:, 1], live[:, 1])  # the EMA's weights, not the live ones
    np.testing.assert_array_equal(diffusion.sample(50, seed=3, condition="replace", **observed), ema_observed)
    assert not np.allclose(diffusion.sample(50, seed=3, **observed), ema_observed)  # condition reaches the chain
    with pytest.raises(ValueError, match="ancestral"):
        diffusion.sample(5, given=given, sampler="ddim")
    with pytest.raises(ValueError, match="condition applies with given or observed"):
        diffusion.sample(5, condition="replace")
