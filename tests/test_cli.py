"""The command line on real photos: predict, evaluate, and clear errors for bad files."""
import json
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from smilekit import cli

from conftest import make_collage


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """The shipped model (the CLI's default)."""
    from smilekit.runtime import SHIPPED_MODEL

    if not SHIPPED_MODEL.is_file():
        pytest.fail("the shipped model smilekit/weights/model.pt is missing")
    return SHIPPED_MODEL


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "smilekit", *map(str, args)], capture_output=True, text=True, timeout=300)


def test_predict_json_one_object_per_photo_with_errors_inline(model_path, celeba_dir, tmp_path):
    group = tmp_path / "group.jpg"
    group.write_bytes(make_collage(celeba_dir))  # four faces
    bad = tmp_path / "notes.jpg"
    bad.write_text("this is not a photo")
    result = run_cli("predict", celeba_dir / "img/0.jpg", group, bad, tmp_path / "missing.png", "--json")
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert [len(line.get("faces", [])) for line in lines] == [1, 4, 0, 0]
    face = lines[0]["faces"][0]
    from smilekit.predict import Predictor

    expected = Predictor(model_path).predict(celeba_dir / "img/0.jpg").faces[0]  # the same answer as the package gives
    assert set(face) == {"box", "landmarks", "smiling", "probability"} and face["probability"] == round(expected.probability, 4)
    assert face["smiling"] == (face["probability"] >= 0.5)
    assert "not an image" in lines[2]["error"] and "cannot read" in lines[3]["error"]
    for line in lines[:2]:  # the per-photo summary beside the faces
        smiling = sum(f["smiling"] for f in line["faces"])
        assert line["summary"] == {"faces": len(line["faces"]), "smiling": smiling, "everyone_smiling": smiling == len(line["faces"])}
    assert "summary" not in lines[2] and "summary" not in lines[3]


def test_predict_applies_the_calibration_the_app_serves_and_names_it(model_path, celeba_dir, tmp_path, monkeypatch):
    import os

    from smilekit.calibration import Calibration
    from smilekit.store.feedback import FeedbackStore
    from smilekit.predict import Predictor

    photo = celeba_dir / "img/0.jpg"
    db = tmp_path / "feedback.db"
    monkeypatch.setenv("SMILEKIT_DB_URL", f"sqlite:///{db}")
    plain = run_cli("predict", photo, "--json")
    assert plain.returncode == 0 and not db.exists(), "predicting must not create a feedback database"
    version = Predictor(model_path).meta["version"]
    assert f"model {version} (no calibration)" in plain.stderr
    store = FeedbackStore(os.environ["SMILEKIT_DB_URL"])
    cal = Calibration(1.0, -3.0)
    cal_id = store.save_calibration(version, cal, 100, {"accuracy_before": 0.8, "accuracy_after": 0.85})
    store.close()
    calibrated = run_cli("predict", photo, "--json")
    own = run_cli("predict", photo, "--json", "--no-calibration")
    (p_plain, p_cal, p_own) = (json.loads(r.stdout)["faces"][0]["probability"] for r in (plain, calibrated, own))
    unrounded = Predictor(model_path).predict(photo).faces[0].probability  # the JSON rounds to 4 decimals
    assert p_cal == pytest.approx(float(cal.apply(unrounded)), abs=1e-4) and p_cal < p_plain and p_own == p_plain
    assert json.loads(calibrated.stdout)["model_version"] == f"{version}+c{cal_id}"
    assert f"model {version}+c{cal_id} (calibrated" in calibrated.stderr
    broken = run_cli("predict", photo, "--json", "--db-url", "postgresql+psycopg2://nobody@127.0.0.1:1/none")
    assert broken.returncode == 0 and "cannot read the calibration" in broken.stderr
    assert json.loads(broken.stdout)["faces"][0]["probability"] == p_plain


def test_summary_counts_smiles_and_says_when_everyone_smiles():
    from types import SimpleNamespace as Face

    assert cli.summary([Face(smiling=True), Face(smiling=False), Face(smiling=True)]) == {
        "faces": 3, "smiling": 2, "everyone_smiling": False}
    assert cli.summary([Face(smiling=True)] * 2) == {"faces": 2, "smiling": 2, "everyone_smiling": True}
    assert cli.summary([]) == {"faces": 0, "smiling": 0, "everyone_smiling": False}


def test_predict_readable_output(model_path, celeba_dir):
    result = run_cli("predict", celeba_dir / "img/0.jpg")
    assert result.returncode == 0 and "smiling" in result.stdout and "at (" in result.stdout


def _labelled_folder(root, samples, as_crops):
    for s in samples:
        folder = root / ("smiling" if s.smiling else "not_smiling")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(s.path, folder / s.path.name)


def test_evaluate_photos_through_detection(model_path, celeba_dir, tmp_path):
    from smilekit.learn import data

    samples = data.select(data.load_celeba_subset(celeba_dir), "test", 60)
    _labelled_folder(tmp_path, samples, as_crops=False)
    Image.new("RGB", (200, 200), "gray").save(tmp_path / "smiling" / "blank.png")  # no face: counts as wrong
    result = run_cli("evaluate", tmp_path, "--json")
    figures = json.loads(result.stdout)
    assert set(figures) == {"n", "accuracy", "balanced_accuracy", "roc_auc", "no_face"}
    assert figures["n"] == 61 and figures["no_face"] >= 1
    assert figures["accuracy"] > 0.75 and figures["roc_auc"] > 0.8


def test_evaluate_crops(model_path, smilesmiled_dir, tmp_path):
    from smilekit.learn import data

    samples = data.select(data.load_smilesmiled(smilesmiled_dir), "test", 80)
    _labelled_folder(tmp_path, samples, as_crops=True)
    figures = json.loads(run_cli("evaluate", tmp_path, "--crops", "--json").stdout)
    assert figures["n"] == 80 and figures["no_face"] == 0 and figures["accuracy"] > 0.8


def test_evaluate_missing_layout_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["evaluate", str(tmp_path)]) == 2
    assert "smiling" in capsys.readouterr().err


def test_missing_model_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["predict", "x.jpg", "--model", str(tmp_path / "none.pt")]) == 2
    assert "No model checkpoint" in capsys.readouterr().err


def test_train_command_writes_a_checkpoint(shared_data, tmp_path):
    from smilekit.learn.model import load_checkpoint

    out = tmp_path / "cli-model.pt"
    code = cli.main(["train", "--data-root", str(shared_data), "--epochs", "1", "--limit", "40", "--batch-size", "32",
                     "--datasets", "smilesmiled", "--width", "8", "--out", str(out)])
    assert code == 0 and out.is_file() and out.with_suffix(".json").is_file()
    assert load_checkpoint(out)[1]["arch_kwargs"]["width"] == 8
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["config"]["datasets"] == ["smilesmiled"] and report["test"]["smilesmiled"]["n"] == 40


def test_train_command_passes_litenets_input_size(shared_data, tmp_path):
    from smilekit.learn.model import load_checkpoint

    out = tmp_path / "lite.pt"
    code = cli.main(["train", "--data-root", str(shared_data), "--arch", "litenet", "--input-px", "80", "--epochs", "1",
                     "--limit", "20", "--batch-size", "16", "--draws-per-epoch", "32", "--datasets", "smilesmiled", "--out", str(out)])
    model, meta = load_checkpoint(out)
    assert code == 0 and meta["arch"] == "litenet" and meta["arch_kwargs"]["input_px"] == 80 and model.features.input_px == 80


def test_a_colour_model_trains_and_is_served_on_colour_crops(shared_data, tmp_path, capsys, celeba_dir):
    out = tmp_path / "colour.pt"
    code = cli.main(["train", "--data-root", str(shared_data), "--arch", "litenet", "--colour", "--epochs", "1", "--limit", "20",
                     "--batch-size", "16", "--draws-per-epoch", "32", "--datasets", "mtfl", "--out", str(out)])
    assert code == 0 and "N x 3 x 64 x 64" in out.with_suffix(".onnx.json").read_text()
    capsys.readouterr()
    photo = celeba_dir / "img/0.jpg"
    assert cli.main(["predict", "--json", "--model", str(out), str(photo)]) == 0
    printed = json.loads(capsys.readouterr().out.splitlines()[0])
    from smilekit.predict import Predictor

    face = Predictor(out).predict(photo).faces[0]  # cut in colour, and the CLI gives the package's answer
    assert face.crop.mode == "RGB" and printed["faces"][0]["probability"] == round(face.probability, 4)


def test_train_command_bad_data_root_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["train", "--data-root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_train_command_refuses_an_unknown_dataset(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--datasets", "imagenet"])
    assert exit_info.value.code == 2 and "invalid choice" in capsys.readouterr().err


def _imported(*args) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run ``smilekit ARGS`` with ``python -X importtime``: (the process, the modules it imported)."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "smilekit", *map(str, args)],
                            capture_output=True, text=True, timeout=300)
    return result, [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")]


def test_predict_does_not_import_torch(model_path, celeba_dir):
    """`smilekit predict` runs the ONNX export: torch (about a second to import) stays out of the process."""
    result, imported = _imported("predict", celeba_dir / "img/0.jpg", "--json")
    assert result.returncode == 0 and len(json.loads(result.stdout)["faces"]) == 1
    assert "smilekit.predict" in imported and "cv2" in imported  # the import log is read correctly
    assert "torch" not in imported, "smilekit predict imported torch"


def test_evaluate_on_photos_does_not_import_torch(model_path, smilesmiled_dir, tmp_path):
    from smilekit.learn import data

    _labelled_folder(tmp_path, data.select(data.load_smilesmiled(smilesmiled_dir), "test", 10), as_crops=True)
    result, imported = _imported("evaluate", tmp_path, "--crops", "--json")
    assert result.returncode == 0 and json.loads(result.stdout)["n"] == 10
    assert "smilekit.learn.evaluate" in imported and "torch" not in imported


def test_train_command_refuses_an_unknown_device(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--device", "tpu"])
    assert exit_info.value.code == 2 and "--device: invalid choice: 'tpu'" in capsys.readouterr().err
