"""Which model to use, and running it without torch.

Every checkpoint (``*.pt``, see :mod:`smilekit.learn.model`) is written with an ONNX
export of its network beside it (``*.onnx``) and that export's metadata
(``*.onnx.json``, including the checkpoint's sha256). The app classifies faces
with onnxruntime on the export, so its kernels never import torch: about 190 MB less memory per kernel.
The per-image standardisation stays here in numpy (OpenCV 4.14's ONNX importer
rejects the reductions it needs).
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from . import settings

INPUT_SIZE = 64
LABELS = ("not_smiling", "smiling")
PREPROCESSING = {1: "face crop (smilekit.vision.faces geometry), greyscale, 64x64 bilinear, [0,1]; per-image standardisation inside the model",
                 3: "face crop (smilekit.vision.faces geometry), RGB, 64x64 bilinear, [0,1]; per-image standardisation inside the model"}
SHIPPED_MODEL = Path(__file__).parent / "weights" / "model.pt"
DEFAULT_THRESHOLD = settings.DEFAULT_THRESHOLD


def decision_threshold(meta: dict) -> float:
    """The threshold a checkpoint (or its export's metadata) decides with."""
    return float(meta.get("threshold", DEFAULT_THRESHOLD))


def default_model_path() -> Path:
    """The model the app and CLI use.

    ``SMILEKIT_MODEL`` (a checkpoint file) wins; else the newest promoted model in
    ``SMILEKIT_MODELS_DIR`` (default ``outputs/models``); else the shipped model.
    """
    if (chosen := settings.model_path()) is not None:
        return chosen
    folder = settings.models_dir()
    promoted = sorted(folder.glob("*.pt"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    return promoted[-1] if promoted else SHIPPED_MODEL


def probabilities(logits, temperature: float = 1.0) -> np.ndarray:
    """Calibrated probability of 'smiling' from logits."""
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64) / temperature))


def channels_of(meta: dict) -> int:
    """The input channels of a checkpoint's network, from its metadata (or its export's): 3 for RGB faces, 1 for grey."""
    return 3 if meta.get("arch_kwargs", {}).get("colour") else 1


def crop_mode(channels: int) -> str:
    """The PIL mode of the crops a network with ``channels`` input channels reads."""
    return "RGB" if channels == 3 else "L"


def grey(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB pixels (... x 3) in grey, exactly as PIL's ``convert("L")`` gives them (ITU-R 601 luma)."""
    rgb = np.asarray(rgb, dtype=np.uint32)
    return ((rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16).astype(np.uint8)


def with_channels(crops: np.ndarray, channels: int) -> np.ndarray:
    """uint8 crops N x S x S (grey) or N x S x S x 3 (RGB) as ``channels`` 1 (grey) or 3 (RGB; grey in all three)."""
    crops = np.asarray(crops, dtype=np.uint8)
    is_rgb = crops.ndim == 4
    if channels == 1:
        return grey(crops) if is_rgb else crops
    return crops if is_rgb else np.repeat(crops[..., None], 3, axis=-1)


def crops_to_array(crops, channels: int = 1) -> np.ndarray:
    """64x64 crops (PIL images or uint8 arrays, grey or RGB) -> float32 array N x ``channels`` x 64 x 64 in [0, 1]."""
    arrays = [np.asarray(c.convert(crop_mode(channels)) if isinstance(c, Image.Image) else c, dtype=np.uint8) for c in crops]
    if not arrays:
        return np.zeros((0, channels, INPUT_SIZE, INPUT_SIZE), dtype=np.float32)
    pixels = np.stack([with_channels(a[None], channels)[0] for a in arrays]).astype(np.float32) / 255
    return pixels[:, None] if channels == 1 else pixels.transpose(0, 3, 1, 2).copy()


def standardize(x: np.ndarray) -> np.ndarray:
    """Per-image zero mean, unit variance, exactly as the torch models do it."""
    centred = x - x.mean(axis=(1, 2, 3), keepdims=True)
    std = centred.std(axis=(1, 2, 3), keepdims=True, ddof=1)
    return (centred / np.maximum(std, 1e-3)).astype(np.float32)


def file_sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def export_paths(checkpoint) -> tuple[Path, Path]:
    """The ONNX export of a checkpoint and its metadata file."""
    onnx_path = Path(checkpoint).with_suffix(".onnx")
    return onnx_path, onnx_path.with_name(onnx_path.name + ".json")


def set_threads(threads: int) -> None:
    """CPU threads for inference (OpenCV, onnxruntime, and torch if it is loaded)."""
    cv2.setNumThreads(threads)  # onnxruntime sessions read it back (ExportedModel._session)
    torch = sys.modules.get("torch")  # None also where it is marked as not importable
    if torch is not None:
        torch.set_num_threads(threads)


#: runtimes for the ONNX exports. onnxruntime is the default: 1.9x (SmileNet) to 5.8x (LiteNet at 96 px) faster
#: than OpenCV's DNN module per face on one thread, for about 30-40 MB more resident memory
#: (``benchmarks/bench_runtime.py``)
BACKENDS = ("onnxruntime", "opencv")


class ExportedModel:
    """A checkpoint's ONNX export run by onnxruntime or OpenCV's DNN module: ``logits`` for N x C x 64 x 64 inputs in
    [0, 1] (C: :func:`channels_of` of its metadata)."""

    def __init__(self, onnx_path, meta: dict, backend: str = BACKENDS[0]):
        if backend not in BACKENDS:
            raise ValueError(f"Unknown ONNX runtime {backend!r}; choose one of {BACKENDS}")
        self.meta, self.backend, self.onnx_path = meta, backend, str(onnx_path)
        self.session, self.session_threads = None, None
        if backend == "opencv":
            self.net = cv2.dnn.readNetFromONNX(self.onnx_path)
        else:
            self._session()  # a broken file fails here, not at the first face

    def _session(self):
        """The onnxruntime session, rebuilt when :func:`set_threads` has changed the thread count since."""
        threads = max(1, cv2.getNumThreads())
        if self.session is None or threads != self.session_threads:
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
            self.session = onnxruntime.InferenceSession(self.onnx_path, options, providers=["CPUExecutionProvider"])
            self.session_threads, self.input_name = threads, self.session.get_inputs()[0].name
        return self.session

    @classmethod
    def of_checkpoint(cls, checkpoint, backend: str = BACKENDS[0]) -> ExportedModel | None:
        """The export of ``checkpoint`` if one was written for exactly this file, else None."""
        onnx_path, meta_path = export_paths(checkpoint)
        if not (onnx_path.is_file() and meta_path.is_file() and Path(checkpoint).is_file()):
            return None
        meta = json.loads(meta_path.read_text())
        if meta.get("checkpoint_sha256") != file_sha256(checkpoint):
            return None  # the checkpoint was replaced after the export: do not trust it
        return cls(onnx_path, meta, backend)

    def _forward(self, x: np.ndarray) -> np.ndarray:
        if self.backend == "onnxruntime":
            return self._session().run(None, {self.input_name: x})[0]
        self.net.setInput(x)
        return self.net.forward()

    def logits(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        out = [self._forward(standardize(x[start : start + batch_size])).reshape(-1) for start in range(0, len(x), batch_size)]
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)
