"""The deferred host copy (the CUDA path of post-processing), run on CPU with a fake transport:
shapes without waiting, one wait on first read, outputs equal to the direct (CPU) path."""
import numpy as np
import pytest
import torch

from pipeline.engine.host_copy import PackedBuffers, PendingArray
from pipeline.engine.postprocess import BandedPost, PostSettings
from pipeline.io.masks import LabelFormat, encode_masks


class DeferredCopy:
    """Stands in for a CUDA event: the bytes land only when waited on, so a read that did not wait
    would see the empty buffer."""

    def __init__(self, host, device_buf):
        self.host, self.src, self.waits = host, device_buf.clone(), 0

    def synchronize(self):
        self.waits += 1
        self.host.copy_(self.src)


class Recorder:
    def __init__(self):
        self.copies = []

    def __call__(self, host, device_buf):
        host.zero_()  # what an unread pinned buffer may hold
        self.copies.append(DeferredCopy(host, device_buf))
        return self.copies[-1]


def test_packed_parts_keep_their_bytes_and_alignment():
    parts = [("mean", (), torch.float64), ("pred", (3, 5), torch.uint16), ("conf", (3, 5), torch.uint8),
             ("ignored", (3, 5), torch.bool)]
    buf = PackedBuffers(parts, torch.device("cpu"))
    buf.views["mean"].fill_(0.25)
    buf.views["pred"].copy_(torch.arange(15).view(3, 5) * 1000)
    buf.views["conf"].fill_(7)
    buf.views["ignored"].copy_(torch.arange(15).view(3, 5) % 2 == 0)
    rec = Recorder()
    host = buf.send(rec)
    assert host["pred"].shape == (3, 5) and host["pred"].dtype == np.uint16 and rec.copies[0].waits == 0
    np.testing.assert_array_equal(np.asarray(host["pred"]), np.arange(15).reshape(3, 5) * 1000)
    assert float(host["mean"]) == 0.25 and (np.asarray(host["conf"]) == 7).all()
    np.testing.assert_array_equal(host["ignored"], np.arange(15).reshape(3, 5) % 2 == 0)
    assert rec.copies[0].waits == 1  # one copy for all parts, waited for once


def test_pending_array_behaves_like_its_array():
    rec = Recorder()
    buf = PackedBuffers([("a", (2, 3), torch.uint8)], torch.device("cpu"))
    buf.views["a"].copy_(torch.tensor([[1, 2, 3], [4, 5, 6]], dtype=torch.uint8))
    a = buf.send(rec)["a"]
    assert isinstance(a, PendingArray) and len(a) == 2 and np.shape(a) == (2, 3)
    assert rec.copies[0].waits == 0
    assert (a == 5).sum() == 1 and a.max() == 6 and a[1, 2] == 6 and a.astype(np.int64).dtype == np.int64
    assert np.unique(a).tolist() == [1, 2, 3, 4, 5, 6] and rec.copies[0].waits == 1


@pytest.mark.parametrize("num_classes,min_conf", [(4, 0.5), (4, 0.0), (300, 0.5)])
def test_deferred_outputs_equal_the_direct_path(num_classes, min_conf):
    torch.manual_seed(2)
    query_class = torch.arange(num_classes)
    logits = torch.randn(num_classes, 21, 28) * 0.1
    settings = PostSettings(logit_scale=40.0, prob_thd=0.1, min_confidence=min_conf, band_pixels=97)
    direct = BandedPost(query_class, num_classes, settings)(logits, (97, 103))
    post = BandedPost(query_class, num_classes, settings)
    post.copier = rec = Recorder()
    got = post(logits, (97, 103))
    assert len(rec.copies) == 1 and rec.copies[0].waits == 0  # one copy per image, nothing read yet
    assert np.shape(got.pred) == np.shape(got.confidence) == (97, 103) and rec.copies[0].waits == 0
    assert got.pred.dtype == direct.pred.dtype
    np.testing.assert_array_equal(np.asarray(got.pred), direct.pred)
    np.testing.assert_array_equal(np.asarray(got.confidence), direct.confidence)
    assert float(got.mean_confidence) == direct.mean_confidence  # bit for bit
    if min_conf:
        np.testing.assert_array_equal(np.asarray(got.ignored), direct.ignored)
    else:
        assert got.ignored is None and direct.ignored is None
    # the stage's encoder reads the pending outputs as it reads arrays
    fmt = LabelFormat(num_classes, min_conf, compression=1)
    enc_got = encode_masks(np.asarray(got.pred), np.asarray(got.confidence), fmt, got.ignored, got.mean_confidence)
    enc_direct = encode_masks(direct.pred, direct.confidence, fmt, direct.ignored, direct.mean_confidence)
    assert enc_got == enc_direct
    assert rec.copies[0].waits == 1
