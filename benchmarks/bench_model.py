"""Benchmark the shipped model against a SeedCNN baseline on the shared test splits.

Prints, side by side: SMILEsmileD test figures (face crops), CelebA-subset test
figures through the full photo -> face detection -> crop path (a photo with no
face found counts as wrong), faces found, accuracy by the ``male`` group with
a 95 % bootstrap interval of the gap, calibration (expected calibration error)
per set, and CPU latency. The model is trained on balanced classes (it assumes
half the faces smile); SMILEsmileD's test split is 29 % smiling, so its accuracy
is also given with the probabilities moved to the smiling share of the set's
*train* split (Bayes' rule on the odds, nothing taken from the test labels).

    python benchmarks/bench_model.py [--data ../shared/data] [--baseline outputs/runs/seedcnn.pt] [--json out.json]

Targets (issue): SMILEsmileD acc >= 0.94; CelebA acc >= 0.93 with faces found in
>= 99 % of photos; male / not-male gap <= 1.5 points; one face <= 2 ms;
detect + classify of a 1-megapixel photo <= 150 ms.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from PIL import Image

from smilekit import data
from smilekit.evaluate import evaluate_photos
from smilekit.predict import Predictor
from smilekit.runtime import SHIPPED_MODEL, set_threads

ROOT = Path(__file__).resolve().parent.parent


def score(predictor: Predictor, samples, prior: float) -> dict:
    out = evaluate_photos(predictor, samples, progress=True, prior=prior)
    if "accuracy_by_male" in out:
        out["acc_male"], out["acc_not_male"] = out["accuracy_by_male"][1], out["accuracy_by_male"][0]
        out["male_gap_points"] = abs(out["acc_male"] - out["acc_not_male"]) * 100
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
        out[f"classify_one_face_ms_{threads}t"] = _median_ms(lambda: predictor.predict_proba([crop]), 300)
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
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()

    root = data.data_root(args.data)
    loaded = {name: data.load_dataset(name, root) for name in ("smilesmiled", "celeba-subset")}
    test_sets = {name: data.select(samples, "test") for name, samples in loaded.items()}
    train_priors = {name: statistics.fmean(s.smiling for s in data.select(samples, "train")) for name, samples in loaded.items()}
    models = {"SmileNet (shipped)": args.model}
    if Path(args.baseline).is_file():
        models["SeedCNN (same data)"] = args.baseline
    else:
        print(f"(no baseline at {args.baseline}: train one with `smilekit train --arch seedcnn --out {args.baseline}`)")
    photo = one_megapixel_photo(root / "celeba-subset")
    results = {}
    for name, path in models.items():
        predictor = Predictor(path)
        results[name] = {"version": predictor.version}
        for set_name, samples in test_sets.items():
            results[name][set_name] = score(predictor, samples, train_priors[set_name])
        results[name]["latency"] = latency(predictor, photo)

    rows = [("SMILEsmileD test accuracy (>= 0.94)", "smilesmiled", "accuracy"),
            ("SMILEsmileD test balanced accuracy", "smilesmiled", "balanced_accuracy"),
            ("SMILEsmileD test accuracy at its train split's smiling share", "smilesmiled", "accuracy_at_prior"),
            ("SMILEsmileD test ROC AUC", "smilesmiled", "roc_auc"),
            ("SMILEsmileD ECE (calibration)", "smilesmiled", "ece"),
            ("CelebA test accuracy, full path (>= 0.93)", "celeba-subset", "accuracy"),
            ("CelebA test balanced accuracy", "celeba-subset", "balanced_accuracy"),
            ("CelebA test ROC AUC", "celeba-subset", "roc_auc"),
            ("CelebA ECE (calibration)", "celeba-subset", "ece"),
            ("CelebA faces found (>= 0.99)", "celeba-subset", "faces_found"),
            ("CelebA accuracy, male", "celeba-subset", "acc_male"),
            ("CelebA accuracy, not male", "celeba-subset", "acc_not_male"),
            ("CelebA male gap, points (<= 1.5)", "celeba-subset", "male_gap_points"),
            ("CelebA male minus not male, 95 % interval, points", "celeba-subset", "male_gap_interval_points"),
            ("one face classify, 1 thread, ms (<= 2)", "latency", "classify_one_face_ms_1t"),
            ("one face classify, 2 threads, ms (<= 2)", "latency", "classify_one_face_ms_2t"),
            ("detect + classify 1 MP photo, ms (<= 150)", "latency", "detect_classify_1mp_ms")]
    names = list(results)
    print("\n| measure | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for label, group, key in rows:
        print(f"| {label} | " + " | ".join(_cell(results[n][group][key], key) for n in names) + " |")
    print(f"\ntest sets: SMILEsmileD n={len(test_sets['smilesmiled'])}, CelebA subset n={len(test_sets['celeba-subset'])}; "
          f"versions: " + ", ".join(f"{n}={results[n]['version']} ({results[n]['latency']['runtime']})" for n in names))
    print("smiling share of the train splits: " + ", ".join(f"{k} {v:.3f}" for k, v in train_priors.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


def _cell(value, key: str) -> str:
    if isinstance(value, str):
        return value
    return f"{value:.2f}" if key.endswith(("_ms", "_1t", "_2t", "points")) else f"{value:.4f}"


if __name__ == "__main__":
    main()
