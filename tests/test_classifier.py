"""npdiff.images.classifier: gradients against finite differences, learning a separable task, and the cache in the
caller's output folder (loaded on a second call; retrained for other data or settings; refused when damaged)."""

import json
import os

import numpy as np
import pytest

from npdiff.images import classifier, idx
from npdiff.nn import gradcheck
from npdiff.images.classifier import Classifier
from npdiff.nn.losses import SoftmaxCrossEntropy

SMALL = {"hidden": (16, 8), "epochs": 4, "batch_size": 32, "lr": 3e-3}  # trains in ~0.1 s


def make_images(n, rng, n_classes=3, side=8):
    """uint8 images (n, side, side) and labels: class k is a fixed random pattern plus pixel noise."""
    patterns = np.random.default_rng(100).uniform(40, 215, (n_classes, side, side))
    labels = rng.integers(0, n_classes, n)
    noisy = patterns[labels] + rng.normal(0, 30, (n, side, side))
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8), labels.astype(np.uint8)


def write_folder(folder, seed=0, n_train=600, n_test=300):
    """An MNIST-format folder (the four standard file names, gzipped) of make_images data."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = make_images(n, rng)
        names = idx.FILES[split]
        idx.write_idx(os.path.join(folder, names[0] + ".gz"), images)
        idx.write_idx(os.path.join(folder, names[1] + ".gz"), labels)
    return folder


@pytest.mark.parametrize("activation_name", ["tanh", "gelu"])
def test_classifier_with_its_loss_matches_finite_differences(activation_name):
    model = Classifier(6, 3, hidden=(5, 4), activation_name=activation_name, seed=1, dtype="float64")
    r = np.random.default_rng(2)
    x, labels = r.standard_normal((7, 6)), r.integers(0, 3, 7)
    loss_fn = SoftmaxCrossEntropy()
    model.zero_grad()
    loss_fn.forward(model.forward(x), labels)
    dx = model.backward(loss_fn.backward())
    analytic = {**{k: g.copy() for k, g in model.gradients().items()}, "x": dx}
    arrays = {**model.parameters(), "x": x}
    report = gradcheck.check(lambda: loss_fn.forward(model.forward(x), labels), arrays, analytic)
    assert set(report) == {"0.0.W", "0.0.b", "0.2.W", "0.2.b", "1.W", "1.b", "x"}
    assert gradcheck.worst(report) < 1e-7, gradcheck.format_report(report)


def test_features_are_the_penultimate_layer():
    model = Classifier(6, 3, hidden=(5, 4), seed=0, dtype="float64")
    x = np.random.default_rng(0).standard_normal((9, 6))
    features = model.features(x, batch=4)  # batching must not change the result
    assert features.shape == (9, 4) and model.feature_dim == 4
    head = model.head.params
    np.testing.assert_allclose(features @ head["W"] + head["b"], model.logits(x), rtol=1e-13)


def test_learns_a_separable_task_far_beyond_chance():
    rng = np.random.default_rng(0)
    x_train, y_train = make_images(600, rng)
    x_test, y_test = make_images(300, rng)
    x_train, x_test = idx.images_to_vectors(x_train), idx.images_to_vectors(x_test)
    untrained = Classifier(64, 3, hidden=(16, 8))
    assert untrained.accuracy(x_test, y_test) < 0.7  # chance is 1/3: the bar below means learning
    model = classifier.train(x_train, y_train, image_shape=(8, 8), **SMALL)
    assert model.accuracy(x_test, y_test) > 0.95
    assert model.meta["training"]["n_train"] == 600 and model.meta["training"]["seed"] == 0


def test_input_and_label_errors_are_one_line():
    model = Classifier(64, 3, hidden=(4,), image_shape=(8, 8))
    with pytest.raises(ValueError, match=r"takes vectors \(N, 64\), N >= 1, of 8×8 images, got shape \(2, 784\)"):
        model.predict(np.zeros((2, 784)))
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.2"):
        model.accuracy(np.zeros((2, 64)), [0, 5])
    with pytest.raises(ValueError, match=r"N >= batch_size = 32"):
        classifier.train(np.zeros((10, 64)), np.zeros(10, int), **SMALL)


def test_cache_is_written_once_then_loaded(tmp_path, monkeypatch):
    data = write_folder(tmp_path / "data")
    out = tmp_path / "out"
    first = classifier.load_or_train(out, data, verbose=False, **SMALL)
    assert first.source == "trained" and os.listdir(out) == ["classifier.npz"]  # no temporary file left
    meta = first.meta
    assert meta["data"]["folder"] == str(data) and len(meta["data"]["sha256"]) == 64
    assert set(meta["data"]["files"]) == {n + ".gz" for pair in idx.FILES.values() for n in pair}
    assert 0.95 < meta["test_accuracy"] <= 1 and meta["n_test"] == 300
    assert meta["training"]["seed"] == 0 and first.config["hidden"] == [16, 8]

    def no_training(*args, **kwargs):
        raise AssertionError("the second call retrained")

    monkeypatch.setattr(classifier, "train", no_training)
    second = classifier.load_or_train(out, data, verbose=False, **SMALL)
    assert second.source == "loaded" and second.meta == meta
    for key, value in first.parameters().items():
        np.testing.assert_array_equal(second.parameters()[key], value)
    x = idx.images_to_vectors(make_images(20, np.random.default_rng(5))[0])
    np.testing.assert_array_equal(second.features(x), first.features(x))


def test_cache_of_other_data_or_settings_is_retrained(tmp_path, capsys):
    out = tmp_path / "out"
    first = classifier.load_or_train(out, write_folder(tmp_path / "a", seed=0), **SMALL)
    other = classifier.load_or_train(out, write_folder(tmp_path / "b", seed=1), **SMALL)
    assert other.source == "trained" and other.meta["data"]["sha256"] != first.meta["data"]["sha256"]
    assert f"trained on {tmp_path / 'a'}, not on these data; retraining" in capsys.readouterr().err
    stored = json.loads(str(np.load(out / "classifier.npz", allow_pickle=False)["meta"]))
    assert stored["data"]["folder"] == str(tmp_path / "b")  # the cache now records the new data set
    reseeded = classifier.load_or_train(out, tmp_path / "b", **{**SMALL, "seed": 3})
    assert reseeded.source == "trained" and "seed 0 -> 3" in capsys.readouterr().err


def test_damaged_or_pickled_cache_is_refused_naming_the_file(tmp_path):
    data = write_folder(tmp_path / "data")
    out = tmp_path / "out"
    out.mkdir()
    (out / "classifier.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match=r"classifier\.npz is not a readable npdiff classifier.*delete it"):
        classifier.load_or_train(out, data, **SMALL)
    np.savez(out / "classifier.npz", meta=np.array([{"format": "npdiff-classifier"}], dtype=object))
    with pytest.raises(ValueError, match="not a readable npdiff classifier"):  # would need unpickling
        classifier.load(out / "classifier.npz")


def test_unknown_setting_is_refused(tmp_path):
    with pytest.raises(TypeError, match=r"unknown classifier settings \['width'\]"):
        classifier.load_or_train(tmp_path, write_folder(tmp_path / "data"), width=3)
