"""Confusion-matrix arithmetic against hand-computed cases (mmsegmentation conventions)."""
import math

import numpy as np
import pytest

from pipeline.evaluation.metrics import compute_metrics, confusion_counts, threshold_prediction

pytestmark = pytest.mark.timeout(30)

IGN = 255

# Hand case, C = 3. The gt-ignore pixel (row 1, col 2) is predicted 2 and must not count anywhere;
# the predicted-ignore pixel (row 0, col 3) is a miss for gt class 1.
GT = np.array([[0, 0, 1, 1], [2, 2, IGN, 1]], dtype=np.uint8)
PRED = np.array([[0, 1, 1, IGN], [2, 0, 2, 1]], dtype=np.uint8)


def test_confusion_of_hand_case():
    cm = confusion_counts(GT, PRED, 3, IGN, IGN)
    expected = np.array([
        # pred 0, 1, 2, ignore
        [1, 1, 0, 0],  # gt 0
        [0, 2, 0, 1],  # gt 1
        [1, 0, 1, 0],  # gt 2
    ])
    np.testing.assert_array_equal(cm, expected)


def test_metrics_of_hand_case():
    m = compute_metrics(confusion_counts(GT, PRED, 3, IGN, IGN))
    # class 0: tp 1, gt 2, pred 2 -> 1/3; class 1: tp 2, gt 3 (one ignored pred), pred 3 -> 2/4;
    # class 2: tp 1, gt 2, pred 1 (the pred at the gt-ignore pixel is not counted) -> 1/2
    np.testing.assert_allclose(m.iou, [1 / 3, 1 / 2, 1 / 2])
    assert m.miou == pytest.approx((1 / 3 + 1 / 2 + 1 / 2) / 3)
    assert m.pixel_accuracy == pytest.approx(4 / 7)
    assert m.coverage == pytest.approx(6 / 7)
    assert m.covered_accuracy == pytest.approx(4 / 6)
    assert m.fwiou == pytest.approx(2 / 7 * 1 / 3 + 3 / 7 * 1 / 2 + 2 / 7 * 1 / 2)
    np.testing.assert_allclose(m.accuracy, [1 / 2, 2 / 3, 1 / 2])
    assert m.valid_pixels == 7
    np.testing.assert_array_equal(m.gt_pixels, [2, 3, 2])
    np.testing.assert_array_equal(m.pred_pixels, [2, 3, 1])


def test_absent_class_is_nan_and_left_out_of_mean():
    gt = np.array([[0, 1]])
    pred = np.array([[0, 1]])
    m = compute_metrics(confusion_counts(gt, pred, 4, IGN, IGN))
    assert m.iou[0] == 1.0 and m.iou[1] == 1.0
    assert math.isnan(m.iou[2]) and math.isnan(m.iou[3])
    assert m.miou == 1.0  # not (1 + 1 + 0 + 0) / 4
    assert math.isnan(m.accuracy[2])


def test_class_predicted_but_not_in_gt_counts_as_zero():
    gt = np.array([[0, 0, 0, 0]])
    pred = np.array([[0, 0, 0, 2]])
    m = compute_metrics(confusion_counts(gt, pred, 3, IGN, IGN))
    assert m.iou[0] == pytest.approx(3 / 4)
    assert m.iou[2] == 0.0
    assert math.isnan(m.iou[1])
    assert m.miou == pytest.approx((3 / 4 + 0) / 2)


def test_ignoring_a_wrong_pixel_keeps_it_a_miss():
    gt = np.array([[1, 1, 0, 0]])
    wrong = np.array([[1, 0, 0, 0]])
    ignored = np.array([[1, IGN, 0, 0]])
    m_wrong = compute_metrics(confusion_counts(gt, wrong, 2, IGN, IGN))
    m_ign = compute_metrics(confusion_counts(gt, ignored, 2, IGN, IGN))
    assert m_wrong.iou[1] == m_ign.iou[1] == pytest.approx(1 / 2)  # the gt-1 pixel is missed either way
    assert m_ign.iou[0] == 1.0 and m_wrong.iou[0] == pytest.approx(2 / 3)  # only the wrong label hurts class 0
    assert m_ign.pixel_accuracy == m_wrong.pixel_accuracy == pytest.approx(3 / 4)
    assert m_ign.coverage == pytest.approx(3 / 4) and m_wrong.coverage == 1.0
    assert m_ign.covered_accuracy == 1.0


def test_all_gt_ignored_gives_nan_scores():
    gt = np.full((2, 2), IGN)
    m = compute_metrics(confusion_counts(gt, np.zeros((2, 2)), 2, IGN, IGN))
    assert m.valid_pixels == 0
    assert math.isnan(m.miou) and math.isnan(m.pixel_accuracy) and math.isnan(m.coverage)


def test_accumulation_is_additive_and_uint16_ignore_works():
    rng = np.random.default_rng(1)
    gt = rng.integers(0, 5, size=(2, 9, 11)).astype(np.uint16)
    pred = rng.integers(0, 5, size=(2, 9, 11)).astype(np.uint16)
    pred[pred == 4] = 65535
    total = confusion_counts(gt[0], pred[0], 5, 99, 65535) + confusion_counts(gt[1], pred[1], 5, 99, 65535)
    np.testing.assert_array_equal(total, confusion_counts(gt, pred, 5, 99, 65535))
    assert total.sum() == gt.size
    assert total[:, 4].sum() == 0  # 4 was turned into ignore: nothing is predicted as class 4
    assert total[:, 5].sum() == int((pred == 65535).sum())


def test_values_outside_the_classes_are_rejected():
    with pytest.raises(ValueError, match="gt value 7"):
        confusion_counts(np.array([[7]]), np.array([[0]]), 3, IGN, IGN)
    with pytest.raises(ValueError, match="predicted value 5"):
        confusion_counts(np.array([[0]]), np.array([[5]]), 3, IGN, IGN)
    with pytest.raises(ValueError, match="shape"):
        confusion_counts(np.zeros((2, 2)), np.zeros((2, 3)), 3, IGN, IGN)


def test_threshold_prediction_uses_stored_uint8_confidence():
    pred = np.array([[1, 2, 0, IGN]], dtype=np.uint8)
    conf = np.array([[51, 50, 255, 200]], dtype=np.uint8)  # 51/255 == 0.2 exactly
    out = threshold_prediction(pred, conf, 0.2, IGN)
    np.testing.assert_array_equal(out, [[1, IGN, 0, IGN]])
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(threshold_prediction(pred, conf, 0.0, IGN), pred)
