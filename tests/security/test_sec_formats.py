"""Threat 6 of docs/security.md: only raster decoders are reachable. PostScript bytes in a `.jpg`
member would be opened by Pillow's EPS plugin, which starts Ghostscript; a fake `gs` first on PATH
records whether it was started. Labeling makes an `unsupported_format` row; the readers of a
finished output (training loader, report, export: `decode_rgb`) and the mask readers refuse too."""
from __future__ import annotations

import io

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.io.output_dir import OutputDir
from pipeline.io.records import SampleError
from pipeline.io.shards import ShardSpec
from pipeline.io.tarfiles import write_tar
from pipeline.run.stage import ShardLabeler

pytestmark = pytest.mark.timeout(120)

EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 32 32\n%%EndComments\n"
       b"0 0 moveto 32 32 lineto stroke\nshowpage\n%%EOF\n")


@pytest.fixture
def fake_ghostscript(tmp_path, monkeypatch):
    """A `gs` that leaves a marker when started; returns the marker's path."""
    bin_dir, marker = tmp_path / "bin", tmp_path / "ghostscript-started"
    bin_dir.mkdir()
    gs = bin_dir / "gs"
    gs.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    gs.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
    return marker


def _png(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_the_fake_ghostscript_is_started_by_an_unrestricted_open(fake_ghostscript):
    """The fixture is real: Pillow without `formats=` runs `gs` for these bytes."""
    with pytest.raises(Exception):
        Image.open(io.BytesIO(EPS)).load()
    assert fake_ghostscript.exists()


def test_eps_in_a_jpg_member_is_an_unsupported_format_row(engine, tiny_cfg, tmp_path, fake_ghostscript):
    members = [("a.jpg", EPS), ("b.png", _png(1)), ("c.jpg", _png(2))]  # c: PNG bytes misnamed, still fine
    shard = tmp_path / "s.tar"
    write_tar(shard, members)
    labeler = ShardLabeler(engine, tiny_cfg(), OutputDir(str(tmp_path / "out")), "test")
    try:
        result = labeler.label(ShardSpec(str(shard), "s"))
    finally:
        labeler.close()
    rows = {r["key"]: r for r in pq.read_table(tmp_path / "out" / "manifest" / "s.parquet").to_pylist()}
    assert rows["a"]["status"] == "error" and rows["a"]["error"].startswith("unsupported_format: EPS")
    assert rows["b"]["status"] == "ok" and rows["c"]["status"] == "ok"
    assert result.samples == 3
    assert not fake_ghostscript.exists()


def test_readers_of_an_output_never_reach_a_non_raster_decoder(fake_ghostscript):
    from pipeline.evaluation.outputs import decode_conf_png, decode_image, decode_label_png
    from pipeline.io.decode import decode_rgb

    with pytest.raises(SampleError, match="unsupported_format"):
        decode_rgb(EPS)  # the training loader's, the report's and export's decoder
    with pytest.raises(SampleError, match="unsupported_format"):
        decode_image(EPS)
    for read_mask in (decode_label_png, decode_conf_png):  # masks of a shared OUTPUT: PNG only
        with pytest.raises(Exception, match="cannot identify image file"):
            read_mask(EPS)
    assert not fake_ghostscript.exists()


def test_predict_refuses_eps_without_starting_ghostscript(tmp_path, fake_ghostscript, tiny_overrides, capsys):
    from pipeline.cli import main

    eps = tmp_path / "photo.jpg"
    eps.write_bytes(EPS)
    sets = [a for s in tiny_overrides for a in ("--set", s)]
    rc = main(["predict", str(eps), "--out", str(tmp_path / "pred"), *sets])
    assert rc != 0 and "cannot read image" in capsys.readouterr().err
    assert not fake_ghostscript.exists()


def test_decode_formats_follow_io_image_extensions():
    from pipeline.io.decode import DecodeLimits, decode_formats, decode_image

    assert decode_formats(["jpg", "jpeg", "png", "webp"]) == ("JPEG", "PNG", "WEBP")
    assert decode_formats(["eps", "pdf"]) == ()  # non-raster extensions open nothing
    only_jpeg = DecodeLimits(10**8, 1, formats=decode_formats(["jpg"]))
    with pytest.raises(SampleError, match="unsupported_format: PNG data is not decoded"):
        decode_image(_png(), only_jpeg)
    with pytest.raises(SampleError, match="corrupt: not a recognised image format"):
        decode_image(b"plain garbage bytes", only_jpeg)


def test_training_loader_refuses_eps_swapped_into_a_labeled_input(tmp_path, fake_ghostscript):
    """An input shard rewritten after labeling (a shared folder): the training loader's decoder
    refuses the EPS member in one error, and Ghostscript never starts."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from output_fixture import synthetic_sample, write_output_dir

    from pipeline.io.tarfiles import iter_members
    from pipeline.training.loader import PseudoLabelDataset

    rng = np.random.default_rng(1)
    out = write_output_dir(tmp_path / "labels", {"p-000000": [synthetic_sample(rng, f"s{i}", (24, 32), 3)
                                                              for i in range(3)]}, ["a", "b", "c"])
    source = out.input_dir / "p-000000.tar"
    members = list(iter_members(source))
    members[0] = (members[0][0], EPS)  # same name, PostScript inside
    write_tar(source, members)
    with pytest.raises(ValueError, match="unsupported_format: EPS"):
        list(PseudoLabelDataset(str(out.root), shuffle_shards=False))
    assert not fake_ghostscript.exists()
