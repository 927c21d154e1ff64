"""npdiff.images.idx: the IDX byte layout, its error messages, load_mnist, the download path (against a local
HTTP server on 127.0.0.1), the [−1, 1] image scaling, and the real Fashion-MNIST files when installed."""

import functools
import gzip
import hashlib
import http.server
import os
import socket
import threading
import zlib

import numpy as np
import pytest

from npdiff.images import idx

DTYPES = {0x08: "uint8", 0x09: "int8", 0x0B: "int16", 0x0C: "int32", 0x0D: "float32", 0x0E: "float64"}


def example(dtype: str, shape=(3, 4, 5)) -> np.ndarray:
    """Values that use the type's range: negatives, extremes, fractions."""
    rng = np.random.default_rng(0)
    if np.dtype(dtype).kind == "f":
        x = rng.standard_normal(shape) * 1e3
    else:
        info = np.iinfo(dtype)
        x = rng.integers(info.min, info.max, size=shape, endpoint=True)
        x.flat[:2] = info.min, info.max
    return x.astype(dtype)


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("code", sorted(DTYPES))
def test_round_trip_every_type_code_raw_and_gz(tmp_path, code, suffix):
    x = example(DTYPES[code])
    path = tmp_path / f"x.idx{suffix}"
    idx.write_idx(path, x)
    raw = path.read_bytes()
    if suffix:
        assert raw[:2] == b"\x1f\x8b"
        raw = gzip.decompress(raw)
    assert raw[:4] == bytes([0, 0, code, 3])
    y = idx.read_idx(path)
    assert y.dtype == np.dtype(DTYPES[code]) and y.dtype.isnative and y.flags.writeable
    np.testing.assert_array_equal(y, x)


def test_bytes_match_the_specification_big_endian(tmp_path):
    header = b"\x00\x00\x0b\x02" + b"\x00\x00\x00\x02" + b"\x00\x00\x00\x03"  # int16, shape (2, 3)
    body = b"".join(v.to_bytes(2, "big", signed=True) for v in (1, -2, 300, -32768, 32767, 0))
    (tmp_path / "a.idx").write_bytes(header + body)
    np.testing.assert_array_equal(idx.read_idx(tmp_path / "a.idx"), [[1, -2, 300], [-32768, 32767, 0]])
    idx.write_idx(tmp_path / "b.idx", np.array([[1, -2, 300], [-32768, 32767, 0]], dtype=">i2"))
    assert (tmp_path / "b.idx").read_bytes() == header + body


def test_gzip_is_recognised_by_content_not_name(tmp_path):
    idx.write_idx(tmp_path / "x.gz", np.arange(6, dtype=np.uint8))
    os.rename(tmp_path / "x.gz", tmp_path / "x-idx1-ubyte")
    np.testing.assert_array_equal(idx.read_idx(tmp_path / "x-idx1-ubyte"), np.arange(6))


def test_scalar_and_empty_arrays_round_trip(tmp_path):
    idx.write_idx(tmp_path / "s", np.float64(-2.5))
    assert idx.read_idx(tmp_path / "s").shape == () and idx.read_idx(tmp_path / "s") == -2.5
    idx.write_idx(tmp_path / "e", np.zeros((0, 28, 28), dtype=np.uint8))
    assert idx.read_idx(tmp_path / "e").shape == (0, 28, 28)


def test_write_refuses_a_type_idx_cannot_hold(tmp_path):
    with pytest.raises(TypeError, match="int64"):
        idx.write_idx(tmp_path / "x", np.arange(3, dtype=np.int64))
    assert not (tmp_path / "x").exists()


GOOD = bytes([0, 0, 0x08, 2, 0, 0, 0, 2, 0, 0, 0, 3]) + bytes(range(6))


@pytest.mark.parametrize("content, message", [
    (b"", "too short"),
    (b"\x00\x00", "too short"),
    (b"PK\x03\x04" + GOOD[4:], r"magic number .* 0x50 0x4b"),
    (bytes([0, 0, 0x0A, 1, 0, 0, 0, 1, 0]), "unknown IDX type code 0x0A"),
    (GOOD[:9], "truncated header"),
    (GOOD[:-1], r"truncated: the header promises shape \(2, 3\) of uint8 \(6 data bytes\), the file holds 5"),
    (GOOD + b"\x00", "trailing bytes"),
    (gzip.compress(GOOD)[:-6], "corrupt or truncated gzip"),
    (gzip.compress(GOOD)[:-1] + b"\xff", "corrupt or truncated gzip"),
], ids=["empty", "2-bytes", "zip-magic", "type-0x0A", "cut-header", "cut-data", "trailing", "cut-gzip", "bad-crc"])
def test_corrupt_files_raise_value_errors_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad-idx"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as info:
        idx.read_idx(path)
    assert str(path) in str(info.value)


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        idx.read_idx(tmp_path / "absent")


def write_split(root, split, n, *, gz=True, labels_n=None, shape=(28, 28)):
    """Tiny files of one split: image k is filled with the value k, its label is k % 10."""
    images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None], (n, *shape)).copy()
    labels = (np.arange(n if labels_n is None else labels_n) % 10).astype(np.uint8)
    img_name, lab_name = idx.FILES[split]
    ext = ".gz" if gz else ""
    os.makedirs(root, exist_ok=True)
    idx.write_idx(os.path.join(root, img_name + ext), images)
    idx.write_idx(os.path.join(root, lab_name + ext), labels)
    return images, labels


def test_load_mnist_reads_gz_and_uncompressed_names(tmp_path):
    train = write_split(tmp_path, "train", 7, gz=True)
    test = write_split(tmp_path, "test", 3, gz=False)
    for split, (images, labels) in (("train", train), ("test", test)):
        x, y = idx.load_mnist(tmp_path, split)
        assert x.dtype == np.uint8 and x.shape == images.shape and y.dtype == np.uint8
        np.testing.assert_array_equal(x, images)
        np.testing.assert_array_equal(y, labels)


def test_load_mnist_errors_name_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="split must be one of train, test"):
        idx.load_mnist(tmp_path, "validation")
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte.gz or train-images-idx3-ubyte"):
        idx.load_mnist(tmp_path, "train")
    write_split(tmp_path, "train", 5, labels_n=4)
    with pytest.raises(ValueError, match="expected 5 uint8 labels"):
        idx.load_mnist(tmp_path, "train")
    idx.write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((2, 784), dtype=np.uint8))
    idx.write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(2, dtype=np.uint8))
    with pytest.raises(ValueError, match=r"uint8 images \(N, H, W\)"):
        idx.load_mnist(tmp_path, "test")


def test_image_scaling_maps_bytes_to_minus_one_one_and_back():
    images = np.array([[[0, 255], [128, 1]]], dtype=np.uint8)  # (1, 2, 2)
    x = idx.images_to_vectors(images)
    assert x.dtype == np.float32 and x.shape == (1, 4)
    np.testing.assert_allclose(x, [[-1.0, 1.0, 128 / 127.5 - 1, 1 / 127.5 - 1]], rtol=0, atol=1e-7)
    assert idx.images_to_vectors(images, dtype="float64").dtype == np.float64
    all_bytes = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    np.testing.assert_array_equal(idx.vectors_to_images(idx.images_to_vectors(all_bytes)), all_bytes)
    np.testing.assert_array_equal(idx.vectors_to_images([[-3.0, 2.0, 0.0, -1.0]]), [[[0, 255], [128, 0]]])


def test_image_scaling_rejects_wrong_inputs():
    with pytest.raises(TypeError, match="uint8"):
        idx.images_to_vectors(np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="not a square"):
        idx.vectors_to_images(np.zeros((2, 6)))
    assert idx.vectors_to_images(np.zeros((2, 6)), shape=(2, 3)).shape == (2, 2, 3)
    with pytest.raises(ValueError, match="non-finite"):
        idx.vectors_to_images(np.full((1, 4), np.nan))


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path.endswith("/dropped.gz"):  # promises 1000 bytes, sends 10, hangs up
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(gzip.compress(GOOD)[:10])
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture
def server(tmp_path):
    """An HTTP server on 127.0.0.1 (free port) serving tmp_path/served; yields (base_url, folder)."""
    folder = tmp_path / "served"
    folder.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                            functools.partial(QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/mnist/", folder / "mnist"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_download_fetches_missing_files_into_root(server, tmp_path):
    base_url, served = server
    images, labels = write_split(served, "train", 6)
    root = tmp_path / "data"
    x, y = idx.load_mnist(root, "train", download=True, base_url=base_url)
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, labels)
    assert sorted(os.listdir(root)) == ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]
    for name in os.listdir(root):
        assert (root / name).read_bytes() == (served / name).read_bytes()
    (served / "train-images-idx3-ubyte.gz").unlink()  # present files are not fetched again
    np.testing.assert_array_equal(idx.load_mnist(root, "train", download=True, base_url=base_url)[0], images)


def test_download_404_leaves_no_partial_file_and_names_the_url(server, tmp_path):
    base_url, served = server
    write_split(served, "test", 4)
    (served / "t10k-labels-idx1-ubyte.gz").unlink()
    root = tmp_path / "data"
    with pytest.raises(idx.DownloadError, match="HTTP 404") as info:
        idx.load_mnist(root, "test", download=True, base_url=base_url)
    assert base_url + "t10k-labels-idx1-ubyte.gz" in str(info.value)
    assert os.listdir(root) == ["t10k-images-idx3-ubyte.gz"]  # the file that existed arrived whole


@pytest.mark.parametrize("body", [b"<html>Access denied</html>", gzip.compress(GOOD)[:-3]], ids=["html", "cut-gzip"])
def test_download_of_a_non_idx_body_is_refused_and_removed(server, tmp_path, body):
    base_url, served = server
    served.mkdir()
    (served / "blob.gz").write_bytes(body)
    target = tmp_path / "data" / "blob.gz"
    with pytest.raises(idx.DownloadError, match="not a valid IDX file"):
        idx.download_file(base_url + "blob.gz", target)
    assert os.listdir(tmp_path / "data") == []


def test_download_checks_the_md5_when_given(server, tmp_path):
    base_url, served = server
    served.mkdir()
    idx.write_idx(served / "x.gz", np.arange(5, dtype=np.uint8))
    digest = hashlib.md5((served / "x.gz").read_bytes()).hexdigest()
    with pytest.raises(idx.DownloadError, match=f"its MD5 {digest} is not the expected 0{{32}}"):
        idx.download_file(base_url + "x.gz", tmp_path / "data" / "x.gz", md5="0" * 32)
    assert os.listdir(tmp_path / "data") == []
    idx.download_file(base_url + "x.gz", tmp_path / "data" / "x.gz", md5=digest.upper())
    np.testing.assert_array_equal(idx.read_idx(tmp_path / "data" / "x.gz"), np.arange(5))


def test_download_cut_off_mid_body_is_refused_and_removed(server, tmp_path):
    base_url, _ = server
    with pytest.raises(idx.DownloadError, match=f"could not download {base_url}dropped.gz: the connection closed after 10 of 1000 bytes"):
        idx.download_file(base_url + "dropped.gz", tmp_path / "data" / "dropped.gz")
    assert os.listdir(tmp_path / "data") == []


def test_download_without_a_server_names_the_url(tmp_path):
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x.gz"
    with pytest.raises(idx.DownloadError, match=f"could not download {url}"):
        idx.download_file(url, tmp_path / "x.gz", timeout=5)
    assert os.listdir(tmp_path) == []


FASHION = [os.path.join(idx.FASHION_MNIST_DIR, stem + ".gz") for split in idx.FILES for stem in idx.FILES[split]]


@pytest.mark.skipif(not all(map(os.path.isfile, FASHION)),
                    reason=f"Fashion-MNIST is not installed in {idx.FASHION_MNIST_DIR} (Debian: dataset-fashion-mnist)")
def test_real_fashion_mnist_files():
    x, y = idx.load_mnist(idx.FASHION_MNIST_DIR, "train")
    assert x.shape == (60000, 28, 28) and x.dtype == np.uint8 and y.shape == (60000,)
    np.testing.assert_array_equal(np.bincount(y), np.full(10, 6000))  # 10 balanced classes
    np.testing.assert_array_equal(y[:10], [9, 0, 0, 3, 0, 2, 7, 2, 5, 5])  # ankle boot, T-shirt, …
    xt, yt = idx.load_mnist(idx.FASHION_MNIST_DIR, "test")
    assert xt.shape == (10000, 28, 28) and np.bincount(yt).tolist() == [1000] * 10
    assert x.min() == 0 and x.max() == 255 and 60 < x.mean() < 80  # mostly dark background


def _bomb(path, forge_trailer: bool = False) -> None:
    """A gzipped IDX file whose header promises 4×4 bytes, followed by 64 MiB of zeros (65 kB on disk); with
    forge_trailer, its gzip trailer's size is rewritten to the 28 bytes (12 of header, 16 of data) it promises."""
    body = bytes([0, 0, 0x08, 2]) + np.asarray((4, 4), ">u4").tobytes() + bytes(64 * 2**20)
    raw = bytearray(gzip.compress(body, compresslevel=9))
    if forge_trailer:
        raw[-4:] = (28).to_bytes(4, "little")
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("forge_trailer, message", [(False, "trailer declares"), (True, "trailing bytes")])
def test_a_gzip_bomb_is_refused_having_expanded_no_more_than_its_header_promises(tmp_path, monkeypatch, forge_trailer,
                                                                                 message):
    path = tmp_path / "bomb-idx.gz"
    _bomb(path, forge_trailer)
    expanded = []
    real = zlib.decompressobj

    class Counting:
        def __init__(self, *args):
            self.inner = real(*args)

        def decompress(self, data, max_length=0):
            out = self.inner.decompress(data, max_length)
            expanded.append(len(out))
            return out

        def __getattr__(self, name):
            return getattr(self.inner, name)

    monkeypatch.setattr(idx.zlib, "decompressobj", Counting)
    with pytest.raises(ValueError, match=message):
        idx.read_idx(path)
    assert sum(expanded) <= 29, sum(expanded)  # the 28 bytes promised and one past them


def test_an_idx_header_beyond_the_cap_is_refused_before_its_data_are_expanded(tmp_path):
    path = tmp_path / "huge-idx.gz"
    path.write_bytes(gzip.compress(bytes([0, 0, 0x08, 3]) + np.asarray((2**24, 256, 256), ">u4").tobytes()))
    with pytest.raises(ValueError, match=r"promises 1099511627792 bytes, more than the 2147483648 bytes"):
        idx.read_idx(path)
