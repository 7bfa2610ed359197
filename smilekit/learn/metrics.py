"""Classification figures from labels and probabilities.

Accuracy, the confusion matrix, balanced accuracy, ROC AUC and the ROC curve are
scikit-learn's; this module fixes how probabilities become answers (``>= threshold``)
and what a one-class set gives (nan), and adds what scikit-learn lacks: intervals,
per-group figures, reliability, temperature and prior shift. The learning code
imports it; the app's kernels do not (``tests/test_layout.py``).
"""
from __future__ import annotations

import warnings

import numpy as np
from sklearn import metrics as sk


def correct(y_true, y_prob, threshold=0.5) -> np.ndarray:
    """Per face, whether the answer at ``threshold`` matches the label (booleans)."""
    return (np.asarray(y_prob) >= threshold) == np.asarray(y_true).astype(bool)


def _answers(y_true, y_prob, threshold) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(y_true).astype(int), (np.asarray(y_prob) >= threshold).astype(int)


def accuracy(y_true, y_prob, threshold=0.5) -> float:
    return float(sk.accuracy_score(*_answers(y_true, y_prob, threshold))) if len(y_true) else float("nan")


def best_threshold(y_true, y_prob) -> float:
    """The threshold with the highest accuracy on these faces (cuts midway between probabilities; ties: nearest 0.5)."""
    probs = np.unique(y_prob)
    cuts = np.concatenate([[0.0], (probs[1:] + probs[:-1]) / 2, [np.nextafter(1.0, 2.0)]])
    scores = np.array([correct(y_true, y_prob, cut).mean() for cut in cuts])
    best = cuts[scores == scores.max()]
    return float(best[np.argmin(np.abs(best - 0.5))])


def confusion_matrix(y_true, y_prob, threshold=0.5) -> np.ndarray:
    """2x2 counts, rows = true (not smiling, smiling), columns = predicted."""
    return sk.confusion_matrix(*_answers(y_true, y_prob, threshold), labels=[0, 1])


def balanced_accuracy(y_true, y_prob, threshold=0.5) -> float:
    """Mean of the recall of each class present (nan for no faces)."""
    if not len(y_true):
        return float("nan")
    with warnings.catch_warnings():  # a one-class set: scikit-learn warns, then averages the class present
        warnings.simplefilter("ignore", UserWarning)
        return float(sk.balanced_accuracy_score(*_answers(y_true, y_prob, threshold)))


def _both_classes(y_true) -> bool:
    return len(np.unique(np.asarray(y_true).astype(bool))) == 2


def roc_auc(y_true, y_prob) -> float:
    """Area under the ROC curve (ties counted half); nan with one class only."""
    return float(sk.roc_auc_score(np.asarray(y_true).astype(int), y_prob)) if _both_classes(y_true) else float("nan")


def roc_curve(y_true, y_prob):
    """False and true positive rates over the thresholds (for plotting)."""
    fpr, tpr, _ = sk.roc_curve(np.asarray(y_true).astype(int), y_prob)
    return fpr, tpr


def summary(y_true, y_prob, threshold=0.5) -> dict:
    """n, accuracy, balanced accuracy and ROC AUC in one dict."""
    return {"n": int(len(y_true)), "accuracy": accuracy(y_true, y_prob, threshold),
            "balanced_accuracy": balanced_accuracy(y_true, y_prob, threshold), "roc_auc": roc_auc(y_true, y_prob)}


def proportion_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (e.g. an accuracy on ``n`` faces)."""
    if n == 0:
        return float("nan"), float("nan")
    z = {0.9: 1.6449, 0.95: 1.96, 0.99: 2.5758}[level]
    p = successes / n
    centre, half = p + z * z / (2 * n), z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, float((centre - half) / (1 + z * z / n))), min(1.0, float((centre + half) / (1 + z * z / n)))


def per_group_accuracy(y_true, y_prob, groups, threshold=0.5) -> dict:
    """Accuracy, count and 95 % interval of the accuracy for each value of ``groups`` (e.g. CelebA's ``male``)."""
    y_true, y_prob, groups = np.asarray(y_true), np.asarray(y_prob), np.asarray(groups)
    right, result = correct(y_true, y_prob, threshold), {}
    for g in np.unique(groups):
        n, hits = int((groups == g).sum()), int(right[groups == g].sum())
        result[g.item() if hasattr(g, "item") else g] = {"n": n, "accuracy": hits / n, "interval": proportion_interval(hits, n)}
    return result


def reliability(y_true, y_prob, bins=10) -> dict:
    """Reliability diagram data and expected calibration error.

    Confidence is the probability of the predicted class; for each confidence bin,
    the fraction of predictions that were right.
    """
    y_true, y_prob = np.asarray(y_true).astype(bool), np.asarray(y_prob, dtype=float)
    confidence = np.maximum(y_prob, 1 - y_prob)
    correct = (y_prob >= 0.5) == y_true
    edges = np.linspace(0.5, 1.0, bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    conf = np.bincount(index, confidence, minlength=bins) / np.maximum(counts, 1)
    acc = np.bincount(index, correct, minlength=bins) / np.maximum(counts, 1)
    ece = float(np.sum(counts * np.abs(conf - acc)) / max(1, len(y_true)))
    return {"edges": edges, "count": counts, "confidence": conf, "accuracy": acc, "ece": ece}


def fit_temperature(logits, y_true) -> float:
    """The temperature T minimising the log loss of sigmoid(logits / T) (grid search, 0.25-4)."""
    logits, y = np.asarray(logits, dtype=float), np.asarray(y_true, dtype=float)
    best, best_loss = 1.0, np.inf
    for t in np.exp(np.linspace(np.log(0.25), np.log(4.0), 201)):
        z = logits / t
        loss = np.mean(np.logaddexp(0, z) - y * z)
        if loss < best_loss:
            best, best_loss = float(t), loss
    return best


def at_prior(y_prob, prior: float) -> np.ndarray:
    """Probabilities of a model trained on balanced classes, moved to a set whose smiling share is ``prior``.

    Bayes' rule on the odds: the balanced model's odds times prior / (1 - prior).
    Use a prior known before testing (e.g. the set's train split), never the test labels.
    """
    p = np.clip(np.asarray(y_prob, dtype=float), 1e-7, 1 - 1e-7)
    odds = p / (1 - p) * prior / (1 - prior)
    return odds / (1 + odds)


def group_gap_interval(y_true, y_prob, groups, level: float = 0.95, rounds: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Bootstrap interval of the accuracy gap (group 1 minus group 0), resampling within each group."""
    right, groups = correct(y_true, y_prob), np.asarray(groups)
    rng = np.random.default_rng(seed)
    per_group = [right[groups == g] for g in (0, 1)]
    draws = [rng.choice(c, size=(rounds, len(c))).mean(axis=1) for c in per_group]
    gaps = draws[1] - draws[0]
    tail = (1 - level) / 2
    return float(np.quantile(gaps, tail)), float(np.quantile(gaps, 1 - tail))
