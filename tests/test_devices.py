"""Training devices and multi-process training under torchrun (gloo on the CPU)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from smilekit.learn.devices import pick_device
from smilekit.learn.model import load_checkpoint


def test_auto_picks_what_is_present_and_a_missing_device_is_a_clear_error():
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert pick_device("auto").type == expected
    assert pick_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="not available"):
            pick_device("cuda")
    with pytest.raises(ValueError, match="Unknown device"):
        pick_device("tpu")


def test_two_torchrun_workers_train_one_model(shared_data, tmp_path):
    """Two gloo workers on the CPU split every epoch; the first writes one checkpoint and the report."""
    out = tmp_path / "ddp.pt"
    torchrun = Path(sys.executable).parent / "torchrun"
    command = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "smilekit", "train",
               "--data-root", str(shared_data), "--datasets", "smilesmiled", "--epochs", "2", "--limit", "64",
               "--batch-size", "16", "--draws-per-epoch", "128", "--threads", "1", "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = json.loads(done.stdout[done.stdout.index("{"):])  # one report: only the first worker prints
    model, meta = load_checkpoint(out)
    assert printed["version"] == meta["version"] and set(printed["test"]) == {"smilesmiled"}
    history = json.loads(out.with_suffix(".json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert not out.with_suffix(".last.pt").exists()
