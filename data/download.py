"""Fetch the public face datasets SmileKit trains on, into this folder (needs internet).

    python data/download.py smilesmiled            # SMILEsmileD from its public repository
    python data/download.py celeba-subset --from data/celeba   # a balanced 5,000-photo subset of official CelebA

Official CelebA cannot be fetched by script (its files sit behind Google Drive /
Baidu pages): download ``img_align_celeba.zip``, ``list_attr_celeba.txt`` and
``list_eval_partition.txt`` from https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html
into ``data/celeba/`` and unzip the images there. SmileKit reads that layout as the
``celeba`` dataset directly.

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


def _write_split(out: Path, header, rows) -> None:
    with open(out / "split.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    print(f"wrote {len(rows)} rows to {out / 'split.csv'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dataset", choices=["smilesmiled", "celeba-subset"])
    parser.add_argument("--from", dest="source", default=str(HERE / "celeba"), help="official CelebA folder (celeba-subset)")
    parser.add_argument("--out", help="target folder (default data/<dataset>)")
    args = parser.parse_args()
    out = Path(args.out or HERE / args.dataset)
    out.mkdir(parents=True, exist_ok=True)
    if args.dataset == "smilesmiled":
        smilesmiled(out)
    else:
        celeba_subset(Path(args.source), out)


if __name__ == "__main__":
    main()
