"""How the shipped model holds up when photos look unlike the training data.

Each test photo of the shared data is changed the way another camera, light or
upload would change it (JPEG artefacts, a small face, dark or overexposed,
low contrast, a colour cast, a tilted head, blur, sensor noise) and goes through
the app's own path: CelebA photos through face detection (a photo with no face
found counts as wrong), SMILEsmileD crops classified whole. Prints, per change,
faces found, accuracy, balanced accuracy, ROC AUC and calibration error for the
shipped model and the SeedCNN baseline trained on the same data.

    python benchmarks/bench_robustness.py [--data ../shared/data] [--limit N] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from smilekit.learn import data
from smilekit.app import render
from smilekit.learn.evaluate import evaluate_photos
from smilekit.predict import Predictor
from smilekit.runtime import SHIPPED_MODEL

ROOT = Path(__file__).resolve().parent.parent


def _noise(image: Image.Image, sigma: float = 12.0) -> Image.Image:
    """Gaussian sensor noise, the same pattern for the same image size (seeded)."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    noisy = pixels + np.random.default_rng(0).normal(0, sigma, pixels.shape)
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))


def _jpeg(image: Image.Image, quality: int = 15) -> Image.Image:
    return Image.open(BytesIO(render._jpeg(image, quality))).convert("RGB")


def _colour_cast(image: Image.Image) -> Image.Image:
    """Warm indoor light: red up 20 %, blue down 35 %."""
    r, g, b = image.convert("RGB").split()
    return Image.merge("RGB", (r.point(lambda v: min(255, int(v * 1.2))), g, b.point(lambda v: int(v * 0.65))))


def _tilt(image: Image.Image, degrees: float = 15.0) -> Image.Image:
    return image.convert("RGB").rotate(degrees, resample=Image.BICUBIC, expand=True, fillcolor=(128, 128, 128))


def _small(image: Image.Image, scale: float = 0.4) -> Image.Image:
    """The photo at 40 % of its size: a CelebA face becomes about 40 pixels wide."""
    w, h = image.size
    return image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)


CHANGES = {
    "as taken": None,
    "JPEG quality 15": _jpeg,
    "small (40 % of the size)": _small,
    "dark (35 % brightness)": lambda im: ImageEnhance.Brightness(im).enhance(0.35),
    "overexposed (180 % brightness)": lambda im: ImageEnhance.Brightness(im).enhance(1.8),
    "low contrast (40 %)": lambda im: ImageEnhance.Contrast(im).enhance(0.4),
    "warm colour cast": _colour_cast,
    "tilted 15 degrees": _tilt,
    "blurred (radius 2)": lambda im: im.filter(ImageFilter.GaussianBlur(2)),
    "sensor noise (sigma 12)": _noise,
}
FIGURES = ("faces_found", "accuracy", "balanced_accuracy", "roc_auc", "ece")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--model", default=str(SHIPPED_MODEL))
    parser.add_argument("--baseline", default=str(ROOT / "outputs" / "runs" / "seedcnn.pt"))
    parser.add_argument("--limit", type=int, help="at most this many test images per set (quick runs)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()

    root = data.data_root(args.data)
    test_sets = {label: data.select(data.load_dataset(name, root), "test", args.limit)
                 for label, name in (("SMILEsmileD", "smilesmiled"), ("CelebA", "celeba-subset"))}
    models = {"SmileNet": args.model}
    if Path(args.baseline).is_file():
        models["SeedCNN"] = args.baseline
    results, versions = {}, {}
    for model_name, path in models.items():
        predictor = Predictor(path)
        versions[model_name] = predictor.version
        for set_name, samples in test_sets.items():
            for change, transform in CHANGES.items():
                figures = evaluate_photos(predictor, samples, transform=transform)
                results.setdefault(set_name, {}).setdefault(change, {})[model_name] = {k: figures[k] for k in FIGURES}
                print(f"{model_name} {set_name} {change}: accuracy {figures['accuracy']:.3f}", flush=True)

    names = list(models)
    for set_name, by_change in results.items():
        n = len(test_sets[set_name])
        print(f"\n{set_name} test ({n} images); each cell: " + ", ".join(f"{m} ({versions[m]})" for m in names))
        print("| change | faces found | accuracy | balanced accuracy | ROC AUC | ECE |\n|---|---|---|---|---|---|")
        for change, by_model in by_change.items():
            cells = [" / ".join(f"{by_model[m][k]:.3f}" for m in names) for k in FIGURES]
            print(f"| {change} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"models": models, "versions": versions, "n": {k: len(v) for k, v in test_sets.items()},
                                               "results": results}, indent=2))


if __name__ == "__main__":
    main()
