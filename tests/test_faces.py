"""Face detection, landmarks and the aligned crop on real photos."""
import numpy as np
import pytest
from PIL import Image, ImageFilter

from smilekit.vision import faces


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


def test_detects_each_face_in_a_collage_with_its_landmarks(celeba_dir):
    boxes = faces.detect_faces(collage([celeba_dir / f"img/{n}.jpg" for n in (0, 1, 4, 5)]))
    assert len(boxes) == 4
    assert [b.x for b in boxes] == sorted(b.x for b in boxes)
    for b in boxes:
        (rx, ry), (lx, ly), (nx, ny), (mrx, mry), (mlx, mly) = b.landmarks
        assert b.x < rx < nx < lx < b.x + b.w and b.x < mrx < mlx < b.x + b.w  # right eye and mouth corner on the left
        assert b.y < ry < ny < mry < b.y + b.h and b.y < ly < ny < mly < b.y + b.h
        assert 0.5 < b.score <= 1


def test_no_face_in_plain_noise():
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 255, (480, 640), dtype=np.uint8))
    assert faces.detect_faces(noise) == []


@pytest.mark.parametrize("factor", [3, 6, 12])
def test_a_face_too_large_for_the_finest_level_is_found_in_its_own_pixels(celeba_dir, factor):
    """Up to a face of ~1,000 px: the coarser pyramid levels find it, and the box is in the photo's pixels."""
    photo = Image.open(celeba_dir / "img/0.jpg").convert("RGB")
    small = faces.detect_faces(photo)
    big = faces.detect_faces(photo.resize((photo.width * factor, photo.height * factor), Image.BICUBIC))
    assert len(small) == len(big) == 1
    assert abs(big[0].x / factor - small[0].x) < 5 and abs(big[0].w / factor - small[0].w) < 8
    assert np.abs(big[0].points() / factor - small[0].points()).max() < 0.1 * small[0].w  # YuNet at two sizes


def test_faces_on_the_cut_between_tiles_are_found_once(celeba_dir):
    """Faces centred on every cut between tiles of the finest level (and on its tiles' corners)."""
    face = Image.open(celeba_dir / "img/1.jpg").convert("RGB")
    found = faces.detect_faces(face)[0]
    canvas = np.full((1500, 2000, 3), 110, np.uint8)
    starts = faces._starts(2000)
    cuts = [(a + faces.TILE + b) / 2 for a, b in zip(starts, starts[1:])]
    truth = []
    for k, cx in enumerate(cuts):
        cy = faces._cores(faces._starts(1500), 1500)[0][1] if k % 2 else 400 + 200 * k
        scale = 90 / found.w
        small = face.resize((round(face.width * scale), round(face.height * scale)), Image.BICUBIC)
        left = int(cx - (found.x + found.w / 2) * scale)
        top = int(cy - (found.y + found.h / 2) * scale)
        canvas[top : top + small.height, left : left + small.width] = np.asarray(small)
        truth.append((cx, cy))
    boxes = faces.detect_faces(canvas)
    assert len(boxes) == len(truth), boxes
    for cx, cy in truth:
        assert sum(abs(b.x + b.w / 2 - cx) < 30 and abs(b.y + b.h / 2 - cy) < 30 for b in boxes) == 1


def test_the_aligned_crop_puts_the_landmarks_on_the_template(celeba_dir):
    """Five points, four degrees of freedom: a residual, small on most faces (turned heads move the nose)."""
    residuals = []
    for n in range(20):
        face = faces.detect_faces(Image.open(celeba_dir / f"img/{n}.jpg").convert("RGB"))[0]
        placed = np.c_[face.points(), np.ones(5)] @ faces.alignment(face, 64).T / 64
        residuals.append(np.abs(placed - faces.TEMPLATE).max())
    assert np.median(residuals) < 0.05, residuals


def _angle(face: faces.Box) -> float:
    """The rotation of ``face``'s alignment, in degrees."""
    matrix = faces.alignment(face, 64)
    return float(np.degrees(np.arctan2(matrix[1, 0], matrix[0, 0])))


@pytest.mark.parametrize("degrees", [-25, 15])
def test_a_tilted_head_is_cut_level(celeba_dir, degrees):
    """The photo turned: the crop turns it back by as much, so it is the unturned photo's crop."""
    photo = Image.open(celeba_dir / "img/4.jpg").convert("L")
    face = faces.detect_faces(photo)[0]
    turned = photo.rotate(degrees, resample=Image.BICUBIC, expand=True, fillcolor=128)
    turned_face = faces.detect_faces(turned)[0]
    assert abs(_angle(turned_face) - _angle(face) - degrees) < 3  # PIL turns anticlockwise, the crop back
    level = np.asarray(faces.model_crop(photo, face, 64).filter(ImageFilter.GaussianBlur(2)), np.float32)
    crop = np.asarray(faces.model_crop(turned, turned_face, 64).filter(ImageFilter.GaussianBlur(2)), np.float32)
    assert np.corrcoef(level.ravel(), crop.ravel())[0, 1] > 0.8


def test_a_large_face_is_averaged_down_not_aliased():
    """Pixel-fine detail in a face 1,000 px wide is averaged away in its 64 px crop, not sampled (aliasing)."""
    noise = np.random.default_rng(0).integers(0, 256, (1600, 1600), dtype=np.uint8)
    face = faces.Box(300, 300, 1000, 1000)
    crop = np.asarray(faces.model_crop(noise, face, 64), np.float32)
    assert crop.std() < 0.15 * noise.std()  # sampled one pixel in 16, its spread would be the noise's
    assert abs(crop.mean() - noise.mean()) < 2


def test_crop_outside_the_photo_repeats_the_edge():
    image = Image.new("L", (50, 50), 77)
    crop = faces.cut_face(image, faces.Box(-140, -140, 100, 100), 64)
    assert crop.size == (64, 64) and set(np.asarray(crop).ravel()) == {77}


def test_the_crop_of_a_smilesmiled_face_is_found_by_the_detector(smilesmiled_dir):
    """A tight 64 px crop, searched enlarged and padded: the face is found, inside the crop."""
    tight = Image.open(smilesmiled_dir / "positives/3.jpg")
    face = faces.face_in_crop(tight)
    assert face.score > 0.5
    assert ((face.points() > 0) & (face.points() < 64)).all()


def test_face_in_crop_falls_back_to_the_given_landmarks():
    blank = Image.new("L", (60, 80), 128)  # portrait: the square is centred vertically
    face = faces.face_in_crop(blank, faces.TEMPLATE)
    assert face.score == 0
    assert np.allclose(face.points(), faces.TEMPLATE * 60 + [0, 10], atol=1e-3)
    assert np.allclose(faces.crop_corners(face), [[0, 10], [60, 10], [60, 70], [0, 70]], atol=1e-3)


def test_a_box_without_landmarks_gets_them_where_yunet_puts_them():
    face = faces.Box(10, 20, 100, 130)
    placed = faces._box_around(face.points())
    assert abs(placed.x - 10) <= 1 and abs(placed.y - 20) <= 1 and abs(placed.w - 100) <= 1 and abs(placed.h - 130) <= 1


def test_model_crop_is_the_centre_of_the_training_context_crop(celeba_dir):
    """Prediction must cut exactly what training cuts (the context crop, then its centre)."""
    from smilekit.learn.data import CONTEXT_SIZE

    photo = Image.open(celeba_dir / "img/0.jpg").convert("L")
    face = faces.detect_faces(photo)[0]
    training = np.asarray(faces.cut_face(photo, face, CONTEXT_SIZE, faces.CONTEXT))
    offset = (CONTEXT_SIZE - 64) // 2
    diff = np.asarray(faces.model_crop(photo, face, 64), int) - training[offset:offset + 64, offset:offset + 64]
    assert np.abs(diff).max() <= 4 and (diff != 0).mean() < 0.01  # OpenCV's sub-pixel steps of 1/32 px
