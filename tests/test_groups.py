"""Group photos: every face of 40 to 200 px in a 12 MP photo is found, and none where there is no face."""
import io

import numpy as np
import pytest
from PIL import Image

from conftest import load_benchmark
from smilekit import faces
from smilekit.images import load_image
from smilekit.predict import DETAIL_MAX_SIDE

#: CelebA-subset photos (train split: any detected face will do) and the width each face gets in the group photo
GROUP = ((0, 40), (1, 60), (4, 100), (5, 200), (7, 40), (8, 60), (9, 100), (10, 150), (12, 40), (13, 60), (14, 80), (15, 40))


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_groups")


def detect(data: bytes) -> tuple[list[faces.Box], float]:
    """Boxes as the app finds them (colour working image + greyscale detail), in the photo's full-size pixels."""
    image = load_image(data)
    boxes = faces.detect_faces(image, load_image(data, DETAIL_MAX_SIDE, mode="L"), max(image.info["full_size"]))
    factor = image.info["full_size"][0] / image.width
    return boxes, factor


def near(found: list[faces.Box], face: tuple) -> list[faces.Box]:
    """The boxes centred within 0.4 face widths of a pasted face (x, y, width)."""
    x, y, width = face
    return [b for b in found if abs(b.x + b.w / 2 - x - width / 2) < 0.4 * width and abs(b.y + b.h / 2 - y - width / 2) < 0.4 * width]


def outside(found: list[faces.Box], pasted: list[tuple]) -> list[faces.Box]:
    """The boxes centred outside every pasted region (``bench.paste``'s (face, region) pairs): false faces. The
    source photos hold other people too, half hidden at their edges, so a box there is no false face."""
    return [b for b in found if not any(x <= b.x + b.w / 2 <= x + w and y <= b.y + b.h / 2 <= y + h for _, (x, y, w, h) in pasted)]


def pasted_scene(celeba_dir, bench, seed: int, placements) -> tuple[list[tuple], list[faces.Box]]:
    """A 12 MP gradient scene (``seed``) with the face of CelebA-subset photo n pasted ``width`` px wide, centred
    at (cx, cy), for each (n, width, cx, cy) of ``placements``: ``bench.paste``'s (face, region) pairs, and the
    faces found in the scene's JPEG, in its pixels."""
    canvas = bench.background("gradient", np.random.default_rng(seed))
    pasted = []
    for n, width, cx, cy in placements:
        photo = Image.open(celeba_dir / f"img/{n}.jpg").convert("RGB")
        pasted.append(bench.paste(canvas, {"photo": photo, "box": faces.detect_faces(photo)[0]}, width, cx, cy))
    boxes, factor = detect(bench.jpeg(canvas))
    return pasted, [b.scaled(factor) for b in boxes]


def test_every_face_of_40_to_200_px_in_a_12_mp_photo_is_found(celeba_dir, bench):
    # faces near tile edges and far apart
    placements = [(n, width, 400 + (k % 4) * 1000 + 7 * k, 500 + (k // 4) * 1000 - 5 * k) for k, (n, width) in enumerate(GROUP)]
    pasted, found = pasted_scene(celeba_dir, bench, 3, placements)
    for face, _ in pasted:
        close = near(found, face)
        assert len(close) == 1 and 0.7 < close[0].w / face[2] < 1.4, (face, close)
    assert len(found) == len(pasted)


#: CelebA-subset train photos whose face Haar's frontal cascades miss at that width (a turned head, a cap):
#: found by the profile cascade (40 px) and by CenterFace (200 px) in the group search
HARD_FACES = ((59, 200), (133, 40), (226, 40), (282, 40))


def test_turned_and_capped_faces_in_a_12_mp_photo_are_found(celeba_dir, bench):
    placements = [(n, width, 600 + 700 * k, 900 + 300 * (k % 3)) for k, (n, width) in enumerate(HARD_FACES)]
    pasted, found = pasted_scene(celeba_dir, bench, 5, placements)
    missed = [face for face, _ in pasted if not near(found, face)]
    assert missed == [] and outside(found, pasted) == [], (missed, found)


#: CelebA-subset train photos whose turned face, 100 px wide, only the profile cascade confirms on its close-up
TURNED_FACES = (2, 35, 556, 756)


def test_turned_faces_100_px_wide_in_a_12_mp_photo_are_found(celeba_dir, bench):
    pasted, found = pasted_scene(celeba_dir, bench, 7, [(n, 100, 700 + 850 * k, 1500) for k, n in enumerate(TURNED_FACES)])
    missed = [face for face, _ in pasted if not near(found, face)]
    assert missed == [] and len(found) == len(pasted), (missed, found)


#: CelebA-subset train photos whose face, 100 px wide, no cascade nor dlib HOG found in a 12 MP photo: a cap,
#: sunglasses (twice), hair across the face. CenterFace finds them
COVERED_FACES = (136, 153, 166, 374)


def test_covered_faces_100_px_wide_in_a_12_mp_photo_are_found(celeba_dir, bench):
    placements = [(n, 100, 500 + 750 * k, 1200 + 400 * (k % 2)) for k, n in enumerate(COVERED_FACES)]
    pasted, found = pasted_scene(celeba_dir, bench, 9, placements)
    missed = [face for face, _ in pasted if not near(found, face)]
    assert missed == [] and outside(found, pasted) == [], (missed, found)


@pytest.mark.parametrize("kind", ["gradient", "noise", "stripes"])
def test_no_face_in_a_12_mp_photo_without_faces(bench, kind):
    boxes, _ = detect(bench.jpeg(bench.background(kind, np.random.default_rng(11))))
    assert boxes == []


@pytest.mark.parametrize("seed", [100, 101])
def test_the_single_face_search_alone_puts_no_face_on_a_blotchy_12_mp_photo(bench, seed):
    """On these backgrounds the single-face chain finds one face-like blotch and the group search none; the
    chain's box is kept only if a close-up confirms it (unconfirmed, it was a false face on 5 of 6 seeds)."""
    boxes, _ = detect(bench.jpeg(bench.background("texture", np.random.default_rng(seed))))
    assert boxes == []


def test_one_face_photos_up_to_1200_px_are_detected_as_before(celeba_dir):
    """Up to GROUP_SEARCH_MIN_SIDE the one-face search's box stands as it is: a portrait (PORTRAIT_FACE)."""
    photo = Image.open(celeba_dir / "img/0.jpg").convert("L")
    big = photo.resize((photo.width * 5, photo.height * 5))  # 890 x 1090
    assert faces.detect_faces(big) == faces._chain(np.asarray(big))


def test_four_large_faces_in_a_12_mp_collage_are_all_found(celeba_dir):
    """Faces of about 1,000 px in a large photo with more than one face: the chain alone found two of the four."""
    photos = [Image.open(celeba_dir / f"img/{n}.jpg").convert("RGB") for n in (0, 1, 4, 5)]
    w, h = photos[0].size
    collage = Image.new("RGB", (2 * w, 2 * h))
    for k, photo in enumerate(photos):
        collage.paste(photo.resize((w, h)), ((k % 2) * w, (k // 2) * h))
    collage = collage.resize((4032, 3024), Image.BICUBIC)
    buffer = io.BytesIO()
    collage.save(buffer, "JPEG", quality=92)
    boxes, factor = detect(buffer.getvalue())
    centres = sorted((int((b.x + b.w / 2) * factor // 2016), int((b.y + b.h / 2) * factor // 1512)) for b in boxes)
    assert centres == [(0, 0), (0, 1), (1, 0), (1, 1)], boxes  # one face in each quarter


#: CelebA-subset train photos where the one-face search's cascade also boxes a neck, lettering or background
SECOND_BOX_PHOTOS = (374, 550, 924, 1155, 2194)


def test_the_one_face_search_keeps_only_confirmed_second_boxes(celeba_dir):
    """Its largest box stands; any other must be confirmed on a close-up, as in the group search."""
    for n in SECOND_BOX_PHOTOS:
        photo = Image.open(celeba_dir / f"img/{n}.jpg").convert("L")
        assert len(faces._chain(np.asarray(photo))) == 2, n  # what the cascade proposes
        assert len(faces.detect_faces(photo)) == 1, n


def test_faces_of_40_to_100_px_in_a_1200_px_photo_are_found(celeba_dir, bench):
    """A group photo as phones share it: faces below the one-face search's reach on its 640 px copy."""
    rng = np.random.default_rng(13)
    canvas = bench.background("texture", rng, (1200, 900))
    truth = []
    for k, (n, width) in enumerate(((0, 40), (1, 60), (4, 100), (7, 40), (8, 60), (9, 100), (12, 40), (13, 60))):
        photo = Image.open(celeba_dir / f"img/{n}.jpg").convert("RGB")
        cx, cy = 150 + (k % 4) * 300, 250 + (k // 4) * 400
        truth.append(bench.paste(canvas, {"photo": photo, "box": faces.detect_faces(photo)[0]}, width, cx, cy)[0])
    boxes, factor = detect(bench.jpeg(canvas))
    found = [b.scaled(factor) for b in boxes]
    missed = [face for face in truth if not near(found, face)]
    assert missed == [] and len(found) == len(truth), (missed, found)


@pytest.mark.parametrize("degrees", [0, 10, 15])
def test_a_small_face_is_cut_from_the_detail_copy_exactly_as_from_the_whole_photo(celeba_dir, degrees):
    """Small faces in large photos are cut from a region of the full-size copy: it must hold everything the crop
    and the eye finder read, level or tilted, or the crop differs from the one the photo itself gives."""
    for n in (1, 4, 9):
        photo = Image.open(celeba_dir / f"img/{n}.jpg").convert("L")
        face = photo.resize((photo.width // 2, photo.height // 2)).rotate(degrees, resample=Image.BICUBIC, expand=True, fillcolor=120)
        canvas = Image.new("L", (2400, 1800), 120)
        canvas.paste(face, (1000, 700))
        reduced = canvas.resize((640, 480), Image.BILINEAR)
        box = max(faces.detect_faces(reduced, np.asarray(canvas), canvas.width), key=lambda b: b.w)
        assert box.w * faces.CROP_SCALE * faces.CONTEXT < 64 * faces.CONTEXT, "small enough to be cut from the detail copy"
        via_region = faces.face_crop(reduced, np.asarray(canvas), box, 64)
        whole = faces.model_crop(canvas, box.scaled(canvas.width / reduced.width), 64)
        assert np.array_equal(np.asarray(via_region), np.asarray(whole)), (n, degrees)
