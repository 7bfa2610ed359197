"""Classification figures from labels and probabilities (plain numpy)."""
from __future__ import annotations

import numpy as np


def correct(y_true, y_prob, threshold=0.5) -> np.ndarray:
    """Per face, whether the answer at ``threshold`` matches the label (booleans)."""
    return (np.asarray(y_prob) >= threshold) == np.asarray(y_true).astype(bool)


def accuracy(y_true, y_prob, threshold=0.5) -> float:
    return float(correct(y_true, y_prob, threshold).mean()) if len(y_true) else float("nan")


def best_threshold(y_true, y_prob) -> float:
    """The threshold with the highest accuracy on these faces (cuts midway between probabilities; ties: nearest 0.5)."""
    probs = np.unique(y_prob)
    cuts = np.concatenate([[0.0], (probs[1:] + probs[:-1]) / 2, [np.nextafter(1.0, 2.0)]])
    scores = np.array([accuracy(y_true, y_prob, cut) for cut in cuts])
    best = cuts[scores == scores.max()]
    return float(best[np.argmin(np.abs(best - 0.5))])


def confusion_matrix(y_true, y_prob, threshold=0.5) -> np.ndarray:
    """2x2 counts, rows = true (not smiling, smiling), columns = predicted."""
    y_true = np.asarray(y_true).astype(int)
    y_pred = (np.asarray(y_prob) >= threshold).astype(int)
    matrix = np.zeros((2, 2), dtype=int)
    np.add.at(matrix, (y_true, y_pred), 1)
    return matrix


def balanced_accuracy(y_true, y_prob, threshold=0.5) -> float:
    """Mean of the recall of each class present."""
    matrix = confusion_matrix(y_true, y_prob, threshold)
    recalls = [matrix[c, c] / matrix[c].sum() for c in (0, 1) if matrix[c].sum()]
    return float(np.mean(recalls)) if recalls else float("nan")


def roc_auc(y_true, y_prob) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half); nan with one class only."""
    y_true, y_prob = np.asarray(y_true).astype(bool), np.asarray(y_prob, dtype=float)
    pos, neg = y_prob[y_true], y_prob[~y_true]
    if not len(pos) or not len(neg):
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    values = np.concatenate([pos, neg])[order]
    # average ranks over ties
    _, first, counts = np.unique(values, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def roc_curve(y_true, y_prob):
    """False and true positive rates over all thresholds (for plotting)."""
    y_true, y_prob = np.asarray(y_true).astype(bool), np.asarray(y_prob, dtype=float)
    order = np.argsort(-y_prob, kind="mergesort")
    tp = np.concatenate([[0], np.cumsum(y_true[order])])
    fp = np.concatenate([[0], np.cumsum(~y_true[order])])
    return fp / max(1, (~y_true).sum()), tp / max(1, y_true.sum())


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
