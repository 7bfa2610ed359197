"""The live camera view: the browser sends small JPEG frames, the kernel answers with each face's box and
smile probability, and the smile shutter asks for the frame that made everyone smile.

:class:`LiveFaces` reads one frame (faces found on the reduced frame, only their crops classified; nothing
is kept), :class:`SmileShutter` decides when to take the picture, :class:`CameraWidget` is the anywidget that
runs ``camera.js`` in the page, and :class:`CameraView` puts them together with the shutter control.
Captured pictures go to ``on_capture(jpeg_bytes)``; the app shows them like uploads.
"""
from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import anywidget
import ipywidgets as widgets
import numpy as np
import traitlets
from PIL import Image

from ..vision import faces
from ..vision.images import fitted_size
from ..predict import Predictor
from ..runtime import DEFAULT_THRESHOLD, INPUT_SIZE

log = logging.getLogger("smilekit.app.ui")  # the app's logger: it writes to the server's log, never to the page

#: frames are read at most this wide (the page sends 320 px); detection and crops work at this size
FRAME_MAX_SIDE = 320
#: a frame message larger than this is refused (a 320-px JPEG is 10-30 kB)
MAX_FRAME_BYTES = 1 << 20
#: frames whose header claims more pixels than this are refused before decoding
MAX_FRAME_PIXELS = 1920 * 1920
#: a captured picture larger than this is refused (the app's own per-photo limit is higher)
MAX_CAPTURE_BYTES = 12 << 20
#: at most one picture per this many seconds (the shutter, the button, or a crafted page)
MIN_CAPTURE_INTERVAL_S = 1.0
SHUTTER_CHOICES = [("Smile shutter: off", "off"), ("Take the picture when everyone smiles", "all")] + [
    (f"Take the picture when {n} face{'s' if n > 1 else ''} smile{'' if n > 1 else 's'}", str(n)) for n in range(1, 6)]


class FrameError(ValueError):
    """A frame from the page that cannot be read."""


@dataclass
class LiveFace:
    """One face in a frame: its box as fractions of the frame (x, y, w, h), its probability of smiling and the
    model's answer (the probability against the model's own threshold, as on the cards)."""

    x: float
    y: float
    w: float
    h: float
    probability: float
    smiling: bool

    def to_message(self) -> dict:
        return {"x": round(self.x, 4), "y": round(self.y, 4), "w": round(self.w, 4), "h": round(self.h, 4),
                "p": round(self.probability, 4), "smiling": self.smiling}


def read_frame(data, mode: str = "L") -> Image.Image:
    """A JPEG frame as an image of ``mode`` ("L": grey, "RGB") at most FRAME_MAX_SIDE wide, decoded already reduced."""
    size = memoryview(data).nbytes
    if not size or size > MAX_FRAME_BYTES:
        raise FrameError(f"a frame of {size} bytes")
    try:
        image = Image.open(io.BytesIO(data))
        if image.format != "JPEG":
            raise FrameError(f"a frame in {image.format} instead of JPEG")
        if image.width * image.height > MAX_FRAME_PIXELS:
            raise FrameError(f"a frame of {image.width} x {image.height} pixels")
        target = fitted_size(image.size, FRAME_MAX_SIDE)
        image.draft(mode, target)  # JPEG decodes straight to a reduced picture (without the colour planes for "L")
        image = image.convert(mode)
    except FrameError:
        raise
    except Exception as err:  # noqa: BLE001 - whatever Pillow says about a broken frame
        raise FrameError(f"an unreadable frame ({err})") from err
    return image.resize(target, Image.BILINEAR) if image.size != target else image


class LiveFaces:
    """Faces and their smile probabilities in camera frames."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor

    def analyse(self, data) -> list[LiveFace]:
        """Every face in one JPEG frame, left to right. Raises :class:`FrameError` for a bad frame."""
        frame = read_frame(data, self.predictor.crop_mode)  # in colour only for a network that reads colour
        boxes = faces.detect_faces(np.asarray(frame))
        if not boxes:
            return []
        crops = [faces.model_crop(frame, box, INPUT_SIZE) for box in boxes]
        probabilities = self.predictor.predict_proba(crops)
        width, height = frame.size
        threshold = self.predictor.threshold
        return [LiveFace(b.x / width, b.y / height, b.w / width, b.h / height, float(p), bool(p >= threshold))
                for b, p in zip(boxes, probabilities)]


class SmileShutter:
    """When to take the picture: ``"off"``, ``"all"`` (every face in view smiles) or a number of smiling faces.

    A face smiles from ``threshold`` (the model's own, see :attr:`smilekit.predict.Predictor.threshold`)."""

    def __init__(self, mode: str = "off", threshold: float = DEFAULT_THRESHOLD):
        self.mode, self.threshold = mode, threshold

    @property
    def armed(self) -> bool:
        return self.mode != "off"

    def fires(self, probabilities) -> bool:
        smiling = sum(p >= self.threshold for p in probabilities)
        if self.mode == "off" or not len(probabilities):
            return False
        if self.mode == "all":
            return smiling == len(probabilities)
        return smiling >= int(self.mode)


class CameraWidget(anywidget.AnyWidget):
    """The live picture with boxes and meters, drawn by ``camera.js``; the camera runs while ``active``."""

    _esm = Path(__file__).with_name("camera.js")
    _css = """
    .smilekit-camera-view { max-width: 640px; width: 100%; }
    .smilekit-camera-stage { position: relative; width: 100%; background: #222; line-height: 0; border-radius: 4px; overflow: hidden; }
    .smilekit-camera-stage video { width: 100%; height: auto; min-height: 120px; }
    .smilekit-camera-stage video.smilekit-mirrored { transform: scaleX(-1); }
    .smilekit-camera-overlay { position: absolute; inset: 0; pointer-events: none; }
    .smilekit-live-face { position: absolute; border: 2px solid #f0b400; box-sizing: border-box; }
    .smilekit-live-face.smilekit-live-smiling { border-color: #2e9d3a; }
    .smilekit-meter { position: absolute; left: -2px; right: -2px; top: 100%; min-width: 96px; height: 18px;
                      background: rgba(0,0,0,.6); line-height: 18px; font: 12px sans-serif; color: #fff; }
    .smilekit-meter-fill { height: 100%; background: #2e9d3a; transition: width .1s linear; }
    .smilekit-meter span { position: absolute; left: 4px; top: 0; white-space: nowrap; }
    .smilekit-camera-bar { display: flex; flex-wrap: wrap; gap: 8px; margin: 8px 0; }
    .smilekit-camera-bar button { padding: 6px 12px; font-size: 14px; }
    .smilekit-camera-message { min-height: 1.2em; }
    .smilekit-camera-error { color: #b00020; font-weight: 600; }
    """
    active = traitlets.Bool(False).tag(sync=True)


class CameraView:
    """The camera mode's panel: the live view and the smile-shutter control.

    The page talks to it through ``handle_message``; every action is a plain method, so tests drive it
    without a browser. ``on_capture(jpeg_bytes)`` receives each picture taken.
    """

    def __init__(self, on_capture: Callable[[bytes], None], predictor: Predictor | None = None):
        self.on_capture = on_capture
        self.shutter = SmileShutter()
        self.set_predictor(predictor)
        self.frames = 0  # frames answered since the page opened
        self.pending_capture: int | None = None  # the frame the shutter asked for
        self.last_capture = -MIN_CAPTURE_INTERVAL_S
        self.camera = CameraWidget()
        self.camera.on_msg(self._on_msg)
        self.shutter_choice = widgets.Dropdown(options=SHUTTER_CHOICES, value="off", layout=widgets.Layout(width="auto", max_width="420px"))
        self.shutter_choice.add_class("smilekit-shutter")
        self.shutter_choice.observe(lambda change: self.set_shutter(change["new"]), names="value")
        note = widgets.HTML("<span class='smilekit-note'>Frames are checked in this page's kernel and never stored. "
                            "Pictures you take appear below with a card per face.</span>")
        self.widget = widgets.VBox([self.camera, self.shutter_choice, note], layout=widgets.Layout(display="none", width="100%"))
        self.widget.add_class("smilekit-camera-panel")

    def set_predictor(self, predictor: Predictor | None) -> None:
        self.live = LiveFaces(predictor) if predictor is not None else None
        self.shutter.threshold = predictor.threshold if predictor is not None else DEFAULT_THRESHOLD

    # -- user actions ----------------------------------------------------------------

    def start(self) -> None:
        """Show the panel and switch the camera on (the page asks for permission)."""
        self.widget.layout.display = "flex"
        self.camera.active = True

    def stop(self) -> None:
        """Switch the camera off and hide the panel."""
        self.camera.active = False
        self.widget.layout.display = "none"
        self.pending_capture = None

    def set_shutter(self, mode: str) -> None:
        """Arm the smile shutter (``"all"`` or a number of faces as text) or switch it ``"off"``."""
        mode = mode if mode in dict((v, k) for k, v in SHUTTER_CHOICES) else "off"
        self.shutter.mode = mode
        if self.shutter_choice.value != mode:
            self.shutter_choice.value = mode

    def handle_frame(self, frame_id: int, data) -> dict:
        """The answer to one frame: its faces, the frames answered so far, and whether to take the picture."""
        answer = {"type": "faces", "frame": frame_id, "faces": [], "frames": self.frames, "capture": False}
        if self.live is None:
            answer["note"] = "No smile model is loaded, so faces cannot be checked."
            return answer
        start = time.perf_counter()
        try:
            found = self.live.analyse(data)
        except FrameError as err:
            log.warning("camera frame refused: %s", err)
            answer["note"] = "This frame could not be read."
            return answer
        self.frames += 1
        answer.update(faces=[f.to_message() for f in found], frames=self.frames, ms=round(1000 * (time.perf_counter() - start), 1))
        if self.shutter.fires([f.probability for f in found]) and self._may_capture():
            answer["capture"] = True
            self.pending_capture = frame_id
            self.set_shutter("off")  # one picture per arming: pick the shutter again for another
        return answer

    def handle_capture(self, frame_id, manual: bool, data) -> bool:
        """A picture from the page: the frame the shutter asked for, or the button's. Returns whether it was taken."""
        expected = manual or (frame_id is not None and frame_id == self.pending_capture)
        size = memoryview(data).nbytes if data is not None else 0
        if not expected or not size or size > MAX_CAPTURE_BYTES or (manual and not self._may_capture()):
            log.warning("camera picture refused (frame %r, manual %r, %d bytes)", frame_id, manual, size)
            return False
        self.pending_capture = None
        self.last_capture = time.monotonic()
        self.on_capture(bytes(data))
        return True

    def _may_capture(self) -> bool:
        return time.monotonic() - self.last_capture >= MIN_CAPTURE_INTERVAL_S

    # -- plumbing ----------------------------------------------------------------------

    def _on_msg(self, _widget, content, buffers) -> None:
        """Messages from camera.js; anything malformed is dropped (the page is not trusted)."""
        if not isinstance(content, dict):
            return
        kind, frame_id = content.get("type"), content.get("frame")
        frame_id = frame_id if isinstance(frame_id, int) and not isinstance(frame_id, bool) else None
        data = buffers[0] if buffers and len(buffers) == 1 else None
        try:
            if kind == "frame" and frame_id is not None and data is not None:
                self.camera.send(self.handle_frame(frame_id, data))
            elif kind == "capture" and data is not None:
                self.handle_capture(frame_id, content.get("manual") is True, data)
            elif kind == "status":
                log.info("camera %s (%s)", str(content.get("state"))[:20], str(content.get("detail"))[:60])
        except Exception:  # noqa: BLE001 - a failure must not reach the page as a traceback
            log.exception("camera message %r failed", kind)
            if kind == "frame" and frame_id is not None:  # the page waits for this answer
                self.camera.send({"type": "faces", "frame": frame_id, "faces": [], "frames": self.frames, "capture": False,
                                  "note": "Something went wrong while checking this frame."})
