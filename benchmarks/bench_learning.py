"""What feedback buys: a collection the base model never trained on, fed back as clicks, before and after retraining.

The base is a checkpoint that never saw the held-out collection: ``--base``, by default smilenet-ecb088b1, the
model shipped before smilenet-6e76f58c, trained on SMILEsmileD and CelebA only (the shipped model has seen MTFL
and FER2013). Extract it once with

    for f in pt onnx onnx.json; do git show 08c81ca:smilekit/weights/smilenet.$f > outputs/runs/smilenet-ecb088b1.$f; done

Fine-tuning mixes in the train splits of the datasets named in the base's metadata (``retrain.trained_datasets``),
never the held-out collection's. Faces of that collection's train split are shown to the model as the app shows
them (the whole crop as one face, ``Predictor.predict(..., whole_image=True)``), and a click is written through
``FeedbackStore.record`` as a person who knows the true label would give it (Correct if the model was right,
else Incorrect), with the crop shared. Clicks go on random faces, or (``--uncertain``) on the faces of the pool
(``--pool`` faces) whose probability is nearest the threshold. Then ``smilekit.retrain.retrain`` (what
``smilekit retrain`` runs) fine-tunes on those clicks and applies the promotion rule; the benchmark scores the
collection's ``--split`` through the same app path before and after. ``--wrong 0.1`` adds runs where 10 % of
the clicks say the opposite (mistakes or abuse). Each run also reports calibration alone: the base model with its
threshold refitted on the clicks (``metrics.best_threshold``), no retraining. Settings are chosen on ``--split val``,
reported on test.

    .venv/bin/python benchmarks/bench_learning.py --data ../shared/data [--base outputs/runs/smilenet-ecb088b1.pt]
        [--collection mtfl] [--split test] [--clicks 250,500,1000,2000] [--wrong 0.1] [--wrong-clicks 1000,2000]
        [--uncertain 500] [--pool 2000] [--feedback-share 0.2,0.5] [--epochs 3,6] [--lr 5e-4,2e-4]
        [--click-noise 0.1] [--threads 1] [--out outputs/metrics/learning.json]

``--click-noise`` is ``RetrainConfig.click_noise`` (clicks the base contradicts with confidence weigh less).
``--feedback-share``, ``--epochs`` and ``--lr`` take lists: every click run is repeated for each combination. ``--limit`` caps
the images per split of the original training data and test splits (quick runs only). Figures are from a
2-core machine shared with other work; each run fine-tunes from the same base.
"""
from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from smilekit import evaluate, metrics, retrain  # noqa: E402
from smilekit.data import select  # noqa: E402
from smilekit.feedback import FeedbackStore  # noqa: E402
from smilekit.predict import Predictor  # noqa: E402

LABEL_FILES = {"mtfl": "labels.csv", "fer2013": "labels.csv"}
#: the last model shipped before any trained on MTFL or FER2013 (see the docstring to extract it)
DEFAULT_BASE = ROOT / "outputs" / "runs" / "smilenet-ecb088b1.pt"


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


def write_clicks(url: str, faces, probs, crops, threshold: float, version: str, wrong: float, seed: int) -> np.ndarray:
    """One consented click per face (Correct / Incorrect from its true label, ``wrong`` of them flipped); returns the labels the clicks give."""
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
    return np.array([label for _, label in faces]) != flipped


def pick_clicks(probs: np.ndarray, count: int, threshold: float, uncertain: bool) -> np.ndarray:
    """Indices of the pool faces to click: the first ``count`` (the pool is in random order), or the ``count`` nearest the threshold."""
    return np.argsort(np.abs(probs - threshold), kind="stable")[:count] if uncertain else np.arange(count)


def other_changes(data: Path, collection: str, split: str, limit, base: Path):
    """A function giving, for a candidate checkpoint, {other dataset: change in accuracy points} on ``split``."""
    sets = evaluate.load_sets(data, [d for d in retrain.available_test_sets(data) if d != collection], split, limit)
    before = evaluate.summaries(evaluate.evaluate(base, sets))
    return lambda candidate: {k: v * 100 for k, v in retrain.changes(before, evaluate.summaries(evaluate.evaluate(candidate, sets))).items()}


def numbers(text: str, kind=int) -> list:
    """The comma-separated numbers of a command-line list (empty: none)."""
    return [kind(part) for part in text.split(",") if part]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--collection", choices=sorted(LABEL_FILES), default="mtfl")
    parser.add_argument("--base", type=Path, default=DEFAULT_BASE, help="a checkpoint never trained on the collection")
    parser.add_argument("--split", choices=("val", "test"), default="test", help="the collection's split scored (val to choose settings)")
    parser.add_argument("--clicks", default="250,500,1000,2000", help="click counts run on random faces, all clicks right")
    parser.add_argument("--pool", type=int, default=2000, help="train faces shown to the model, from which clicks are taken")
    parser.add_argument("--wrong", type=float, default=0.1, help="share of wrong clicks in the extra runs (0: none)")
    parser.add_argument("--wrong-clicks", default="1000,2000", help="click counts run with --wrong")
    parser.add_argument("--uncertain", default="500", help="click counts run on the faces nearest the threshold")
    parser.add_argument("--feedback-share", default=str(retrain.RetrainConfig.feedback_share))
    parser.add_argument("--epochs", default=str(retrain.RetrainConfig.epochs))
    parser.add_argument("--lr", default=str(retrain.RetrainConfig.lr))
    parser.add_argument("--distill", default=str(retrain.RetrainConfig.distill))
    parser.add_argument("--click-noise", type=float, default=retrain.RetrainConfig.click_noise, help="assumed share of wrong clicks")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--limit", type=int, help="images per split of the original data (quick runs)")
    parser.add_argument("--test-limit", type=int, help="faces of the collection's scored split (quick runs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "metrics" / "learning.json")
    args = parser.parse_args()

    datasets = retrain.trained_datasets(args.base)
    if args.collection in datasets:
        parser.error(f"{args.base} was trained on {args.collection} ({', '.join(datasets)}): pass a base that never saw it")
    splits = read_collection(args.data, args.collection)
    rng = np.random.default_rng(args.seed)
    pool = [splits["train"][i] for i in rng.permutation(len(splits["train"]))[: args.pool]]
    scored = select(splits[args.split], None, args.test_limit)
    runs = [(n, 0.0, False) for n in numbers(args.clicks)]
    runs += [(n, args.wrong, False) for n in numbers(args.wrong_clicks) if args.wrong > 0]
    runs += [(n, 0.0, True) for n in numbers(args.uncertain)]
    if max(n for n, _, _ in runs) > len(pool):
        parser.error(f"more clicks than the pool of {len(pool)} faces")
    base = Predictor(args.base)
    labels = np.array([label for _, label in scored])
    base_probs, scored_crops = score(base, scored)
    before = metrics.accuracy(labels, base_probs, base.threshold)
    pool_probs, pool_crops = score(base, pool)
    # settings are chosen on val: the other datasets' val splits too (the promotion rule reads their test splits)
    others_on_val = other_changes(args.data, args.collection, "val", args.limit, args.base) if args.split == "val" else None
    print(f"{args.collection} {args.split} split, {len(scored)} faces: accuracy {before:.4f} with {base.version} "
          f"(trained on {', '.join(datasets)})", flush=True)
    results = []
    payload = {"collection": args.collection, "split": args.split, "base": base.version, "base_datasets": list(datasets),
               "limit": args.limit, "scored_faces": len(scored), "runs": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="smilekit-learning-") as tmp:
        for share in numbers(args.feedback_share, float):
            for epochs, lr, distill in itertools.product(numbers(args.epochs), numbers(args.lr, float), numbers(args.distill, float)):
                for n, wrong, uncertain in runs:
                    start = time.monotonic()
                    name = f"{share}-{epochs}-{lr}-{distill}-{n}-{wrong}-{uncertain}"
                    url = f"sqlite:///{tmp}/clicks-{name}.db"
                    chosen = pick_clicks(pool_probs, n, base.threshold, uncertain)
                    clicked = [pool[i] for i in chosen]
                    given = write_clicks(url, clicked, pool_probs[chosen], [pool_crops[i] for i in chosen], base.threshold,
                                         base.version, wrong, args.seed)
                    refit = metrics.best_threshold(given, pool_probs[chosen])  # calibration alone: the base, its cut fitted on the clicks
                    config = retrain.RetrainConfig(db_url=url, data_root=str(args.data), model=str(args.base), datasets=datasets,
                                                   epochs=epochs, lr=lr, limit=args.limit, feedback_share=share, threads=args.threads,
                                                   distill=distill, click_noise=args.click_noise,
                                                   work_dir=str(Path(tmp) / f"work-{name}"))
                    outcome = retrain.retrain(config, progress=False, say=lambda line: None)
                    candidate = Predictor(outcome["candidate"])  # the app cuts the same crops whatever the model
                    after = metrics.accuracy(labels, candidate.predict_proba(scored_crops), candidate.threshold)
                    others = (others_on_val(outcome["candidate"]) if others_on_val
                              else {k: v * 100 for k, v in outcome["changes"].items() if k != args.collection})
                    row = {"clicks": n, "wrong_share": wrong, "wrong_clicks": int((given != [l for _, l in clicked]).sum()),
                           "uncertain_first": uncertain, "feedback_share": share, "epochs": epochs, "lr": lr, "distill": distill,
                           "click_noise": args.click_noise,
                           "held_out_before": before,
                           "held_out_after": after, "gain_points": (after - before) * 100,
                           "threshold_refit_only": {"threshold": refit, "held_out": metrics.accuracy(labels, base_probs, refit),
                                                    "gain_points": (metrics.accuracy(labels, base_probs, refit) - before) * 100},
                           "other_changes_points": others, "others_split": "val" if others_on_val else "test",
                           "rule_allows": outcome["reason"].startswith("promoted"), "minutes": (time.monotonic() - start) / 60}
                    results.append(row)
                    args.out.write_text(json.dumps(dict(payload, load_average=os.getloadavg()), indent=2))  # after every run
                    listed = ", ".join(f"{k} {v:+.2f}" for k, v in others.items())
                    print(f"share {share}, {epochs} epochs, lr {lr:g}, distill {distill:g}, click noise {args.click_noise:g}, {n:>5} {'uncertain' if uncertain else 'random'} clicks, {wrong:.0%} wrong: "
                          f"{args.collection} {before:.4f} -> {after:.4f} ({row['gain_points']:+.2f} points; threshold refit alone "
                          f"{row['threshold_refit_only']['gain_points']:+.2f}); others ({row['others_split']}) {listed}; "
                          f"rule allows: {row['rule_allows']}; {row['minutes']:.1f} min", flush=True)
    print("written:", args.out)


if __name__ == "__main__":
    main()
