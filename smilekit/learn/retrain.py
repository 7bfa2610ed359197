"""Learn from feedback: fine-tune the current model on consented crops, keep it only if nothing got worse.

Feedback crops are the 64x64 model crops the app showed. Training works on
80x80 context crops (``data.face_crops``) whose centre 64x64 is the model crop,
so a feedback crop is *padded* by repeating its edge pixels (8 on each side),
not resized: resizing 64 -> 80 would zoom the face in by 1.25 relative to every
other training face, whereas padding keeps the exact framing the model saw, and
edge repetition is what ``faces.cut_face`` does for faces at a photo's border.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from .. import calibration, settings
from . import evaluate
from .data import CONTEXT_SIZE, LOADERS, data_root as resolve_data_root
from ..store.feedback import FeedbackStore, disagreeing_sessions
from .model import load_checkpoint
from ..runtime import INPUT_SIZE, decision_threshold, default_model_path, export_paths
from .train import TrainConfig, train

#: a new model is refused if any test split's accuracy drops by more than this (0.5 point)
MAX_DROP = 0.005


@dataclass
class RetrainConfig:
    """What ``smilekit retrain`` and notebook 04 take; None means the app's own setting."""

    db_url: str | None = None  # feedback database (None: $SMILEKIT_DB_URL, else outputs/feedback.db)
    data_root: str | None = None  # face data (None: $SMILEKIT_DATA, else data/)
    model: str | None = None  # the current checkpoint (None: what the app serves)
    models_dir: str | None = None  # where a promoted model goes (None: $SMILEKIT_MODELS_DIR, else outputs/models)
    work_dir: str = "outputs/retrain"  # where candidates are written
    datasets: tuple | None = None  # original training data mixed in (None: those the current model was trained on)
    epochs: int = 3  # fine-tuning epochs over the original training data + feedback crops
    limit: int | None = None  # at most this many images per dataset and split (None: all)
    lr: float = 5e-4  # peak learning rate (small: stay close to the current model)
    feedback_share: float = 0.5  # share of the training draws that are feedback crops (the rest: the original data; chosen on MTFL val)
    # weight of the loss keeping the current model's outputs on the original data's draws (learning without forgetting).
    # MTFL val, 1,000 clicks, change in points: 0 -> MTFL +8.5, SMILEsmileD -1.7, CelebA -1.6, FER2013 -1.0;
    # 1 -> MTFL +7.0, SMILEsmileD -0.8, CelebA -0.4, FER2013 -0.6; 3 -> MTFL +4.1, SMILEsmileD -0.5, CelebA -0.4, FER2013 -0.2
    # (benchmarks/bench_learning.py, outputs/metrics/learning-val.json)
    distill: float = 1.0
    # assumed share of wrong clicks: each click's loss is weighted by the chance it is right given the current model's
    # probability (train.click_trust), so a click contradicting a confident model weighs less. 0: every click weighs 1.
    # MTFL val, distill 1, change in points: 2,000 clean clicks: 0 -> MTFL +5.4, SMILEsmileD -0.5, CelebA -0.6, FER2013 +0.1
    # (+4.3 with 10 % wrong, 79 % kept); 0.05 -> +5.0, -0.4, -0.2, +0.4 (+3.9 wrong, 77 %); 0.1 -> +3.7, -0.4, -0.2, +0.5
    # (+3.1 wrong, 84 %). 1,000 clean clicks: 0 -> +6.9; 0.05 -> +3.9; 0.1 -> +3.7 (others within 0.5 point).
    # It trades gain for less forgetting and does not raise the gain under wrong clicks: off by default.
    click_noise: float = 0.0
    threads: int = TrainConfig.threads  # CPU threads for fine-tuning
    max_drop: float = MAX_DROP  # refuse the candidate if a test split's accuracy drops by more than this
    promote: bool = False  # copy an accepted candidate into the models folder, store an accepted calibration (else report only)
    fine_tune: bool = True  # False: only calibrate (seconds instead of minutes)


def feedback_arrays(pairs) -> tuple[np.ndarray, np.ndarray]:
    """(crop, true label) pairs -> (N x 80 x 80 uint8 context crops, labels)."""
    pad = (CONTEXT_SIZE - INPUT_SIZE) // 2
    crops, labels = [], []
    for crop, label in pairs:
        image = crop if isinstance(crop, Image.Image) else Image.fromarray(np.asarray(crop, dtype=np.uint8))
        image = image.convert("L")
        if image.size != (INPUT_SIZE, INPUT_SIZE):
            image = image.resize((INPUT_SIZE, INPUT_SIZE), Image.BILINEAR)
        crops.append(np.pad(np.asarray(image), pad, mode="edge"))
        labels.append(int(label))
    if not crops:
        return np.zeros((0, CONTEXT_SIZE, CONTEXT_SIZE), np.uint8), np.zeros(0, int)
    return np.stack(crops), np.array(labels)


def trained_datasets(checkpoint) -> tuple:
    """The datasets ``checkpoint`` was trained on, from its metadata (else ``TrainConfig``'s)."""
    return tuple(load_checkpoint(checkpoint)[1].get("data") or TrainConfig.datasets)


def fine_tune(base, pairs, out, data_root=None, datasets=None, epochs: int = RetrainConfig.epochs, limit=None,
              lr: float = RetrainConfig.lr, feedback_share: float = RetrainConfig.feedback_share, seed: int = 0,
              threads: int = RetrainConfig.threads, distill: float = RetrainConfig.distill, click_noise: float = RetrainConfig.click_noise,
              progress: bool = True) -> dict:
    """Fine-tune checkpoint ``base`` on feedback ``pairs`` mixed with the original training data.

    The feedback crops get ``feedback_share`` of the draws, the train splits of ``datasets`` (None: those
    ``base`` was trained on, so a collection it never saw stays unseen) the rest, so the model learns from
    feedback without forgetting; a small learning rate keeps it close to ``base``, and ``distill`` weighs a loss
    keeping ``base``'s outputs on the original data's draws; ``click_noise`` down-weights clicks ``base`` contradicts
    with confidence. Writes ``out`` (and its ``.json``); returns train's report.
    """
    extra = feedback_arrays(pairs)  # the architecture comes from ``base`` (init_from)
    config = TrainConfig(data_root=None if data_root is None else str(data_root), datasets=tuple(datasets or trained_datasets(base)),
                         epochs=epochs, lr=lr, seed=seed, out=str(out), limit=limit, patience=epochs,
                         extra_train=[extra] if len(extra[1]) else [], extra_share=feedback_share, init_from=str(base),
                         threads=threads, distill=distill, extra_noise=click_noise)
    return train(config, progress=progress)


def changes(before: dict[str, dict], after: dict[str, dict], metric: str = "accuracy") -> dict[str, float]:
    """{test set: after - before} for ``metric`` (summaries as from ``evaluate.summaries``)."""
    return {name: float(after[name][metric] - before[name][metric]) for name in before if name in after}


def should_promote(before: dict[str, dict], after: dict[str, dict], max_drop: float = MAX_DROP,
                   metric: str = "accuracy") -> tuple[bool, str]:
    """Promote only if no test split got worse by more than ``max_drop``; returns (decision, reason)."""
    deltas = changes(before, after, metric)
    if not deltas or set(deltas) != set(before):
        return False, "not every test set was evaluated on both models"
    worse = {name: d for name, d in deltas.items() if d < -max_drop}
    if worse:
        listed = ", ".join(f"{n} {d * 100:+.2f} points" for n, d in worse.items())
        return False, f"refused: {metric} changed by less than the allowed {-max_drop * 100:+.1f} points on {listed}"
    listed = ", ".join(f"{n} {d * 100:+.2f}" for n, d in deltas.items())
    return True, f"promoted: no test set dropped by more than {max_drop * 100:.1f} points ({metric} change in points: {listed})"


def promote(checkpoint, models_dir) -> Path:
    """Copy ``checkpoint`` and its ONNX export into ``models_dir`` as ``<UTC time>-<version>.pt`` (newest = current)."""
    _, meta = load_checkpoint(checkpoint)
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    target = models_dir / f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{meta['version']}.pt"
    for source, copy in zip(export_paths(checkpoint), export_paths(target)):  # before the .pt the app looks for
        if source.is_file():
            shutil.copyfile(source, copy)
    tmp = target.with_suffix(".pt.tmp")
    shutil.copyfile(checkpoint, tmp)  # a fresh mtime: the app picks the newest file
    tmp.replace(target)
    return target


def available_test_sets(data_root=None) -> list[str]:
    """Every dataset with a folder under the data root, in ``data.LOADERS`` order: the test splits to compare on."""
    root = resolve_data_root(data_root)
    return [name for name in LOADERS if (root / name).is_dir()]


def calibrate(store: FeedbackStore, model_version: str, threshold: float, save: bool) -> dict:
    """Fit a calibration on the verdicts of ``model_version`` (sessions flagged by ``disagreeing_sessions`` left
    out) and, if it predicts held-out verdicts better and ``save``, store it: the app uses it from its next upload.

    Returns {verdicts, left_out_sessions, kept, id, slope, offset, scores, reason}.
    """
    probs, labels, rows = store.verdicts_of(model_version)
    flagged = {f["session_id"] for f in disagreeing_sessions(rows)}
    keep = np.array([r["session_id"] not in flagged for r in rows], dtype=bool)
    fitted, scores, reason = calibration.decide(probs[keep], labels[keep], threshold)
    out = {"verdicts": int(keep.sum()), "left_out_sessions": sorted(flagged), "kept": fitted is not None, "id": None,
           "slope": None if fitted is None else fitted.slope, "offset": None if fitted is None else fitted.offset,
           "scores": scores, "reason": reason}
    if fitted is not None and save:
        out["id"] = store.save_calibration(model_version, fitted, out["verdicts"], scores)
        out["reason"] += f"; in force as {replace(fitted, id=out['id']).served_version(model_version)}"
    elif fitted is not None:
        out["reason"] += "; not stored (promotion not asked for)"
    return out


def retrain(config: RetrainConfig, progress: bool = True, say=print) -> dict:
    """Calibrate the current model on its verdicts, fine-tune it on consented feedback, compare before / after,
    promote if the rule allows.

    Returns {model, model_version, calibration, candidate, candidate_version, feedback, before, after, changes,
    promoted, reason, promoted_path, config};
    ``before`` / ``after`` are {test set: summary}. With no consented crop (or ``fine_tune`` off) nothing is
    trained (candidate None). ``say`` receives one line per step.
    """
    current = settings.project_path(config.model) if config.model else default_model_path()
    meta = load_checkpoint(current)[1]
    store = FeedbackStore(config.db_url)
    try:
        calibrated = calibrate(store, meta["version"], decision_threshold(meta), save=config.promote)
        pairs = store.consented_crops() if config.fine_tune else []
    finally:
        store.close()
    say(f"calibration: {calibrated['reason']}")
    result = {"model": str(current), "model_version": meta["version"], "calibration": calibrated, "candidate": None,
              "candidate_version": None, "feedback": len(pairs), "before": {}, "after": {},
              "changes": {}, "promoted": False, "reason": "no consented feedback crops: nothing to learn from",
              "promoted_path": None, "config": asdict(config)}
    if not config.fine_tune:
        result["reason"] = "fine-tuning not asked for"
        return result
    say(f"current model {current}; {len(pairs)} consented feedback crops ({sum(l for _, l in pairs)} smiling)")
    if not pairs:
        say(result["reason"])
        return result
    candidate = settings.project_path(config.work_dir) / f"candidate-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.pt"
    report = fine_tune(current, pairs, candidate, config.data_root, config.datasets, epochs=config.epochs, limit=config.limit,
                       lr=config.lr, feedback_share=config.feedback_share, threads=config.threads, distill=config.distill,
                       click_noise=config.click_noise, progress=progress)
    result.update(candidate=str(candidate), candidate_version=report["version"])
    say(f"candidate {candidate} (version {report['version']})")
    sets = evaluate.load_sets(config.data_root, datasets=available_test_sets(config.data_root), split="test",
                              limit=config.limit, progress=progress)
    result["before"] = evaluate.summaries(evaluate.evaluate(current, sets))
    result["after"] = evaluate.summaries(evaluate.evaluate(candidate, sets))
    result["changes"] = changes(result["before"], result["after"])
    allowed, result["reason"] = should_promote(result["before"], result["after"], config.max_drop)
    if allowed and config.promote:
        result["promoted_path"] = str(promote(candidate, settings.models_dir(config.models_dir)))
        result["promoted"] = True
    elif allowed:
        result["reason"] += "; not copied to the models folder (promotion not asked for)"
    say(result["reason"])
    return result


def agreement_over_time(rows: list[dict], window: int = 20) -> list[dict]:
    """Rolling agreement between prediction and the user's answer, oldest first: [{n, created_at, agreement}]."""
    rows = sorted((r for r in rows if r.get("true_smiling") is not None), key=lambda r: (str(r["created_at"]), r["id"]))
    agree = np.array([bool(r["predicted_smiling"]) == bool(r["true_smiling"]) for r in rows], dtype=float)
    points = []
    for i, row in enumerate(rows):
        recent = agree[max(0, i + 1 - window) : i + 1]
        points.append({"n": i + 1, "created_at": row["created_at"], "agreement": float(recent.mean())})
    return points
