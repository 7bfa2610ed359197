"""smilekit.learn.retrain: feedback crops to training arrays, fine-tuning, the promote rule, promotion."""
from __future__ import annotations

import json
import os
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from smilekit.learn import retrain
from smilekit.learn.data import CONTEXT_SIZE
from smilekit.learn.model import SmileNet, load_checkpoint, save_checkpoint
from smilekit.predict import Predictor
from smilekit.runtime import default_model_path
from smilekit.learn.train import TrainConfig, balanced_weights, reads_colour, train, with_share
from smilekit.learn.model import center


def _summary(**accuracy):
    return {name: {"n": 100, "accuracy": a, "balanced_accuracy": a, "roc_auc": a} for name, a in accuracy.items()}


def test_feedback_crops_are_padded_so_the_model_crop_is_unchanged():
    rng = np.random.default_rng(0)
    face = rng.integers(0, 256, (64, 64), dtype=np.uint8)
    crops, labels = retrain.feedback_arrays([(Image.fromarray(face), 1), (face, 0)])
    assert crops.shape == (2, CONTEXT_SIZE, CONTEXT_SIZE) and crops.dtype == np.uint8
    assert list(labels) == [1, 0]
    # the training pipeline's centre crop gives back exactly the crop the app showed
    np.testing.assert_array_equal((center(torch.from_numpy(crops))[0, 0].numpy() * 255).round(), face)
    # the border repeats the edge pixels
    np.testing.assert_array_equal(crops[0, 0, 8:72], face[0])
    np.testing.assert_array_equal(crops[0, 8:72, 0], face[:, 0])


def test_feedback_arrays_resize_and_empty():
    crops, labels = retrain.feedback_arrays([(Image.new("RGB", (100, 100), "white"), 1)])
    assert crops.shape == (1, CONTEXT_SIZE, CONTEXT_SIZE) and list(labels) == [1] and (crops == 255).all()
    crops, labels = retrain.feedback_arrays([])
    assert crops.shape == (0, CONTEXT_SIZE, CONTEXT_SIZE) and len(labels) == 0


def test_promote_when_nothing_drops_more_than_half_a_point():
    before = _summary(a=0.90, b=0.80)
    assert retrain.should_promote(before, _summary(a=0.91, b=0.80))[0]
    assert retrain.should_promote(before, _summary(a=0.896, b=0.85))[0]  # -0.4 point is tolerated
    ok, reason = retrain.should_promote(before, _summary(a=0.894, b=0.95))  # -0.6 point on a
    assert not ok and "a -0.60 points" in reason


def test_promote_needs_every_test_set_and_honours_the_threshold_argument():
    before = _summary(a=0.9, b=0.8)
    assert not retrain.should_promote(before, _summary(a=0.95))[0]
    assert not retrain.should_promote({}, {})[0]
    assert retrain.should_promote(before, _summary(a=0.85, b=0.8), max_drop=0.1)[0]
    assert not retrain.should_promote(before, _summary(a=0.9, b=0.8), max_drop=-0.01)[0]
    assert retrain.changes(before, _summary(a=0.95, b=0.7)) == pytest.approx({"a": 0.05, "b": -0.1})


def test_promote_copies_with_a_fresh_name_that_the_app_picks(tmp_path, monkeypatch):
    models = tmp_path / "models"
    old = tmp_path / "old.pt"
    save_checkpoint(old, SmileNet(width=4), "smilenet", {"width": 4})
    first = retrain.promote(old, models)
    os.utime(first, (time.time() - 100, time.time() - 100))
    torch.manual_seed(1)
    new = tmp_path / "new.pt"
    meta = save_checkpoint(new, SmileNet(width=4), "smilenet", {"width": 4})
    os.utime(new, (time.time() - 1000, time.time() - 1000))  # an old file must still become the newest model
    second = retrain.promote(new, models)
    assert second.name.endswith(f"-{meta['version']}.pt") and second.read_bytes() == new.read_bytes()
    assert not list(models.glob("*.tmp"))
    monkeypatch.setenv("SMILEKIT_MODELS_DIR", str(models))
    assert default_model_path() == second
    assert Predictor().runtime == "onnx" and Predictor().version == meta["version"]  # its export came along


def test_agreement_over_time_is_a_rolling_rate_oldest_first():
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    rows = [{"id": i, "created_at": start + timedelta(minutes=i), "predicted_smiling": True, "true_smiling": i >= 2}
            for i in range(4)]
    points = retrain.agreement_over_time(list(reversed(rows)), window=2)
    assert [p["n"] for p in points] == [1, 2, 3, 4]
    assert [p["agreement"] for p in points] == [0.0, 0.0, 0.5, 1.0]
    assert retrain.agreement_over_time([]) == []


@pytest.mark.slow
def test_fine_tune_on_real_faces_changes_the_model(shared_data, tmp_path):
    base = tmp_path / "base.pt"
    torch.manual_seed(0)
    save_checkpoint(base, SmileNet(), "smilenet", temperature=1.0, data={"smilesmiled": {"train": 40}})
    rng = np.random.default_rng(0)
    pairs = [(Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)), i % 2) for i in range(6)]
    report = retrain.fine_tune(base, pairs, tmp_path / "tuned.pt", shared_data, epochs=1, limit=40, progress=False)
    assert report["extra_train_images"] == 6
    assert report["config"]["datasets"] == ("smilesmiled",)  # what the base was trained on, nothing it never saw
    assert report["config"]["extra_share"] == retrain.RetrainConfig.feedback_share
    assert report["config"]["init_from"] == str(base)
    _, meta = load_checkpoint(tmp_path / "tuned.pt")
    assert meta["version"] == report["version"] != load_checkpoint(base)[1]["version"]


def test_feedback_gets_its_share_of_the_draws_whatever_its_size():
    weights = balanced_weights(np.array([0, 1] * 50 + [0, 1]), np.array(["a"] * 100 + ["feedback"] * 2), source_balance="equal")
    feedback = np.arange(102) >= 100
    for share in (0.2, 0.5):
        shared = with_share(weights, feedback, share)
        assert shared[feedback].sum() == pytest.approx(share) and shared.sum() == pytest.approx(1)
        assert shared[feedback][0] == pytest.approx(shared[feedback][1])  # still balanced between the classes
        np.testing.assert_allclose(shared[~feedback] / shared[~feedback].sum(), weights[~feedback] / weights[~feedback].sum())
    np.testing.assert_allclose(with_share(weights, np.zeros(102, bool), 0.5), weights)  # no feedback, nothing to share
    with pytest.raises(ValueError):
        with_share(weights, feedback, 1.5)


def test_fine_tune_keeps_the_base_architecture_and_its_settings(shared_data, tmp_path):
    base = tmp_path / "narrow.pt"
    save_checkpoint(base, SmileNet(width=8), "smilenet", {"width": 8})
    retrain.fine_tune(base, [], tmp_path / "tuned.pt", shared_data, datasets=("smilesmiled",), epochs=1, limit=20, progress=False)
    model, meta = load_checkpoint(tmp_path / "tuned.pt")
    assert meta["arch"] == "smilenet" and meta["arch_kwargs"] == {"width": 8}
    assert model.head[-1].in_features == 64  # 8 * 2**3 channels, as in the base


def test_a_colour_base_is_fine_tuned_in_colour_on_grey_feedback_crops(shared_data, tmp_path):
    from smilekit.learn.model import build_model

    base = tmp_path / "colour.pt"
    torch.manual_seed(0)
    save_checkpoint(base, build_model("litenet", colour=True), "litenet", data={"mtfl": {"train": 20}})
    grey = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)  # feedback crops are stored grey
    feedback = retrain.feedback_arrays([(Image.fromarray(grey), 1), (Image.fromarray(255 - grey), 0)])
    config = TrainConfig(data_root=str(shared_data), datasets=("mtfl",), epochs=1, limit=20, draws_per_epoch=32, batch_size=16,
                         init_from=str(base), extra_train=[feedback], extra_share=0.5, out=str(tmp_path / "tuned.pt"))
    assert reads_colour(config)  # from the base checkpoint, as fine_tune's config names no architecture
    report = train(config, progress=False)
    model, meta = load_checkpoint(tmp_path / "tuned.pt")
    assert report["extra_train_images"] == 2 and meta["arch_kwargs"]["colour"] and model.channels == 3
    assert meta["preprocessing"].split(", ")[1] == "RGB"


def test_fine_tune_passes_the_forgetting_settings_to_training(tmp_path, monkeypatch):
    base = tmp_path / "base.pt"
    save_checkpoint(base, SmileNet(width=4), "smilenet", {"width": 4}, data={"smilesmiled": {"train": 40}})
    seen = []
    monkeypatch.setattr(retrain, "train", lambda config, progress: seen.append(config) or {})
    retrain.fine_tune(base, [], tmp_path / "tuned.pt", tmp_path, distill=0.5, click_noise=0.2, progress=False)
    retrain.fine_tune(base, [], tmp_path / "tuned.pt", tmp_path, progress=False)
    assert (seen[0].distill, seen[0].init_from, seen[0].extra_noise) == (0.5, str(base), 0.2)
    assert (seen[1].distill, seen[1].extra_noise) == (retrain.RetrainConfig.distill, retrain.RetrainConfig.click_noise)


@pytest.mark.parametrize("flags, expected", [([], {"distill": retrain.RetrainConfig.distill}), (["--distill", "2.5"], {"distill": 2.5}),
                                             (["--distill", "0"], {"distill": 0.0}), (["--click-noise", "0.2"], {"click_noise": 0.2}),])
def test_retrain_command_takes_the_forgetting_settings(flags, expected, monkeypatch, capsys):
    from smilekit import cli

    seen = []
    empty = {"candidate": None, "promoted": False, "before": {}, "after": {}, "feedback": 0,
             "calibration": {"verdicts": 0, "kept": False, "id": None, "slope": None, "offset": None, "scores": {}}}
    monkeypatch.setattr(retrain, "retrain", lambda config, **kwargs: seen.append(config) or empty)
    assert cli.main(["retrain", "--quiet", *flags]) == 0
    assert {key: getattr(seen[0], key) for key in expected} == expected


# -- the retrain command, end to end on a small run ----------------------------------------------------------------

def _feedback_db(tmp_path, smilesmiled_dir, consented: int, without_crop: int = 2) -> str:
    """An SQLite feedback database with real SMILEsmileD faces clicked Correct / Incorrect through FeedbackStore."""
    import csv
    import io

    from smilekit.store.feedback import FeedbackStore

    with open(smilesmiled_dir / "split.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "train"][: consented + without_crop]
    url = f"sqlite:///{tmp_path / 'feedback.db'}"
    store = FeedbackStore(url)
    for i, row in enumerate(rows):
        face = Image.open(smilesmiled_dir / row["path"]).convert("L")
        png = io.BytesIO()
        face.save(png, format="PNG")
        probability = 0.8 if i % 3 else 0.2  # the model's answer; the click says whether it matched the true label
        store.record(session_id=f"s{i % 2}", photo_sha256=f"{i:064x}", face_index=0, box=(0, 0, 64, 64),
                     probability=probability, model_version="m1", correct=(probability >= 0.5) == bool(int(row["smiling"])),
                     crop_png=png.getvalue() if i < consented else None)
    store.close()
    return url


def test_retrain_command_fine_tunes_on_feedback_compares_and_promotes(shared_data, smilesmiled_dir, model_path, tmp_path, capsys):
    from smilekit import cli
    from smilekit.learn import evaluate

    url = _feedback_db(tmp_path, smilesmiled_dir, consented=12)
    models, work = tmp_path / "models", tmp_path / "work"
    code = cli.main(["retrain", "--db", url, "--data-root", str(shared_data), "--model", str(model_path), "--models-dir",
                     str(models), "--work-dir", str(work), "--epochs", "1", "--limit", "24", "--max-drop", "1", "--promote", "--quiet"])
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert code == 0 and set(result) == {"candidate", "promoted", "before", "after", "feedback", "calibration"}
    assert result["feedback"] == 12  # the two verdicts stored without a crop are not learned from
    candidate = Path(result["candidate"])
    assert candidate.parent == work and candidate.is_file()
    assert load_checkpoint(candidate)[1]["version"] != load_checkpoint(model_path)[1]["version"]
    # before / after are the current model and the candidate on every test split under the data root
    sets = evaluate.load_sets(shared_data, datasets=retrain.available_test_sets(shared_data), split="test", limit=24)
    for key, checkpoint in (("before", model_path), ("after", candidate)):
        expected = {name: s["accuracy"] for name, s in evaluate.summaries(evaluate.evaluate(checkpoint, sets)).items()}
        assert result[key] == pytest.approx(expected)
    assert set(result["before"]) >= {"smilesmiled", "celeba-subset"}
    # promoted: the models folder holds a copy of the candidate, which the app now serves
    assert result["promoted"] is True
    (promoted,) = models.glob("*.pt")
    assert promoted.read_bytes() == candidate.read_bytes()


def test_retrain_refused_by_the_rule_writes_the_candidate_only(shared_data, smilesmiled_dir, model_path, tmp_path):
    url = _feedback_db(tmp_path, smilesmiled_dir, consented=6)
    models = tmp_path / "models"
    config = retrain.RetrainConfig(db_url=url, data_root=str(shared_data), model=str(model_path), models_dir=str(models),
                                   work_dir=str(tmp_path / "work"), epochs=1, limit=24, max_drop=-1.0, promote=True)
    said = []
    result = retrain.retrain(config, progress=False, say=said.append)
    assert result["feedback"] == 6 and Path(result["candidate"]).is_file()
    assert result["promoted"] is False and result["promoted_path"] is None and not models.exists()
    assert said[-1] == result["reason"] and result["reason"].startswith("refused")


def test_retrain_without_consented_feedback_trains_nothing(shared_data, smilesmiled_dir, tmp_path, capsys):
    from smilekit import cli

    url = _feedback_db(tmp_path, smilesmiled_dir, consented=0, without_crop=3)
    code = cli.main(["retrain", "--db", url, "--data-root", str(shared_data), "--work-dir", str(tmp_path / "work"), "--promote"])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and "nothing to learn from" in out[-2]
    assert json.loads(out[-1]) == {"candidate": None, "promoted": False, "before": {}, "after": {}, "feedback": 0,
                                   "calibration": {"verdicts": 0, "kept": False, "id": None, "slope": None, "offset": None,
                                                   "scores": {}}}  # its verdicts are on another model's answers
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize("url, said", [("nonsense", "not a database URL"),
                                       ("postgresql+psycopg2://nobody@127.0.0.1:1/none", "cannot read the feedback database")])
def test_retrain_command_bad_database_is_a_clear_error(url, said, capsys):
    from smilekit import cli

    assert cli.main(["retrain", "--db", url]) == 2
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err
