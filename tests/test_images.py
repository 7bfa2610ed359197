"""Opening photos: formats, modes, EXIF rotation, size limits and clear errors."""
import io

import numpy as np
import pytest
from PIL import Image

from smilekit.images import MAX_PIXELS, ImageError, load_image


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
    image = load_image(_encode(Image.new("RGB", (5000, 3000)), "PNG"), max_side=1000)
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
