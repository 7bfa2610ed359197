"""Pictures and HTML for the app: boxed photos, face thumbnails, saliency overlays, the metrics panel.

Plain functions of plain inputs (Pillow images, boxes, numbers) returning bytes or
HTML strings, so the widget code in :mod:`smilekit.app.ui` only arranges them.
"""
from __future__ import annotations

import html
import io
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..vision import faces
from ..calibration import split_version

#: the boxed photo is shown at most (at least) this many pixels on its long side
DISPLAY_MAX_SIDE = 900
DISPLAY_MIN_SIDE = 400
#: face thumbnails on the cards, in pixels
THUMB_SIDE = 128
#: a photo with more faces than this is a group: the photo above a grid of compact cards with smaller thumbnails
GROUP_SIZE = 6
GROUP_THUMB_SIDE = 96
#: a group photo is shown larger, so that its small faces and their numbers can be told apart
GROUP_DISPLAY_MAX_SIDE = 1400
#: face numbers on the photo: at most this fraction of the displayed photo's long side (today's size for few faces),
#: shrunk towards the faces' size in a crowd but never below the smaller fraction (readable when the photo fills the screen)
LABEL_MAX_FRACTION = 1 / 30
LABEL_MIN_FRACTION = 1 / 60
BOX_COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324")

#: the app's look; classes are the stable ones tests select by
CSS = """
<style>
.smilekit-app { max-width: 1200px; margin: 0 auto; font-family: system-ui, sans-serif; }
.smilekit-app .widget-image { height: auto; }
.smilekit-app .widget-html-content { line-height: 1.4; white-space: normal; }
.smilekit-app .widget-checkbox { height: auto; }
.smilekit-app .widget-checkbox label { white-space: normal; line-height: 1.3; height: auto; }
.smilekit-error { color: #8a1c1c; background: #fdecea; border-left: 4px solid #d93025; padding: 6px 10px; margin: 4px 0; }
.smilekit-note { color: #555; font-size: 0.9em; }
.smilekit-photo { border-top: 1px solid #ddd; padding-top: 8px; margin-top: 8px; }
.smilekit-summary { font-weight: bold; }
.smilekit-cards { min-width: 0; }
.smilekit-face { border: 1px solid #ccc; border-radius: 8px; padding: 6px; margin: 0; box-sizing: border-box; min-width: 0; overflow: hidden; }
.smilekit-face .widget-image { display: block; margin: 0 auto; }
.smilekit-face .widget-html { margin: 0; }
.smilekit-face .widget-html-content { font-size: 0.9em; line-height: 1.3; overflow-wrap: anywhere; min-height: 6.5em; }  /* buttons in line, also under an unsure face */
.smilekit-face .widget-button { min-width: 0; margin: 0; padding: 0 6px; height: 36px; line-height: 36px; overflow: hidden; }
.smilekit-group .smilekit-face { padding: 4px; }
.smilekit-metrics table { border-collapse: collapse; margin: 4px 0; }
.smilekit-metrics td, .smilekit-metrics th { border: 1px solid #ddd; padding: 2px 8px; text-align: right; }
.smilekit-label-smiling { color: #1a7f37; font-weight: bold; }
.smilekit-label-not { color: #555; font-weight: bold; }
.smilekit-unsure { color: #9a6700; font-weight: bold; }
</style>
"""


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(image: Image.Image, quality: int = 85) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType
        return ImageFont.load_default()


def photo_summary(smiling: Sequence[bool], detected: bool = True) -> str:
    """One line on who smiles in a photo, from the model's answer for each face (in order).

    ``detected`` is False when the whole picture was classified as one face.
    """
    count, smiles = len(smiling), sum(bool(s) for s in smiling)
    if count == 0:
        return "no face found"
    if not detected:
        return f"checked as one face: {'smiling' if smiles else 'not smiling'}"
    if count == 1:
        return f"1 face found: {'smiling' if smiles else 'not smiling'}"
    if smiles == count:
        said = "everyone is smiling"
    elif smiles == 0:
        said = "no one is smiling"
    else:
        said = f"{smiles} of {count} smiling"
    return f"{count} faces found: {said}"


def face_numbers(boxes: Sequence[faces.Box]) -> list[int]:
    """The number (from 1) of each box as a person reads a group: row by row from the top, left to right.

    A box starts a new row when its centre is more than three quarters of a face below the mean centre of the
    row so far (people in one row stand at slightly different heights; rows are about a face or more apart).
    """
    if not boxes:
        return []
    centre = [b.y + b.h / 2 for b in boxes]
    within = 0.75 * float(np.median([b.h for b in boxes]))
    rows: list[list[int]] = []
    for i in sorted(range(len(boxes)), key=lambda i: centre[i]):
        if rows and centre[i] - np.mean([centre[j] for j in rows[-1]]) <= within:
            rows[-1].append(i)
        else:
            rows.append([i])
    order = [i for row in rows for i in sorted(row, key=lambda i: boxes[i].x)]
    numbers = [0] * len(boxes)
    for number, i in enumerate(order, start=1):
        numbers[i] = number
    return numbers


def label_font_size(display_long_side: int, face_sides: Sequence[float]) -> int:
    """Pixel size of the face numbers on a photo shown ``display_long_side`` pixels long, with faces this big (displayed)."""
    largest, smallest = display_long_side * LABEL_MAX_FRACTION, display_long_side * LABEL_MIN_FRACTION
    size = largest
    if len(face_sides) > GROUP_SIZE:  # a crowd: numbers about as big as the faces, so they do not cover their neighbours
        size = min(largest, max(smallest, 0.6 * float(np.median(face_sides))))
    return max(12, round(size))


def _overlaps(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def boxed_photo(image: Image.Image, boxes: Sequence[faces.Box], numbers: Sequence[int] | None = None) -> bytes:
    """A display-sized JPEG of ``image`` with every box drawn and numbered (``numbers``, else 1, 2, ...).

    A group photo is shown larger, its numbers sized to its faces; a number goes above its box,
    or inside or below it where another number already stands.
    """
    numbers = list(numbers) if numbers is not None else list(range(1, len(boxes) + 1))
    long_side = max(image.size)
    most = GROUP_DISPLAY_MAX_SIDE if len(boxes) > GROUP_SIZE else DISPLAY_MAX_SIDE
    scale = most / long_side if long_side > most else max(1.0, DISPLAY_MIN_SIDE / long_side)
    shown = image.convert("RGB")
    if scale != 1.0:
        shown = shown.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.LANCZOS)
    draw = ImageDraw.Draw(shown)
    line = max(2, round(max(shown.size) / 250))
    font = _font(label_font_size(max(shown.size), [min(b.w, b.h) * scale for b in boxes]))
    if len(boxes) > GROUP_SIZE:
        line = max(1, min(line, round(min(b.w for b in boxes) * scale / 20)))
    placed = []
    scaled = [tuple(v * scale for v in box.as_tuple()) for box in boxes]
    for n, (x, y, w, h) in enumerate(scaled):  # all boxes first, so that no box is drawn over a number
        draw.rectangle([x, y, x + w, y + h], outline=BOX_COLOURS[n % len(BOX_COLOURS)], width=line)
    for n, ((x, y, w, h), number) in enumerate(zip(scaled, numbers)):
        text = str(number)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        lw, lh = right - left + 2 * line, bottom - top + 2 * line
        tx = min(max(0, x), shown.width - lw)
        spots = [y - lh, y + line, y + h - lh - line, y + h]  # above, inside at the top, inside at the bottom, below
        spots = [min(max(0, ty), shown.height - lh) for ty in spots]
        label = next(((tx, ty, tx + lw, ty + lh) for ty in spots if not any(_overlaps((tx, ty, tx + lw, ty + lh), p) for p in placed)),
                     (tx, spots[0], tx + lw, spots[0] + lh))
        placed.append(label)
        draw.rectangle(label, fill=BOX_COLOURS[n % len(BOX_COLOURS)])
        draw.text((label[0] + line - left, label[1] + line - top), text, fill="white", font=font)
    return _jpeg(shown)


def face_thumbnail(image: Image.Image, box: faces.Box, side: int = THUMB_SIDE, jpeg: bool = False) -> bytes:
    """The face as a colour thumbnail, framed a little wider than the model's crop: a PNG, or a JPEG
    (a quarter of the bytes, for the many cards of a group photo)."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")  # a group photo is not copied once per face
    thumbnail = faces.cut_face(rgb, box, side, context=1.3)
    return _jpeg(thumbnail, quality=88) if jpeg else _png(thumbnail)


def crop_thumbnail(crop: Image.Image) -> bytes:
    """The model's own 64x64 crop (grey, or RGB for a colour model), enlarged for display."""
    return _png(crop.resize((THUMB_SIDE, THUMB_SIDE), Image.BILINEAR))


def crop_png(crop: Image.Image) -> bytes:
    """The model's 64x64 greyscale crop as PNG bytes (what is stored with consent)."""
    return _png(crop.convert("L"))


def saliency_overlay(crop: Image.Image, saliency: np.ndarray) -> bytes:
    """The model crop in grey with the saliency map (64x64, [0, 1]) laid over it in red-yellow."""
    grey = np.asarray(crop.convert("L").resize((THUMB_SIDE, THUMB_SIDE), Image.BILINEAR), dtype=np.float32) / 255.0
    sal = np.asarray(Image.fromarray((np.clip(saliency, 0, 1) * 255).astype(np.uint8)).resize((THUMB_SIDE, THUMB_SIDE), Image.BILINEAR),
                     dtype=np.float32) / 255.0
    heat = np.stack([np.ones_like(sal), sal, np.zeros_like(sal)], axis=-1)  # red -> yellow
    alpha = (0.65 * sal)[..., None]
    base = np.repeat(grey[..., None], 3, axis=-1)
    mixed = (1 - alpha) * base + alpha * heat
    return _png(Image.fromarray((mixed * 255).round().astype(np.uint8), "RGB"))


def label_html(number: int, label: str, confidence: float, detected: bool = True, unsure: bool = False) -> str:
    """Face number (as on the photo), verdict and confidence, e.g. 'Face 1: Smiling, 87 %'; an unsure face asks for a click."""
    css = "smilekit-label-smiling" if label == "Smiling" else "smilekit-label-not"
    name = f"Face {number}" if detected else "Whole picture"
    ask = '<div class="smilekit-unsure">Not sure — tell us?</div>' if unsure else ""
    return f'<div>{name}</div><div><span class="{css}">{html.escape(label)}</span> · {confidence:.0%} sure</div>{ask}'


def error_html(message: str) -> str:
    return f"<div>{html.escape(message)}</div>"


def _pct(value) -> str:
    return "–" if value is None else f"{value:.0%}"


def metrics_html(stats: dict, model_version: str | None, last: int = 100) -> str:
    """The live panel: feedback count, agreement rates, per model version, and the confusion table."""
    rows = "".join(
        f"<tr><td style='text-align:left'>{html.escape(v)}</td><td>{s['count']}</td><td>{_pct(s['agreement'])}</td></tr>"
        for v, s in sorted(stats["per_version"].items())
    )
    (tn, fp), (fn, tp) = stats["confusion"]
    model = f" · model in use: <code>{html.escape(model_version)}</code>" if model_version else ""
    if model_version and split_version(model_version)[1] is not None:
        model += " (fitted to this app's photos from your feedback)"
    return (
        "<h3 style='margin:4px 0'>How the model is doing</h3>"
        f"<div>Feedback given: <b>{stats['count']}</b> · agreement: <b>{_pct(stats['agreement'])}</b>"
        f" (last {last}: <b>{_pct(stats['agreement_last'])}</b>){model}</div>"
        "<div style='display:flex;flex-flow:row wrap;gap:16px'>"
        "<table><tr><th style='text-align:left'>Model version</th><th>Feedback</th><th>Agreement</th></tr>"
        f"{rows or '<tr><td colspan=3>no feedback yet</td></tr>'}</table>"
        "<table><tr><th>truth \\ model</th><th>Not smiling</th><th>Smiling</th></tr>"
        f"<tr><th>Not smiling</th><td>{tn}</td><td>{fp}</td></tr>"
        f"<tr><th>Smiling</th><td>{fn}</td><td>{tp}</td></tr></table></div>"
    )


#: runs in the browser: refuses files over the limits (size each, size together, count) before they are sent. Above Voilà's websocket
#: limit (voila.json) an upload would drop the kernel connection silently and the page would stop
#: answering. ipywidgets' FileUpload reads ``files`` of a detached <input type=file>, so the check
#: wraps that getter; refused selections read as empty and a message appears in the page.
_UPLOAD_GUARD_JS = """
(function () {
  var limits = [{PER_FILE}, {TOTAL}, {COUNT}];
  if (window.smilekitUploadLimits) { window.smilekitUploadLimits = limits; return; }
  window.smilekitUploadLimits = limits;
  var original = Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, 'files');
  function mb(n) { return (n / 1048576).toFixed(1) + ' MB'; }
  function say(text) {
    document.querySelectorAll('.smilekit-guard .widget-html-content').forEach(function (box) {
      box.textContent = '';
      if (!text) { return; }
      var div = document.createElement('div');
      div.className = 'smilekit-error';
      div.textContent = text;
      box.appendChild(div);
    });
  }
  Object.defineProperty(HTMLInputElement.prototype, 'files', {
    configurable: true, enumerable: original.enumerable, set: original.set,
    get: function () {
      var files = original.get.call(this);
      if (this.type !== 'file' || this.isConnected || !files || !files.length) { return files; }
      var perFile = window.smilekitUploadLimits[0], all = window.smilekitUploadLimits[1], sum = 0, big = [];
      if (files.length > window.smilekitUploadLimits[2]) {
        say('You picked ' + files.length + ' photos; upload at most ' + window.smilekitUploadLimits[2] + ' at a time.');
        return [];
      }
      for (var i = 0; i < files.length; i++) {
        sum += files[i].size;
        if (files[i].size > perFile) { big.push(files[i].name + ' (' + mb(files[i].size) + ')'); }
      }
      if (big.length) {
        say(big.join(', ') + ': over the limit of ' + mb(perFile) + ' per photo. Please pick a smaller photo.');
        return [];
      }
      if (sum > all) {
        say('These photos add up to ' + mb(sum) + '; upload at most ' + mb(all) + ' at a time.');
        return [];
      }
      say('');
      return files;
    }
  });
})();
"""


def upload_guard_html(per_file: int, total: int, count: int) -> str:
    """An HTML snippet that installs the browser-side check of sizes and count (see ``_UPLOAD_GUARD_JS``)."""
    import base64

    code = _UPLOAD_GUARD_JS.replace("{PER_FILE}", str(int(per_file))).replace("{TOTAL}", str(int(total))).replace("{COUNT}", str(int(count)))
    encoded = base64.b64encode(code.encode()).decode()
    return f'<img alt="" style="display:none" src="data:image/gif;base64," onerror="new Function(atob(\'{encoded}\'))()">'
