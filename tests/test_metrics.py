"""Metrics against hand-computed values."""
import numpy as np
import pytest

from smilekit.learn import metrics


def test_accuracy_balanced_accuracy_confusion():
    y = [1, 1, 1, 0]
    p = [0.9, 0.8, 0.2, 0.1]
    assert metrics.accuracy(y, p) == 0.75
    assert metrics.balanced_accuracy(y, p) == pytest.approx((2 / 3 + 1) / 2)
    assert metrics.confusion_matrix(y, p).tolist() == [[1, 0], [1, 2]]


def test_balanced_accuracy_of_a_one_class_set_is_its_recall_and_of_no_faces_nan():
    assert metrics.balanced_accuracy([1, 1, 1, 1], [0.9, 0.8, 0.7, 0.2]) == 0.75
    assert np.isnan(metrics.balanced_accuracy([], [])) and np.isnan(metrics.accuracy([], []))
    assert metrics.confusion_matrix([0, 0], [0.1, 0.2]).tolist() == [[2, 0], [0, 0]]  # both classes' rows, always


def test_roc_auc_with_ties_and_one_class():
    assert metrics.roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    assert metrics.roc_auc([0, 1], [0.5, 0.5]) == 0.5
    assert np.isnan(metrics.roc_auc([1, 1], [0.2, 0.9]))


def test_roc_curve_ends_at_corners():
    fpr, tpr = metrics.roc_curve([0, 1, 1, 0], [0.2, 0.9, 0.6, 0.7])
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)


def test_per_group_accuracy():
    result = metrics.per_group_accuracy([1, 0, 1, 0], [0.9, 0.9, 0.9, 0.1], [1, 1, 0, 0])
    assert (result[1]["n"], result[1]["accuracy"]) == (2, 0.5) and (result[0]["n"], result[0]["accuracy"]) == (2, 1.0)
    low, high = result[1]["interval"]
    assert low < 0.5 < high


def test_proportion_interval_matches_wilson_and_narrows_with_n():
    low, high = metrics.proportion_interval(81, 100)  # Wilson 95 %: 0.7222 to 0.8749
    assert abs(low - 0.7222) < 1e-3 and abs(high - 0.8749) < 1e-3
    low_big, high_big = metrics.proportion_interval(810, 1000)
    assert low < low_big < 0.81 < high_big < high
    assert metrics.proportion_interval(10, 10)[1] == 1.0 and metrics.proportion_interval(0, 10)[0] == 0.0


def test_reliability_of_a_calibrated_and_an_overconfident_model():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, 20000)
    y = rng.uniform(0, 1, 20000) < p
    assert metrics.reliability(y, p)["ece"] < 0.02
    overconfident = np.where(p > 0.5, 0.99, 0.01)
    assert metrics.reliability(y, overconfident)["ece"] > 0.2


def test_fit_temperature_recovers_a_known_scale():
    rng = np.random.default_rng(1)
    true_logits = rng.normal(0, 2, 20000)
    y = rng.uniform(0, 1, 20000) < 1 / (1 + np.exp(-true_logits))
    assert metrics.fit_temperature(true_logits * 3, y) == pytest.approx(3, rel=0.1)


def test_at_prior_is_bayes_rule_on_the_odds():
    assert metrics.at_prior([0.5], 0.5)[0] == pytest.approx(0.5)
    assert metrics.at_prior([0.5], 0.25)[0] == pytest.approx(0.25)  # no evidence: the prior itself
    assert metrics.at_prior([0.75], 0.25)[0] == pytest.approx(0.5)  # odds 3 x 1/3
    # a balanced model scored on a set that is 20 % smiling gets more right once moved to that prior
    rng = np.random.default_rng(2)
    y = rng.uniform(0, 1, 20000) < 0.2
    x = rng.normal(0, 1, 20000) + np.where(y, 1.0, -1.0)
    balanced = 1 / (1 + np.exp(-2 * x))  # calibrated for equal classes: the log-likelihood ratio is 2x
    assert metrics.accuracy(y, metrics.at_prior(balanced, 0.2)) > metrics.accuracy(y, balanced) + 0.02


def test_group_gap_interval_covers_the_gap_and_narrows_with_more_data():
    def sample(n, seed):
        rng = np.random.default_rng(seed)
        groups = np.repeat([0, 1], n)
        y = rng.uniform(0, 1, 2 * n) < 0.5
        right = rng.uniform(0, 1, 2 * n) < np.where(groups == 1, 0.8, 0.9)  # true gap -10 points
        return y, np.where(right == y, 0.9, 0.1), groups
    small = metrics.group_gap_interval(*sample(200, 3))
    large = metrics.group_gap_interval(*sample(5000, 3))
    assert small[0] < -0.1 < small[1] and large[0] < -0.1 < large[1]
    assert large[1] - large[0] < (small[1] - small[0]) / 3


def test_best_threshold_fits_the_cut_to_the_faces():
    assert metrics.best_threshold([0, 0, 1, 1], [0.1, 0.3, 0.4, 0.9]) == pytest.approx(0.35)
    assert metrics.best_threshold([0, 1], [0.2, 0.8]) == pytest.approx(0.5)  # ties: the cut nearest 0.5
    assert metrics.best_threshold([0, 0], [0.2, 0.3]) > 0.3  # every face said not smiling
