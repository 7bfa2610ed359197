"""Benchmark the shipped model against a SeedCNN baseline (and any candidates) on every shared test split.

Prints, side by side: SMILEsmileD, MTFL and FER2013 test figures on their face
crops (cut as in training), CelebA-subset test figures through the full photo ->
face detection -> crop path (a photo with no face found counts as wrong), faces
found, accuracy with its 95 % interval, accuracy by CelebA's and MTFL's ``male``
group and by MTFL head pose (95 % intervals), calibration (expected calibration
error) per set, and CPU latency. The model is trained on balanced classes (it
assumes half the faces smile); each set's accuracy is also given with the
probabilities moved to the smiling share of that set's *train* split (Bayes'
rule on the odds, nothing taken from the test labels).

    python benchmarks/bench_model.py [--data ../shared/data] [--baseline outputs/runs/seedcnn.pt]
                                     [--compare NAME=checkpoint ...] [--json out.json]

Targets (issue): SMILEsmileD acc >= 0.94; MTFL acc >= 0.90; FER2013 balanced >= 0.90; CelebA acc >= 0.93 with faces found in
>= 99 % of photos; male / not-male gap <= 1.5 points; one face <= 5 ms (1 thread);
detect + classify of a 1-megapixel photo <= 150 ms.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

from smilekit.learn import data, evaluate, metrics
from smilekit.learn.evaluate import evaluate_photos
from smilekit.predict import Predictor
from smilekit.runtime import SHIPPED_MODEL, set_threads

ROOT = Path(__file__).resolve().parent.parent
CROP_SETS = ("smilesmiled", "mtfl", "fer2013")  # face crops: scored on the crops cut as in training
PHOTO_SET = "celeba-subset"  # photos: scored through the app's own path
POSES = {1: "left profile", 2: "left", 3: "frontal", 4: "right", 5: "right profile"}


def interval_text(interval) -> str:
    low, high = interval
    return f"{low:.3f}-{high:.3f}"


def with_groups(out: dict, labels, probs, samples) -> dict:
    """Add accuracy's 95 % interval and accuracy by ``male`` and by head pose where the samples have them."""
    out["accuracy_interval"] = interval_text(metrics.proportion_interval(int(metrics.correct(labels, probs).sum()), len(labels)))
    for attribute, names in (("male", {1: "male", 0: "not male"}), ("pose", POSES)):
        values = np.array([getattr(s, attribute) for s in samples], dtype=object)
        if len(values) and not any(v is None for v in values):
            for group, figures in metrics.per_group_accuracy(labels, probs, values.astype(int)).items():
                out[f"{attribute} {names[group]}"] = f"{figures['accuracy']:.3f} ({interval_text(figures['interval'])}, n={figures['n']})"
    return out


def score_crops(checkpoint: str, face_sets: dict, priors: dict) -> dict:
    """Figures on the crop test sets for one checkpoint."""
    results = {}
    for name, evaluation in evaluate.evaluate(checkpoint, face_sets).items():
        probs = evaluation.probabilities
        out = evaluation.summary()
        out["ece"] = metrics.reliability(evaluation.labels, probs)["ece"]
        out["accuracy_at_prior"] = metrics.accuracy(evaluation.labels, metrics.at_prior(probs, priors[name]))
        results[name] = with_groups(out, evaluation.labels, probs, face_sets[name].samples)
    return results


def score_photos(predictor: Predictor, samples, prior: float) -> dict:
    """Figures on labelled photos through the app's path, with the male gap and the intervals."""
    out = evaluate_photos(predictor, samples, progress=True, prior=prior)
    out["accuracy_interval"] = interval_text(metrics.proportion_interval(round(out["accuracy"] * out["n"]), out["n"]))
    if "accuracy_by_male" in out:
        for group, name in ((1, "male"), (0, "not male")):
            accuracy, interval = out["accuracy_by_male"][group], out["accuracy_by_male_interval"][group]
            out[f"male {name}"] = f"{accuracy:.3f} ({interval_text(interval)})"
        out["male_gap_points"] = abs(out["accuracy_by_male"][1] - out["accuracy_by_male"][0]) * 100
        low, high = out["male_gap_interval"]
        out["male_gap_interval_points"] = f"{low * 100:+.1f} to {high * 100:+.1f}"
    return out


def _median_ms(action, repeat: int) -> float:
    action()  # warm up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def latency(predictor: Predictor, photo: Image.Image) -> dict:
    """Median CPU times: one face with 1 thread (as each app kernel runs) and 2 threads (the CLI), and a 1 MP photo."""
    crop = predictor.predict(photo).faces[0].crop
    out = {"runtime": predictor.runtime}
    for threads in (1, 2):
        set_threads(threads)
        out[f"classify_one_face_ms_{threads}t"] = _median_ms(lambda: predictor.predict_proba([crop]), 100)
    set_threads(1)
    out["detect_classify_1mp_ms"] = _median_ms(lambda: predictor.predict(photo), 20)
    set_threads(2)
    return out


def one_megapixel_photo(celeba: Path) -> Image.Image:
    """A real face photo enlarged to 1155 x 866 (1.0 MP) on a plain background."""
    face = Image.open(celeba / "img/0.jpg").convert("RGB").resize((356, 436))
    photo = Image.new("RGB", (1155, 866), (120, 130, 125))
    photo.paste(face, (400, 200))
    return photo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--model", default=str(SHIPPED_MODEL))
    parser.add_argument("--baseline", default=str(ROOT / "outputs" / "runs" / "seedcnn.pt"))
    parser.add_argument("--compare", nargs="*", default=[], metavar="NAME=CHECKPOINT", help="more models to compare")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()

    root = data.data_root(args.data)
    loaded = {name: data.load_dataset(name, root) for name in (*CROP_SETS, PHOTO_SET)}
    priors = {name: statistics.fmean(s.smiling for s in data.select(samples, "train")) for name, samples in loaded.items()}
    face_sets = evaluate.load_sets(root, CROP_SETS, "test", progress=True)
    photos = data.select(loaded[PHOTO_SET], "test")
    models = {"shipped": args.model}
    if Path(args.baseline).is_file():
        models["SeedCNN (same data)"] = args.baseline
    else:
        print(f"(no baseline at {args.baseline}: train one with `smilekit train --arch seedcnn --out {args.baseline}`)")
    models.update(item.split("=", 1) for item in args.compare)
    photo = one_megapixel_photo(root / PHOTO_SET)
    results = {}
    for name, path in models.items():
        predictor = Predictor(path)
        results[name] = {"version": predictor.version, **score_crops(path, face_sets, priors),
                         PHOTO_SET: score_photos(predictor, photos, priors[PHOTO_SET]), "latency": latency(predictor, photo)}
    print_table(results)
    print("\ntest sets: " + ", ".join(f"{n} n={len(s.labels)}" for n, s in face_sets.items()) + f", {PHOTO_SET} n={len(photos)} photos; "
          "versions: " + ", ".join(f"{n}={r['version']} ({r['latency']['runtime']})" for n, r in results.items()))
    print("smiling share of the train splits: " + ", ".join(f"{k} {v:.3f}" for k, v in priors.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=float))


SET_TITLES = {"smilesmiled": "SMILEsmileD", "mtfl": "MTFL", "fer2013": "FER2013", PHOTO_SET: "CelebA (photo path)"}


def group_label(key: str) -> str:
    """'male not male' -> 'not male', 'pose left' -> 'pose: left'."""
    attribute, name = key.split(" ", 1)
    return name if attribute == "male" else f"{attribute}: {name}"


def print_table(results: dict) -> None:
    names = list(results)
    rows = []
    for dataset, title in SET_TITLES.items():
        rows += [(f"{title} test accuracy", dataset, "accuracy"), (f"{title} accuracy, 95 % interval", dataset, "accuracy_interval"),
                 (f"{title} balanced accuracy", dataset, "balanced_accuracy"), (f"{title} ROC AUC", dataset, "roc_auc"),
                 (f"{title} ECE (calibration)", dataset, "ece"), (f"{title} accuracy at its train split's smiling share", dataset, "accuracy_at_prior")]
        keys = dict.fromkeys(k for r in results.values() for k in r.get(dataset, {}) if k.startswith(("male ", "pose ")))
        rows += [(f"{title} accuracy, {group_label(key)}", dataset, key) for key in keys]
    rows += [("CelebA faces found (>= 0.99)", PHOTO_SET, "faces_found"),
             ("CelebA male gap, points (<= 1.5)", PHOTO_SET, "male_gap_points"),
             ("CelebA male minus not male, 95 % interval, points", PHOTO_SET, "male_gap_interval_points"),
             ("one face classify, 1 thread, ms (<= 5)", "latency", "classify_one_face_ms_1t"),
             ("one face classify, 2 threads, ms", "latency", "classify_one_face_ms_2t"),
             ("detect + classify 1 MP photo, ms (<= 150)", "latency", "detect_classify_1mp_ms")]
    print("\n| measure | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for label, group, key in rows:
        print(f"| {label} | " + " | ".join(_cell(results[n].get(group, {}).get(key, "-"), key) for n in names) + " |")


def _cell(value, key: str) -> str:
    if isinstance(value, str):
        return value
    return f"{value:.2f}" if key.endswith(("_ms", "_1t", "_2t", "points")) else f"{value:.4f}"


if __name__ == "__main__":
    main()
