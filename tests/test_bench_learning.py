"""benchmarks/bench_learning.py: held-out faces become the clicks a person who knows the truth would give."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import load_benchmark

bench_learning = load_benchmark("bench_learning")


@pytest.mark.parametrize("wrong", [0.0, 0.25])
def test_clicks_carry_the_true_label_except_the_wrong_share(shared_data, model_path, tmp_path, wrong):
    from smilekit.store.feedback import FeedbackStore
    from smilekit.predict import Predictor

    faces = bench_learning.read_collection(shared_data, "mtfl")["train"][:40]
    predictor = Predictor(model_path)
    probs, crops = bench_learning.score(predictor, faces)
    url = f"sqlite:///{tmp_path / 'clicks.db'}"
    given = bench_learning.write_clicks(url, faces, probs, crops, predictor.threshold, predictor.version, wrong, seed=0)
    store = FeedbackStore(url)
    learned = store.consented_crops()
    store.close()
    truth = np.array([label for _, label in faces])
    flipped = int((given != truth).sum())
    assert len(learned) == 40 and (flipped == 0) == (wrong == 0)
    np.testing.assert_array_equal([label for _, label in learned], given)  # the store holds what the clicks said
    assert np.array_equal(np.asarray(learned[0][0]), np.asarray(crops[0].convert("L")))  # the crop the app showed


def test_uncertain_first_picks_the_faces_nearest_the_threshold():
    probs = np.array([0.9, 0.52, 0.1, 0.45, 0.7])
    assert list(bench_learning.pick_clicks(probs, 2, 0.5, uncertain=True)) == [1, 3]
    assert list(bench_learning.pick_clicks(probs, 2, 0.5, uncertain=False)) == [0, 1]  # the pool is already shuffled
