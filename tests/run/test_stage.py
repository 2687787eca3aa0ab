import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.identity import loaded_identity
from pipeline.evaluation.outputs import decode_label_png
from pipeline.io.shards import ShardSpec
from pipeline.run.stage import DONE, FAILED, UNREADABLE, ShardLabeler
from pipeline.io.output_dir import OutputDir
from pipeline.io.tarfiles import iter_members, write_tar
from tests.support import encode, rgb_image

EXTS = "io.image_extensions=[png, jpg, tiff]"


def label(engine, cfg, tmp_path, members, name="s", mutate=None):
    shard = tmp_path / f"{name}.tar"
    write_tar(shard, members)
    if mutate:
        shard.write_bytes(mutate(shard.read_bytes()))
    out = OutputDir(str(tmp_path / "out"))
    labeler = ShardLabeler(engine, cfg, out, "test")
    try:
        return labeler.label(ShardSpec(str(shard), name)), tmp_path / "out"
    finally:
        labeler.close()


def mask_members(out, name):
    members = list(iter_members(out / "masks" / f"{name}.tar"))
    return dict(members), [m for m, _ in members]


@pytest.mark.timeout(120)
def test_every_bad_input_kind_becomes_a_row(engine, tiny_cfg, tmp_path):
    rgba = np.zeros((40, 48, 4), np.uint8)
    rgba[..., 3] = 255
    members = [
        ("a_rgb.png", encode(rgb_image(64, 48))),
        ("b_gray.png", encode(rgb_image(50, 40).convert("L"))),
        ("c_rgba.png", encode(Image.fromarray(rgba, "RGBA"))),
        ("d_cmyk.jpg", encode(rgb_image(48, 48).convert("CMYK"), "JPEG")),
        ("e_16bit.png", encode(Image.fromarray(np.full((40, 40), 30000, np.uint16)))),
        ("f_palette.png", encode(rgb_image(40, 56).convert("P"))),
        ("g_corrupt.jpg", encode(rgb_image(64, 64), "JPEG")[:300]),
        ("h_garbage.png", b"not an image"),
        ("i_small.png", encode(rgb_image(12, 40))),
        ("j_bomb.png", encode(rgb_image(96, 96))),
        ("k_noimage.json", b"{}"),
        ("l_float.tiff", encode(Image.fromarray(np.ones((20, 20), np.float32), "F"), "TIFF")),
        ("m_rgb.jpg", encode(rgb_image(61, 33, seed=3), "JPEG")),
    ]
    cfg = tiny_cfg(EXTS, "io.max_image_pixels=5000")
    result, out = label(engine, cfg, tmp_path, members)
    expected = {"a_rgb": "ok", "b_gray": "ok", "c_rgba": "ok", "d_cmyk": "ok", "e_16bit": "ok", "f_palette": "ok",
                "g_corrupt": "corrupt", "h_garbage": "corrupt", "i_small": "too_small", "j_bomb": "too_large",
                "k_noimage": "no_image", "l_float": "unsupported_mode", "m_rgb": "ok"}
    rows = pq.read_table(out / "manifest" / "s.parquet").to_pylist()
    assert [r["key"] for r in rows] == list(expected) and [r["sample_index"] for r in rows] == list(range(13))
    got = {r["key"]: "ok" if r["status"] == "ok" else r["error"].split(":")[0] for r in rows}
    assert got == expected
    ok_keys = [k for k, v in expected.items() if v == "ok"]
    blobs, order = mask_members(out, "s")
    assert order == [f"{k}.{kind}.png" for k in ok_keys for kind in ("label", "conf")]
    sizes = {m[0]: m[1:] for m in [(n[:-4],) + Image.open(io.BytesIO(b)).size for n, b in blobs.items()]}
    for r in rows:
        if r["status"] == "ok":
            assert sizes[f"{r['key']}.label"] == (r["width"], r["height"]) == sizes[f"{r['key']}.conf"]
            labels = decode_label_png(blobs[f"{r['key']}.label.png"])
            assert labels.max() < engine.num_classes
            assert sorted(np.unique(labels).tolist()) == r["classes"]
            assert sum(r["class_pixels"]) == r["width"] * r["height"]
    assert result.status == DONE and (result.ok, result.errors) == (7, 6)
    assert result.conversions == {"L": 1, "RGBA": 1, "CMYK": 1, "I;16": 1, "P": 1}
    done = json.loads((out / "_done" / "s.json").read_text())
    assert done["samples"] == 13 and done["ok"] == 7 and done["config_fingerprint"] == done["fingerprint"] == loaded_identity(cfg, engine).fingerprint


@pytest.mark.timeout(60)
def test_truncated_tar_is_failed_but_complete(engine, tiny_cfg, tmp_path):
    members = [(f"k{i}.png", encode(rgb_image(48, 32, seed=i))) for i in range(6)]
    whole = tmp_path / "whole.tar"
    write_tar(whole, members)
    # cut inside the 5th image's data: 4 whole samples, the 5th cut off, the 6th lost
    cut = sum(512 + (len(d) + 511) // 512 * 512 for _, d in members[:4]) + 512 + 100
    result, out = label(engine, tiny_cfg(), tmp_path, members, mutate=lambda b: b[:cut])
    rows = pq.read_table(out / "manifest" / "s.parquet").to_pylist()
    assert [(r["key"], r["status"]) for r in rows] == [("k0", "ok"), ("k1", "ok"), ("k2", "ok"), ("k3", "ok"),
                                                      ("k4", "error")]
    assert rows[4]["error"].startswith("truncated_tar")
    assert result.status == FAILED and "ReadError" in result.failure
    done = json.loads((out / "_done" / "s.json").read_text())
    assert done["status"] == "failed" and done["failure"] == result.failure
    assert len(mask_members(out, "s")[1]) == 8


@pytest.mark.timeout(60)
def test_unreadable_shard_writes_nothing(engine, tiny_cfg, tmp_path):
    result, out = label(engine, tiny_cfg(), tmp_path, [], mutate=lambda b: b"\x01" * 3000)
    assert result.status == UNREADABLE and result.failure
    assert not (out / "_done").exists() and not (out / "masks" / "s.tar").exists()
    assert not (out / "manifest").exists()


class FlakyEngine:
    """The real engine, except that it raises on images 61 pixels wide (as a model bug would)."""

    def __init__(self, engine):
        self.engine = engine
        self.num_classes = engine.num_classes
        self.patch_size = engine.patch_size

    def predict(self, images, return_probs=False):
        if any(img.shape[1] == 61 for img in images):
            raise RuntimeError("simulated engine failure")
        return self.engine.predict(images, return_probs=return_probs)


@pytest.mark.timeout(60)
def test_engine_failure_fails_only_that_image(engine, tiny_cfg, tmp_path):
    members = [(f"k{i}.png", encode(rgb_image(61 if i == 2 else 48, 32, seed=i))) for i in range(5)]
    result, out = label(FlakyEngine(engine), tiny_cfg(), tmp_path, members)
    rows = pq.read_table(out / "manifest" / "s.parquet").to_pylist()
    assert [r["status"] for r in rows] == ["ok", "ok", "error", "ok", "ok"]
    assert rows[2]["error"] == "inference: RuntimeError: simulated engine failure"
    assert result.status == DONE and result.errors == 1


def test_done_record_matches_its_schema_doc(tmp_path):
    from pipeline.io.schema import schema_spec
    from pipeline.run.stage import ShardResult, done_record

    record = done_record(ShardResult("s", "/in/s.tar", DONE, class_pixels=[1, 2]), "abc")
    assert sorted(record) == sorted(f["name"] for f in schema_spec("done", 1)["fields"])


def test_decode_threads_auto_follows_cores_per_gpu(monkeypatch):
    import os
    from types import SimpleNamespace

    import torch

    from pipeline.config import load_config
    from pipeline.run.stage import decode_threads

    assert decode_threads(load_config(overrides=["io.decode_threads=3"]), None) == 3
    auto = load_config()
    assert decode_threads(auto, SimpleNamespace(type="cpu")) == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    # 64 cores / 4 GPUs, less the inference and reader threads (issue 15: Ray and the threads agree)
    assert decode_threads(auto, SimpleNamespace(type="cuda")) == 14


@pytest.mark.timeout(60)
def test_member_accounting_in_the_completion_record(engine, tiny_cfg, tmp_path):
    import tarfile

    shard = tmp_path / "acc.tar"
    with tarfile.open(shard, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, data in [("a.png", tarfile.REGTYPE, encode(rgb_image(48, 32))), ("d", tarfile.DIRTYPE, b""),
                                 ("l.png", tarfile.SYMTYPE, b""), ("f.png", tarfile.FIFOTYPE, b""),
                                 ("x.jpg", tarfile.DIRTYPE, b""), ("._a.png", tarfile.REGTYPE, b"mac"),
                                 ("NOTES", tarfile.REGTYPE, b"n"), ("../up.png", tarfile.REGTYPE, b"u"),
                                 ("b.png", tarfile.REGTYPE, encode(rgb_image(40, 32, seed=2))),
                                 ("b.png", tarfile.REGTYPE, encode(rgb_image(40, 32, seed=3)))]:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, "a.png" if kind == tarfile.SYMTYPE else ""
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    out = OutputDir(str(tmp_path / "out"))
    labeler = ShardLabeler(engine, tiny_cfg(), out, "test")
    try:
        result = labeler.label(ShardSpec(str(shard), "acc"))
    finally:
        labeler.close()
    rows = pq.read_table(tmp_path / "out" / "manifest" / "acc.parquet").to_pylist()
    assert [(r["key"], r["status"], (r["error"] or "").split(":")[0]) for r in rows] == [
        ("a", "ok", ""), ("../up", "error", "unsafe_key"), ("b", "ok", ""), ("b", "error", "duplicate_key")]
    done = json.loads((tmp_path / "out" / "_done" / "acc.json").read_text())
    assert done["members"] == 10 and done["skipped_members"] == {
        "directory": 2, "symlink": 1, "fifo": 1, "hidden": 1, "no_extension": 1}
    assert done["members"] - sum(done["skipped_members"].values()) >= done["samples"] == 4
    assert done["error_kinds"] == {"unsafe_key": 1, "duplicate_key": 1} and result.skipped_members == done["skipped_members"]
    names = [m for m, _ in iter_members(tmp_path / "out" / "masks" / "acc.tar")]
    assert names == ["a.label.png", "a.conf.png", "b.label.png", "b.conf.png"]
    assert not any(".." in n.split("/") or n.startswith("/") for n in names)


@pytest.mark.timeout(60)
def test_upper_case_extensions_are_recorded_as_spelled(engine, tiny_cfg, tmp_path):
    members = [("a.JPG", encode(rgb_image(48, 32), "JPEG")), ("b.Jpeg", encode(rgb_image(48, 32, seed=1), "JPEG")),
               ("c.PNG", encode(rgb_image(48, 32, seed=2)))]
    result, out = label(engine, tiny_cfg(), tmp_path, members)
    rows = pq.read_table(out / "manifest" / "s.parquet").to_pylist()
    assert [(r["key"], r["status"], r["image_member"]) for r in rows] == [
        ("a", "ok", "JPG"), ("b", "ok", "Jpeg"), ("c", "ok", "PNG")]


class BreaksAfter:
    """The real engine until `after` images have gone through, then every call raises (as an engine
    whose device broke mid-run would)."""

    def __init__(self, engine, after):
        self.engine, self.after, self.seen = engine, after, 0
        self.num_classes, self.patch_size = engine.num_classes, engine.patch_size

    def predict(self, images, return_probs=False):
        if self.seen + len(images) > self.after:
            raise RuntimeError("engine state lost after a failed batch")
        self.seen += len(images)
        return self.engine.predict(images, return_probs=return_probs)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("after", [0, 12])  # broken from the start; broken after 12 of 24 images (< half failed)
def test_shard_a_broken_engine_labels_is_not_complete(engine, tiny_cfg, tmp_path, after):
    from pipeline.errors import ShardInferenceError

    members = [(f"k{i:02d}.png", encode(rgb_image(48, 32, seed=i))) for i in range(24 if after else 6)]
    with pytest.raises(ShardInferenceError, match="engine failed on"):
        label(BreaksAfter(engine, after), tiny_cfg(), tmp_path, members)
    out = tmp_path / "out"
    assert not (out / "_done").exists() and not (out / "manifest").exists() and not (out / "masks" / "s.tar").exists()


@pytest.mark.timeout(60)
def test_transient_read_failure_writes_nothing(engine, tiny_cfg, tmp_path):
    from pipeline.errors import TransientReadError

    whole = tmp_path / "whole.tar"
    write_tar(whole, [(f"k{i}.png", encode(rgb_image(48, 32, seed=i))) for i in range(6)])
    out = OutputDir(str(tmp_path / "out"))
    labeler = ShardLabeler(engine, tiny_cfg(), out, "test")
    try:
        with pytest.raises(TransientReadError, match="status 1"):
            labeler.label(ShardSpec(f"pipe:head -c 9000 {whole}; exit 1", "p"))
    finally:
        labeler.close()
    assert not (tmp_path / "out" / "_done").exists() and not (tmp_path / "out" / "manifest").exists()
    assert not (tmp_path / "out" / "masks" / "p.tar").exists()


@pytest.mark.timeout(60)
def test_a_long_strip_is_capped_on_its_long_side_not_upscaled(engine, tiny_cfg, tmp_path):
    from pipeline.engine.predictor import _resized

    assert _resized(20, 10000, 336, 2048) == (4, 2048)  # not (336, 168000)
    assert _resized(480, 640, 336, 2048) == (336, 448)  # ordinary photos: the short side rules
    assert _resized(336, 4000, 336, 2048) == (172, 2048)
    assert _resized(20, 10000, 336, 0) == (336, 168000)  # long_side 0: no cap
    assert _resized(3000, 5000, 0, 2048) == (1229, 2048) and _resized(300, 500, 0, 2048) == (300, 500)
    members = [("strip.png", encode(rgb_image(2000, 20))), ("long.png", encode(rgb_image(10000, 20))),
               ("ok.png", encode(rgb_image(64, 48)))]
    result, out = label(engine, tiny_cfg("inference.short_side=336"), tmp_path, members)
    rows = pq.read_table(out / "manifest" / "s.parquet").to_pylist()
    # 2000x20: factor min(2048/2000, 336/20) = 1.024 -> inferred at 2048x20, labeled at 2000x20;
    # 10000x20: 2048x4, less than a patch: a too_small row (data), not an inference error (engine)
    assert [(r["key"], r["status"]) for r in rows] == [("strip", "ok"), ("long", "error"), ("ok", "ok")]
    assert rows[1]["error"].startswith("too_small: image 10000x20")
    assert result.error_kinds == {"too_small": 1}
    assert (rows[0]["width"], rows[0]["height"]) == (2000, 20) and result.status == DONE
