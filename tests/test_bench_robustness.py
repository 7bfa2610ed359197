"""benchmarks/bench_robustness.py: each simulated change does what its name says, the same way every time."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter

from conftest import load_benchmark

bench_robustness = load_benchmark("bench_robustness")


@pytest.fixture
def photo() -> Image.Image:
    rng = np.random.default_rng(1)
    smooth = Image.fromarray(rng.integers(40, 215, (60, 50, 3), dtype=np.uint8)).filter(ImageFilter.GaussianBlur(1))
    return smooth.resize((100, 120))


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=float)


def test_changes_are_repeatable_and_change_the_photo(photo):
    for name, change in bench_robustness.CHANGES.items():
        if change is None:
            continue
        first, second = change(photo.copy()), change(photo.copy())
        assert np.array_equal(_pixels(first), _pixels(second)), name
        assert first.size != photo.size or not np.array_equal(_pixels(first), _pixels(photo)), name


def test_each_change_moves_the_photo_the_way_its_name_says(photo):
    change = bench_robustness.CHANGES
    original = _pixels(photo)
    assert _pixels(change["dark (35 % brightness)"](photo)).mean() < 0.4 * original.mean()
    assert _pixels(change["overexposed (180 % brightness)"](photo)).mean() > 1.5 * original.mean()
    assert _pixels(change["low contrast (40 %)"](photo)).std() < 0.5 * original.std()
    warm = _pixels(change["warm colour cast"](photo))
    assert warm[..., 0].mean() / warm[..., 2].mean() > 1.5 * original[..., 0].mean() / original[..., 2].mean()
    assert change["small (40 % of the size)"](photo).size == (40, 48)
    tilted = change["tilted 15 degrees"](photo)
    assert tilted.size[0] > photo.size[0] and tuple(_pixels(tilted)[0, 0]) == (128, 128, 128)  # grey corners
    sharpness = lambda a: np.abs(np.diff(a, axis=1)).mean()
    assert sharpness(_pixels(change["blurred (radius 2)"](photo))) < 0.7 * sharpness(original)
    assert 8 < (_pixels(change["sensor noise (sigma 12)"](photo)) - original).std() < 14
    assert 0 < np.abs(_pixels(change["JPEG quality 15"](photo)) - original).mean() < 20
