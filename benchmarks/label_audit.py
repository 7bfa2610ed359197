"""A blind second reading of test labels: how many of the model's "errors" are the label's?

Step 1 writes contact sheets of every test face the model gets wrong, shuffled
with as many faces it gets right, numbered, with neither label nor prediction
shown, plus a key (kept out of sight until step 2):

    python benchmarks/label_audit.py sheets --out outputs/audit [--dataset smilesmiled] [--size 192]

A person then writes one line per number into a text file: ``N 1`` (smiling),
``N 0`` (not smiling) or ``N ?`` (cannot tell). Step 2 compares:

    python benchmarks/label_audit.py score outputs/audit/key.json readings.txt
"""
from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from smilekit.learn import evaluate
from smilekit.predict import Predictor

CELL, COLUMNS, ROWS = 128, 8, 6


def write_sheets(out: Path, dataset: str, size: int, data_root=None, seed: int = 0) -> Path:
    face_set = evaluate.load_sets(data_root, (dataset,))[dataset]
    predictor = Predictor()
    predicted = (predictor.predict_proba(list(evaluate.model_crops(face_set.crops))) >= 0.5).astype(int)
    rng = np.random.default_rng(seed)
    wrong = np.flatnonzero(predicted != face_set.labels)
    right = rng.choice(np.flatnonzero(predicted == face_set.labels), max(0, size - len(wrong)), replace=False)
    items = rng.permutation(np.concatenate([wrong, right]))
    out.mkdir(parents=True, exist_ok=True)
    per_page = COLUMNS * ROWS
    for page in range(0, len(items), per_page):
        sheet = Image.new("RGB", (COLUMNS * CELL, ROWS * (CELL + 16)), "white")
        draw = ImageDraw.Draw(sheet)
        for k in range(page, min(page + per_page, len(items))):
            x, y = (k - page) % COLUMNS * CELL, (k - page) // COLUMNS * (CELL + 16)
            sheet.paste(Image.open(face_set.samples[items[k]].path).convert("RGB").resize((CELL, CELL)), (x, y))
            draw.text((x + 2, y + CELL + 2), str(k), fill="black")
        sheet.save(out / f"sheet-{page // per_page}.png")
    key = {"dataset": dataset, "model_version": predictor.version, "test_size": len(face_set.labels),
           "model_errors": len(wrong), "items": [{"n": k, "path": str(face_set.samples[i].path.relative_to(face_set.samples[i].path.parents[1])),
                                                  "label": int(face_set.labels[i]), "predicted": int(predicted[i])} for k, i in enumerate(items)]}
    (out / "key.json").write_text(json.dumps(key, indent=1))
    return out / "key.json"


def score(key: dict, readings: dict[int, str]) -> Counter:
    """Counts of (the model was wrong?, what the reading sided with)."""
    counts = Counter()
    for item in key["items"]:
        reading, wrong = readings.get(item["n"], "?"), item["label"] != item["predicted"]
        if reading == "?":
            side = "cannot tell"
        elif int(reading) == item["label"]:
            side = "the label" + ("" if wrong else " and the model")
        else:
            side = "the model" if wrong else "neither"
        counts[("model wrong" if wrong else "model right", side)] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("sheets")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--dataset", default="smilesmiled")
    p.add_argument("--size", type=int, default=192, help="faces on the sheets: every model error, the rest drawn from the right ones")
    p.add_argument("--data", default=None)
    p = sub.add_parser("score")
    p.add_argument("key", type=Path)
    p.add_argument("readings", type=Path)
    args = parser.parse_args()
    if args.step == "sheets":
        print(f"sheets and key in {write_sheets(args.out, args.dataset, args.size, args.data).parent}")
        return
    key = json.loads(args.key.read_text())
    readings = {int(n): r for n, r in (line.split() for line in args.readings.read_text().splitlines() if line.strip())}
    print(f"{key['dataset']} test, model {key['model_version']}: {key['model_errors']} errors of {key['test_size']}; "
          f"{len(key['items'])} faces read blind")
    print("| faces | reading sides with | count |\n|---|---|---|")
    for (group, side), count in sorted(score(key, readings).items()):
        print(f"| {group} | {side} | {count} |")


if __name__ == "__main__":
    main()
