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
