"""Each notebook run end to end on small parameters (papermill; nbval for the exploration notebook)."""
from __future__ import annotations

import io
import json
import subprocess
import sys

import nbformat
import numpy as np
import pytest

from conftest import ROOT

papermill = pytest.importorskip("papermill")

from smilekit.learn import evaluate, metrics

NOTEBOOKS = ROOT / "notebooks"
LIMIT = 60  # images per dataset and split: the same everywhere, so face crops are cut once per session
pytestmark = pytest.mark.slow


def run(name: str, out_dir, **parameters):
    """Execute notebooks/<name> with papermill into ``out_dir``; returns the executed notebook."""
    out = out_dir / name
    papermill.execute_notebook(str(NOTEBOOKS / name), str(out), parameters=parameters, cwd=str(NOTEBOOKS),
                               kernel_name="python3", progress_bar=False)
    return nbformat.read(out, as_version=4)


def errors(nb) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]


def test_every_notebook_has_a_parameters_cell_and_is_committed_clean_or_run():
    for path in sorted(NOTEBOOKS.glob("[0-9][0-9]-*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{path.name}: exactly one cell tagged 'parameters'"
        for line in tagged[0].source.splitlines():
            assert "#" in line, f"{path.name}: parameter without a comment: {line}"
        for cell in nb.cells:
            if cell.cell_type == "code" and cell.get("outputs"):
                assert cell.execution_count, f"{path.name}: stored output without an execution count"


@pytest.fixture(scope="session")
def session_env(tmp_path_factory, shared_data):
    """The environment the conftest gives each test, also for session fixtures (same face-crop cache)."""
    state = tmp_path_factory.getbasetemp() / "state"
    with pytest.MonkeyPatch.context() as mp:
        for var, sub in (("SMILEKIT_CACHE", "cache"), ("JUPYTER_CONFIG_DIR", "jupyter-config"), ("JUPYTER_DATA_DIR", "jupyter-data"),
                         ("JUPYTER_RUNTIME_DIR", "jupyter-runtime"), ("IPYTHONDIR", "ipython"), ("MPLCONFIGDIR", "mpl")):
            (state / sub).mkdir(parents=True, exist_ok=True)
            mp.setenv(var, str(state / sub))
        mp.setenv("SMILEKIT_MODELS_DIR", str(state / "no-promoted-models"))
        mp.setenv("SMILEKIT_DATA", str(shared_data))
        yield


@pytest.fixture(scope="session")
def trained(session_env, tmp_path_factory, shared_data):
    """02-train run for one epoch on a few hundred images: (executed notebook, checkpoint, folder)."""
    folder = tmp_path_factory.mktemp("train")
    nb = run("02-train.ipynb", folder, data_root=str(shared_data), epochs=1, batch_size=32, limit=LIMIT,
             out=str(folder / "model.pt"), figures_dir=str(folder / "figures"))
    return nb, folder / "model.pt", folder


def test_train_notebook_writes_a_loadable_checkpoint_metrics_and_curves(trained, shared_data):
    from smilekit.learn.model import load_checkpoint

    nb, checkpoint, folder = trained
    assert not errors(nb)
    model, meta = load_checkpoint(checkpoint)
    assert meta["arch"] == "smilenet" and meta["temperature"] > 0
    report = json.loads(checkpoint.with_suffix(".json").read_text())
    assert report["config"]["epochs"] == 1 and len(report["history"]) == 1
    rescored = evaluate.summaries(evaluate.evaluate(checkpoint, evaluate.load_sets(shared_data, limit=LIMIT)))
    for name, figures in report["test"].items():  # the figures shown are those of the checkpoint written
        assert figures["n"] == LIMIT and figures["accuracy"] == pytest.approx(rescored[name]["accuracy"])
    assert (folder / "figures" / "curves-smilenet.png").stat().st_size > 0


@pytest.mark.parametrize("with_baseline", [True, False])
def test_evaluate_notebook_writes_metrics_and_figures(trained, tmp_path, shared_data, with_baseline):
    from smilekit.learn.model import SeedCNN, save_checkpoint

    _, checkpoint, _ = trained
    baseline = tmp_path / "seedcnn.pt"
    if with_baseline:
        save_checkpoint(baseline, SeedCNN(), "seedcnn")  # untrained: only the table layout is under test
    nb = run("03-evaluate.ipynb", tmp_path, data_root=str(shared_data), model=str(checkpoint), baseline=str(baseline),
             limit=LIMIT, n_mistakes=4, n_saliency=2, metrics_out=str(tmp_path / "evaluate.json"), figures_dir=str(tmp_path / "figures"))
    assert not errors(nb)
    result = json.loads((tmp_path / "evaluate.json").read_text())
    evals = evaluate.evaluate(checkpoint, evaluate.load_sets(shared_data, limit=LIMIT))
    for name, figures in evaluate.summaries(evals).items():  # the table is the checkpoint's, scored afresh
        assert result["test"][name] == pytest.approx(figures)
    labels = np.concatenate([e.labels for e in evals.values()])
    for key, probs in (("ece_before_temperature", [e.raw_probabilities for e in evals.values()]),
                       ("ece_after_temperature", [e.probabilities for e in evals.values()])):
        assert result[key] == pytest.approx(metrics.reliability(labels, np.concatenate(probs))["ece"])
    assert set(result["per_group"]) == {"male", "not male"}
    low, high = result["male_gap_interval"]
    gap = result["per_group"]["male"]["accuracy"] - result["per_group"]["not male"]["accuracy"]
    assert low <= gap <= high
    assert (result["baseline"] is not None) == with_baseline
    printed = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert ("No baseline checkpoint" in printed) != with_baseline
    for name in ("roc", "confusion", "reliability", "groups", "saliency", "mistakes-celeba-subset"):
        assert (tmp_path / "figures" / f"{name}.png").stat().st_size > 0


@pytest.fixture
def feedback_db(trained, tmp_path, celeba_dir):
    """A SQLite feedback database filled through FeedbackStore with real faces the model classified."""
    from smilekit.learn.data import load_celeba_subset, select
    from smilekit.store.feedback import FeedbackStore, photo_hash
    from smilekit.predict import Predictor

    _, checkpoint, _ = trained
    predictor = Predictor(checkpoint)
    url = f"sqlite:///{tmp_path / 'feedback.db'}"
    store = FeedbackStore(url)
    for i, sample in enumerate(select(load_celeba_subset(celeba_dir), "val", 24)):
        data = sample.path.read_bytes()
        for face in predictor.predict(data).faces:
            png = io.BytesIO()
            face.crop.save(png, format="PNG")
            store.record(session_id=f"s{i % 3}", photo_sha256=photo_hash(data), face_index=face.index,
                         box=face.box.as_tuple(), probability=face.probability, model_version=predictor.version,
                         correct=face.smiling == bool(sample.smiling), crop_png=png.getvalue() if i % 4 else None)
    store.close()
    return url, checkpoint, predictor.version


@pytest.mark.parametrize("max_drop", [1.0, -1.0], ids=["promoted", "refused"])
def test_feedback_notebook_fine_tunes_and_honours_the_promote_decision(feedback_db, tmp_path, shared_data, max_drop, monkeypatch):
    from smilekit.learn.model import load_checkpoint
    from smilekit.runtime import default_model_path
    from smilekit.learn.retrain import should_promote

    url, checkpoint, version = feedback_db
    models = tmp_path / "models"
    nb = run("04-feedback.ipynb", tmp_path, db_url=url, data_root=str(shared_data), model=str(checkpoint), models_dir=str(models),
             epochs=1, limit=LIMIT, max_drop=max_drop, promote=True, work_dir=str(tmp_path / "work"),
             metrics_out=str(tmp_path / "feedback.json"), figures_dir=str(tmp_path / "figures"))
    assert not errors(nb)
    result = json.loads((tmp_path / "feedback.json").read_text())
    assert result["model_version"] == version
    assert result["feedback"]["count"] >= 20 and result["consented_crops"] >= 10
    assert result["candidate_version"] and result["candidate_version"] != version
    assert result["flagged_sessions"] == []  # every click in the fixture tells the truth
    assert load_checkpoint(result["candidate"])[1]["version"] == result["candidate_version"]
    decision, _ = should_promote(result["before"], result["after"], max_drop)
    assert result["promoted"] == decision == (max_drop > 0)
    promoted = sorted(models.glob("*.pt")) if models.is_dir() else []
    if decision:
        assert len(promoted) == 1 and load_checkpoint(promoted[0])[1]["version"] == result["candidate_version"]
        monkeypatch.setenv("SMILEKIT_MODELS_DIR", str(models))
        assert default_model_path() == promoted[0]
        from smilekit.store.feedback import FeedbackStore
        from smilekit.app.ui import SmileApp

        app = SmileApp(store=FeedbackStore(url))  # the app picks the promoted version with no code change
        assert app.predictor.version == result["candidate_version"]
    else:
        assert promoted == []
    for name in ("agreement", "feedback-confusion", "consented-crops"):
        assert (tmp_path / "figures" / f"{name}.png").stat().st_size > 0


def test_explore_notebook_matches_its_stored_outputs_with_nbval(session_env, tmp_path):
    """nbval --nbval-lax re-runs 01-explore and compares the cells marked NBVAL_CHECK_OUTPUT (class balance, sizes)."""
    nb = nbformat.read(NOTEBOOKS / "01-explore.ipynb", as_version=4)
    assert any("NBVAL_CHECK_OUTPUT" in c.source and c.get("outputs") for c in nb.cells), "run the notebook before committing it"
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params.source = params.source.replace('"outputs/figures/explore"', repr(str(tmp_path / "figures")))
    copy = tmp_path / "01-explore.ipynb"
    nbformat.write(nb, copy)
    result = subprocess.run([sys.executable, "-m", "pytest", "--nbval-lax", "-p", "no:cacheprovider", "-q", str(copy)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert (tmp_path / "figures" / "detections.png").is_file()
