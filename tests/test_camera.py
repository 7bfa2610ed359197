"""The camera mode's kernel side, without a browser: frames in, faces and meters out, the smile shutter,
captured pictures shown like uploads, and their feedback stored as from the camera."""
from __future__ import annotations

import io

import numpy as np
import pytest
from sqlalchemy import create_engine
from PIL import Image

from smilekit.app import camera, ui
from smilekit.store import migrate
from smilekit.store.feedback import FeedbackStore
from smilekit.predict import Predictor

from conftest import load_benchmark

bench = load_benchmark("bench_camera")


@pytest.fixture(scope="module")
def predictor(model_path) -> Predictor:
    return Predictor(model_path)


@pytest.fixture(scope="module")
def photos(predictor, celeba_dir) -> dict[bool, Image.Image]:
    """A smiling and a not-smiling real face photo, as the fake camera of the browser tests shows them."""
    return bench.pick_photos(predictor, celeba_dir)


def jpeg(image: Image.Image, width: int = 320, fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    image.resize((width, width * image.height // image.width)).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def frames(photos) -> dict[bool, bytes]:
    """Camera frames (320 px JPEGs, as the page sends them): smiling and not."""
    return {smiling: jpeg(bench.camera_frame(photo, smiling)) for smiling, photo in photos.items()}


@pytest.fixture
def store(tmp_path):
    s = FeedbackStore(f"sqlite:///{tmp_path / 'feedback.db'}")
    yield s
    s.close()


class Sent(list):
    """Records what the kernel sends to the page."""

    def __call__(self, content, buffers=None):
        self.append(content)


def test_live_faces_follow_the_smile(predictor, frames):
    live = camera.LiveFaces(predictor)
    smiling, not_smiling = live.analyse(frames[True]), live.analyse(frames[False])
    assert len(smiling) == len(not_smiling) == 1
    assert smiling[0].probability > 0.9 and not_smiling[0].probability < 0.1
    face = smiling[0]
    assert 0.2 < face.x < 0.5 and 0.2 < face.y < 0.5 and 0.2 < face.w < 0.6  # fractions of the frame, around the face
    assert camera.LiveFaces(predictor).analyse(jpeg(Image.new("RGB", (640, 480), (90, 90, 90)))) == []


def test_frames_are_read_reduced_and_bad_ones_refused(frames, photos):
    big = jpeg(bench.camera_frame(photos[True], True), width=1280)
    assert camera.read_frame(big).size == (320, 240)  # decoded reduced, in grey
    assert camera.read_frame(big).mode == "L"
    too_many_pixels = jpeg(Image.new("L", (4000, 3000)), width=4000)
    for bad in (b"", b"not a picture", frames[True][:200], jpeg(Image.new("RGB", (320, 240)), fmt="PNG"), too_many_pixels,
                b"\xff\xd8" + bytes(camera.MAX_FRAME_BYTES)):
        with pytest.raises(camera.FrameError):
            camera.read_frame(bad)


def test_smile_shutter_rules():
    shutter = camera.SmileShutter()
    assert not shutter.fires([0.99])
    shutter.mode = "all"
    assert shutter.fires([0.9, 0.6]) and not shutter.fires([0.9, 0.4]) and not shutter.fires([])
    shutter.mode = "2"
    assert shutter.fires([0.9, 0.4, 0.7]) and not shutter.fires([0.9, 0.4])


def test_view_answers_frames_and_the_shutter_fires_once(predictor, frames, monkeypatch):
    taken = []
    view = camera.CameraView(on_capture=taken.append, predictor=predictor)
    answer = view.handle_frame(1, frames[False])
    assert answer["frame"] == 1 and answer["frames"] == 1 and not answer["capture"]
    assert len(answer["faces"]) == 1 and answer["faces"][0]["p"] < 0.1
    view.set_shutter("all")
    assert view.shutter_choice.value == "all"
    assert not view.handle_frame(2, frames[False])["capture"]  # armed, but nobody smiles
    answer = view.handle_frame(3, frames[True])
    assert answer["capture"] and answer["faces"][0]["p"] > 0.9 and answer["frames"] == 3
    assert view.shutter_choice.value == "off"  # one picture per arming
    assert not view.handle_frame(4, frames[True])["capture"]
    assert not view.handle_capture(2, False, frames[False])  # a frame the shutter did not ask for
    assert view.handle_capture(3, False, b"picture")
    assert taken == [b"picture"]
    assert not view.handle_capture(3, False, b"again")  # asked once, taken once
    assert not view.handle_capture(None, True, b"button")  # the button, too soon after the last picture
    monkeypatch.setattr(camera.time, "monotonic", lambda: view.last_capture + camera.MIN_CAPTURE_INTERVAL_S)
    assert view.handle_capture(None, True, b"button") and taken[-1] == b"button"


def test_meter_label_and_shutter_decide_with_the_models_own_threshold(predictor, frames, model_path, tmp_path):
    from smilekit.learn.model import load_checkpoint, save_checkpoint

    p = camera.CameraView(on_capture=lambda data: None, predictor=predictor).handle_frame(1, frames[True])["faces"][0]["p"]
    model, meta = load_checkpoint(model_path)  # the same weights, deciding "smiling" only above this face's probability
    save_checkpoint(tmp_path / "strict.pt", model, meta["arch"], meta["arch_kwargs"], temperature=meta["temperature"],
                    threshold=p + (1 - p) / 2)
    for model_predictor, smiling in ((predictor, True), (Predictor(tmp_path / "strict.pt"), False)):
        view = camera.CameraView(on_capture=lambda data: None, predictor=model_predictor)
        view.set_shutter("all")
        answer = view.handle_frame(1, frames[True])
        assert answer["faces"][0]["p"] == pytest.approx(p, abs=1e-4)
        assert answer["faces"][0]["smiling"] is smiling and answer["capture"] is smiling


def test_bad_frames_and_crafted_messages_get_an_answer_or_nothing(predictor, frames, monkeypatch, caplog):
    view = camera.CameraView(on_capture=lambda data: pytest.fail("nothing asked for a picture"), predictor=predictor)
    sent = Sent()
    monkeypatch.setattr(view.camera, "send", sent)
    view._on_msg(view.camera, {"type": "frame", "frame": 7}, [b"junk"])
    assert sent[-1]["frame"] == 7 and sent[-1]["faces"] == [] and "could not be read" in sent[-1]["note"]
    for content, buffers in ((None, []), ([1], []), ({"type": "frame", "frame": "7"}, [frames[True]]), ({"type": "frame", "frame": True}, [frames[True]]),
                             ({"type": "frame", "frame": 8}, []), ({"type": "frame", "frame": 8}, [frames[True]] * 2),
                             ({"type": "capture", "frame": 9}, [b"x"]), ({"type": "status", "state": {"x": 1}}, []), ({"type": 3}, [])):
        view._on_msg(view.camera, content, buffers)
    assert len(sent) == 1
    view._on_msg(view.camera, {"type": "frame", "frame": 10}, [frames[True]])
    assert sent[-1]["frame"] == 10 and sent[-1]["faces"][0]["p"] > 0.9 and view.frames == 1
    no_model = camera.CameraView(on_capture=lambda data: None)
    assert "No smile model" in no_model.handle_frame(1, frames[True])["note"]


def test_camera_mode_starts_and_stops(predictor, store):
    app = ui.SmileApp(predictor=predictor, store=store)
    assert "smilekit-camera" in app.camera_toggle._dom_classes
    assert "smilekit-shutter" in app.camera_view.shutter_choice._dom_classes
    assert not app.camera_view.camera.active and app.camera_view.widget.layout.display == "none"
    app.camera_toggle.value = True  # as the page's click does
    assert app.camera_view.camera.active and app.camera_view.widget.layout.display == "flex"
    app.set_camera(False)
    assert not app.camera_toggle.value and not app.camera_view.camera.active
    assert app.camera_view.widget.layout.display == "none"


def test_capture_is_shown_with_cards_and_its_feedback_marked_camera(predictor, store, photos, frames):
    app = ui.SmileApp(predictor=predictor, store=store)
    capture = jpeg(bench.camera_frame(photos[True], True), width=640)
    app.camera_view._may_capture = lambda: True
    app.camera_view.set_shutter("all")
    assert app.camera_view.handle_frame(1, frames[True])["capture"]
    assert app.camera_view.handle_capture(1, False, capture)
    photo = app.photos[-1]
    assert photo.source == "camera" and len(photo.cards) == 1 and photo.cards[0].face.smiling
    pictures = [w for w in _tree(photo.panel) if "smilekit-capture" in getattr(w, "_dom_classes", ())]
    assert len(pictures) == 1
    assert "data:image/jpeg;base64," in photo.panel.children[0].value and "download=" in photo.panel.children[0].value
    app.give_feedback(0, 0, True)
    upload = app.handle_upload([("face.jpg", jpeg(photos[False], width=178))])
    app.give_feedback(upload[0], 0, True)
    rows = store.rows()
    assert [(r["source"], r["true_smiling"]) for r in rows] == [("camera", True), ("upload", False)]


def _tree(widget) -> list:
    return [widget] + [w for child in getattr(widget, "children", ()) for w in _tree(child)]


def test_capture_that_is_not_a_picture_gets_a_message(predictor, store):
    app = ui.SmileApp(predictor=predictor, store=store)
    assert app.add_capture(b"not a picture") is None
    assert app.photos == [] and len(app.messages.children) == 1


def test_database_from_before_verdicts_had_a_source_upgrades_and_keeps_working(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    migrate.upgrade(engine, "0001")  # the schema before verdicts had a source, with one verdict in it
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO feedback (created_at, updated_at, session_id, photo_sha256, face_index, box_x, box_y, box_w, box_h, "
            "predicted_smiling, probability, model_version, verdict, true_smiling) VALUES "
            f"('2026-11-24 10:00:00', '2026-11-24 10:00:00', 's', '{'a' * 64}', 0, 1, 2, 3, 4, 1, 0.8, 'v1', 'correct', 1)")
    engine.dispose()
    store = FeedbackStore(url)  # migration 0002 adds the column
    store.record(session_id="s", photo_sha256="b" * 64, face_index=0, box=(1, 2, 3, 4), probability=0.2, model_version="v1",
                 correct=False, source="camera")
    assert [r["source"] for r in store.rows()] == ["upload", "camera"]
    assert store.stats()["count"] == 2
    store.close()


def test_a_colour_model_reads_the_frames_in_colour(frames, tmp_path):
    import torch

    from smilekit.learn import model as M
    from smilekit.vision import faces

    torch.manual_seed(0)
    M.save_checkpoint(tmp_path / "colour.pt", M.build_model("litenet", colour=True), "litenet")
    colour = Predictor(tmp_path / "colour.pt")
    frame = camera.read_frame(frames[True], "RGB")
    assert frame.mode == "RGB" and frame.size == camera.read_frame(frames[True]).size
    box = faces.detect_faces(np.asarray(frame))[0]
    live = camera.LiveFaces(colour).analyse(frames[True])
    crop = faces.model_crop(frame, box, 64)
    assert live[0].probability == pytest.approx(float(colour.predict_proba([crop])[0]), abs=1e-6)
    assert live[0].probability != pytest.approx(float(colour.predict_proba([crop.convert("L")])[0]), abs=1e-6)
