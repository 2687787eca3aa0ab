"""The benchmark's baseline (the authors' execution structure) computes the authors' labels."""
import numpy as np
import pytest
import torch

from pipeline.engine import Segmenter
from pipeline.engine.pamr import pamr
from pipeline.engine.reference_path import ReferenceStructure, stacked_pamr

from tests.engine.golden_data import GOLDEN, golden_config, golden_image


@pytest.mark.golden
@pytest.mark.parametrize("image", ["chelsea", "coffee"])
def test_reference_structure_reproduces_golden_labels(image):
    ref = np.load(GOLDEN / f"naclip_resclip_slide__{image}.npz")
    seg = Segmenter.from_config(golden_config())
    out = ReferenceStructure(seg).predict(golden_image(image))
    engine = seg.predict([golden_image(image)])[0]
    assert (out.pred == ref["seg_pred"]).mean() >= 0.999
    assert (out.pred == engine.pred).mean() >= 0.999
    # the engine hands over round(255 p) from its device; the reference keeps float probabilities
    assert (np.abs(np.rint(out.confidence * 255) - engine.confidence) <= 1).all()


def test_stacked_pamr_equals_engine_pamr():
    g = torch.Generator().manual_seed(3)
    image = torch.randn(2, 3, 30, 41, generator=g)
    logits = torch.randn(2, 4, 30, 41, generator=g)
    torch.testing.assert_close(stacked_pamr(image, logits, 5, (2, 4)), pamr(image, logits, 5, (2, 4)),
                               atol=1e-5, rtol=1e-5)
