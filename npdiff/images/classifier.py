"""A small MLP image classifier built from npdiff's own layers and optimizer: the judge of image quality.

Shape glossary: N images, D = H·W pixels per image (on the [−1, 1] scale of ``idx.images_to_vectors``),
H1, H2 hidden widths, F = the last hidden width (the penultimate features), K classes.

    features(x) = act(act(x W1 + b1) W2 + b2)       (N, F)   the "penultimate layer"
    logits(x)   = features(x) W3 + b3               (N, K)

Trained with the softmax cross-entropy of ``npdiff.nn.losses`` and AdamW, the learning rate decaying on a
cosine from ``lr`` to 0. ``load_or_train`` caches the trained classifier as one .npz in the caller's
output folder, with a JSON ``meta`` recording the data set (its folder, file sizes and a SHA-256 of the
decoded arrays), the architecture, the training settings, the seed and the test accuracy. The file is
written atomically (``npdiff.io.fileio``: a temporary file in the same folder, then ``os.replace``) and read
with ``allow_pickle=False``; a cache trained on other data or with other settings is retrained.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time

import numpy as np

from npdiff import backend
from npdiff.images import idx
from npdiff.io import fileio
from npdiff.nn.layers import Linear, Sequential, activation
from npdiff.nn.losses import SoftmaxCrossEntropy, check_labels
from npdiff.nn.optim import AdamW, cosine_lr

FORMAT = "npdiff-classifier"
VERSION = 1
CACHE_NAME = "classifier.npz"
# the judge's defaults: 89 % test accuracy on Fashion-MNIST in about 35 s on one core (docs/images-quality.md)
DEFAULTS = {"hidden": (256, 64), "activation": "relu", "epochs": 15, "batch_size": 128, "lr": 1e-3,
            "weight_decay": 0.01, "seed": 0}


class Classifier:
    """The MLP above.  ``forward(x)`` (N, D) -> logits (N, K); ``backward(dlogits)`` -> dL/dx (N, D).

    ``body`` computes the F penultimate features and ``head`` the logits; ``net`` chains the two and
    holds every parameter under dotted names ("0.0.W", …, "1.b") for the optimizer and the cache.
    ``meta`` holds what training recorded (data set, settings, test accuracy); ``source`` says whether
    ``load_or_train`` trained this instance or loaded it.
    """

    def __init__(self, in_dim: int, n_classes: int, hidden=DEFAULTS["hidden"], activation_name: str = "relu",
                 image_shape: tuple[int, int] | None = None, seed: int = 0, dtype="float32") -> None:
        if in_dim < 1 or n_classes < 2 or not hidden or min(hidden) < 1:
            raise ValueError(f"a classifier needs in_dim >= 1, n_classes >= 2 and hidden widths >= 1, got "
                             f"in_dim={in_dim}, n_classes={n_classes}, hidden={tuple(hidden)}")
        rng = np.random.default_rng(seed)
        widths = [int(in_dim), *map(int, hidden)]
        layers = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [Linear(a, b, rng, dtype=dtype), activation(activation_name)]
        self.body = Sequential(*layers)
        self.head = Linear(widths[-1], int(n_classes), rng, dtype=dtype)
        self.net = Sequential(self.body, self.head)
        self.config = {"in_dim": int(in_dim), "n_classes": int(n_classes), "hidden": widths[1:],
                       "activation": activation_name,
                       "image_shape": None if image_shape is None else [int(s) for s in image_shape]}
        self.dtype, self.meta, self.source = np.dtype(dtype), {}, "new"

    @property
    def feature_dim(self) -> int:
        """F, the width of the penultimate layer."""
        return self.config["hidden"][-1]

    def forward(self, x):
        return self.net.forward(x)  # logits (N, K)

    def backward(self, dlogits):
        return self.net.backward(dlogits)  # dL/dx (N, D)

    def parameters(self) -> dict:
        return self.net.parameters()

    def gradients(self) -> dict:
        return self.net.gradients()

    def zero_grad(self) -> None:
        self.net.zero_grad()

    def check_input(self, x) -> np.ndarray:
        """``x`` as host vectors (N, D) of the model's dtype, or a one-line ValueError if D is not the model's."""
        x = np.asarray(backend.to_numpy(x))
        d = self.config["in_dim"]
        if x.ndim != 2 or x.shape[1] != d or x.shape[0] < 1:
            size = "×".join(map(str, self.config["image_shape"] or [d]))
            raise ValueError(f"the classifier takes vectors (N, {d}), N >= 1, of {size} images, got shape {x.shape}")
        return x.astype(self.dtype, copy=False)

    def _batched(self, module, x, batch: int) -> np.ndarray:
        x = self.check_input(x)
        parts = [backend.to_numpy(module.forward(backend.asarray(x[i:i + batch])))
                 for i in range(0, x.shape[0], batch)]
        return np.concatenate(parts)

    def features(self, x, batch: int = 1000) -> np.ndarray:
        """Penultimate-layer features of vectors x (N, D) -> (N, F) float64, in batches (no gradient kept)."""
        return self._batched(self.body, x, batch).astype(np.float64)

    def logits(self, x, batch: int = 1000) -> np.ndarray:
        """Logits of vectors x (N, D) -> (N, K) float64, in batches."""
        return self._batched(self.net, x, batch).astype(np.float64)

    def predict(self, x, batch: int = 1000) -> np.ndarray:
        """The most likely class of each row of x (N, D) -> (N,) int."""
        return self.logits(x, batch).argmax(axis=1)

    def accuracy(self, x, labels) -> float:
        """The fraction of rows of x (N, D) classified as their label (N,)."""
        labels = backend.to_numpy(check_labels(labels, len(x), self.config["n_classes"]))
        return float((self.predict(x) == labels).mean())


def train(x, labels, *, n_classes: int | None = None, image_shape=None, hidden=DEFAULTS["hidden"],
          activation_name: str = DEFAULTS["activation"], epochs: int = DEFAULTS["epochs"],
          batch_size: int = DEFAULTS["batch_size"], lr: float = DEFAULTS["lr"],
          weight_decay: float = DEFAULTS["weight_decay"], seed: int = DEFAULTS["seed"], dtype="float32",
          stream=None) -> Classifier:
    """Train a Classifier on vectors x (N, D) and integer labels (N,) with minibatch AdamW; returns it.

    Each epoch visits the N rows once in a fresh random order (the last partial batch is dropped);
    lr follows a cosine from ``lr`` to 0 over all steps. stream: where a line per epoch goes (None: silent).
    """
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] < batch_size:
        raise ValueError(f"training needs vectors (N, D) with N >= batch_size = {batch_size}, got shape {x.shape}")
    labels = np.asarray(labels)
    n_classes = int(labels.max()) + 1 if n_classes is None else n_classes
    labels = check_labels(labels, x.shape[0], n_classes)
    model = Classifier(x.shape[1], n_classes, hidden, activation_name, image_shape, seed, dtype)
    optimizer = AdamW(model.net, lr, weight_decay=weight_decay)
    loss_fn = SoftmaxCrossEntropy()
    rng = np.random.default_rng(seed)
    per_epoch = x.shape[0] // batch_size
    schedule = cosine_lr(lr, epochs * per_epoch)
    start, step, loss = time.perf_counter(), 0, float("nan")
    for epoch in range(epochs):
        order = rng.permutation(x.shape[0])
        for i in range(per_epoch):
            rows = order[i * batch_size:(i + 1) * batch_size]
            model.zero_grad()
            loss = loss_fn.forward(model.forward(backend.asarray(x[rows], dtype=model.dtype)), labels[rows])
            if not np.isfinite(loss):
                raise FloatingPointError(f"classifier loss is {loss} at epoch {epoch + 1}, step {step}")
            model.backward(loss_fn.backward())
            optimizer.step(schedule(step))
            step += 1
        if stream is not None:
            print(f"classifier epoch {epoch + 1}/{epochs}: loss {loss:.4f}  {time.perf_counter() - start:.1f} s",
                  file=stream, flush=True)
    model.meta["training"] = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
                              "seed": seed, "n_train": int(x.shape[0]), "final_loss": loss,
                              "seconds": round(time.perf_counter() - start, 2)}
    return model


def save(path, model: Classifier) -> None:
    """Write ``model`` (weights, config, meta) to ``path`` atomically: temporary file, fsync, os.replace."""
    arrays = {f"param/{k}": backend.to_numpy(v) for k, v in model.parameters().items()}
    arrays["meta"] = np.array(json.dumps({"format": FORMAT, "version": VERSION, "config": model.config,
                                          "dtype": model.dtype.name, **model.meta}))
    with fileio.replacing(path) as f:
        np.savez(f, **arrays)


def load(path) -> Classifier:
    """Read a classifier written by ``save`` (``allow_pickle=False``); ValueError naming the file if it is not one."""
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            stored = {k: f[k] for k in f.files}
        info = json.loads(str(stored.pop("meta")))
        if info.get("format") != FORMAT or info.get("version") != VERSION:
            raise ValueError(f"format {info.get('format')!r} version {info.get('version')!r}, "
                             f"expected {FORMAT!r} version {VERSION}")
        c = info["config"]
        model = Classifier(c["in_dim"], c["n_classes"], c["hidden"], c["activation"], c["image_shape"],
                           dtype=info["dtype"])
    except FileNotFoundError:
        raise
    except Exception as err:  # a damaged zip, a missing key, malformed JSON, a config that cannot be built
        raise ValueError(f"{path} is not a readable npdiff classifier ({type(err).__name__}: {err}); "
                         "delete it to train a new one") from None
    params = model.parameters()
    if set(stored) != {f"param/{k}" for k in params}:
        raise ValueError(f"{path}: its arrays {sorted(stored)} do not match the architecture in its meta")
    for key, value in params.items():
        array = stored[f"param/{key}"]
        if array.shape != value.shape:
            raise ValueError(f"{path}: parameter {key} has shape {array.shape}, expected {value.shape}")
        value[...] = backend.asarray(array)
    model.meta = {k: v for k, v in info.items() if k not in ("format", "version", "config", "dtype")}
    return model


def dataset_record(folder, arrays) -> dict:
    """What identifies a data set: its folder, the sizes of its files, a SHA-256 of the decoded arrays."""
    folder = os.path.abspath(os.fspath(folder))
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(repr((array.dtype.str, array.shape)).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    files = {name: os.path.getsize(os.path.join(folder, name)) for name in sorted(os.listdir(folder))
             if name.startswith(("train-", "t10k-"))}
    return {"folder": folder, "files": files, "sha256": digest.hexdigest()}


def load_data(folder) -> dict:
    """Both splits of an MNIST-format folder as vectors on [−1, 1], labels, image shape and dataset_record."""
    train_images, train_labels = idx.load_mnist(folder, "train")
    test_images, test_labels = idx.load_mnist(folder, "test")
    if train_images.shape[1:] != test_images.shape[1:]:
        raise ValueError(f"{folder}: train images are {train_images.shape[1:]}, test images {test_images.shape[1:]}")
    return {"x_train": idx.images_to_vectors(train_images), "y_train": train_labels.astype(np.int64),
            "x_test": idx.images_to_vectors(test_images), "y_test": test_labels.astype(np.int64),
            "image_shape": tuple(train_images.shape[1:]),
            "record": dataset_record(folder, (train_images, train_labels, test_images, test_labels))}


def load_or_train(out, data=idx.FASHION_MNIST_DIR, *, loaded: dict | None = None, verbose: bool = True,
                  **settings) -> Classifier:
    """The classifier cached at ``<out>/classifier.npz``: loaded if it was trained on the same data with the
    same settings, else trained (on data's train split), tested (test split) and written there.

    data: an MNIST-format folder; loaded: ``load_data(data)`` if the caller has it already; verbose: a line
    per training epoch on stderr (why a cache is retrained is always said there). settings:
    any of ``DEFAULTS`` (hidden, activation, epochs, batch_size, lr, weight_decay, seed).
    The returned classifier's ``meta`` has "data", "training", "test_accuracy" and "n_test".
    """
    unknown = set(settings) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown classifier settings {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    wanted = {**DEFAULTS, **settings}
    wanted["hidden"] = [int(h) for h in wanted["hidden"]]
    loaded = load_data(data) if loaded is None else loaded
    path = os.path.join(os.fspath(out), CACHE_NAME)
    if os.path.exists(path):
        model = load(path)
        trained = {**model.meta.get("training", {}), "hidden": model.config["hidden"],
                   "activation": model.config["activation"]}
        differs = [k for k in wanted if trained.get(k) != wanted[k]]
        if model.meta.get("data", {}).get("sha256") != loaded["record"]["sha256"]:
            reason = f"it was trained on {model.meta.get('data', {}).get('folder')}, not on these data"
        elif differs:
            reason = "its settings differ: " + ", ".join(f"{k} {trained.get(k)} -> {wanted[k]}" for k in differs)
        else:
            model.source = "loaded"
            return model
        print(f"{path}: {reason}; retraining", file=sys.stderr, flush=True)
    wanted["activation_name"] = wanted.pop("activation")
    model = train(loaded["x_train"], loaded["y_train"], n_classes=int(loaded["y_train"].max()) + 1,
                  image_shape=loaded["image_shape"], stream=sys.stderr if verbose else None, **wanted)
    model.meta.update(data=loaded["record"], test_accuracy=model.accuracy(loaded["x_test"], loaded["y_test"]),
                      n_test=int(len(loaded["y_test"])))
    os.makedirs(os.fspath(out), exist_ok=True)
    save(path, model)
    model.source = "trained"
    return model
