"""A batch of images of different sizes gives what one-at-a-time calls give."""
import numpy as np
import pytest

from pipeline.engine import Segmenter
from pipeline.errors import UserError

from tests.engine.golden_data import golden_config


@pytest.mark.parametrize("base", ["naclip", "sclip", "clearclip", "vanilla"])
def test_batched_equals_single(images, base):
    seg = Segmenter.from_config(golden_config([f"method.base={base}", "inference.max_crops_per_forward=5"]))
    batch = [images["astronaut"], images["chelsea"][:200, :300], images["coffee"]]
    together = seg.predict(batch)
    for img, got in zip(batch, together):
        alone = seg.predict([img])[0]
        assert got.probs.shape[1:] == img.shape[:2]
        np.testing.assert_allclose(got.probs, alone.probs, atol=1e-5)
        assert (got.pred == alone.pred).mean() > 0.9999


def test_short_side_resize_returns_original_size(images):
    seg = Segmenter.from_config(golden_config(["inference.short_side=112"]))
    img = images["chelsea"]
    out = seg.predict([img], return_probs=False)[0]
    assert out.pred.shape == img.shape[:2]
    assert out.probs is None
    assert out.confidence.shape == img.shape[:2]
    assert out.confidence.dtype == np.uint8 and out.confidence.min() > 0  # round(255 p), p >= 1 / classes


def test_prob_thd_sends_unsure_pixels_to_class_zero(images):
    img = images["coffee"]
    loose = Segmenter.from_config(golden_config(["inference.prob_thd=0.0"])).predict([img])[0]
    strict = Segmenter.from_config(golden_config(["inference.prob_thd=0.9"])).predict([img])[0]
    unsure = loose.probs.max(axis=0) < 0.9
    assert unsure.any()
    assert (strict.pred[unsure] == 0).all()
    assert (strict.pred[~unsure] == loose.pred[~unsure]).all()
    np.testing.assert_allclose(loose.probs.sum(axis=0), 1.0, atol=1e-5)


def test_final_pamr_changes_logits_but_keeps_shape(images):
    img = images["astronaut"]
    plain = Segmenter.from_config(golden_config(["inference.pamr_steps=0"])).predict([img])[0]
    refined = Segmenter.from_config(golden_config(["inference.pamr_steps=3"])).predict([img])[0]
    assert refined.probs.shape == plain.probs.shape
    assert not np.allclose(refined.probs, plain.probs)


def test_cpu_bfloat16_agrees_with_float32(images):
    img = images["coffee"]
    ref = Segmenter.from_config(golden_config()).predict([img])[0]
    low = Segmenter.from_config(golden_config(["precision=bfloat16"])).predict([img])[0]
    assert (low.pred == ref.pred).mean() > 0.8  # random tiny model: many near-ties; GPU test is tighter


def test_pamr_kernel_choice():
    assert Segmenter.from_config(golden_config()).pamr_kernel == "auto"
    assert Segmenter.from_config(golden_config(["inference.compile=true"])).pamr_kernel == "shifted"
    with pytest.raises(UserError, match="pamr_kernel"):
        Segmenter.from_config(golden_config(["inference.compile=true", "inference.pamr_kernel=sparse"]))


def test_final_pamr_kernels_give_the_same_labels(images):
    img = images["chelsea"]
    out = {k: Segmenter.from_config(golden_config(["inference.pamr_steps=4", f"inference.pamr_kernel={k}"]))
           .predict([img])[0] for k in ("sparse", "shifted")}
    assert (out["sparse"].pred == out["shifted"].pred).mean() >= 0.9999
    np.testing.assert_allclose(out["sparse"].probs, out["shifted"].probs, atol=1e-5)


def test_auto_pamr_falls_back_when_sparse_is_unavailable(images, monkeypatch):
    import pipeline.engine.pamr as pamr_module

    def unavailable(*args, **kwargs):
        raise NotImplementedError("no CSR product on this device")

    expected = Segmenter.from_config(golden_config()).predict([images["coffee"]])[0]
    monkeypatch.setattr(pamr_module, "propagate_sparse", unavailable)
    seg = Segmenter.from_config(golden_config())
    got = seg.predict([images["coffee"]])[0]
    assert seg.pamr_kernel == "shifted"
    assert (got.pred == expected.pred).mean() >= 0.999
    with pytest.raises(NotImplementedError):
        Segmenter.from_config(golden_config(["inference.pamr_kernel=sparse"])).predict([images["coffee"]])
