"""Choosing the model, and running its ONNX export without torch."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from smilekit.learn import model as M
from smilekit import runtime as R
from smilekit.predict import Predictor


def _net_with_batchnorm_statistics(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    net = M.build_model(arch).eval()
    with torch.no_grad():
        for m in net.modules():  # non-trivial statistics, so folding them matters
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    return net


@pytest.mark.parametrize("backend", R.BACKENDS)
@pytest.mark.parametrize("arch", sorted(M.ARCHITECTURES))
def test_export_gives_the_torch_logits(tmp_path, arch, backend):
    net = _net_with_batchnorm_statistics(arch)
    M.save_checkpoint(tmp_path / "m.pt", net, arch, temperature=1.5)
    exported = R.ExportedModel.of_checkpoint(tmp_path / "m.pt", backend=backend)
    assert exported is not None and exported.meta["temperature"] == 1.5 and exported.meta["arch"] == arch
    assert exported.backend == backend
    x = np.random.default_rng(0).random((300, 1, 64, 64), dtype=np.float32)  # more than one batch of 256
    np.testing.assert_allclose(exported.logits(x), M.logits_of(net, torch.from_numpy(x)), atol=1e-4)
    assert exported.logits(x[:0]).shape == (0,)


def test_onnxruntime_follows_the_thread_count_set_after_loading(tmp_path):
    M.save_checkpoint(tmp_path / "m.pt", M.build_model("smilenet"), "smilenet")
    exported = R.ExportedModel.of_checkpoint(tmp_path / "m.pt", backend="onnxruntime")
    x = np.random.default_rng(0).random((4, 1, 64, 64), dtype=np.float32)
    try:
        for threads in (1, 2):
            R.set_threads(threads)
            exported.logits(x)
            assert exported.session_threads == threads
    finally:
        R.set_threads(2)


def test_an_unknown_runtime_is_refused_by_name(tmp_path):
    M.save_checkpoint(tmp_path / "m.pt", M.build_model("smilenet"), "smilenet")
    with pytest.raises(ValueError, match="tensorrt"):
        R.ExportedModel.of_checkpoint(tmp_path / "m.pt", backend="tensorrt")


def test_predictor_runs_the_export_and_falls_back_to_torch_when_it_is_stale(tmp_path):
    path = tmp_path / "m.pt"
    M.save_checkpoint(path, _net_with_batchnorm_statistics("smilenet"), "smilenet", temperature=2.0)
    crops = [np.random.default_rng(i).integers(0, 256, (64, 64), dtype=np.uint8) for i in range(3)]
    fast = Predictor(path)
    assert fast.runtime == "onnx"
    # a checkpoint replaced by other weights without a new export must not be served by the old export
    other = _net_with_batchnorm_statistics("smilenet")
    with torch.no_grad():
        other.head[-1].bias.add_(3.0)  # clearly different answers
    torch.save(dict(torch.load(path, weights_only=True), state_dict=other.state_dict()), path)
    assert R.ExportedModel.of_checkpoint(path) is None
    fallback = Predictor(path)
    assert fallback.runtime == "torch"
    assert fallback.saliency(Image.fromarray(crops[0])).shape == (64, 64)  # the loaded checkpoint serves saliency too
    assert not np.allclose(fast.predict_proba(crops), fallback.predict_proba(crops), atol=1e-3)
    M.save_checkpoint(path, other, "smilenet", temperature=2.0)
    np.testing.assert_allclose(Predictor(path).predict_proba(crops), fallback.predict_proba(crops), atol=1e-5)


def test_the_shipped_model_has_a_current_export():
    if not R.SHIPPED_MODEL.is_file():
        pytest.fail("the shipped model smilekit/weights/model.pt is missing")
    exported = R.ExportedModel.of_checkpoint(R.SHIPPED_MODEL)
    assert exported is not None, "smilekit/weights/model.onnx is missing or older than model.pt: re-export it"
    assert exported.meta["version"] == M.load_checkpoint(R.SHIPPED_MODEL)[1]["version"]


def test_the_app_classifies_without_importing_torch():
    code = ("import sys, numpy as np; from smilekit.app.ui import SmileApp; "
            "app = SmileApp(); p = app.predictor.predict_proba([np.zeros((64, 64), np.uint8)]); "
            "print(app.predictor.runtime, 'torch' in sys.modules, 'sklearn' in sys.modules, p.shape)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, SMILEKIT_DB_URL="sqlite://"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["onnx", "False", "False", "(1,)"]  # nor scikit-learn (learning code only)


def test_default_model_prefers_env_then_newest_promoted(tmp_path, monkeypatch):
    assert R.default_model_path() == R.SHIPPED_MODEL
    monkeypatch.setenv("SMILEKIT_MODELS_DIR", str(tmp_path))
    for i, name in enumerate(("a.pt", "b.pt")):
        (tmp_path / name).write_bytes(b"x")
        os.utime(tmp_path / name, (1000 + i, 1000 + i))
    assert R.default_model_path() == tmp_path / "b.pt"
    monkeypatch.setenv("SMILEKIT_MODEL", str(tmp_path / "a.pt"))
    assert R.default_model_path() == tmp_path / "a.pt"


def test_grey_is_pils_and_crops_take_the_channels_the_network_reads():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    assert all(np.array_equal(R.grey(c), np.asarray(Image.fromarray(c).convert("L"))) for c in rgb)
    assert np.array_equal(R.with_channels(rgb, 1), R.grey(rgb)) and np.array_equal(R.with_channels(rgb, 3), rgb)
    spread = R.with_channels(R.grey(rgb), 3)
    assert spread.shape == rgb.shape and (spread == spread[..., :1]).all()  # grey in all three channels
    x = R.crops_to_array([Image.fromarray(rgb[0]), rgb[1], R.grey(rgb[2])], channels=3)
    assert x.shape == (3, 3, 64, 64) and np.allclose(x[0, 0], rgb[0, ..., 0] / 255) and np.allclose(x[0, 2], rgb[0, ..., 2] / 255)
    assert np.allclose(x[2], R.grey(rgb[2]) / 255)
    assert np.allclose(R.crops_to_array([Image.fromarray(rgb[0])])[0, 0], R.grey(rgb[0]) / 255)  # a grey network: grey
    assert R.crops_to_array([], channels=3).shape == (0, 3, 64, 64)


@pytest.fixture(scope="module")
def colour_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("colour") / "colour.pt"
    torch.manual_seed(0)
    M.save_checkpoint(path, M.build_model("litenet", colour=True), "litenet", temperature=1.3)
    return path


def test_a_colour_model_is_served_from_its_export_on_rgb_crops(colour_checkpoint):
    net, _ = M.load_checkpoint(colour_checkpoint)
    predictor = Predictor(colour_checkpoint)
    assert predictor.runtime == "onnx" and predictor.channels == 3 and predictor.crop_mode == "RGB"
    rgb = [np.random.default_rng(i).integers(0, 256, (64, 64, 3), dtype=np.uint8) for i in range(3)]
    expected = R.probabilities(M.logits_of(net, M.crops_to_tensor(rgb, 3)), 1.3)
    np.testing.assert_allclose(predictor.predict_proba(rgb), expected, atol=1e-4)
    assert not np.allclose(predictor.predict_proba([R.grey(c) for c in rgb]), expected, atol=1e-4)  # colour is read
    face = R.grey(rgb[0])  # a grey crop (e.g. stored feedback) is read as grey in all three channels
    np.testing.assert_allclose(predictor.predict_proba([face]), predictor.predict_proba([R.with_channels(face[None], 3)[0]]))
    assert predictor.saliency(Image.fromarray(rgb[0])).shape == (64, 64)
