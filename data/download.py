"""Fetch the public face datasets SmileKit trains on, into this folder (needs internet).

    python data/download.py smilesmiled            # SMILEsmileD from its public repository
    python data/download.py celeba-subset --from data/celeba   # a balanced 5,000-photo subset of official CelebA
    python data/download.py mtfl --from data/MTFL               # face crops of MTFL's web photos (unzipped MTFL.zip)
    python data/download.py fer2013 --from data/fer2013.csv     # FER2013's challenge CSV as images + labels.csv

Official CelebA cannot be fetched by script (its files sit behind Google Drive /
Baidu pages): download ``img_align_celeba.zip``, ``list_attr_celeba.txt`` and
``list_eval_partition.txt`` from https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html
into ``data/celeba/`` and unzip the images there. SmileKit reads that layout as the
``celeba`` dataset directly.

MTFL (Zhang et al., ECCV 2014; research use): download ``MTFL.zip`` from
https://mmlab.ie.cuhk.edu.hk/projects/TCDCN.html and unzip it; its ``training.txt``
and ``testing.txt`` give five landmarks and gender / smile / glasses / pose for
each photo. Only the web photos (``net_7876``) are used: the LFW part overlaps
SMILEsmileD. FER2013 (Goodfellow et al., ICML 2013 challenge terms): download
``fer2013.csv`` from the Kaggle challenge "Challenges in Representation Learning:
Facial Expression Recognition" (https://www.kaggle.com/c/challenges-in-representation-learning-facial-expression-recognition-challenge/data).

Splits are made by a fixed hash, so the same files always land in the same split.
SMILEsmileD is split by blocks of 100 file numbers (neighbouring numbers are often
the same person in LFW order), which keeps most identities on one side.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import random
import re
import shutil
import urllib.request
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SMILESMILED_ZIP = "https://github.com/hromi/SMILEsmileD/archive/refs/heads/master.zip"


def split_of(key: str, val: float = 0.15, test: float = 0.10) -> str:
    """train / val / test from a stable hash of ``key``."""
    bucket = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "test" if bucket < test else "val" if bucket < test + val else "train"


def smilesmiled(out: Path) -> None:
    print(f"downloading {SMILESMILED_ZIP} ...")
    archive = zipfile.ZipFile(io.BytesIO(urllib.request.urlopen(SMILESMILED_ZIP).read()))
    rows = []
    for name in archive.namelist():
        match = re.search(r"SMILEs/(positives|negatives)/\w+/(\d+)\.jpg$", name)
        if not match:
            continue
        kind, number = match.groups()
        target = out / kind / f"{number}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(archive.read(name))
        rows.append((f"{kind}/{number}.jpg", int(kind == "positives"), split_of(f"block{int(number) // 100}")))
    _write_split(out, ["path", "smiling", "split"], sorted(rows, key=lambda r: int(Path(r[0]).stem)))


def celeba_subset(source: Path, out: Path, size: int = 5000, seed: int = 0) -> None:
    """A balanced subset of official CelebA (half smiling), with the ``male`` column."""
    lines = (source / "list_attr_celeba.txt").read_text().split("\n")
    columns = lines[1].split()
    smile, male = columns.index("Smiling"), columns.index("Male")
    by_label = {0: [], 1: []}
    for line in lines[2:]:
        parts = line.split()
        if parts:
            by_label[int(parts[1 + smile] == "1")].append((parts[0], int(parts[1 + male] == "1")))
    rng = random.Random(seed)
    chosen = [(name, label, m) for label in (1, 0) for name, m in rng.sample(by_label[label], size // 2)]
    (out / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (name, label, m) in enumerate(chosen):
        shutil.copy(source / "img_align_celeba" / name, out / "img" / f"{i}.jpg")
        rows.append((f"img/{i}.jpg", label, split_of(f"celeba{i}", 0.1, 0.1), m))
    _write_split(out, ["path", "smiling", "split", "male"], rows)


MTFL_CROP = 80  # pixels of each face crop
MTFL_CROP_SIDE = 2.6  # crop side in eye-to-mouth distances around the landmarks' centre: the face with some context
MTFL_POSES = {1, 2, 3, 4, 5}  # left profile, left, frontal, right, right profile


def mtfl(source: Path, out: Path) -> None:
    """80x80 colour crops of MTFL's web photos with ``labels.csv`` (path,smiling,male,glasses,pose,split), split by photo."""
    from PIL import Image

    rows = []
    for listing in ("training.txt", "testing.txt"):
        for line in (source / listing).read_text().splitlines():
            parts = line.split()
            if len(parts) != 15 or not parts[0].replace("\\", "/").startswith("net_7876/"):
                continue
            name = parts[0].replace("\\", "/")
            xs, ys = [float(v) for v in parts[1:6]], [float(v) for v in parts[6:11]]
            gender, smile, glasses, pose = (int(v) for v in parts[11:15])
            eyes_y, mouth_y = (ys[0] + ys[1]) / 2, (ys[3] + ys[4]) / 2
            cx, cy = sum(xs) / 5, sum(ys) / 5
            half = MTFL_CROP_SIDE * max(mouth_y - eyes_y, abs(xs[1] - xs[0]), 1.0) / 2
            with Image.open(source / name) as photo:
                crop = photo.convert("RGB").crop((round(cx - half), round(cy - half), round(cx + half), round(cy + half)))
            target = out / name
            target.parent.mkdir(parents=True, exist_ok=True)
            crop.resize((MTFL_CROP, MTFL_CROP), Image.Resampling.LANCZOS).save(target, quality=95)
            photo_key = Path(name).stem.rsplit("_", 1)[0]  # faces of one photo stay in one split
            rows.append((name, int(smile == 1), int(gender == 1), int(glasses == 1), pose if pose in MTFL_POSES else 3,
                         split_of(f"mtfl{photo_key}", 0.15, 0.15)))
    _write_split(out, ["path", "smiling", "male", "glasses", "pose", "split"], rows, "labels.csv")


FER_EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")  # the CSV's emotion numbers 0-6
FER_SPLITS = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}


def fer2013(source_csv: Path, out: Path) -> None:
    """FER2013's CSV (emotion,pixels,Usage) as 48x48 images in ``{split}/{emotion}/`` and ``labels.csv``; smiling = happy.

    "disgust" is left out (few faces, and not a smile/no-smile question).
    """
    import numpy as np
    from PIL import Image

    rows = []
    with open(source_csv, newline="") as f:
        for i, record in enumerate(csv.DictReader(f)):
            emotion = FER_EMOTIONS[int(record["emotion"])]
            if emotion == "disgust":
                continue
            split = FER_SPLITS[record["Usage"]]
            path = f"{split}/{emotion}/{i}.png"
            (out / path).parent.mkdir(parents=True, exist_ok=True)
            pixels = np.array(record["pixels"].split(), dtype=np.uint8).reshape(48, 48)
            Image.fromarray(pixels, "L").save(out / path)
            rows.append((path, emotion, int(emotion == "happy"), split))
    _write_split(out, ["path", "emotion", "smiling", "split"], rows, "labels.csv")


def _write_split(out: Path, header, rows, file_name: str = "split.csv") -> None:
    with open(out / file_name, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    print(f"wrote {len(rows)} rows to {out / file_name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dataset", choices=["smilesmiled", "celeba-subset", "mtfl", "fer2013"])
    parser.add_argument("--from", dest="source", help="official CelebA folder (celeba-subset, default data/celeba), "
                        "unzipped MTFL folder (mtfl, default data/MTFL) or fer2013.csv (fer2013, default data/fer2013.csv)")
    parser.add_argument("--out", help="target folder (default data/<dataset>)")
    args = parser.parse_args()
    out = Path(args.out or HERE / args.dataset)
    out.mkdir(parents=True, exist_ok=True)
    builders = {"celeba-subset": (celeba_subset, "celeba"), "mtfl": (mtfl, "MTFL"), "fer2013": (fer2013, "fer2013.csv")}
    if args.dataset == "smilesmiled":
        smilesmiled(out)
    else:
        build, default_source = builders[args.dataset]
        source = Path(args.source or HERE / default_source)
        if not source.exists():
            raise SystemExit(f"{source} not found: download it first (see the top of data/download.py)")
        build(source, out)


if __name__ == "__main__":
    main()
