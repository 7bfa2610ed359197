"""Describe the labelled data: class balance, image sizes, faces found on whole photos."""
from __future__ import annotations

from collections import Counter

from PIL import Image

from ..vision import faces
from .data import Sample


def class_balance(samples: list[Sample]) -> dict[str, dict[str, int]]:
    """{split: {"smiling": n, "not_smiling": n, "total": n}} in train / val / test order."""
    order = {"train": 0, "val": 1, "test": 2}
    out = {}
    for split in sorted({s.split for s in samples}, key=lambda s: (order.get(s, 3), s)):
        labels = [s.smiling for s in samples if s.split == split]
        out[split] = {"smiling": sum(labels), "not_smiling": len(labels) - sum(labels), "total": len(labels)}
    return out


def image_sizes(samples: list[Sample]) -> Counter:
    """How many images have each (width, height), read from the file headers only."""
    sizes = Counter()
    for s in samples:
        with Image.open(s.path) as image:
            sizes[image.size] += 1
    return sizes


def pick(samples: list[Sample], smiling: int, n: int) -> list[Sample]:
    """``n`` samples with label ``smiling``, spread evenly over the list."""
    chosen = [s for s in samples if s.smiling == smiling]
    step = max(1, len(chosen) // max(1, n))
    return chosen[::step][:n]


def detections(samples: list[Sample]) -> list[tuple[Image.Image, list[faces.Box]]]:
    """Each photo (RGB) with the face boxes the detector finds on it."""
    out = []
    for s in samples:
        image = Image.open(s.path).convert("RGB")
        out.append((image, faces.detect_faces(image)))
    return out
