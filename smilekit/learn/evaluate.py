"""Evaluate a checkpoint on the test splits, through the same crop pipeline as training.

``load_sets`` cuts the faces once; ``evaluate`` runs a checkpoint on them and
keeps logits, probabilities, labels and groups, from which the summaries, the
baseline comparison table and the worst mistakes are read. ``evaluate_photos`` scores
labelled photos through the app's path (``smilekit evaluate``) and needs no torch: torch is
imported only by the functions that run a checkpoint on crops.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import data as data_mod
from . import metrics
from ..runtime import DEFAULT_THRESHOLD, INPUT_SIZE, channels_of, decision_threshold, probabilities, with_channels

TEST_DATASETS = ("smilesmiled", "celeba-subset", "mtfl", "fer2013")


@dataclass
class FaceSet:
    """Labelled context crops of one dataset split."""

    name: str
    crops: np.ndarray  # N x 80 x 80 x 3 uint8 RGB context crops (data.face_crops); grey images in all three channels
    labels: np.ndarray
    groups: np.ndarray | None  # CelebA's ``male`` (1/0), None where the dataset has no groups
    samples: list


def load_sets(data_root=None, datasets=TEST_DATASETS, split="test", limit=None, progress=False) -> dict[str, FaceSet]:
    """{dataset: FaceSet} for one split of each dataset (``limit`` images at most, spread evenly)."""
    sets = {}
    for name in datasets:
        samples = data_mod.select(data_mod.load_dataset(name, data_root), split, limit)
        crops, _ = data_mod.face_crops(samples, progress=progress, colour=True)  # each checkpoint reads what it needs
        groups = np.array([s.male for s in samples]) if samples and samples[0].male is not None else None
        sets[name] = FaceSet(name, crops, np.array([s.smiling for s in samples]), groups, samples)
    return sets


@dataclass
class Evaluation:
    """One checkpoint on one face set."""

    name: str
    labels: np.ndarray
    logits: np.ndarray
    temperature: float
    groups: np.ndarray | None = None
    threshold: float = DEFAULT_THRESHOLD  # the checkpoint's decision threshold

    @property
    def probabilities(self) -> np.ndarray:
        """Calibrated probabilities (the checkpoint's temperature)."""
        return probabilities(self.logits, self.temperature)

    @property
    def raw_probabilities(self) -> np.ndarray:
        """Probabilities before temperature scaling."""
        return probabilities(self.logits, 1.0)

    def summary(self) -> dict:
        return metrics.summary(self.labels, self.probabilities, self.threshold)


def evaluate(checkpoint, sets: dict[str, FaceSet]) -> dict[str, Evaluation]:
    """Run ``checkpoint`` (path) on every face set: {dataset: Evaluation}."""
    import torch  # here, not at import: the photo path (evaluate_photos, ``smilekit evaluate``) runs without torch

    from .model import center, load_checkpoint, logits_of

    torch.set_num_threads(min(2, torch.get_num_threads()))
    model, meta = load_checkpoint(checkpoint)
    temperature, threshold, channels = float(meta.get("temperature", 1.0)), decision_threshold(meta), channels_of(meta)
    return {name: Evaluation(name, s.labels, logits_of(model, center(torch.from_numpy(with_channels(s.crops, channels)))),
                             temperature, s.groups, threshold)
            for name, s in sets.items()}


def summaries(evaluations: dict[str, Evaluation]) -> dict[str, dict]:
    """{dataset: {n, accuracy, balanced_accuracy, roc_auc}}."""
    return {name: e.summary() for name, e in evaluations.items()}


COLUMNS = ("accuracy", "balanced_accuracy", "roc_auc")


def comparison_rows(results: dict[str, dict[str, dict]]) -> list[dict]:
    """One row per test set, one column per (model, figure): ``results`` is {model label: summaries}."""
    datasets = list(dict.fromkeys(d for per_model in results.values() for d in per_model))
    rows = []
    for dataset in datasets:
        row = {"test set": dataset, "n": next(r[dataset]["n"] for r in results.values() if dataset in r)}
        for label, per_model in results.items():
            for column in COLUMNS:
                row[f"{label} {column}"] = per_model.get(dataset, {}).get(column, float("nan"))
        rows.append(row)
    return rows


def markdown_table(rows: list[dict], digits: int = 4) -> str:
    """A Markdown table of ``rows`` (floats rounded)."""
    if not rows:
        return "(no rows)"
    columns = list(rows[0])
    cell = lambda v: f"{v:.{digits}f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def worst_mistakes(evaluation: Evaluation, k: int = 12) -> np.ndarray:
    """Indices of the ``k`` wrong answers given with the highest confidence, worst first."""
    prob = evaluation.probabilities
    wrong = np.flatnonzero(~metrics.correct(evaluation.labels, prob, evaluation.threshold))
    confidence = np.abs(prob[wrong] - evaluation.threshold)
    return wrong[np.argsort(-confidence, kind="stable")][:k]


def balanced_indices(labels: np.ndarray, n: int) -> np.ndarray:
    """The first ``n // 2`` smiling and the first ``n - n // 2`` not-smiling indices (for showing a few faces)."""
    labels = np.asarray(labels)
    return np.concatenate([np.flatnonzero(labels == 1)[: n // 2], np.flatnonzero(labels == 0)[: n - n // 2]])


def model_crops(crops: np.ndarray) -> np.ndarray:
    """The 64x64 model crops (uint8, grey or RGB as ``crops``) inside context crops."""
    off = (crops.shape[1] - INPUT_SIZE) // 2
    return np.ascontiguousarray(crops[:, off : off + INPUT_SIZE, off : off + INPUT_SIZE])


def _json_default(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value)}")


def write_json(path, payload: dict) -> Path:
    """Write ``payload`` as indented JSON (numpy values converted); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=_json_default))
    return path


def evaluate_photos(predictor, samples, progress: bool = False, prior: float | None = None, transform=None) -> dict:
    """Figures through the app's own path (photo -> faces -> crop -> model) for labelled samples.

    A photo where no face is found counts as wrong (the opposite label, fully
    confident); unreadable files are counted and left out. Adds the share of
    photos with a face, the calibration error, accuracy per ``male`` group with a
    95 % bootstrap interval of the gap where the samples have it, and with
    ``prior`` (the set's smiling share, known beforehand) the accuracy of
    probabilities moved to that prior. ``transform`` changes each image first
    (see :meth:`smilekit.predict.Predictor.score_samples`).
    """
    probs, status = predictor.score_samples(samples, progress=progress, transform=transform)
    readable, found = status != "unreadable", status == "face"
    labels = np.array([s.smiling for s in samples])
    probs = np.where(found, probs, 1.0 - labels)
    y, p = labels[readable], probs[readable]
    threshold = getattr(predictor, "threshold", DEFAULT_THRESHOLD)
    result = metrics.summary(y, p, threshold)
    result.update(no_face=int((status == "no_face").sum()), unreadable=int((~readable).sum()),
                  faces_found=float(found[readable].mean()) if readable.any() else float("nan"),
                  ece=metrics.reliability(labels[found], probs[found])["ece"], model_version=predictor.version)
    if prior is not None:
        result["accuracy_at_prior"] = metrics.accuracy(y, metrics.at_prior(p, prior))
    groups = np.array([s.male for s in samples], dtype=object)[readable]
    if readable.any() and not any(g is None for g in groups):
        groups = groups.astype(int)
        by_group = metrics.per_group_accuracy(y, p, groups, threshold)
        result["accuracy_by_male"] = {int(g): v["accuracy"] for g, v in by_group.items()}
        result["accuracy_by_male_interval"] = {int(g): v["interval"] for g, v in by_group.items()}
        if len(by_group) == 2:
            result["male_gap_interval"] = metrics.group_gap_interval(y, p, groups)
    return result
