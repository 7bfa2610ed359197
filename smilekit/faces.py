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

Group photos: the chain above runs on a copy reduced to :data:`DETECT_MAX_SIDE` and stops at the first
detector that finds anything, which suits one large face. Photos whose long side is above
:data:`GROUP_SEARCH_MIN_SIDE` are also searched for every face down to :data:`GROUP_MIN_FACE` pixels at their
full resolution (``detail``, a greyscale copy up to 3,072 px, see :func:`smilekit.images.load_photo`):
CenterFace, a small CNN (:mod:`smilekit.centerface`), on overlapping tiles of a colour copy for faces of about
90 px and more, then Haar (frontal, alt2, and the profile cascade both ways) on overlapping tiles of the finest
level of a halving pyramid for the smaller faces, and on the coarse levels for faces larger than CenterFace's
tiles hold (tiles keep OpenCV's working memory small: Haar on a whole 2,667 x 2,000 photo took ~290 MB). Each
new Haar face is confirmed by dlib HOG, a second frontal cascade or the profile cascade on a close-up of it
(Haar alone puts several false boxes on textured 12 MP backgrounds); CenterFace's faces are placed by the
close-up where it sees them and kept as they are where it does not (faces behind sunglasses or hands). The
chain's other boxes (larger faces) are confirmed and added; single-face photos keep the chain's box. Smaller
photos above DETECT_MAX_SIDE (a 1,200 x 900 group photo as phones share it) get the same cascades (the
profile cascade on two levels) and close-ups after the chain, with the chain's faces in place of CenterFace's;
there the chain's boxes other than the largest also need a close-up's confirmation (unconfirmed, 13 of 2,000
CelebA train photos got a second box on a neck, lettering or background; 11 are refused). The close-ups run on
as many threads as OpenCV uses. Measured with ``benchmarks/bench_groups.py``.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
from PIL import Image

from . import align
from .images import return_freed_memory

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


#: dlib's detector and OpenCV's cascades keep state between calls, so each thread that searches for faces keeps
#: its own (a cascade shared by two threads changed the results)
_per_thread = threading.local()


def _hog():
    """dlib's HOG face detector of the calling thread (made once per thread: ~0.25 s and ~7 MB)."""
    if not hasattr(_per_thread, "hog"):
        import dlib

        _per_thread.hog = dlib.get_frontal_face_detector()
    return _per_thread.hog


@lru_cache(maxsize=None)
def _helpers(count: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(count, thread_name_prefix="smilekit-faces")


def _in_parallel(function, items: list) -> list:
    """``[function(item) for item in items]`` on as many threads as OpenCV may use (the calling thread and
    helpers kept for the kernel's life). For the group search's dlib HOG and close-ups, which run on one thread
    each (dlib releases Python's lock); OpenCV's cascades already use every thread themselves."""
    threads = min(cv2.getNumThreads(), len(items))
    if threads < 2:
        return [function(item) for item in items]
    results = [None] * len(items)
    indices, lock = iter(range(len(items))), threading.Lock()

    def work():
        while True:
            with lock:
                i = next(indices, None)
            if i is None:
                return
            results[i] = function(items[i])

    helping = [_helpers(cv2.getNumThreads() - 1).submit(work) for _ in range(threads - 1)]
    work()
    for helper in helping:
        helper.result()  # raises what the helper raised
    return results


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


def _last_resort_boxes(gray: np.ndarray) -> list[Box]:
    """The chain's lenient last resorts alone, on ``gray`` reduced to DETECT_MAX_SIDE; boxes in its pixels."""
    small, scale = _chain_input(gray)
    return [b.scaled(1 / scale) for b in _last_resort(small)]


def _remove_overlaps(boxes: list[Box]) -> list[Box]:
    """Keep the larger of any two boxes whose centres fall inside each other."""
    kept: list[Box] = []
    for b in sorted(boxes, key=lambda b: -b.w):
        cx, cy = b.x + b.w / 2, b.y + b.h / 2
        if not any(k.x <= cx <= k.x + k.w and k.y <= cy <= k.y + k.h for k in kept):
            kept.append(b)
    return kept


#: group search: faces down to this width (Haar box, in pixels of the photo at full resolution) are looked for
GROUP_MIN_FACE = 36
#: the Haar cascade's window (24 x 24): the group search scales the photo so GROUP_MIN_FACE becomes this
HAAR_WINDOW = 24
#: ... and searches one level of its halving pyramid for faces from HAAR_WINDOW to this many pixels
#: (a little over an octave, so faces at the boundary are seen whole by two levels)
GROUP_LEVEL_MAX_FACE = 56
#: tiles of this side (plus the overlap of GROUP_LEVEL_MAX_FACE + 8) bound OpenCV's working memory
GROUP_TILE = 512
#: photos whose long side is at most this are searched by the chain, then (above DETECT_MAX_SIDE) by the group
#: search's cascades for faces the chain's reduced copy shows too small, without its tiled dlib HOG: on val
#: scenes of 1,200 x 900 px, faces 40 px wide were found 26 -> 90 %, 60 px 75 -> 97 %, 100 px 98 -> 100 %
GROUP_SEARCH_MIN_SIDE = 1200
#: ... unless the one face found there is at least this fraction of the photo's short side: a portrait, where the
#: search for small faces would take a 1 MP photo from 0.06 to 0.22 CPU-s (1 thread). The cost: in 1,200 x 900
#: val scenes of faces 200 px wide, 11 of 12 found instead of 12 (the one-face search alone)
PORTRAIT_FACE = 0.2
#: a new face is confirmed on a close-up where its box is this many pixels (HOG's window is 80)
VERIFY_FACE_SIDE = 100


def _resized(gray: np.ndarray, scale: float) -> np.ndarray:
    if scale == 1.0:
        return gray
    size = (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale)))
    return cv2.resize(gray, size, interpolation=cv2.INTER_AREA)


def _chain_input(gray: np.ndarray) -> tuple[np.ndarray, float]:
    """``gray`` reduced to DETECT_MAX_SIDE, and the scale it was reduced by."""
    scale = min(1.0, DETECT_MAX_SIDE / max(gray.shape))
    return _resized(gray, scale), scale


def _chain(gray: np.ndarray, last_resort: bool = True) -> list[Box]:
    """The single-face chain on ``gray`` reduced to DETECT_MAX_SIDE (without the lenient last resorts if
    ``last_resort`` is False); boxes in ``gray``'s pixels."""
    small, scale = _chain_input(gray)
    boxes = _haar(small) or _haar(small, pad=0.15) or _hog_boxes(small) or (_last_resort(small) if last_resort else [])
    return [b.scaled(1 / scale) for b in _remove_overlaps(boxes)]


#: the group search's cascades, their minNeighbors and scaleFactor: lenient, since every new face is confirmed
#: on a close-up.
#: On 6 benchmark scenes + 2 faceless photos (175 faces of 40-100 px): default alone with 5 neighbours found 144
#: faces, with 2: 162, with alt2 added: 170; scaleFactor 1.05 instead of alt2: 166 at twice the time.
GROUP_CASCADES = (("frontalface_default", 2, 1.1), ("frontalface_alt2", 2, 1.1))
#: the profile cascade (and its mirror image) runs on the finest level only, where the smallest faces are, with
#: a coarser scale factor: on 6 scenes of 177 faces 40 px wide, default + alt2 had a candidate for 167, adding
#: the profile cascade 172 at scale factor 1.1 and 170 at 1.2, which takes 0.6 times as long (1.25 and 1.3
#: found as many on 8 scenes from val photos, for ~0.25 CPU-s less, but lost one of the turned faces of
#: tests/test_groups.py). Larger faces are left to the other cascades and, in large photos, to CenterFace
GROUP_FINE_CASCADE = ("profileface", 2, 1.2)
#: ... on this many of the finest levels (photos up to GROUP_SEARCH_MIN_SIDE): on the second, it proposes turned
#: faces of 85 to 170 px (measured in 12 MP val scenes before CenterFace took that place there, faces 100 px
#: wide, with the profile confirmation: 95.8 -> 98.2 % found; 40, 60 and 200 px unchanged)
GROUP_FINE_LEVELS = 2
#: ... and on the finest only where CenterFace looks for the larger faces: left out there too, on 4 val scenes
#: each, faces 40 px wide were found 97.3 -> 95.6 % for about 0.5 s less a 12 MP photo (60 to 200 px unchanged)
GROUP_FINE_LEVELS_WITH_CENTERFACE = 1
# (tried and dropped: there, coarser steps for the cascades, 1.15 and 1.25 for the profile one. On val scenes
# they found the same faces of 60 to 200 px and one more of 355 of 40 px, and a 12 MP photo with no face took
# 0.46 to 0.58 s less. In the check on test photos they found 167 of 171 faces 40 px wide instead of 171, and
# took 0.3 to 0.55 s more at 40 and 60 px, 0.2 to 0.7 s less at 100 and 200 px: outputs/metrics/groups-test.txt)
#: in photos over GROUP_SEARCH_MIN_SIDE, CenterFace (:mod:`smilekit.centerface`) looks for faces of at least
#: CENTERFACE_MIN_FACE pixels (full size) on a colour copy where they are CENTERFACE_FACE pixels wide, in place
#: of dlib HOG on the pyramid's finest level and of the cascades on the levels it covers: it finds faces behind
#: sunglasses, hands and hair and turned heads, which HOG and the cascades did not propose. On 4 val scenes each,
#: at threshold 0.3 it found faces 100 px wide 98.2 % at 33 px (0.3 s) and 90 % at 25 px; 60 px faces at 20 px,
#: 77 % (those are left to the cascades on the finest level)
CENTERFACE_MIN_FACE = 90
CENTERFACE_FACE = 30
CENTERFACE_THRESHOLD = 0.3
#: ... its weaker faces, down to CENTERFACE_PROPOSE, count only if a close-up confirms them; a close-up is also
#: confirmed by CenterFace itself (a face of score CENTERFACE_CLOSE_UP at its centre), which sees the faces of
#: 40 and 60 px that it scores low at 13 to 20 px on the copy, and that the cascades proposed but HOG and the
#: cascades refused on the close-up: on 4 val scenes each, faces 40 px wide 95.6 -> 97.3 % found, 60 px
#: 99.1 -> 100 %, 100 px 99.1 % as before; no false box on 8 faceless photos, before or after
CENTERFACE_PROPOSE = 0.05
CENTERFACE_CLOSE_UP = 0.5
#: ... on tiles of CENTERFACE_TILE plus CENTERFACE_OVERLAP pixels (faces up to the overlap there; larger ones are
#: the Haar pyramid's): on a whole 1,344 x 1,024 copy OpenCV's network took 314 MB; tiles of 512 + 96 took 96 MB,
#: more than decoding a 12 MP PNG; 320 + 96 65 MB, still more; 224 + 96 (30 tiles of a 1,333 x 1,000 copy) stay
#: below it. An overlap of 64 lost faces of 200 px to the pyramid (val scenes: 97.2 % found against 98.1 %)
CENTERFACE_TILE = 224
CENTERFACE_OVERLAP = 96
#: CenterFace box -> Haar box: size ratio, measured on 356 CelebA train photos (centres agree within 0.013 sides)
CENTERFACE_TO_HAAR_SIZE = 1.20


def _group_cascade(name: str) -> cv2.CascadeClassifier:
    """The calling thread's cascade ``name`` that confirms faces on close-ups (200 x 200: small working
    buffers), kept loaded."""
    cascades = _per_thread.__dict__.setdefault("cascades", {})
    if name not in cascades:
        cascades[name] = _load_cascade(name)
    return cascades[name]


def _tiles(gray: np.ndarray, overlap: int, step: int = GROUP_TILE):
    """(left, top, tile) of tiles of ``gray``, ``step`` pixels apart, that overlap by ``overlap`` pixels."""
    height, width = gray.shape[:2]
    for top in range(0, max(1, height - overlap), step):
        for left in range(0, max(1, width - overlap), step):
            yield left, top, np.ascontiguousarray(gray[top : top + step + overlap, left : left + step + overlap])


def _tiled_haar(gray: np.ndarray, max_side: int | None, cascade: cv2.CascadeClassifier, neighbours: int,
                mirror: bool = False, scale_factor: float = 1.1) -> list:
    """Haar boxes of HAAR_WINDOW to ``max_side`` pixels (no limit: None) on overlapping tiles of ``gray``, each
    with its number of detections; also on the mirror image with ``mirror`` (profiles facing the other way)."""
    kwargs = {"maxSize": (max_side, max_side)} if max_side else {}
    boxes = []
    for left, top, tile in _tiles(gray, (max_side or max(gray.shape)) + 8):
        for flip in (False, True) if mirror else (False,):
            image = np.ascontiguousarray(tile[:, ::-1]) if flip else tile
            found, votes = cascade.detectMultiScale2(image, scale_factor, neighbours, minSize=(HAAR_WINDOW, HAAR_WINDOW), **kwargs)
            for (x, y, w, h), v in zip(found, np.ravel(votes)):
                x = tile.shape[1] - x - w if flip else x
                boxes.append((Box(int(x) + left, int(y) + top, int(w), int(h)), int(v)))
    return boxes


def _grid(length: int, overlap: int, most: int) -> tuple[int, int]:
    """(count, step) of the fewest tiles of at most ``most`` plus ``overlap`` pixels that cover ``length``."""
    count = max(1, -(-(length - overlap) // most))
    return count, -(-(length - overlap) // count)


def _tiled_centerface(colour: np.ndarray) -> list[tuple[Box, float]]:
    """CenterFace's faces (in the Haar frame) of up to CENTERFACE_OVERLAP pixels, with their scores (at least
    CENTERFACE_PROPOSE), on overlapping tiles of an RGB array: the fewest tiles of up to CENTERFACE_TILE plus the
    overlap that cover it, all of one size (the network is read again for each new size)."""
    from . import centerface

    height, width = colour.shape[:2]
    (rows, down), (cols, across) = _grid(height, CENTERFACE_OVERLAP, CENTERFACE_TILE), _grid(width, CENTERFACE_OVERLAP, CENTERFACE_TILE)
    tile_h, tile_w = min(height, down + CENTERFACE_OVERLAP), min(width, across + CENTERFACE_OVERLAP)
    detector = centerface.Detector()  # for this photo only: the network keeps ~100 MB of buffers while it lives
    boxes = []
    for top in (min(r * down, height - tile_h) for r in range(rows)):
        for left in (min(c * across, width - tile_w) for c in range(cols)):
            tile = np.ascontiguousarray(colour[top : top + tile_h, left : left + tile_w])
            for cx, cy, w, h, score in detector(tile, CENTERFACE_PROPOSE):
                if w > CENTERFACE_OVERLAP:  # larger faces are seen whole by no tile: the Haar pyramid's
                    continue
                boxes.append((_centerface_box(left + cx, top + cy, w), score))
    kept = _remove_overlaps([b for b, _ in sorted(boxes, key=lambda b: -b[1])])
    return [(b, score) for b, score in boxes if b in kept]


def _centerface_box(cx: float, cy: float, width: float) -> Box:
    """CenterFace's face of ``width`` centred at (cx, cy) as a box in the Haar frame."""
    side = width * CENTERFACE_TO_HAAR_SIZE
    return Box(int(round(cx - side / 2)), int(round(cy - side / 2)), int(side), int(side))


def _fits_one_tile(level: np.ndarray) -> bool:
    return max(level.shape) <= GROUP_TILE + GROUP_LEVEL_MAX_FACE + 8


def _pyramid(finest: np.ndarray, scale: float) -> list[tuple[np.ndarray, float]]:
    """(level, scale) from ``finest`` (``scale`` times the photo) halving until a level fits in one tile."""
    levels = [(finest, scale)]
    while not _fits_one_tile(levels[-1][0]):
        levels.append((_resized(levels[-1][0], 0.5), levels[-1][1] * 0.5))
    return levels


def _without(gray: np.ndarray, boxes: list[Box], margin: float = 0.15) -> np.ndarray:
    """A copy of ``gray`` with each box (and ``margin`` of its side around it) filled with its median grey."""
    out = gray.copy()
    for b in boxes:
        m = int(margin * b.w)
        region = out[max(0, b.y - m) : b.y + b.h + m, max(0, b.x - m) : b.x + b.w + m]
        if region.size:
            region[...] = int(np.median(region))
    return out


def _haar_candidates(levels: list[tuple[np.ndarray, float]], keep_cascades: bool = False,
                     fine_levels: int = GROUP_FINE_LEVELS) -> list[tuple[Box, int]]:
    """Haar faces on every level (the fine cascade on the GROUP_FINE_LEVELS finest only), in the pixels the
    levels were made from, each with its number of detections (the cascade's neighbours), not yet confirmed. The
    last level, which fits in one tile, is searched for faces of every size: the alt2 cascade there finds large
    faces the chain can miss (two of four 1,000 px faces in a 12 MP collage). ``keep_cascades``: use the cascades
    kept loaded (small photos: their working buffers stay small) instead of loading them for this photo (0.05 CPU-s)."""
    boxes = []
    for name, neighbours, scale_factor in GROUP_CASCADES + (GROUP_FINE_CASCADE,):
        fine_only = (name, neighbours, scale_factor) == GROUP_FINE_CASCADE
        # loaded for this photo only, one at a time: OpenCV keeps a cascade's working buffers while it lives
        cascade = _group_cascade(name) if keep_cascades else _load_cascade(name)
        for level, scale in levels[:fine_levels] if fine_only else levels:
            max_side = None if _fits_one_tile(level) else GROUP_LEVEL_MAX_FACE
            boxes += [(b.scaled(1 / scale), v) for b, v in _tiled_haar(level, max_side, cascade, neighbours, fine_only, scale_factor)]
        del cascade
    return boxes


def _near(found: list[Box], cx: float, cy: float, side: float) -> Box | None:
    """The first of ``found`` centred within 0.3 ``side`` of (cx, cy) and 0.6 to 1.6 times as large, if any."""
    return next((b for b in found if abs(b.x + b.w / 2 - cx) < 0.3 * side and abs(b.y + b.h / 2 - cy) < 0.3 * side
                 and 0.6 < b.w / side < 1.6), None)


def _confirmed(source: np.ndarray, box: Box) -> Box | None:
    """Whether dlib HOG, both the alt2 and the default cascades (5 neighbours), the profile cascade or CenterFace
    (CENTERFACE_CLOSE_UP) see a face on a close-up of ``box`` (its box VERIFY_FACE_SIDE px), tried in that order.
    Measured on the candidates of 8 benchmark photos: HOG confirms most faces and no false box; alt2 alone
    confirmed 4 false boxes, alt2 and default together 1, and every face that HOG missed. Returns the face's box
    as the confirming detector puts it (in the Haar frame), else None."""
    cx, cy = box.x + box.w / 2, box.y + box.h / 2
    zoom = VERIFY_FACE_SIDE / box.w
    half = box.w  # the close-up is twice the box
    left, top = int(round(cx - half)), int(round(cy - half))
    side = 2 * half
    pads = ((max(0, -top), max(0, top + side - source.shape[0])), (max(0, -left), max(0, left + side - source.shape[1])))
    patch = source[max(0, top) : top + side, max(0, left) : left + side]
    if any(p for pair in pads for p in pair):
        patch = np.pad(patch, pads, mode="edge")
    patch = cv2.resize(patch, (2 * VERIFY_FACE_SIDE, 2 * VERIFY_FACE_SIDE),
                       interpolation=cv2.INTER_AREA if zoom < 1 else cv2.INTER_LINEAR)
    c = VERIFY_FACE_SIDE
    found = _near(_hog_boxes(patch, upsample=0), c, c, VERIFY_FACE_SIDE)
    if found is None:
        found = _both_frontal_on(patch)
    if found is None:
        found = _profile_on(patch)
    if found is None:
        found = _centerface_on(patch)
    if found is None:
        return None
    scale = 1 / zoom
    return Box(int(round(left + found.x * scale)), int(round(top + found.y * scale)), int(round(found.w * scale)),
               int(round(found.h * scale)))


def _both_frontal_on(patch: np.ndarray) -> Box | None:
    """The default cascade's face at the centre of a close-up if the alt2 cascade (3 neighbours) sees one there
    too, else None."""
    c = VERIFY_FACE_SIDE
    found = None
    for name, neighbours in (("frontalface_alt2", 3), ("frontalface_default", 5)):
        boxes = _group_cascade(name).detectMultiScale(patch, 1.1, neighbours, minSize=(60, 60))
        found = _near([Box(*map(int, f)) for f in boxes], c, c, c)
        if found is None:
            return None
    return found


def _profile_on(patch: np.ndarray) -> Box | None:
    """The profile cascade's face (5 neighbours, either way round) at the centre of a close-up, if any: HOG and
    the frontal cascades refuse most turned heads. On val scenes of faces 100 px wide, it and GROUP_FINE_LEVELS 2
    found 4 of the 7 faces missed before, and no false box on 12 faceless photos."""
    c = VERIFY_FACE_SIDE
    for flip in (False, True):
        image = np.ascontiguousarray(patch[:, ::-1]) if flip else patch
        boxes = [Box(*map(int, f)) for f in _group_cascade("profileface").detectMultiScale(image, 1.1, 5, minSize=(60, 60))]
        found = _near([Box(image.shape[1] - b.x - b.w, b.y, b.w, b.h) for b in boxes] if flip else boxes, c, c, c)
        if found is not None:
            return found
    return None


class _CloseUpCenterFace:
    """One CenterFace network for the close-ups, shared by the threads (one at a time: 10 ms a close-up) and
    let go after each photo (:meth:`release`): kept for the kernel's life, each thread's network held ~30 MB."""

    def __init__(self):
        self._lock, self._detector = threading.Lock(), None

    def __call__(self, patch: np.ndarray) -> list[tuple[float, float, float, float, float]]:
        with self._lock:
            if self._detector is None:
                from .centerface import Detector

                self._detector = Detector()
            return self._detector(np.dstack([patch] * 3), CENTERFACE_CLOSE_UP)

    def release(self) -> None:
        with self._lock:
            self._detector = None


_close_up_centerface = _CloseUpCenterFace()


def _centerface_on(patch: np.ndarray) -> Box | None:
    """CenterFace's face (score at least CENTERFACE_CLOSE_UP) at the centre of a close-up, if any."""
    c = VERIFY_FACE_SIDE
    return _near([_centerface_box(x, y, w) for x, y, w, _, _ in _close_up_centerface(patch)], c, c, c)


#: at most this many candidates of one face (overlapping boxes) are tried, most Haar detections first
GROUP_TRIES = 3


def _centerface_faces(image: Image.Image, source: np.ndarray, full_side: int) -> tuple[list[Box], float]:
    """CenterFace's faces of at least CENTERFACE_MIN_FACE pixels (full size) in ``image`` (the photo, any mode),
    placed by a close-up's confirming detector where one sees them, in ``source``'s pixels; and the largest face
    it looks for there (Haar frame). Faces the close-ups refuse are kept as CenterFace puts them: they are the
    covered and turned faces it is here for (no false box on 8 val photos without a face)."""
    scale = min(1.0, CENTERFACE_FACE / CENTERFACE_MIN_FACE * full_side / max(image.size))
    colour = _resized(np.asarray(image if image.mode == "RGB" else image.convert("RGB")), scale)
    to_source = source.shape[1] / colour.shape[1]
    return_freed_memory()  # what decoding the photo freed, before the network's working buffers (~65 MB) come on top
    found = [(b.scaled(to_source), score) for b, score in _tiled_centerface(colour)]
    placed = _in_parallel(lambda box: _confirmed(source, box[0]), found)
    return _remove_overlaps([p or (b if score >= CENTERFACE_THRESHOLD else None) for p, (b, score) in zip(placed, found)
                             if p or score >= CENTERFACE_THRESHOLD]), CENTERFACE_OVERLAP * CENTERFACE_TO_HAAR_SIZE * to_source


def _group_faces(source: np.ndarray, min_face: float, found: list[Box], largest_found: float | None = None) -> list[Box]:
    """Faces of at least ``min_face`` pixels anywhere in ``source``, confirmed, in its pixels, besides ``found``
    (faces found already: the one-face search's in photos up to GROUP_SEARCH_MIN_SIDE, else CenterFace's).

    ``found`` is blanked out before the cascades search the pyramid (the finest level shows ``min_face`` pixels
    as HAAR_WINDOW), whose small windows would otherwise spend most of their time inside them (measured on a
    scene of 30 faces 200 px wide: the profile cascade 3.4 -> 1.9 CPU-s). ``largest_found``: CenterFace looked for
    faces up to this size, so the levels between the finest and those of larger faces are left out, and the
    profile cascade runs on the finest level only. Overlapping Haar candidates are one face: tried most
    detections first (a lenient cascade also puts boxes twice too large around a small face), and the
    confirming detector's box is kept.
    """
    scale = min(1.0, HAAR_WINDOW / min_face)
    finest = _resized(source, scale)
    faces = list(found)
    levels = _pyramid(_without(finest, [f.scaled(scale) for f in faces]), scale)
    fine_levels = GROUP_FINE_LEVELS
    if largest_found is not None:
        levels = [(level, s) for k, (level, s) in enumerate(levels)
                  if k == 0 or GROUP_LEVEL_MAX_FACE / s > largest_found or _fits_one_tile(level)]
        fine_levels = GROUP_FINE_LEVELS_WITH_CENTERFACE
    clusters: list[list[Box]] = []
    for box, _ in sorted(_haar_candidates(levels, largest_found is None, fine_levels), key=lambda c: -c[1]):
        if any(_overlaps(box, f) for f in faces):
            continue
        for cluster in clusters:
            if _overlaps(box, cluster[0]):
                cluster.append(box)
                break
        else:
            clusters.append([box])
    def first_confirmed(cluster):
        return next((f for f in (_confirmed(source, box) for box in cluster[:GROUP_TRIES]) if f is not None), None)

    faces += [f for f in _in_parallel(first_confirmed, clusters) if f is not None]
    # of two confirmed faces one inside the other, the larger: the smaller is a part of it (or a face partly
    # hidden behind it), and keeping whichever came first lost the whole face
    return _remove_overlaps(faces)


def _confirmed_others(source: np.ndarray, boxes: list[Box], placed: list[Box]) -> list[Box]:
    """Those of the one-face search's ``boxes`` that a close-up confirms (:func:`_confirmed`), as the confirming
    detector places them (like the group search's faces), unless they fall on a face already ``placed``: the
    cascade's second box on a chin, a neck or lettering is refused."""
    confirmed = list(placed)
    for face in _in_parallel(lambda k: _confirmed(source, k), [b for b in boxes if not any(_overlaps(b, p) for p in placed)]):
        if face is not None and not any(_overlaps(face, f) for f in confirmed):
            confirmed.append(face)
    return confirmed[len(placed):]


def _largest_and_confirmed(gray: np.ndarray, boxes: list[Box]) -> list[Box]:
    """The largest of the one-face search's boxes, and the others a close-up confirms (:func:`_confirmed_others`)."""
    if len(boxes) < 2:
        return boxes
    largest = max(boxes, key=lambda b: b.w)
    return [largest] + _confirmed_others(gray, [b for b in boxes if b is not largest], [largest])


def _overlaps(a: Box, b: Box) -> bool:
    """Whether either box's centre falls inside the other."""
    def inside(p: Box, q: Box) -> bool:
        cx, cy = p.x + p.w / 2, p.y + p.h / 2
        return q.x <= cx <= q.x + q.w and q.y <= cy <= q.y + q.h
    return inside(a, b) or inside(b, a)


def detect_faces(image: Image.Image, detail: Image.Image | np.ndarray | None = None, full_side: int | None = None,
                 gray: Image.Image | None = None) -> list[Box]:
    """Return every face box in ``image`` (any mode), left to right, in ``image``'s pixels.

    Tries Haar, Haar on a padded photo (faces touching the border), dlib HOG, then
    the lenient last resorts, on a copy reduced to DETECT_MAX_SIDE. Photos larger than DETECT_MAX_SIDE (up to
    GROUP_SEARCH_MIN_SIDE: unless a portrait) are also searched for smaller faces (see the module's notes), in
    ``detail`` when given: the same photo at a higher resolution (any mode, or a greyscale array).
    ``full_side``: the photo's long side at full size, if ``detail`` is reduced (GROUP_MIN_FACE is in
    full-size pixels). ``gray``: ``image`` in greyscale, where the caller has it already.
    """
    try:
        return _detect_faces(image, detail, full_side, gray)
    finally:
        _close_up_centerface.release()


def _detect_faces(image: Image.Image, detail, full_side: int | None, gray: Image.Image | None) -> list[Box]:
    gray = np.asarray(gray if gray is not None else image if image.mode == "L" else image.convert("L"))
    if detail is None or isinstance(detail, np.ndarray):
        source = gray if detail is None else detail
    else:
        source = np.asarray(detail if detail.mode == "L" else detail.convert("L"))
    if max(source.shape) <= GROUP_SEARCH_MIN_SIDE:
        boxes = _largest_and_confirmed(gray, _chain(gray))
        portrait = len(boxes) == 1 and boxes[0].w >= PORTRAIT_FACE * min(gray.shape)
        if max(gray.shape) > DETECT_MAX_SIDE and not portrait:  # faces too small for the one-face search's copy
            boxes = _group_faces(gray, GROUP_MIN_FACE * max(gray.shape) / (full_side or max(gray.shape)), boxes)
        return sorted(boxes, key=lambda b: (b.x, b.y))
    factor = source.shape[1] / gray.shape[1]
    full = full_side or max(source.shape)
    group = _group_faces(source, GROUP_MIN_FACE * min(1.0, max(source.shape) / full), *_centerface_faces(image, source, full))
    boxes = _chain(gray, last_resort=False)
    chain = [b.scaled(factor) for b in boxes]
    if not group and not chain:  # the lenient last resorts look for one large face: only when nothing else is found
        return _last_resort_boxes(gray)
    if len(chain) == 1 and group and all(_overlaps(g, chain[0]) for g in group):
        return boxes  # a one-face photo: the chain's box, as in a small photo
    # the group search's faces stand; the chain's other boxes are confirmed (and placed) like them. Unconfirmed,
    # the chain's one box on a photo where the group search found nothing was a false face on 5 of 6 blotchy
    # 12 MP backgrounds
    faces = group + _confirmed_others(source, chain, group)
    return sorted((b.scaled(1 / factor) for b in faces), key=lambda b: (b.x, b.y))


def detect_live_faces(gray: np.ndarray) -> list[Box]:
    """Faces in a small camera frame (greyscale array), left to right: Haar, Haar on the padded frame, then
    dlib HOG, without the slow lenient last resorts (a frame with no face must cost little)."""
    return sorted(_chain(gray, last_resort=False), key=lambda b: (b.x, b.y))


def face_crop(gray: Image.Image, detail: np.ndarray | None, face: Box, size: int) -> Image.Image:
    """:func:`model_crop` of ``face`` (in ``gray``'s pixels), cut from ``detail`` (the same photo at a higher
    resolution, greyscale array) when the face is too small in ``gray`` for the context crop: so faces large
    enough are cut exactly as before, and small faces in large photos are not blown up from a reduced copy."""
    if detail is None or face.w * CROP_SCALE * CONTEXT >= round(size * CONTEXT) or detail.shape[1] <= gray.width:
        return model_crop(gray, face, size)
    box = face.scaled(detail.shape[1] / gray.width)
    # only the face's surroundings are handed over (cut_face copies its image): enough for the square turned
    # for a tilted head and for the eye finder's box, which reads past the crop (a region cut to the crop alone
    # moved the eyes found, by 4.6 degrees on a level face); the photo's own edges stay where they are, so the
    # edge pixels repeated beyond them are the same
    cx, cy, side = crop_box(box)
    reach = int(side * CONTEXT * ROTATION_MARGIN / 2) + 2
    left, top = max(0, int(cx) - reach), max(0, int(cy) - reach)
    region = Image.fromarray(np.ascontiguousarray(detail[top : int(cy) + reach + 1, left : int(cx) + reach + 1]))
    return model_crop(region, Box(box.x - left, box.y - top, box.w, box.h), size)


def crop_box(face: Box) -> tuple[float, float, float]:
    """Centre x, centre y and side of the model crop for a detector box."""
    side = face.w * CROP_SCALE
    return face.x + face.w / 2, face.y + face.h / 2 + CROP_SHIFT_Y * face.w, side


def cut_face(image: Image.Image, face: Box, size: int, context: float = 1.0, upright: bool = False) -> Image.Image:
    """Cut the square model crop (times ``context``) for ``face``, resized to ``size``.

    With ``upright`` a tilted head is turned level first (:func:`smilekit.align.tilt_degrees`, from the eyes).
    Parts outside the photo repeat its edge pixels, as the detector's padding does.
    Returns an image in the same mode as ``image``.
    """
    arr = np.asarray(image)
    degrees = align.tilt_degrees(arr if arr.ndim == 2 else np.asarray(image.convert("L")), face) if upright else 0.0
    cx, cy, side = crop_box(face)
    side *= context
    if degrees:  # a larger square, so that the turned crop's corners are still the photo's pixels
        side *= ROTATION_MARGIN
    left, top = int(round(cx - side / 2)), int(round(cy - side / 2))
    side_px = max(1, int(round(side)))
    pads = [(max(0, -top), max(0, top + side_px - arr.shape[0])), (max(0, -left), max(0, left + side_px - arr.shape[1]))]
    if arr.ndim == 3:
        pads.append((0, 0))
    if any(p for pair in pads for p in pair):
        arr = np.pad(arr, pads, mode="edge")
        top += pads[0][0]
        left += pads[1][0]
    crop = Image.fromarray(np.ascontiguousarray(arr[top : top + side_px, left : left + side_px]))
    if degrees:
        inner = side_px / ROTATION_MARGIN
        margin = (side_px - inner) / 2
        crop = crop.rotate(degrees, resample=Image.BICUBIC).crop((round(margin), round(margin), round(margin + inner), round(margin + inner)))
    return crop.resize((size, size), Image.BILINEAR)


#: how much larger than the crop the square turned for a tilted head is (above sqrt(2): its corners stay inside)
ROTATION_MARGIN = 1.45


def model_crop(image: Image.Image, face: Box, size: int) -> Image.Image:
    """The model's input for ``face``: cut upright with :data:`CONTEXT` like the training crops, then the centre."""
    context_size = int(round(size * CONTEXT))
    big = cut_face(image, face, context_size, CONTEXT, upright=True)
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


def face_in_crop(image: Image.Image, fallback: tuple = CROP_BOX_IN_TIGHT_CROP) -> Box:
    """The face box of an image that is already a face crop (the face fills the frame).

    Detects on the crop padded by half its side; if nothing is found, uses
    ``fallback`` (x, y, side as fractions of the crop side; default: the median
    geometry measured on SMILEsmileD). Like :func:`detect_faces`, large
    images are detected on a copy reduced to :data:`DETECT_MAX_SIDE`: the padding
    grows with the long side, and Haar on a padded 2048-pixel strip took ~500 MB.
    """
    gray, scale = _chain_input(np.asarray(image.convert("L")))
    boxes = _haar(gray, pad=0.5)
    if boxes:
        return max(boxes, key=lambda b: b.w).scaled(1 / scale)
    side = min(image.size)
    fx, fy, fs = fallback
    return Box(int(round(fx * side)), int(round(fy * side)), int(round(fs * side)), int(round(fs * side)))
