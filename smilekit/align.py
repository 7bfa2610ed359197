"""How far a face's head is tilted, from its eyes, so that its crop can be cut upright.

dlib's 5-point landmark model (eye corners and nose; CC0, installed with the
``face_recognition_models`` package: nothing is downloaded) places the eyes in a
detector box; the angle of the line between the eye centres is the head's roll.
Faces whose eyes do not look like a pair (too close, too far apart, or steeper
than :data:`MAX_DEGREES`) count as upright: a wrong rotation costs more than none.
"""
from __future__ import annotations

import importlib.util
import math
from functools import lru_cache
from pathlib import Path

import numpy as np

#: faces tilted less than this are cut as they are (chosen on the validation splits: 4-8 degrees were
#: within 0.5 points of each other; 0 rotated near-upright CelebA faces for a loss of 0.8 points)
MIN_DEGREES = 4.0
#: steeper eye lines are taken for landmark mistakes
MAX_DEGREES = 40.0
#: the distance between the eye centres, as fractions of the detector box side, of a plausible pair
EYE_DISTANCE = (0.25, 0.7)


def hog_frame(box) -> tuple[float, float, float]:
    """Centre x, centre y and side of the dlib HOG box that :mod:`smilekit.faces` turns into ``box`` (Haar frame)."""
    from .faces import HOG_TO_HAAR_SHIFT_Y, HOG_TO_HAAR_SIZE  # faces imports this module

    side = box.w / HOG_TO_HAAR_SIZE
    return box.x + box.w / 2, box.y + box.h / 2 - HOG_TO_HAAR_SHIFT_Y * side, side


def model_file() -> Path:
    """Where the 5-point landmark model is (inside the ``face_recognition_models`` package)."""
    # the package's own __init__ needs pkg_resources, which recent setuptools no longer has: find its folder only
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("Face alignment needs the face_recognition_models package: run scripts/setup "
                           "(or pip install face_recognition_models==0.3.0)")
    return Path(next(iter(spec.submodule_search_locations))) / "models" / "shape_predictor_5_face_landmarks.dat"


@lru_cache(maxsize=1)
def landmark_model():
    """dlib's 5-point shape predictor, loaded once (about 9 MB)."""
    import dlib

    return dlib.shape_predictor(str(model_file()))


def eye_centres(gray: np.ndarray, box) -> tuple[np.ndarray, np.ndarray]:
    """The centres of the eye on the left and on the right of the picture (x, y) for a face box."""
    import dlib

    cx, cy, side = hog_frame(box)  # dlib's landmark model was trained on dlib HOG boxes
    rect = dlib.rectangle(int(cx - side / 2), int(cy - side / 2), int(cx + side / 2), int(cy + side / 2))
    points = landmark_model()(np.ascontiguousarray(gray), rect).parts()
    first = np.array([(points[0].x + points[1].x) / 2, (points[0].y + points[1].y) / 2])
    second = np.array([(points[2].x + points[3].x) / 2, (points[2].y + points[3].y) / 2])
    return (first, second) if first[0] <= second[0] else (second, first)


def tilt_degrees(gray: np.ndarray, box) -> float:
    """The head's roll in degrees (positive: the eye line runs down to the right), 0 when unsure or nearly upright.

    ``gray`` is the photo as a uint8 greyscale array, ``box`` a :class:`smilekit.faces.Box` in its pixels.
    Rotating the picture by this angle (counter-clockwise for positive angles, as ``PIL.Image.rotate``)
    levels the eyes.
    """
    left, right = eye_centres(gray, box)
    dx, dy = right - left
    low, high = EYE_DISTANCE
    side = hog_frame(box)[2]
    if not low * side < math.hypot(dx, dy) < high * side:
        return 0.0
    degrees = math.degrees(math.atan2(dy, dx))
    return degrees if MIN_DEGREES <= abs(degrees) <= MAX_DEGREES else 0.0
