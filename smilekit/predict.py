"""Photo in, faces out: detect every face, cut its crop, and say whether it smiles."""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .vision import faces
from .calibration import Calibration
from .vision.images import ImageError, load_image, load_photo
from .runtime import (DEFAULT_THRESHOLD, INPUT_SIZE, ExportedModel, channels_of, crop_mode, crops_to_array,
                      decision_threshold, default_model_path, probabilities)
from .settings import UNSURE_BAND

#: photos reduced for work (smilekit.vision.images.WORK_MAX_SIDE) are also read up to this long side, to find and cut
#: small faces. Val scenes of 4,000 x 3,000 px, faces 40 px wide, at smilekit.vision.faces.SCORE_THRESHOLD: YuNet found
#: 112 of 114 at 3,072 px in colour (98 in grey), 113 at 3,584 px; then on 10 scenes of 30 faces (bench_groups.py
#: --split val --scenes 10): 40 px 291 of 294 at 3,584 px, 293 at 4,096; 60 px 288 / 289 of 290; 0.65 / 0.73 s a photo
DETAIL_MAX_SIDE = 4096


@dataclass
class FacePrediction:
    """One face: its box and landmarks in the upright photo's own pixels, and the model's answer."""

    index: int
    box: faces.Box
    probability: float  # calibrated probability of smiling
    crop: Image.Image = field(repr=False)  # the 64x64 crop the model saw (RGB for a colour model, else grey)
    detected: bool = True  # False when the whole photo was classified as one face
    threshold: float = DEFAULT_THRESHOLD  # the model's decision threshold (from its checkpoint)

    @property
    def smiling(self) -> bool:
        return self.probability >= self.threshold

    @property
    def label(self) -> str:
        return "Smiling" if self.smiling else "Not smiling"

    @property
    def unsure(self) -> bool:
        """The probability is within ``settings.UNSURE_BAND`` of the threshold: feedback on this face helps most."""
        return abs(self.probability - self.threshold) < UNSURE_BAND

    @property
    def confidence(self) -> float:
        """Probability of the label given."""
        return self.probability if self.smiling else 1.0 - self.probability

    def to_dict(self) -> dict:
        landmarks = [[round(float(x), 1), round(float(y), 1)] for x, y in self.box.points()]
        return {"box": list(self.box.as_tuple()), "landmarks": landmarks, "smiling": self.smiling,
                "probability": round(self.probability, 4)}


@dataclass
class PhotoPrediction:
    image: Image.Image = field(repr=False)  # the upright RGB photo, reduced for work (see size)
    faces: list[FacePrediction]
    model_version: str
    size: tuple[int, int] = (0, 0)  # the upright photo's own width and height, the pixels the boxes are in

    def shown_box(self, face: FacePrediction) -> faces.Box:
        """``face``'s box in the pixels of :attr:`image` (to draw on it)."""
        return face.box.scaled(self.image.width / self.size[0]) if self.size[0] else face.box


class Predictor:
    """Loads a model once and classifies photos or crops (scikit-learn style ``predict_proba``).

    Runs the checkpoint's ONNX export when there is one (no torch needed), else
    the torch checkpoint itself; torch is loaded only for :meth:`saliency`.
    """

    def __init__(self, model_path=None):
        self.model_path = Path(model_path) if model_path else default_model_path()
        if not self.model_path.is_file():
            raise FileNotFoundError(f"No model checkpoint at {self.model_path}")
        self._torch_model = None  # the checkpoint as trained, for saliency: loaded when first needed
        exported = ExportedModel.of_checkpoint(self.model_path)
        if exported is not None:
            self.meta, self._logits = exported.meta, exported.logits
        else:
            import torch

            from .learn.model import fuse_for_inference, load_checkpoint, logits_of

            self._torch_model, self.meta = load_checkpoint(self.model_path)
            fast_model = fuse_for_inference(self._torch_model)  # a folded copy; the original keeps its gradients
            self._logits = lambda x: logits_of(fast_model, torch.from_numpy(x))
        self.channels = channels_of(self.meta)  # 1: the network reads grey faces, 3: RGB
        self.crop_mode = crop_mode(self.channels)  # the PIL mode of the crops it reads
        self.runtime = "onnx" if exported is not None else "torch"
        self.temperature = float(self.meta.get("temperature", 1.0))
        self.threshold = decision_threshold(self.meta)
        self.calibration: Calibration | None = None  # fitted on this deployment's verdicts (see calibrate)

    @property
    def version(self) -> str:
        """The version verdicts are stored under: the weights' own, with the calibration's id when one is in use."""
        return self.calibration.served_version(self.meta["version"]) if self.calibration else self.meta["version"]

    def calibrate(self, calibration: Calibration | None) -> None:
        """Use ``calibration`` (from :meth:`smilekit.store.feedback.FeedbackStore.calibration_for`; None: none) from now on."""
        self.calibration = calibration

    def predict_proba(self, crops) -> np.ndarray:
        """Probability of smiling for 64x64 crops (PIL images or uint8 arrays, grey or RGB: each is turned into what
        the network reads)."""
        probs = probabilities(self._logits(crops_to_array(crops, self.channels)), self.temperature)
        return self.calibration.apply(probs) if self.calibration else probs

    def predict(self, source, whole_image: bool = False) -> PhotoPrediction:
        """Every face in a photo (bytes, path or PIL image).

        With ``whole_image`` the photo is treated as one face (for when no face is
        found, or for ready-made face crops). Raises :class:`smilekit.vision.images.ImageError`
        for files that are not usable images.
        """
        if whole_image:
            image, detail = load_image(source), None
        else:
            # photos reduced for work also come as a larger copy, up to DETAIL_MAX_SIDE: faces are found and cut there
            image, detail = load_photo(source, detail_side=DETAIL_MAX_SIDE)
        pixels = np.asarray(detail if detail is not None else image)  # one copy of the pixels, not two
        del detail
        boxes = [faces.face_in_crop(image)] if whole_image else faces.detect_faces(pixels)
        crops = [faces.model_crop(pixels, box, INPUT_SIZE).convert(self.crop_mode) for box in boxes]
        probs = self.predict_proba(crops) if crops else []
        size = _photo_size(source, image)
        to_photo = size[0] / pixels.shape[1]
        found = [FacePrediction(i, b.scaled(to_photo), float(p), c, not whole_image, self.threshold)
                 for i, (b, p, c) in enumerate(zip(boxes, probs, crops))]
        return PhotoPrediction(image, found, self.version, size)

    def score_samples(self, samples, progress: bool = False, transform=None) -> tuple[np.ndarray, np.ndarray]:
        """Probability of smiling for each labelled sample through the app's path, and its status.

        Crops are classified whole; photos go through face detection and the
        largest face counts. Status is "face", "no_face" or "unreadable"
        (probability NaN for the last two). ``transform`` (PIL image -> PIL
        image) changes each loaded image first, e.g. to simulate another camera.
        """
        from tqdm.auto import tqdm

        probs, status = np.full(len(samples), np.nan), np.full(len(samples), "face", dtype=object)
        for i, sample in enumerate(tqdm(samples, desc="scoring", disable=not progress, mininterval=2)):
            try:
                source = sample.path if transform is None else transform(load_image(sample.path))
                result = self.predict(source, whole_image=sample.is_crop).faces
            except ImageError:
                status[i] = "unreadable"
                continue
            if result:
                probs[i] = max(result, key=lambda f: f.box.w).probability
            else:
                status[i] = "no_face"
        return probs, status

    @property
    def can_explain(self) -> bool:
        """Whether :meth:`saliency` can run: it needs torch (the "learn" extra), which serving alone leaves out."""
        return self._torch_model is not None or importlib.util.find_spec("torch") is not None

    def saliency(self, crop: Image.Image) -> np.ndarray:
        """Where the model looked: |d logit / d pixel|, smoothed, scaled to [0, 1] (64 x 64).

        Needs torch (see :attr:`can_explain`); without it, ``ModuleNotFoundError``.
        """
        import torch

        from .learn.model import crops_to_tensor, load_checkpoint

        if self._torch_model is None:
            self._torch_model = load_checkpoint(self.model_path)[0]
        x = crops_to_tensor([crop], self.channels).requires_grad_(True)
        self._torch_model(x).sum().backward()
        grad = x.grad.abs()[0].amax(dim=0)  # the strongest of the pixel's channels
        grad = torch.nn.functional.avg_pool2d(grad[None, None], 5, stride=1, padding=2)[0, 0]
        return (grad / grad.max().clamp_min(1e-12)).numpy()


def _photo_size(source, image: Image.Image) -> tuple[int, int]:
    """The upright photo's own size: ``image``'s before it was reduced, or what a PIL ``source`` says it is."""
    given = source.info.get("full_size") if isinstance(source, Image.Image) else None
    return tuple(image.info.get("full_size") or given or image.size)
