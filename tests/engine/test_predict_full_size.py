"""`Segmenter.predict(out_sizes=...)`: an image decoded smaller than its full size (io.jpeg_draft)
is inferred at the full size's inference size and labeled at the full size."""
import numpy as np
import pytest

from pipeline.bench_real import textured_jpeg
from pipeline.config import load_config
from pipeline.io.decode import DecodeLimits, decode_image
from tests.conftest import TINY_OVERRIDES

EXACT = DecodeLimits(max_pixels=10**9, min_side=16)
FULL = (960, 1440)  # drafted to 1/4 (240x360) for a 224 short side
# Measured on seeds 0-4 (tiny golden CLIP, vocab_b, short side 224): 98.5-100% of pixels agree,
# mean 99.6%; the tiny model gives 1-3 classes per scene, so only the boundaries can move.
MIN_AGREEMENT, MIN_MEAN_AGREEMENT = 0.97, 0.985


def segmenter(*extra: str):
    from pipeline.engine import Segmenter

    return Segmenter.from_config(load_config(overrides=[*TINY_OVERRIDES, "inference.short_side=224", *extra]))


@pytest.fixture(scope="module")
def seg():
    return segmenter()


def both_ways(seg, seed: int):
    """(exact labels, drafted decode, drafted labels) of one photo-like JPEG."""
    data = textured_jpeg(np.random.default_rng(seed), *FULL)
    exact = decode_image(data, EXACT)
    drafted = decode_image(data, DecodeLimits(EXACT.max_pixels, EXACT.min_side, seg.inference_size))
    a = seg.predict([exact.rgb], return_probs=False)[0]
    b = seg.predict([drafted.rgb], return_probs=False, out_sizes=[drafted.size])[0]
    return a, drafted, b


def test_own_sizes_give_the_same_labels_as_no_sizes(seg):
    img = np.asarray(np.random.default_rng(0).integers(0, 256, (100, 150, 3)), np.uint8)
    plain = seg.predict([img], return_probs=False)[0]
    sized = seg.predict([img], return_probs=False, out_sizes=[(100, 150)])[0]
    np.testing.assert_array_equal(plain.pred, sized.pred)
    np.testing.assert_array_equal(plain.confidence, sized.confidence)


def test_a_smaller_decode_is_inferred_as_the_full_image_and_labeled_at_its_size(seg):
    full = np.zeros(FULL + (3,), np.uint8)
    small = np.zeros((240, 360, 3), np.uint8)
    assert tuple(seg.prepare(small, FULL).shape) == tuple(seg.prepare(full).shape) == (3, 224, 336)
    out = seg.predict([small], return_probs=False, out_sizes=[FULL])[0]
    assert out.pred.shape == out.confidence.shape == FULL


def test_sizes_must_match_the_images(seg):
    with pytest.raises(ValueError, match="2 output sizes for 1 images"):
        seg.predict([np.zeros((32, 32, 3), np.uint8)], out_sizes=[(32, 32), (32, 32)])


def test_draft_labels_agree_with_the_exact_path(seg):
    shares = []
    for seed in (0, 1, 4):  # scenes where the exact labels have more than one class
        exact, drafted, draft = both_ways(seg, seed)
        assert drafted.rgb.shape[:2] == (240, 360) and draft.pred.shape == FULL
        assert len(np.unique(exact.pred)) > 1  # else agreement says nothing
        shares.append(float((exact.pred == draft.pred).mean()))
    assert min(shares) > MIN_AGREEMENT and np.mean(shares) > MIN_MEAN_AGREEMENT, shares


def test_final_pamr_runs_on_the_full_size_from_a_drafted_decode():
    seg = segmenter("inference.pamr_steps=2")
    exact, _, draft = both_ways(seg, 0)
    assert draft.pred.shape == exact.pred.shape == FULL
    assert float((exact.pred == draft.pred).mean()) > MIN_AGREEMENT
