"""Fit the model to one collection of photos from its verdicts: Platt scaling of the model's logit.

A model trained on balanced classes from other collections carries their look into a new one: on MTFL's
everyday web photos a model that never saw them says "Not smiling" too often (its best threshold there is
about 0.17, not 0.5). Fine-tuning on the clicked faces barely changes how it *ranks* faces there (ROC AUC
0.933 before, 0.930 after 1,000 clicks), but every verdict tells where this collection's answers should
change: ``p' = sigmoid(slope * logit(p) + offset)``, fitted on the verdicts of one model version, moves the
decision threshold and the confidences shown to this deployment's photos. It needs no face pixels (only the
probability shown and the true label), so every verdict counts, consented crop or not.

A calibration is kept only if it predicts held-out verdicts better (:func:`cross_validated`). It belongs to
the deployment's database, per model version: other deployments and the model's own test figures are
untouched. Measured with ``benchmarks/bench_learning.py``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


#: fewer verdicts than this are not enough to fit a calibration
MIN_VERDICTS = 50
#: folds of the cross-validation that decides whether a calibration is kept
FOLDS = 5
#: the slope is kept in this range (a slope near 0 would make every answer 50 %)
SLOPE_RANGE = (0.25, 4.0)
#: the name a calibrated model version is served under: "<weights version>+c<calibration id>"
SEPARATOR = "+c"


@dataclass(frozen=True)
class Calibration:
    """``p' = sigmoid(slope * logit(p) + offset)``; ``id`` is its row in the feedback database (None: not stored)."""

    slope: float = 1.0
    offset: float = 0.0
    id: int | None = None

    def apply(self, probabilities) -> np.ndarray:
        """The model's probabilities of smiling, calibrated."""
        return _sigmoid(self.slope * logit(probabilities) + self.offset)

    def undo(self, probabilities) -> np.ndarray:
        """The model's own probabilities from calibrated ones (the inverse of :meth:`apply`)."""
        return _sigmoid((logit(probabilities) - self.offset) / self.slope)

    def served_version(self, version: str) -> str:
        """The version verdicts are stored under when this calibration labels the faces."""
        return version if self.id is None else f"{version}{SEPARATOR}{self.id}"


def logit(probabilities) -> np.ndarray:
    p = np.clip(np.asarray(probabilities, dtype=float), 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def _sigmoid(z) -> np.ndarray:
    return 1 / (1 + np.exp(-np.asarray(z, dtype=float)))


def split_version(served: str) -> tuple[str, int | None]:
    """(weights version, calibration id or None) of a served version name."""
    version, sep, cal = served.rpartition(SEPARATOR)
    return (version, int(cal)) if sep and cal.isdigit() else (served, None)


def fit(probabilities, labels, ridge: float = 1.0) -> Calibration:
    """Platt scaling: Newton's method with step halving on the log loss, pulled toward no change by ``ridge``
    (in verdicts' worth)."""
    z, y = logit(probabilities), np.asarray(labels, dtype=float)
    x = np.stack([z, np.ones_like(z)], axis=1)
    prior = np.array([1.0, 0.0])

    def loss(w):
        t = x @ w
        return float(np.sum(np.logaddexp(0, t) - y * t) + ridge / 2 * np.sum((w - prior) ** 2))

    w = prior.copy()
    for _ in range(100):
        p = _sigmoid(x @ w)
        gradient = x.T @ (p - y) + ridge * (w - prior)
        hessian = (x * (p * (1 - p))[:, None]).T @ x + ridge * np.eye(2)
        step, current = np.linalg.solve(hessian, gradient), loss(w)
        while loss(w - step) > current and np.abs(step).max() > 1e-10:
            step = step / 2
        w = w - step
        if np.abs(step).max() < 1e-8:
            break
    return Calibration(float(np.clip(w[0], *SLOPE_RANGE)), float(w[1]))


def cross_validated(probabilities, labels, threshold: float, folds: int = FOLDS, seed: int = 0) -> dict:
    """Accuracy and log loss on held-out verdicts without and with a calibration fitted on the other folds."""
    p, y = np.asarray(probabilities, dtype=float), np.asarray(labels, dtype=float)
    order = np.random.default_rng(seed).permutation(len(y))
    calibrated = np.empty_like(p)
    for fold in np.array_split(order, folds):
        rest = np.setdiff1d(order, fold)
        calibrated[fold] = fit(p[rest], y[rest]).apply(p[fold])

    def loss(q):
        q = np.clip(q, 1e-7, 1 - 1e-7)
        return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))

    def accuracy(q):  # the answers at the app's threshold against the verdicts
        return float(np.mean((q >= threshold) == (y > 0.5)))

    return {"accuracy_before": accuracy(p), "accuracy_after": accuracy(calibrated),
            "log_loss_before": loss(p), "log_loss_after": loss(calibrated)}


def decide(probabilities, labels, threshold: float) -> tuple[Calibration | None, dict, str]:
    """A calibration fitted on every verdict if it predicts held-out verdicts better, with its figures and the reason.

    Kept when cross-validated log loss falls and accuracy does not (a calibration that only made the shown
    confidences more honest is kept too).
    """
    if len(labels) < MIN_VERDICTS:
        return None, {}, f"{len(labels)} verdicts: at least {MIN_VERDICTS} are needed to calibrate"
    scores = cross_validated(probabilities, labels, threshold)
    better = scores["log_loss_after"] < scores["log_loss_before"] and scores["accuracy_after"] >= scores["accuracy_before"]
    figures = (f"on held-out verdicts, accuracy {scores['accuracy_before']:.3f} -> {scores['accuracy_after']:.3f}, "
               f"log loss {scores['log_loss_before']:.3f} -> {scores['log_loss_after']:.3f}")
    if not better:
        return None, scores, f"not calibrated: {figures}"
    return fit(probabilities, labels), scores, f"calibrated on {len(labels)} verdicts: {figures}"
