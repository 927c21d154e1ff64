"""Class labels and classifier-free guidance: the label embedding's gradient, label dropout, the guided
prediction (its conventions and its batched pass), label checks, and a 2-D model that guidance sharpens."""

import numpy as np
import pytest

from npdiff import Diffusion
from npdiff.nn import gradcheck
from npdiff.processes import guidance, sampling
from npdiff.training import train
from npdiff.processes.ddpm import EpsilonChain, EpsilonObjective
from npdiff.processes.predictions import PREDICTIONS
from npdiff.nn.embeddings import LabelEmbedding
from npdiff.nn.losses import check_labels
from npdiff.nn.denoiser import Denoiser
from npdiff.processes.schedules import Schedule

TINY = dict(hidden=8, n_blocks=2, emb_dim=4, time_emb_dim=6, dtype="float64")
SCALED = {"scale_to_T": True}  # Ho et al.'s β range stretched to T = 50: x_T is noise


def test_label_embedding_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    emb = LabelEmbedding(4, 5, rng, dtype="float64")
    y = np.array([0, 2, 2, 4, 1, 0])  # 4 is the null label
    dy = rng.standard_normal((6, 5))
    emb.forward(y)
    emb.backward(dy)
    report = gradcheck.check(lambda: float((emb.forward(y) * dy).sum()), {"W": emb.params["W"]},
                             {"W": emb.grads["W"].copy()})
    assert report["W"]["rel_error"] < 1e-9
    assert np.allclose(emb.grads["W"][3], 0)  # no row labelled 3: no gradient
    assert np.allclose(emb.grads["W"][2], dy[1] + dy[2])  # rows sharing a label add up


@pytest.mark.parametrize("input_skip", [False, True])
def test_conditional_denoiser_gradient_end_to_end(input_skip):
    rng = np.random.default_rng(1)
    model = Denoiser(3, num_classes=4, input_skip=input_skip, layernorm=True, **TINY)
    x, t, y = rng.standard_normal((5, 3)), rng.integers(1, 100, 5), np.array([0, 1, 4, 3, 1])
    target = rng.standard_normal((5, 3))
    model.zero_grad()
    f = model.forward(x, t, y)
    dx = model.backward(2 * (f - target) / f.size)
    analytic = {name: g.copy() for name, g in model.gradients().items()}
    arrays = dict(model.parameters())
    arrays["x"], analytic["x"] = x, dx
    report = gradcheck.check(lambda: float(((model.forward(x, t, y) - target) ** 2).mean()), arrays, analytic)
    assert {"label_emb.W", "x"} <= set(report) and (("skip.W" in report) == input_skip)
    for name, r in report.items():
        assert r["rel_error"] < 1e-6, (name, r)
        assert r["numeric_norm"] > 1e-8 or name == "label_emb.W", name  # every piece gets a gradient


def test_labels_change_the_output_and_none_means_the_null_label():
    model = Denoiser(2, num_classes=3, **TINY)
    x, t = np.ones((3, 2)), np.array([5, 5, 5])
    f0, f1 = model.forward(x, t, np.array([0, 0, 0])), model.forward(x, t, np.array([1, 1, 1]))
    assert not np.allclose(f0, f1)
    assert np.array_equal(model.forward(x, t), model.forward(x, t, np.array([3, 3, 3])))


def test_unconditional_model_refuses_labels_and_keeps_its_initial_weights():
    plain = Denoiser(2, **TINY)
    with pytest.raises(ValueError, match="no class labels"):
        plain.forward(np.ones((2, 2)), np.array([1, 2]), np.array([0, 1]))
    conditional = Denoiser(2, num_classes=3, **TINY)
    for name, value in plain.parameters().items():  # the label table is drawn after every other weight
        assert np.array_equal(value, conditional.parameters()[name]), name


def test_drop_labels_rate_and_zero_rate():
    rng = np.random.default_rng(0)
    y = np.zeros(20000, dtype=np.int64)
    dropped = guidance.drop_labels(y, 0.1, 7, rng)
    assert set(np.unique(dropped)) == {0, 7}
    assert abs((dropped == 7).mean() - 0.1) < 0.01
    assert guidance.drop_labels(y, 0.0, 7, rng) is y


def test_guide_conventions():
    f_c, f_u = np.array([[2.0, -1.0]]), np.array([[0.5, 1.0]])
    assert np.allclose(guidance.guide(f_c, f_u, 0.0), f_c)  # w = 0: the conditional model
    assert np.allclose(guidance.guide(f_c, f_u, -1.0), f_u)  # w = −1: the unconditional one
    s = 3.5  # GLIDE / diffusers: ε_∅ + s (ε_c − ε_∅) with s = 1 + w
    assert np.allclose(guidance.guide(f_c, f_u, s - 1), f_u + s * (f_c - f_u))


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_guided_chain_is_the_batched_form_of_two_passes(prediction):
    """The chain's guided ε̃ equals (1 + w) ε_c − w ε_∅ from two separate passes, whatever the model predicts
    (guiding x̂_0 or v predictions is guiding ε: they are affine in ε with weights summing to 1)."""
    schedule = Schedule(50)
    model = Denoiser(2, num_classes=3, **TINY)
    rng = np.random.default_rng(2)
    x_t, t, y = rng.standard_normal((4, 2)), np.array([3, 10, 30, 50]), np.array([0, 1, 2, 1])
    w = 2.5
    chain = EpsilonChain(model, schedule, prediction=prediction, labels=y, guidance=w)
    _, eps_guided = chain.predict(x_t, t)
    conditional = EpsilonChain(model, schedule, prediction=prediction, labels=y)
    unconditional = EpsilonChain(model, schedule, prediction=prediction)
    eps_c, eps_u = conditional.predict(x_t, t)[1], unconditional.predict(x_t, t)[1]
    assert np.allclose(eps_guided, (1 + w) * eps_c - w * eps_u, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("w", [0.0, 2.5])
def test_guided_model_is_the_guided_formula_from_one_pass_of_2n_rows(w):
    """Guided(model, y, w).forward is (1 + w) f_c − w f_∅ on the D prediction outputs, written out from two
    separate passes, with the conditional model's variance half; one pass of 2N rows (N at w = 0)."""
    model = Denoiser(2, out_dim=4, num_classes=3, input_skip=True, **TINY)  # the skip is affine too
    rng = np.random.default_rng(3)
    x_t, t, y = rng.standard_normal((4, 2)), np.array([3, 10, 30, 50]), np.array([0, 1, 2, 1])
    f_c, f_u = model.forward(x_t, t, y), model.forward(x_t, t)  # no label: the null label ∅
    rows = []
    features = model.features
    model.features = lambda *a, **k: rows.append(a[1].shape[0]) or features(*a, **k)  # the rows: those of t
    out = guidance.Guided(model, y, w).forward(x_t, t)
    assert rows == [4 if w == 0 else 8]  # one pass through the network (its output layer on N rows)
    np.testing.assert_allclose(out[:, :2], (1 + w) * f_c[:, :2] - w * f_u[:, :2], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(out[:, 2:], f_c[:, 2:], rtol=1e-12, atol=1e-14)  # shared rows: rounding may differ
    with pytest.raises(ValueError, match="4 labels for 3 samples"):
        guidance.Guided(model, y, w).forward(x_t[:3], t[:3])
    with pytest.raises(ValueError, match="class-conditional model"):
        guidance.Guided(Denoiser(2, **TINY), y, w)


def test_label_checks_are_one_line_errors():
    with pytest.raises(ValueError, match=r"lie in 0\.\.2.*got 3"):
        check_labels(np.array([0, 3]), 2, 3)
    with pytest.raises(ValueError, match="lie in"):
        check_labels(np.array([-1, 0]), 2, 3)
    with pytest.raises(ValueError, match="3 class labels"):
        check_labels(np.array([0, 1]), 3, 3)
    with pytest.raises(ValueError, match="whole numbers"):
        check_labels(np.array([0.5, 1.0]), 2, 3)
    assert check_labels(np.array([2.0, 1.0]), 2, 3).dtype == np.int64  # 2.0 from a CSV is the label 2
    with pytest.raises(ValueError, match="balanced"):
        guidance.sample_labels("even", 4, 3)
    assert list(guidance.sample_labels("balanced", 5, 3)) == [0, 1, 2, 0, 1]
    assert list(guidance.sample_labels(2, 3, 3)) == [2, 2, 2]


def test_fit_refuses_labels_that_do_not_fit():
    x = np.zeros((8, 2))
    schedule = Schedule(20)
    with pytest.raises(ValueError, match="class-conditional model"):
        train.fit(Denoiser(2, **TINY), x, EpsilonObjective(schedule), steps=1, batch_size=4,
                  rng=np.random.default_rng(0), labels=np.zeros(8, dtype=int), progress=False)
    with pytest.raises(ValueError, match="8 class labels"):
        train.fit(Denoiser(2, num_classes=2, **TINY), x, EpsilonObjective(schedule), steps=1, batch_size=4,
                  rng=np.random.default_rng(0), labels=np.zeros(7, dtype=int), progress=False)
    with pytest.raises(ValueError, match="'epsilon' and 'flow' objectives"):
        Diffusion(2, objective="hybrid", num_classes=3)
    with pytest.raises(ValueError, match="class-conditional"):
        Diffusion(2, T=20, **TINY).sample(4, labels=1)
    with pytest.raises(ValueError, match="guidance needs labels"):
        EpsilonChain(Denoiser(2, num_classes=2, **TINY), schedule, guidance=1.0)
    with pytest.raises(ValueError, match="label_dropout"):
        EpsilonObjective(schedule, label_dropout=1.0)


def test_batches_keep_each_label_with_its_point():
    x = np.arange(20, dtype=np.float64)[:, None] * np.ones((1, 2))
    labels = np.arange(20) % 7
    batches = train.Batches(x, 6, np.random.default_rng(0), labels=labels)
    for _ in range(5):  # across an epoch boundary
        xb, yb = batches.next()
        assert np.array_equal(yb, xb[:, 0].astype(int) % 7)


def test_resume_with_labels_is_exact(tmp_path):
    """Stopped after 10 steps and resumed by a fresh process, a labelled run (its batches, labels and
    dropped labels) ends on the weights of the run that was never stopped."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((64, 2)), rng.integers(0, 3, 64)

    def fit(steps, **kw):
        d = Diffusion(2, T=20, num_classes=3, hidden=16, n_blocks=1, emb_dim=8)
        d.fit(x, steps=steps, labels=y, batch_size=16, lr_schedule=lambda step: 1e-3, progress=False, **kw)
        return d.model.flat_params.copy()

    path = str(tmp_path / "ckpt.npz")
    fit(10, checkpoint_path=path)
    assert np.array_equal(fit(20, checkpoint_path=path, resume=True), fit(20))


def two_moons_labelled(n, rng):
    """Two well-separated clusters labelled 0 and 1, with some overlap of each one's tails."""
    y = rng.integers(0, 2, n)
    x = rng.standard_normal((n, 2)) * 0.6 + np.where(y[:, None] == 1, 1.0, -1.0) * np.array([1.2, 0.0])
    return x, y


@pytest.fixture(scope="module")
def trained_labelled():
    rng = np.random.default_rng(0)
    x, y = two_moons_labelled(4000, rng)
    d = Diffusion(2, T=50, schedule_kwargs=SCALED, num_classes=2, hidden=64, n_blocks=1, emb_dim=16)
    d.fit(x, steps=600, labels=y, batch_size=256, lr=3e-3, progress=False)
    return d


def side_accuracy(samples, k):
    return float((np.sign(samples[:, 0]) == (1 if k == 1 else -1)).mean())


@pytest.mark.parametrize("sampler", sampling.SAMPLERS)
def test_guidance_sharpens_class_conditional_samples(trained_labelled, sampler):
    """Samples asked for class k land on class k's side as often as the data's do, more often with guidance;
    those of an untrained model do not, and the unconditional ones fall on both sides, about half each."""
    kw = dict(sampler=sampler, ddim_steps=25) if sampler == "ddim" else {}
    acc = {w: np.mean([side_accuracy(trained_labelled.sample(400, seed=k, labels=k, guidance=w, **kw), k)
                       for k in (0, 1)]) for w in (0.0, 3.0)}
    # w = 0 is the conditional model: Φ(1.2/0.6) = 0.977 of class k's points lie on its side; w = 3 sharpens it
    assert 0.94 < acc[0.0] < 0.995 and acc[3.0] > 0.995, acc
    unconditional = trained_labelled.sample(800, **kw)
    assert 0.35 < (unconditional[:, 0] > 0).mean() < 0.65
    untrained = Diffusion(2, T=50, schedule_kwargs=SCALED, num_classes=2, hidden=64, n_blocks=1, emb_dim=16)
    assert side_accuracy(untrained.sample(400, labels=1, guidance=3.0, **kw), 1) < 0.8


def test_guided_sampling_runs_one_forward_pass_per_step(trained_labelled, monkeypatch):
    calls = []
    model = trained_labelled.model
    features = model.features
    monkeypatch.setattr(model, "features",
                        lambda *a, **k: calls.append((a[0].shape[0], a[1].shape[0])) or features(*a, **k))
    chain = trained_labelled.chain(labels=np.zeros(7, dtype=int), guidance=1.0)
    sampling.sample(chain, 7, np.random.default_rng(0))
    assert calls == [(7, 14)] * 50  # 2N rows reading the N samples (shared rows), once per step


def test_the_objective_drops_labels_at_its_rate_and_keeps_them_for_given_draws():
    schedule = Schedule(20)
    model = Denoiser(2, num_classes=3, **TINY)
    seen = []
    forward = model.forward
    model.forward = lambda x_t, t, y=None: seen.append(y) or forward(x_t, t, y)
    x0, y = np.zeros((20000, 2)), np.ones(20000, dtype=np.int64)
    EpsilonObjective(schedule, label_dropout=0.25).loss_and_backward(model, x0, np.random.default_rng(0), y=y)
    assert abs((seen[-1] == 3).mean() - 0.25) < 0.01 and set(np.unique(seen[-1])) == {1, 3}
    t, noise = np.full(20000, 5), np.zeros((20000, 2))
    EpsilonObjective(schedule).loss_and_backward(model, x0, y=y, t=t, noise=noise)
    assert np.array_equal(seen[-1], y)
