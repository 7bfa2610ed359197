"""The networks, their input preprocessing and their checkpoints.

A checkpoint holds the weights and everything needed to rebuild and feed the
model (architecture, input size, preprocessing, labels, temperature, data and
metrics), so loading never guesses.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

INPUT_SIZE = 64
LABELS = ("not_smiling", "smiling")
PREPROCESSING = "face crop (smilekit.faces geometry), greyscale, 64x64 bilinear, [0,1]; per-image standardisation inside the model"
SHIPPED_MODEL = Path(__file__).parent / "weights" / "smilenet.pt"


def _standardize(x: torch.Tensor) -> torch.Tensor:
    """Per-image zero mean, unit variance: removes global brightness and contrast."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-3)
    return (x - mean) / std


class SeedCNN(nn.Module):
    """The seed's baseline: three conv layers and a fully connected head."""

    def __init__(self):
        super().__init__()
        layers = []
        for cin, cout in ((1, 32), (32, 64), (64, 128)):
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(128 * 8 * 8, 128), nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(_standardize(x))).squeeze(1)


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SmileNet(nn.Module):
    """Our network: four VGG-style stages of two 3x3 conv+BatchNorm, global pooling, dropout.

    About 50 MFLOPs per 64x64 face: under 2 ms per face on a laptop CPU.
    """

    def __init__(self, width: int = 16, dropout: float = 0.3):
        super().__init__()
        layers, cin = [], 1
        for stage in range(4):
            cout = width * 2**stage
            layers += _conv_bn(cin, cout) + _conv_bn(cout, cout)
            if stage < 3:
                layers.append(nn.MaxPool2d(2))
            cin = cout
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(cin, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(_standardize(x))).squeeze(1)


ARCHITECTURES = {"smilenet": SmileNet, "seedcnn": SeedCNN}


def build_model(arch: str, **kwargs) -> nn.Module:
    if arch not in ARCHITECTURES:
        raise ValueError(f"Unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[arch](**kwargs)


def crops_to_tensor(crops) -> torch.Tensor:
    """Greyscale 64x64 crops (PIL images or uint8 arrays) -> float tensor N x 1 x 64 x 64 in [0, 1]."""
    arrays = [np.asarray(c.convert("L") if isinstance(c, Image.Image) else c, dtype=np.uint8) for c in crops]
    if not arrays:
        return torch.zeros(0, 1, INPUT_SIZE, INPUT_SIZE)
    return torch.from_numpy(np.stack(arrays)).float().div_(255).unsqueeze(1)


def model_version(model: nn.Module, arch: str) -> str:
    """A short id that changes whenever the weights change."""
    digest = hashlib.sha256()
    for tensor in model.state_dict().values():
        digest.update(tensor.detach().cpu().numpy().tobytes())
    return f"{arch}-{digest.hexdigest()[:8]}"


def save_checkpoint(path, model: nn.Module, arch: str, arch_kwargs=None, **metadata) -> dict:
    """Write weights + metadata; returns the checkpoint dict. ``metadata`` may set temperature, data, metrics, ..."""
    checkpoint = {
        "arch": arch,
        "arch_kwargs": dict(arch_kwargs or {}),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "input_size": INPUT_SIZE,
        "preprocessing": PREPROCESSING,
        "labels": list(LABELS),
        "temperature": 1.0,
        "threshold": 0.5,
        "version": model_version(model, arch),
    }
    checkpoint.update(metadata)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(checkpoint, tmp)
    os.replace(tmp, path)  # never leave a half-written model behind
    return checkpoint


def load_checkpoint(path) -> tuple[nn.Module, dict]:
    """Rebuild the model from a checkpoint file alone; returns (model in eval mode, metadata)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No model checkpoint at {path}")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    model = build_model(checkpoint["arch"], **checkpoint.get("arch_kwargs", {}))
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    meta = {k: v for k, v in checkpoint.items() if k != "state_dict"}
    return model, meta


def fuse_for_inference(model: nn.Module) -> nn.Module:
    """The same network with each BatchNorm folded into its convolution (about 10 % faster on CPU)."""
    import warnings

    with warnings.catch_warnings():  # torch.fx's import warns about torch.jit deprecations
        warnings.simplefilter("ignore", DeprecationWarning)
        from torch.fx.experimental import optimization
    return optimization.fuse(model.eval()) if any(isinstance(m, nn.BatchNorm2d) for m in model.modules()) else model


def promoted_models_dir() -> Path:
    """Where promoted models live: ``$SMILEKIT_MODELS_DIR`` (relative to the project root), else ``outputs/models``."""
    folder = Path(os.environ.get("SMILEKIT_MODELS_DIR") or "outputs/models").expanduser()
    return folder if folder.is_absolute() else Path(__file__).resolve().parent.parent / folder


def default_model_path() -> Path:
    """The model the app and CLI use.

    ``SMILEKIT_MODEL`` (a checkpoint file) wins; else the newest promoted model in
    ``SMILEKIT_MODELS_DIR`` (default ``outputs/models``); else the shipped model.
    """
    if os.environ.get("SMILEKIT_MODEL"):
        return Path(os.environ["SMILEKIT_MODEL"])
    folder = promoted_models_dir()
    promoted = sorted(folder.glob("*.pt"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    return promoted[-1] if promoted else SHIPPED_MODEL


@torch.inference_mode()
def logits_of(model: nn.Module, images: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    """Raw logits for N x 1 x 64 x 64 inputs in [0, 1], in eval mode."""
    model.eval()
    out = [model(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


def probabilities(logits, temperature: float = 1.0) -> np.ndarray:
    """Calibrated probability of 'smiling' from logits."""
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64) / temperature))
