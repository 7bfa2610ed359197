"""smilekit.learn.evaluate: checkpoints on face sets, tables, worst mistakes."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from smilekit.learn import evaluate
from smilekit.learn.data import CONTEXT_SIZE
from smilekit.learn.model import SeedCNN, SmileNet, save_checkpoint
from smilekit.predict import Predictor


def _face_set(n=10, seed=0, groups=True):
    rng = np.random.default_rng(seed)
    crops = rng.integers(0, 256, (n, CONTEXT_SIZE, CONTEXT_SIZE), dtype=np.uint8)
    labels = np.arange(n) % 2
    return evaluate.FaceSet("toy", crops, labels, (np.arange(n) // 2) % 2 if groups else None, [])


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "m.pt", SmileNet(width=4), "smilenet", {"width": 4}, temperature=2.0)
    return tmp_path / "m.pt"


def test_evaluate_applies_the_checkpoint_temperature(checkpoint):
    sets = {"toy": _face_set()}
    result = evaluate.evaluate(checkpoint, sets)["toy"]
    assert result.temperature == 2.0 and result.logits.shape == (10,)
    np.testing.assert_allclose(result.probabilities, 1 / (1 + np.exp(-result.logits / 2.0)), rtol=1e-6)
    np.testing.assert_allclose(result.raw_probabilities, 1 / (1 + np.exp(-result.logits)), rtol=1e-6)
    summary = evaluate.summaries({"toy": result})["toy"]
    assert summary["n"] == 10 and summary["accuracy"] == np.mean((result.logits >= 0) == (np.arange(10) % 2 == 1))


def test_evaluate_sees_the_centre_64_pixels_of_context_crops(checkpoint):
    base = _face_set(4)
    changed = evaluate.FaceSet("toy", base.crops.copy(), base.labels, None, [])
    changed.crops[:, :5, :] = 0  # the border outside the model crop
    a = evaluate.evaluate(checkpoint, {"x": base})["x"].logits
    b = evaluate.evaluate(checkpoint, {"x": changed})["x"].logits
    np.testing.assert_allclose(a, b, rtol=1e-5)


def test_worst_mistakes_are_wrong_and_most_confident_first():
    e = evaluate.Evaluation("t", np.array([1, 0, 1, 0, 1]), np.array([-4.0, 3.0, 2.0, -1.0, -0.5]), 1.0)
    assert list(evaluate.worst_mistakes(e, 10)) == [0, 1, 4]
    assert list(evaluate.worst_mistakes(e, 1)) == [0]
    right = evaluate.Evaluation("t", np.array([1, 0]), np.array([2.0, -2.0]), 1.0)
    assert len(evaluate.worst_mistakes(right)) == 0


def test_comparison_rows_put_models_side_by_side_and_mark_missing_sets():
    model = {"a": {"n": 5, "accuracy": 0.8, "balanced_accuracy": 0.7, "roc_auc": 0.9},
             "b": {"n": 3, "accuracy": 0.5, "balanced_accuracy": 0.5, "roc_auc": 0.5}}
    baseline = {"a": {"n": 5, "accuracy": 0.6, "balanced_accuracy": 0.6, "roc_auc": 0.7}}
    rows = evaluate.comparison_rows({"ours": model, "seed": baseline})
    assert [r["test set"] for r in rows] == ["a", "b"]
    assert rows[0]["ours accuracy"] == 0.8 and rows[0]["seed accuracy"] == 0.6
    assert math.isnan(rows[1]["seed roc_auc"])
    table = evaluate.markdown_table(rows)
    assert table.splitlines()[0].startswith("| test set | n | ours accuracy") and "0.8000" in table
    assert evaluate.markdown_table([]) == "(no rows)"


def test_balanced_indices_take_both_classes():
    assert list(evaluate.balanced_indices(np.array([0, 0, 1, 0, 1, 1]), 4)) == [2, 4, 0, 1]
    assert list(evaluate.balanced_indices(np.array([0, 0]), 3)) == [0, 1]


def test_model_crops_cut_the_centre():
    crops = np.zeros((1, CONTEXT_SIZE, CONTEXT_SIZE), np.uint8)
    crops[0, 8:72, 8:72] = 200
    out = evaluate.model_crops(crops)
    assert out.shape == (1, 64, 64) and out.dtype == np.uint8 and (out == 200).all()


def test_write_json_converts_numpy(tmp_path):
    path = evaluate.write_json(tmp_path / "sub" / "m.json", {"a": np.float64(0.5), "b": np.arange(2), "c": np.int64(3)})
    assert json.loads(path.read_text()) == {"a": 0.5, "b": [0, 1], "c": 3}


def test_load_sets_on_real_test_splits(shared_data, tmp_path):
    sets = evaluate.load_sets(shared_data, limit=12)
    assert set(sets) == {"smilesmiled", "celeba-subset", "mtfl", "fer2013"}
    for face_set in sets.values():
        assert face_set.crops.shape == (12, CONTEXT_SIZE, CONTEXT_SIZE, 3) and face_set.crops.dtype == np.uint8  # RGB
        assert set(np.unique(face_set.labels)) <= {0, 1}
        assert all(s.split == "test" for s in face_set.samples)
    assert sets["smilesmiled"].groups is None
    assert set(np.unique(sets["celeba-subset"].groups)) <= {0, 1}
    seed = tmp_path / "seed.pt"
    save_checkpoint(seed, SeedCNN(), "seedcnn")
    evaluations = evaluate.evaluate(seed, sets)
    predictor = Predictor(seed)  # the app's path (ONNX export) on the same model crops gives the same answers
    for name, e in evaluations.items():
        np.testing.assert_allclose(predictor.predict_proba(list(evaluate.model_crops(sets[name].crops))), e.probabilities, atol=1e-4)
        assert e.summary()["n"] == 12 and e.summary()["accuracy"] == np.mean((e.probabilities >= 0.5) == sets[name].labels)


def test_evaluate_photos_adds_prior_accuracy_and_gap_interval(celeba_dir):
    from smilekit.learn import data
    from smilekit.predict import Predictor

    samples = data.select(data.load_celeba_subset(celeba_dir), "test", 80)
    predictor = Predictor()
    neutral = evaluate.evaluate_photos(predictor, samples, prior=0.5)
    assert neutral["accuracy_at_prior"] == pytest.approx(neutral["accuracy"])  # a 50 % prior changes nothing
    rare = evaluate.evaluate_photos(predictor, samples, prior=0.02)
    assert rare["accuracy_at_prior"] < rare["accuracy"]  # this set is half smiling: a 2 % prior is wrong for it
    low, high = rare["male_gap_interval"]
    gap = rare["accuracy_by_male"][1] - rare["accuracy_by_male"][0]
    assert low <= gap <= high and high - low > 0.05  # 80 photos cannot pin the gap down


def test_evaluate_photos_applies_the_transform_to_each_photo(celeba_dir):
    from PIL import Image

    from smilekit.learn import data
    from smilekit.predict import Predictor

    samples = data.select(data.load_celeba_subset(celeba_dir), "test", 12)
    predictor = Predictor()
    plain = evaluate.evaluate_photos(predictor, samples)
    same = evaluate.evaluate_photos(predictor, samples, transform=lambda image: image.copy())
    assert same["roc_auc"] == plain["roc_auc"] and same["no_face"] == plain["no_face"]
    blank = evaluate.evaluate_photos(predictor, samples, transform=lambda image: Image.new("RGB", image.size, (128, 128, 128)))
    assert blank["no_face"] == 12 and blank["faces_found"] == 0 and blank["accuracy"] == 0  # no face: counted wrong
