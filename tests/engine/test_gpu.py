"""CUDA path: mixed precision agrees with float32, several engines share one GPU. Needs a GPU."""
import numpy as np
import pytest
import torch

from pipeline.engine import Segmenter
from tests.engine.golden_data import golden_config

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_mixed_precision_agrees_with_float32(images, precision):
    batch = list(images.values())
    ref = Segmenter.from_config(golden_config(["device=cuda"])).predict(batch)
    low = Segmenter.from_config(golden_config(["device=cuda", f"precision={precision}"])).predict(batch)
    for r, l in zip(ref, low):
        assert (r.pred == l.pred).mean() > 0.95
        assert np.abs(r.probs - l.probs).max(axis=0).mean() < 0.05


def test_cuda_float32_matches_cpu(images):
    img = images["coffee"]
    cpu = Segmenter.from_config(golden_config(["device=cpu"])).predict([img])[0]
    gpu = Segmenter.from_config(golden_config(["device=cuda"])).predict([img])[0]
    assert (cpu.pred == gpu.pred).mean() > 0.999


def test_two_engines_share_one_gpu(images):
    a = Segmenter.from_config(golden_config(["device=cuda", "precision=bfloat16"]))
    b = Segmenter.from_config(golden_config(["device=cuda", "precision=bfloat16"]))
    out_a = a.predict([images["astronaut"]])[0]
    out_b = b.predict([images["astronaut"]])[0]
    assert (out_a.pred == out_b.pred).all()
    assert torch.cuda.memory_allocated() > 0


def test_cuda_sparse_pamr_matches_shifted():
    from pipeline.engine.pamr import pamr

    g = torch.Generator().manual_seed(0)
    image = torch.randn(4, 3, 224, 224, generator=g).cuda()
    logits = torch.randn(4, 20, 224, 224, generator=g).cuda()
    sparse = pamr(image, logits, 10, (8, 16), "sparse")
    shifted = pamr(image, logits, 10, (8, 16), "shifted")
    torch.testing.assert_close(sparse, shifted, atol=1e-4, rtol=1e-4)
