"""The sliding-window merge: cached counts per plan, sums bit for bit as the per-crop loop."""
import torch

from pipeline.engine import Segmenter
from pipeline.engine.predictor import _window_counts
from pipeline.engine.windows import plan_crops
from tests.engine.golden_data import golden_config


def _loop_merge(seg: Segmenter, img: torch.Tensor) -> torch.Tensor:
    """The merge as first written: one crop at a time, sums and counts added per crop."""
    inf = seg.cfg.inference
    sums = img.new_zeros((len(seg.text),) + tuple(img.shape[-2:]))
    counts = img.new_zeros((1,) + tuple(img.shape[-2:]))
    for c in plan_crops(img.shape[-2], img.shape[-1], inf.slide_crop, inf.slide_stride):
        sums[:, c.y1 : c.y2, c.x1 : c.x2] += seg.crop_logits(img[None, :, c.y1 : c.y2, c.x1 : c.x2])[0]
        counts[:, c.y1 : c.y2, c.x1 : c.x2] += 1
    return sums / counts


def test_counts_cover_every_pixel_as_the_plan_does():
    counts = _window_counts((150, 230), 64, 40, torch.device("cpu"), torch.float32)
    expected = torch.zeros(1, 150, 230)
    for c in plan_crops(150, 230, 64, 40):
        expected[:, c.y1 : c.y2, c.x1 : c.x2] += 1
    assert torch.equal(counts, expected) and counts.min() >= 1
    assert _window_counts((150, 230), 64, 40, torch.device("cpu"), torch.float32) is counts  # cached


def test_logits_equal_the_per_crop_loop(images):
    # one crop per forward: every crop's logits are computed alone in both, so any difference is the merge's
    seg = Segmenter.from_config(golden_config(["inference.max_crops_per_forward=1"]))
    prepared = [seg.prepare(images["astronaut"][:180, :250]), seg.prepare(images["astronaut"][:300, :340])]  # 2 and 6 crops
    merged = seg.logits(prepared)
    for img, got in zip(prepared, merged):
        assert torch.equal(got, _loop_merge(seg, img))
