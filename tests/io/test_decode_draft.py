"""io.jpeg_draft in the decoder: JPEGs decoded at a DCT scale that still covers the engine's
inference size, every other rule (limits, modes, EXIF orientation) judged as without it."""
import numpy as np
import pytest
from PIL import Image, ImageOps

from pipeline.io.decode import DecodeLimits, decode_image
from pipeline.io.records import SampleError
from tests.support import encode

MAX_PIXELS = 10_000_000


def short_side_to(short: int):
    """An inference size as the Segmenter's (`_resized` without a long-side cap)."""
    def size(height: int, width: int) -> tuple[int, int]:
        scale = short / min(height, width)
        return int(height * scale + 0.5), int(width * scale + 0.5)
    return size


def limits(draft_to=None, max_pixels: int = MAX_PIXELS, min_side: int = 16) -> DecodeLimits:
    return DecodeLimits(max_pixels=max_pixels, min_side=min_side, draft_to=draft_to)


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth gradients plus a left/right and top/bottom asymmetry, so orientation errors show."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    rng = np.random.default_rng(seed)
    arr = np.stack([255 * xx / width, 255 * yy / height, 128 + 60 * np.sin(xx / 37 + yy / 53)], axis=-1)
    arr[: height // 4, : width // 4] = (250, 20, 20)  # a red block in the stored top-left corner
    arr += rng.normal(0, 4, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def jpeg(img: Image.Image, orientation: int = 1, **kw) -> bytes:
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    return encode(img, "JPEG", quality=92, exif=exif.tobytes(), **kw)


def reference(data: bytes) -> np.ndarray:
    """Today's decode, written out: open, EXIF orientation, RGB."""
    import io

    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(ImageOps.exif_transpose(img).convert("RGB"))


def test_draft_off_decodes_exactly_as_before():
    data = jpeg(photo(640, 480), orientation=6)
    out = decode_image(data, limits())
    np.testing.assert_array_equal(out.rgb, reference(data))
    assert out.size == out.rgb.shape[:2] == (640, 480)


def test_draft_to_the_full_size_changes_nothing():
    data = jpeg(photo(640, 480))
    out = decode_image(data, limits(draft_to=lambda h, w: (h, w)))  # short_side 0: no resize
    np.testing.assert_array_equal(out.rgb, reference(data))


@pytest.mark.parametrize("short, scale", [(120, 4), (60, 8), (200, 2), (300, 1), (30, 8)])
def test_smallest_dct_scale_that_still_covers_the_inference_size(short, scale):
    data = jpeg(photo(640, 480))
    out = decode_image(data, limits(draft_to=short_side_to(short)))
    assert out.size == (480, 640)  # the labels' size: the full one
    assert out.rgb.shape[:2] == (480 // scale, 640 // scale)
    assert min(out.rgb.shape[:2]) >= min(short, 480)  # the engine only ever downsamples


def test_drafted_pixels_are_the_image_downscaled():
    img = photo(640, 480)
    out = decode_image(jpeg(img), limits(draft_to=short_side_to(120)))
    expected = np.asarray(img.resize((160, 120), Image.BOX)).astype(int)
    assert np.abs(out.rgb.astype(int) - expected).mean() < 6


@pytest.mark.parametrize("orientation, swapped", [(1, False), (3, False), (6, True), (8, True), (5, True)])
def test_exif_orientation_gives_the_full_oriented_size(orientation, swapped):
    img = photo(640, 480)
    data = jpeg(img, orientation)
    exact = decode_image(data, limits())
    out = decode_image(data, limits(draft_to=short_side_to(60)))
    assert out.size == exact.rgb.shape[:2] == ((640, 480) if swapped else (480, 640))
    assert out.rgb.shape[:2] == (out.size[0] // 8, out.size[1] // 8)
    # Same picture, the same way up: the exact decode shrunk by 8 matches the drafted one.
    shrunk = np.asarray(Image.fromarray(exact.rgb).resize(out.rgb.shape[1::-1], Image.BOX)).astype(int)
    assert np.abs(out.rgb.astype(int) - shrunk).mean() < 6


def test_portrait_inference_size_is_asked_for_in_stored_orientation():
    # Stored 800x200 landscape shown as a 200x800 portrait: an inference short side of 100 needs a
    # 100-wide, 400-tall image, i.e. 1/2 on the stored 800x200 (1/4 would leave 50 px).
    out = decode_image(jpeg(photo(800, 200), orientation=6), limits(draft_to=short_side_to(100)))
    assert out.size == (800, 200) and out.rgb.shape[:2] == (400, 100)


def test_limits_are_judged_on_the_full_image():
    data = jpeg(photo(640, 480))
    drafted = limits(draft_to=short_side_to(60), max_pixels=640 * 480 - 1)
    with pytest.raises(SampleError) as info:
        decode_image(data, drafted)
    assert info.value.kind == "too_large" and "640x480" in str(info.value)
    assert decode_image(data, limits(draft_to=short_side_to(60), min_side=400)).rgb.shape[:2] == (60, 80)
    with pytest.raises(SampleError) as info:
        decode_image(data, limits(draft_to=short_side_to(60), min_side=481))
    assert info.value.kind == "too_small"


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_modes_are_kept(mode):
    data = encode(photo(640, 480).convert(mode), "JPEG", quality=92)
    exact = decode_image(data, limits())
    out = decode_image(data, limits(draft_to=short_side_to(120)))
    assert out.source_mode == exact.source_mode == mode
    assert out.rgb.shape == (120, 160, 3) and out.size == (480, 640)


def test_png_is_not_drafted():
    data = encode(photo(640, 480))
    out = decode_image(data, limits(draft_to=short_side_to(60)))
    np.testing.assert_array_equal(out.rgb, decode_image(data, limits()).rgb)
    assert out.size == (480, 640)


def test_corrupt_jpeg_is_still_corrupt():
    data = jpeg(photo(640, 480))
    with pytest.raises(SampleError) as info:
        decode_image(data[: len(data) // 2], limits(draft_to=short_side_to(60)))
    assert info.value.kind == "corrupt"
