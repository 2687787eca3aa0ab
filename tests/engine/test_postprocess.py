"""Banded post-processing equals the untiled form: odd sizes, band boundaries, synonyms, PAMR."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.engine import Segmenter
from pipeline.engine.postprocess import BandedPost, PostSettings, band_rows, quantise, upsample_rows

# (h, w) -> (H, W): up, down, mixed, equal, odd ratios, a 1-row band from a 3-row source
SIZES = [((21, 28), (336, 448)), ((37, 41), (97, 103)), ((300, 200), (101, 67)), ((12, 40), (12, 77)),
         ((40, 12), (77, 12)), ((17, 23), (17, 23)), ((3, 5), (250, 9))]


@pytest.mark.parametrize("src,out", SIZES)
def test_upsample_rows_is_band_invariant_and_matches_interpolate(src, out):
    torch.manual_seed(0)
    x = torch.randn(4, *src)
    whole = upsample_rows(x, out, 0, out[0])
    reference = F.interpolate(x[None], size=out, mode="bilinear", align_corners=False)[0]
    assert whole.shape == reference.shape
    # one float32 rounding at most (the CPU kernel fuses the blend; torch ops here round twice)
    assert (whole - reference).abs().max().item() <= 1e-6
    for rows in (1, 2, 7, 64):
        bands = [upsample_rows(x, out, a, min(a + rows, out[0])) for a in range(0, out[0], rows)]
        assert torch.equal(torch.cat(bands, dim=1), whole), f"bands of {rows} rows differ"


def _legacy(logits, query_class, num_classes, scale, thd, out_size):
    """Today's untiled code (Segmenter.class_probs + _finish without PAMR), on plain tensors."""
    lg = logits[None].float()
    if tuple(lg.shape[-2:]) != tuple(out_size):
        lg = F.interpolate(lg, size=out_size, mode="bilinear", align_corners=False)
    probs = torch.softmax(lg[0] * scale, dim=0)
    if len(query_class) != num_classes:
        index = query_class.view(-1, 1, 1).expand_as(probs)
        probs = probs.new_zeros((num_classes,) + probs.shape[1:]).scatter_reduce_(0, index, probs, "amax",
                                                                                 include_self=False)
    top, pred = probs.max(dim=0)
    pred = torch.where(top < thd, torch.zeros_like(pred), pred)
    probs = probs / probs.sum(dim=0, keepdim=True)
    return pred, probs.gather(0, pred[None])[0], probs


@pytest.mark.parametrize("out_size", [(21, 28), (97, 103), (250, 9), (13, 300)])
@pytest.mark.parametrize("synonyms", [False, True])
def test_banded_equals_untiled(out_size, synonyms):
    torch.manual_seed(1)
    query_class = torch.tensor([0, 1, 1, 2, 3, 3, 3] if synonyms else [0, 1, 2, 3])
    logits = torch.randn(len(query_class), 21, 28) * 0.1
    settings = dict(logit_scale=40.0, prob_thd=0.3, min_confidence=0.5)
    pred, conf, probs = _legacy(logits, query_class, 4, 40.0, 0.3, out_size)
    results = []
    for band_pixels in (1, 97, 1 << 20):  # one row per band, odd band boundaries, one band
        post = BandedPost(query_class, 4, PostSettings(**settings, band_pixels=band_pixels))
        got = post(logits, out_size, return_probs=True)
        assert got.pred.dtype == np.uint8 and got.confidence.dtype == np.uint8
        np.testing.assert_array_equal(got.pred, pred.numpy())
        # the only difference from F.interpolate is one rounding in the upsampled logits
        assert (np.abs(got.confidence.astype(int) - quantise(conf).numpy()) <= 1).all()
        assert (got.confidence == quantise(conf).numpy()).mean() > 0.999
        np.testing.assert_allclose(got.probs, probs.numpy(), atol=1e-5)
        assert (got.ignored == (conf.numpy() < 0.5)).mean() > 0.999
        assert got.mean_confidence == pytest.approx(float(conf.double().mean()), abs=1e-6)
        results.append(got)
    for other in results[1:]:  # the same whatever the band height (torch's softmax itself changes
        # in the last bit with where its vector loop and thread split fall, for a band as for the image)
        np.testing.assert_array_equal(other.pred, results[0].pred)
        assert (np.abs(other.confidence.astype(int) - results[0].confidence) <= 1).all()
        np.testing.assert_allclose(other.probs, results[0].probs, rtol=0, atol=1e-6)


def test_equal_size_is_exact():
    """No resize (the golden cases' short_side=0): the banded path is bit-exact with the untiled one."""
    torch.manual_seed(2)
    query_class = torch.tensor([0, 1, 2, 2, 3])
    logits = torch.randn(5, 37, 41)
    pred, conf, probs = _legacy(logits, query_class, 4, 40.0, 0.0, (37, 41))
    got = BandedPost(query_class, 4, PostSettings(40.0, 0.0, 0.0, band_pixels=100))(logits, (37, 41),
                                                                                     return_probs=True)
    np.testing.assert_array_equal(got.pred, pred.numpy())
    np.testing.assert_array_equal(got.confidence, quantise(conf).numpy())
    np.testing.assert_allclose(got.probs, probs.numpy(), rtol=0, atol=1e-6)
    assert got.ignored is None


def test_many_classes_use_uint16():
    query_class = torch.arange(300)
    logits = torch.randn(300, 8, 9)
    got = BandedPost(query_class, 300, PostSettings(40.0, 0.0, 0.0))(logits, (16, 18))
    assert got.pred.dtype == np.uint16
    np.testing.assert_array_equal(got.pred, _legacy(logits, query_class, 300, 40.0, 0.0, (16, 18))[0].numpy())


def test_band_rows_cover_the_halo():
    assert band_rows(1000, 100, 1000, 0) == 10
    assert band_rows(1000, 100, 1000, 32) == 128  # 4 halos
    assert band_rows(5, 100, 1 << 20, 0) == 5


@pytest.mark.parametrize("steps", [2])
def test_final_pamr_in_bands_equals_full_image(images, tiny_cfg, steps):
    """The final PAMR over the full-size image, run per band with a halo, gives the untiled result."""
    cfg = tiny_cfg(f"inference.pamr_steps={steps}", "inference.pamr_kernel=shifted", "inference.short_side=112",
                   "inference.post_band_pixels=2000")
    seg = Segmenter.from_config(cfg)
    img = images["chelsea"][:299, :203]
    x = seg.prepare(img)
    logits = seg.logits([x])[0]
    probs = seg.class_probs(logits, img.shape[:2], x)
    legacy = seg._finish(probs, return_probs=True)
    assert band_rows(299, 203, 2000, seg.post.s.pamr_halo) < 299  # really more than one band
    got = seg.predict([img], return_probs=True)[0]
    assert (got.pred == legacy.pred).mean() > 0.999
    np.testing.assert_allclose(got.probs, legacy.probs, atol=1e-4)
    assert (np.abs(got.confidence.astype(int) - np.rint(legacy.confidence * 255)) <= 1).all()
