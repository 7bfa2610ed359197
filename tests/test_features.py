"""LiteNet trained on cached outputs of its frozen early blocks, on a tiny fake SMILEsmileD."""
import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from smilekit import cli
from smilekit.learn.features import cached_outputs
from smilekit.learn.model import LiteNet, load_checkpoint
from smilekit.runtime import ExportedModel

FREEZE = 14  # of 16 blocks: the rest is quick to train on a CPU


@pytest.fixture(scope="module")
def fake_smilesmiled(tmp_path_factory):
    """A data root with a SMILEsmileD-style folder: 64x64 grey crops, a bright mouth band when smiling."""
    root = tmp_path_factory.mktemp("data")
    folder, rng, rows = root / "smilesmiled", np.random.default_rng(0), []
    for i in range(36):
        smiling, split = i % 2, ("train", "train", "val")[i % 3]
        pixels = rng.integers(60, 120, (64, 64), dtype=np.uint8)
        pixels[44:52, 16:48] = 230 if smiling else 20
        path = f"{'positives' if smiling else 'negatives'}/{i}.png"
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / path)
        rows.append({"path": path, "smiling": smiling, "split": split})
    with open(folder / "split.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "smiling", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return root


@pytest.fixture(scope="module")
def frozen_run(fake_smilesmiled, tmp_path_factory):
    """``smilekit train-frozen`` on the fake faces: (checkpoint path, the report written beside it)."""
    out = tmp_path_factory.mktemp("run") / "lite.pt"
    assert cli.main(["train-frozen", "--data-root", str(fake_smilesmiled), "--datasets", "smilesmiled", "--freeze-blocks", str(FREEZE), "--epochs", "2",
                     "--draws-per-epoch", "64", "--lr", "3e-3", "--out", str(out)]) == 0
    return out, json.loads(out.with_suffix(".json").read_text())


def test_frozen_blocks_keep_their_imagenet_weights_and_the_rest_learns(frozen_run):
    out, report = frozen_run
    trained, meta = load_checkpoint(out)
    start = LiteNet()
    for name, value in start.state_dict().items():
        block = int(name.split(".")[3]) if name.startswith("features.net._blocks.") else None
        if name.startswith(("features.net._conv_stem", "features.net._bn0")) or (block is not None and block < FREEZE):
            assert torch.equal(trained.state_dict()[name], value), name
    assert not torch.equal(trained.features.net._blocks[FREEZE]._project_conv.weight, start.features.net._blocks[FREEZE]._project_conv.weight)
    assert not torch.equal(trained.head[-1].weight, start.head[-1].weight)
    assert meta["arch"] == "litenet" and meta["version"] == report["version"] and meta["temperature"] == report["temperature"]
    assert set(report["val"]) == {"smilesmiled"} and len(report["history"]) == 2 and report["config"]["freeze_blocks"] == FREEZE


def test_the_checkpoint_predicts_through_torch_and_its_onnx_export(frozen_run):
    out, _ = frozen_run
    model, _ = load_checkpoint(out)
    x = torch.rand(4, 1, 64, 64)
    with torch.no_grad():
        logits = model(x)
        assert torch.allclose(model.from_frozen(model.frozen_part(x, FREEZE), FREEZE), logits, atol=1e-5)
    exported = ExportedModel.of_checkpoint(out)
    assert exported is not None and np.allclose(exported.logits(x.numpy()), logits.numpy(), atol=1e-3)


def test_cached_outputs_are_reused_and_carried_on_to_later_blocks(tmp_path):
    model, inputs = LiteNet(), torch.rand(6, 1, 64, 64)
    fewer = cached_outputs(model, inputs, 12, "faces", tmp_path)
    assert fewer.dtype == torch.float16 and len(list(tmp_path.iterdir())) == 1
    assert torch.equal(cached_outputs(model, inputs, 12, "faces", tmp_path), fewer)
    carried = cached_outputs(model, inputs, FREEZE, "faces", tmp_path)  # from the 12-block cache
    with torch.no_grad():
        direct = model.eval().frozen_part(inputs, FREEZE)
    assert len(list(tmp_path.iterdir())) == 2 and torch.allclose(carried.float(), direct, atol=0.05, rtol=0.02)
