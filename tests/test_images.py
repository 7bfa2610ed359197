"""Opening photos: formats, modes, EXIF rotation, size limits and clear errors."""
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from smilekit.vision import images
from smilekit.vision.images import MAX_PIXELS, REDUCE_FILTER, ImageError, load_image


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


@pytest.mark.parametrize("fmt,mode", [("JPEG", "RGB"), ("JPEG", "CMYK"), ("PNG", "RGBA"), ("PNG", "P"), ("PNG", "I;16"),
                                      ("WEBP", "RGB"), ("GIF", "P"), ("BMP", "RGB"), ("TIFF", "RGB"), ("PNG", "LA")])
def test_every_common_format_and_mode_becomes_rgb(fmt, mode):
    source = Image.new(mode, (40, 30), 200 if mode in ("P", "LA", "I;16") else None)
    image = load_image(_encode(source, fmt))
    assert image.mode == "RGB" and image.size == (40, 30)


def test_sixteen_bit_greyscale_is_stretched_not_clipped():
    ramp = np.linspace(1000, 60000, 64 * 64).reshape(64, 64).astype(np.uint16)
    image = load_image(_encode(Image.fromarray(ramp), "PNG"))
    values = np.asarray(image.convert("L"))
    assert values.min() < 10 and values.max() > 245


def test_exif_rotation_is_applied():
    source = Image.new("RGB", (60, 20), "white")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    image = load_image(_encode(source, "JPEG", exif=exif))
    assert image.size == (20, 60)


def test_large_photo_is_reduced():
    image = load_image(_encode(Image.new("RGB", (4000, 3000)), "PNG"), max_side=1000)
    assert max(image.size) == 1000


@pytest.mark.parametrize("data,message", [(b"", "empty"), (b"%PDF-1.4 not an image", "not an image"),
                                           (b"\x89PNG\r\n\x1a\n" + b"\0" * 20, "not an image")])
def test_non_images_give_a_clear_error(data, message):
    with pytest.raises(ImageError, match=message):
        load_image(data)


def test_truncated_jpeg_gives_a_clear_error():
    data = _encode(Image.effect_noise((300, 300), 50).convert("RGB"), "JPEG")
    with pytest.raises(ImageError, match="truncated or damaged"):
        load_image(data[: len(data) // 3])


def test_decompression_bomb_is_refused():
    # a tiny PNG that claims to be far larger than the pixel limit
    side = int((MAX_PIXELS * 1.5) ** 0.5)
    data = _encode(Image.new("1", (side, side)), "PNG", optimize=True)
    assert len(data) < 5_000_000
    with pytest.raises(ImageError, match="too large"):
        load_image(data)


# -- HEIC / AVIF, formats offered, memory budgets -------------------------------------------------------

def _sideways_with_exif(upright: Image.Image) -> tuple[Image.Image, bytes]:
    """``upright`` stored as a camera held sideways stores it: pixels rotated, EXIF orientation 6."""
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    return upright.rotate(90, expand=True), exif.tobytes()


def _mean_difference(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b.resize(a.size), dtype=np.int16)).mean())


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_heic_and_avif_open_upright(fmt):
    upright = Image.linear_gradient("L").resize((120, 80)).convert("RGB")  # dark top, light bottom
    sideways, exif = _sideways_with_exif(upright)
    image = load_image(_encode(sideways, fmt, quality=90, exif=exif))
    assert image.mode == "RGB" and image.size == (120, 80)
    assert _mean_difference(upright, image) < 8


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_heic_and_avif_of_a_real_face_photo(celeba_dir, fmt):
    upright = Image.open(celeba_dir / "img" / "0.jpg").convert("RGB")
    sideways, exif = _sideways_with_exif(upright)
    image = load_image(_encode(sideways, fmt, quality=90, exif=exif))
    assert image.size == upright.size  # portrait again
    assert _mean_difference(upright, image) < 8  # the same picture, not a rotated or blank one


def test_formats_and_accept_name_what_opens():
    assert images.FORMATS == "JPEG, PNG, HEIC, AVIF, WebP, GIF, BMP or TIFF"
    accepted = images.ACCEPT.split(",")
    assert "image/*" in accepted and {".heic", ".heif", ".avif", ".jpg", ".png", ".webp", ".tif"} <= set(accepted)
    with pytest.raises(ImageError, match="HEIC, AVIF"):
        load_image(b"GIF87 but not really an image")


def test_formats_outside_the_list_are_refused():
    with pytest.raises(ImageError, match="not an image"):
        load_image(_encode(Image.new("RGB", (20, 20)), "ICO"))


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims to be width x height (its pixels are never needed: the header is enough to refuse it)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_full_size_formats_are_refused_above_their_budget_before_decoding():
    side = int(images.MAX_DECODED_PIXELS**0.5) + 10
    with pytest.raises(ImageError, match=f"too large.*{images.MAX_DECODED_PIXELS // 1_000_000} megapixels for PNG"):
        load_image(_png_header(side, side))


def _decoded_sizes(monkeypatch) -> list:
    seen = []
    reduce = images._reduced_rgb
    monkeypatch.setattr(images, "_reduced_rgb", lambda pixels, max_side: seen.append(pixels.size) or reduce(pixels, max_side))
    return seen


@pytest.mark.parametrize("mode,progressive", [("RGB", False), ("RGB", True), ("CMYK", False), ("L", True)])
def test_jpegs_are_decoded_reduced(monkeypatch, mode, progressive):
    seen = _decoded_sizes(monkeypatch)
    source = Image.linear_gradient("L").resize((4000, 3000)).convert(mode)
    image = load_image(_encode(source, "JPEG", progressive=progressive), max_side=500)
    assert seen == [(500, 375)]  # libjpeg decoded at 1/8: the full 12 MP never existed
    assert image.size == (500, 375) and image.mode == "RGB"


def test_jpegs_above_the_full_size_budget_are_allowed(monkeypatch):
    monkeypatch.setattr(images, "MAX_DECODED_PIXELS", 1_000_000)
    assert load_image(_encode(Image.new("RGB", (2000, 1000)), "JPEG"), max_side=500).size == (500, 250)
    with pytest.raises(ImageError, match="1 megapixels for PNG"):
        load_image(_encode(Image.new("RGB", (2000, 1000)), "PNG"))


def test_large_progressive_jpegs_are_refused(monkeypatch):
    # libjpeg keeps all DCT coefficients of a progressive JPEG: 3 bytes a pixel for 4:2:0 colour
    monkeypatch.setattr(images, "MAX_PROGRESSIVE_COEFFICIENT_BYTES", 3_000_000)
    source = Image.new("RGB", (2000, 1000))
    assert load_image(_encode(source, "JPEG"), max_side=500).size == (500, 250)  # baseline: fine
    with pytest.raises(ImageError, match="progressive JPEG is too large.*limit is 1 megapixels"):
        load_image(_encode(source, "JPEG", progressive=True))


@pytest.mark.parametrize("mode", ["RGBA", "P", "LA", "I;16", "CMYK"])
def test_large_photos_of_any_mode_are_reduced_band_by_band(mode):
    source = Image.new("RGB", (3000, 2000), (30, 60, 90))
    source.paste((250, 200, 10), (0, 0, 1500, 2000))  # left half yellow
    if mode == "RGBA":
        source = source.convert("RGBA")
        source.paste((0, 0, 0, 0), (0, 1000, 3000, 2000))  # bottom half transparent: white once flattened
    elif mode == "I;16":
        source = Image.fromarray((np.asarray(source.convert("L"), dtype=np.uint16) * 200))
    else:
        source = source.convert(mode)
    image = load_image(_encode(source, "TIFF" if mode == "CMYK" else "PNG"), max_side=300)
    assert image.size == (300, 200) and image.mode == "RGB"
    left, right = np.asarray(image)[50, 20].astype(int), np.asarray(image)[50, 280].astype(int)
    assert np.abs(left - right).sum() > 60  # the two halves stay distinct
    if mode == "RGBA":
        assert tuple(np.asarray(image)[180, 150]) == (255, 255, 255)


def test_the_photo_returned_holds_no_file():
    image = load_image(_encode(Image.new("RGB", (40, 30)), "PNG"))
    assert not isinstance(image, ImageFile.ImageFile)  # the upload's bytes are not kept alive with the photo



@pytest.mark.parametrize("fmt", ["PNG", "HEIF"])
def test_banded_reduction_matches_one_resize(fmt):
    source = Image.fromarray(np.random.default_rng(0).integers(0, 256, (350, 500, 3), dtype=np.uint8))
    data = _encode(source, fmt, quality=90)
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((300, 210), REDUCE_FILTER), dtype=np.int16)
    difference = np.abs(np.asarray(load_image(data, max_side=300), dtype=np.int16) - expected)
    assert difference.max() <= 1 and (difference > 0).mean() < 0.001  # only float rounding at band edges: no seams
