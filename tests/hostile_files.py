"""Files a careless or hostile visitor might upload, made in the test from a real face photo.

``hostile_files(face_jpeg)`` returns ``{file name: bytes}``: broken, disguised, huge-by-header,
odd-mode and oddly named files. The app must answer each with a photo panel or a clear
message naming the file, and keep working.
"""
from __future__ import annotations

import io
import struct
import zipfile
import zlib

import numpy as np
from PIL import Image


def _save(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares a size and has almost no pixels: a decompression bomb by its header."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _png_chunk(b"IEND", b"")


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("photo.jpg", b"not really")
    return buf.getvalue()


def hostile_files(face_jpeg: bytes) -> dict[str, bytes]:
    face = Image.open(io.BytesIO(face_jpeg)).convert("RGB")
    png = _save(face, "PNG")
    frames = [Image.new("P", (64, 64), n % 256) for n in range(300)]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=10)
    exif = Image.Exif()
    exif[0x0112] = 99  # an orientation that does not exist
    corrupt_png = bytearray(png)
    corrupt_png[len(corrupt_png) // 2: len(corrupt_png) // 2 + 200] = bytes(200)
    noise = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    tiff_pages = io.BytesIO()
    pages = [Image.fromarray(noise)] * 200
    pages[0].save(tiff_pages, format="TIFF", save_all=True, append_images=pages[1:])
    return {
        "empty.jpg": b"",
        "notes.jpg": b"this is a text file, not a photo\n" * 10,
        "half.jpg": face_jpeg[: len(face_jpeg) // 2],
        "header-only.jpg": face_jpeg[:20],
        "bomb-header.png": png_header_only(100_000, 100_000),
        "120mp-header.png": png_header_only(12_000, 10_000),
        "corrupt-idat.png": bytes(corrupt_png),
        "archive.png": _zip(),
        "document.jpg": b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n",
        "page.png": b"<html><script>alert('x')</script></html>",
        "drawing.svg": b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><circle r="40"/></svg>',
        "<img src=x onerror=alert(1)>.jpg": face_jpeg,
        ("long-" * 50) + ".jpg": face_jpeg,  # 254 characters, the longest name a disk allows
        "\u202egnp.jpg": face_jpeg,  # right-to-left override in the name
        "animated.gif": gif.getvalue(),
        "one-pixel.png": _save(Image.new("RGB", (1, 1), "white"), "PNG"),
        "strip-10000x1.png": _save(Image.new("RGB", (10_000, 1), "grey"), "PNG"),
        "grey-16bit.png": _save(Image.fromarray((np.arange(256 * 256, dtype=np.uint16).reshape(256, 256))), "PNG"),
        "cmyk.jpg": _save(face.convert("CMYK"), "JPEG"),
        "odd-exif.jpg": _save(face, "JPEG", exif=exif.tobytes()),
        "truncated.tif": _save(face, "TIFF", compression="tiff_lzw")[:3000],
        "bmp-huge-header.bmp": b"BM" + struct.pack("<IHHI", 70, 0, 0, 54) + struct.pack("<iiiHHIIiiII", 40, 60000, -60000, 1, 24, 0, 0, 0, 0, 0, 0) + b"\0" * 16,
        "cut.webp": _save(face, "WEBP")[:400],
        "icon.ico": _save(face.resize((64, 64)), "ICO"),
        "transparent.png": _save(Image.new("RGBA", (200, 200), (0, 0, 0, 0)), "PNG"),
        "polyglot.jpg": face_jpeg + _zip(),
        "random.heic": bytes(np.random.default_rng(1).integers(0, 256, size=4096, dtype=np.uint8)),
        "all-ff.jpg": b"\xff" * (1 << 20),
        "pages.tif": tiff_pages.getvalue(),
        "null-bytes.png": bytes(4096),
        "xbm-huge.jpg": b"#define im_width 60000\n#define im_height 60000\nstatic char im_bits[] = { 0x00 };\n",
    }
