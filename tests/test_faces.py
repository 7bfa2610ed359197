"""Face detection and the crop geometry on real photos."""
import numpy as np
from PIL import Image

from smilekit import faces


def collage(paths, size=(900, 500)):
    """A photo with several real faces at different scales side by side."""
    canvas = Image.new("RGB", size, (90, 110, 100))
    x = 20
    for i, path in enumerate(paths):
        face = Image.open(path).convert("RGB")
        scale = 1.2 - 0.2 * i
        face = face.resize((int(face.width * scale), int(face.height * scale)))
        canvas.paste(face, (x, 30 + 20 * i))
        x += face.width + 30
    return canvas


def test_detects_each_face_in_a_collage(celeba_dir):
    paths = [celeba_dir / f"img/{n}.jpg" for n in (0, 1, 4, 5)]
    photo = collage(paths)
    boxes = faces.detect_faces(photo)
    assert len(boxes) == 4
    xs = [b.x for b in boxes]
    assert xs == sorted(xs)


def test_no_face_in_plain_noise():
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 255, (480, 640), dtype=np.uint8))
    assert faces.detect_faces(noise) == []


def test_large_photo_boxes_are_in_original_coordinates(celeba_dir):
    photo = Image.open(celeba_dir / "img/0.jpg").convert("RGB")
    small = faces.detect_faces(photo)
    big = faces.detect_faces(photo.resize((photo.width * 6, photo.height * 6)))
    assert len(small) == len(big) == 1
    assert abs(big[0].x / 6 - small[0].x) < 6 and abs(big[0].w / 6 - small[0].w) < 8


def test_crop_outside_the_photo_repeats_the_edge():
    image = Image.new("L", (50, 50), 77)
    crop = faces.cut_face(image, faces.Box(-40, -40, 100, 100), 64)
    assert crop.size == (64, 64) and set(np.asarray(crop).ravel()) == {77}


def test_detector_crop_of_a_photo_matches_the_tight_crop_framing(smilesmiled_dir):
    """A SMILEsmileD crop pasted into a larger photo is cut back to (nearly) itself."""
    tight = Image.open(smilesmiled_dir / "positives/3.jpg").convert("L").resize((128, 128))
    photo = Image.new("L", (400, 400), 128)
    photo.paste(tight, (136, 136))
    box = faces.detect_faces(photo)[0]
    cx, cy, side = faces.crop_box(box)
    assert abs(cx - 200) < 0.1 * 128 and abs(cy - 200) < 0.12 * 128
    assert 0.85 < side / 128 < 1.15


def test_face_in_crop_falls_back_to_measured_geometry():
    blank = Image.new("L", (64, 64), 128)
    box = faces.face_in_crop(blank)
    cx, cy, side = faces.crop_box(box)
    assert abs(cx - 32) < 2 and abs(cy - 32) < 2 and abs(side - 64) < 3


def test_model_crop_is_the_centre_of_the_training_context_crop(celeba_dir):
    """Prediction must cut exactly what training cuts (the context crop, then its centre)."""
    from smilekit.data import CONTEXT_SIZE

    photo = Image.open(celeba_dir / "img/0.jpg").convert("L")
    box = faces.detect_faces(photo)[0]
    training = np.asarray(faces.cut_face(photo, box, CONTEXT_SIZE, faces.CONTEXT, upright=True))  # head tilted 8 degrees
    offset = (CONTEXT_SIZE - 64) // 2
    assert np.array_equal(np.asarray(faces.model_crop(photo, box, 64)), training[offset:offset + 64, offset:offset + 64])
