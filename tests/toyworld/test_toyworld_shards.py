"""Toy-world WebDataset shards: paired image/label shards that round-trip and are reproducible."""
import hashlib
import json

import numpy as np
import pytest

from pipeline.toyworld import generate_scene, read_images, read_labels, write_shards
from pipeline.toyworld.shards import read_tar


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_png_shards_round_trip_exactly(tmp_path):
    result = write_shards(tmp_path, "test", count=5, per_shard=2, image_format="png")
    assert [p.name for p in result.images] == [p.name for p in result.labels]
    assert len(result.images) == 3
    keys = []
    for img_tar, lab_tar in zip(result.images, result.labels):
        images, labels = read_images(img_tar), read_labels(lab_tar)
        assert list(images) == list(labels)  # same keys, same order
        keys += list(images)
        for key in images:
            index = int(key.split("_")[1])
            scene = generate_scene(2, index)
            assert np.array_equal(images[key], scene.image)
            assert np.array_equal(labels[key], scene.label)
    assert keys == [generate_scene(2, i).key for i in range(5)]
    meta = json.loads(result.dataset_json.read_text())
    assert meta["count"] == 5 and meta["seed"] == 2 and len(meta["classes"]) >= 12
    assert (tmp_path / "vocabulary.txt").read_text().splitlines()[0] == "sky"


def test_jpg_shards_carry_caption_and_metadata(tmp_path):
    result = write_shards(tmp_path, "val", count=2, per_shard=10)
    members = list(read_tar(result.images[0]))
    exts = [ext for _, ext, _ in members]
    assert exts == ["jpg", "txt", "json"] * 2
    scene = generate_scene(1, 0)
    assert members[1][2].decode() == scene.caption
    image = read_images(result.images[0])[scene.key]
    assert np.abs(image.astype(int) - scene.image).mean() < 4  # JPEG at quality 95


def test_shards_are_byte_reproducible(tmp_path):
    a = write_shards(tmp_path / "a", "test", count=3, per_shard=3)
    b = write_shards(tmp_path / "b", "test", count=3, per_shard=3)
    assert _sha(a.images[0]) == _sha(b.images[0]) and _sha(a.labels[0]) == _sha(b.labels[0])


def test_webdataset_reads_label_shards_with_the_label_png_extension(tmp_path):
    wds = pytest.importorskip("webdataset")
    result = write_shards(tmp_path, "test", count=2, per_shard=2, image_format="png")
    samples = list(wds.WebDataset(str(result.labels[0]), shardshuffle=False))
    assert [s["__key__"] for s in samples] == [generate_scene(2, i).key for i in range(2)]
    assert all("label.png" in s for s in samples)


def test_bad_arguments_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="image_format"):
        write_shards(tmp_path, "test", count=1, image_format="gif")
    with pytest.raises(ValueError, match="positive"):
        write_shards(tmp_path, "test", count=0)
