"""The authors' reference outputs (shared/golden) reproduce in float32 on CPU."""
import json

import numpy as np
import pytest

from pipeline.engine import Segmenter

from tests.engine.golden_data import GOLDEN, golden_config, golden_image

CASES = json.loads((GOLDEN / "cases.json").read_text())["cases"]
PARAMS = [(c["name"], image) for c in CASES for image in c["images"]]


@pytest.fixture(scope="module")
def segmenters():
    return {c["name"]: Segmenter.from_config(golden_config(case=c["name"])) for c in CASES}


@pytest.mark.golden
@pytest.mark.parametrize("case,image", PARAMS)
def test_matches_reference(segmenters, case, image):
    ref = np.load(GOLDEN / f"{case}__{image}.npz")
    out = segmenters[case].predict([golden_image(image)])[0]
    ref_probs = ref["seg_probs_u16"].astype(np.float64) / 65535
    assert out.probs.shape == ref_probs.shape
    pred_equal = (out.pred == ref["seg_pred"]).mean()
    probs_close = (np.abs(out.probs - ref_probs).max(axis=0) <= 1e-3).mean()
    assert pred_equal >= 0.999, f"pred equal on {pred_equal:.4%} of pixels"
    assert probs_close >= 0.999, f"probs within 1e-3 on {probs_close:.4%} of pixels"


@pytest.mark.golden
def test_text_features_match_reference(segmenters):
    ref = np.load(GOLDEN / "naclip_resclip_slide__astronaut.npz")
    seg = segmenters["naclip_resclip_slide"]
    np.testing.assert_allclose(seg.text.cpu().numpy(), ref["query_features"], atol=1e-5)
    assert seg.query_class.tolist() == ref["query_idx"].tolist()
