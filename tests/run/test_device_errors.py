"""A non-OOM CUDA error is fatal to the worker: no per-sample rows, the actor exits, Ray restarts it
and the shard is retried there. Injected on CPU through engines that raise CUDA's messages."""
import functools
from pathlib import Path

import pytest
import torch

from pipeline.errors import DeviceFatalError
from pipeline.io.output_dir import OutputDir
from pipeline.io.shards import ShardSpec
from pipeline.run import actor as actor_module
from pipeline.run.device_errors import is_fatal_device_error
from pipeline.run.runner import run_pipeline
from pipeline.run.stage import ShardLabeler
from tests.support import ILLEGAL_ACCESS, PER_SHARD, DeviceLost, device_lost_engine

@pytest.mark.parametrize("exc,fatal", [
    (RuntimeError(ILLEGAL_ACCESS), True),
    (RuntimeError("CUDA error: device-side assert triggered"), True),
    (RuntimeError("cuDNN error: CUDNN_STATUS_EXECUTION_FAILED"), True),
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), False),
    (RuntimeError("CUDA error: out of memory"), False),
    (RuntimeError("shape '[2, 3]' is invalid for input of size 7"), False),
    (ValueError("expected uint8 RGB (H, W, 3)"), False),
])
def test_which_errors_are_fatal(exc, fatal):
    assert is_fatal_device_error(exc) is fatal


def _shard(corpus):
    path = sorted(Path(corpus).glob("*.tar"))[0]
    return ShardSpec(name=path.stem, url=str(path))


def test_stage_raises_and_writes_nothing(corpus, tiny_cfg, tmp_path):
    cfg = tiny_cfg()
    engine = DeviceLost(cfg)
    labeler = ShardLabeler(engine, cfg, OutputDir(str(tmp_path / "out")), "test")
    try:
        with pytest.raises(DeviceFatalError, match="illegal memory access"):
            labeler.label(_shard(corpus))
    finally:
        labeler.close()
    assert engine.calls == 1  # not retried image by image: every image would fail the same way
    written = [p for p in (tmp_path / "out").rglob("*") if p.is_file()] if (tmp_path / "out").exists() else []
    assert not [p for p in written if "_done" in p.parts or "manifest" in p.parts], written


def test_worker_exits_on_device_failure(corpus, tiny_cfg, tmp_path, monkeypatch):
    exits = []

    def fake_exit(code):
        exits.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(actor_module, "exit_process", fake_exit)
    worker = actor_module.LabelWorker(tiny_cfg(), str(tmp_path / "out"), engine_factory=device_lost_engine)
    with pytest.raises(SystemExit):
        worker.label(_shard(corpus))
    assert exits == [actor_module.DEVICE_FATAL_EXIT]


@pytest.mark.timeout(300)
def test_ray_restarts_the_worker_and_retries_the_shard(ray_local, corpus, tiny_cfg, tmp_path):
    marker = tmp_path / "device-failed-once"
    out = tmp_path / "out"
    factory = functools.partial(device_lost_engine, marker=str(marker))
    summary = run_pipeline(str(corpus), str(out), tiny_cfg("ray.cpu_actors=1"), engine_factory=factory)
    assert marker.exists()  # the device did fail once
    assert summary.failed_shards == [] and summary.shards_labeled == 3
    assert "inference" not in summary.error_kinds  # no per-sample rows for the device failure
    assert summary.images_ok + summary.images_failed == 3 * PER_SHARD
