"""Image figures: the mosaic's layout, the class rows, and the GIF of images forming from noise."""

import numpy as np

from npdiff.images import idx, image_viz


def test_mosaic_places_each_image_in_its_cell_with_black_gaps():
    vectors = np.stack([np.full(6, v) for v in (-1.0, 0.0, 1.0)])  # three 2×3 images: black, grey, white
    m = image_viz.mosaic(vectors, (2, 3), columns=2)
    assert m.shape == (2 * 3 + 1, 2 * 4 + 1)
    assert (m[1:3, 1:4] == 0).all() and (m[1:3, 5:8] == 128).all() and (m[4:6, 1:4] == 255).all()
    assert (m[0] == 0).all() and (m[:, 4] == 0).all()  # the gaps
    assert image_viz.mosaic(vectors, (2, 3), columns=2, scale=3).shape == (21, 27)


def test_class_rows_and_forming_gif_write_files(tmp_path):
    import imageio.v3 as iio

    rng = np.random.default_rng(0)
    x, labels = rng.uniform(-1, 1, (30, 16)), np.arange(30) % 3
    png = image_viz.class_rows_png(tmp_path / "rows.png", x, labels, ["a", "b", "c"], (4, 4), per_class=5)
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    xs = rng.uniform(-2, 2, (7, 6, 16))  # 7 states of 6 images; values beyond [−1, 1] are clipped
    gif = iio.imread(image_viz.forming_gif(tmp_path / "f.gif", xs, (4, 4), columns=3, scale=2, hold=2))
    assert gif.shape[0] == 7 and gif.shape[1:3] == (2 * (2 * 5 + 1), 2 * (3 * 5 + 1))


def test_class_names():
    assert idx.class_names("/usr/share/datasets/fashion-mnist/", 10)[9] == "Ankle boot"
    assert idx.class_names("/home/me/.cache/npdiff/mnist", 10) == [str(k) for k in range(10)]
