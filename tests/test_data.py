"""Tests of npdiff.data: the heart formula, the toy sets' distributions, standardisation, loading."""

import math

import numpy as np
import pytest

from npdiff import data


def rng(seed=0):
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------- heart


def test_heart_from_theta_matches_hand_values():
    theta = np.array([0.0, math.pi / 2, math.pi, 3 * math.pi / 2])
    # θ=0: x=0, y=(13−5−2−1)/5=1; θ=π/2: x=16/5, y=(0+5−0−1)/5=0.8;
    # θ=π: x=0, y=(−13−5+2−1)/5=−3.4; θ=3π/2: x=−16/5, y=0.8
    expected = np.array([[0.0, 1.0], [3.2, 0.8], [0.0, -3.4], [-3.2, 0.8]])
    np.testing.assert_allclose(data.heart_from_theta(theta), expected, atol=1e-12)


def test_heart_from_theta_general_angle():
    t = 0.7
    x = 16 * math.sin(t) ** 3 / 5
    y = (13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)) / 5
    np.testing.assert_allclose(data.heart_from_theta(np.array([t])), [[x, y]], rtol=1e-14)


def test_heart_uses_uniform_angles_from_rng():
    theta = rng(3).uniform(0.0, 2 * math.pi, size=50)
    np.testing.assert_array_equal(data.heart(50, rng(3)), data.heart_from_theta(theta))
    assert data.HEART_TRAIN_SIZE == 8000


def test_heart_curve_is_deterministic_and_dense():
    c = data.heart_curve(20000)
    assert c.shape == (20000, 2) and c.dtype == np.float64
    np.testing.assert_array_equal(c, data.heart_curve(20000))
    np.testing.assert_allclose(c[0], [0.0, 1.0], atol=1e-12)  # θ = 0 first, 2π excluded
    steps = np.linalg.norm(np.diff(c, axis=0), axis=1)
    assert steps.max() < 0.01


# ----------------------------------------------------------------------------- toy sets


@pytest.mark.parametrize("name", list(data.TOY_SETS))
def test_toy_set_shape_dtype_and_determinism(name):
    x = data.make(name, 257, rng(1))
    assert x.shape == (257, 2) and x.dtype == np.float64 and np.isfinite(x).all()
    np.testing.assert_array_equal(x, data.make(name, 257, rng(1)))
    assert not np.array_equal(x, data.make(name, 257, rng(2)))
    assert data.make(name, 1, rng(0)).shape == (1, 2)


def test_eight_gaussians_has_eight_modes_at_scaled_centres():
    x = data.eight_gaussians(8000, rng())
    angles = np.arange(8) * math.pi / 4
    centres = 4.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1) / 1.414
    d = np.linalg.norm(x[:, None, :] - centres[None], axis=2)  # (N, 8)
    label = d.argmin(axis=1)
    counts = np.bincount(label, minlength=8)
    assert counts.min() > 850 and counts.max() < 1150  # 1000 ± ~5σ each
    for k in range(8):
        pts = x[label == k]
        np.testing.assert_allclose(pts.mean(axis=0), centres[k], atol=0.05)
        np.testing.assert_allclose(pts.std(axis=0), 0.5 / 1.414, rtol=0.1)
    np.testing.assert_allclose(centres[0], [2.8289, 0.0], atol=1e-4)


def test_circles_radii_and_halves():
    x = data.circles(4000, rng())
    r = np.linalg.norm(x, axis=1)
    inner, outer = r[r < 2.25], r[r >= 2.25]  # the boundary is ~3 noise σ from both circles
    assert abs(inner.size - 2000) < 30
    np.testing.assert_allclose([inner.mean(), outer.mean()], [1.5, 3.0], atol=0.03)
    np.testing.assert_allclose(outer.std(), 3 * 0.08, rtol=0.1)


def test_checkerboard_support_is_the_even_squares():
    x = data.checkerboard(4000, rng())
    assert x.min() >= -4.0 and x.max() < 4.0
    cells = np.floor(x / 2).astype(int)
    assert np.all((cells[:, 0] + cells[:, 1]) % 2 == 0)
    occupied = {tuple(c) for c in cells}
    assert len(occupied) == 8
    assert abs(x[:, 0].mean()) < 0.1 and abs(x[:, 1].mean()) < 0.1


def test_moons_noiseless_geometry():
    x = data.moons(1000, rng(), noise=0.0)
    raw = (x - np.array([-1.0, -0.2])) / 2.0
    # upper moon: upper unit half circle; lower moon: lower half of the unit circle about (1, 0.5)
    upper = np.abs(np.linalg.norm(raw, axis=1) - 1.0) < 1e-12
    lower = np.abs(np.linalg.norm(raw - [1.0, 0.5], axis=1) - 1.0) < 1e-12
    assert np.all(upper ^ lower) and upper.sum() == 500
    assert raw[upper, 1].min() >= 0.0 and raw[lower, 1].max() <= 0.5


def test_moons_default_noise_level():
    x = data.moons(4000, rng())
    clean = data.moons(4000, rng(), noise=0.0)  # same permutation stream, noise differs
    np.testing.assert_allclose((x - clean).std(), 2 * 0.1, rtol=0.05)


def test_swissroll_noiseless_is_the_spiral():
    x = data.swissroll(2000, rng(), noise=0.0) * 5.0
    t = np.linalg.norm(x, axis=1)  # |(t cos t, t sin t)| = t
    assert t.min() >= 1.5 * math.pi - 1e-9 and t.max() <= 4.5 * math.pi + 1e-9
    np.testing.assert_allclose(x, np.stack([t * np.cos(t), t * np.sin(t)], axis=1), atol=1e-9)


def test_make_rejects_unknown_name_and_bad_n():
    with pytest.raises(ValueError, match=r"unknown dataset 'spiral'.*heart, 8gaussians, moons"):
        data.make("spiral", 10, rng())
    with pytest.raises(ValueError, match="n must be >= 1"):
        data.make("moons", 0, rng())
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        data.make("heart", 10, 0)


# ----------------------------------------------------------------------------- scaling and files


def test_standardize_round_trip():
    x = rng().normal([3.0, -1.0, 10.0], [0.5, 2.0, 7.0], size=(500, 3))
    z, mean, std = data.standardize(x)
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(z.std(axis=0), 1.0, rtol=1e-12)
    assert mean.shape == std.shape == (3,)
    np.testing.assert_allclose(data.unstandardize(z, mean, std), x, rtol=1e-12)


def test_standardize_refuses_constant_dimension():
    x = np.c_[np.arange(5.0), np.ones(5)]
    with pytest.raises(ValueError, match=r"dimension\(s\) \[1\] are constant"):
        data.standardize(x)


def test_load_points_npy_round_trip(tmp_path):
    x = rng().standard_normal((40, 3)).astype(np.float32)
    np.save(tmp_path / "p.npy", x)
    y = data.load_points(tmp_path / "p.npy")
    assert y.dtype == np.float64 and y.shape == (40, 3)
    np.testing.assert_array_equal(y, x.astype(np.float64))


def test_load_points_csv_with_and_without_header(tmp_path):
    x = rng().standard_normal((25, 2))
    np.savetxt(tmp_path / "h.csv", x, delimiter=",", header="x,y", comments="", fmt="%.17g")
    np.savetxt(tmp_path / "n.csv", x, delimiter=",", fmt="%.17g")
    np.testing.assert_array_equal(data.load_points(tmp_path / "h.csv"), x)
    np.testing.assert_array_equal(data.load_points(str(tmp_path / "n.csv")), x)
    (tmp_path / "one.csv").write_text("v\n1\n2\n3\n")
    assert data.load_points(tmp_path / "one.csv").shape == (3, 1)


def test_load_points_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such data file"):
        data.load_points(tmp_path / "missing.npy")
    (tmp_path / "p.txt").write_text("1,2\n")
    with pytest.raises(ValueError, match=r"expected a \.npy or \.csv"):
        data.load_points(tmp_path / "p.txt")
    np.save(tmp_path / "flat.npy", np.arange(5.0))
    with pytest.raises(ValueError, match=r"expected 2-D points"):
        data.load_points(tmp_path / "flat.npy")
    np.save(tmp_path / "nan.npy", np.array([[0.0, 1.0], [np.nan, 2.0]]))
    with pytest.raises(ValueError, match="non-finite value.*row 1, column 0"):
        data.load_points(tmp_path / "nan.npy")
    (tmp_path / "inf.csv").write_text("a,b\n1,2\n3,inf\n")
    with pytest.raises(ValueError, match="non-finite"):
        data.load_points(tmp_path / "inf.csv")
    (tmp_path / "header_only.csv").write_text("x,y\n")
    with pytest.raises(ValueError, match="holds no points"):
        data.load_points(tmp_path / "header_only.csv")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="holds Python objects"):
        data.load_points(tmp_path / "obj.npy")
    (tmp_path / "ragged.csv").write_text("1,2\n3\n")
    with pytest.raises(ValueError, match="not a comma-separated table"):
        data.load_points(tmp_path / "ragged.csv")


@pytest.mark.parametrize("name, content, message", [
    ("text.npy", b"1,2\n3,4\n", "not a .npy file"),
    ("random.npy", bytes(range(7, 200)), "not a .npy file"),
    ("empty.npy", b"", "not a .npy file"),
    ("truncated.npy", None, "damaged or truncated"),
    ("archive.npy", None, "an .npz archive"),
    ("binary.csv", b"\xff\xfe\x00\x01garbage", "not a UTF-8 text file"),
])
def test_load_points_names_what_the_bytes_are(tmp_path, name, content, message):
    path = tmp_path / name
    if name == "truncated.npy":
        np.save(path, np.ones((100, 2)))
        path.write_bytes(path.read_bytes()[:300])
    elif name == "archive.npy":
        with open(path, "wb") as f:
            np.savez(f, x=np.ones((3, 2)))
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as err:
        data.load_points(path)
    assert name in str(err.value)


def test_load_points_refuses_complex_and_folders_and_overflow(tmp_path):
    np.save(tmp_path / "c.npy", np.ones((4, 2)) + 1j)
    with pytest.raises(ValueError, match="complex numbers"):  # astype(float64) would drop the imaginary part
        data.load_points(tmp_path / "c.npy")
    (tmp_path / "dir.npy").mkdir()
    with pytest.raises(ValueError, match="is a folder"):
        data.load_points(tmp_path / "dir.npy")
    np.save(tmp_path / "s.npy", np.array([["a", "b"]]))
    with pytest.raises(ValueError, match="does not hold numbers"):
        data.load_points(tmp_path / "s.npy")
    np.save(tmp_path / "b.npy", np.array([[True, False], [False, True]]))
    np.testing.assert_array_equal(data.load_points(tmp_path / "b.npy"), [[1.0, 0.0], [0.0, 1.0]])


def test_a_npy_header_promising_more_than_the_file_holds_is_refused_before_reading(tmp_path):
    path = tmp_path / "liar.npy"
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": (10**12, 2)})
        f.write(bytes(160))
    with pytest.raises(ValueError, match=r"header promises shape \(1000000000000, 2\) of float64 "
                                         r"\(16000000000000 bytes\), the file holds 160"):
        data.load_points(path)
