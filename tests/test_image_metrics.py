"""npdiff.images.quality: the Fréchet distance against closed forms and SciPy, the Gaussian fit, the class
entropy, the 8-bit rule for images, and the judge's table (floor < fitted Gaussian < noise, one n per row)."""

import io
import math
import os

import numpy as np
import pytest

from npdiff import metrics
from npdiff.images import classifier, idx
from npdiff.images.quality import (ImageJudge, PixelGaussian, as_vectors, class_entropy, fcd, frechet_distance,
                                  gaussian_fit, predicted_class_entropy, sqrtm_psd)

SMALL = {"hidden": (16, 8), "epochs": 4, "batch_size": 32, "lr": 3e-3}


def rng(seed=0):
    return np.random.default_rng(seed)


def random_covariance(f, seed, rank=None):
    a = rng(seed).standard_normal((f, rank or f))
    return a @ a.T / f


def rotation(f, seed):
    q, _ = np.linalg.qr(rng(seed).standard_normal((f, f)))
    return q


# ----------------------------------------------------------------------------- Fréchet distance


def test_frechet_distance_in_one_dimension_is_mean_gap_plus_std_gap_squared():
    # N(m1, s1²) vs N(m2, s2²): (m1 − m2)² + (s1 − s2)²
    d = frechet_distance([1.5], [[4.0]], [-0.5], [[0.25]])
    assert d == pytest.approx(2.0**2 + (2.0 - 0.5) ** 2, rel=1e-14)


def test_frechet_distance_closed_form_for_scaled_identity_against_a_rotated_covariance():
    # Σ₁ = s·I, Σ₂ = Q diag(λ) Qᵀ: (Σ₁^½ Σ₂ Σ₁^½)^½ = √s Σ₂^½, so the trace term is Σ(s + λ_i − 2√(s λ_i))
    f, s = 6, 2.0
    lam = np.array([0.1, 0.5, 1.0, 3.0, 7.0, 0.0])  # one zero eigenvalue: Σ₂ is singular
    q = rotation(f, 1)
    mu1, mu2 = rng(2).standard_normal(f), rng(3).standard_normal(f)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((math.sqrt(s) - np.sqrt(lam)) ** 2)
    d = frechet_distance(mu1, s * np.eye(f), mu2, (q * lam) @ q.T)
    assert d == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_is_zero_for_equal_gaussians_and_symmetric():
    cov1, cov2, singular = random_covariance(8, 1), random_covariance(8, 2), random_covariance(8, 3, rank=5)
    mu = rng(4).standard_normal(8)
    assert abs(frechet_distance(mu, cov1, mu, cov1)) < 1e-12
    assert frechet_distance(mu, cov1, 0 * mu, cov2) == pytest.approx(frechet_distance(0 * mu, cov2, mu, cov1),
                                                                    rel=1e-12)
    # a singular Σ: √ of its rounding-level eigenvalues (~1e-16) is ~1e-8, so symmetry holds to ~1e-9 only
    assert frechet_distance(mu, cov1, 0 * mu, singular) == pytest.approx(
        frechet_distance(0 * mu, singular, mu, cov1), rel=1e-8)


def sqrtm_trace_tolerance(cov1, cov2, safety=10.0):
    """How far a backward-stable square root may move tr((Σ₁Σ₂)^½), derived from the problem's conditioning.

    The reference computes the root of Σ₁Σ₂ + E with ‖E‖ ≲ F·ε·‖Σ₁‖‖Σ₂‖. Σ₁Σ₂ = Σ₁^½ M Σ₁^-½ is similar to the
    symmetric M = Σ₁^½ Σ₂ Σ₁^½, so each eigenvalue λ_i moves by δ ≤ ‖E‖·κ(Σ₁^½) (Bauer–Fike), and its root by
    √(λ_i + δ) − √λ_i ≤ min(√δ, δ / (2√λ_i)): ~δ for the well-conditioned eigenvalues, √δ for the zero ones of
    a singular Σ. The Fréchet distance carries the trace twice.
    """
    f = cov1.shape[0]
    lam = np.maximum(np.linalg.eigvalsh(sqrtm_psd(cov1) @ cov2 @ sqrtm_psd(cov1)), 0.0)
    delta = safety * f * np.finfo(np.float64).eps * np.linalg.norm(cov1, 2) * np.linalg.norm(cov2, 2)
    delta *= math.sqrt(np.linalg.cond(cov1))
    per_root = np.minimum(math.sqrt(delta), delta / (2.0 * np.sqrt(np.maximum(lam, np.finfo(np.float64).tiny))))
    return 2.0 * float(per_root.sum())


def frechet_distance_with_product_of_roots(mu1, cov1, mu2, cov2):
    """A classic wrong trace term, tr(Σ₁^½ Σ₂^½), equal to the right one only when Σ₁ and Σ₂ commute."""
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * np.trace(sqrtm_psd(cov1) @ sqrtm_psd(cov2)))


@pytest.mark.parametrize("rank", [None, 4])
def test_frechet_distance_equals_the_scipy_sqrtm_form_fid_code_uses(crosscheck, rank):
    linalg = crosscheck("scipy.linalg")
    f = 7
    cov1, cov2 = random_covariance(f, 5), random_covariance(f, 6, rank)
    mu1, mu2 = rng(7).standard_normal(f), rng(8).standard_normal(f)
    root = linalg.sqrtm(cov1 @ cov2)  # pytorch-fid's form: tr((Σ₁Σ₂)^½), a non-symmetric square root
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2 * np.trace(root).real
    tolerance = sqrtm_trace_tolerance(cov1, cov2)  # ~2e-11 at full rank, ~6e-6 at rank 4 (three √δ terms)
    assert abs(frechet_distance(mu1, cov1, mu2, cov2) - expected) <= tolerance
    # the tolerance still tells the right trace term from the wrong one on these non-commuting covariances
    assert abs(frechet_distance_with_product_of_roots(mu1, cov1, mu2, cov2) - expected) > 1000 * tolerance


def test_frechet_distance_of_non_commuting_2x2_covariances_equals_the_closed_form():
    # for a 2×2 PSD M: tr M^½ = √(tr M + 2√det M); with M = Σ₁^½ Σ₂ Σ₁^½, tr M = tr(Σ₁Σ₂), det M = det Σ₁ det Σ₂
    cov1 = np.diag([4.0, 0.25])
    cov2 = np.array([[2.125, 1.875], [1.875, 2.125]])  # diag(4, 0.25) rotated by 45°: they do not commute
    assert np.abs(cov1 @ cov2 - cov2 @ cov1).max() > 1.0
    mu1, mu2 = np.array([0.2, -1.0]), np.array([1.0, 0.5])
    trace_root = math.sqrt(np.trace(cov1 @ cov2) + 2.0 * math.sqrt(np.linalg.det(cov1) * np.linalg.det(cov2)))
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2.0 * trace_root
    assert frechet_distance(mu1, cov1, mu2, cov2) == pytest.approx(expected, rel=1e-13)
    assert abs(frechet_distance_with_product_of_roots(mu1, cov1, mu2, cov2) - expected) > 0.1


def test_sqrtm_psd_equals_scipy_and_squares_back(crosscheck):
    linalg = crosscheck("scipy.linalg")
    a = random_covariance(9, 10)
    root = sqrtm_psd(a)
    # a root's entries move by ~ε‖A‖/√λ_min (the smallest eigenvalue sets the conditioning of √)
    lam = np.linalg.eigvalsh(a)
    tolerance = 10 * a.shape[0] * np.finfo(np.float64).eps * lam.max() / math.sqrt(lam.min())
    np.testing.assert_allclose(root, linalg.sqrtm(a).real, rtol=0, atol=tolerance)
    np.testing.assert_allclose(root @ root, a, rtol=0, atol=10 * a.shape[0] * np.finfo(np.float64).eps * lam.max())


def test_sqrtm_psd_refuses_a_matrix_that_is_not_psd():
    with pytest.raises(ValueError, match="not positive semi-definite: eigenvalue -1"):
        sqrtm_psd(np.diag([2.0, -1.0]))


def test_frechet_distance_of_two_large_gaussian_samples_approaches_the_closed_form():
    f = 4
    cov1, cov2 = random_covariance(f, 11), random_covariance(f, 12)
    mu1, mu2 = np.zeros(f), np.full(f, 0.5)
    samples = [rng(s).multivariate_normal(m, c, 200_000) for s, m, c in ((13, mu1, cov1), (14, mu2, cov2))]
    estimate = frechet_distance(*gaussian_fit(samples[0]), *gaussian_fit(samples[1]))
    assert estimate == pytest.approx(frechet_distance(mu1, cov1, mu2, cov2), rel=0.02)


def test_gaussian_fit_is_numpys_mean_and_cov_and_says_how_many_samples_it_needs():
    x = rng(15).standard_normal((30, 5))
    mu, cov = gaussian_fit(x)
    np.testing.assert_allclose(mu, x.mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(cov, np.cov(x, rowvar=False), rtol=1e-12)
    with pytest.raises(ValueError, match=r"needs N >= F \+ 1 = 6 samples, got shape \(5, 5\)"):
        gaussian_fit(x[:5])
    with pytest.raises(ValueError, match="non-finite"):
        gaussian_fit(np.where(x > 2, np.nan, x))


def test_class_entropy_hand_values():
    assert class_entropy([0, 1, 2, 3], 4) == pytest.approx(math.log(4), rel=1e-15)
    assert class_entropy([2, 2, 2], 4) == 0.0
    assert class_entropy([0, 0, 0, 1], 2) == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.3"):
        class_entropy([0, 4], 4)


def test_images_are_judged_as_their_8_bit_pictures():
    x = np.array([[-1.7, -1.0, 0.0, 0.3, 1.0, 2.5]])
    expected = np.rint((np.clip(x, -1, 1) + 1) * 127.5) / 127.5 - 1
    np.testing.assert_allclose(as_vectors(x, (2, 3)), expected, rtol=1e-15)
    pixels = np.arange(6, dtype=np.uint8).reshape(1, 2, 3)
    np.testing.assert_allclose(as_vectors(pixels, (2, 3)), pixels.reshape(1, 6) / 127.5 - 1)
    with pytest.raises(ValueError, match=r"images must be uint8 \(N, 2, 3\) or vectors \(N, 6\) on \[-1, 1\]; "
                                         r"got float64 \(1, 784\)"):
        as_vectors(np.zeros((1, 784)), (2, 3))
    with pytest.raises(ValueError, match="non-finite"):
        as_vectors(np.full((1, 6), np.nan), (2, 3))


# ----------------------------------------------------------------------------- the judge on synthetic images


def make_images(n, r, n_classes=3, side=8):
    """uint8 images (n, side, side) and labels: class k is a fixed random pattern plus pixel noise."""
    patterns = np.random.default_rng(100).uniform(40, 215, (n_classes, side, side))
    labels = r.integers(0, n_classes, n)
    noisy = patterns[labels] + r.normal(0, 30, (n, side, side))
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8), labels.astype(np.uint8)


@pytest.fixture(scope="module")
def judge(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    r = rng(0)
    for split, n in (("train", 900), ("test", 1000)):
        images, labels = make_images(n, r)
        idx.write_idx(os.path.join(folder, idx.FILES[split][0]), images)
        idx.write_idx(os.path.join(folder, idx.FILES[split][1]), labels)
    return ImageJudge.from_folder(tmp_path_factory.mktemp("out"), folder, verbose=False, **SMALL)


def test_baselines_order_floor_below_fitted_gaussian_below_noise(judge):
    rows = {r["name"]: r for r in judge.baselines(200, seed=1)}
    floor, fitted = rows["held-out real (floor)"], rows["Gaussian fit to train pixels"]
    per_class, noise = rows["one Gaussian per class"], rows["noise N(0, I) (ceiling)"]
    assert floor["fcd"] < fitted["fcd"] < noise["fcd"]
    assert floor["fcd"] < 0.2 * fitted["fcd"]
    assert floor["accuracy"] > 0.95 and per_class["accuracy"] > 0.9  # the data are the per-class Gaussians
    assert fitted["accuracy"] is None and noise["accuracy"] is None
    assert floor["entropy"] > 0.95 * math.log(3) and all(r["n"] == 200 for r in rows.values())


def test_baselines_take_the_class_mix_of_labelled_samples(judge):
    labels = np.zeros(60, dtype=int)  # all class 0: the floor and the per-class Gaussians must follow
    rows = {r["name"]: r for r in judge.baselines(60, seed=1, labels=labels)}
    for name in ("held-out real (floor)", "one Gaussian per class"):
        assert rows[name]["accuracy"] > 0.95 and rows[name]["entropy"] < 0.2, rows[name]
    assert rows["Gaussian fit to train pixels"]["entropy"] > 0.5  # the unconditional rows do not
    with pytest.raises(ValueError, match=r"the floor needs 400 held-out images of class 0, the pool has \d+"):
        judge.baselines(400, labels=np.zeros(400, dtype=int))


def test_evaluate_scores_samples_against_the_held_out_reference(judge):
    images, labels = make_images(100, rng(20))
    good = judge.evaluate(images, labels)
    one_class = judge.evaluate(images[labels == 0][:1].repeat(100, axis=0) + np.uint8(0), None, "copies")
    assert good["accuracy"] > 0.95 and good["fcd"] < 1.5 * judge.baselines(100)[0]["fcd"] + 0.5
    assert one_class["entropy"] == 0.0 and one_class["fcd"] > 10 * good["fcd"]
    # FCD(X, X) = 0 in exact arithmetic; 100 images in F features give a Σ of rank ≤ 99, and each zero
    # eigenvalue of Σ^½ Σ Σ^½ that rounding makes ~ε‖Σ‖² enters the trace as √(ε)‖Σ‖ (see sqrtm_trace_tolerance)
    features = judge.classifier.features(as_vectors(images, tuple(judge.classifier.config["image_shape"])))
    sigma = np.linalg.norm(gaussian_fit(features)[1], 2)
    tolerance = 2 * features.shape[1] * 10 * math.sqrt(np.finfo(np.float64).eps) * sigma
    assert abs(fcd(judge.classifier, images, images)) <= tolerance
    assert predicted_class_entropy(judge.classifier, images) == pytest.approx(good["entropy"])


def test_report_prints_every_row_at_the_same_sample_count(judge):
    images, labels = make_images(120, rng(21))
    stream = io.StringIO()
    rows = judge.report(idx.images_to_vectors(images), labels, seed=2, stream=stream)
    table = stream.getvalue().splitlines()
    assert [r["name"] for r in rows][-1] == "samples" and {r["n"] for r in rows} == {120}
    assert len(table) == 2 + len(rows) and "max ln 3 = 1.099" in table[1]
    assert f"{100 * judge.classifier.meta['test_accuracy']:.1f} % test accuracy" in table[0]
    assert all(line[31:37].strip() == "120" for line in table[2:]), table
    with pytest.raises(ValueError, match="one sample count: got 120 samples but n = 100"):
        judge.report(images, labels, n=100, stream=stream)


def test_sample_counts_outside_what_the_data_allow_are_refused(judge):
    with pytest.raises(ValueError, match=r"between F \+ 1 = 9 \(a full-rank covariance\) and the 500 held-out"):
        judge.baselines(8)
    with pytest.raises(ValueError, match="500 held-out"):
        judge.baselines(501)


def test_pixel_gaussian_samples_have_the_fitted_mean_and_covariance():
    x = rng(30).multivariate_normal([1.0, -2.0, 0.0], [[2.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 0.0]], 500)
    fitted = PixelGaussian(x)  # the third coordinate is constant: a singular Σ
    draws = fitted.sample(200_000, rng(31))
    np.testing.assert_allclose(draws.mean(axis=0), fitted.mu, atol=0.01)
    np.testing.assert_allclose(np.cov(draws, rowvar=False), np.cov(x, rowvar=False), atol=0.02)


def test_a_classifier_without_image_shape_is_refused():
    model = classifier.Classifier(6, 3, hidden=(4,))
    with pytest.raises(ValueError, match="records no image_shape"):
        fcd(model, np.zeros((5, 6)), np.zeros((5, 6)))


def test_floor_never_draws_the_reference_images(judge):
    # at n = the whole pool, a floor drawn from the reference itself would give FCD ≈ 1e-13
    assert judge.baselines(500)[0]["fcd"] > 1e-4
