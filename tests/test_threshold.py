"""The decision threshold comes from the checkpoint (its ``threshold``), not a 0.5 written in the code."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from smilekit import cli
from smilekit.learn import evaluate
from smilekit.app import ui
from smilekit.learn.data import CONTEXT_SIZE
from smilekit.store.feedback import FeedbackStore, Verdict
from smilekit.learn.model import load_checkpoint, save_checkpoint
from smilekit.predict import Predictor


@pytest.fixture(scope="module")
def shifted(model_path, celeba_dir, tmp_path_factory):
    """The shipped weights saved with a threshold on the other side of one real face's probability than 0.5.

    Returns (checkpoint, threshold, that face's photo, its probability): at 0.5 the face gets one label, at the
    stored threshold the other.
    """
    photo = celeba_dir / "img" / "0.jpg"
    probability = Predictor(model_path).predict(photo.read_bytes()).faces[0].probability
    threshold = probability + 0.02 if probability >= 0.5 else probability - 0.02
    model, meta = load_checkpoint(model_path)
    path = tmp_path_factory.mktemp("threshold") / "shifted.pt"
    save_checkpoint(path, model, meta["arch"], meta["arch_kwargs"], temperature=meta["temperature"], threshold=threshold)
    return path, threshold, photo, probability


def test_predictor_decides_with_the_stored_threshold(shifted):
    path, threshold, photo, probability = shifted
    predictor = Predictor(path)
    assert predictor.runtime == "onnx" and predictor.threshold == pytest.approx(threshold)  # read from the export's metadata
    (face,) = predictor.predict(photo.read_bytes()).faces
    assert face.probability == pytest.approx(probability, abs=1e-5)
    assert face.smiling == (probability < 0.5)  # the other label than 0.5 would give
    assert face.label == ("Smiling" if face.smiling else "Not smiling")


def test_cli_predict_uses_the_stored_threshold(shifted, capsys):
    path, _, photo, probability = shifted
    assert cli.main(["predict", str(photo), "--model", str(path), "--json"]) == 0
    (face,) = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["faces"]
    assert face["smiling"] == (probability < 0.5)


def test_app_shows_and_stores_the_label_of_the_stored_threshold(shifted, tmp_path):
    path, _, photo, probability = shifted
    store = FeedbackStore(f"sqlite:///{tmp_path / 'feedback.db'}")
    app = ui.SmileApp(predictor=Predictor(path), store=store)
    app.handle_upload([("face.jpg", photo.read_bytes())])
    shown = app.photos[0].cards[0].face
    assert shown.smiling == (probability < 0.5)
    app.give_feedback(0, 0, correct=True)
    with Session(store.engine) as session:
        row = session.execute(select(Verdict)).scalar_one()
    assert row.predicted_smiling == row.true_smiling == (probability < 0.5)
    store.close()


def test_evaluation_counts_with_the_stored_threshold(shifted):
    path, threshold, _, _ = shifted
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (40, CONTEXT_SIZE, CONTEXT_SIZE), dtype=np.uint8)
    labels = np.arange(40) % 2
    (e,) = evaluate.evaluate(path, {"toy": evaluate.FaceSet("toy", crops, labels, None, [])}).values()
    assert e.threshold == pytest.approx(threshold)
    assert e.summary()["accuracy"] == np.mean((e.probabilities >= threshold) == labels)


def test_feedback_store_derives_the_truth_with_the_given_threshold(tmp_path):
    store = FeedbackStore(f"sqlite:///{tmp_path / 'feedback.db'}")
    common = dict(photo_sha256="a" * 64, box=(0, 0, 10, 10), model_version="m", probability=0.6)
    store.record(session_id="s", face_index=0, correct=True, threshold=0.7, **common)
    store.record(session_id="s", face_index=1, correct=True, **common)  # a checkpoint without a threshold: 0.5
    assert [(r["predicted_smiling"], r["true_smiling"]) for r in sorted(store.rows(), key=lambda r: r["face_index"])] == [
        (False, False), (True, True)]
    store.close()
