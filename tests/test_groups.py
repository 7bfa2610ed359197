"""Group photos: every face of 40 to 200 px in a 12 MP photo is found, in the photo's own pixels, and none where
there is no face."""
import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import load_benchmark
from smilekit.vision import faces
from smilekit.predict import Predictor

#: CelebA-subset photos (train split: any detected face will do) and the width each face gets in the group photo
GROUP = ((0, 40), (1, 60), (4, 100), (5, 200), (7, 40), (8, 60), (9, 100), (10, 150), (12, 40), (13, 60), (14, 80), (15, 40))


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_groups")


@pytest.fixture(scope="module")
def predictor(model_path):
    return Predictor(model_path)


def near(found: list[faces.Box], face: tuple) -> list[faces.Box]:
    """The boxes centred within 0.4 face widths of a pasted face (x, y, width)."""
    x, y, width = face
    return [b for b in found if abs(b.x + b.w / 2 - x - width / 2) < 0.4 * width and abs(b.y + b.h / 2 - y - width / 2) < 0.4 * width]


def pasted_scene(celeba_dir, bench, seed: int, placements, size=(4000, 3000)) -> tuple[list[tuple], bytes]:
    """A gradient scene (``seed``) with the face of CelebA-subset photo n pasted ``width`` px wide, centred at
    (cx, cy), for each (n, width, cx, cy) of ``placements``: the pasted faces (x, y, width) and the JPEG."""
    canvas = bench.background("gradient", np.random.default_rng(seed), size)
    pasted = []
    for n, width, cx, cy in placements:
        photo = Image.open(celeba_dir / f"img/{n}.jpg").convert("RGB")
        pasted.append(bench.paste(canvas, {"photo": photo, "box": faces.detect_faces(photo)[0]}, width, cx, cy)[0])
    return pasted, bench.jpeg(canvas)


def test_every_face_of_40_to_200_px_in_a_12_mp_photo_is_found_in_its_pixels(celeba_dir, bench, predictor):
    # faces near tile edges and far apart
    placements = [(n, width, 400 + (k % 4) * 1000 + 7 * k, 500 + (k // 4) * 1000 - 5 * k) for k, (n, width) in enumerate(GROUP)]
    pasted, data = pasted_scene(celeba_dir, bench, 3, placements)
    result = predictor.predict(data)
    assert result.size == (4000, 3000) and result.image.width < 4000  # the boxes are not in the reduced copy's pixels
    found = [f.box for f in result.faces]
    for face in pasted:
        close = near(found, face)
        assert len(close) == 1 and 0.7 < close[0].w / face[2] < 1.4, (face, close)
        x, y, width = face
        assert all(x - width < px < x + 2 * width and y - width < py < y + 2 * width for px, py in close[0].points())
    assert len(found) == len(pasted)


def test_predict_json_gives_the_photo_size_and_boxes_in_its_pixels(celeba_dir, bench, model_path, tmp_path):
    """``smilekit predict --json`` on a 12 MP photo whose face positions are known."""
    placements = [(0, 120, 800, 700), (4, 60, 3100, 2400)]
    pasted, data = pasted_scene(celeba_dir, bench, 4, placements)
    path = tmp_path / "group.jpg"
    path.write_bytes(data)
    out = subprocess.run([sys.executable, "-m", "smilekit", "predict", str(path), "--json", "--model", str(model_path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout)
    assert (record["width"], record["height"]) == (4000, 3000)
    assert len(record["faces"]) == 2
    for face in pasted:
        close = near([faces.Box(*f["box"]) for f in record["faces"]], face)
        assert len(close) == 1, (face, record["faces"])
    assert all(len(f["landmarks"]) == 5 for f in record["faces"])


@pytest.mark.parametrize("kind", ["gradient", "noise", "stripes", "texture"])
def test_no_face_in_a_12_mp_photo_without_faces(bench, predictor, kind):
    assert predictor.predict(bench.jpeg(bench.background(kind, np.random.default_rng(11)))).faces == []


def test_four_large_faces_in_a_12_mp_collage_are_all_found(celeba_dir, predictor):
    """Faces of about 1,000 px in a large photo: found by the coarse pyramid levels, each once."""
    photos = [Image.open(celeba_dir / f"img/{n}.jpg").convert("RGB") for n in (0, 1, 4, 5)]
    w, h = photos[0].size
    collage = Image.new("RGB", (2 * w, 2 * h))
    for k, photo in enumerate(photos):
        collage.paste(photo.resize((w, h)), ((k % 2) * w, (k // 2) * h))
    collage = collage.resize((4032, 3024), Image.BICUBIC)
    buffer = io.BytesIO()
    collage.save(buffer, "JPEG", quality=92)
    boxes = [f.box for f in predictor.predict(buffer.getvalue()).faces]
    centres = sorted((int((b.x + b.w / 2) // 2016), int((b.y + b.h / 2) // 1512)) for b in boxes)
    assert centres == [(0, 0), (0, 1), (1, 0), (1, 1)], boxes  # one face in each quarter


def test_faces_of_40_to_100_px_in_a_1200_px_photo_are_found(celeba_dir, bench, predictor):
    """A group photo as phones share it: faces too small for the coarsest level's 640 px copy."""
    placements = [(n, width, 150 + (k % 4) * 300, 250 + (k // 4) * 400)
                  for k, (n, width) in enumerate(((0, 40), (1, 60), (4, 100), (7, 40), (8, 60), (9, 100), (12, 40), (13, 60)))]
    pasted, data = pasted_scene(celeba_dir, bench, 13, placements, size=(1200, 900))
    found = [f.box for f in predictor.predict(data).faces]
    missed = [face for face in pasted if not near(found, face)]
    assert missed == [] and len(found) == len(pasted), (missed, found)


def test_a_portrait_up_to_1200_px_is_searched_on_the_coarsest_level_alone(celeba_dir, monkeypatch):
    """Its one large face is found there; the finer levels (the cost of a group search) are skipped."""
    photo = Image.open(celeba_dir / "img/0.jpg").convert("RGB")
    big = np.asarray(photo.resize((photo.width * 5, photo.height * 5)))  # 890 x 1090
    tiles = []
    real = faces._tiled
    monkeypatch.setattr(faces, "_tiled", lambda level: tiles.append(level.shape) or real(level))
    assert len(faces.detect_faces(big)) == 1 and tiles == []
    assert len(faces.detect_faces(np.asarray(photo.resize((photo.width * 8, photo.height * 8))))) == 1  # 1,424 x 1,744
    assert tiles  # larger photos are searched whole
