"""`pseudolabel pack`: folder -> WebDataset shards, deterministic, case kept, labeled like hand-made shards."""
from __future__ import annotations

import os

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


def _shard_bytes(out):
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.tar"))}


def test_pack_into_a_grown_folder_adds_only_new_files_in_new_shards(tmp_path):
    import pyarrow.parquet as pq

    from pipeline.io.pack import pack_index

    photos, out = tmp_path / "photos", tmp_path / "out"
    make_folder(photos)
    first = pack_folder(photos, out, per_shard=3)
    before = _shard_bytes(out)
    (photos / "b" / "new one.jpg").write_bytes(encode(rgb_image(32, 32, 9), "JPEG"))
    (photos / "z").mkdir()
    (photos / "z" / "later.png").write_bytes(encode(rgb_image(32, 32, 10)))
    grown = pack_folder(photos, out, per_shard=3)
    assert [p.name for p in grown.shards] == ["shard-000002.tar"]  # after the highest existing number
    assert grown.samples == 2 and grown.unchanged == 4 and first.samples == 4
    after = _shard_bytes(out)
    assert {k: after[k] for k in before} == before  # old shards byte-identical
    assert [name for name, _ in iter_members(out / "shard-000002.tar")] == ["b/new one.jpg", "z/later.png"]
    index = pq.read_table(out / "_pack" / "shard-000002.parquet").to_pylist()
    assert [(r["key"], r["path"]) for r in index] == [("b/new one", "b/new one.jpg"), ("z/later", "z/later.png")]
    assert pack_index(str(out / "shard-000002.tar")) == {"b/new one": str((photos / "b/new one.jpg").resolve()),
                                                         "z/later": str((photos / "z/later.png").resolve())}


def test_a_changed_file_is_packed_again_and_named(tmp_path, capsys):
    from pipeline.io.pack import superseded

    photos, out = tmp_path / "photos", tmp_path / "out"
    make_folder(photos)
    pack_folder(photos, out, per_shard=10)
    before = _shard_bytes(out)
    (photos / "a.png").write_bytes(encode(rgb_image(48, 32, 99)))  # same path, other content
    os.utime(photos / "b" / "IMG_0001.png")  # touched only: same bytes, not packed again
    assert cli(["pack", str(photos), str(out), "--per-shard", "10"]) == 0
    printed = capsys.readouterr().out
    assert "packed 1 images into 1 new shard" in printed and "3 already packed" in printed
    assert "1 changed since they were packed, packed again as new" in printed and "a.png" in printed
    assert [n for n, _ in iter_members(out / "shard-000001.tar")] == ["a.png"]
    assert {k: v for k, v in _shard_bytes(out).items() if k in before} == before
    assert superseded(str(out / "shard-000001.tar")) == {("shard-000000", "a")}


def test_pack_names_what_it_left_out_and_refuses_foreign_shards(tmp_path, capsys):
    photos = tmp_path / "photos"
    make_folder(photos)
    for i in range(7):
        (photos / f"clip{i}.MOV").write_bytes(b"movie")
    assert cli(["pack", str(photos), str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "left out 9 files:" in printed
    assert "8 extension not in --extensions (now jpg,jpeg,png,webp; add more to take them): " \
           "clip0.MOV, clip1.MOV, clip2.MOV, clip3.MOV, clip4.MOV and 3 more" in printed
    assert "1 hidden (name starts with '.'): b/._IMG_0002.JPG" in printed
    assert "{" not in printed  # no dict repr
    foreign = tmp_path / "hand"
    foreign.mkdir()
    (foreign / "data-000000.tar").write_bytes(b"")
    assert cli(["pack", str(photos), str(foreign)]) == 2
    assert "did not write" in capsys.readouterr().err


def test_an_interrupted_pack_leaves_nothing_counted(tmp_path):
    """A shard written without its manifest (killed between the two) is rewritten, same bytes."""
    photos, out = tmp_path / "photos", tmp_path / "out"
    make_folder(photos)
    pack_folder(photos, out, per_shard=3)
    whole = _shard_bytes(out)
    (out / "_pack" / "shard-000001.parquet").unlink()  # as if killed after the tar, before its manifest
    again = pack_folder(photos, out, per_shard=3)
    assert [p.name for p in again.shards] == ["shard-000001.tar"] and again.unchanged == 3
    assert _shard_bytes(out) == whole


def test_run_dry_run_on_a_photo_folder_writes_nothing(tmp_path, tiny_overrides, capsys):
    photos, out = tmp_path / "photos", tmp_path / "out"
    make_folder(photos)
    sets = [a for s in tiny_overrides for a in ("--set", s)]
    assert cli(["run", str(photos), str(out), "--dry-run", *sets]) == 0
    captured = capsys.readouterr()
    assert f"is a folder of photos; would pack 4 new images into {out / '_input'}" in captured.err
    assert "nothing written, Ray not started" in captured.out
    assert not out.exists()
    pack_folder(photos, out / "_input")  # what the first real run does
    (photos / "more.png").write_bytes(encode(rgb_image(32, 32, 5)))
    assert cli(["run", str(photos), str(out), "--dry-run", *sets]) == 0
    captured = capsys.readouterr()
    assert "would pack 1 new images" in captured.err and "4 already packed" in captured.err
    assert "1 in INPUT, 1 to label" in captured.out  # the packed shard; the new photo is not packed yet
    assert sorted(p.name for p in (out / "_input").glob("*.tar")) == ["shard-000000.tar"]


def test_pack_into_a_folder_inside_the_photos_skips_itself(tmp_path):
    photos = tmp_path / "photos"
    make_folder(photos)
    pack_folder(photos, photos / "shards")
    (photos / "shards" / "stray.png").write_bytes(encode(rgb_image(32, 32, 6)))
    again = pack_folder(photos, photos / "shards")
    assert again.samples == 0 and again.unchanged == 4


def test_run_on_a_photo_folder_needs_a_local_output(tmp_path):
    from pipeline.io.pack import is_photo_folder, pack_for_run

    make_folder(tmp_path / "photos")
    assert is_photo_folder(str(tmp_path / "photos")) and not is_photo_folder(str(tmp_path / "nowhere"))
    pack_folder(tmp_path / "photos", tmp_path / "shards")
    assert not is_photo_folder(str(tmp_path / "shards"))  # a folder of shards is read as shards
    with pytest.raises(UserError, match="pack it first"):
        pack_for_run(str(tmp_path / "photos"), "s3://bucket/out", ["jpg"])
