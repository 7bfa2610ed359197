"""Labelled face data: SMILEsmileD, the CelebA subset, official CelebA, MTFL, FER2013 and plain folders.

Every loader returns a list of :class:`Sample`. :func:`face_crops` turns samples
into the model's greyscale crops, cut exactly as the app cuts them, and caches
the result on disk.
"""
from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..vision import faces
from .. import settings
from ..vision.faces import CONTEXT  # crops are cached with this much context around the model crop, for augmentation
from ..runtime import INPUT_SIZE, grey

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
CONTEXT_SIZE = int(round(INPUT_SIZE * CONTEXT))


@dataclass(frozen=True)
class Sample:
    path: Path
    smiling: int  # 1 smiling, 0 not
    split: str  # train / val / test / all
    dataset: str
    is_crop: bool  # the image is already a tight face crop
    male: int | None = None
    pose: int | None = None  # MTFL head pose: 1-5 = left profile, left, frontal, right, right profile


def data_root(root=None) -> Path:
    """The data folder: ``root`` if given, else ``$SMILEKIT_DATA``, else ``data/`` in the project."""
    path = Path(root).expanduser() if root else settings.data_root()
    if not path.is_dir():
        raise FileNotFoundError(f"Data folder {path} does not exist: pass a data root or set SMILEKIT_DATA (see data/README.md)")
    return path


def _read_split_csv(folder: Path, dataset: str, is_crop: bool, file_name: str = "split.csv") -> list[Sample]:
    csv_path = folder / file_name
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path} not found: is {folder} a {dataset} folder? (see data/README.md)")
    number = lambda row, column: int(row[column]) if row.get(column) not in (None, "") else None
    with open(csv_path, newline="") as f:
        return [Sample(folder / row["path"], int(row["smiling"]), row["split"], dataset, is_crop, number(row, "male"), number(row, "pose"))
                for row in csv.DictReader(f)]


def load_smilesmiled(folder) -> list[Sample]:
    """SMILEsmileD: ``split.csv`` (path,smiling,split) over ``positives/`` and ``negatives/`` 64x64 crops."""
    return _read_split_csv(Path(folder), "smilesmiled", is_crop=True)


def load_celeba_subset(folder) -> list[Sample]:
    """The CelebA subset: ``split.csv`` (path,smiling,split,male) over aligned 178x218 photos."""
    return _read_split_csv(Path(folder), "celeba-subset", is_crop=False)


def load_mtfl(folder) -> list[Sample]:
    """MTFL web photos: ``labels.csv`` (path,smiling,male,glasses,pose,split) over 80x80 colour crops with context."""
    return _read_split_csv(Path(folder), "mtfl", is_crop=True, file_name="labels.csv")


def load_fer2013(folder) -> list[Sample]:
    """FER2013: ``labels.csv`` (path,emotion,smiling,split) over 48x48 grey crops; smiling = the "happy" label."""
    return _read_split_csv(Path(folder), "fer2013", is_crop=True, file_name="labels.csv")


def load_celeba(folder) -> list[Sample]:
    """Official CelebA: ``img_align_celeba/``, ``list_attr_celeba.txt``, ``list_eval_partition.txt``."""
    folder = Path(folder)
    splits = {}
    for line in (folder / "list_eval_partition.txt").read_text().split("\n"):
        if line.strip():
            name, part = line.split()
            splits[name] = ("train", "val", "test")[int(part)]
    lines = (folder / "list_attr_celeba.txt").read_text().split("\n")
    columns = lines[1].split()
    smile_col, male_col = columns.index("Smiling"), columns.index("Male")
    samples = []
    for line in lines[2:]:
        parts = line.split()
        if not parts:
            continue
        values = parts[1:]
        samples.append(Sample(folder / "img_align_celeba" / parts[0], int(values[smile_col] == "1"),
                              splits.get(parts[0], "train"), "celeba", False, int(values[male_col] == "1")))
    return samples


def load_folder(folder, is_crop: bool = False) -> list[Sample]:
    """A plain folder with ``smiling/`` and ``not_smiling/`` subfolders of images (split 'all')."""
    folder = Path(folder)
    samples = []
    for label, sub in ((1, "smiling"), (0, "not_smiling")):
        if not (folder / sub).is_dir():
            raise FileNotFoundError(f"{folder / sub} not found: a folder dataset needs smiling/ and not_smiling/ subfolders")
        samples += [Sample(p, label, "all", "folder", is_crop) for p in sorted((folder / sub).rglob("*"))
                    if p.suffix.lower() in IMAGE_SUFFIXES]
    return samples


#: datasets known by name, each read from the folder of that name under the data root
LOADERS = {"smilesmiled": load_smilesmiled, "celeba-subset": load_celeba_subset, "mtfl": load_mtfl,
           "fer2013": load_fer2013, "celeba": load_celeba}


def load_dataset(name: str, root=None) -> list[Sample]:
    """Load a dataset by name from its usual folder under the data root."""
    base = data_root(root)
    if name not in LOADERS:
        raise ValueError(f"Unknown dataset {name!r}; choose one of {sorted(LOADERS)} (or use load_folder)")
    return LOADERS[name](base / name)


def select(samples: list[Sample], split: str | None = None, limit: int | None = None) -> list[Sample]:
    """Samples of one split (None: all), at most ``limit`` of them, spread evenly over the list."""
    chosen = [s for s in samples if split is None or s.split == split]
    if limit is not None and limit < len(chosen):
        step = len(chosen) / limit
        chosen = [chosen[int(i * step)] for i in range(limit)]
    return chosen


#: where the landmarks sit in a dataset's crops when the detector finds no face (fractions of the crop side, in
#: ``faces.TEMPLATE``'s order): the median over 1,500 train crops of each set where YuNet found the face (found:
#: SMILEsmileD 99.9 %, MTFL 99.9 %, FER2013 91.9 %); other crop sets use ``faces.CROP_LANDMARKS`` (SMILEsmileD's)
CROP_LANDMARKS = {
    "mtfl": ((0.394, 0.389), (0.607, 0.389), (0.497, 0.506), (0.414, 0.606), (0.594, 0.606)),
    "fer2013": ((0.311, 0.389), (0.687, 0.389), (0.479, 0.592), (0.341, 0.748), (0.645, 0.748)),
}


def face_box(sample: Sample, image: Image.Image) -> tuple[faces.Box, bool]:
    """The face used for a labelled image and whether the detector found it (not a fallback).

    Crops use :func:`faces.face_in_crop` (the dataset's median landmarks where nothing is found); photos use
    the largest detected face, falling back to the whole picture (as the app offers) when none is found.
    """
    if sample.is_crop:
        face = faces.face_in_crop(image, CROP_LANDMARKS.get(sample.dataset, faces.CROP_LANDMARKS))
        return face, face.score > 0
    found = faces.detect_faces(image)
    if found:
        return max(found, key=lambda b: b.w), True
    return faces.whole_image_box(image), False


def _cache_key(samples: list[Sample], context: float) -> str:
    settings_used = (context, faces.TEMPLATE.tolist(), faces.SCORE_THRESHOLD, faces.NMS_IOU, faces.TILE, faces.OVERLAP,
                     faces.LEVEL_STEP, faces.CROP_SEARCH_SIDE, faces.CROP_SEARCH_PAD, faces.AREA_REDUCE_BELOW)
    digest = hashlib.sha256(f"v5 aligned {settings_used} colour".encode())
    for s in samples:
        geometry = f"|{CROP_LANDMARKS[s.dataset]}" if s.dataset in CROP_LANDMARKS else ""
        digest.update(f"{Path(s.path).resolve()}|{s.is_crop}{geometry}\n".encode())
    return digest.hexdigest()[:16]


def face_crops(samples: list[Sample], context: float = CONTEXT, cache_dir=None, progress: bool = True, colour: bool = False):
    """Face crops (N x S x S uint8 grey, or N x S x S x 3 RGB with ``colour``; S = 64 * context) and a
    found-by-detector flag per sample. Grey images come as grey in all three channels.

    The RGB crops are cached in ``cache_dir`` (default ``$SMILEKIT_CACHE`` or ``outputs/cache``); grey ones are
    made from them exactly as PIL's ``convert("L")`` would (:func:`smilekit.runtime.grey`).
    """
    size = int(round(INPUT_SIZE * context))
    cache_dir = Path(cache_dir) if cache_dir else settings.cache_dir()
    cache_file = cache_dir / f"crops-{_cache_key(samples, context)}.npz"
    if cache_file.is_file():
        cached = np.load(cache_file)
        crops, found = cached["crops"], cached["found"]
    else:
        crops = np.zeros((len(samples), size, size, 3), dtype=np.uint8)
        found = np.zeros(len(samples), dtype=bool)
        for i, sample in enumerate(tqdm(samples, desc="cutting faces", disable=not progress, mininterval=2)):
            image = Image.open(sample.path).convert("RGB")  # photos are searched in colour, as the app does
            box, found[i] = face_box(sample, image)
            crops[i] = np.asarray(faces.cut_face(image, box, size, context).convert("RGB"))
        cache_dir.mkdir(parents=True, exist_ok=True)
        np.savez(cache_file, crops=crops, found=found)
    return (crops if colour else grey(crops)), found
