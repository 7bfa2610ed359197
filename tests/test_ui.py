"""The app driven through its action methods and widget callbacks, with real face photos."""
from __future__ import annotations

import html
import io
import json
import logging
import re
import subprocess
import sys
import textwrap
from datetime import datetime, timezone

import pytest
from PIL import Image

from smilekit.app import render, ui
from smilekit.vision.faces import Box
from smilekit.store.feedback import FeedbackStore, photo_hash
from smilekit.predict import Predictor

from conftest import COLLAGE_IDS, group_photo, make_collage
from hostile_files import hostile_files, png_header_only


@pytest.fixture(scope="session")
def predictor(model_path) -> Predictor:
    return Predictor(model_path)


@pytest.fixture
def store(tmp_path):
    s = FeedbackStore(f"sqlite:///{tmp_path / 'feedback.db'}")
    yield s
    s.close()


@pytest.fixture
def app(predictor, store):
    return ui.SmileApp(predictor=predictor, store=store)


@pytest.fixture(scope="session")
def face_jpeg(celeba_dir) -> bytes:
    return (celeba_dir / "img" / "0.jpg").read_bytes()


@pytest.fixture(scope="session")
def collage_jpeg(celeba_dir) -> bytes:
    return make_collage(celeba_dir)


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def card_text(card) -> str:
    """All the text on a face card (its HTML pieces and button captions)."""
    parts = []

    def walk(w):
        if hasattr(w, "children"):
            for c in w.children:
                walk(c)
        elif hasattr(w, "value") and isinstance(w.value, str):
            parts.append(w.value)
        if getattr(w, "description", None):
            parts.append(w.description)

    walk(card.widget)
    return " ".join(parts)


def widget_tree(widget) -> list:
    """A widget and every widget inside it."""
    return [widget] + [w for child in getattr(widget, "children", ()) for w in widget_tree(child)]


def errors(app) -> list[str]:
    """The app's error messages as the person reads them (tags stripped, entities unescaped)."""
    return [html.unescape(re.sub(r"<[^>]+>", "", m.value)) for m in app.messages.children if "smilekit-error" in m._dom_classes]


def test_widget_has_stable_classes(app):
    assert "smilekit-upload" in app.upload._dom_classes
    guard = [w for w in app.widget.children if "smilekit-guard" in w._dom_classes]
    assert len(guard) == 1 and "onerror" in guard[0].value  # the browser-side size check
    assert "smilekit-metrics" in app.metrics._dom_classes
    assert "Feedback given: <b>0</b>" in app.metrics.value


def test_one_face_photo(app, predictor, face_jpeg):
    assert app.handle_upload([("face.jpg", face_jpeg)]) == [0]
    (photo,) = app.photos
    assert len(photo.cards) == 1
    card = photo.cards[0]
    assert "smilekit-face" in card.widget._dom_classes
    assert "smilekit-correct" in card.correct_button._dom_classes
    assert "smilekit-incorrect" in card.incorrect_button._dom_classes
    expected = predictor.predict(face_jpeg).faces[0]
    text = card_text(card)
    assert expected.label in text
    assert f"{expected.confidence:.0%}" in text
    assert card.picture.value[:8] == b"\x89PNG\r\n\x1a\n"
    assert app.gallery.children[0] is photo.panel
    assert errors(app) == []


@pytest.mark.parametrize("band, asked", [(1.0, True), (0.0, False)])
def test_unsure_faces_ask_for_feedback(app, face_jpeg, monkeypatch, band, asked):
    import smilekit.predict

    monkeypatch.setattr(smilekit.predict, "UNSURE_BAND", band)  # every face within the band, or none
    app.handle_upload([("face.jpg", face_jpeg)])
    (card,) = app.photos[0].cards
    assert card.face.unsure == asked
    assert ("Not sure — tell us?" in card_text(card)) == asked


def test_unsure_means_near_the_threshold():
    from smilekit.predict import FacePrediction
    from smilekit.settings import UNSURE_BAND

    near = lambda p, threshold=0.5: FacePrediction(0, None, p, None, threshold=threshold).unsure
    assert near(0.5) and near(0.5 + UNSURE_BAND * 0.9) and near(0.5 - UNSURE_BAND * 0.9)
    assert not near(0.5 + UNSURE_BAND * 1.1) and not near(0.02) and not near(0.98)
    assert near(0.7, threshold=0.7) and not near(0.5, threshold=0.7)  # the band is around the model's own threshold


def test_collage_feedback_and_change_of_mind(app, store, collage_jpeg):
    app.handle_upload([("group.jpg", collage_jpeg)])
    cards = app.photos[0].cards
    assert len(cards) == len(COLLAGE_IDS)
    assert all(("Smiling" in card_text(c)) or ("Not smiling" in card_text(c)) for c in cards)
    ids = [app.give_feedback(0, i, correct=(i % 2 == 0)) for i in range(len(cards))]
    assert len(set(ids)) == len(cards)
    rows = store.rows()
    assert len(rows) == len(cards)
    for row, card in zip(sorted(rows, key=lambda r: r["face_index"]), cards):
        face = card.face
        right = face.index % 2 == 0
        assert row["photo_sha256"] == photo_hash(collage_jpeg)
        assert row["session_id"] == app.session_id
        assert row["box"] == face.box.as_tuple()
        assert row["predicted_smiling"] == face.smiling
        assert row["true_smiling"] == (face.smiling if right else not face.smiling)
        assert row["verdict"] == ("correct" if right else "incorrect")
        assert row["model_version"] == app.predictor.version
        assert row["crop_png"] is None  # no consent given
    # clicking again changes the verdict of the same row
    assert app.give_feedback(0, 1, correct=True) == ids[1]
    rows = store.rows()
    assert len(rows) == len(cards)
    assert next(r for r in rows if r["face_index"] == 1)["verdict"] == "correct"
    assert cards[1].correct_button.button_style == "success" and cards[1].incorrect_button.button_style == ""
    assert f"Feedback given: <b>{len(cards)}</b>" in app.metrics.value


def test_buttons_are_wired(app, store, face_jpeg):
    app.handle_upload([("face.jpg", face_jpeg)])
    card = app.photos[0].cards[0]
    card.incorrect_button.click()
    (row,) = store.rows()
    assert row["verdict"] == "incorrect"
    card.correct_button.click()
    (row,) = store.rows()
    assert row["verdict"] == "correct"
    assert "Saved: correct" in card.status.value


def test_upload_widget_is_wired(app, face_jpeg):
    app.upload.value = ({"name": "face.jpg", "type": "image/jpeg", "size": len(face_jpeg),
                         "content": memoryview(face_jpeg), "last_modified": datetime.now(timezone.utc)},)
    assert len(app.photos) == 1 and len(app.photos[0].cards) == 1
    assert app.upload.value == ()  # bytes released, the same file can be picked again


def test_consent_keeps_only_the_crop(app, store, collage_jpeg):
    app.handle_upload([("group.jpg", collage_jpeg)])
    app.give_feedback(0, 0, True)
    app.set_consent(True)
    assert app.consent_box.value is True
    app.give_feedback(0, 1, False)
    rows = {r["face_index"]: r for r in store.rows()}
    assert rows[0]["crop_png"] is None
    crop = Image.open(io.BytesIO(rows[1]["crop_png"]))
    assert crop.size == (64, 64) and crop.mode == "L"  # the face crop, not the photo
    ((image, label),) = store.consented_crops()
    assert label == int(rows[1]["true_smiling"])
    # withdrawing consent deletes the crops this session kept
    app.consent_box.value = False
    assert store.consented_crops() == []
    assert len(store.rows()) == 2


def test_photo_is_never_written_to_disk(app, tmp_path, face_jpeg, monkeypatch):
    monkeypatch.chdir(tmp_path)
    app.set_consent(True)
    app.handle_upload([("face.jpg", face_jpeg)])
    app.give_feedback(0, 0, True)
    files = [p for p in tmp_path.rglob("*") if p.is_file() and not p.name.startswith("feedback.db")]
    assert files == []


@pytest.mark.parametrize("make_bad, message", [
    (lambda face: b"this is not a photo", "not an image"),
    (lambda face: face[: len(face) // 2], "truncated"),
    (lambda face: b"", "empty"),
])
def test_bad_file_gives_message_and_next_upload_works(app, face_jpeg, make_bad, message):
    assert app.handle_upload([("bad.jpg", make_bad(face_jpeg))]) == []
    (error,) = errors(app)
    assert "bad.jpg" in error and message in error
    assert "Traceback" not in error
    assert app.photos == []
    assert app.handle_upload([("face.jpg", face_jpeg)]) == [0]
    assert errors(app) == []
    assert len(app.photos[0].cards) == 1


def test_decompression_bomb_and_oversized_files(app, face_jpeg):
    app.handle_upload([("bomb.png", png_header_only(40_000, 40_000)), ("huge.jpg", face_jpeg + b"\0" * ui.MAX_FILE_BYTES),
                       ("face.jpg", face_jpeg)])
    bomb, huge = errors(app)
    assert "bomb.png" in bomb and "too large" in bomb
    assert "huge.jpg" in huge and f"{ui.MAX_FILE_BYTES >> 20} MB" in huge
    assert len(app.photos) == 1  # the good photo of the same upload is still shown


@pytest.mark.parametrize("fmt, kwargs", [("PNG", {}), ("WEBP", {"quality": 90}), ("GIF", {}), ("BMP", {}), ("TIFF", {})])
def test_formats(app, face_jpeg, fmt, kwargs):
    data = encode(Image.open(io.BytesIO(face_jpeg)), fmt, **kwargs)
    assert app.handle_upload([(f"face.{fmt.lower()}", data)]) == [0]
    assert len(app.photos[0].cards) == 1


def test_exif_rotation_is_honoured(app, face_jpeg):
    upright = Image.open(io.BytesIO(face_jpeg))
    sideways = upright.rotate(90, expand=True)  # as a camera held sideways stores it
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    app.handle_upload([("phone.jpg", encode(sideways, "JPEG", quality=92, exif=exif.tobytes()))])
    (card,) = app.photos[0].cards
    x, y, w, h = card.face.box.as_tuple()
    assert 0 <= x and x + w <= upright.width + 5  # box in upright (portrait) coordinates


def test_no_face_offers_the_whole_picture(app, store):
    blank = encode(Image.linear_gradient("L").resize((400, 300)).convert("RGB"), "PNG")
    app.handle_upload([("sky.png", blank)])
    photo = app.photos[0]
    assert photo.cards == []
    texts = [w.value for w in photo.panel.children if hasattr(w, "value")]
    assert any("no face found" in t for t in texts)
    whole_buttons = [w for w in photo.body.children[1].children if "smilekit-whole" in getattr(w, "_dom_classes", ())]
    assert len(whole_buttons) == 1
    whole_buttons[0].click()
    (card,) = photo.cards
    assert card.face.detected is False
    assert "Whole picture" in card_text(card)
    assert "checked as one face" in photo.panel.children[0].value
    app.give_feedback(0, 0, False)
    (row,) = store.rows()
    assert row["verdict"] == "incorrect"


def test_a_photo_with_no_face_is_kept_small(app):
    big = encode(Image.linear_gradient("L").resize((3000, 2000)).convert("RGB"), "PNG")
    app.handle_upload([("wall.png", big)])
    kept = app.photos[0].prediction.image
    assert max(kept.size) == ui.WHOLE_PICTURE_SIDE and kept.size[0] > kept.size[1]  # not the 2048 px working copy
    assert app.classify_whole(0).detected is False


def test_only_the_newest_photos_stay_on_the_page(app, store, face_jpeg, collage_jpeg, monkeypatch):
    monkeypatch.setattr(ui, "MAX_PHOTOS_SHOWN", 2)
    app.handle_upload([("first.jpg", face_jpeg)])
    first_card = app.photos[0].cards[0].widget
    app.give_feedback(0, 0, True)
    app.handle_upload([("second.jpg", collage_jpeg), ("third.jpg", face_jpeg)])
    assert [p.panel for p in app.photos[1:]][::-1] == list(app.gallery.children)
    assert app.photos[0].panel is None and first_card.comm is None  # closed: nothing left in the kernel
    assert len(store.rows()) == 1  # its verdict stays
    app.give_feedback(1, 0, False)  # photos still shown take feedback as before
    assert len(store.rows()) == 2


def test_saliency_toggle(app, face_jpeg):
    app.handle_upload([("face.jpg", face_jpeg)])
    card = app.photos[0].cards[0]
    plain = card.picture.value
    app.saliency_box.value = True
    overlay = card.picture.value
    assert overlay != plain and Image.open(io.BytesIO(overlay)).mode == "RGB"
    app.handle_upload([("face2.jpg", face_jpeg)])  # new photos follow the toggle
    assert app.photos[1].cards[0].picture.value == overlay
    app.set_saliency(False)
    assert card.picture.value == plain


def test_saliency_without_torch_says_it_needs_the_full_image(model_path, celeba_dir):
    """Where torch cannot be imported (the app's container image), the box says the view needs the full image, and
    ticking it anyway keeps the faces plain with that message on the page instead of an error."""
    code = textwrap.dedent(f"""
        import json, sys
        sys.modules["torch"] = None  # as if it were not installed: importing it raises ModuleNotFoundError
        from smilekit.app import ui
        from smilekit.predict import Predictor
        from smilekit.store.feedback import FeedbackStore
        app = ui.SmileApp(predictor=Predictor({str(model_path)!r}), store=FeedbackStore("sqlite://"))
        app.handle_upload([("face.jpg", open({str(celeba_dir / "img" / "0.jpg")!r}, "rb").read())])
        card = app.photos[0].cards[0]
        plain = card.picture.value
        app.saliency_box.value = True
        print(json.dumps({{"disabled": app.saliency_box.disabled, "description": app.saliency_box.description,
                          "ticked": app.saliency_box.value, "plain": card.picture.value == plain,
                          "messages": [m.value for m in app.messages.children], "smiling": card.face.label}}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout.splitlines()[-1])
    assert shown["disabled"] and "needs the full image" in shown["description"]
    assert not shown["ticked"] and shown["plain"]
    assert shown["messages"] == [render.error_html(ui.SALIENCY_NEEDS_TORCH)]
    assert "smilekit-full" in ui.SALIENCY_NEEDS_TORCH
    assert shown["smiling"] in ("Smiling", "Not smiling")  # the faces are still classified (onnxruntime)


def test_callback_errors_become_messages(app, face_jpeg, monkeypatch, capsys):
    app.handle_upload([("face.jpg", face_jpeg)])

    def broken(**_):
        raise RuntimeError("database on fire")

    monkeypatch.setattr(app.store, "record", broken)
    app.photos[0].cards[0].correct_button.click()  # must not raise
    (error,) = errors(app)
    assert "Something went wrong" in error and "on fire" not in error
    assert "on fire" not in capsys.readouterr().out


def test_database_outage_is_explained(app, face_jpeg, monkeypatch):
    from sqlalchemy.exc import OperationalError

    app.handle_upload([("face.jpg", face_jpeg)])

    def down(**_):
        raise OperationalError("INSERT ...", {}, Exception("connection refused"))

    monkeypatch.setattr(app.store, "record", down)
    app.photos[0].cards[0].incorrect_button.click()
    (error,) = errors(app)
    assert "database" in error and "not saved" in error and "refused" not in error
    assert "Saved" not in app.photos[0].cards[0].status.value


def test_app_without_a_model_explains(monkeypatch, store, tmp_path):
    monkeypatch.setenv("SMILEKIT_MODEL", str(tmp_path / "missing.pt"))
    app = ui.SmileApp(store=store)
    assert app.predictor is None
    assert app.upload.disabled
    (error,) = errors(app)
    assert "model" in error


# -- what arrives from the page is checked, not trusted ---------------------------------

def test_upload_value_from_the_browser_is_checked():
    read = ui._read_uploaded_files
    assert read("not a list", None) == []
    assert read(None, None) == []
    (no_keys, text_content, fine) = read([{}, {"name": "a.jpg", "content": "text"}, {"name": "b" * 500, "content": b"xy"}], None)
    assert no_keys == {"name": "unnamed file", "content": None}
    assert text_content == {"name": "a.jpg", "content": None}
    assert fine["name"] == "b" * 200 and fine["content"] == b"xy"
    assert read([1, "x", None], None) == [{"name": "unnamed file", "content": None}] * 3


def test_unreadable_entries_get_a_message_and_the_rest_is_checked(app, face_jpeg):
    app.upload.set_state({"value": [{"name": "broken.jpg", "content": "not bytes"}, {}]})  # as a crafted message would
    assert app.photos == []
    assert [e.split(":")[0] for e in errors(app)] == ["broken.jpg", "unnamed file"]
    assert all("could not be read" in e for e in errors(app))
    app.handle_upload([("face.jpg", memoryview(face_jpeg))])
    assert len(app.photos) == 1 and errors(app) == []


def _tiny_png(value: int) -> bytes:
    return encode(Image.new("RGB", (32, 32), (value, value, value)), "PNG")


def test_too_many_photos_in_one_message(app):
    files = [(f"{n}.png", _tiny_png(n)) for n in range(3 * ui.MAX_FILES_PER_UPLOAD)]
    app.handle_upload(files)
    assert len(app.photos) == ui.MAX_FILES_PER_UPLOAD
    (first, *_rest) = errors(app)
    assert f"{3 * ui.MAX_FILES_PER_UPLOAD} photos were sent at once" in first and f"first {ui.MAX_FILES_PER_UPLOAD}" in first


def test_too_many_bytes_in_one_message(app, monkeypatch):
    monkeypatch.setattr(ui, "MAX_UPLOAD_BYTES", 1000)
    app.handle_upload([("a.png", _tiny_png(1)), ("b.png", b"\0" * 1000)])
    assert app.photos == []
    (error,) = errors(app)
    assert "add up to" in error


def test_verdicts_per_visit_are_capped(app, store, collage_jpeg, monkeypatch):
    monkeypatch.setattr(ui, "MAX_VERDICTS_PER_SESSION", 2)
    app.handle_upload([("group.jpg", collage_jpeg)])
    assert app.give_feedback(0, 0, True) is not None
    assert app.give_feedback(0, 1, True) is not None
    assert app.give_feedback(0, 0, False) is not None  # changing a verdict is not a new face
    assert app.give_feedback(0, 2, True) is None
    assert "at most 2 faces" in app.photos[0].cards[2].status.value
    assert len(store.rows()) == 2


def test_errors_and_warnings_stay_on_the_server(capsys):
    import warnings

    class Shell:
        def showtraceback(self, *args, **kwargs):
            print("Traceback (most recent call last): sent to the page")

    shell = Shell()
    try:
        ui.keep_errors_on_the_server(shell)
        try:
            raise KeyError("content")
        except KeyError:
            shell.showtraceback()
        warnings.warn("Corrupt EXIF data in /srv/some/path.py")
        out = capsys.readouterr()
        assert "Traceback" not in out.out and "Corrupt EXIF" not in out.out + out.err
    finally:
        logging.captureWarnings(False)


# -- a busy or read-only database is said plainly, and nothing clicked is lost ----------

def test_busy_database_keeps_the_click_and_saves_it_later(app, store, collage_jpeg, monkeypatch):
    from smilekit.store.feedback import DatabaseBusy

    app.handle_upload([("group.jpg", collage_jpeg)])
    real_record = store.record
    busy = {"on": True}
    statuses = []

    def record(**kwargs):
        statuses.append(app.photos[0].cards[kwargs["face_index"]].status.value)
        if busy["on"]:
            raise DatabaseBusy("The feedback database is busy; your verdict was not saved yet.")
        return real_record(**kwargs)

    monkeypatch.setattr(store, "record", record)
    assert app.give_feedback(0, 0, False) is None
    assert "Saving" in statuses[0]  # shown while the database is asked
    assert "busy" in app.photos[0].cards[0].status.value and "Saved" not in app.photos[0].cards[0].status.value
    assert store.rows() == []
    busy["on"] = False
    app.give_feedback(0, 1, True)  # the next click saves the kept one too
    rows = {r["face_index"]: r["verdict"] for r in store.rows()}
    assert rows == {0: "incorrect", 1: "correct"}
    assert "Saved: incorrect" in app.photos[0].cards[0].status.value
    assert app.unsaved == {}


def test_read_only_database_says_so(app, store, face_jpeg, monkeypatch):
    from smilekit.store.feedback import DatabaseReadOnly

    app.handle_upload([("face.jpg", face_jpeg)])

    def read_only(**_):
        raise DatabaseReadOnly("The feedback database is read-only, so verdicts cannot be saved.")

    monkeypatch.setattr(store, "record", read_only)
    app.give_feedback(0, 0, True)
    assert "read-only" in app.photos[0].cards[0].status.value
    assert app.unsaved == {}  # retrying would not help


def test_withdrawn_consent_is_retried_until_the_crops_are_gone(app, store, face_jpeg, monkeypatch):
    from smilekit.store.feedback import DatabaseBusy

    app.handle_upload([("face.jpg", face_jpeg)])
    app.set_consent(True)
    app.give_feedback(0, 0, True)
    real_forget = store.forget_crops

    def busy(_session):
        raise DatabaseBusy("The feedback database is busy.")

    monkeypatch.setattr(store, "forget_crops", busy)
    app.set_consent(False)
    assert "could not be deleted yet" in errors(app)[-1]
    assert len(store.consented_crops()) == 1
    monkeypatch.setattr(store, "forget_crops", real_forget)
    app.refresh()
    assert store.consented_crops() == []
    assert not app.crops_to_forget


def test_hostile_files_get_a_clear_answer(app, face_jpeg):
    """Each file of the battery: its own photo panel or a message naming it, never a generic failure."""
    battery = hostile_files(face_jpeg)
    assert len(battery) >= 30
    for name, data in battery.items():
        shown = app.handle_upload([(name, data)])
        messages = errors(app)
        if shown:
            assert messages == [], (name, messages)
        else:
            (message,) = messages
            assert message.startswith(f"{name}: ") and "went wrong" not in message, (name, message)
    app.handle_upload([("face.jpg", face_jpeg)])  # and the app still works
    assert len(app.photos[-1].cards) == 1 and errors(app) == []


# -- group photos: a summary, a card per face, numbers that match -------------------------

@pytest.mark.parametrize("smiling, detected, said", [
    ([], True, "no face found"),
    ([True], True, "1 face found: smiling"),
    ([False], True, "1 face found: not smiling"),
    ([True], False, "checked as one face: smiling"),
    ([False], False, "checked as one face: not smiling"),
    ([True, False, True, True, False, True, True, False, True, False, True, False], True, "12 faces found: 7 of 12 smiling"),
    ([True] * 12, True, "12 faces found: everyone is smiling"),
    ([True, True], True, "2 faces found: everyone is smiling"),
    ([False] * 5, True, "5 faces found: no one is smiling"),
])
def test_photo_summary(smiling, detected, said):
    assert render.photo_summary(smiling, detected) == said


def test_faces_are_numbered_row_by_row():
    # two uneven rows of faces (as a detector returns them: by x), and a lone face below
    boxes = [Box(10, 100, 50, 50), Box(12, 20, 40, 40), Box(80, 28, 44, 44), Box(90, 95, 60, 60), Box(160, 10, 40, 40),
             Box(50, 300, 40, 40)]
    assert render.face_numbers(boxes) == [4, 1, 2, 5, 3, 6]
    assert render.face_numbers([]) == []


def test_face_numbers_are_readable_in_a_crowd():
    few = render.label_font_size(900, [200, 220])
    assert few == 30  # one or a few faces: as before
    crowd = render.label_font_size(1400, [12] * 50)  # 50 tiny faces: smaller than that, never below the minimum
    assert crowd == round(1400 * render.LABEL_MIN_FRACTION)
    assert render.label_font_size(1400, [60] * 50) == 36  # about as big as the faces
    image = Image.new("RGB", (4000, 3000), "grey")
    boxes = [Box(100 + 70 * (k % 50), 300 + 400 * (k // 50), 50, 50) for k in range(50)]
    shown = Image.open(io.BytesIO(render.boxed_photo(image, boxes)))
    assert max(shown.size) == render.GROUP_DISPLAY_MAX_SIDE  # a group photo is shown larger


def test_group_photo_gets_a_card_per_face_with_matching_numbers(app, store, celeba_dir, monkeypatch):
    drawn = {}
    real_boxed_photo = render.boxed_photo

    def spy(image, boxes, numbers=None):
        drawn.update(zip(boxes, numbers))
        return real_boxed_photo(image, boxes, numbers)

    monkeypatch.setattr(render, "boxed_photo", spy)
    app.handle_upload([("class.jpg", group_photo(celeba_dir, 6, 5))])
    (photo,) = app.photos
    faces = photo.prediction.faces
    assert len(faces) >= 24  # most of the 30 faces, whatever the detector of the day finds
    assert len(photo.cards) == len(faces) == len(drawn)
    numbers = sorted(card.number for card in photo.cards)
    assert numbers == list(range(1, len(faces) + 1))
    for card in photo.cards:
        assert drawn[card.face.box] == card.number  # the number on the photo is the card's
        assert f"Face {card.number}<" in card.status.value
    grid = photo.body.children[1]
    assert "smilekit-cards" in grid._dom_classes and "smilekit-group" in grid._dom_classes
    assert [c.widget for c in sorted(photo.cards, key=lambda c: c.number)] == list(grid.children)  # the grid reads 1, 2, 3...
    title = photo.panel.children[0].value
    smiles = sum(f.smiling for f in faces)
    assert f"<span class='smilekit-summary'>{len(faces)} faces found: " in title
    assert (f"{smiles} of {len(faces)} smiling" in title) or ("everyone" in title) or ("no one" in title)
    # five widgets a card (its box, face, text and two buttons); their layouts and styles are shared, not one each
    assert all(len(widget_tree(card.widget)) == 5 for card in photo.cards)
    assert len(widget_tree(photo.panel)) <= 5 * len(faces) + 8
    parts = [w for card in photo.cards for w in widget_tree(card.widget)]
    assert len({id(w.layout) for w in parts}) <= 5
    assert len({id(w.style) for w in parts if hasattr(w, "style")}) <= 2
    # feedback on the last card, as today
    last = max(photo.cards, key=lambda c: c.number)
    last.correct_button.click()
    (row,) = store.rows()
    assert row["face_index"] == last.face.index and row["box"] == last.face.box.as_tuple() and row["verdict"] == "correct"
    assert "Saved: correct" in last.status.value and f"Face {last.number}<" in last.status.value
    # small JPEG thumbnails; the saliency overlays (PNG) replace them and go back
    assert last.picture.format == "jpeg" and last.picture.value[:2] == b"\xff\xd8"
    app.set_saliency(True)
    assert last.picture.format == "png" and last.picture.value[:8] == b"\x89PNG\r\n\x1a\n"
    app.set_saliency(False)
    assert last.picture.format == "jpeg" and last.picture.value == last.thumbnail


def test_few_faces_keep_the_larger_cards(app, collage_jpeg):
    app.handle_upload([("group.jpg", collage_jpeg)])
    grid = app.photos[0].body.children[1]
    assert "smilekit-cards" in grid._dom_classes and "smilekit-group" not in grid._dom_classes
    assert "4 faces found: " in app.photos[0].panel.children[0].value
    thumb = Image.open(io.BytesIO(app.photos[0].cards[0].picture.value))
    assert thumb.size == (render.THUMB_SIDE, render.THUMB_SIDE)


def test_kept_verdicts_are_not_each_retried_while_the_database_stays_busy(app, store, collage_jpeg, monkeypatch):
    from smilekit.store.feedback import DatabaseBusy

    app.handle_upload([("group.jpg", collage_jpeg)])
    attempts = []

    def busy(**kwargs):
        attempts.append(kwargs["face_index"])
        raise DatabaseBusy("The feedback database is busy; your verdict was not saved yet.")

    monkeypatch.setattr(store, "record", busy)
    for face in range(3):
        app.give_feedback(0, face, True)
    assert len(app.unsaved) == 3
    attempts.clear()
    app.give_feedback(0, 3, True)
    assert len(attempts) == 2  # the first kept one, found still busy, then this click: not every kept one
    assert len(app.unsaved) == 4
