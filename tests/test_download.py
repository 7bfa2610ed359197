"""The dataset builders of data/download.py on tiny files laid out like the published ones (no internet)."""
import csv
import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

from smilekit.learn import data

spec = importlib.util.spec_from_file_location("download", Path(__file__).parent.parent / "data" / "download.py")
download = importlib.util.module_from_spec(spec)
spec.loader.exec_module(download)


def test_mtfl_web_photos_become_labelled_crops_split_by_photo(tmp_path):
    source, out = tmp_path / "MTFL", tmp_path / "mtfl"
    (source / "net_7876").mkdir(parents=True)
    (source / "lfw_5590").mkdir()
    rng = np.random.default_rng(0)
    for name in ("12_0_0.jpg", "12_0_1.jpg", "40_3_0.jpg"):
        Image.fromarray(rng.integers(0, 255, (250, 250, 3), dtype=np.uint8)).save(source / "net_7876" / name)
    # path, 5 x, 5 y (eyes, nose, mouth corners), gender (1 male), smile (1 yes), glasses (1 yes), pose (1-5)
    landmarks = "100 150 125 105 145 110 110 135 160 160"
    (source / "training.txt").write_text(f"net_7876\\12_0_0.jpg {landmarks} 1 1 2 3\nnet_7876\\12_0_1.jpg {landmarks} 2 2 1 5\n"
                                         f"lfw_5590\\Someone_0001.jpg {landmarks} 1 1 2 3\n")
    (source / "testing.txt").write_text(f"net_7876\\40_3_0.jpg {landmarks} 2 1 2 2\n")
    download.mtfl(source, out)
    samples = data.load_mtfl(out)
    assert [(s.path.name, s.smiling, s.male, s.pose) for s in samples] == [
        ("12_0_0.jpg", 1, 1, 3), ("12_0_1.jpg", 0, 0, 5), ("40_3_0.jpg", 1, 0, 2)]  # the LFW face is left out
    assert samples[0].split == samples[1].split  # two faces of one photo
    assert all(Image.open(s.path).size == (80, 80) for s in samples)
    rows = list(csv.DictReader(open(out / "labels.csv")))
    assert rows[1]["glasses"] == "1" and rows[0]["glasses"] == "0"


def test_fer2013_csv_becomes_images_with_happy_as_smiling(tmp_path):
    source = tmp_path / "fer2013.csv"
    pixels = " ".join(["128"] * 48 * 48)
    with open(source, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["emotion", "pixels", "Usage"])
        for emotion, usage in ((3, "Training"), (1, "Training"), (6, "PublicTest"), (3, "PrivateTest")):
            writer.writerow([emotion, pixels, usage])
    download.fer2013(source, tmp_path / "fer2013")
    samples = data.load_fer2013(tmp_path / "fer2013")
    assert [(s.split, s.smiling) for s in samples] == [("train", 1), ("val", 0), ("test", 1)]  # disgust left out
    assert "happy" in str(samples[0].path) and Image.open(samples[0].path).size == (48, 48)
