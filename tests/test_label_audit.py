"""benchmarks/label_audit.py: scoring a blind reading against the key."""
from __future__ import annotations

from conftest import load_benchmark

label_audit = load_benchmark("label_audit")


def test_score_sides_each_reading_with_the_label_the_model_or_neither():
    key = {"items": [
        {"n": 0, "label": 1, "predicted": 0},  # model wrong, reading says smiling: sides with the label
        {"n": 1, "label": 1, "predicted": 0},  # model wrong, reading says not smiling: sides with the model
        {"n": 2, "label": 0, "predicted": 0},  # model right, reading agrees
        {"n": 3, "label": 0, "predicted": 0},  # model right, reading disagrees with both
        {"n": 4, "label": 1, "predicted": 1},  # model right, cannot tell
        {"n": 5, "label": 0, "predicted": 1},  # model wrong, no reading written: cannot tell
    ]}
    counts = label_audit.score(key, {0: "1", 1: "0", 2: "0", 3: "1", 4: "?"})
    assert counts == {("model wrong", "the label"): 1, ("model wrong", "the model"): 1,
                      ("model right", "the label and the model"): 1, ("model right", "neither"): 1,
                      ("model right", "cannot tell"): 1, ("model wrong", "cannot tell"): 1}

