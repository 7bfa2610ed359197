"""Open any photo a person might upload, safely, as an RGB Pillow image."""
from __future__ import annotations

import io
import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

#: photos above this many pixels are refused (Pillow's own bomb guard stays on too)
MAX_PIXELS = 100_000_000
#: photos are reduced to at most this long side before any work (faces stay > 64 px)
WORK_MAX_SIDE = 2048


class ImageError(ValueError):
    """A file that cannot be used as a photo; the message is meant for the user."""


def load_image(source, max_side: int = WORK_MAX_SIDE) -> Image.Image:
    """Return ``source`` (bytes, path or PIL image) as an upright RGB image.

    Honours EXIF rotation, flattens transparency on white, converts any mode
    (CMYK, 16-bit, palette, ...) and reduces very large photos to ``max_side``.
    Raises :class:`ImageError` with a readable message for anything that is not
    a usable image.
    """
    if isinstance(source, Image.Image):
        image = source
    else:
        data = Path(source).read_bytes() if isinstance(source, (str, Path)) else bytes(source)
        if not data:
            raise ImageError("The file is empty.")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise ImageError("This file is not an image SmileKit can read (JPEG, PNG, WebP, GIF, BMP or TIFF).") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageError("This image is too large to process (too many pixels).") from None
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise ImageError(f"This image is too large to process ({width}x{height} pixels; the limit is {MAX_PIXELS // 1_000_000} megapixels).")
    try:
        if getattr(image, "format", None) == "JPEG":
            image.draft("RGB", (max_side, max_side))  # fast JPEG downscale while decoding
        image.seek(0)  # first frame of animations
        image.load()
        image = ImageOps.exif_transpose(image)
        image = _to_rgb(image)
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"The image could not be decoded (the file may be truncated or damaged): {err}") from None
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.LANCZOS)
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit / float greyscale: stretch to 8 bits by the image's own range
        lo, hi = image.getextrema()
        scale = 255.0 / (hi - lo) if hi > lo else 1.0
        image = image.point(lambda v: (v - lo) * scale).convert("L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    return image.convert("RGB")
