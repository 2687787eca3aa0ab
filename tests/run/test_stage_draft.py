"""io.jpeg_draft through the stage: JPEGs decoded smaller, masks and manifest rows at the full
(oriented) size, PNGs and limits as without it, and the setting in the content fingerprint."""
import io
import logging

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.evaluation.outputs import decode_label_png
from pipeline.identity import resolve_identity
from pipeline.io.output_dir import OutputDir
from pipeline.io.shards import ShardSpec
from pipeline.io.tarfiles import iter_members, write_tar
from pipeline.run.stage import DONE, ShardLabeler
from tests.support import encode, rgb_image

SHORT = "inference.short_side=64"  # 640x480 JPEGs draft to 1/4 (120x160)


def scene(width: int, height: int, seed: int) -> Image.Image:
    """A photo-like scene (smooth regions): draft mode's averaging and the engine's bilinear
    sampling then see the same picture, as on photos (on pixel noise they would not)."""
    from pipeline.demo_corpus import scene as demo_scene

    return demo_scene(np.random.default_rng(seed), (width // 8, height // 8)).resize((width, height), Image.BICUBIC)


def exif_jpeg(img: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img, "JPEG", quality=92, exif=exif.tobytes())


MEMBERS = [
    ("a_land.jpg", encode(scene(640, 480, seed=1), "JPEG", quality=92)),
    ("b_rotated.jpg", exif_jpeg(scene(640, 480, seed=2), 6)),  # shown as 480x640
    ("c_png.png", encode(rgb_image(320, 240, seed=3))),
    ("d_small.jpg", encode(rgb_image(100, 80, seed=4), "JPEG")),  # the engine enlarges it: not drafted
    ("e_big.jpg", encode(rgb_image(900, 700, seed=5), "JPEG")),  # past io.max_image_pixels
]
FULL_SIZES = {"a_land": (640, 480), "b_rotated": (480, 640), "c_png": (320, 240), "d_small": (100, 80)}


def label(engine, cfg, tmp_path, name):
    shard = tmp_path / f"{name}.tar"
    write_tar(shard, MEMBERS)
    out = tmp_path / f"out_{name}"
    labeler = ShardLabeler(engine, cfg, OutputDir(str(out)), "test")
    try:
        result = labeler.label(ShardSpec(str(shard), name))
    finally:
        labeler.close()
    rows = {r["key"]: r for r in pq.read_table(out / "manifest" / f"{name}.parquet").to_pylist()}
    return result, rows, dict(iter_members(out / "masks" / f"{name}.tar")), labeler


@pytest.fixture(scope="module")
def segmenter(tiny_cfg):
    from pipeline.engine import Segmenter

    return Segmenter.from_config(tiny_cfg(SHORT))


@pytest.mark.timeout(180)
def test_drafted_shard_has_full_size_masks_close_to_the_exact_ones(segmenter, tiny_cfg, tmp_path):
    full = ("labels.max_side=0", "labels.confidence_max_side=0")  # maps at the image's size (tests/run/test_stored_size.py caps)
    cfgs = {mode: tiny_cfg(SHORT, "io.max_image_pixels=500000", f"io.jpeg_draft={mode}", *full) for mode in ("false", "true")}
    exact, exact_rows, exact_masks, _ = label(segmenter, cfgs["false"], tmp_path, "exact")
    draft, rows, masks, labeler = label(segmenter, cfgs["true"], tmp_path, "draft")
    assert labeler.limits.draft_to is not None and exact.status == draft.status == DONE
    assert rows["e_big"]["error"].startswith("too_large") and "900x700" in rows["e_big"]["error"]
    for key, (width, height) in FULL_SIZES.items():
        assert (rows[key]["width"], rows[key]["height"]) == (width, height) == \
               (exact_rows[key]["width"], exact_rows[key]["height"])
        for kind in ("label", "conf"):
            assert Image.open(io.BytesIO(masks[f"{key}.{kind}.png"])).size == (width, height)
        labels = decode_label_png(masks[f"{key}.label.png"])
        share = float((labels == decode_label_png(exact_masks[f"{key}.label.png"])).mean())
        assert share > 0.9, (key, share)
    for key in ("c_png", "d_small"):  # not drafted: the very same masks
        assert masks[f"{key}.label.png"] == exact_masks[f"{key}.label.png"]
        assert masks[f"{key}.conf.png"] == exact_masks[f"{key}.conf.png"]


class _ExactOnly:
    """An engine without `inference_size` / `out_sizes` (as the student): draft cannot apply."""

    def __init__(self, real):
        self.real, self.num_classes, self.patch_size = real, real.num_classes, real.patch_size

    def predict(self, images, return_probs=False):
        return self.real.predict(images, return_probs=return_probs)


@pytest.mark.timeout(120)
def test_an_engine_that_cannot_label_at_the_full_size_decodes_exactly(segmenter, tiny_cfg, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="pipeline.run.stage"):
        result, rows, masks, labeler = label(_ExactOnly(segmenter), tiny_cfg(SHORT, "io.jpeg_draft=true"),
                                             tmp_path, "plain")
    assert labeler.limits.draft_to is None and "decoding exactly" in caplog.text
    assert result.ok == 5 and (rows["b_rotated"]["width"], rows["b_rotated"]["height"]) == (480, 640)


def test_jpeg_draft_is_in_the_fingerprint_only_when_on(tiny_cfg):
    base = resolve_identity(tiny_cfg())
    assert "io.jpeg_draft" not in base.values  # off: the fingerprint of OUTPUTs from before the key
    drafted = resolve_identity(tiny_cfg("io.jpeg_draft=true"))
    assert [d.key for d in drafted.differences(base)] == ["io.jpeg_draft"]
    assert drafted.fingerprint != base.fingerprint
