"""Ray Data ingestion of pseudo-labels (a real local Ray, kept small: 2 CPUs, a handful of samples)."""
import numpy as np
import pytest

from output_fixture import synthetic_sample, write_output_dir
from pipeline.training import RandomResizedCropFlip, SampleFilter, build_ray_dataset

pytestmark = pytest.mark.timeout(180)

NAMES = ["background", "cat", "dog", "bird"]


def test_ray_dataset_reads_kept_shards_and_batches_for_train(tmp_path, ray_session):
    rng = np.random.default_rng(0)
    shards = {
        f"shard-{s}": [synthetic_sample(rng, f"s{s}/k{i}", (20, 24), len(NAMES), classes=(1, 2)) for i in range(3)]
        for s in range(3)
    }
    for sample in shards["shard-1"]:
        sample.conf = sample.conf * 0.2  # rejected by the filter below
    out = write_output_dir(tmp_path / "out", shards, NAMES)
    (out.root / "masks" / "shard-1.tar").unlink()  # would fail the read if the shard were opened
    (out.input_dir / "shard-1.tar").unlink()

    def dataset(include_key):
        return build_ray_dataset(
            str(out.root), SampleFilter(min_mean_confidence=0.5),
            transform=RandomResizedCropFlip((16, 16)), pixel_min_confidence=0.4, include_key=include_key,
        )

    rows = dataset(True).take_all()
    assert sorted(r["key"] for r in rows) == sorted(f"s{s}/k{i}" for s in (0, 2) for i in range(3))
    for r in rows:
        assert r["image"].shape == (3, 16, 16) and r["image"].dtype == np.float32
        assert r["label"].shape == (16, 16) and r["label"].dtype == np.int64
        assert set(np.unique(r["label"]).tolist()) <= {0, 1, 2, 255}
        assert np.all(r["label"][r["confidence"] < 0.4] == 255)

    # What a Ray Train worker does with its shard of the dataset (get_dataset_shard returns a
    # DataIterator with the same method): fixed-size torch batches.
    ds = dataset(False)
    seen = 0
    for batch in ds.iter_torch_batches(batch_size=4, drop_last=False):
        assert tuple(batch["image"].shape[1:]) == (3, 16, 16)
        assert tuple(batch["label"].shape[1:]) == (16, 16)
        assert str(batch["label"].dtype) == "torch.int64"
        seen += batch["image"].shape[0]
    assert seen == 6
