"""Image-quality figures for MNIST-format images, judged by a classifier (``npdiff.images.classifier``).

Shape glossary: N images judged, R reference images, D = H·W pixels, F penultimate features, K classes.

FCD, the Fréchet classifier distance: FID (Heusel et al. 2017) with npdiff's small classifier in place of
Inception. Fit a Gaussian (μ, Σ) to the classifier's penultimate features of the judged images and one to
those of held-out real images; FCD is the squared Fréchet (2-Wasserstein) distance between the two
Gaussians (Dowson & Landau 1982), reported squared as FID is:

    FCD = ‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁^½ Σ₂ Σ₁^½)^½)

Σ₁^½ Σ₂ Σ₁^½ is symmetric positive semi-definite, so both square roots come from a symmetric
eigendecomposition, A^½ = V diag(√λ) Vᵀ (no SciPy). Its trace equals tr((Σ₁Σ₂)^½), the form FID code
computes with scipy.linalg.sqrtm: the two matrices have the same eigenvalues. An estimate from N samples
is biased upwards, more for small N: compare a figure only with the real-vs-real floor at the same N.

Mode coverage: the entropy of the histogram of predicted classes, H = −Σ_k p_k ln p_k (nats), p_k the
fraction of images classified as k; ln K when every class is equally frequent, 0 when all are one class.

Every image is judged as the 8-bit picture it would be saved as: vectors on the [−1, 1] scale go through
``idx.vectors_to_images`` (round to a byte, values beyond ±1 clipped to the pixel range), then back.
"""

from __future__ import annotations

import math
import sys

import numpy as np

from npdiff import backend
from npdiff.images import idx
from npdiff.images.classifier import Classifier, load_data, load_or_train
from npdiff.nn.losses import check_labels

PSD_TOLERANCE = 1e-9  # an eigenvalue below −tol·max|λ| means the matrix was not PSD, not rounding error


def as_vectors(images, image_shape) -> np.ndarray:
    """uint8 images (N, H, W), or vectors (N, D) on [−1, 1], as the vectors of their 8-bit pictures (N, D)."""
    images = np.asarray(images)
    h, w = image_shape
    if images.dtype == np.uint8 and images.ndim == 3 and images.shape[1:] == (h, w):
        return idx.images_to_vectors(images, "float64")
    if images.dtype != np.uint8 and images.ndim == 2 and images.shape[1] == h * w:
        return idx.images_to_vectors(idx.vectors_to_images(images, (h, w)), "float64")
    raise ValueError(f"images must be uint8 (N, {h}, {w}) or vectors (N, {h * w}) on [-1, 1]; got "
                     f"{images.dtype} {images.shape}")


def sqrtm_psd(a: np.ndarray) -> np.ndarray:
    """A^½ = V diag(√λ) Vᵀ of a symmetric PSD matrix (F, F); eigenvalues that rounding made slightly
    negative (above −PSD_TOLERANCE·max|λ|) count as 0, anything more negative raises ValueError."""
    lam, v = np.linalg.eigh(a)  # A = V diag(λ) Vᵀ
    return (v * np.sqrt(_clamp(lam))) @ v.T


def _clamp(lam: np.ndarray) -> np.ndarray:
    scale = max(float(np.abs(lam).max(initial=0.0)), np.finfo(np.float64).tiny)
    if lam.min(initial=0.0) < -PSD_TOLERANCE * scale:
        raise ValueError(f"matrix is not positive semi-definite: eigenvalue {lam.min():.3g} (largest {scale:.3g})")
    return np.maximum(lam, 0.0)


def gaussian_fit(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean (F,) and unbiased covariance (F, F) of features (N, F); needs N >= F + 1 for a full-rank Σ."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < f.shape[1] + 1:
        need = f.shape[1] + 1 if f.ndim == 2 else "F + 1"
        raise ValueError(f"a full-rank covariance of features (N, F) needs N >= F + 1 = {need} samples, "
                         f"got shape {f.shape}")
    if not np.isfinite(f).all():
        raise ValueError("features contain non-finite values (NaN or inf)")
    mu = f.mean(axis=0)  # (F,)
    centered = f - mu  # (N, F)
    return mu, centered.T @ centered / (f.shape[0] - 1)  # Σ = (X − μ)ᵀ(X − μ)/(N − 1)


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁^½ Σ₂ Σ₁^½)^½) between N(μ₁, Σ₁) and N(μ₂, Σ₂); μ (F,), Σ (F, F)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    f = mu1.shape[0]
    if mu1.shape != (f,) or mu2.shape != (f,) or cov1.shape != (f, f) or cov2.shape != (f, f):
        raise ValueError(f"need means (F,) and covariances (F, F) of one F, got {mu1.shape}, {cov1.shape}, "
                         f"{mu2.shape}, {cov2.shape}")
    root1 = sqrtm_psd(cov1)  # Σ₁^½                               (F, F)
    middle = root1 @ cov2 @ root1  # Σ₁^½ Σ₂ Σ₁^½, symmetric PSD   (F, F)
    middle = 0.5 * (middle + middle.T)  # exactly symmetric for eigh (rounding made it differ by ~1e-16)
    trace_root = float(np.sqrt(_clamp(np.linalg.eigvalsh(middle))).sum())  # tr (Σ₁^½ Σ₂ Σ₁^½)^½
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * trace_root)


def fcd(classifier: Classifier, images, reference) -> float:
    """FCD between ``images`` and ``reference`` (uint8 (N, H, W) or vectors (N, D) each; N >= F + 1)."""
    shape = _shape(classifier)
    a = gaussian_fit(classifier.features(as_vectors(images, shape)))
    b = gaussian_fit(classifier.features(as_vectors(reference, shape)))
    return frechet_distance(*a, *b)


def class_accuracy(classifier: Classifier, images, labels) -> float:
    """The fraction of images (N, …) the classifier assigns to their intended class, labels (N,)."""
    return classifier.accuracy(as_vectors(images, _shape(classifier)), labels)


def class_entropy(predicted, n_classes: int) -> float:
    """H = −Σ_k p_k ln p_k of the histogram of predicted classes (N,) in 0..K−1, in nats (max ln K)."""
    predicted = backend.to_numpy(check_labels(predicted, len(predicted), n_classes))
    p = np.bincount(predicted, minlength=n_classes) / len(predicted)  # (K,)
    p = p[p > 0]  # 0 · ln 0 = 0
    return float(-(p * np.log(p)).sum())


def predicted_class_entropy(classifier: Classifier, images) -> float:
    """The entropy (nats) of the classifier's predicted-class histogram over ``images``: mode coverage."""
    predicted = classifier.predict(as_vectors(images, _shape(classifier)))
    return class_entropy(predicted, classifier.config["n_classes"])


def _shape(classifier: Classifier) -> tuple[int, int]:
    shape = classifier.config["image_shape"]
    if shape is None:
        raise ValueError("the classifier records no image_shape: train it through npdiff.images.classifier.train(..., "
                         "image_shape=(H, W))")
    return tuple(shape)


class PixelGaussian:
    """N(μ, Σ) fitted to pixel vectors x (N, D); ``sample(n, rng)`` draws μ + z Lᵀ, L = Σ^½, z ~ N(0, I)."""

    def __init__(self, x) -> None:
        x = np.asarray(x, dtype=np.float64)
        self.mu, cov = x.mean(axis=0), np.cov(x, rowvar=False)  # (D,), (D, D)
        self.root = sqrtm_psd(cov)  # Σ^½: constant pixels (a border) give zero eigenvalues, so not Cholesky

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return self.mu + rng.standard_normal((n, self.mu.shape[0])) @ self.root  # Σ^½ is symmetric


class ImageJudge:
    """A trained classifier, the Gaussian fit of its features on held-out reference images, and the data
    for the baselines.  ``evaluate`` scores one set of images; ``report`` prints it beside the baselines.

    The held-out images are split once (seed): ``n_reference`` form the reference of every FCD, the rest
    are the pool from which the real-vs-real floor draws its images, so the floor never compares an image
    with itself. n_reference: default half of the held-out images (5000 of Fashion-MNIST's 10000).
    """

    def __init__(self, classifier: Classifier, x_train, y_train, x_heldout, y_heldout,
                 n_reference: int | None = None, seed: int = 0) -> None:
        self.classifier, self.shape = classifier, _shape(classifier)
        self.n_classes = classifier.config["n_classes"]
        self.x_train, self.y_train = np.asarray(x_train), np.asarray(y_train)
        order = np.random.default_rng(seed).permutation(len(x_heldout))
        n_reference = len(x_heldout) // 2 if n_reference is None else int(n_reference)
        if not classifier.feature_dim < n_reference < len(x_heldout):
            raise ValueError(f"n_reference must be at least F + 1 = {classifier.feature_dim + 1} and leave held-out "
                             f"images for the floor (below {len(x_heldout)}), got {n_reference}")
        self.reference = gaussian_fit(classifier.features(as_vectors(x_heldout[order[:n_reference]], self.shape)))
        self.pool = order[n_reference:]  # indices of the held-out images the floor may draw
        self.x_heldout, self.y_heldout, self.n_reference = np.asarray(x_heldout), np.asarray(y_heldout), n_reference
        self._pixels: dict = {}

    @classmethod
    def from_folder(cls, out, data=idx.FASHION_MNIST_DIR, *, verbose: bool = True, n_reference: int | None = None,
                    seed: int = 0, **settings) -> "ImageJudge":
        """The judge for an MNIST-format folder: the classifier cached in ``out`` (trained on first use), held-out
        = the test split."""
        loaded = load_data(data)
        classifier = load_or_train(out, data, loaded=loaded, verbose=verbose, **settings)
        return cls(classifier, loaded["x_train"], loaded["y_train"], loaded["x_test"], loaded["y_test"],
                   n_reference, seed)

    def evaluate(self, images, labels=None, name: str = "samples") -> dict:
        """{"name", "n", "fcd", "accuracy" (None without labels), "entropy"} of images (N, …) against the reference."""
        x = as_vectors(images, self.shape)
        features = self.classifier.features(x)
        predicted = self.classifier.predict(x)
        accuracy = None
        if labels is not None:
            accuracy = float((predicted == backend.to_numpy(check_labels(labels, len(x), self.n_classes))).mean())
        return {"name": name, "n": len(x), "fcd": frechet_distance(*gaussian_fit(features), *self.reference),
                "accuracy": accuracy, "entropy": class_entropy(predicted, self.n_classes)}

    def _pixel_gaussian(self, k: int | None) -> PixelGaussian:
        if k not in self._pixels:
            self._pixels[k] = PixelGaussian(self.x_train if k is None else self.x_train[self.y_train == k])
        return self._pixels[k]

    def baselines(self, n: int, seed: int = 0, labels=None) -> list[dict]:
        """The four baselines at n images each: held-out real (floor), a Gaussian fitted to the training pixels,
        one Gaussian per class (labelled), N(0, I) noise (ceiling).

        labels: the intended classes (n,) of class-conditional samples. Given, the floor draws held-out
        images with exactly these class counts and the per-class Gaussians draw these classes, so that both
        share the samples' class mix; FCD depends on it. Without, the floor is a random held-out draw and the
        per-class Gaussians draw classes as often as the training labels have them.
        """
        if not self.classifier.feature_dim < n <= len(self.pool):
            raise ValueError(f"n must lie between F + 1 = {self.classifier.feature_dim + 1} (a full-rank "
                             f"covariance) and the {len(self.pool)} held-out images outside the reference, got {n}")
        rng = np.random.default_rng(seed)
        if labels is None:
            real = rng.choice(self.pool, size=n, replace=False)
            per_class = rng.choice(self.y_train, size=n)  # classes as frequent as in the training data
        else:
            per_class = backend.to_numpy(check_labels(labels, n, self.n_classes))
            real = np.concatenate([self._heldout_of_class(k, int((per_class == k).sum()), rng)
                                   for k in range(self.n_classes)])
        conditional = np.empty((n, self.x_train.shape[1]))
        for k in range(self.n_classes):
            conditional[per_class == k] = self._pixel_gaussian(k).sample(int((per_class == k).sum()), rng)
        return [self.evaluate(self.x_heldout[real], self.y_heldout[real], "held-out real (floor)"),
                self.evaluate(self._pixel_gaussian(None).sample(n, rng), None, "Gaussian fit to train pixels"),
                self.evaluate(conditional, per_class, "one Gaussian per class"),
                self.evaluate(rng.standard_normal((n, self.x_train.shape[1])), None, "noise N(0, I) (ceiling)")]

    def _heldout_of_class(self, k: int, count: int, rng) -> np.ndarray:
        """``count`` indices of held-out images of class k drawn from the floor's pool, without replacement."""
        of_class = self.pool[self.y_heldout[self.pool] == k]
        if count > len(of_class):
            raise ValueError(f"the floor needs {count} held-out images of class {k}, the pool has {len(of_class)}")
        return rng.choice(of_class, size=count, replace=False)

    def report(self, samples=None, labels=None, *, n: int | None = None, seed: int = 0, name: str = "samples",
               stream=None) -> list[dict]:
        """Print the table (the baselines, then ``samples`` if given), every row at the same n; returns the rows.

        labels: the samples' intended classes (n,): they score the samples' accuracy and set the class mix of
        the floor and of the per-class Gaussians (see ``baselines``). n: the sample count, default
        len(samples); samples must have exactly n rows when both are given. stream: default sys.stdout.
        """
        if samples is not None:
            count = len(samples)
            if n is not None and n != count:
                raise ValueError(f"every row uses one sample count: got {count} samples but n = {n}")
            n = count
        if n is None:
            raise ValueError("give samples or a sample count n")
        rows = self.baselines(n, seed, labels)
        if samples is not None:
            rows.append(self.evaluate(samples, labels, name))
        print(format_table(rows, self), file=sys.stdout if stream is None else stream, flush=True)
        return rows


def format_table(rows: list[dict], judge: ImageJudge) -> str:
    """The rows as a text table with a header naming the classifier, the reference and the entropy's maximum."""
    c = judge.classifier
    accuracy = c.meta.get("test_accuracy")
    lines = [f"classifier: {'unknown' if accuracy is None else f'{100 * accuracy:.1f} %'} test accuracy, "
             f"F = {c.feature_dim} features; FCD reference: {judge.n_reference} held-out images",
             f"{'':<30} {'n':>6} {'FCD':>9} {'accuracy':>9} {'entropy':>8}  (max ln {judge.n_classes} = "
             f"{math.log(judge.n_classes):.3f})"]
    for r in rows:
        acc = "—" if r["accuracy"] is None else f"{100 * r['accuracy']:.1f} %"
        lines.append(f"{r['name']:<30} {r['n']:>6} {r['fcd']:>9.2f} {acc:>9} {r['entropy']:>8.3f}")
    return "\n".join(lines)
