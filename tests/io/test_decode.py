import numpy as np
import pytest
from PIL import Image

from pipeline.io.decode import DecodeLimits, decode_image, to_rgb
from pipeline.io.records import SampleError
from tests.support import encode, rgb_image

LIMITS = DecodeLimits(max_pixels=10_000_000, min_side=16)


def kind_of(data: bytes, limits: DecodeLimits = LIMITS) -> str:
    with pytest.raises(SampleError) as info:
        decode_image(data, limits)
    return info.value.kind


def test_rgb_is_kept_exactly():
    img = rgb_image(40, 24)
    out = decode_image(encode(img), LIMITS)
    assert out.source_mode == "RGB"
    assert out.rgb.dtype == np.uint8 and out.rgb.shape == (24, 40, 3)
    np.testing.assert_array_equal(out.rgb, np.asarray(img))


@pytest.mark.parametrize("mode", ["L", "1"])
def test_gray_is_replicated(mode):
    gray = (np.arange(32 * 20) % 256).astype(np.uint8).reshape(20, 32)
    img = Image.fromarray(gray, "L").convert(mode)
    out = decode_image(encode(img), LIMITS)
    expected = np.asarray(img.convert("L"))
    assert out.source_mode == mode
    for c in range(3):
        np.testing.assert_array_equal(out.rgb[..., c], expected)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_composited_over_white(mode):
    arr = np.zeros((20, 20, 4), dtype=np.uint8)
    arr[..., :3] = (10, 10, 10)
    arr[:, :10, 3] = 0  # left half transparent
    arr[:, 10:, 3] = 255  # right half opaque
    arr[0, 15, 3] = 128  # one half-transparent pixel
    img = Image.fromarray(arr, "RGBA").convert(mode)
    out = decode_image(encode(img), LIMITS)
    assert out.source_mode == mode
    assert (out.rgb[:, :10] == 255).all()
    assert (out.rgb[1:, 10:] == 10).all()
    assert 120 <= int(out.rgb[0, 15, 0]) <= 140  # halfway between 10 and 255


def test_palette_with_and_without_transparency():
    plain = rgb_image(20, 20).convert("P")
    out = decode_image(encode(plain), LIMITS)
    assert out.source_mode == "P"
    np.testing.assert_array_equal(out.rgb, np.asarray(plain.convert("RGB")))
    transparent = Image.new("P", (20, 20), 3)
    transparent.putpalette([0, 0, 0] * 3 + [200, 0, 0] + [0, 0, 0] * 252)
    transparent.info["transparency"] = 3
    out = decode_image(encode(transparent, transparency=3), LIMITS)
    assert (out.rgb == 255).all()  # index 3 is transparent: white


def test_cmyk_jpeg_is_converted():
    img = Image.new("CMYK", (24, 24), (0, 255, 255, 0))  # pure red in CMYK
    out = decode_image(encode(img, "JPEG", quality=95), LIMITS)
    assert out.source_mode == "CMYK" and out.rgb.shape == (24, 24, 3)
    r, g, b = out.rgb[12, 12].astype(int)
    assert r > 200 and g < 60 and b < 60


def test_sixteen_bit_gray_is_scaled():
    values = np.zeros((20, 20), dtype=np.uint16)
    values[:, :5] = 65535
    values[:, 5:10] = 257 * 100
    img = Image.fromarray(values)  # mode I;16
    out = decode_image(encode(img), LIMITS)
    assert out.source_mode.startswith("I")
    assert (out.rgb[:, :5] == 255).all() and (out.rgb[:, 5:10] == 100).all() and (out.rgb[:, 10:] == 0).all()


def test_32_bit_int_out_of_range_and_float_are_refused():
    wide = Image.fromarray(np.full((20, 20), 70000, dtype=np.int32), "I")
    with pytest.raises(SampleError) as info:
        to_rgb(wide)
    assert info.value.kind == "unsupported_mode"
    float_img = Image.fromarray(np.ones((20, 20), dtype=np.float32), "F")
    assert kind_of(encode(float_img, "TIFF")) == "unsupported_mode"


def test_corrupt_and_truncated_images():
    jpeg = encode(rgb_image(64, 64), "JPEG")
    assert kind_of(jpeg[: len(jpeg) // 2]) == "corrupt"
    assert kind_of(b"definitely not an image") == "corrupt"
    assert kind_of(b"") == "corrupt"


def test_smaller_than_a_patch():
    assert kind_of(encode(rgb_image(15, 40))) == "too_small"
    assert decode_image(encode(rgb_image(16, 16)), LIMITS).rgb.shape == (16, 16, 3)


def test_decompression_bomb_is_refused_from_the_header():
    assert kind_of(encode(rgb_image(50, 40)), DecodeLimits(max_pixels=1999, min_side=16)) == "too_large"
    assert decode_image(encode(rgb_image(50, 40)), DecodeLimits(max_pixels=2000, min_side=16)).rgb.shape == (40, 50, 3)


def test_pillow_own_bomb_error_is_a_too_large_row(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow raises above 2x this, at open
    assert kind_of(encode(rgb_image(30, 30))) == "too_large"


def test_exif_orientation_is_applied():
    img = rgb_image(40, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = decode_image(encode(img, "JPEG", exif=exif.tobytes()), LIMITS)
    assert out.rgb.shape == (40, 20, 3)


def test_bomb_message_quotes_the_configured_pixel_limit():
    import io

    from pipeline.io.decode import configure_pillow

    buf = io.BytesIO()
    Image.new("1", (20000, 10000)).save(buf, format="PNG")  # 2e8 pixels: past Pillow's own bomb limit
    configure_pillow(5000)
    with pytest.raises(SampleError) as info:
        decode_image(buf.getvalue(), DecodeLimits(max_pixels=5000, min_side=16))
    assert info.value.kind == "too_large" and "io.max_image_pixels (5000)" in info.value.message
