"""Tilted heads are cut upright: the eye line from dlib's 5-point landmarks, on real photos."""
import math

import numpy as np
import pytest
from PIL import Image

from smilekit import align, faces

#: CelebA photos whose eyes are level (photo 0's head is tilted by about 8 degrees)
PHOTOS = (1, 4, 5, 9)


def tilted(path, degrees: float) -> Image.Image:
    """A CelebA photo (eyes level: the set is aligned) turned counter-clockwise by ``degrees``, on a grey canvas."""
    photo = Image.open(path).convert("RGB")
    canvas = Image.new("RGB", (photo.width * 2, photo.height * 2), (120, 120, 120))
    canvas.paste(photo, (photo.width // 2, photo.height // 2))
    return canvas.rotate(degrees, resample=Image.BICUBIC)


def largest_face(photo: Image.Image):
    gray = photo.convert("L")
    return gray, max(faces.detect_faces(gray), key=lambda b: b.w)


def own_roll(gray: Image.Image, box) -> float:
    """The eye line's angle as measured, even below align.MIN_DEGREES (CelebA's alignment leaves a few degrees)."""
    left, right = align.eye_centres(np.asarray(gray), box)
    return math.degrees(math.atan2(right[1] - left[1], right[0] - left[0]))


@pytest.mark.parametrize("degrees", [-20, -12, 12, 20])
def test_tilt_of_a_turned_photo_is_measured_from_the_eyes(celeba_dir, degrees):
    for n in PHOTOS:
        level = own_roll(*largest_face(tilted(celeba_dir / f"img/{n}.jpg", 0)))
        assert abs(level) < align.MIN_DEGREES, n
        gray, box = largest_face(tilted(celeba_dir / f"img/{n}.jpg", degrees))
        # PIL turns counter-clockwise, so the eye line then runs up to the right: a negative roll
        assert align.tilt_degrees(np.asarray(gray), box) == pytest.approx(level - degrees, abs=2.5), n


def test_near_level_eyes_count_as_upright_and_a_tilted_head_does_not(celeba_dir):
    for n in PHOTOS:
        gray, box = largest_face(tilted(celeba_dir / f"img/{n}.jpg", 0))
        assert align.tilt_degrees(np.asarray(gray), box) == 0.0, n
    gray, box = largest_face(tilted(celeba_dir / "img/0.jpg", 0))
    assert align.tilt_degrees(np.asarray(gray), box) == pytest.approx(8, abs=3)


def eye_line_degrees(crop: Image.Image) -> float:
    """The eye line's angle in a face crop, measured again on the crop itself."""
    return own_roll(crop, faces.face_in_crop(crop))


def test_upright_crop_of_a_tilted_face_has_level_eyes(celeba_dir):
    for n in PHOTOS:
        gray, box = largest_face(tilted(celeba_dir / f"img/{n}.jpg", 15))
        as_cut = faces.cut_face(gray, box, 160, faces.CONTEXT)
        upright = faces.cut_face(gray, box, 160, faces.CONTEXT, upright=True)
        assert eye_line_degrees(as_cut) == pytest.approx(-15, abs=5), n
        assert eye_line_degrees(upright) == pytest.approx(0, abs=3), n


def test_level_face_is_cut_exactly_as_without_alignment(celeba_dir):
    gray, box = largest_face(Image.open(celeba_dir / "img/1.jpg"))
    upright = faces.cut_face(gray, box, 80, faces.CONTEXT, upright=True)
    assert np.array_equal(np.asarray(upright), np.asarray(faces.cut_face(gray, box, 80, faces.CONTEXT)))


def test_missing_landmark_package_names_what_to_install(monkeypatch):
    monkeypatch.setattr(align.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match="face_recognition_models"):
        align.model_file()


def test_landmarks_get_the_dlib_box_the_face_was_found_with(celeba_dir, monkeypatch):
    """The landmark model was trained on dlib HOG boxes: a Haar-frame box is mapped back onto dlib's own."""
    given = []
    model = align.landmark_model()
    monkeypatch.setattr(align, "landmark_model", lambda: lambda image, rect: given.append(rect) or model(image, rect))
    for n in PHOTOS:
        gray = np.asarray(Image.open(celeba_dir / f"img/{n}.jpg").convert("L"))
        found = faces._hog()(gray, 1)
        assert len(found) == 1, n
        align.tilt_degrees(gray, faces._hog_boxes(gray, upsample=1)[0])
        rect = given[-1]
        for edge in ("left", "top", "right", "bottom"):
            assert getattr(rect, edge)() == pytest.approx(getattr(found[0], edge)(), abs=2), (n, edge)
