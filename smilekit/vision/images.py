"""Open any photo a person might upload, safely, as an RGB Pillow image.

Memory: a kernel holds about 140 MB at rest and should stay under 300 MB while
it checks one photo (``benchmarks/bench_memory.py``). JPEGs are decoded already
reduced (libjpeg's draft mode: 1/2, 1/4 or 1/8 of the size), so they may be
large. Every other format (PNG, WebP, GIF, BMP, TIFF, HEIC, AVIF) is decoded at
full size first, so its pixel count is checked from the header before decoding
(:data:`MAX_DECODED_PIXELS`, :data:`MAX_HEIC_PIXELS`). The decoded photo is then converted and resized
band by band, so no full-size copy is made beside it. Progressive JPEGs
are the exception among JPEGs: libjpeg keeps every DCT coefficient of the
photo while decoding them, whatever the draft size
(:data:`MAX_PROGRESSIVE_COEFFICIENT_BYTES`). HEIC pixels are read from libheif's
buffer without a second full-size copy in Pillow.
"""
from __future__ import annotations

import ctypes
import io
import math
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageFile, UnidentifiedImageError, features

try:  # HEIC/HEIF (iPhone photos) through libheif; Pillow reads AVIF itself
    import pillow_heif
except ImportError:  # pragma: no cover - pillow-heif is a pinned dependency
    pillow_heif = None
else:
    # the primary image only: no thumbnails, depth maps or auxiliary images are decoded or kept
    pillow_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False, decode_threads=2)

#: photos above this many pixels are refused (JPEGs, decoded reduced by draft mode)
MAX_PIXELS = 100_000_000
#: formats Pillow decodes at full size (PNG, WebP, GIF, BMP, TIFF, AVIF) are refused above this many pixels.
#: Pillow holds RGB and RGBA at 4 bytes a pixel, so 12 MP is 48 MB decoded; measured with
#: benchmarks/bench_memory.py, a noisy 16 MP PNG in a full upload (40 MB) took a kernel to ~320 MB, over the
#: 300 MB it may reach; 12 MP (4,000 x 3,000) keeps screenshots, scans and phone photos saved as PNG.
MAX_DECODED_PIXELS = 12_000_000
#: HEIC is read band by band from libheif's 3-byte buffer (no Pillow copy): 25 MP keeps 24 MP phone photos
#: (5,712 x 4,284; measured ~130 MB above rest)
MAX_HEIC_PIXELS = 25_000_000
#: progressive JPEGs: libjpeg keeps every DCT coefficient of the photo (2 bytes each) while decoding, however
#: small the draft; refused above this many bytes of coefficients: 33 MP of 4:2:0 colour (a whole upload of a
#: 40 MP one measured ~155 MB above the kernel at rest, too close to the 160 MB there is)
MAX_PROGRESSIVE_COEFFICIENT_BYTES = 100_000_000
#: photos are reduced to at most this long side before any work (faces stay > 64 px)
WORK_MAX_SIDE = 2048
#: output rows converted and resized at a time (a few MB of full-size rows per band)
BAND_ROWS = 128
#: the filter that reduces colour photos: area averaging, as the face search's own reductions (OpenCV's
#: INTER_AREA). Reducing a 12 MP photo to WORK_MAX_SIDE took 50 ms with it, 178 ms with LANCZOS (one thread)
REDUCE_FILTER = Image.Resampling.BOX
#: greyscale copies, where small faces are looked for, stay sharp: from BOX-reduced copies, 2 fewer of 233
#: faces 40-60 px wide were found on 8 benchmark scenes from val photos (80 ms with LANCZOS, 20 with BOX)
GREY_REDUCE_FILTER = Image.Resampling.LANCZOS

#: formats whose decoder can scale down while decoding (MPO: phones' JPEG with a second image)
_DRAFT_FORMATS = ("JPEG", "MPO")
#: EXIF orientation -> the transposition that shows the photo upright (as ImageOps.exif_transpose)
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}


def _readable() -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """(Pillow format ids, names for people, file extensions) of the formats this installation really opens.

    Only these are opened: others Pillow knows (EPS, PSD, ICO, ...) are refused as "not an image".
    """
    Image.init()
    ids, names, extensions = [], [], []
    for fid, name, exts, available in (
        ("JPEG", "JPEG", (".jpg", ".jpeg"), True), ("MPO", None, (), True), ("PNG", "PNG", (".png",), True),
        ("HEIF", "HEIC", (".heic", ".heif"), pillow_heif is not None), ("AVIF", "AVIF", (".avif",), features.check("avif")),
        ("WEBP", "WebP", (".webp",), features.check("webp")), ("GIF", "GIF", (".gif",), True), ("BMP", "BMP", (".bmp",), True),
        ("TIFF", "TIFF", (".tif", ".tiff"), True),
    ):
        if available and fid in Image.OPEN:
            ids.append(fid)
            names += [name] if name else []
            extensions += exts
    return tuple(ids), tuple(names), tuple(extensions)


_FORMAT_IDS, _NAMES, _EXTENSIONS = _readable()
#: the formats people can upload, for messages: "JPEG, PNG, HEIC, AVIF, WebP, GIF, BMP or TIFF"
FORMATS = ", ".join(_NAMES[:-1]) + " or " + _NAMES[-1]
#: ``accept`` for the upload widget: any image type, plus the extensions browsers may not map to image/*
ACCEPT = ",".join(("image/*", *_EXTENSIONS))


class ImageError(ValueError):
    """A file that cannot be used as a photo; the message is meant for the user."""


def load_photo(source, max_side: int = WORK_MAX_SIDE, detail_side: int = 4096) -> tuple[Image.Image, Image.Image | None]:
    """:func:`load_image` of ``source``, and when the photo was reduced for work, an RGB copy of it up to
    ``detail_side`` (to find and cut small faces: YuNet finds more small faces in colour), else None.

    Formats decoded at full size give both copies from one decoding; JPEGs are decoded a second time, at the
    size wanted where libjpeg's draft mode allows, on a second thread while the first decoding runs (Pillow
    decodes and resizes without Python's lock: a 12 MP photo took 130 ms instead of 290).
    """
    if isinstance(source, (str, Path)):
        source = Path(source).read_bytes()  # read once, decoded twice
    second = None
    if not isinstance(source, Image.Image) and _is_reduced_jpeg(source, max_side):
        second = _second_decoder().submit(load_image, source, detail_side)
    image, detail = _load(source, max_side, "RGB", detail_side)
    if second is not None:
        detail = second.result()
    elif detail is None and max(image.info.get("full_size", image.size)) > max(image.size):
        detail = load_image(source, detail_side)  # an opened JPEG: decoded again
    return image, detail


def _is_reduced_jpeg(data, max_side: int) -> bool:
    """Whether ``data`` (bytes) is a JPEG larger than ``max_side`` (from its header)."""
    peek = _open(data)
    try:
        return getattr(peek, "format", None) in _DRAFT_FORMATS and max(peek.size) > max_side
    finally:
        peek.close()


@lru_cache(maxsize=None)
def _second_decoder() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(1, thread_name_prefix="smilekit-decode")


def load_image(source, max_side: int = WORK_MAX_SIDE, mode: str = "RGB") -> Image.Image:
    """Return ``source`` (bytes, path or PIL image) as an upright RGB image (or ``mode`` "L": greyscale).

    Honours EXIF rotation, flattens transparency on white, converts any mode
    (CMYK, 16-bit, palette, ...) and reduces very large photos to ``max_side``.
    Checks the pixel count in the header before decoding (see the module's
    notes on memory). Raises :class:`ImageError` with a readable message for
    anything that is not a usable image. ``info["full_size"]`` of the result is
    the photo's upright size before any reduction.
    """
    return _load(source, max_side, mode)[0]


def _load(source, max_side: int, mode: str, detail_side: int | None = None) -> tuple[Image.Image, Image.Image | None]:
    """:func:`load_image`, and an RGB copy up to ``detail_side`` from the same decoding when the photo is
    larger than ``max_side`` and not a JPEG (None otherwise)."""
    detail = None
    opened = not isinstance(source, Image.Image)
    full = _open(source) if opened else source
    try:
        _check_size(full)
        try:
            full.seek(0)  # first frame of animations
            full_size = full.size
            if getattr(full, "format", None) in _DRAFT_FORMATS and (max(full.size) > max_side or mode != "RGB"):
                # libjpeg decodes at 1/2, 1/4 or 1/8 size, and greyscale without the colour planes
                full.draft(mode, fitted_size(full.size, min(max_side, max(full.size))))
            pixels = _decoded(full)
            orientation = full.getexif().get(0x0112, 1)
            image = _reduced_rgb(pixels, max_side) if mode == "RGB" else _reduced_rgb(pixels, max_side, mode)
            if detail_side and max(full_size) > max_side and getattr(full, "format", None) not in _DRAFT_FORMATS:
                detail = _reduced_rgb(pixels, detail_side)
                if detail is pixels:  # not reduced: a copy that outlives the decoded photo
                    detail = detail.copy()
            del pixels
            if image is not full and opened:
                _release(full)
            if orientation in _UPRIGHT:
                image = image.transpose(_UPRIGHT[orientation])  # on the reduced photo: cheap
                detail = detail.transpose(_UPRIGHT[orientation]) if detail is not None else None
                if _UPRIGHT[orientation] in (Image.Transpose.TRANSPOSE, Image.Transpose.TRANSVERSE,
                                             Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_270):
                    full_size = full_size[::-1]
        except (OSError, SyntaxError, ValueError, EOFError) as err:
            raise ImageError(f"The image could not be decoded (the file may be truncated or damaged): {err}") from None
        if image is full and opened:
            image = full._new(full.im)  # same pixels, without the file object (and the upload's bytes) behind it
        if image is not full:
            image.info["full_size"] = full_size
        return image, detail
    finally:
        if opened:
            _release(full)


def _release(image: Image.Image) -> None:
    """Free an opened photo's full-size pixels now, not whenever the caller lets go of the photo."""
    image.close()
    if getattr(image, "_heif_file", None) is not None:
        image._heif_file = None  # pillow-heif keeps libheif's decoded buffer here until the object goes


class _BufferFile(io.RawIOBase):
    """A read-only file over any bytes-like object, without copying it (``io.BytesIO`` copies a
    memoryview: for an upload that is the whole file again, next to the message that brought it)."""

    def __init__(self, data):
        self._data = memoryview(data).cast("B")
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        chunk = self._data[self._position:self._position + len(buffer)]
        buffer[:len(chunk)] = chunk
        self._position += len(chunk)
        return len(chunk)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: len(self._data)}[whence]
        self._position = max(0, base + offset)
        return self._position

    def tell(self) -> int:
        return self._position


def _open(source) -> ImageFile.ImageFile:
    """Open bytes (or any bytes-like object, not copied) or a path lazily (only the header is read)."""
    data = Path(source).read_bytes() if isinstance(source, (str, Path)) else source
    if not len(memoryview(data)):
        raise ImageError("The file is empty.")
    try:
        with warnings.catch_warnings():
            # Pillow's warning level (89 MP) is below MAX_PIXELS; _check_size decides per format instead.
            # Its error level (179 MP) still applies and is reported below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BufferedReader(_BufferFile(data)), formats=_FORMAT_IDS)
    except UnidentifiedImageError:
        raise ImageError(f"This file is not an image SmileKit can read ({FORMATS}).") from None
    except Image.DecompressionBombError:
        raise ImageError(f"This image is too large to process (too many pixels; the limit is {MAX_PIXELS // 1_000_000} megapixels).") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageError(f"The image could not be read (the file may be truncated or damaged): {err}") from None


def _decoded(image: Image.Image):
    """Decode ``image``; a HEIC photo is left in libheif's buffer (``HeifImage``), read band by band below.

    Pillow would copy it into an image of its own at 4 bytes a pixel beside libheif's 3.
    """
    heif = getattr(image, "_heif_file", None)  # pillow-heif's plugin, before loading
    if heif is None or image.__class__.__name__ != "HeifImageFile":
        image.load()
        return image
    return heif[image.tell()]


def _check_size(image: Image.Image) -> None:
    """Refuse, before decoding, photos whose decoding would take too much memory."""
    width, height = image.size
    pixels = width * height
    if pixels > MAX_PIXELS:
        raise ImageError(f"This image is too large to process ({width}x{height} pixels; the limit is {MAX_PIXELS // 1_000_000} megapixels).")
    fmt = getattr(image, "format", None)
    if fmt is None or image.__class__ is Image.Image:
        return  # already decoded by the caller
    limit = MAX_HEIC_PIXELS if fmt == "HEIF" else MAX_DECODED_PIXELS
    if fmt not in _DRAFT_FORMATS and pixels > limit:
        raise ImageError(f"This {_human(fmt)} image is too large to process ({width}x{height} pixels; the limit is "
                         f"{limit // 1_000_000} megapixels for {_human(fmt)}, {MAX_PIXELS // 1_000_000} for JPEG). "
                         "Please upload a smaller copy, or the photo as a JPEG.")
    if fmt in _DRAFT_FORMATS and image.info.get("progressive"):
        limit = int(MAX_PROGRESSIVE_COEFFICIENT_BYTES / _coefficient_bytes_per_pixel(image))
        if pixels > limit:
            raise ImageError(f"This progressive JPEG is too large to process ({width}x{height} pixels; the limit is "
                             f"{limit // 1_000_000} megapixels for progressive JPEGs of this kind). Please upload a smaller copy.")


def _coefficient_bytes_per_pixel(image: Image.Image) -> float:
    """Bytes of DCT coefficients per pixel libjpeg buffers for a progressive JPEG (3.0 for 4:2:0 colour)."""
    layers = getattr(image, "layer", None) or [(0, 1, 1, 0)] * len(image.getbands())
    h_max, v_max = max(layer[1] for layer in layers), max(layer[2] for layer in layers)
    return 2.0 * sum(layer[1] * layer[2] / (h_max * v_max) for layer in layers)


def _human(fmt: str) -> str:
    return {"HEIF": "HEIC", "WEBP": "WebP"}.get(fmt, fmt)


def fitted_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """``size`` scaled so its long side is ``max_side`` (aspect ratio kept)."""
    scale = max_side / max(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _reduced_rgb(pixels, max_side: int, mode: str = "RGB") -> Image.Image:
    """``pixels`` (a Pillow image or a decoded ``HeifImage``) as RGB (or ``mode`` "L") with its long side at most ``max_side``.

    Converted and resized (REDUCE_FILTER, GREY_REDUCE_FILTER) BAND_ROWS output rows at a time, each band
    read with its filter's support around it, so the result is one resize's
    (to rounding) and the only full-size pixels are the decoded ones. Returns a
    Pillow RGB image as it is when there is nothing to do.
    """
    width, height = pixels.size
    size = fitted_size(pixels.size, max_side) if max(pixels.size) > max_side else pixels.size
    is_pillow = isinstance(pixels, Image.Image)
    if is_pillow and size == pixels.size and pixels.mode == mode:
        return pixels
    stretch = _stretch(pixels) if is_pillow else None
    scale_y = height / size[1]
    margin = math.ceil(3 * scale_y) + 2 if size != pixels.size else 0  # enough for filters of up to 3 output pixels either side
    out = Image.new(mode, size)
    for top in range(0, size[1], BAND_ROWS):
        bottom = min(size[1], top + BAND_ROWS)
        first = max(0, math.floor(top * scale_y) - margin)
        last = min(height, math.ceil(bottom * scale_y) + margin)
        band = _to_rgb(_rows(pixels, first, last), stretch)
        if mode != "RGB":
            band = band.convert(mode)
        if size != pixels.size:
            box = (0, top * scale_y - first, width, bottom * scale_y - first)
            band = band.resize((size[0], bottom - top), GREY_REDUCE_FILTER if mode == "L" else REDUCE_FILTER, box=box)
        out.paste(band, (0, top))
    return out


def _rows(pixels, first: int, last: int) -> Image.Image:
    """Rows ``first`` to ``last`` of a Pillow image or a ``HeifImage`` (copied from libheif's buffer)."""
    if isinstance(pixels, Image.Image):
        return pixels.crop((0, first, pixels.width, last))
    buffer = memoryview(pixels.data)[first * pixels.stride : last * pixels.stride]
    return Image.frombuffer(pixels.mode, (pixels.size[0], last - first), buffer, "raw", pixels.mode, pixels.stride, 1)


def _stretch(image: Image.Image):
    """For 16-bit / float greyscale: the map to 8 bits by the whole image's own range, else None."""
    if image.mode not in ("I;16", "I;16B", "I;16L", "I", "F"):
        return None
    lo, hi = image.getextrema()
    scale = 255.0 / (hi - lo) if hi > lo else 1.0
    return lambda v: (v - lo) * scale


def _to_rgb(image: Image.Image, stretch=None) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        image = image.point(stretch or _stretch(image)).convert("L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def return_freed_memory() -> None:
    """Hand freed heap (decoded photos, a detector's working buffers) back to the system: glibc keeps it
    otherwise, and the next photo's peak comes on top of it."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        pass
