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
    assert decode_threads(auto, SimpleNamespace(type="cuda")) == 16
