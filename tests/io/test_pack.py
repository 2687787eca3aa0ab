"""`pseudolabel pack`: folder -> WebDataset shards, deterministic, case kept, labeled like hand-made shards."""
from __future__ import annotations

import pytest
import webdataset as wds

from pipeline.cli import main as cli
from pipeline.errors import UserError
from pipeline.io.pack import pack_folder
from pipeline.io.tarfiles import iter_members
from tests.support import encode, rgb_image


def make_folder(root):
    files = {
        "b/IMG_0002.JPG": encode(rgb_image(40, 32, 1), "JPEG"),
        "a.png": encode(rgb_image(48, 32, 2)),
        "b/c/photo.v2.jpeg": encode(rgb_image(32, 40, 3), "JPEG"),
        "b/IMG_0001.png": encode(rgb_image(40, 40, 4)),
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "notes.txt").write_text("not an image")
    (root / "b" / "._IMG_0002.JPG").write_bytes(b"macOS resource fork")
    return files


def test_pack_names_order_case_and_determinism(tmp_path):
    files = make_folder(tmp_path / "photos")
    result = pack_folder(tmp_path / "photos", tmp_path / "out", per_shard=3)
    assert [p.name for p in result.shards] == ["shard-000000.tar", "shard-000001.tar"]
    members = [m for shard in result.shards for m in iter_members(shard)]
    assert [name for name, _ in members] == [
        "a.png", "b/IMG_0001.png", "b/IMG_0002.JPG", "b/c/photo_v2.jpeg",  # sorted paths, case kept
    ]
    by_name = dict(members)
    assert by_name["b/IMG_0002.JPG"] == files["b/IMG_0002.JPG"]
    assert result.skipped == {"extension": 1, "hidden": 1}
    again = pack_folder(tmp_path / "photos", tmp_path / "out2", per_shard=3)
    assert [p.read_bytes() for p in again.shards] == [p.read_bytes() for p in result.shards]
    unchanged = pack_folder(tmp_path / "photos", tmp_path / "out", per_shard=3)  # nothing new: nothing written
    assert unchanged.shards == [] and unchanged.samples == 0 and unchanged.unchanged == 4


def test_pack_refuses_two_files_with_one_key(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.jpg").write_bytes(encode(rgb_image(32, 32), "JPEG"))
    (tmp_path / "d" / "x.png").write_bytes(encode(rgb_image(32, 32)))
    with pytest.raises(UserError, match="would both be sample 'x'"):
        pack_folder(tmp_path / "d", tmp_path / "out")
    assert cli(["pack", str(tmp_path / "nowhere"), str(tmp_path / "o")]) == 2


def _output_storage(path):
    """The stage's output handle (the one-output-folder class where it exists, else Storage)."""
    try:
        from pipeline.io.output_dir import OutputDir
    except ImportError:
        from pipeline.io.storage import Storage as OutputDir
    return OutputDir(str(path))


def test_packed_shards_label_like_hand_made_ones(tmp_path, engine, tiny_cfg):
    """The real shard stage (read, decode, infer, encode, write) on a packed shard and on a shard
    written by hand with webdataset's TarWriter: the same keys get the same label and confidence."""
    from pipeline.io.shards import expand_input
    from pipeline.run.stage import ShardLabeler

    make_folder(tmp_path / "photos")
    assert cli(["pack", str(tmp_path / "photos"), str(tmp_path / "in"), "--per-shard", "10", "--prefix", "packed"]) == 0
    with wds.TarWriter(str(tmp_path / "in" / "hand-000000.tar")) as sink:
        for rel in ("a.png", "b/IMG_0001.png", "b/IMG_0002.JPG", "b/c/photo.v2.jpeg"):
            stem, ext = rel.rsplit(".", 1)
            sink.write({"__key__": stem.replace("photo.v2", "photo_v2"), ext: (tmp_path / "photos" / rel).read_bytes()})
    labeler = ShardLabeler(engine, tiny_cfg(), _output_storage(tmp_path / "labels"), "test")
    try:
        results = [labeler.label(shard) for shard in expand_input(str(tmp_path / "in"))]
    finally:
        labeler.close()
    assert [r.ok for r in results] == [4, 4]
    masks = {name: {n: d for n, d in iter_members(tmp_path / "labels" / "masks" / f"{name}.tar")}
             for name in ("packed-000000", "hand-000000")}
    assert sorted(masks["packed-000000"]) == sorted(masks["hand-000000"])
    assert len(masks["packed-000000"]) == 8  # KEY.label.png + KEY.conf.png for 4 images
    for name, data in masks["packed-000000"].items():
        assert data == masks["hand-000000"][name], name
