"""Find faces in a photo and cut the crop the model sees.

Why these detectors: everything must run offline from registry packages.
OpenCV's Haar frontal-face cascade (``opencv-python-headless<5``; 5.0 ships no
cascade files) is fast and ships its model; dlib's HOG detector (``dlib-bin``)
needs no model file. Measured on 1,500 CelebA-subset photos: Haar alone misses
about 4 %, Haar on the photo padded by 15 % then dlib HOG miss 1.5 %, and the
lenient last resorts below (alt2 / profile cascades, HOG upsampled on a padded
photo, Haar on the equalised photo) bring that to 0.6 % (29 of the 4,513 train +
val photos; chosen on those splits, not on test). OpenCV YuNet, mediapipe and MTCNN need downloads or
a torchvision/torch pin and are not used.

One crop geometry for every source: all boxes are expressed in Haar's frame
(dlib boxes are rescaled by the measured ratio), and the model crop is a square
inside that box chosen to match SMILEsmileD's tight eyes-to-chin framing
(measured: the Haar box on a padded SMILEsmileD crop is 1.30x the crop and its
centre sits 0.084 box-sides above the crop centre). So faces cut from whole
photos, CelebA training photos and SMILEsmileD crops all look alike.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
from PIL import Image

#: model crop side as a fraction of the Haar box side
CROP_SCALE = 0.77
#: downward shift of the crop centre, in Haar box sides
CROP_SHIFT_Y = 0.084
#: crops are cut with this much context around the model crop (training augments inside it); the model
#: crop is then the centre. Cutting the model crop directly resamples differently and costs 0.8 points of
#: CelebA test accuracy (measured), so prediction cuts exactly as training does: see model_crop.
CONTEXT = 1.25
#: dlib HOG box -> Haar box: size ratio and centre shift (in HOG sides), measured on CelebA
HOG_TO_HAAR_SIZE = 1.11
HOG_TO_HAAR_SHIFT_Y = -0.083
#: photos are detected at most this many pixels on their long side (a 1 MP photo: ~70 ms instead of ~130 ms at 800)
DETECT_MAX_SIDE = 640
#: a lenient last-resort detection counts only if it is this large (fraction of the short side)
LAST_RESORT_MIN_FRACTION = 0.25


@dataclass(frozen=True)
class Box:
    """A face box in photo pixel coordinates (Haar frame)."""

    x: int
    y: int
    w: int
    h: int

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.x, self.y, self.w, self.h)

    def scaled(self, factor: float) -> "Box":
        return Box(*(int(round(v * factor)) for v in self.as_tuple()))


def _load_cascade(name: str) -> cv2.CascadeClassifier:
    path = cv2.data.haarcascades + f"haarcascade_{name}.xml"
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise RuntimeError(f"OpenCV cascade {path} is missing: install opencv-python-headless<5")
    return cascade


#: the cascade every photo uses is kept loaded; OpenCV keeps a cascade's working buffers (~16 MB for a padded
#: 640-pixel photo) for as long as the cascade lives, so the last-resort ones, used only when no face is found,
#: are loaded for each use (~12 ms) instead of leaving ~30 MB in the kernel after the first faceless photo
_KEPT_CASCADES = ("frontalface_default",)
_cascade = lru_cache(maxsize=None)(_load_cascade)


@lru_cache(maxsize=None)
def _hog():
    import dlib

    return dlib.get_frontal_face_detector()


def _haar(gray: np.ndarray, name="frontalface_default", min_neighbors=5, pad=0.0, flip=False, min_side=0):
    """Haar boxes of at least ``min_side`` pixels (and 1/20 of the short side): OpenCV then skips the smaller
    scales, which saves time and the working memory of their image pyramid."""
    p = int(round(pad * max(gray.shape)))
    img = cv2.copyMakeBorder(gray, p, p, p, p, cv2.BORDER_REPLICATE) if p else gray
    if flip:
        img = np.ascontiguousarray(img[:, ::-1])
    min_side = max(20, min(gray.shape) // 20, int(min_side))
    cascade = _cascade(name) if name in _KEPT_CASCADES else _load_cascade(name)
    found = cascade.detectMultiScale(img, 1.1, min_neighbors, minSize=(min_side, min_side))
    boxes = []
    for x, y, w, h in found:
        if flip:
            x = img.shape[1] - x - w
        boxes.append(Box(int(x) - p, int(y) - p, int(w), int(h)))
    return boxes


def _hog_boxes(gray: np.ndarray, upsample=1, pad=0.0):
    p = int(round(pad * max(gray.shape)))
    img = cv2.copyMakeBorder(gray, p, p, p, p, cv2.BORDER_REPLICATE) if p else gray
    boxes = []
    for r in _hog()(img, upsample):
        side = r.width() * HOG_TO_HAAR_SIZE
        cx = r.left() + r.width() / 2 - p
        cy = r.top() + r.height() / 2 + HOG_TO_HAAR_SHIFT_Y * r.width() - p
        boxes.append(Box(int(round(cx - side / 2)), int(round(cy - side / 2)), int(side), int(side)))
    return boxes


#: the twice-upsampled HOG last resort runs on at most this long side: it only has to see faces of at least
#: LAST_RESORT_MIN_FRACTION of the short side, and on a 640-pixel photo (3,584 pixels upsampled and padded) it
#: took ~100 MB. Photos up to this size (CelebA's 178 x 218, SMILEsmileD's 64 x 64) are unchanged.
LAST_RESORT_HOG_MAX_SIDE = 320


def _hog_reduced(gray: np.ndarray, upsample: int, pad: float) -> list[Box]:
    scale = min(1.0, LAST_RESORT_HOG_MAX_SIDE / max(gray.shape))
    if scale < 1.0:
        size = (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale)))
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    return [b.scaled(1 / scale) for b in _hog_boxes(gray, upsample=upsample, pad=pad)]


def _last_resort(gray: np.ndarray) -> list[Box]:
    """Lenient detectors, tried only when the normal ones find nothing; one large face at most."""
    min_side = LAST_RESORT_MIN_FRACTION * min(gray.shape)
    attempts = (
        lambda: _haar(gray, "frontalface_alt2", 3, pad=0.15, min_side=min_side),
        lambda: _haar(gray, min_neighbors=3, pad=0.15, min_side=min_side),
        lambda: _hog_reduced(gray, upsample=2, pad=0.2),
        lambda: _haar(gray, "profileface", 3, pad=0.15, min_side=min_side),
        lambda: _haar(gray, "profileface", 3, pad=0.15, flip=True, min_side=min_side),
        lambda: _haar(cv2.equalizeHist(gray), min_neighbors=3, pad=0.15, min_side=min_side),  # dark or low-contrast faces
    )
    for attempt in attempts:
        big = [b for b in attempt() if b.w >= min_side]
        if big:
            return [max(big, key=lambda b: b.w)]
    return []


def _remove_overlaps(boxes: list[Box]) -> list[Box]:
    """Keep the larger of any two boxes whose centres fall inside each other."""
    kept: list[Box] = []
    for b in sorted(boxes, key=lambda b: -b.w):
        cx, cy = b.x + b.w / 2, b.y + b.h / 2
        if not any(k.x <= cx <= k.x + k.w and k.y <= cy <= k.y + k.h for k in kept):
            kept.append(b)
    return kept


def detect_faces(image: Image.Image) -> list[Box]:
    """Return every face box in ``image`` (any mode), left to right.

    Tries Haar, Haar on a padded photo (faces touching the border), dlib HOG, then
    the lenient last resorts. Large photos are detected on a downscaled copy.
    """
    gray = np.asarray(image.convert("L"))
    scale = min(1.0, DETECT_MAX_SIDE / max(gray.shape))
    if scale < 1.0:
        size = (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale)))
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    boxes = _haar(gray) or _haar(gray, pad=0.15) or _hog_boxes(gray) or _last_resort(gray)
    boxes = _remove_overlaps(boxes)
    return sorted((b.scaled(1 / scale) for b in boxes), key=lambda b: (b.x, b.y))


def crop_box(face: Box) -> tuple[float, float, float]:
    """Centre x, centre y and side of the model crop for a detector box."""
    side = face.w * CROP_SCALE
    return face.x + face.w / 2, face.y + face.h / 2 + CROP_SHIFT_Y * face.w, side


def cut_face(image: Image.Image, face: Box, size: int, context: float = 1.0) -> Image.Image:
    """Cut the square model crop (times ``context``) for ``face``, resized to ``size``.

    Parts outside the photo repeat its edge pixels, as the detector's padding does.
    Returns an image in the same mode as ``image``.
    """
    cx, cy, side = crop_box(face)
    side *= context
    left, top = int(round(cx - side / 2)), int(round(cy - side / 2))
    side_px = max(1, int(round(side)))
    arr = np.asarray(image)
    pads = [(max(0, -top), max(0, top + side_px - arr.shape[0])), (max(0, -left), max(0, left + side_px - arr.shape[1]))]
    if arr.ndim == 3:
        pads.append((0, 0))
    if any(p for pair in pads for p in pair):
        arr = np.pad(arr, pads, mode="edge")
        top += pads[0][0]
        left += pads[1][0]
    crop = arr[top : top + side_px, left : left + side_px]
    return Image.fromarray(np.ascontiguousarray(crop)).resize((size, size), Image.BILINEAR)


def model_crop(image: Image.Image, face: Box, size: int) -> Image.Image:
    """The model's input for ``face``: cut with :data:`CONTEXT` like the training crops, then the centre."""
    context_size = int(round(size * CONTEXT))
    big = cut_face(image, face, context_size, CONTEXT)
    offset = (context_size - size) // 2
    return big.crop((offset, offset, offset + size, offset + size))


def whole_image_box(image: Image.Image) -> Box:
    """The box whose model crop is the centred square of the photo (for 'treat the photo as one face')."""
    side = min(image.size) / CROP_SCALE
    cx, cy = image.size[0] / 2, image.size[1] / 2 - CROP_SHIFT_Y * side
    return Box(int(round(cx - side / 2)), int(round(cy - side / 2)), int(round(side)), int(round(side)))


#: where the Haar box sits on a tight SMILEsmileD-style crop (x, y, side as fractions of the crop side),
#: the median over padded SMILEsmileD crops; used when the detector finds nothing on a crop
CROP_BOX_IN_TIGHT_CROP = (-0.141, -0.258, 1.297)


def face_in_crop(image: Image.Image) -> Box:
    """The face box of an image that is already a face crop (the face fills the frame).

    Detects on the crop padded by half its side; if nothing is found, uses the
    median geometry measured on SMILEsmileD. Like :func:`detect_faces`, large
    images are detected on a copy reduced to :data:`DETECT_MAX_SIDE`: the padding
    grows with the long side, and Haar on a padded 2048-pixel strip took ~500 MB.
    """
    gray = np.asarray(image.convert("L"))
    scale = min(1.0, DETECT_MAX_SIDE / max(gray.shape))
    if scale < 1.0:
        size = (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale)))
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    boxes = _haar(gray, pad=0.5)
    if boxes:
        return max(boxes, key=lambda b: b.w).scaled(1 / scale)
    side = min(image.size)
    fx, fy, fs = CROP_BOX_IN_TIGHT_CROP
    return Box(int(round(fx * side)), int(round(fy * side)), int(round(fs * side)), int(round(fs * side)))
