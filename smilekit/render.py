"""Pictures and HTML for the app: boxed photos, face thumbnails, saliency overlays, the metrics panel.

Plain functions of plain inputs (Pillow images, boxes, numbers) returning bytes or
HTML strings, so the widget code in :mod:`smilekit.ui` only arranges them.
"""
from __future__ import annotations

import html
import io
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from . import faces

#: the boxed photo is shown at most (at least) this many pixels on its long side
DISPLAY_MAX_SIDE = 900
DISPLAY_MIN_SIDE = 400
#: face thumbnails on the cards, in pixels
THUMB_SIDE = 128
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
.smilekit-face { border: 1px solid #ccc; border-radius: 8px; padding: 6px; margin: 4px; box-sizing: border-box; }
.smilekit-face .widget-button { min-width: 0; margin: 0; padding: 0 8px; }
.smilekit-metrics table { border-collapse: collapse; margin: 4px 0; }
.smilekit-metrics td, .smilekit-metrics th { border: 1px solid #ddd; padding: 2px 8px; text-align: right; }
.smilekit-label-smiling { color: #1a7f37; font-weight: bold; }
.smilekit-label-not { color: #555; font-weight: bold; }
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


def boxed_photo(image: Image.Image, boxes: list[faces.Box]) -> bytes:
    """A display-sized JPEG of ``image`` with every box drawn and numbered from 1."""
    long_side = max(image.size)
    scale = DISPLAY_MAX_SIDE / long_side if long_side > DISPLAY_MAX_SIDE else max(1.0, DISPLAY_MIN_SIDE / long_side)
    shown = image.convert("RGB")
    if scale != 1.0:
        shown = shown.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.LANCZOS)
    draw = ImageDraw.Draw(shown)
    line = max(2, round(max(shown.size) / 250))
    font = _font(max(12, round(max(shown.size) / 30)))
    for n, box in enumerate(boxes):
        colour = BOX_COLOURS[n % len(BOX_COLOURS)]
        x, y, w, h = (v * scale for v in box.as_tuple())
        draw.rectangle([x, y, x + w, y + h], outline=colour, width=line)
        text = str(n + 1)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tx, ty = max(0, x), max(0, y - (bottom - top) - 2 * line)
        if ty <= 0:
            ty = y + line
        draw.rectangle([tx, ty, tx + right - left + 2 * line, ty + bottom - top + 2 * line], fill=colour)
        draw.text((tx + line - left, ty + line - top), text, fill="white", font=font)
    return _jpeg(shown)


def face_thumbnail(image: Image.Image, box: faces.Box) -> bytes:
    """The face as a colour PNG thumbnail, framed a little wider than the model's crop."""
    return _png(faces.cut_face(image.convert("RGB"), box, THUMB_SIDE, context=1.3))


def crop_thumbnail(crop: Image.Image) -> bytes:
    """The model's own 64x64 crop, enlarged for display."""
    return _png(crop.convert("L").resize((THUMB_SIDE, THUMB_SIDE), Image.BILINEAR))


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


def label_html(index: int, label: str, confidence: float, detected: bool = True) -> str:
    """Face number, verdict and confidence, e.g. 'Face 1: Smiling, 87 %'."""
    css = "smilekit-label-smiling" if label == "Smiling" else "smilekit-label-not"
    name = f"Face {index + 1}" if detected else "Whole picture"
    return f'<div>{name}</div><div><span class="{css}">{html.escape(label)}</span> · {confidence:.0%} sure</div>'


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
