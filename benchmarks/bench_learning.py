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
(``--pool`` faces) whose probability is nearest the threshold. Then ``smilekit.learn.retrain.retrain`` (what
``smilekit retrain`` runs) fine-tunes on those clicks and applies the promotion rule; the benchmark scores the
collection's ``--split`` through the same app path before and after. ``--wrong 0.1`` adds runs where 10 % of
the clicks say the opposite (mistakes or abuse). Each run also reports what the calibration that ``retrain`` fits
on the clicks' verdicts (``smilekit.calibration``, no face pixels needed) does for the base model: on the
collection, and on the other collections' splits if the same calibration were applied there too (a deployment
whose photos mix collections). ``--calibrate-only`` skips fine-tuning (seconds a run). ``--mix-with smilesmiled``
adds such deployments: ``--mix-clicks`` clicks of which ``--mix-shares`` come from the collection and the rest from
the other set's train split, calibrated together, scored on both. Settings are chosen on ``--split val``,
reported on test.

    .venv/bin/python benchmarks/bench_learning.py --data ../shared/data [--base outputs/runs/smilenet-ecb088b1.pt]
        [--collection mtfl] [--split test] [--clicks 250,500,1000,2000] [--wrong 0.1] [--wrong-clicks 1000,2000]
        [--uncertain 500] [--pool 2000] [--feedback-share 0.2,0.5] [--epochs 3,6] [--lr 5e-4,2e-4]
        [--click-noise 0.1] [--threads 1] [--calibrate-only] [--mix-with smilesmiled] [--mix-shares 0.75,0.5,0.25]
        [--out outputs/metrics/learning.json]

``--click-noise`` is ``RetrainConfig.click_noise`` (clicks the base contradicts with confidence weigh less).
``--feedback-share``, ``--epochs`` and ``--lr`` take lists: every click run is repeated for each combination. ``--limit`` caps
the images per split of the original training data and test splits (quick runs only). Figures are from a
2-core machine shared with other work; each run fine-tunes from the same base.
"""
from __future__ import annotations

import argparse
import csv
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

from smilekit.learn import evaluate, metrics
from smilekit.learn import retrain  # noqa: E402
from smilekit.calibration import Calibration  # noqa: E402
from smilekit.learn.data import select  # noqa: E402
from smilekit.store.feedback import FeedbackStore  # noqa: E402
from smilekit.predict import Predictor  # noqa: E402
from smilekit.app import render  # noqa: E402

LABEL_FILES = {"mtfl": "labels.csv", "fer2013": "labels.csv", "smilesmiled": "split.csv"}  # face crops, path / smiling / split
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
        right = (p >= threshold) == bool(label)
        store.record(session_id=f"bench{i // 50}", photo_sha256=f"{i:064x}", face_index=0, box=(0, 0, 64, 64),
                     probability=float(p), threshold=threshold, model_version=version,
                     correct=right != bool(flipped[i]), crop_png=render.crop_png(crop))  # stored as the app stores it
    store.close()
    return np.array([label for _, label in faces]) != flipped


def pick_clicks(probs: np.ndarray, count: int, threshold: float, uncertain: bool) -> np.ndarray:
    """Indices of the pool faces to click: the first ``count`` (the pool is in random order), or the ``count`` nearest the threshold."""
    return np.argsort(np.abs(probs - threshold), kind="stable")[:count] if uncertain else np.arange(count)


def other_changes(data: Path, collection: str, split: str, limit, base: Path):
    """Functions giving {other dataset: change in accuracy points} on ``split``: for a candidate checkpoint, and for
    the base with a calibration applied."""
    sets = evaluate.load_sets(data, [d for d in retrain.available_test_sets(data) if d != collection], split, limit)
    base_eval = evaluate.evaluate(base, sets)
    before = evaluate.summaries(base_eval)

    def of_candidate(candidate):
        return {k: v * 100 for k, v in retrain.changes(before, evaluate.summaries(evaluate.evaluate(candidate, sets))).items()}

    def of_calibration(calibration: Calibration):
        return {name: (metrics.accuracy(e.labels, calibration.apply(e.probabilities), e.threshold) - before[name]["accuracy"]) * 100
                for name, e in base_eval.items()}
    return of_candidate, of_calibration


def as_calibration(fitted: dict) -> Calibration:
    """The calibration a ``retrain.calibrate`` result describes; no change if it refused one."""
    return Calibration(fitted["slope"], fitted["offset"]) if fitted["kept"] else Calibration()


def calibrated_on(url: str, base: Predictor) -> Calibration:
    """The calibration ``retrain`` fits on the verdicts in ``url`` (not stored)."""
    store = FeedbackStore(url)
    try:
        return as_calibration(retrain.calibrate(store, base.meta["version"], base.threshold, save=False))
    finally:
        store.close()


def mixed_runs(args, base: Predictor, pool, pool_probs, pool_crops, own: tuple, tmp: str) -> list[dict]:
    """Deployments whose clicks mix the collection with ``args.mix_with``: the calibration fitted on the mix, and
    the change in accuracy points on each set's scored split. ``own`` is (labels, base probabilities) of the collection's."""
    partner = read_collection(args.data, args.mix_with)
    order = np.random.default_rng(args.seed + 1).permutation(len(partner["train"]))
    other_pool = [partner["train"][i] for i in order[: args.mix_clicks]]
    other_probs, other_crops = score(base, other_pool)
    other_labels = np.array([label for _, label in partner[args.split]])
    other_scored, _ = score(base, partner[args.split])
    rows = []
    for share in numbers(args.mix_shares, float):
        mine = round(args.mix_clicks * share)
        theirs = args.mix_clicks - mine
        url = f"sqlite:///{tmp}/mix-{share}.db"
        write_clicks(url, pool[:mine] + other_pool[:theirs], np.concatenate([pool_probs[:mine], other_probs[:theirs]]),
                     pool_crops[:mine] + other_crops[:theirs], base.threshold, base.version, 0.0, args.seed)
        calibrated = calibrated_on(url, base)
        gains = {name: (metrics.accuracy(labels, calibrated.apply(probs), base.threshold) - metrics.accuracy(labels, probs, base.threshold)) * 100
                 for name, (labels, probs) in ((args.collection, own), (args.mix_with, (other_labels, other_scored)))}
        rows.append({"clicks": args.mix_clicks, "share_from_collection": share, "kept": calibrated != Calibration(),
                     "slope": calibrated.slope, "offset": calibrated.offset, "gain_points": gains})
        print(f"mixed deployment, {mine} {args.collection} + {theirs} {args.mix_with} clicks: calibrated, change in points "
              + ", ".join(f"{k} {v:+.2f}" for k, v in gains.items()), flush=True)
    return rows


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
    parser.add_argument("--calibrate-only", action="store_true", help="only the calibration (no fine-tuning): seconds a run")
    parser.add_argument("--mix-with", choices=sorted(LABEL_FILES), help="a face-crop set whose clicks join the collection's")
    parser.add_argument("--mix-clicks", type=int, default=1000)
    parser.add_argument("--mix-shares", default="0.75,0.5,0.25", help="shares of the mixed clicks from the collection")
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
    others_of_candidate, calibration_on_others = other_changes(args.data, args.collection, args.split, args.limit, args.base)
    others_on_val = others_of_candidate if args.split == "val" else None
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
                    config = retrain.RetrainConfig(db_url=url, data_root=str(args.data), model=str(args.base), datasets=datasets,
                                                   epochs=epochs, lr=lr, limit=args.limit, feedback_share=share, threads=args.threads,
                                                   distill=distill, click_noise=args.click_noise,
                                                   work_dir=str(Path(tmp) / f"work-{name}"), fine_tune=not args.calibrate_only)
                    outcome = retrain.retrain(config, progress=False, say=lambda line: None)
                    fitted = outcome["calibration"]
                    calibrated = as_calibration(fitted)
                    calibrated_acc = metrics.accuracy(labels, calibrated.apply(base_probs), base.threshold)
                    if outcome["candidate"]:
                        candidate = Predictor(outcome["candidate"])  # the app cuts the same crops whatever the model
                        after = metrics.accuracy(labels, candidate.predict_proba(scored_crops), candidate.threshold)
                        others = (others_on_val(outcome["candidate"]) if others_on_val
                                  else {k: v * 100 for k, v in outcome["changes"].items() if k != args.collection})
                    else:
                        after, others = before, {}
                    row = {"clicks": n, "wrong_share": wrong, "wrong_clicks": int((given != [l for _, l in clicked]).sum()),
                           "uncertain_first": uncertain, "feedback_share": share, "epochs": epochs, "lr": lr, "distill": distill,
                           "click_noise": args.click_noise,
                           "held_out_before": before,
                           "fine_tuned": bool(outcome["candidate"]),
                           "held_out_after": after, "gain_points": (after - before) * 100,
                           "calibration": {"kept": fitted["kept"], "slope": fitted["slope"], "offset": fitted["offset"],
                                           "verdicts": fitted["verdicts"], "left_out_sessions": len(fitted["left_out_sessions"]),
                                           "held_out": calibrated_acc, "gain_points": (calibrated_acc - before) * 100,
                                           "if_applied_to_others_points": calibration_on_others(calibrated)},
                           "other_changes_points": others, "others_split": "val" if others_on_val else "test",
                           "rule_allows": outcome["reason"].startswith("promoted"), "minutes": (time.monotonic() - start) / 60}
                    results.append(row)
                    args.out.write_text(json.dumps(dict(payload, load_average=os.getloadavg()), indent=2))  # after every run
                    listed = ", ".join(f"{k} {v:+.2f}" for k, v in others.items())
                    spill = ", ".join(f"{k} {v:+.2f}" for k, v in row["calibration"]["if_applied_to_others_points"].items())
                    tuned = (f"fine-tuned {before:.4f} -> {after:.4f} ({row['gain_points']:+.2f} points), others ({row['others_split']}) "
                             f"{listed}, rule allows: {row['rule_allows']}; " if row["fine_tuned"] else "")
                    print(f"share {share}, {epochs} epochs, lr {lr:g}, distill {distill:g}, click noise {args.click_noise:g}, {n:>5} "
                          f"{'uncertain' if uncertain else 'random'} clicks, {wrong:.0%} wrong: {args.collection} {tuned}calibrated "
                          f"{calibrated_acc:.4f} ({row['calibration']['gain_points']:+.2f} points, kept {fitted['kept']}; on others "
                          f"{spill}); {row['minutes']:.1f} min", flush=True)
        if args.mix_with:
            payload["mixed"] = mixed_runs(args, base, pool, pool_probs, pool_crops, (labels, base_probs), tmp)
            args.out.write_text(json.dumps(dict(payload, load_average=os.getloadavg()), indent=2))
    print("written:", args.out)


if __name__ == "__main__":
    main()
