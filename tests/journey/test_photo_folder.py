"""Issue 21's journey, through the command line: a phone-like photo folder (upper-case .JPG with EXIF
orientation 6, .jpeg, .webp, .tif, .gif, RGBA/L/16-bit PNGs, a truncated and a 0-byte JPEG, an
8 px icon, notes.txt, .AAE, .DS_Store, ._IMG_0001.JPG, dots and spaces in names, sub-folders) is
packed, labeled by `run FOLDER OUTPUT` directly, grown (two new photos, one changed) and labeled
again (only the new shard; nothing unchanged relabeled), then exported in every format and each
export loaded by its framework's own reader, sizes and pixels checked against what the labeler saw
and labels against OUTPUT's masks; a student trained on it predicts at the oriented sizes.
Ctrl-C and resume of `run` are tests/commands/test_run.py's."""
from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.cli import main as cli
from pipeline.io.decode import decode_rgb
from pipeline.io.tarfiles import iter_members
from tests import photos

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "export"))
import readers  # noqa: E402

EXTENSIONS = "jpg,jpeg,png,webp,tif,gif"
SETTINGS = ["batch_size=4", "io.decode_threads=2", "ray.cpu_actors=1", f"io.image_extensions=[{EXTENSIONS}]"]
JPEG_TOLERANCE = 4.0  # mean absolute difference of a quality-95 4:4:4 re-encode on these scenes


def _sets(tiny_overrides):
    return [a for s in [*tiny_overrides, *SETTINGS] for a in ("--set", s)]


def _rows(out: Path) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in sorted((out / "manifest").glob("*.parquet"))])


def _output_labels(out: Path) -> dict[str, np.ndarray]:
    """OUTPUT's own label PNGs (the newest shard's for a key in two), ignore -> 255 as exports map it."""
    meta = json.loads((out / "dataset.json").read_text())
    labels = {}
    for tar in sorted((out / "masks").glob("*.tar")):
        for name, data in iter_members(tar):
            if name.endswith(".label.png"):
                label = np.array(Image.open(io.BytesIO(data))).astype(np.int64)
                label[label == meta["ignore_index"]] = 255
                labels[name[: -len(".label.png")]] = label
    return labels


def _check(got: dict, folder: Path, keys_csv: Path, labels: dict, exact: bool = False) -> None:
    """Every loaded sample: image and label of one size, the pixels the labeler decoded from the
    original file (found through keys.csv), OUTPUT's label."""
    rows = {r["key"]: r for r in csv.DictReader(io.StringIO(keys_csv.read_text()))}
    assert got and sorted(got) == sorted(rows)
    for key, (image, label) in got.items():
        original = Path(rows[key]["original_path"])
        assert original.is_relative_to(folder) and original.is_file(), rows[key]
        want = decode_rgb(original.read_bytes())
        assert image.shape == want.shape and label.shape == want.shape[:2], (key, image.shape, label.shape)
        diff = np.abs(image.astype(np.int64) - want.astype(np.int64))
        assert (not diff.any()) if exact else diff.mean() < JPEG_TOLERANCE, (key, diff.mean())
        if labels is not None:
            assert np.array_equal(label, labels[key]), key


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_photo_folder_to_the_trainers_readers(ray_local, tiny_overrides, tmp_path, capsys):
    folder, shards, out, ex = tmp_path / "photos", tmp_path / "shards", tmp_path / "out", tmp_path / "exports"
    photos.write_folder(folder, photos.phone_folder())

    # pack: names what it leaves out and why
    assert cli(["pack", str(folder), str(shards)]) == 0
    printed = capsys.readouterr().out
    assert "packed 12 images into 1 new shard" in printed, printed
    assert "4 extension not in --extensions (now jpg,jpeg,png,webp; add more to take them): " \
           "IMG_0001.AAE, notes.txt, web/anim.gif, web/scan.tif" in printed, printed
    assert "hidden (name starts with '.'): .DS_Store, ._IMG_0001.JPG" in printed

    # run on the folder itself: packed on the fly into OUTPUT/_input
    rc = cli(["run", str(folder), str(out), *_sets(tiny_overrides), "--no-progress", "--max-failure-rate", "0.5"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "is a folder of photos; packed 14 images into 1 new shard" in err, err
    rows = _rows(out)
    assert len(rows) == 14 and (rows["status"] == "ok").sum() == 11  # truncated, 0-byte, 8 px icon fail
    failed = dict(zip(rows.loc[rows["status"] != "ok", "key"], rows.loc[rows["status"] != "ok", "error"]))
    assert sorted(failed) == ["broken/empty", "broken/truncated", "icon"], failed
    first = {p.name: p.read_bytes() for d in ("masks", "manifest") for p in (out / d).iterdir()}

    # the folder grows: two new photos, one changed; the run labels only those
    photos.write_folder(folder, {"2025/new.JPG": photos.exif_rotated_jpeg(56, 40, 21),
                                 "2025/second photo.png": photos.png(40, 40, 22),
                                 "web/cat.webp": photos.webp(40, 48, 23)})
    rc = cli(["run", str(folder), str(out), *_sets(tiny_overrides), "--no-progress", "--max-failure-rate", "0.5",
              "--json"])
    assert rc == 0
    captured = capsys.readouterr()
    assert "packed 3 images into 1 new shard" in captured.err and "13 already packed" in captured.err
    assert "1 changed since they were packed" in captured.err and "web/cat.webp" in captured.err
    summary = json.loads(captured.out)
    assert summary["shards_labeled"] == 1 and summary["shards_skipped"] == 1 and summary["images_ok"] == 3
    assert {n: (out / ("masks" if n.endswith(".tar") else "manifest") / n).read_bytes() for n in first} == first
    new_rows = pd.read_parquet(out / "manifest" / "shard-000001.parquet")
    assert sorted(new_rows["key"]) == ["2025/new", "2025/second photo", "web/cat"]
    labels = _output_labels(out)  # the newer web/cat wins: masks are read in shard order

    # export every format; each loaded by its framework's reader
    assert cli(["export", str(out), str(ex / "voc" / "VOCdevkit" / "VOC2012"), "--format", "voc",
                "--val-share", "0.3"]) == 0
    voc_root = ex / "voc" / "VOCdevkit" / "VOC2012"
    train, val = readers.voc(ex / "voc", "train"), readers.voc(ex / "voc", "val")
    assert list(readers.voc(ex / "voc", "trainval")) == [*train, *val]
    _check({**train, **val}, folder, voc_root / "keys.csv", labels)
    assert len(train) + len(val) == 13  # 11 + 2 new; web/cat once (the newer version)
    assert train.get("IMG_0001", val.get("IMG_0001"))[0].shape == (64, 48, 3)  # EXIF orientation 6
    raw16 = train.get("scans/raw16", val.get("scans/raw16"))[0]
    assert 100 < raw16.mean() < 156  # a 16-bit gradient, not white-washed
    assert (voc_root / "JPEGImages" / "IMG_0003.jpg").read_bytes() == (folder / "IMG_0003.JPG").read_bytes()

    assert cli(["export", str(out), str(ex / "mmseg"), "--format", "mmseg", "--image-format", "png"]) == 0
    assert json.loads((ex / "mmseg" / "metainfo.json").read_text())["img_suffix"] == ".png"
    _check(readers.mmseg(ex / "mmseg", "train"), folder, ex / "mmseg" / "keys.csv", labels, exact=True)

    assert cli(["export", str(out), str(ex / "hf"), "--format", "hf"]) == 0
    _check(readers.hf(ex / "hf", tmp_path / "cache")["train"], folder, ex / "hf" / "keys.csv", labels)

    assert cli(["export", str(out), str(ex / "cvat"), "--format", "cvat", "--lowest", "4"]) == 0
    review = readers.cvat(ex / "cvat")
    assert len(review) == 4
    _check(review, folder, ex / "cvat" / "keys.csv", None)

    # train a (tiny) student on the output, then predict with it on photos of the folder
    student = tmp_path / "student"
    tiny_student = ["optim.steps=6", "optim.batch_size=4", "optim.warmup_steps=2", "data.short_side=24",
                    "data.crop=16", "model.width=8", "checkpoint_every=2", "threads=1"]
    assert cli(["train", str(out), "--out", str(student), *[a for s in tiny_student for a in ("--set", s)],
                "--no-progress"]) == 0
    card = json.loads((student / "card.json").read_text())
    assert card["data"]["samples"] == 13  # as exported: web/cat's older version is not trained on
    assert cli(["predict", str(folder / "IMG_0001.JPG"), str(folder / "scans"), "--student",
                str(student / "student.pt"), "--out", str(tmp_path / "pred"), "--set", "device=cpu"]) == 0
    for name, size in (("IMG_0001", (64, 48)), ("raw16", (48, 48)), ("page 1", (52, 48))):
        pred = np.load(tmp_path / "pred" / f"{name}.npz")
        assert pred["pred"].shape == pred["confidence"].shape == size, name  # oriented, as labeled
