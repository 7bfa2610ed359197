"""What feedback buys: a collection the model never trained on, fed back as clicks, before and after retraining.

The shipped model was trained on SMILEsmileD and CelebA only, so MTFL (or FER2013) is a collection it has
never seen. Faces of that collection's train split are shown to the model as the app shows them (the whole
crop as one face, ``Predictor.predict(..., whole_image=True)``), and a click is written through
``FeedbackStore.record`` as a person who knows the true label would give it (Correct if the model was right,
else Incorrect), with the crop shared. Then ``smilekit.retrain.retrain`` (what ``smilekit retrain`` runs)
fine-tunes on those clicks with its defaults and applies the promotion rule; the benchmark scores the
collection's test split through the same app path before and after. ``--wrong 0.1`` adds runs where 10 % of
the clicks say the opposite (mistakes or abuse).

    .venv/bin/python benchmarks/bench_learning.py --data ../shared/data [--collection mtfl] [--clicks 250,500,1000,2000]
        [--wrong 0.1] [--epochs 3] [--limit N] [--out outputs/metrics/learning.json]

``--limit`` caps the images per split of the original training data and test splits (quick runs only).
Figures are from a 2-core machine shared with other work; each run fine-tunes from the same shipped model.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from smilekit import metrics, retrain  # noqa: E402
from smilekit.data import select  # noqa: E402
from smilekit.feedback import FeedbackStore  # noqa: E402
from smilekit.predict import Predictor  # noqa: E402
from smilekit.runtime import SHIPPED_MODEL  # noqa: E402

LABEL_FILES = {"mtfl": "labels.csv", "fer2013": "labels.csv"}


def read_collection(root: Path, name: str) -> dict[str, list[tuple[Path, int]]]:
    """{split: [(image path, smiling)]} of a held-out collection."""
    folder = root / name
    splits: dict[str, list[tuple[Path, int]]] = {}
    with open(folder / LABEL_FILES[name], newline="") as f:
        for row in csv.DictReader(f):
            splits.setdefault(row["split"], []).append((folder / row["path"], int(row["smiling"])))
    return splits


def score(predictor: Predictor, faces: list[tuple[Path, int]]) -> tuple[np.ndarray, list]:
    """Probabilities and shown crops of ``faces``, each image classified whole as the app does for a face crop."""
    probs, crops = [], []
    for path, _ in faces:
        face = predictor.predict(path, whole_image=True).faces[0]
        probs.append(face.probability)
        crops.append(face.crop)
    return np.array(probs), crops


def write_clicks(url: str, faces, probs, crops, threshold: float, version: str, wrong: float, seed: int) -> int:
    """One consented click per face (Correct / Incorrect from its true label, ``wrong`` of them flipped)."""
    rng = np.random.default_rng(seed)
    flipped = rng.random(len(faces)) < wrong
    store = FeedbackStore(url)
    for i, ((_, label), p, crop) in enumerate(zip(faces, probs, crops)):
        png = io.BytesIO()
        crop.save(png, format="PNG")
        right = (p >= threshold) == bool(label)
        store.record(session_id=f"bench{i // 50}", photo_sha256=f"{i:064x}", face_index=0, box=(0, 0, 64, 64),
                     probability=float(p), threshold=threshold, model_version=version,
                     correct=right != bool(flipped[i]), crop_png=png.getvalue())
    store.close()
    return int(flipped.sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--collection", choices=sorted(LABEL_FILES), default="mtfl")
    parser.add_argument("--model", type=Path, default=SHIPPED_MODEL)
    parser.add_argument("--clicks", default="250,500,1000,2000")
    parser.add_argument("--wrong", type=float, default=0.1, help="share of wrong clicks in the extra runs (0: none)")
    parser.add_argument("--wrong-clicks", default="1000,2000", help="click counts also run with --wrong")
    parser.add_argument("--epochs", type=int, default=retrain.RetrainConfig.epochs)
    parser.add_argument("--limit", type=int, help="images per split of the original data (quick runs)")
    parser.add_argument("--test-limit", type=int, help="test faces of the collection (quick runs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "metrics" / "learning.json")
    args = parser.parse_args()

    splits = read_collection(args.data, args.collection)
    rng = np.random.default_rng(args.seed)
    pool = [splits["train"][i] for i in rng.permutation(len(splits["train"]))]
    test = select(splits["test"], None, args.test_limit)
    counts = [int(n) for n in args.clicks.split(",")]
    runs = [(n, 0.0) for n in counts]
    if args.wrong > 0:
        runs += [(int(n), args.wrong) for n in args.wrong_clicks.split(",") if int(n) in counts]
    base = Predictor(args.model)
    test_labels = np.array([label for _, label in test])
    before = metrics.accuracy(test_labels, score(base, test)[0], base.threshold)
    pool_probs, pool_crops = score(base, pool[: max(counts)])
    print(f"{args.collection} test split, {len(test)} faces: accuracy {before:.4f} with {args.model.name} (never trained on it)")
    results = []
    with tempfile.TemporaryDirectory(prefix="smilekit-learning-") as tmp:
        for n, wrong in runs:
            start = time.monotonic()
            url = f"sqlite:///{tmp}/clicks-{n}-{wrong}.db"
            flipped = write_clicks(url, pool[:n], pool_probs[:n], pool_crops[:n], base.threshold, base.version, wrong, args.seed)
            config = retrain.RetrainConfig(db_url=url, data_root=str(args.data), model=str(args.model), epochs=args.epochs,
                                           limit=args.limit, work_dir=str(Path(tmp) / f"work-{n}-{wrong}"))
            outcome = retrain.retrain(config, progress=False, say=lambda line: None)
            candidate = Predictor(outcome["candidate"])
            after = metrics.accuracy(test_labels, score(candidate, test)[0], candidate.threshold)
            row = {"clicks": n, "wrong_share": wrong, "wrong_clicks": flipped, "held_out_before": before, "held_out_after": after,
                   "gain_points": (after - before) * 100, "other_changes_points": {k: v * 100 for k, v in outcome["changes"].items()},
                   "rule_allows": outcome["reason"].startswith("promoted"), "minutes": (time.monotonic() - start) / 60}
            results.append(row)
            others = ", ".join(f"{k} {v:+.2f}" for k, v in row["other_changes_points"].items())
            print(f"{n:>5} clicks, {wrong:.0%} wrong: {args.collection} {before:.4f} -> {after:.4f} ({row['gain_points']:+.2f} points); "
                  f"others {others}; rule allows: {row['rule_allows']}; {row['minutes']:.1f} min", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"collection": args.collection, "model": str(args.model), "epochs": args.epochs, "limit": args.limit,
               "test_faces": len(test), "load_average": os.getloadavg(), "runs": results}
    args.out.write_text(json.dumps(payload, indent=2))
    print("written:", args.out)


if __name__ == "__main__":
    main()
