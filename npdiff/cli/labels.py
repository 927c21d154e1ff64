"""Class labels on the command line: read them for ``train``, choose them for ``sample`` and ``eval``.

Shape glossary: N training points, n samples, K classes.

``train`` takes labels from a second file (``--labels y.npy``, N class numbers), from a column of the data
(``--label-column NAME|INDEX``, removed from the coordinates), or from an MNIST-format folder (its label
file). A class number is a whole number 0..K−1; K is ``--num-classes`` or the largest label + 1.
``sample`` and ``eval`` give each sample a class: ``--label K`` (all alike), ``--label balanced`` (sample
i gets class i mod K), ``--label none`` (the unconditional model: every label dropped), or
``--labels FILE.npy`` (one per sample); ``--guidance W`` steers towards the class (``npdiff.processes.guidance``).
Every problem is a ``UsageError`` naming the flag or file, the row and the value (exit status 2).
"""

from __future__ import annotations

import os

import numpy as np

from npdiff import backend, data
from npdiff.cli.args import UsageError
from npdiff.nn.losses import check_labels

MAX_CLASSES = 65_536  # a larger class number is a mistake (a label embedding of K + 1 rows is built)
DEFAULT_DROPOUT = 0.1  # p of classifier-free guidance training (Ho & Salimans 2022 use 0.1 or 0.2)
DEFAULT_SAMPLES = 2000  # sample --n without a labels file


def as_classes(values, where: str) -> np.ndarray:
    """Class numbers (N,) int64 from numbers or text (a CSV column), or a UsageError naming ``where``, the row
    and the value: text that is not a number, NaN or inf, a fraction, a negative or absurdly large class."""
    v = np.asarray(values)
    if v.ndim != 1:
        raise UsageError(f"{where}: holds an array of shape {v.shape}; expected one class number per row (N,)")
    if v.size == 0:
        raise UsageError(f"{where}: holds no labels")
    if v.dtype.kind in "US":  # a CSV column read as text
        numbers = np.empty(v.shape[0], dtype=np.float64)
        for row, text in enumerate(v):
            try:
                numbers[row] = float(text)
            except ValueError:
                raise UsageError(f"{where}: row {row} holds {str(text).strip()!r}, not a class number "
                                 "(a whole number 0, 1, …)") from None
        v = numbers
    if v.dtype.kind not in "iuf":
        raise UsageError(f"{where}: holds {v.dtype} values, not class numbers (whole numbers 0, 1, …)")
    if v.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(v) | (v != np.round(v))
        if bad.any():
            row = int(np.argmax(bad))
            raise UsageError(f"{where}: row {row} holds {v[row]:g}, not a class number (a whole number 0, 1, …)")
    if v.min() < 0:
        row = int(np.argmin(v))
        raise UsageError(f"{where}: row {row} holds the negative class {v[row]:g}; classes are numbered 0, 1, …")
    if v.max() >= MAX_CLASSES:
        row = int(np.argmax(v))
        raise UsageError(f"{where}: row {row} holds the class {v[row]:g}; npdiff takes at most {MAX_CLASSES} classes")
    return v.astype(np.int64)


def in_range(labels: np.ndarray, n_classes: int, where: str) -> np.ndarray:
    """``labels`` checked against a model of K classes by ``losses.check_labels``; its message, prefixed."""
    try:
        return backend.to_numpy(check_labels(labels, len(labels), n_classes))  # (N,) int64 on the host
    except ValueError as err:
        raise UsageError(f"{where}: {err}") from None


def read_label_file(path: str, flag: str = "--labels") -> np.ndarray:
    """The class numbers (N,) of a .npy file of shape (N,) or (N, 1)."""
    where = f"{flag} {path!r}"
    if os.path.splitext(path)[1].lower() != ".npy":
        raise UsageError(f"{where}: name a .npy file of class numbers (a column of a CSV: --label-column)")
    if os.path.isdir(path):
        raise UsageError(f"{where} is a folder; name a .npy file of class numbers")
    if not os.path.isfile(path):
        raise UsageError(f"{where}: no such file")
    try:
        values = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise UsageError(f"{where}: not a readable .npy array ({' '.join(str(err).split())})") from None
    if not isinstance(values, np.ndarray):
        raise UsageError(f"{where} is an .npz archive; save one array with numpy.save")
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    return as_classes(values, where)


# ---- train -------------------------------------------------------------------------------------------

def _column_index(column: str, names: list[str] | None, width: int, where: str) -> int:
    """The 0-based index of ``--label-column``: a name of the header ``names``, or an index (negative from
    the end) into ``width`` columns."""
    try:
        index = int(column)
    except ValueError:
        if names is None:
            why = ("a .npy file has no column names" if where.endswith(".npy'")
                   else f"{where} has no header line naming its columns")
            raise UsageError(f"--label-column {column!r}: {why}; give the column's index (0..{width - 1})") from None
        if column not in names:
            raise UsageError(f"--label-column {column!r}: {where} has the columns {', '.join(names)}") from None
        return names.index(column)
    if not -width <= index < width:
        raise UsageError(f"--label-column {index}: {where} has {width} columns (indexes 0..{width - 1}, or "
                         "negative from the end)")
    return index % width


def split_label_column(path: str, column: str) -> tuple[np.ndarray, np.ndarray]:
    """(points (N, D) float64, class numbers (N,)) of a .csv or .npy file whose column ``column`` holds labels.

    A CSV's first line is a header when a column is named, or when its fields outside the label column are
    not all numbers (the label column may hold text, so it does not decide). A .npy's columns have no names.
    """
    where = repr(path)
    if os.path.splitext(path)[1].lower() != ".csv" or not os.path.isfile(path):
        x = data.load_points(path)  # a missing file, a folder, a bad .npy: its own one-line error
        index = _column_index(column, None, x.shape[1], where)
        labels, x = x[:, index], np.delete(x, index, axis=1)
    else:
        try:
            with open(path, encoding="utf-8") as f:
                lines = [line.rstrip("\r\n") for line in f if line.strip()]
        except UnicodeDecodeError:
            data.load_points(path)  # raises its one-line message about the bytes
            raise
        if not lines:
            raise UsageError(f"{where} holds no points")
        first = [field.strip() for field in lines[0].split(",")]
        numeric = [_is_number(field) for field in first]
        index = _column_index(column, None if all(numeric) else first, len(first), where)
        if not all(ok for k, ok in enumerate(numeric) if k != index) or not _is_integer(column):
            lines = lines[1:]  # a header line
        if not lines:
            raise UsageError(f"{where} holds no points")
        others = [k for k in range(len(first)) if k != index]
        try:
            labels = np.loadtxt(lines, delimiter=",", usecols=[index], dtype=str, ndmin=1)
            x = np.loadtxt(lines, delimiter=",", usecols=others, dtype=np.float64, ndmin=2) if others else None
        except ValueError as err:
            raise UsageError(f"{where} is not a comma-separated table of numbers (labels in column {index}): "
                             f"{' '.join(str(err).split())}") from None
        if x is not None and not np.isfinite(x).all():
            row, col = np.argwhere(~np.isfinite(x))[0]
            raise UsageError(f"{where} has non-finite coordinates (NaN or inf), first at row {row}, column "
                             f"{others[col]}")
    if x is None or x.shape[1] == 0:
        raise UsageError(f"--label-column {column!r}: {where} has no other column to train on")
    return x, as_classes(labels, f"--label-column {column!r} of {where}")


def _is_integer(text: str) -> bool:
    try:
        int(text)
        return True
    except ValueError:
        return False


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def check_train_flags(args, images: bool) -> None:
    """The label flags of ``train`` that cannot go together, before any data is read."""
    if args.labels is not None and args.label_column is not None:
        raise UsageError("--labels FILE and --label-column NAME both give labels: pass one")
    given = args.labels is not None or args.label_column is not None
    if images and given:
        raise UsageError(f"{args.data!r} is an image folder: its labels come from its label file "
                         "(drop --labels/--label-column; --no-labels trains without them)")
    if args.no_labels and given:
        raise UsageError("--no-labels trains without labels, but --labels/--label-column give some: pass one")
    if not images and not given and (args.num_classes is not None or args.label_dropout is not None):
        flag = "--num-classes" if args.num_classes is not None else "--label-dropout"
        raise UsageError(f"{flag} applies to a class-conditional model: give labels with --labels FILE.npy or "
                         "--label-column NAME")
    if args.no_labels and (args.num_classes is not None or args.label_dropout is not None):
        raise UsageError("--num-classes and --label-dropout apply to a class-conditional model, not with --no-labels")
    conditional = given or (images and not args.no_labels)
    if conditional and args.objective != "epsilon":
        raise UsageError(f"class labels train with --objective epsilon, not {args.objective}"
                         + (" (--no-labels trains this image folder without them)" if images else ""))


def training_classes(labels: np.ndarray, n_points: int, num_classes: int | None, where: str) -> int:
    """K for training labels (N,): --num-classes, or the largest label + 1; every label checked against it."""
    if len(labels) != n_points:
        raise UsageError(f"{where} holds {len(labels)} labels for {n_points} points: give one label per point")
    k = int(labels.max()) + 1 if num_classes is None else num_classes
    if num_classes is not None and labels.max() >= num_classes:
        row = int(np.argmax(labels >= num_classes))
        raise UsageError(f"{where}: row {row} holds the class {labels[row]}, outside --num-classes {num_classes} "
                         f"(classes 0..{num_classes - 1})")
    in_range(labels, k, where)
    return k


# ---- sample and eval ---------------------------------------------------------------------------------

def sampling_labels(args, n_classes: int | None, checkpoint: str, default: str = "none",
                    n_default: int = DEFAULT_SAMPLES) -> tuple[np.ndarray | None, int, str]:
    """(labels (n,) int64 or None, n, a description) of --label/--labels for a model of K classes (None:
    unconditional), with --guidance checked against them. default: the --label when none is given.

    --n: as given, else the labels file's length, else ``n_default``; a file of another length is refused.
    """
    label, path, w = args.label, getattr(args, "labels", None), args.guidance
    if label is not None and path is not None:
        raise UsageError("--label and --labels both choose the classes: pass one")
    if n_classes is None:
        flag = "--labels" if path is not None else (f"--label {label}" if label not in (None, "none") else None)
        flag = flag or ("--guidance" if w is not None else None)
        if flag is not None:
            raise UsageError(f"{flag}: {checkpoint!r} is an unconditional model (trained without labels); "
                             "train with --labels, --label-column or an image folder's labels to sample a class")
        label = "none"
    label = default if label is None and path is None else label
    n = args.n
    if path is not None:
        labels = read_label_file(path)
        if n is None:
            n = len(labels)
        elif len(labels) != n:
            raise UsageError(f"--labels {path!r} holds {len(labels)} labels but --n is {n}: give one label per "
                             f"sample (or leave --n out to draw {len(labels)})")
        labels = in_range(labels, n_classes, f"--labels {path!r}")
        what = f"the classes of {path}"
    else:
        n = n_default if n is None else n
        if label == "none":
            labels, what = None, "no label (the unconditional model)" if n_classes is not None else "unconditional"
        elif label == "balanced":
            labels = np.arange(n, dtype=np.int64) % n_classes
            what = f"classes 0..{n_classes - 1} in turn (sample i has class i mod {n_classes})"
        else:
            if label >= n_classes:
                raise UsageError(f"--label {label}: the model has {n_classes} classes (0..{n_classes - 1})")
            labels, what = np.full(n, label, dtype=np.int64), f"class {label}"
    if w is not None and labels is None:
        raise UsageError("--guidance W steers each sample towards its class: give --label K, --label balanced or "
                         "--labels FILE.npy")
    if labels is not None:
        what += f", guidance w = {w or 0:g}"
    return labels, n, what
