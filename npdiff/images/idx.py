"""Image data in the IDX format of MNIST and Fashion-MNIST: read, write, load, download, convert.

Shape glossary: N images, H × W pixels per image (28 × 28 for MNIST), D = H·W data dims.

The IDX format (LeCun, Cortes & Burges, "THE MNIST DATABASE", yann.lecun.com/exdb/mnist) is a
header followed by the raw array, every number in it big-endian:

    offset  size     field
    0       2        magic: two zero bytes
    2       1        type code of the elements:  0x08 uint8   0x09 int8      0x0B int16
                                                 0x0C int32   0x0D float32   0x0E float64
    3       1        ndim, the number of dimensions
    4       4·ndim   the size of each dimension, unsigned 32-bit
    4+4·ndim         prod(dims) elements in C order, each of the type's size, big-endian

MNIST ships four such files, each gzipped: ``train-images-idx3-ubyte`` (60000, 28, 28) uint8,
``train-labels-idx1-ubyte`` (60000,) uint8, and ``t10k-…`` with 10000 test images. Fashion-MNIST
(Xiao, Rasul & Vollgraf 2017) uses the same names, shapes and types, with clothing in place of digits;
Debian's package ``dataset-fashion-mnist`` installs it in ``FASHION_MNIST_DIR``.

For training, ``images_to_vectors`` maps pixel bytes p ∈ {0..255} to x = p/127.5 − 1 ∈ [−1, 1]
(Ho et al. 2020, Sec. 3.3) and flattens each image into a row of D numbers; ``vectors_to_images``
is its inverse, rounding to the nearest byte.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import math
import os
import shutil
import struct
import tempfile
import urllib.error
import urllib.request
import zlib

import numpy as np

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # Debian: apt-get install dataset-fashion-mnist
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")  # label k's name (Xiao, Rasul & Vollgraf 2017, Table 1)
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"  # torchvision's mirror of yann.lecun.com/exdb/mnist/
DOWNLOAD_TIMEOUT = 60.0  # seconds without an answer before a download gives up

# type code -> big-endian element type, as the file stores it
TYPE_CODES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
              0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
# MD5 of the files at MNIST_URL (the values torchvision checks); a download from there must match
MNIST_MD5 = {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
             "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
             "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
             "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"}
_GZIP_MAGIC = b"\x1f\x8b"
MAX_IDX_BYTES = 2**31  # the largest IDX file npdiff reads or expands from gzip (MNIST's train images: 47 MB)
_READ_BLOCK = 1 << 20  # compressed bytes read at a time


class DownloadError(OSError):
    """A file could not be fetched (network error, HTTP error, or a body that is not an IDX file)."""


def _read_bytes(path: str, limit: int = MAX_IDX_BYTES) -> bytes:
    """The file's bytes, gunzipped when they start with the gzip magic (whatever the file's name), in bounded
    memory: an IDX file larger than ``limit`` is refused, and a gzipped one is expanded only as far as its IDX
    header promises (checked against the cap and the gzip trailer's declared size first)."""
    with open(path, "rb") as f:
        gzipped = f.read(2) == _GZIP_MAGIC
        size = os.fstat(f.fileno()).st_size
        if not gzipped:
            if size > limit:
                raise ValueError(f"{path}: {size} bytes, more than the {limit} bytes npdiff reads from an IDX file")
            f.seek(0)
            return f.read()
        declared = None
        if size >= 18:  # a gzip member's trailer ends with ISIZE, its uncompressed size mod 2**32
            f.seek(-4, os.SEEK_END)
            declared = struct.unpack("<I", f.read(4))[0]
        f.seek(0)
        try:
            return _gunzip_idx(f, path, limit, declared)
        except zlib.error as err:  # a bad header, block or CRC
            raise ValueError(f"{path}: corrupt or truncated gzip data ({err})") from None


def _promised(head) -> int | None:
    """The total size (header and data) that an IDX header promises once ``head`` holds the whole header; None
    before; -1 when ``head`` does not start like an IDX header (parse_idx then says why)."""
    if len(head) < 4:
        return None
    if head[0] != 0 or head[1] != 0 or head[2] not in TYPE_CODES:
        return -1
    start = 4 + 4 * head[3]
    if len(head) < start:
        return None
    dims = struct.unpack(f">{head[3]}I", bytes(head[4:start]))
    return start + math.prod(dims) * TYPE_CODES[head[2]].itemsize


def _gunzip_idx(f, path: str, limit: int, declared: int | None) -> bytearray:
    """Expand the gzip stream of f as far as its IDX header promises and one byte more (parse_idx then reports
    trailing bytes), the header first: never past ``limit``, and not at all when the gzip trailer's size differs."""
    out, pending = bytearray(), b""
    stream = zlib.decompressobj(16 + zlib.MAX_WBITS)
    want = None  # the IDX file's total size, once its header is out
    while want is None or (want >= 0 and len(out) <= want):
        if want is None:  # the 4 fixed bytes, then the dimensions they announce
            goal = 4 if len(out) < 4 else 4 + 4 * out[3]
        else:
            goal = want + 1
        if not pending:
            if stream.eof:
                pending = stream.unused_data or f.read(_READ_BLOCK)
                if not pending:
                    break
                stream = zlib.decompressobj(16 + zlib.MAX_WBITS)  # another gzip member follows
            else:
                pending = f.read(_READ_BLOCK)
                if not pending:
                    raise ValueError(f"{path}: corrupt or truncated gzip data (the stream ends early)")
        out += stream.decompress(pending, goal - len(out))
        pending = stream.unconsumed_tail
        if want is None:
            want = _promised(out)
            if want is not None and want > limit:
                raise ValueError(f"{path}: its IDX header promises {want} bytes, more than the {limit} bytes npdiff "
                                 "expands from a gzip file")
            if want is not None and want >= 0 and declared is not None and declared != want % 2**32:
                raise ValueError(f"{path}: corrupt or truncated gzip data: its trailer declares {declared} bytes but "
                                 f"its IDX header promises {want}")
    return out


def parse_idx(buf: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode the bytes of one IDX file (layout in the module docstring) into a native-endian array."""
    if len(buf) < 4:
        raise ValueError(f"{name}: {len(buf)} bytes is too short for an IDX header (at least 4 bytes)")
    if buf[0] != 0 or buf[1] != 0:
        raise ValueError(f"{name}: not an IDX file: its magic number starts with bytes "
                         f"0x{buf[0]:02x} 0x{buf[1]:02x}, expected 0x00 0x00")
    code, ndim = buf[2], buf[3]
    if code not in TYPE_CODES:
        known = ", ".join(f"0x{c:02X}" for c in TYPE_CODES)
        raise ValueError(f"{name}: unknown IDX type code 0x{code:02X} (known: {known})")
    start = 4 + 4 * ndim
    if len(buf) < start:
        raise ValueError(f"{name}: truncated header: {ndim} dimensions need {start} bytes, the file has {len(buf)}")
    dims = tuple(int(d) for d in np.frombuffer(buf, dtype=">u4", count=ndim, offset=4))
    dtype = TYPE_CODES[code]
    expected = math.prod(dims) * dtype.itemsize  # Python ints: no overflow however large the header claims
    actual = len(buf) - start
    if actual != expected:
        what = "truncated" if actual < expected else "has trailing bytes"
        raise ValueError(f"{name}: {what}: the header promises shape {dims} of {dtype.name} "
                         f"({expected} data bytes), the file holds {actual}")
    data = np.frombuffer(buf, dtype=dtype, offset=start).reshape(dims)
    return data.astype(dtype.newbyteorder("="))  # a writeable copy in the machine's byte order


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file, raw or gzipped (detected from its first bytes), into an array of its shape.

    Raises FileNotFoundError for a missing file and ValueError, naming the file, for a bad magic
    number, an unknown type code, a corrupt gzip stream, or data shorter or longer than the header says.
    """
    path = os.fspath(path)
    return parse_idx(_read_bytes(path), path)


def write_idx(path: str | os.PathLike, array) -> None:
    """Write ``array`` as an IDX file, gzipped if ``path`` ends in ``.gz``.

    The dtype must be one of uint8, int8, int16, int32, float32, float64 (any byte order); every
    dimension must be below 2³², and there are at most 255 of them.
    """
    path = os.fspath(path)
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    codes = {t.newbyteorder("="): c for c, t in TYPE_CODES.items()}
    if native not in codes:
        names = ", ".join(t.newbyteorder("=").name for t in TYPE_CODES.values())
        raise TypeError(f"IDX stores only {names}; got dtype {array.dtype}")
    if array.ndim > 255 or any(d >= 2**32 for d in array.shape):
        raise ValueError(f"IDX cannot store shape {array.shape} (at most 255 dims, each < 2**32)")
    header = bytes([0, 0, codes[native], array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    body = np.ascontiguousarray(array, dtype=TYPE_CODES[codes[native]]).tobytes()
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + body)


def _md5(path: str) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_file(url: str, path: str | os.PathLike, timeout: float = DOWNLOAD_TIMEOUT,
                  md5: str | None = None) -> str:
    """Fetch ``url`` into ``path`` atomically and check that it is an IDX file; returns the path.

    md5: the expected MD5 hex digest of the body, checked when given.

    The body goes to a temporary file in the target's folder, which is renamed onto ``path`` only
    once complete and valid; on any failure the temporary file is removed, nothing is left at
    ``path``, and DownloadError names the URL.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".part")
    try:
        try:
            with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=timeout) as response:
                shutil.copyfileobj(response, f)
                promised, received = response.headers.get("Content-Length"), f.tell()
        except urllib.error.HTTPError as err:
            raise DownloadError(f"could not download {url}: HTTP {err.code} {err.reason}") from None
        except urllib.error.URLError as err:
            raise DownloadError(f"could not download {url}: {err.reason} (is this machine online?)") from None
        except (OSError, http.client.HTTPException) as err:  # a timeout, a dropped connection, a full disk
            raise DownloadError(f"could not download {url}: {type(err).__name__}: {err}") from None
        if promised is not None and received != int(promised):
            raise DownloadError(f"could not download {url}: the connection closed after {received} "
                                f"of {promised} bytes")
        if md5 is not None and _md5(tmp) != md5.lower():
            raise DownloadError(f"downloaded {url}, but its MD5 {_md5(tmp)} is not the expected {md5.lower()}")
        try:
            read_idx(tmp)  # an HTML error page or a damaged body must not pass as data
        except ValueError as err:
            raise DownloadError(f"downloaded {url}, but it is not a valid IDX file: {err}") from None
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def find_file(root: str | os.PathLike, stem: str) -> str | None:
    """The path of ``stem.gz`` or ``stem`` (uncompressed) in ``root``, whichever exists first, else None."""
    for name in (stem + ".gz", stem):
        path = os.path.join(os.fspath(root), name)
        if os.path.isfile(path):
            return path
    return None


def load_mnist(root: str | os.PathLike, split: str = "train", download: bool = False,
               base_url: str = MNIST_URL) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 (N, H, W) and labels uint8 (N,) of one split of an MNIST-format data set.

    root: the folder holding the standard file names (``train-images-idx3-ubyte.gz`` etc., or the
    same names uncompressed). split: "train" or "test" (the ``t10k-`` files). download: fetch the
    missing files of this split from ``base_url + name + ".gz"`` into ``root`` (default: MNIST,
    each file checked against ``MNIST_MD5``);
    without it a missing file raises FileNotFoundError saying where it was looked for.
    """
    if split not in FILES:
        raise ValueError(f"split must be one of {', '.join(FILES)}, got {split!r}")
    root = os.fspath(root)
    arrays = []
    for stem in FILES[split]:
        path = find_file(root, stem)
        if path is None and download:
            url = base_url.rstrip("/") + "/" + stem + ".gz"
            md5 = MNIST_MD5[stem + ".gz"] if base_url == MNIST_URL else None
            path = download_file(url, os.path.join(root, stem + ".gz"), md5=md5)
        if path is None:
            raise FileNotFoundError(
                f"no {stem}.gz or {stem} in {root}; for Fashion-MNIST install Debian's dataset-fashion-mnist "
                f"(it fills {FASHION_MNIST_DIR}), or pass download=True to fetch MNIST from {base_url}")
        arrays.append(read_idx(path))
    images, labels = arrays
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(f"{FILES[split][0]} in {root}: expected uint8 images (N, H, W), "
                         f"got {images.dtype} {images.shape}")
    if labels.dtype != np.uint8 or labels.shape != images.shape[:1]:
        raise ValueError(f"{FILES[split][1]} in {root}: expected {images.shape[0]} uint8 labels, "
                         f"got {labels.dtype} {labels.shape}")
    return images, labels


def class_names(root, n_classes: int) -> list[str]:
    """Names of labels 0..K−1: Fashion-MNIST's when the folder's name says "fashion", else the digits "0", "1", …"""
    if "fashion" in os.path.basename(os.path.normpath(os.fspath(root))).lower() and n_classes == 10:
        return list(FASHION_MNIST_CLASSES)
    return [str(k) for k in range(n_classes)]


def images_to_vectors(images, dtype="float32") -> np.ndarray:
    """uint8 images (N, H, W) -> training vectors (N, H·W) with x = p/127.5 − 1 ∈ [−1, 1]."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise TypeError(f"images must be uint8 of shape (N, H, W), got {images.dtype} {images.shape}")
    x = images.reshape(images.shape[0], -1).astype(dtype)  # (N, D)
    return x / 127.5 - 1.0  # a Python float keeps the dtype


def vectors_to_images(vectors, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Vectors (N, D) on the [−1, 1] scale -> uint8 images (N, H, W), p = round((x + 1)·127.5).

    Values outside [−1, 1] (a sampler may overshoot) are clipped to the pixel range 0..255, the
    only values a byte can hold. shape: (H, W); None means square, H = W = √D.
    """
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"vectors must have shape (N, D), got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("vectors contain non-finite values (NaN or inf)")
    if shape is None:
        side = math.isqrt(x.shape[1])
        if side * side != x.shape[1]:
            raise ValueError(f"D = {x.shape[1]} is not a square number of pixels; pass shape=(H, W)")
        shape = (side, side)
    if shape[0] * shape[1] != x.shape[1]:
        raise ValueError(f"shape {tuple(shape)} does not hold D = {x.shape[1]} pixels")
    pixels = np.clip(np.rint((x + 1.0) * 127.5), 0, 255).astype(np.uint8)  # (N, D)
    return pixels.reshape(x.shape[0], *shape)
