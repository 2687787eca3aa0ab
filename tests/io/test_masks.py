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
