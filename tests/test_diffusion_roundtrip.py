"""``Diffusion.save`` then ``Diffusion.load`` gives back every setting, compared field by field (issue 19): a load
that drops one (the EMA warmup, the label dropout, …) and falls back to its default must fail here."""

from __future__ import annotations

import numpy as np
import pytest

from npdiff.diffusion import GUIDANCE_RANGE, Diffusion, check_guidance
from npdiff.nn.optim import EMA

TINY = dict(hidden=8, n_blocks=1, emb_dim=8)

# every setting away from its default, so that a default filled in on load cannot pass for the saved value
BUNDLES = [
    dict(data_dim=3, objective="epsilon", T=17, schedule="cosine", variance="fixed_large", prediction="v",
         min_snr_gamma=5.0, num_classes=3, label_dropout=0.35, ema=(0.93, False)),
    dict(data_dim=2, objective="epsilon", T=12, schedule="linear", prediction="x0", num_classes=2, label_dropout=0.0,
         ema=(0.5, True)),
    dict(data_dim=2, objective="hybrid", T=9, schedule="cosine", ema=(0.8, False)),
    dict(data_dim=2, objective="sohl_dickstein", T=7, schedule="sohl_dickstein", ema=None),
]


def _bundle(settings: dict) -> Diffusion:
    settings = dict(settings)
    ema = settings.pop("ema")
    diffusion = Diffusion(**settings, **TINY)
    if ema is not None:
        diffusion.ema = EMA(diffusion.model, ema[0], warmup=ema[1])
        diffusion.ema.updates = 4
        diffusion.ema.shadow[...] = diffusion.ema.shadow * 0.5 + 0.25  # differs from the live weights
    return diffusion


@pytest.mark.parametrize("settings", BUNDLES, ids=[b["objective"] + "-" + b["schedule"] for b in BUNDLES])
def test_save_and_load_give_back_every_setting_field_by_field(tmp_path, settings):
    saved = _bundle(settings)
    saved.save(tmp_path / "d.npz")
    loaded = Diffusion.load(tmp_path / "d.npz")
    for key in ("objective", "variance", "prediction", "min_snr_gamma", "label_dropout"):
        assert loaded.config[key] == saved.config[key], key
    assert type(loaded.objective) is type(saved.objective)
    for key in ("prediction", "min_snr_gamma", "label_dropout"):  # what the objective trains with
        assert getattr(loaded.objective, key, None) == getattr(saved.objective, key, None), key
    assert loaded.schedule.config == saved.schedule.config
    np.testing.assert_array_equal(loaded.schedule.betas, saved.schedule.betas)
    assert loaded.model.config == saved.model.config
    assert loaded.num_classes == saved.num_classes
    for name, value in saved.model.parameters().items():
        np.testing.assert_array_equal(loaded.model.parameters()[name], value, err_msg=name)
    if saved.ema is None:
        assert loaded.ema is None
    else:
        for key in ("decay", "warmup", "updates"):
            assert getattr(loaded.ema, key) == getattr(saved.ema, key), key
        assert loaded.ema.current_decay() == saved.ema.current_decay()
        np.testing.assert_array_equal(loaded.ema.shadow, saved.ema.shadow)


def test_a_model_whose_no_label_row_was_never_trained_refuses_what_would_use_it():
    diffusion = Diffusion(2, T=5, num_classes=2, label_dropout=0.0, **TINY)
    with pytest.raises(ValueError, match="label dropout 0"):
        diffusion.sample(4)  # no label: the untrained row
    with pytest.raises(ValueError, match="label dropout 0"):
        diffusion.sample(4, labels=1, guidance=1.0)
    assert diffusion.sample(4, labels=1, guidance=0.0).shape == (4, 2)  # the conditional model alone


@pytest.mark.parametrize("w", [-0.5, GUIDANCE_RANGE[1] * 1.01, 1e6, float("nan"), float("inf"), True, "2"])
def test_guidance_outside_the_documented_range_is_refused(w):
    with pytest.raises(ValueError, match=r"guidance w must be a number in \[0, 20\]"):
        check_guidance(w)
    diffusion = Diffusion(2, T=5, num_classes=2, **TINY)
    with pytest.raises(ValueError, match="guidance w must be"):
        diffusion.sample(4, labels=1, guidance=w)


def test_the_ends_of_the_guidance_range_are_accepted():
    assert check_guidance(GUIDANCE_RANGE[0]) == 0.0 and check_guidance(GUIDANCE_RANGE[1]) == 20.0
