"""CUDA semantics of the engine that CPU can check: TF32 never reaches the cached text features, and
the section timer decides to synchronise when a section runs, not when it was built."""
import torch

from pipeline.engine import predictor as predictor_module
from pipeline.engine.predictor import Segmenter
from pipeline.engine.timing import SectionTimer


def test_text_features_are_encoded_without_tf32(tiny_cfg, monkeypatch):
    seen = []
    real = predictor_module.encode_queries

    def recording(*args, **kwargs):
        seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))
        return real(*args, **kwargs)

    monkeypatch.setattr(predictor_module, "encode_queries", recording)
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # a process that had TF32 on
    try:
        Segmenter.from_config(tiny_cfg("inference.tf32=true"))
        restored = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    assert seen == [(False, False)]  # the disk cache key has no TF32 in it: the features never do
    assert restored == (True, True)


def test_timer_synchronises_when_enabled_after_construction(monkeypatch):
    syncs = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: syncs.append(1))
    timer = SectionTimer(enabled=False, device=torch.device("cuda"))  # as the Segmenter builds it
    with timer.section("off"):
        pass
    assert syncs == [] and not timer.sync
    timer.enabled = True  # what profiles and `bench` do
    with timer.section("trunk"):
        pass
    assert syncs == [1, 1] and timer.calls["trunk"] == 1  # before and after: the kernels' GPU time
    cpu = SectionTimer(enabled=True, device=torch.device("cpu"))
    with cpu.section("trunk"):
        pass
    assert syncs == [1, 1]
