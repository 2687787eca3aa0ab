"""`pseudolabel export`: each format loaded by its framework's own reader (torchvision's
VOCSegmentation, mmsegmentation's BaseSegDataset + LoadAnnotations, `datasets.load_dataset`, CVAT's
documented layout), with the labeler's pixels (EXIF orientation, 16-bit, alpha), image and label
sizes equal, pixel-equal labels, ignore and low-confidence pixels at 255, the sample filter, keys
no file system takes skipped with a reason, and a DEST that appears whole or not at all."""
from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import photos  # noqa: E402
import readers  # noqa: E402
from output_fixture import synthetic_sample, write_output_dir  # noqa: E402

from pipeline.cli import main as cli  # noqa: E402
from pipeline.errors import UserError  # noqa: E402
from pipeline.export import export_output  # noqa: E402
from pipeline.io.decode import decode_rgb  # noqa: E402
from pipeline.io.tarfiles import iter_members, write_tar  # noqa: E402
from pipeline.training import SampleFilter  # noqa: E402

NAMES = ["background", "red", "green", "blue", "gold"]
THRESHOLD = 0.5
JPEG_TOLERANCE = 4.0  # mean absolute difference of a quality-95 4:4:4 re-encode on these scenes

# key -> (member extension, bytes) of the photo-like samples: every mode and encoding of a phone folder
# (upper-case extensions: the journey test, tests/journey/test_photo_folder.py)
PHOTOS = {
    "rotated": ("jpg", photos.exif_rotated_jpeg(40, 24, 1)),  # stored 40x24, seen 24 wide, 40 high
    "baseline": ("jpg", photos.jpeg(32, 24, 2)),  # copied byte for byte
    "progressive": ("jpeg", photos.progressive_jpeg(24, 32, 3)),
    "sticker": ("png", photos.rgba_png(24, 24, 4)),
    "gray": ("png", photos.gray_png(24, 28, 5)),
    "raw16": ("png", photos.sixteen_bit_png(32, 24)),
    "web": ("webp", photos.webp(24, 24, 6)),
}


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    """Two shards of synthetic samples: keys with folders, mixed formats, an error row."""
    rng = np.random.default_rng(3)
    root = tmp_path_factory.mktemp("export")
    shards = {}
    for s in range(2):
        samples = [synthetic_sample(rng, f"img{s}_{i}", (24, 32), len(NAMES)) for i in range(5)]
        samples[1].key = f"sub/dir/img{s}_1"  # keys with folders become sub-folders
        samples[2].image_ext = "jpg"
        samples[3].label = None  # an error row: never exported
        samples[3].error = "corrupt: test"
        shards[f"part-{s:06d}"] = samples
    return write_output_dir(root / "out", shards, NAMES)


@pytest.fixture(scope="module")
def phone(tmp_path_factory):
    """One shard whose image members are phone-like files; labels at the decoded (oriented) size."""
    rng = np.random.default_rng(5)
    root = tmp_path_factory.mktemp("phone")
    samples = []
    for key, (ext, data) in PHOTOS.items():
        h, w = decode_rgb(data).shape[:2]
        sample = synthetic_sample(rng, key, (h, w), len(NAMES))
        sample.image_ext = ext
        samples.append(sample)
    out = write_output_dir(root / "out", {"phone-000000": samples}, NAMES)
    write_tar(out.source_shards["phone-000000"], [(f"{k}.{ext}", data) for k, (ext, data) in PHOTOS.items()])
    return out


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


def labeler_pixels(fake) -> dict[str, np.ndarray]:
    """What the labeler decoded from each input member (`pipeline.io.decode`)."""
    return {name.rsplit(".", 1)[0]: decode_rgb(blob) for path in fake.source_shards.values()
            for name, blob in iter_members(path)}


def original_bytes(fake) -> dict[str, bytes]:
    return {name.rsplit(".", 1)[0]: blob for path in fake.source_shards.values() for name, blob in iter_members(path)}


def check_samples(got, want_labels, pixels, exact: bool) -> None:
    """Every loaded sample: image and label of one size, the labeler's pixels, the exported labels."""
    assert sorted(got) == sorted(want_labels)
    for key, (image, label) in got.items():
        assert image.shape[:2] == label.shape == want_labels[key].shape, key
        assert np.array_equal(label, want_labels[key]), key
        diff = np.abs(image.astype(np.int64) - pixels[key].astype(np.int64))
        if exact:
            assert not diff.any(), key
        else:
            assert diff.mean() < JPEG_TOLERANCE, (key, diff.mean())


def test_mmseg_loads_with_basesegdataset(fake, tmp_path):
    dest = tmp_path / "mmseg"
    rc = cli(["export", str(fake.root), str(dest), "--format", "mmseg", "--min-confidence", str(THRESHOLD),
              "--image-format", "png"])
    assert rc == 0
    meta = json.loads((dest / "metainfo.json").read_text())
    assert meta["classes"] == NAMES and len(meta["palette"]) == len(NAMES) and meta["ignore_index"] == 255
    assert meta["img_suffix"] == ".png" and meta["seg_map_suffix"] == ".png"
    want, pixels = expected_labels(fake, THRESHOLD), labeler_pixels(fake)
    check_samples(readers.mmseg(dest, "train"), want, pixels, exact=True)  # PNG: lossless
    assert readers.mmseg(dest, "val") == {}  # the val list exists, empty, with --val-share 0
    assert any((label == 255).any() for label in want.values())


def test_voc_loads_with_torchvision_every_image_set(fake, tmp_path):
    root = tmp_path / "voc"
    dest = root / "VOCdevkit" / "VOC2012"  # where torchvision's VOCSegmentation(root) looks
    summary = export_output(str(fake.root), dest, "voc", val_share=0.4)
    want, pixels = expected_labels(fake, 0.0), labeler_pixels(fake)
    train, val = readers.voc(root, "train"), readers.voc(root, "val")
    assert train and val and sorted([*train, *val]) == sorted(want)
    check_samples({**train, **val}, want, pixels, exact=False)
    trainval = readers.voc(root, "trainval")
    assert list(trainval) == [*train, *val]
    assert summary.samples == {"train": len(train), "val": len(val)}
    assert (dest / "labels.txt").read_text().split("\n")[:-1] == NAMES
    # the split is a function of the key alone: a second export agrees
    again = export_output(str(fake.root), tmp_path / "voc2", "voc", val_share=0.4)
    sets = "ImageSets/Segmentation/val.txt"
    assert (tmp_path / "voc2" / sets).read_text() == (dest / sets).read_text()
    assert again.samples == summary.samples


def test_voc_without_val_share_still_has_val_and_trainval(fake, tmp_path):
    root = tmp_path / "voc"
    export_output(str(fake.root), root / "VOCdevkit" / "VOC2012", "voc")
    assert readers.voc(root, "val") == {}
    train = sorted(readers.voc(root, "train"))
    assert sorted(readers.voc(root, "trainval")) == train == sorted(expected_labels(fake, 0))
    meta = json.loads((root / "VOCdevkit" / "VOC2012" / "metainfo.json").read_text())
    assert "val is empty" in meta["split_files"] and "trainval = train + val" in meta["split_files"]
    with pytest.raises(UserError, match="JPEGImages/KEY.jpg"):
        export_output(str(fake.root), tmp_path / "voc_png", "voc", image_format="png")


def test_hf_loads_with_datasets_as_rgb(fake, tmp_path):
    dest = tmp_path / "hf"
    export_output(str(fake.root), dest, "hf", min_confidence=THRESHOLD, val_share=0.3)
    loaded = readers.hf(dest, tmp_path / "cache")
    assert set(loaded) == {"train", "validation"}
    want, pixels = expected_labels(fake, THRESHOLD), labeler_pixels(fake)
    check_samples({**loaded["train"], **loaded["validation"]}, want, pixels, exact=False)
    assert json.loads((dest / "id2label.json").read_text()) == {str(i): n for i, n in enumerate(NAMES)}


def test_phone_photos_reach_every_reader_as_the_labeler_saw_them(phone, tmp_path):
    """EXIF-rotated, progressive, RGBA, L, 16-bit and WebP sources: each reader gets RGB images of
    the label's size with the labeler's pixels; the baseline JPEG is the source bytes."""
    want, pixels = expected_labels(phone, 0.0), labeler_pixels(phone)
    assert pixels["rotated"].shape[:2] == (40, 24)  # the orientation swap the labels follow
    raw16 = pixels["raw16"]
    assert 100 < raw16.mean() < 156 and raw16.min() < 10 and raw16.max() > 245  # a gradient, not white

    root = tmp_path / "voc"
    summary = export_output(str(phone.root), root / "VOCdevkit" / "VOC2012", "voc")
    assert summary.copied == 1 and summary.reencoded == len(PHOTOS) - 1
    voc = readers.voc(root, "train")
    check_samples(voc, want, pixels, exact=False)
    original = original_bytes(phone)["baseline"]
    assert (root / "VOCdevkit/VOC2012/JPEGImages/baseline.jpg").read_bytes() == original
    assert 100 < voc["raw16"][0].mean() < 156  # not white-washed
    for name in ("rotated.jpg", "progressive.jpg"):  # no EXIF rotation left for a reader to apply again
        with Image.open(root / "VOCdevkit/VOC2012/JPEGImages" / name) as img:
            assert img.getexif().get(0x0112, 1) == 1 and "progressive" not in img.info

    export_output(str(phone.root), tmp_path / "mmseg", "mmseg")
    check_samples(readers.mmseg(tmp_path / "mmseg", "train"), want, pixels, exact=False)
    export_output(str(phone.root), tmp_path / "mmseg_png", "mmseg", image_format="png")
    check_samples(readers.mmseg(tmp_path / "mmseg_png", "train"), want, pixels, exact=True)
    export_output(str(phone.root), tmp_path / "hf", "hf", image_format="png")
    check_samples(readers.hf(tmp_path / "hf", tmp_path / "cache")["train"], want, pixels, exact=True)


def test_cvat_lowest_confidence_reads_back_as_cvat_imports_it(fake, tmp_path):
    dest = tmp_path / "cvat"
    assert cli(["export", str(fake.root), str(dest), "--format", "cvat", "--lowest", "3"]) == 0
    got = readers.cvat(dest)
    mean_conf = {s.key: float(np.mean(s.conf)) for samples in fake.shards.values() for s in samples
                 if s.label is not None}
    lowest = sorted(mean_conf, key=mean_conf.get)[:3]
    assert sorted(got) == sorted(lowest)
    with io.open(dest / "keys.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    names = (__import__("zipfile").ZipFile(dest / "segmentation_mask_1.1.zip")
             .read("ImageSets/Segmentation/default.txt").decode().split())
    by_name = {r["name"]: r for r in rows}
    assert [by_name[n]["key"] for n in names] == lowest  # least confident first
    want, pixels = expected_labels(fake, 0.0), labeler_pixels(fake)
    # labelmap: background (ignored pixels and the class named background) first, then the others
    to_cvat = np.array([0, 1, 2, 3, 4] + [0] * 251)
    for key, (image, label) in got.items():
        assert image.shape[:2] == label.shape
        assert np.array_equal(label, to_cvat[want[key]]), key
        assert np.abs(image.astype(int) - pixels[key].astype(int)).mean() < JPEG_TOLERANCE
    assert "/" not in "".join(names)  # sub/dir/img0_1 -> sub__dir__img0_1
    assert cli(["export", str(fake.root), str(tmp_path / "c2"), "--format", "cvat"]) == 2  # needs --lowest


def test_keys_no_file_system_takes_are_skipped_with_a_reason(tmp_path, capsys):
    rng = np.random.default_rng(9)
    keys = ["fine", "x" * 300, "tab\tname", " lead", "deep/" + "y" * 252]
    samples = [synthetic_sample(rng, k, (16, 16), len(NAMES)) for k in keys]
    out = write_output_dir(tmp_path / "out", {"odd-000000": samples}, NAMES)
    dest = tmp_path / "mmseg"
    assert cli(["export", str(out.root), str(dest), "--format", "mmseg"]) == 0
    printed = capsys.readouterr().out
    assert "name_too_long" in printed and "control character" in printed and "leading or trailing space" in printed
    assert (dest / "splits" / "train.txt").read_text().split() == ["fine"]
    assert [r["key"] for r in csv.DictReader(io.StringIO((dest / "keys.csv").read_text()))] == ["fine"]


def test_a_failed_export_leaves_no_dest_and_no_staging(fake, tmp_path, monkeypatch):
    import pipeline.export.layouts as layouts

    calls = {"n": 0}
    real = layouts.palette_png

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # Ctrl-C part way
        return real(*args, **kwargs)

    monkeypatch.setattr(layouts, "palette_png", failing)
    with pytest.raises(KeyboardInterrupt):
        export_output(str(fake.root), tmp_path / "dest", "mmseg")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no DEST, no .dest.*.partial
    monkeypatch.setattr(layouts, "palette_png", real)
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "mine.txt").write_text("x")
    export_output(str(fake.root), tmp_path / "keep", "mmseg", overwrite=True)
    assert not (tmp_path / "keep" / "mine.txt").exists() and (tmp_path / "keep" / "metainfo.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep"]


def test_sample_filter_and_refusals(fake, tmp_path):
    dest = tmp_path / "filtered"
    summary = export_output(str(fake.root), dest, "mmseg", sample_filter=SampleFilter(excluded_classes=["gold"]))
    kept = (dest / "splits" / "train.txt").read_text().split()
    for key in kept:
        assert 4 not in np.unique(np.array(Image.open(dest / "ann_dir" / "train" / f"{key}.png")))
    assert summary.samples["train"] == len(kept) < len(expected_labels(fake, 0.0))
    lowest = export_output(str(fake.root), tmp_path / "lowest", "mmseg", lowest=2)  # any format takes --lowest
    assert lowest.samples == {"train": 2, "val": 0}
    with pytest.raises(UserError, match="not empty"):
        export_output(str(fake.root), dest, "mmseg")
    with pytest.raises(UserError, match="unknown export format"):
        export_output(str(fake.root), tmp_path / "x", "coco")
