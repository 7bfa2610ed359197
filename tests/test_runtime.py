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
