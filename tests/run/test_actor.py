"""LabelWorker.setup(): the engine is loaded there, its identity reported and checked; start-up
errors are typed and one line, and reach the driver through Ray with their own message."""
import pytest

from pipeline.errors import ModelLoadError, UserError
from pipeline.identity import IdentityMismatch, resolve_identity
from pipeline.run.actor import LabelWorker, WorkerStartError
from tests.support import START_FAILURE, failing_start_engine


def test_setup_reports_the_identity_the_driver_computes(tiny_cfg, engine, tmp_path):
    cfg = tiny_cfg()
    expected = resolve_identity(cfg)
    worker = LabelWorker(cfg, str(tmp_path / "out"), engine_factory=lambda c: engine,
                         expected_identity=expected.to_dict())
    assert worker.labeler is None  # nothing loaded by the constructor
    answer = worker.setup()
    assert answer["identity"]["fingerprint"] == expected.fingerprint
    assert answer["describe"]["num_classes"] == engine.num_classes
    assert worker.labeler.fingerprint == expected.fingerprint  # what its completion records carry
    assert not (tmp_path / "out").exists()


def test_setup_refuses_an_engine_other_than_the_driver_checked(tiny_cfg, engine, tmp_path):
    vocab = tmp_path / "v.txt"
    vocab.write_text("one\ntwo\n")
    driver_view = resolve_identity(tiny_cfg(f"vocabulary.file={vocab}"))  # what the driver saw
    worker = LabelWorker(tiny_cfg(), str(tmp_path / "out"), engine_factory=lambda c: engine,
                         expected_identity=driver_view.to_dict())
    with pytest.raises(IdentityMismatch, match=r"1 setting\(s\) differ: vocabulary: driver has \[\[\"one\"\]"):
        worker.setup()
    with pytest.raises(IdentityMismatch):
        worker.label(None)  # a restarted actor checks again before its first shard
    assert worker.labeler is None and not (tmp_path / "out").exists()


def test_start_up_failures_are_typed_and_one_line(tiny_cfg, tmp_path):
    def broken(cfg):
        raise RuntimeError("CUDA driver too old\nsecond line of detail")

    with pytest.raises(WorkerStartError) as info:
        LabelWorker(tiny_cfg(), str(tmp_path), engine_factory=broken).setup()
    assert "\n" not in str(info.value) and "RuntimeError: CUDA driver too old" in str(info.value)
    with pytest.raises(ModelLoadError, match="^" + START_FAILURE + "$"):
        LabelWorker(tiny_cfg(), str(tmp_path), engine_factory=failing_start_engine).setup()


@pytest.mark.timeout(240)
def test_a_workers_start_up_error_reaches_the_driver_with_its_message(ray_local, corpus, tiny_cfg, tmp_path):
    from pipeline.run.runner import run_pipeline

    out = tmp_path / "out"
    with pytest.raises(UserError) as info:
        run_pipeline(str(corpus), str(out), tiny_cfg("ray.cpu_actors=1"), engine_factory=failing_start_engine)
    assert str(info.value) == START_FAILURE  # not a traceback, not a source line with {path} unfilled
    assert not (out / "_done").exists() and not (out / "dataset.json").exists()
