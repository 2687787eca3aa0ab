"""One decoder: the training loader (and the report, through the same function) sees exactly the
pixels the labeler saw, for the image modes where a plain `Image.convert("RGB")` disagrees."""
import io

import numpy as np
import pytest
from PIL import Image

from output_fixture import FakeSample, write_output_dir
from pipeline.evaluation.outputs import OutputDir
from pipeline.io.decode import DecodeLimits, decode_image
from pipeline.io.tarfiles import write_tar
from pipeline.training import iter_shard, select_shards

pytestmark = pytest.mark.timeout(60)

H, W = 24, 32
LABELER_LIMITS = DecodeLimits(max_pixels=10**8, min_side=16)  # what the stage passes


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _rgba() -> bytes:
    arr = np.zeros((H, W, 4), np.uint8)
    arr[..., 0] = np.arange(W, dtype=np.uint8) * 8
    arr[..., 3] = 255
    arr[:, :8, :3] = 0
    arr[:, :8, 3] = 0  # fully transparent, black underneath: white to the labeler
    arr[:, 8:16, 3] = 100  # half transparent
    return _save(Image.fromarray(arr), "PNG")  # 4 channels: RGBA


def _palette_transparent() -> bytes:
    idx = (np.arange(H * W).reshape(H, W) % 4).astype(np.uint8)
    img = Image.frombytes("P", (W, H), idx.tobytes())
    img.putpalette([0, 0, 0, 200, 10, 10, 10, 200, 10, 10, 10, 200] + [0] * (256 - 4) * 3)
    return _save(img, "PNG", transparency=0)


def _gray16() -> bytes:
    values = np.full((H, W), 30000, np.uint16)
    values[:, W // 2:] = 65535
    img = Image.fromarray(values)  # uint16: I;16
    assert img.mode == "I;16"
    return _save(img, "PNG")


def _cmyk() -> bytes:
    arr = np.zeros((H, W, 4), np.uint8)
    arr[..., 0] = 200
    arr[..., 3] = np.arange(W, dtype=np.uint8) * 4
    return _save(Image.frombytes("CMYK", (W, H), arr.tobytes()), "JPEG", quality=95)


def _exif_rotated() -> bytes:
    # Stored W x H swapped; orientation 6 (rotate 90 clockwise on display) gives W x H.
    arr = np.zeros((W, H, 3), np.uint8)
    arr[:4] = (250, 0, 0)  # a red band along the stored top
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6
    return _save(img, "JPEG", quality=95, exif=exif.tobytes())


CASES = {"rgba": ("png", _rgba), "p_transparent": ("png", _palette_transparent),
         "gray16": ("png", _gray16), "cmyk": ("jpg", _cmyk), "exif_rotated": ("jpg", _exif_rotated)}


@pytest.fixture
def loaded(tmp_path):
    encoded = {key: (ext, make()) for key, (ext, make) in CASES.items()}
    label = np.zeros((H, W), np.uint8)
    samples = [FakeSample(key, np.zeros((H, W, 3), np.uint8), label, np.ones((H, W)), image_ext=ext)
               for key, (ext, _) in encoded.items()]
    out = write_output_dir(tmp_path / "out", {"s0": samples}, ["background", "thing"])
    # The input shard holds the real images (the fixture wrote plain RGB placeholders).
    write_tar(out.source_shards["s0"], [(f"{key}.{ext}", data) for key, (ext, data) in encoded.items()])
    selection = select_shards(OutputDir(str(out.root)))
    images = {s.key: s.image for shard in selection.shards for s in iter_shard(shard)}
    return encoded, images


def test_loader_pixels_equal_labeler_pixels(loaded):
    encoded, images = loaded
    assert sorted(images) == sorted(CASES)
    for key, (_ext, data) in encoded.items():
        labeler = decode_image(data, LABELER_LIMITS).rgb
        assert images[key].shape == labeler.shape == (H, W, 3), key
        assert images[key].dtype == np.uint8
        np.testing.assert_array_equal(images[key], labeler, err_msg=key)


def test_the_modes_that_used_to_disagree(loaded):
    encoded, images = loaded
    # Transparent RGBA is white (a plain convert("RGB") makes it black).
    assert (images["rgba"][:, :8] == 255).all()
    assert (np.asarray(Image.open(io.BytesIO(encoded["rgba"][1])).convert("RGB"))[:, :8] == 0).all()
    # 16-bit gray is scaled by 1/257 (a plain convert clips 30000 to 255).
    assert (images["gray16"][:, : W // 2] == round(30000 / 257)).all()
    assert (images["gray16"][:, W // 2:] == 255).all()
    # The transparent palette entry is white too, the others keep their colour.
    assert (images["p_transparent"][0, 0] == 255).all()
    assert tuple(images["p_transparent"][0, 1]) == (200, 10, 10)
    # EXIF orientation applied: the stored top band ends up along the right edge.
    assert images["exif_rotated"][:, -2:, 0].min() > 200 and images["exif_rotated"][:, :4, 0].max() < 50
