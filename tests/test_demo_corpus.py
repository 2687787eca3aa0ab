from pipeline.demo_corpus import build_demo_corpus
from pipeline.io.reader import ReadReport, iter_samples


def test_demo_corpus_has_shards_images_and_two_broken_samples(tmp_path):
    paths = build_demo_corpus(tmp_path, shards=2, per_shard=4, seed=3)
    assert [p.name for p in paths] == ["demo-000000.tar", "demo-000001.tar"]
    samples = [s for p in paths for s in iter_samples(str(p), ["jpg"], ReadReport())]
    assert len(samples) == 8 and all(s.ok and s.data for s in samples)
    from pipeline.io.decode import DecodeLimits, decode_image
    from pipeline.io.records import SampleError

    kinds = []
    for s in samples:
        try:
            decode_image(s.data, DecodeLimits(10**8, 16))
            kinds.append("ok")
        except SampleError as err:
            kinds.append(err.kind)
    assert kinds == ["ok", "corrupt", "ok", "ok", "ok", "ok", "ok", "corrupt"]
    again = build_demo_corpus(tmp_path / "again", shards=2, per_shard=4, seed=3)
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in paths]  # reproducible
