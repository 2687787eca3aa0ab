"""Whole-image mode on mixed photo sizes: the stage regroups a window of images by inference shape."""
import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.engine import Segmenter
from pipeline.evaluation.outputs import decode_label_png
from pipeline.io.output_dir import OutputDir
from pipeline.io.records import SampleResult
from pipeline.io.shards import ShardSpec
from pipeline.io.tarfiles import iter_members, write_tar
from pipeline.run.stage import ShardLabeler, _batches, _chunks
from tests.support import encode, rgb_image

# (width, height): landscape, portrait and wide photos, interleaved as a corpus gives them
SIZES = [(64, 48), (48, 64), (96, 48), (64, 48), (48, 64), (64, 48), (96, 48), (64, 48), (48, 64), (64, 48)]


def _samples(shapes):
    out = []
    for h, w in shapes:
        s = SampleResult(key=f"{h}x{w}", sample_index=len(out), source_shard="s", data=b"")
        s.height, s.width = h, w
        out.append(s)
    return out


def test_batches_fill_by_key_then_pack_the_remainders():
    samples = _samples([(1, 1), (2, 2), (1, 1), (3, 3), (1, 1), (2, 2), (1, 1), (1, 1)])
    calls = _batches(samples, 2, lambda h, w: h)
    assert calls == [[0, 2], [4, 6], [1, 5], [7, 3]]  # full ones of each shape, then the rest together
    assert sorted(i for c in calls for i in c) == list(range(8))  # every image exactly once
    assert _batches(samples, 3, None) == [[0, 1, 2], [3, 4, 5], [6, 7]]  # no key: consecutive


def test_chunks_stop_at_the_pixel_bound():
    samples = _samples([(10, 10)] * 5)
    for s in samples:
        s.rgb = np.zeros((10, 10, 3), np.uint8)
    assert [len(c) for c in _chunks(iter(samples), 4)] == [4, 1]
    assert [len(c) for c in _chunks(iter(samples), 4, max_pixels=250)] == [3, 2]


class ShapeRecorder:
    """A whole-image engine double: records the shapes of every call, labels by image shape."""

    num_classes = 4
    patch_size = 16
    batches_by_shape = True

    def __init__(self, inner):
        self.inner, self.calls = inner, []
        self.vocabulary = inner.vocabulary

    def inference_size(self, height, width):
        return self.inner.inference_size(height, width)

    def predict(self, images, return_probs=True, out_sizes=None):
        self.calls.append([img.shape[:2] for img in images])
        return self.inner.predict(images, return_probs=return_probs)


@pytest.fixture
def whole(tiny_cfg):
    cfg = tiny_cfg("inference.slide_crop=0", "inference.short_side=0", "batch_size=2", "io.prefetch_batches=2")
    return cfg, Segmenter.from_config(cfg)


def _label(engine, cfg, tmp_path, name):
    members = [(f"{i:02d}.png", encode(rgb_image(w, h, seed=i))) for i, (w, h) in enumerate(SIZES)]
    write_tar(tmp_path / f"{name}.tar", members)
    out = OutputDir(str(tmp_path / name))
    labeler = ShardLabeler(engine, cfg, out, "test")
    try:
        result = labeler.label(ShardSpec(str(tmp_path / f"{name}.tar"), name))
    finally:
        labeler.close()
    return result, tmp_path / name


@pytest.mark.timeout(300)
def test_mixed_sizes_fill_their_batches_and_label_as_alone(whole, tmp_path):
    cfg, seg = whole
    rec = ShapeRecorder(seg)
    result, out = _label(rec, cfg, tmp_path, "grouped")
    assert result.ok == len(SIZES)
    shapes = [s for call in rec.calls for s in call]
    assert sorted(shapes) == sorted((h, w) for w, h in SIZES)
    # Windows of 4 images (2 batches): each holds two 64x48 landscapes, which run as one full batch;
    # consecutive batches of 2 would pair no two images of one shape in this order.
    uniform = [call for call in rec.calls if len(set(call)) == 1 and len(call) == 2]
    assert uniform == [[(48, 64), (48, 64)]] * 2
    consecutive = [SIZES[i : i + 2] for i in range(0, len(SIZES), 2)]
    assert not [pair for pair in consecutive if pair[0] == pair[1]]
    assert len(rec.calls) == 5  # and no more engine calls than consecutive batches of 2
    rows = pq.read_table(out / "manifest" / "grouped.parquet").to_pylist()
    assert [r["key"] for r in rows] == [f"{i:02d}" for i in range(len(SIZES))]  # input order kept
    masks = dict(iter_members(out / "masks" / "grouped.tar"))
    for i, (w, h) in enumerate(SIZES):
        alone = seg.predict([np.asarray(rgb_image(w, h, seed=i))], return_probs=False)[0].pred
        labels = decode_label_png(masks[f"{i:02d}.label.png"])
        assert labels.shape == (h, w)
        assert (labels == alone).mean() > 0.999  # batch composition changes only float rounding
