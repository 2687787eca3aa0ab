"""`inference.compile_trunk`: the compiled ViT trunk equals eager on the golden tiny CLIP."""
import pytest
import torch

from pipeline.engine import Segmenter
from pipeline.engine.probe import crop_batch
from tests.engine.golden_data import golden_config


@pytest.mark.slow  # the one-off compile takes ~1 min on 2 shared cores
def test_compiled_trunk_equals_eager(images):
    seg = Segmenter.from_config(golden_config(["inference.compile_trunk=true"]))
    crops = crop_batch(seg, [images["astronaut"]])
    with torch.no_grad():
        eager_x, eager_rcs = seg.model.trunk(crops)
        x, rcs = seg.model.compiled_trunk()(crops)
        assert seg.model.compiled_trunk() is seg.model.compiled_trunk()  # compiled once
        torch.testing.assert_close(x, eager_x, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(rcs, eager_rcs, atol=1e-5, rtol=1e-5)
        # through the engine: crop logits of the compiled path against the eager module's
        compiled_logits = seg.crop_logits(crops)
        seg.cfg.inference.compile_trunk = False
        torch.testing.assert_close(compiled_logits, seg.crop_logits(crops), atol=1e-4, rtol=1e-4)
