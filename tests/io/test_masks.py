import io

import numpy as np
from PIL import Image

from pipeline.evaluation.outputs import decode_label_png
from pipeline.io.masks import LabelFormat, encode_masks


def test_uint8_labels_ignore_and_counts():
    pred = np.array([[0, 1, 1], [2, 2, 2]], dtype=np.int64)
    conf = np.array([[0.9, 0.2, 0.8], [1.0, 0.5, 0.49]], dtype=np.float32)
    fmt = LabelFormat(num_classes=3, min_confidence=0.5, compression=1)
    enc = encode_masks(pred, conf, fmt)
    labels = decode_label_png(enc.label_png)
    assert Image.open(io.BytesIO(enc.label_png)).mode == "L"
    np.testing.assert_array_equal(labels, [[0, 255, 1], [2, 2, 255]])
    assert enc.ignored_pixels == 2
    assert enc.classes == [0, 1, 2] and enc.class_pixels == [1, 1, 2]
    conf_png = np.asarray(Image.open(io.BytesIO(enc.conf_png)))
    np.testing.assert_array_equal(conf_png, np.rint(conf * 255).astype(np.uint8))
    assert abs(enc.mean_confidence - float(conf.mean())) < 1e-6


def test_many_classes_use_uint16():
    pred = np.array([[0, 300], [299, 1]], dtype=np.int64)
    fmt = LabelFormat(num_classes=301, min_confidence=0.0, compression=1)
    assert fmt.ignore_index == 65535 and fmt.dtype_name == "uint16"
    enc = encode_masks(pred, np.ones((2, 2), np.float32), fmt)
    assert Image.open(io.BytesIO(enc.label_png)).mode.startswith("I;16")
    np.testing.assert_array_equal(decode_label_png(enc.label_png), pred)
    assert enc.classes == [0, 1, 299, 300]


def test_255_classes_still_fit_uint8():
    fmt = LabelFormat(num_classes=255, min_confidence=0.0, compression=1)
    assert fmt.dtype_name == "uint8" and fmt.ignore_index == 255
    assert LabelFormat(num_classes=256, min_confidence=0.0, compression=1).dtype_name == "uint16"


def test_uint8_confidence_from_the_device_is_used_as_is():
    pred = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    conf = np.array([[230, 12], [255, 128]], dtype=np.uint8)
    ignored = np.array([[False, True], [False, False]])
    fmt = LabelFormat(num_classes=3, min_confidence=0.2, compression=1)
    enc = encode_masks(pred, conf, fmt, ignored=ignored, mean_confidence=0.6125)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(enc.conf_png))), conf)
    np.testing.assert_array_equal(decode_label_png(enc.label_png), [[0, 255], [2, 1]])
    assert enc.mean_confidence == 0.6125 and enc.ignored_pixels == 1
    assert enc.classes == [0, 1, 2] and enc.class_pixels == [1, 1, 1]


def test_palette_labels_read_back_like_gray():
    """labels.png_mode palette: mode P with the class colours; every reader sees the same indices."""
    from pipeline.io.masks import label_palette
    from pipeline.training import loader  # the training loader reads labels through decode_label_png

    rng = np.random.default_rng(0)
    pred = rng.integers(0, 150, (37, 53))
    conf = rng.random((37, 53)).astype(np.float32)
    colors = [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(150)]
    gray = encode_masks(pred, conf, LabelFormat(150, 0.3, 1))
    pal = encode_masks(pred, conf, LabelFormat(150, 0.3, 1, label_palette(colors, 150)))
    img = Image.open(io.BytesIO(pal.label_png))
    assert img.mode == "P"
    rgb = np.asarray(img.convert("RGB"))
    first = pred.flat[0] if conf.flat[0] >= 0.3 else None
    if first is not None:
        assert tuple(rgb[0, 0]) == colors[first]
    np.testing.assert_array_equal(decode_label_png(pal.label_png), decode_label_png(gray.label_png))
    assert loader.decode_label_png is decode_label_png
    assert pal.classes == gray.classes and pal.class_pixels == gray.class_pixels


def test_palette_refuses_uint16_labels():
    from pipeline.io.masks import label_palette
    import pytest

    with pytest.raises(ValueError, match="png_mode gray"):
        label_palette([(0, 0, 0)] * 300, 300)


def test_maps_are_stored_capped_and_read_back_at_the_image_size():
    from pipeline.io.masks import is_stored_size, resize_nearest, stored_size, to_image_size

    rng = np.random.default_rng(0)
    pred = np.repeat(np.repeat(rng.integers(0, 3, (6, 10)), 20, 0), 20, 1)  # (120, 200) regions
    conf = np.full(pred.shape, 0.75, np.float32)
    fmt = LabelFormat(num_classes=3, min_confidence=0.0, compression=1, max_side=50, confidence_max_side=25)
    enc = encode_masks(pred, conf, fmt)
    label, conf_png = decode_label_png(enc.label_png), np.asarray(Image.open(io.BytesIO(enc.conf_png)))
    assert label.shape == stored_size(120, 200, 50) == (30, 50) and conf_png.shape == (15, 25)
    assert sum(enc.class_pixels) == 120 * 200  # counts are the image's pixels, not the stored ones
    np.testing.assert_array_equal(enc.class_pixels, np.bincount(pred.ravel(), minlength=3)[enc.classes])
    back = to_image_size(label, 120, 200)
    assert back.shape == (120, 200) and (back == pred).mean() == 1.0  # 4-pixel-aligned regions survive exactly
    assert to_image_size(conf_png, 120, 200).shape == (120, 200) and is_stored_size((15, 25), 120, 200)
    assert not is_stored_size((30, 30), 120, 200)  # another aspect: not this image's map
    assert to_image_size(np.zeros((30, 30)), 120, 200).shape == (30, 30)  # left for the caller's size check
    np.testing.assert_array_equal(resize_nearest(np.arange(4).reshape(2, 2), 4, 4),
                                  [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]])


def test_counts_scale_to_the_image_exactly():
    from pipeline.io.masks import scale_counts

    scaled = scale_counts(np.array([3, 1, 0, 2]), 1000)
    assert scaled.sum() == 1000 and scaled[2] == 0 and scaled.tolist() == [500, 167, 0, 333]
