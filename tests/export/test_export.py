"""`pseudolabel export`: each format read back the way its framework documents, pixel-equal labels,
ignore and low-confidence pixels at 255, the sample filter applied."""
from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from output_fixture import write_output_dir, synthetic_sample  # noqa: E402

from pipeline.cli import main as cli  # noqa: E402
from pipeline.errors import UserError  # noqa: E402
from pipeline.export import export_output  # noqa: E402
from pipeline.training import SampleFilter  # noqa: E402

NAMES = ["background", "red", "green", "blue", "gold"]
THRESHOLD = 0.5


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    rng = np.random.default_rng(3)
    root = tmp_path_factory.mktemp("export")
    shards = {}
    for s in range(2):
        samples = [synthetic_sample(rng, f"img{s}_{i}", (24, 32), len(NAMES)) for i in range(5)]
        samples[1].key = f"sub/dir/img{s}_1"  # keys with folders become sub-folders
        samples[2].image_ext = "jpg"  # mixed formats: the bytes are copied as they are
        samples[3].label = None  # an error row: never exported
        samples[3].error = "corrupt: test"
        shards[f"part-{s:06d}"] = samples
    return write_output_dir(root / "out", shards, NAMES)


def expected_labels(fake, min_confidence: float) -> dict[str, np.ndarray]:
    out = {}
    for samples in fake.shards.values():
        for s in samples:
            if s.label is None:
                continue
            conf_u8 = np.round(255 * np.clip(s.conf, 0, 1)).astype(np.uint8)
            label = s.label.astype(np.int64).copy()
            label[conf_u8.astype(np.float64) / 255.0 < min_confidence] = 255
            out[s.key] = label  # the fixture's ignore value is already 255
    return out


def original_bytes(fake) -> dict[str, bytes]:
    from pipeline.io.tarfiles import iter_members

    data = {}
    for path in fake.source_shards.values():
        for name, blob in iter_members(path):
            data[name.rsplit(".", 1)[0]] = blob
    return data


def test_mmseg_layout_reads_back_as_mmseg_builds_paths(fake, tmp_path):
    dest = tmp_path / "mmseg"
    rc = cli(["export", str(fake.root), str(dest), "--format", "mmseg", "--min-confidence", str(THRESHOLD)])
    assert rc == 0
    meta = json.loads((dest / "metainfo.json").read_text())
    assert meta["classes"] == NAMES and len(meta["palette"]) == len(NAMES) and meta["ignore_index"] == 255
    want, images = expected_labels(fake, THRESHOLD), original_bytes(fake)
    lines = (dest / "splits" / "train.txt").read_text().splitlines()
    assert sorted(lines) == sorted(want)
    for line in lines:  # BaseSegDataset: data_root / img_path / (line + img_suffix), same for seg maps
        image = next((dest / "img_dir" / "train").glob(f"{line}.*"))
        assert image.read_bytes() == images[line]
        ann = Image.open(dest / "ann_dir" / "train" / f"{line}.png")
        assert ann.mode == "P"
        assert np.array_equal(np.array(ann), want[line])
    assert any((np.array(Image.open(dest / "ann_dir" / "train" / f"{k}.png")) == 255).any() for k in lines)


def test_voc_layout_with_val_split(fake, tmp_path):
    dest = tmp_path / "voc"
    summary = export_output(str(fake.root), dest, "voc", val_share=0.4)
    want = expected_labels(fake, 0.0)
    sets = dest / "ImageSets" / "Segmentation"
    train, val = (sets / "train.txt").read_text().split(), (sets / "val.txt").read_text().split()
    assert train and val and sorted(train + val) == sorted(want)
    assert (sets / "trainval.txt").read_text().split() == train + val
    assert summary.samples == {"train": len(train), "val": len(val)}
    assert (dest / "labels.txt").read_text().split("\n")[:-1] == NAMES
    for key in train + val:  # the VOC devkit: np.array(Image.open(SegmentationClass/KEY.png))
        label = np.array(Image.open(dest / "SegmentationClass" / f"{key}.png"))
        assert np.array_equal(label, want[key])
        assert list(dest.glob(f"JPEGImages/{key}.*"))
    # the split is a function of the key alone: a second export agrees
    again = export_output(str(fake.root), tmp_path / "voc2", "voc", val_share=0.4)
    assert (tmp_path / "voc2" / "ImageSets" / "Segmentation" / "val.txt").read_text() == (sets / "val.txt").read_text()
    assert again.samples == summary.samples


def test_hf_layout_loads_with_datasets(fake, tmp_path):
    datasets = pytest.importorskip("datasets", reason="the dev extra installs datasets")
    dest = tmp_path / "hf"
    export_output(str(fake.root), dest, "hf", min_confidence=THRESHOLD, val_share=0.3)
    loaded = datasets.load_dataset(str(dest), cache_dir=str(tmp_path / "cache"))
    assert set(loaded) == {"train", "validation"}
    assert isinstance(loaded["train"].features["image"], datasets.Image)
    assert isinstance(loaded["train"].features["label"], datasets.Image)
    want, images = expected_labels(fake, THRESHOLD), original_bytes(fake)
    seen = []
    for split in loaded.values():
        for row in split:
            seen.append(row["key"])
            assert np.array_equal(np.array(row["label"]), want[row["key"]])
            original = np.array(Image.open(io.BytesIO(images[row["key"]])).convert("RGB"))
            assert np.array_equal(np.array(row["image"].convert("RGB")), original)
    assert sorted(seen) == sorted(want)
    assert json.loads((dest / "id2label.json").read_text()) == {str(i): n for i, n in enumerate(NAMES)}


def test_sample_filter_and_refusals(fake, tmp_path):
    dest = tmp_path / "filtered"
    summary = export_output(str(fake.root), dest, "mmseg", sample_filter=SampleFilter(excluded_classes=["gold"]))
    kept = (dest / "splits" / "train.txt").read_text().split()
    for key in kept:
        assert 4 not in np.unique(np.array(Image.open(dest / "ann_dir" / "train" / f"{key}.png")))
    assert summary.samples["train"] == len(kept) < len(expected_labels(fake, 0.0))
    with pytest.raises(UserError, match="not empty"):
        export_output(str(fake.root), dest, "mmseg")
    with pytest.raises(UserError, match="unknown export format"):
        export_output(str(fake.root), tmp_path / "x", "coco")
