"""Find faces in a photo and cut the crop the model sees, aligned on the face's own landmarks.

One detector: OpenCV's YuNet (``cv2.FaceDetectorYN``, MIT, the 232 KB model file in ``smilekit/weights/``, run
by ``opencv-python-headless``: nothing is downloaded). Per face it gives a box, five landmarks (right eye, left
eye, nose tip, right and left mouth corners) and a score. It finds faces of about 10 to 300 px at the size it
runs on, so a large photo is searched as a pyramid: levels a third of the size of the one before, down to one
that fits a tile, each level cut into overlapping tiles of :data:`TILE` px (equal tiles; a whole 3,072 px copy
took 674 MB against about 25 MB a tile, in the same time). A level keeps the faces that fit its tiles' overlap
(so each lies whole in a tile); larger ones are left to the next level, where they are a third the size. The
coarsest level runs first: in a photo up to :data:`PORTRAIT_MAX_SIDE` px whose faces are all large there
(:data:`PORTRAIT_FACE`), the finer levels are skipped. Boxes of all levels are merged by non-maximum suppression.

Every crop, from every photo size, the camera and the training sets, is cut the same way
(:func:`cut_face`): the similarity transform (rotation, scale, shift) that puts the five landmarks nearest
to :data:`TEMPLATE`, so a tilted head is cut level and every face has its eyes and mouth in the same place.
Faces too large for the crop are reduced with area averaging first (no aliasing). Figures behind each
setting: ``benchmarks/bench_groups.py`` and the notes beside the constants.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

#: the YuNet model file (OpenCV model zoo ``face_detection_yunet_2023mar``, MIT: ``LICENSE-yunet`` beside it)
MODEL_FILE = Path(__file__).parent.parent / "weights" / "face_detection_yunet_2023mar.onnx"
#: faces scoring below this are dropped. Val scenes of 4,000 x 3,000 px searched at 3,072 px, 40 px faces:
#: 112 of 114 found at 0.6, 113 at 0.5, 114 at 0.4, no false box in them or on 8 faceless photos at any of these;
#: but on 40 collages of 4 CelebA train photos enlarged to 3,072 px (blurred), 0.5 added 17 boxes to the 160
#: faces (blotches among them), 0.6 11, 0.7 5. So 0.6, and the finest level at 4,096 px (smilekit.predict.DETAIL_MAX_SIDE)
SCORE_THRESHOLD = 0.6
#: boxes overlapping more than this (intersection over union) are one face
NMS_IOU = 0.3
#: side of the square tiles a level is cut into, and how much neighbouring tiles overlap (level pixels)
TILE = 640
OVERLAP = 128
#: each pyramid level is this many times smaller than the one before
LEVEL_STEP = 3
#: photos up to this long side whose faces are all at least PORTRAIT_FACE of the short side skip finer levels
PORTRAIT_MAX_SIDE = 1200
PORTRAIT_FACE = 0.2

#: where the five landmarks sit in the model crop, as fractions of its side (x, y): right eye, left eye, nose
#: tip, right mouth corner, left mouth corner (the person's right is the picture's left)
TEMPLATE = np.array([[0.263, 0.234], [0.737, 0.234], [0.5, 0.511], [0.306, 0.722], [0.694, 0.722]], dtype=np.float32)
#: crops are cut with this much context around the model crop (training augments inside it); the model
#: crop is the centre
CONTEXT = 1.25
#: a face reduced by more than this is first averaged down to twice the crop's scale (no aliasing)
AREA_REDUCE_BELOW = 0.5
#: where YuNet's landmarks sit in its box (fractions of the box side, from its top left), for boxes that come
#: without landmarks (:func:`whole_image_box`); median over CelebA val photos
LANDMARKS_IN_BOX = np.array([[0.265, 0.379], [0.735, 0.379], [0.5, 0.573], [0.3, 0.724], [0.7, 0.724]], dtype=np.float32)


@dataclass(frozen=True)
class Box:
    """A face: its box (x, y, w, h), its five landmarks ((x, y) each, :data:`TEMPLATE`'s order) and the
    detector's score, in one image's pixels."""

    x: int
    y: int
    w: int
    h: int
    landmarks: tuple[tuple[float, float], ...] | None = None
    score: float = 1.0

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.x, self.y, self.w, self.h)

    def scaled(self, factor: float) -> "Box":
        """The same face in an image ``factor`` times the size."""
        points = None if self.landmarks is None else tuple((x * factor, y * factor) for x, y in self.landmarks)
        return Box(*(int(round(v * factor)) for v in self.as_tuple()), landmarks=points, score=self.score)

    def points(self) -> np.ndarray:
        """The five landmarks as a 5 x 2 float array (placed by :data:`LANDMARKS_IN_BOX` if the box has none)."""
        if self.landmarks is not None:
            return np.asarray(self.landmarks, dtype=np.float32)
        return np.array([self.x, self.y], dtype=np.float32) + LANDMARKS_IN_BOX * np.array([self.w, self.h], dtype=np.float32)


_local = threading.local()


def _detector(width: int, height: int) -> cv2.FaceDetectorYN:
    """This thread's YuNet for inputs of width x height (one per size: each keeps its buffers)."""
    cache = _local.__dict__.setdefault("detectors", {})
    if (width, height) not in cache:
        if not MODEL_FILE.is_file():
            raise FileNotFoundError(f"The face detector's model file is missing: {MODEL_FILE}")
        cache[(width, height)] = cv2.FaceDetectorYN.create(str(MODEL_FILE), "", (width, height), SCORE_THRESHOLD,
                                                           NMS_IOU, 5000)
    return cache[(width, height)]


def _bgr(pixels: np.ndarray) -> np.ndarray:
    if pixels.ndim == 2:
        return cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR)
    return np.ascontiguousarray(pixels[:, :, 2::-1])


def _run(pixels: np.ndarray) -> np.ndarray:
    """YuNet's rows (box, 10 landmark coordinates, score) for one image (grey or RGB array) at its own size."""
    height, width = pixels.shape[:2]
    found = _detector(width, height).detect(_bgr(pixels))[1]
    if found is None:
        return np.zeros((0, 15), np.float32)
    return found[np.isfinite(found).all(axis=1)]  # a degenerate image can give rows of NaN


def _starts(length: int) -> list[int]:
    """Starts of equal tiles covering ``length``, neighbours overlapping by at least OVERLAP."""
    if length <= TILE:
        return [0]
    n = int(np.ceil((length - OVERLAP) / (TILE - OVERLAP)))
    return [int(round(i * (length - TILE) / (n - 1))) for i in range(n)]


def _cores(starts: list[int], length: int) -> list[tuple[float, float]]:
    """The part of each tile whose faces it answers for: up to the middle of its overlaps."""
    side = min(TILE, length)
    cuts = [0.0] + [(b + a + side) / 2 for a, b in zip(starts, starts[1:])] + [float(length)]
    return list(zip(cuts, cuts[1:]))


#: YuNet's columns holding x and y coordinates (box corner, then the five landmarks; 2 and 3 are its size)
_X, _Y = [0, 4, 6, 8, 10, 12], [1, 5, 7, 9, 11, 13]


def _tiled(pixels: np.ndarray) -> np.ndarray:
    """YuNet's rows for one pyramid level, tile by tile: each face once, from the tile whose core holds its centre."""
    height, width = pixels.shape[:2]
    rows = []
    xs, ys = _starts(width), _starts(height)
    for y0, (top, bottom) in zip(ys, _cores(ys, height)):
        for x0, (left, right) in zip(xs, _cores(xs, width)):
            found = _run(pixels[y0 : y0 + TILE, x0 : x0 + TILE]).copy()
            found[:, _X] += x0
            found[:, _Y] += y0
            cx, cy = found[:, 0] + found[:, 2] / 2, found[:, 1] + found[:, 3] / 2
            rows.append(found[(cx >= left) & (cx < right) & (cy >= top) & (cy < bottom)])
    return np.concatenate(rows)


def _levels(pixels: np.ndarray) -> list[tuple[np.ndarray, float]]:
    """The pyramid, coarsest first: (level, its size / the photo's), down to one that fits a tile."""
    levels, scale = [(pixels, 1.0)], 1.0
    while max(pixels.shape[:2]) * scale > TILE:
        scale /= LEVEL_STEP
        size = (max(1, int(round(pixels.shape[1] * scale))), max(1, int(round(pixels.shape[0] * scale))))
        levels.append((cv2.resize(pixels, size, interpolation=cv2.INTER_AREA), scale))
    return levels[::-1]


def _boxes(rows: np.ndarray) -> list[Box]:
    keep = cv2.dnn.NMSBoxes(rows[:, :4].tolist(), rows[:, 14].tolist(), SCORE_THRESHOLD, NMS_IOU) if len(rows) else []
    out = []
    for r in rows[np.asarray(keep, dtype=int).reshape(-1)]:
        out.append(Box(int(round(r[0])), int(round(r[1])), int(round(r[2])), int(round(r[3])),
                       tuple((float(r[4 + 2 * k]), float(r[5 + 2 * k])) for k in range(5)), float(r[14])))
    return sorted(out, key=lambda b: (b.x, b.y))


#: YuNet's landmarks follow a tilted head only part of the way (CelebA val photos turned 15 degrees: its eye
#: line turned about 5), so each face is looked at again on its own aligned crop of REFINE_SIDE px (REFINE_CONTEXT
#: times the model crop), which is nearer level each time, until its roll changes by less than REFINE_DEGREES
REFINE_SIDE = 112
REFINE_CONTEXT = 2.0
REFINE_DEGREES = 1.0
REFINE_PASSES = 4


def detect_faces(image: Image.Image | np.ndarray, refine: bool = True) -> list[Box]:
    """Every face in ``image`` (PIL image of any mode, or a grey / RGB uint8 array), left to right, in its pixels.

    With ``refine``, each face's landmarks are measured again on its aligned crop (:func:`refined`)."""
    pixels = np.asarray(image if not isinstance(image, Image.Image) or image.mode in ("L", "RGB") else image.convert("RGB"))
    found = []
    for k, (level, scale) in enumerate(_levels(pixels)):
        rows = _run(level) if k == 0 else _tiled(level)
        if k > 0:
            rows = rows[rows[:, 2] <= OVERLAP]  # larger faces may be cut by a tile: the coarser level has them whole
        rows = rows / np.array([scale] * 14 + [1], np.float32)  # in the photo's pixels
        found.append(rows)
        if k == 0 and _portrait(rows, pixels.shape):
            break
    boxes = _boxes(np.concatenate(found))
    return [refined(pixels, b) for b in boxes] if refine else boxes


def roll(face: Box) -> float:
    """How far ``face``'s alignment turns it, in degrees (positive: clockwise on screen)."""
    matrix = alignment(face, 1)
    return float(np.degrees(np.arctan2(matrix[1, 0], matrix[0, 0])))


def refined(pixels: np.ndarray, face: Box) -> Box:
    """``face`` with its landmarks found again on its aligned crop, until they stop turning (:data:`REFINE_SIDE`);
    its box and score stay the detector's."""
    for _ in range(REFINE_PASSES):
        matrix = alignment(face, REFINE_SIDE, REFINE_CONTEXT)
        crop = np.asarray(cut_face(pixels, face, REFINE_SIDE, REFINE_CONTEXT))
        found = _boxes(_run(crop))
        if not found:
            return face
        again = _nearest(found, REFINE_SIDE / 2, REFINE_SIDE / 2)
        points = np.c_[again.points(), np.ones(5)] @ cv2.invertAffineTransform(matrix).T
        before, face = face, Box(face.x, face.y, face.w, face.h, tuple(map(tuple, points.tolist())), face.score)
        if abs(roll(face) - roll(before)) < REFINE_DEGREES:
            break
    return face


def _portrait(rows: np.ndarray, shape: tuple) -> bool:
    return max(shape[:2]) <= PORTRAIT_MAX_SIDE and len(rows) > 0 and rows[:, 2].min() >= PORTRAIT_FACE * min(shape[:2])


def alignment(face: Box, size: int, context: float = 1.0) -> np.ndarray:
    """The 2 x 3 similarity transform from the photo to a ``size`` px crop of ``face`` (times ``context``):
    the rotation, scale and shift that put its landmarks nearest to :data:`TEMPLATE` (least squares, in
    closed form: Umeyama's method without reflection)."""
    source = face.points().astype(np.float64)
    if np.ptp(source, axis=0).max() < 1e-3:  # landmarks all in one place: place them by the box instead
        source = Box(face.x, face.y, max(1, face.w), max(1, face.h)).points().astype(np.float64)
    target = (TEMPLATE.astype(np.float64) - 0.5) / context * size + size / 2
    src, dst = source - source.mean(axis=0), target - target.mean(axis=0)
    norm = (src ** 2).sum()
    a = (src * dst).sum() / norm  # scale times cos(angle)
    b = (src[:, 0] * dst[:, 1] - src[:, 1] * dst[:, 0]).sum() / norm  # scale times sin(angle)
    rotation = np.array([[a, -b], [b, a]])
    return np.hstack([rotation, (target.mean(axis=0) - rotation @ source.mean(axis=0))[:, None]])


def crop_corners(face: Box, context: float = 1.0) -> np.ndarray:
    """The corners of ``face``'s crop (times ``context``) in the photo (4 x 2, clockwise from top left)."""
    inverse = cv2.invertAffineTransform(alignment(face, 1, context))
    return np.array([[0, 0, 1], [1, 0, 1], [1, 1, 1], [0, 1, 1]], np.float64) @ inverse.T


def cut_face(image: Image.Image | np.ndarray, face: Box, size: int, context: float = 1.0) -> Image.Image:
    """The aligned crop of ``face`` (:func:`alignment`), ``size`` px square, in ``image``'s mode.

    Parts outside the photo repeat its edge pixels."""
    pixels = np.asarray(image)
    matrix = alignment(face, size, context).astype(np.float64)
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    if scale < AREA_REDUCE_BELOW:
        pixels, matrix = _reduced_region(pixels, matrix, size, 2 * scale)
    crop = cv2.warpAffine(pixels, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return Image.fromarray(crop)


def _reduced_region(pixels: np.ndarray, matrix: np.ndarray, size: int, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """The part of ``pixels`` the crop reads, reduced ``factor`` times by area averaging, and the transform from it."""
    inverse = cv2.invertAffineTransform(matrix)
    corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], np.float64) @ inverse.T
    height, width = pixels.shape[:2]
    x0, y0 = (max(0, int(np.floor(corners[:, k].min())) - 2) for k in (0, 1))
    x1, y1 = min(width, int(np.ceil(corners[:, 0].max())) + 2), min(height, int(np.ceil(corners[:, 1].max())) + 2)
    if x1 <= x0 or y1 <= y0:  # the crop lies wholly outside the photo: its edge pixels, as warpAffine repeats them
        return pixels, matrix
    region = pixels[y0:y1, x0:x1]
    small = cv2.resize(region, (max(1, round(region.shape[1] * factor)), max(1, round(region.shape[0] * factor))),
                       interpolation=cv2.INTER_AREA)
    fx, fy = small.shape[1] / region.shape[1], small.shape[0] / region.shape[0]
    # a reduced pixel u covers region pixels [u / f, (u + 1) / f): its centre is at (u + 0.5) / f - 0.5
    back = np.array([[1 / fx, 0, 0.5 / fx - 0.5 + x0], [0, 1 / fy, 0.5 / fy - 0.5 + y0], [0, 0, 1]])
    return small, matrix @ back


def model_crop(image: Image.Image | np.ndarray, face: Box, size: int) -> Image.Image:
    """The model's input for ``face``: the centre of the context crop training augments inside, as one cut."""
    return cut_face(image, face, size)


def whole_image_box(image: Image.Image) -> Box:
    """A face filling the photo (for 'treat the photo as one face'): the box whose model crop is its centred square."""
    return face_in_crop(image, TEMPLATE, detect=False)


#: where the landmarks sit in a face crop when the detector finds none (fractions of the crop's side),
#: per dataset: the median over that dataset's train crops where YuNet found the face (``smilekit.learn.data``
#: passes MTFL's and FER2013's). This default, used for SMILEsmileD and other crops, is a first guess at the
#: template, not a measurement: SMILEsmileD's measured median is about [[0.266, 0.242], [0.762, 0.251],
#: [0.49, 0.536], [0.302, 0.795], [0.705, 0.804]]; the shipped model's crops were cut with this default (where
#: YuNet missed 0.1 % of SMILEsmileD train crops), so it stays until the next retrain
CROP_LANDMARKS = np.array([[0.3199, 0.3560], [0.6801, 0.3560], [0.5000, 0.5617], [0.3489, 0.7390], [0.6511, 0.7390]],
                          dtype=np.float32)
#: a face crop is searched enlarged to this side, on a border of this fraction of its side (faces that touch
#: the frame are found there)
CROP_SEARCH_SIDE = 192
CROP_SEARCH_PAD = 0.25


def face_in_crop(image: Image.Image, fallback: np.ndarray = CROP_LANDMARKS, detect: bool = True) -> Box:
    """The face of an image that is already a face crop (the face fills the frame), in its pixels.

    Searched on a copy enlarged to :data:`CROP_SEARCH_SIDE` px with a border of repeated edge pixels; the face
    nearest the centre counts. Where none is found (or with ``detect`` False), the landmarks are ``fallback``
    (5 x 2, fractions of the crop's side) and ``score`` is 0.
    """
    width, height = image.size
    if detect:
        factor = CROP_SEARCH_SIDE / max(width, height)
        small = np.asarray(image.convert("L").resize((max(1, round(width * factor)), max(1, round(height * factor))), Image.BILINEAR))
        pad = int(round(CROP_SEARCH_PAD * max(small.shape)))
        found = detect_faces(cv2.copyMakeBorder(small, pad, pad, pad, pad, cv2.BORDER_REPLICATE))
        if found:
            best = _nearest(found, small.shape[1] / 2 + pad, small.shape[0] / 2 + pad)
            return _shifted(best, -pad, 1 / factor)
    side = min(width, height)
    points = np.asarray(fallback, np.float32) * side + np.array([(width - side) / 2, (height - side) / 2], np.float32)
    return _box_around(points)


def _nearest(found: list[Box], x: float, y: float) -> Box:
    """The face of ``found`` whose landmarks' mean is nearest to (x, y)."""
    return min(found, key=lambda b: np.hypot(*(b.points().mean(axis=0) - (x, y))))


def _box_around(points: np.ndarray) -> Box:
    """A face with these landmarks, and the box YuNet would give it (:data:`LANDMARKS_IN_BOX`), score 0."""
    eyes, mouth = (points[0] + points[1]) / 2, (points[3] + points[4]) / 2
    width = max(1.0, float(np.hypot(*(points[1] - points[0]))) / (LANDMARKS_IN_BOX[1, 0] - LANDMARKS_IN_BOX[0, 0]))
    height = max(1.0, float(np.hypot(*(mouth - eyes))) / (LANDMARKS_IN_BOX[3, 1] - LANDMARKS_IN_BOX[0, 1]))
    x, y = eyes[0] - width / 2, eyes[1] - LANDMARKS_IN_BOX[0, 1] * height
    return Box(int(round(x)), int(round(y)), int(round(width)), int(round(height)),
               tuple((float(px), float(py)) for px, py in points), 0.0)


def _shifted(face: Box, offset: float, factor: float) -> Box:
    """``face`` moved by ``offset`` on both axes, then scaled by ``factor``."""
    points = tuple(((x + offset) * factor, (y + offset) * factor) for x, y in face.landmarks)
    return Box(*(int(round((v + offset) * factor)) for v in (face.x, face.y)), int(round(face.w * factor)),
               int(round(face.h * factor)), points, face.score)
