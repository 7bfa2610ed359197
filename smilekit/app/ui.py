"""The SmileKit app: upload photos, see who smiles, say whether the model was right.

``SmileApp().widget`` is what the notebook shows. Every user action is a plain
method (``handle_upload``, ``give_feedback``, ``classify_whole``, ``set_consent``,
``set_saliency``, ``refresh_metrics``, ``set_camera``, ``add_capture``) that the widget callbacks call, so tests
drive the app without a browser. Callbacks never let an exception reach the
page: the user gets a plain message, the traceback goes to the server's log.
"""
from __future__ import annotations

import base64
import html
import logging
import sys
import time
import uuid
from dataclasses import dataclass, field

import ipywidgets as widgets
from ipywidgets import Layout
from ipywidgets.widgets.widget_string import HTMLStyle
from PIL import Image
from sqlalchemy.exc import SQLAlchemyError
from traitlets import Dict

from ..vision import images
from . import render
from .. import settings
from .camera import CameraView
from ..store.feedback import DatabaseBusy, FeedbackStore, FeedbackWriteError, photo_hash
from ..vision.images import ImageError
from ..predict import FacePrediction, PhotoPrediction, Predictor
from ..runtime import default_model_path, set_threads

#: the app's own limit per photo (phone photos are 2-12 MB)
MAX_FILE_BYTES = 25 * 1024 * 1024
#: photos kept on the page; older ones leave it (their verdicts stay in the database)
MAX_PHOTOS_SHOWN = 40
#: all photos picked at once travel in one websocket message, held in the kernel until all are checked:
#: with the largest photo decoded (images.MAX_DECODED_PIXELS) a kernel stays under 300 MB (benchmarks/bench_memory.py)
MAX_UPLOAD_BYTES = 30 * 1024 * 1024
#: a photo in which no face was found is kept this small (long side, pixels) until its whole picture is checked
WHOLE_PICTURE_SIDE = 640
#: photos checked from one upload (the browser refuses more; a crafted message gets the rest refused)
MAX_FILES_PER_UPLOAD = 20
#: faces one page visit may give verdicts on (changing a verdict updates the same row)
MAX_VERDICTS_PER_SESSION = 500
#: what the page says where the saliency view cannot run: serving alone installs no torch (the app's container image)
SALIENCY_NEEDS_TORCH = ("Showing where the model looked needs PyTorch, which this installation of SmileKit leaves out: "
                        "it is in the full container image (smilekit-full) and in scripts/setup's default installation.")


log = logging.getLogger(__name__)
if not log.handlers:  # the kernel's sys.stderr would print into the page
    _handler = logging.StreamHandler(sys.__stderr__)
    _handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    log.addHandler(_handler)
    log.setLevel(logging.INFO)
    log.propagate = False


_LAYOUTS: dict[tuple, Layout] = {}


def _layout(**props) -> Layout:
    """A shared Layout per set of properties: every widget on the page has one, and each costs a
    message to the browser, so the many cards reuse a few instead of creating their own."""
    key = tuple(sorted(props.items()))
    if key not in _LAYOUTS:
        _LAYOUTS[key] = Layout(**props)
    return _LAYOUTS[key]


_STYLES: dict[type, widgets.Widget] = {}


def _style(kind: type) -> widgets.Widget:
    """One default style per kind (ButtonStyle, HTMLStyle) shared by every card's buttons and texts:
    left to themselves, each button and HTML widget creates its own style model."""
    if kind not in _STYLES:
        _STYLES[kind] = kind()
    return _STYLES[kind]


def _row_wrap(children=(), **layout) -> widgets.Box:
    layout = {"display": "flex", "flex_flow": "row wrap", "align_items": "flex-start", **layout}
    return widgets.Box(list(children), layout=_layout(**layout))


def keep_errors_on_the_server(shell=None) -> None:
    """Errors and warnings raised while the kernel handles a widget message go to the server's log.

    ipywidgets reports errors with ``showtraceback`` and Python prints warnings to the
    kernel's stderr; both are sent to every client, which in an app served to anonymous
    visitors leaks code and paths.
    """
    warnings_log = logging.getLogger("py.warnings")
    if log.handlers[0] not in warnings_log.handlers:
        warnings_log.addHandler(log.handlers[0])
        warnings_log.propagate = False
    logging.captureWarnings(True)
    if shell is None:
        from IPython import get_ipython

        shell = get_ipython()
    if shell is None:
        return

    def log_instead(*_args, **_kwargs):
        log.error("error while handling a message from the page", exc_info=sys.exc_info())

    shell.showtraceback = log_instead


def _read_uploaded_files(entries, _widget) -> list[dict]:
    """FileUpload's value as the browser sent it, checked instead of trusted: never raises.

    Each entry becomes ``{"name": str, "content": bytes-like or None}``; an entry whose content
    is not bytes keeps ``None`` so the app can say it could not be read.
    """
    if not isinstance(entries, (list, tuple)):
        return []
    files = []
    for entry in entries:
        entry = entry if isinstance(entry, dict) else {}
        name = entry.get("name")
        content = entry.get("content")
        files.append({
            "name": name[:200] if isinstance(name, str) and name else "unnamed file",
            "content": content if isinstance(content, (bytes, memoryview)) else None,
        })
    return files


class PhotoUpload(widgets.FileUpload):
    """The upload button, with a value that is validated as it arrives from the browser."""

    value = widgets.trait_types.TypedTuple(Dict(), help="The uploaded files").tag(
        sync=True, echo_update=False, from_json=_read_uploaded_files, to_json=lambda value, _widget: [])


@dataclass
class FaceCard:
    """One face on screen: the model's answer, its card and the verdict given so far."""

    face: FacePrediction
    thumbnail: bytes
    thumbnail_format: str = "png"  # a group photo's cards get JPEG thumbnails
    widget: widgets.Box = None
    picture: widgets.Image = None
    status: widgets.HTML = None  # the face's number and label, then what became of the verdict
    number: int = 1  # the face's number on the photo and its card
    label: str = ""
    correct_button: widgets.Button = None
    incorrect_button: widgets.Button = None
    overlay: bytes | None = None
    verdict: bool | None = None


@dataclass
class Photo:
    """One uploaded photo: its hash (the photo itself is not kept), its faces and its panel."""

    name: str
    sha256: str
    prediction: PhotoPrediction
    cards: list[FaceCard] = field(default_factory=list)
    panel: widgets.VBox = None
    body: widgets.Box = None
    source: str = "upload"  # or "camera": a picture taken in camera mode
    download: str = ""  # HTML link to download a camera picture


class SmileApp:
    """The whole app for one browser session."""

    def __init__(self, predictor: Predictor | None = None, store: FeedbackStore | None = None, session_id: str | None = None):
        set_threads(settings.inference_threads())
        if settings.served_by_voila():
            keep_errors_on_the_server()
        self.session_id = session_id or uuid.uuid4().hex
        self.photos: list[Photo] = []
        self.faces_judged: set[tuple[str, int]] = set()  # (photo hash, face) with a saved verdict
        self.unsaved: dict[tuple[int, int], bool] = {}  # (photo, face) -> verdict the database was too busy to take
        self.crops_to_forget = False  # consent withdrawn but the crops not deleted yet
        self.consent = False
        self.show_saliency = False
        self._build()
        self.follows_promotions = predictor is None  # a model given by the caller stays; the default one follows promotions
        self.predictor = predictor or self._guarded(Predictor, "No smile model could be loaded, so photos cannot be checked.")
        self.store = store or self._guarded(FeedbackStore, "The feedback database is not reachable; verdicts cannot be saved.")
        self.upload.disabled = self.camera_toggle.disabled = self.predictor is None
        if self.predictor is not None and not self.predictor.can_explain:
            self.saliency_box.disabled = True
            self.saliency_box.description = "Show where the model looked (needs the full image)"
            self.saliency_box.tooltip = SALIENCY_NEEDS_TORCH
        self.camera_view.set_predictor(self.predictor)
        self.use_current_calibration()
        self._safely(self.refresh_metrics)

    # -- building the page -------------------------------------------------------

    def _build(self) -> None:
        self.upload = PhotoUpload(accept=images.ACCEPT, multiple=True,
                                         description="Upload photos", button_style="primary", layout=_layout(width="auto"))
        self.upload.add_class("smilekit-upload")
        self.upload.observe(self._on_upload, names="value")
        self.consent_box = widgets.Checkbox(value=False, indent=False, layout=_layout(width="auto"),
                                            description="Keep my face crops (small, grey) to improve the model")
        self.consent_box.add_class("smilekit-consent")
        self.consent_box.observe(lambda change: self._safely(self.set_consent, change["new"]), names="value")
        self.saliency_box = widgets.Checkbox(value=False, indent=False, description="Show where the model looked",
                                             layout=_layout(width="auto"))
        self.saliency_box.add_class("smilekit-saliency")
        self.saliency_box.observe(lambda change: self._safely(self.set_saliency, change["new"]), names="value")
        hint = widgets.HTML(f"<span class='smilekit-note'>{images.FORMATS}, up to {MAX_FILE_BYTES >> 20} MB each "
                            f"({MAX_UPLOAD_BYTES >> 20} MB and {MAX_FILES_PER_UPLOAD} photos per upload). Photos are never stored; with the first box ticked, the 64×64 grey face crops "
                            "you give feedback on are kept for retraining.</span>")
        self.busy = widgets.HTML("")
        self.camera_toggle = widgets.ToggleButton(value=False, description="Camera", icon="camera", layout=_layout(width="auto"),
                                                  tooltip="Check smiles live with the camera, and take pictures")
        self.camera_toggle.add_class("smilekit-camera")
        self.camera_toggle.observe(lambda change: self._safely(self.set_camera, change["new"]), names="value")
        self.camera_view = CameraView(on_capture=lambda data: self._safely(self.add_capture, data))
        guard = widgets.HTML(render.upload_guard_html(MAX_FILE_BYTES, MAX_UPLOAD_BYTES, MAX_FILES_PER_UPLOAD))
        guard.add_class("smilekit-guard")  # the browser writes its size refusals here
        self.messages = widgets.VBox([])
        self.gallery = widgets.VBox([])
        self.metrics = widgets.HTML("")
        self.metrics.add_class("smilekit-metrics")
        refresh = widgets.Button(description="Refresh", icon="refresh", layout=_layout(width="auto", align_self="flex-start"))
        refresh.on_click(lambda _: self._safely(self.refresh))
        controls = _row_wrap([self.upload, self.camera_toggle, self.busy], grid_gap="8px", align_items="center")
        options = _row_wrap([self.consent_box, self.saliency_box], grid_gap="4px 24px")
        metrics_panel = widgets.VBox([self.metrics, refresh], layout=_layout(margin="8px 0 16px 0"))
        # the live panel sits above the photos, so it stays in view as feedback comes in
        self.widget = widgets.VBox([widgets.HTML(render.CSS), controls, self.camera_view.widget, hint, guard, options, self.messages, metrics_panel, self.gallery],
                                   layout=_layout(width="100%"))
        self.widget.add_class("smilekit-app")

    def _face_card(self, photo: Photo, card: FaceCard, thumb_side: int) -> None:
        """A card of five widgets: the box, the face, its text (label and status) and two buttons, which
        wrap onto two lines when the card is too narrow for both. Layouts and styles are shared, so a group
        photo's 50 cards cost 250 widgets instead of 650."""
        photo_idx, face_idx = self.photos.index(photo), card.face.index
        card.picture = widgets.Image(value=self._card_picture(card), format="png" if self.show_saliency else card.thumbnail_format,
                                     layout=_layout(width="100%", max_width=f"{thumb_side}px", height="auto"))
        card.label = render.label_html(card.number, card.face.label, card.face.confidence, card.face.detected,
                                       card.face.unsure)
        card.status = widgets.HTML(layout=_layout(width="100%"), style=_style(HTMLStyle))
        self._say(card, "<span class='smilekit-note'>Was the model right?</span>")
        button_layout = _layout(flex="1 1 auto", width="auto")
        card.correct_button = widgets.Button(description="Correct", icon="check", layout=button_layout, style=_style(widgets.ButtonStyle))
        card.incorrect_button = widgets.Button(description="Incorrect", icon="times", layout=button_layout, style=_style(widgets.ButtonStyle))
        card.correct_button.add_class("smilekit-correct")
        card.incorrect_button.add_class("smilekit-incorrect")
        card.correct_button.on_click(lambda _: self._safely(self.give_feedback, photo_idx, face_idx, True))
        card.incorrect_button.on_click(lambda _: self._safely(self.give_feedback, photo_idx, face_idx, False))
        card.widget = widgets.Box([card.picture, card.status, card.correct_button, card.incorrect_button],
                                  layout=_layout(display="flex", flex_flow="row wrap", align_content="flex-start", grid_gap="4px"))
        card.widget.add_class("smilekit-face")

    @staticmethod
    def _say(card: FaceCard, status: str) -> None:
        """Show ``status`` (HTML) under the face's label on its card."""
        card.status.value = f"{card.label}<div>{status}</div>"

    def _card_picture(self, card: FaceCard) -> bytes:
        if not self.show_saliency:
            return card.thumbnail
        if card.overlay is None:
            card.overlay = render.saliency_overlay(card.face.crop, self.predictor.saliency(card.face.crop))
        return card.overlay

    def _render_photo(self, photo: Photo) -> None:
        """The photo's panel: its title with the summary, the numbered photo and a card per face.

        A group photo (more than ``render.GROUP_SIZE`` faces) is shown above a grid of compact cards;
        a photo of a few faces beside (on a narrow screen above) their cards.
        """
        prediction = photo.prediction
        detected = [f for f in prediction.faces if f.detected]  # a whole-picture face needs no box
        group = len(detected) > render.GROUP_SIZE
        numbers = dict(zip((f.index for f in detected), render.face_numbers([f.box for f in detected])))
        shown = [prediction.shown_box(f) for f in detected]
        picture = widgets.Image(value=render.boxed_photo(prediction.image, shown, list(numbers.values())),
                                format="jpeg", layout=_layout(width="auto", max_width="100%", max_height="75vh", height="auto"))
        if photo.source == "camera":
            picture.add_class("smilekit-capture")
        picture_box = widgets.Box([picture], layout=_layout(flex="1 1 100%", max_width="1000px", margin="0 0 8px 0") if group
                                  else _layout(flex="0 1 auto", max_width="560px", margin="0 16px 8px 0"))
        thumb_side = render.GROUP_THUMB_SIDE if group else render.THUMB_SIDE
        for face in prediction.faces:
            if face.detected:
                card = FaceCard(face, render.face_thumbnail(prediction.image, prediction.shown_box(face), thumb_side, jpeg=group), "jpeg" if group else "png")
            else:
                card = FaceCard(face, render.crop_thumbnail(face.crop))
            card.number = numbers.get(face.index, 1)
            photo.cards.append(card)
            self._face_card(photo, card, thumb_side)
        summary = render.photo_summary([f.smiling for f in prediction.faces], detected=bool(detected) or not prediction.faces)
        title = f"<b>{html.escape(photo.name)}</b>: <span class='smilekit-summary'>{html.escape(summary)}</span>{photo.download}"
        if photo.cards:
            # auto-fill keeps empty columns, so one card stays card-sized on a wide screen
            columns = f"repeat(auto-fill, minmax({thumb_side + 16}px, 1fr))"
            in_order = sorted(photo.cards, key=lambda c: c.number)  # photo.cards stays in the faces' order, as feedback finds them
            side = widgets.GridBox([c.widget for c in in_order],
                                   layout=_layout(grid_template_columns=columns, grid_gap="6px", flex="1 1 300px", width="100%" if group else "auto"))
            side.add_class("smilekit-cards")
            if group:
                side.add_class("smilekit-group")
        else:
            whole = widgets.Button(description="Classify the whole picture as one face", layout=_layout(width="auto", max_width="100%"))
            whole.add_class("smilekit-whole")
            photo_idx = self.photos.index(photo)
            whole.on_click(lambda _: self._safely(self.classify_whole, photo_idx))
            side = widgets.VBox([widgets.HTML("No face was found in this photo. If it shows one face, the whole picture can be checked."),
                                 whole], layout=_layout(flex="1 1 300px"))
            side.add_class("smilekit-noface")
        photo.body = _row_wrap([picture_box, side], width="100%")
        if photo.panel is None:
            photo.panel = widgets.VBox([widgets.HTML(title), photo.body], layout=_layout(width="100%"))
            photo.panel.add_class("smilekit-photo")
        else:  # re-rendered (whole picture checked): replace and close the old content
            old = photo.panel.children
            photo.panel.children = [widgets.HTML(title), photo.body]
            for widget in old:
                _close_tree(widget)

    # -- user actions --------------------------------------------------------------

    def handle_upload(self, files: list[tuple[str, bytes | memoryview | None]]) -> list[int]:
        """Check every uploaded photo, one at a time; returns the indices of those shown.

        Bad files, and anything over the limits per upload, get a message; ``None`` content
        stands for an entry the browser sent that could not be read.
        """
        self.messages.children = []
        total = sum(memoryview(data).nbytes for _, data in files if data is not None)
        if total > MAX_UPLOAD_BYTES:
            self.show_error(f"These photos add up to {total / 2**20:.1f} MB; upload at most {MAX_UPLOAD_BYTES >> 20} MB at a time.")
            return []
        if len(files) > MAX_FILES_PER_UPLOAD:
            self.show_error(f"{len(files)} photos were sent at once; the first {MAX_FILES_PER_UPLOAD} were checked. "
                            "Please upload the others separately.")
            files = files[:MAX_FILES_PER_UPLOAD]
        self.use_current_model()
        self.use_current_calibration()
        added = []
        for number, (name, data) in enumerate(files, start=1):
            self.busy.value = f"<span class='smilekit-note'>Checking photo {number} of {len(files)}…</span>"
            try:
                if data is None:
                    raise ImageError("this upload could not be read. Please pick the photo again.")
                added.append(self._add_photo(name, data))
            except ImageError as err:
                self.show_error(f"{name}: {err}")
            except Exception:  # noqa: BLE001 - one bad photo must not stop the others
                log.exception("could not process upload %r", name)
                self.show_error(f"{name}: something went wrong while checking this photo. Please try another one.")
            images.return_freed_memory()  # the decoded photo is gone; give its memory back before the next one
        self.busy.value = ""
        self.refresh_metrics()  # other sessions' feedback since the last look
        return added

    def use_current_model(self) -> bool:
        """Switch to the model in force if another was promoted since this one was loaded; True if it switched.

        Every replica reads the same models folder, so a promotion reaches each running kernel (preheated
        ones included) at its next upload. Feedback keeps the version of the model that labelled each photo.
        """
        if not self.follows_promotions:
            return False
        current = default_model_path()
        if self.predictor is not None and current == self.predictor.model_path:
            return False
        try:
            predictor = Predictor(current)
        except Exception:  # noqa: BLE001 - a half-copied or broken file: keep serving the model we have
            log.exception("could not load the promoted model %s; keeping %s", current,
                          self.predictor.model_path if self.predictor else "none")
            return False
        log.info("model %s (%s) now labels this session's photos", predictor.version, current)
        self.predictor = predictor
        self.camera_view.set_predictor(predictor)
        self.upload.disabled = self.camera_toggle.disabled = False
        return True

    def use_current_calibration(self) -> bool:
        """Label with the newest calibration stored for the model in use (fitted on this deployment's verdicts by
        ``smilekit retrain``, see :mod:`smilekit.calibration`); True if it changed. A database that does not
        answer leaves the labels as they were."""
        if self.predictor is None or self.store is None:
            return False
        try:
            newest = self.store.calibration_for(self.predictor.meta["version"])
        except SQLAlchemyError:
            log.warning("could not read the calibration; keeping %s", self.predictor.version, exc_info=True)
            return False
        if newest == self.predictor.calibration:
            return False
        self.predictor.calibrate(newest)
        log.info("model %s now labels this session's photos", self.predictor.version)
        return True

    def set_camera(self, on: bool) -> None:
        """Camera mode on (the page asks for the camera) or off (the camera stops)."""
        on = bool(on) and self.predictor is not None
        if self.camera_toggle.value != on:
            self.camera_toggle.value = on
        (self.camera_view.start if on else self.camera_view.stop)()

    def add_capture(self, data: bytes) -> int | None:
        """A picture taken in camera mode: shown like an upload, its feedback stored as from the camera."""
        self.messages.children = []
        name = time.strftime("Camera picture %H:%M:%S")
        link = (f" <a class='smilekit-download' download='smilekit-{time.strftime('%Y%m%d-%H%M%S')}.jpg' "
                f"href='data:image/jpeg;base64,{base64.b64encode(data).decode()}'>Download</a>")
        try:
            index = self._add_photo(name, data, source="camera", download=link)
        except ImageError as err:
            self.show_error(f"{name}: {err}")
            return None
        self.refresh_metrics()
        return index

    def _add_photo(self, name: str, data: bytes, source: str = "upload", download: str = "") -> int:
        if self.predictor is None:
            raise ImageError("No smile model is loaded, so photos cannot be checked.")
        size = memoryview(data).nbytes
        if size > MAX_FILE_BYTES:
            raise ImageError(f"This file is {size / 2**20:.1f} MB; the limit is {MAX_FILE_BYTES >> 20} MB per photo.")
        start = time.perf_counter()
        prediction = self.predictor.predict(data)  # read in place: no copy of the file
        photo = Photo(name, photo_hash(data), prediction, source=source, download=download)
        self.photos.append(photo)
        self._render_photo(photo)
        log.info("photo %s: %d face(s) in %.2f s", photo.sha256[:12], len(prediction.faces), time.perf_counter() - start)
        # free the pixels; a photo with no face keeps a small copy for "check the whole picture"
        kept = None if photo.cards else _small_copy(prediction.image, WHOLE_PICTURE_SIDE)
        if kept is not None:
            kept.info["full_size"] = prediction.size  # a whole-picture face's box is still in the photo's pixels
        photo.prediction = PhotoPrediction(kept, prediction.faces, prediction.model_version, prediction.size)
        self.gallery.children = (photo.panel, *self.gallery.children)  # newest first
        self._drop_old_photos()
        return len(self.photos) - 1

    def _drop_old_photos(self) -> None:
        """Keep the page (and the kernel's memory) bounded: only the newest photos stay on screen."""
        for old in self.photos[:-MAX_PHOTOS_SHOWN]:
            if old.panel is not None:
                _close_tree(old.panel)
                old.panel, old.body, old.cards = None, None, []
                old.prediction = PhotoPrediction(None, [], old.prediction.model_version, old.prediction.size)
        self.gallery.children = [p.panel for p in reversed(self.photos) if p.panel is not None]

    def classify_whole(self, photo_idx: int) -> FacePrediction:
        """Treat a photo in which no face was found as one face."""
        photo = self.photos[photo_idx]
        if photo.cards:
            return photo.cards[0].face
        photo.prediction = self.predictor.predict(photo.prediction.image, whole_image=True)
        self._render_photo(photo)
        photo.prediction = PhotoPrediction(None, photo.prediction.faces, photo.prediction.model_version, photo.prediction.size)
        images.return_freed_memory()
        return photo.cards[0].face

    def give_feedback(self, photo_idx: int, face_idx: int, correct: bool) -> int | None:
        """Save whether the model was right about one face (again: change the verdict); returns the row id.

        While the database is busy the verdict is kept and saved with the next click or refresh.
        """
        if self.store is None:
            self.show_error("The feedback database is not reachable; your verdict was not saved.")
            return None
        self._save_unsaved()
        return self._save_verdict(photo_idx, face_idx, correct)

    def _save_verdict(self, photo_idx: int, face_idx: int, correct: bool) -> int | None:
        photo = self.photos[photo_idx]
        card = photo.cards[face_idx]
        face = card.face
        if (photo.sha256, face.index) not in self.faces_judged and len(self.faces_judged) >= MAX_VERDICTS_PER_SESSION:
            self._say(card, render.error_html(f"Not saved: one visit can give verdicts on at most {MAX_VERDICTS_PER_SESSION} faces."))
            return None
        self._say(card, "<span class='smilekit-note'>Saving…</span>")
        try:
            row_id = self.store.record(
                session_id=self.session_id, photo_sha256=photo.sha256, face_index=face.index, box=face.box.as_tuple(),
                probability=face.probability, threshold=face.threshold, model_version=photo.prediction.model_version, correct=correct,
                crop_png=render.crop_png(face.crop) if self.consent else None, source=photo.source,
                photo_size=photo.prediction.size,
            )
        except FeedbackWriteError as err:
            log.warning("verdict not saved: %s", err)
            if isinstance(err, DatabaseBusy):
                self.unsaved[(photo_idx, face_idx)] = correct
            self._say(card, render.error_html(str(err)))
            return None
        self.unsaved.pop((photo_idx, face_idx), None)
        self.faces_judged.add((photo.sha256, face.index))
        card.verdict = correct
        card.correct_button.button_style = "success" if correct else ""
        card.incorrect_button.button_style = "" if correct else "danger"
        truth = face.label if correct else ("Not smiling" if face.smiling else "Smiling")
        self._say(card, f"<span class='smilekit-note'>Saved: {'correct' if correct else 'incorrect'} (truth: {truth})</span>")
        self.refresh_metrics()
        return row_id

    def _save_unsaved(self) -> None:
        """Retry what the database could not take before: kept verdicts and withdrawn crops."""
        if self.crops_to_forget:
            self._forget_crops()
        for (photo_idx, face_idx), correct in list(self.unsaved.items()):
            if not self.photos[photo_idx].cards:  # no longer on the page
                self.unsaved.pop((photo_idx, face_idx))
            elif self._save_verdict(photo_idx, face_idx, correct) is None:
                break  # still busy: the others wait for the next click instead of each waiting out the deadline

    def set_consent(self, consent: bool) -> None:
        """Tick: crops are kept with the next verdicts. Untick: this session's kept crops are deleted."""
        self.consent = bool(consent)
        if self.consent_box.value != self.consent:
            self.consent_box.value = self.consent
        if not self.consent and self.store is not None:
            self._forget_crops()

    def _forget_crops(self) -> None:
        self.crops_to_forget = True
        try:
            self.store.forget_crops(self.session_id)
        except FeedbackWriteError as err:
            log.warning("crops not deleted yet: %s", err)
            self.show_error(f"Your kept face crops could not be deleted yet ({err}); this is retried with your next click.")
            return
        self.crops_to_forget = False

    def set_saliency(self, show: bool) -> None:
        """Show each face as the model's crop with where it looked, or as the plain face.

        Without torch (the app's container image) the faces stay plain and the page says why.
        """
        if show and self.predictor is not None and not self.predictor.can_explain:
            self.show_error(SALIENCY_NEEDS_TORCH)
            show = False
        self.show_saliency = bool(show)
        if self.saliency_box.value != self.show_saliency:
            self.saliency_box.value = self.show_saliency
        for photo in self.photos:
            for card in photo.cards:
                with card.picture.hold_sync():  # the picture and its format in one message
                    card.picture.format = "png" if self.show_saliency else card.thumbnail_format
                    card.picture.value = self._card_picture(card)

    def refresh_metrics(self) -> None:
        """Redraw the live panel from the database."""
        if self.store is None:
            self.metrics.value = "<i>Feedback statistics are unavailable.</i>"
            return
        self.metrics.value = render.metrics_html(self.store.stats(), self.predictor.version if self.predictor else None)

    def refresh(self) -> None:
        """The Refresh button: save what is still waiting, then redraw the live panel."""
        if self.store is not None:
            self._save_unsaved()
        self.refresh_metrics()

    # -- plumbing -------------------------------------------------------------------

    def show_error(self, message: str) -> None:
        box = widgets.HTML(render.error_html(message))
        box.add_class("smilekit-error")
        self.messages.children = (*self.messages.children, box)

    def _on_upload(self, change) -> None:
        files = [(f["name"], f["content"]) for f in change["new"]]  # the message's own buffers: no copy
        if not files:
            return
        self.upload.value = ()  # drop the bytes from the widget; also lets the same file be picked again
        self._safely(self.handle_upload, files)

    def _safely(self, action, *args):
        """Run a callback; on failure show a plain message and log the traceback."""
        try:
            return action(*args)
        except Exception as err:  # noqa: BLE001 - nothing may reach the page as a traceback
            log.exception("%s failed", getattr(action, "__name__", action))
            self.busy.value = ""
            if isinstance(err, SQLAlchemyError):
                self.show_error("The feedback database did not answer, so this was not saved. Please try again in a moment.")
            else:
                self.show_error("Something went wrong. Please try again.")
            return None

    def _guarded(self, factory, message: str):
        try:
            return factory()
        except Exception:  # noqa: BLE001
            log.exception("app start-up: %s", message)
            self.show_error(message)
            return None


def _close_tree(widget: widgets.Widget) -> None:
    """Close a widget and everything inside it (their shared layouts stay)."""
    for child in getattr(widget, "children", ()):
        _close_tree(child)
    widget.close()


def _small_copy(image, side: int):
    """``image`` reduced to at most ``side`` pixels on its long side (a copy; the original may be freed)."""
    return image.resize(images.fitted_size(image.size, side), Image.BILINEAR) if max(image.size) > side else image.copy()
