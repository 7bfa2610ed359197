"""smilekit.learn.plots and smilekit.learn.explore: every figure helper draws from plain data."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from smilekit.learn import explore, metrics, plots
from smilekit.learn.data import Sample, load_celeba_subset, load_smilesmiled
from smilekit.vision.faces import Box


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _check(fig, tmp_path, name):
    assert isinstance(fig, Figure)
    path = plots.save(fig, tmp_path / "figs", name)
    assert path.stat().st_size > 1000
    with Image.open(path) as image:
        assert image.size[0] > 100
    return fig


def test_face_grid_grey_colour_and_titles(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (64, 64), dtype=np.uint8) for _ in range(5)] + [Image.new("RGB", (30, 40), "red")]
    fig = _check(plots.face_grid(images, [str(i) for i in range(6)], ncols=4, title="toy"), tmp_path, "grid")
    assert len(fig.axes) == 8 and fig.axes[0].get_title() == "0"
    assert len(plots.face_grid(images[:1]).axes) == 1


def test_curves_roc_confusion_reliability_groups(tmp_path):
    history = [{"epoch": e, "train_loss": 1 / e, "train_accuracy": 0.5 + e / 10, "val": {"a": {"accuracy": 0.6}, "b": {"accuracy": 0.7}}}
               for e in (1, 2, 3)]
    fig = _check(plots.training_curves(history), tmp_path, "curves")
    assert len(fig.axes[1].get_lines()) == 3
    y, p = np.array([0, 0, 1, 1, 1]), np.array([0.1, 0.6, 0.4, 0.8, 0.9])
    fig = _check(plots.roc_curves({"toy": (y, p)}), tmp_path, "roc")
    assert "AUC 0.833" in fig.axes[0].get_legend().get_texts()[0].get_text()
    _check(plots.confusion({"x": metrics.confusion_matrix(y, p), "y": [[1, 2], [3, 4]]}), tmp_path, "confusion")
    _check(plots.reliability({"before": metrics.reliability(y, p), "after": metrics.reliability(y, p ** 2)}), tmp_path, "rel")
    _check(plots.group_accuracy(metrics.per_group_accuracy(y, p, ["m", "f", "m", "f", "m"])), tmp_path, "groups")


def test_saliency_boxes_balance_agreement(tmp_path):
    crops = [np.full((64, 64), 128, np.uint8)] * 3
    maps = [np.linspace(0, 1, 64 * 64).reshape(64, 64)] * 3
    _check(plots.saliency_overlay(crops, maps, ["a", "b", "c"]), tmp_path, "saliency")
    photo = Image.new("RGB", (120, 100), "white")
    fig = _check(plots.boxes_on_photos([(photo, [Box(10, 10, 40, 40)]), (photo, [])]), tmp_path, "boxes")
    assert len(fig.axes[0].patches) == 2  # detector box and model crop
    balance = {"d": {"train": {"smiling": 3, "not_smiling": 7, "total": 10}, "test": {"smiling": 1, "not_smiling": 1, "total": 2}}}
    _check(plots.class_balance(balance), tmp_path, "balance")
    points = [{"n": i + 1, "agreement": a} for i, a in enumerate([1, 0.5, 0.66])]
    _check(plots.agreement_over_time(points, {"v1": {"count": 2, "agreement": 0.5}, "v2": {"count": 1, "agreement": 1.0}}), tmp_path, "agree")
    _check(plots.agreement_over_time(points), tmp_path, "agree-alone")


def test_class_balance_and_pick(tmp_path):
    samples = [Sample(tmp_path / f"{i}.png", i % 3 == 0, split, "toy", True) for i, split in enumerate(["test", "train", "val"] * 4)]
    balance = explore.class_balance(samples)
    assert list(balance) == ["train", "val", "test"]
    assert balance["test"] == {"smiling": 4, "not_smiling": 0, "total": 4}
    assert sum(v["total"] for v in balance.values()) == 12
    assert all(s.smiling for s in explore.pick(samples, 1, 2)) and len(explore.pick(samples, 1, 2)) == 2
    assert explore.pick(samples, 1, 0) == []


def test_image_sizes_and_detections_on_real_data(smilesmiled_dir, celeba_dir):
    crops = load_smilesmiled(smilesmiled_dir)[:20]
    assert explore.image_sizes(crops) == {(64, 64): 20}
    photos = [s for s in load_celeba_subset(celeba_dir) if s.split == "test"][:3]
    assert explore.image_sizes(photos) == {(178, 218): 3}
    found = explore.detections(photos)
    assert len(found) == 3 and all(image.mode == "RGB" for image, _ in found)
    assert sum(len(boxes) for _, boxes in found) >= 2  # a face in (nearly) every aligned CelebA photo
