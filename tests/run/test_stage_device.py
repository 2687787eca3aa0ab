"""The stage's CUDA semantics, run on CPU with fakes: the deferred copy to the host is waited for
in one waiter thread, never in the decode/encode pool; a fatal device error surfacing in that wait
restarts the worker; out-of-memory halves the batch outside the `except` and remembers what fitted."""
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.engine.host_copy import PackedBuffers
from pipeline.errors import DeviceFatalError
from pipeline.io.output_dir import OutputDir
from pipeline.io.shards import ShardSpec
from pipeline.run import actor as actor_module
from pipeline.run import stage as stage_module
from pipeline.run.copy_waiter import CopyWaiter
from pipeline.run.stage import ShardLabeler
from tests.support import ILLEGAL_ACCESS


class FakeEvent:
    """A CUDA event stand-in: the bytes land only when synchronised; records the waiting thread."""

    def __init__(self, host, device_buf, error=None, delay=0.0):
        self.host, self.src, self.error, self.delay = host, device_buf.clone(), error, delay
        self.landed, self.waited_in = False, None

    def synchronize(self):
        self.waited_in = threading.current_thread().name
        if self.delay:
            threading.Event().wait(self.delay)  # the batch's GPU time
        if self.error:
            raise RuntimeError(self.error)
        self.host.copy_(self.src)
        self.landed = True


class PendingEngine:
    """Labels every pixel class 1 at confidence 200/255, handing back `PendingArray`s as the
    Segmenter does on CUDA; `error` makes every copy wait fail with that message."""

    num_classes, patch_size = 3, 4

    def __init__(self, error=None, delay=0.0):
        self.error, self.delay, self.events = error, delay, []

    def _copier(self, host, device_buf):
        host.zero_()
        self.events.append(FakeEvent(host, device_buf, self.error, self.delay))
        return self.events[-1]

    def predict(self, images, return_probs=False):
        outs = []
        for img in images:
            h, w = img.shape[:2]
            buf = PackedBuffers([("mean", (), torch.float64), ("pred", (h, w), torch.uint8),
                                 ("conf", (h, w), torch.uint8)], torch.device("cpu"))
            buf.views["mean"].fill_(200 / 255)
            buf.views["pred"].fill_(1)
            buf.views["conf"].fill_(200)
            host = buf.send(self._copier)
            outs.append(SimpleNamespace(pred=host["pred"], confidence=host["conf"], mean_confidence=host["mean"],
                                        ignored=None, event=self.events[-1]))
        return outs


class RecordingPool(ThreadPoolExecutor):
    """The stage's pool, recording for every encode task whether its copy had landed when it began."""

    def __init__(self, workers):
        super().__init__(workers, thread_name_prefix="decode")
        self.encodes, self.unlanded = 0, 0

    def submit(self, fn, *args, **kwargs):
        if len(args) == 2 and hasattr(args[1], "event"):  # an encode task: (sample, engine output)
            out = args[1]

            def checked(*a):
                self.encodes += 1
                self.unlanded += not out.event.landed
                return fn(*a)

            return super().submit(checked, *args)
        return super().submit(fn, *args, **kwargs)


def _shard(corpus):
    path = sorted(Path(corpus).glob("*.tar"))[0]
    return ShardSpec(name=path.stem, url=str(path))


def _labeler(engine, cfg, out, pool=None):
    labeler = ShardLabeler(engine, cfg, OutputDir(str(out)), "test")
    if pool is not None:
        labeler.pool.shutdown()
        labeler.pool, labeler.copies = pool, CopyWaiter(pool)
    return labeler


@pytest.mark.timeout(60)
def test_encodes_never_wait_for_a_copy_inside_the_pool(corpus, tiny_cfg, tmp_path):
    engine = PendingEngine(delay=0.01)
    pool = RecordingPool(2)
    labeler = _labeler(engine, tiny_cfg(), tmp_path / "out", pool)
    try:
        result = labeler.label(_shard(corpus))
    finally:
        labeler.close()
    assert result.ok == len(engine.events) > 0 and result.status == "done"
    assert pool.encodes == result.ok and pool.unlanded == 0  # every encode began with its bytes on the host
    assert {e.waited_in for e in engine.events} == {"copy-waiter"}  # one waiter thread, no pool thread
    rows = pq.read_table(tmp_path / "out" / "manifest" / f"{_shard(corpus).name}.parquet").to_pylist()
    assert all(r["classes"] == [1] for r in rows if r["status"] == "ok")


def test_waiter_keeps_order_and_passes_host_outputs_straight_to_the_pool():
    pool = ThreadPoolExecutor(2)
    waiter = CopyWaiter(pool)
    engine = PendingEngine()
    outs = engine.predict([np.zeros((4, 6, 3), np.uint8)] * 5)
    futures = [waiter.submit(lambda s, o: (s, int(np.asarray(o.pred).sum())), i, o) for i, o in enumerate(outs)]
    plain = waiter.submit(lambda s, o: s, "host", SimpleNamespace(pred=np.zeros((2, 2)), confidence=None))
    assert [f.result(timeout=10) for f in futures] == [(i, 24) for i in range(5)] and plain.result() == "host"
    waiter.close()
    pool.shutdown()


@pytest.mark.timeout(300)
def test_fatal_error_in_the_copy_wait_restarts_the_worker(ray_local, corpus, tiny_cfg, tmp_path, monkeypatch):
    # ray_local: the worker asks Ray for its actor id; the suite's Ray, not one started here
    labeler = _labeler(PendingEngine(error=ILLEGAL_ACCESS), tiny_cfg(), tmp_path / "out")
    try:
        with pytest.raises(DeviceFatalError, match="illegal memory access"):
            labeler.label(_shard(corpus))
    finally:
        labeler.close()
    assert not (tmp_path / "out" / "_done").exists() or not list((tmp_path / "out" / "_done").iterdir())

    exits = []

    def fake_exit(code):
        exits.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(actor_module, "exit_process", fake_exit)
    worker = actor_module.LabelWorker(tiny_cfg(), str(tmp_path / "out2"),
                                      engine_factory=lambda cfg: _Described(PendingEngine(error=ILLEGAL_ACCESS), cfg))
    with pytest.raises(SystemExit):
        worker.label(_shard(corpus))
    assert exits == [actor_module.DEVICE_FATAL_EXIT]  # the actor exits: Ray restarts it, the shard is retried


class _Described:
    """A PendingEngine with what the actor needs to describe it (vocabulary, model identity)."""

    def __init__(self, inner, cfg):
        from pipeline.vocabulary import load_vocabulary

        self.inner, self.vocabulary = inner, load_vocabulary(cfg.vocabulary)
        self.num_classes, self.patch_size, self.model_identity = len(self.vocabulary), 4, {"name": "fake"}

    def predict(self, images, return_probs=False):
        return self.inner.predict(images, return_probs)


class OomEngine:
    """Out of device memory on batches larger than `fits`, or always on an image wider than `huge`;
    the failed call keeps a large object alive in its frame, as real activations would be."""

    num_classes, patch_size = 3, 4

    def __init__(self, fits, huge=10**9):
        self.fits, self.huge, self.calls, self.frames = fits, huge, [], []

    def predict(self, images, return_probs=False):
        # Nothing of an earlier failed call may still be alive: the stage left its `except` first.
        assert all(ref() is None for ref in self.frames), "a failed batch's tensors outlived its except block"
        self.calls.append(len(images))
        activations = torch.zeros(64)
        if len(images) > self.fits or any(img.shape[1] > self.huge for img in images):
            self.frames.append(weakref.ref(activations))
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [SimpleNamespace(pred=np.ones(img.shape[:2], np.int64), confidence=np.full(img.shape[:2], 0.9, np.float32))
                for img in images]


@pytest.mark.timeout(60)
def test_out_of_memory_halves_the_batch_and_remembers_what_fitted(corpus, tiny_cfg, tmp_path, monkeypatch):
    released = []
    monkeypatch.setattr(stage_module, "release_cached_memory", lambda: released.append(1))
    engine = OomEngine(fits=2)
    labeler = _labeler(engine, tiny_cfg("batch_size=4"), tmp_path / "out")
    shards = sorted(Path(corpus).glob("*.tar"))
    try:
        first = labeler.label(ShardSpec(name=shards[0].stem, url=str(shards[0])))
        calls_after_first = len(engine.calls)
        second = labeler.label(ShardSpec(name=shards[1].stem, url=str(shards[1])))
    finally:
        labeler.close()
    assert engine.calls[0] == 4 and released == [1]  # one OOM, the cache emptied once
    assert max(engine.calls[1:]) <= 2  # halved, and the next batches cut before they fail
    assert max(engine.calls[calls_after_first:]) <= 2 and len(released) == 1  # remembered across shards
    for result in (first, second):
        assert result.errors == result.error_kinds.get("corrupt", 0) and result.ok > 0  # every image labeled
    assert set(labeler.batch_limits.values()) == {2}


def test_an_image_too_big_alone_is_one_inference_row(tiny_cfg, tmp_path, monkeypatch):
    monkeypatch.setattr(stage_module, "release_cached_memory", lambda: None)
    engine = OomEngine(fits=8, huge=50)
    labeler = _labeler(engine, tiny_cfg(), tmp_path / "out")
    try:
        images = [np.zeros((40, 40, 3), np.uint8), np.zeros((40, 60, 3), np.uint8), np.zeros((40, 30, 3), np.uint8)]
        outs = labeler._predict(images)
    finally:
        labeler.close()
    assert [type(o).__name__ for o in outs] == ["SimpleNamespace", "SampleError", "SimpleNamespace"]
    assert "out of device memory" in str(outs[1]) and outs[1].kind == "inference"
