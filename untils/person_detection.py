"""Find people in a photo, offline, and pick the main one.

Every detector is a callable ``detector(rgb) -> list[Detection]`` taking an (H, W, 3) uint8
RGB array and returning person boxes ``[x1, y1, x2, y2]`` in that array's pixels:

* :class:`HogPersonDetector`: OpenCV's HOG pedestrian detector
  (``cv2.HOGDescriptor_getDefaultPeopleDetector``, a linear SVM on 64x128 windows). The photo
  is shrunk so its longer side is at most ``max_side``, and scanned once as it is and once
  inside a black border (so people taller than the frame, e.g. portraits, fit a window).
  Windows from both passes are merged with our non-maximum suppression. OpenCV 5 moved HOG
  out of the main package, so this detector exists only with OpenCV 4.x.
* :class:`FacePersonDetector`: scikit-image's LBP frontal-face cascade (the file ships with
  scikit-image), each face grown into a body box with fixed proportions (``BODY_FROM_FACE``).
  Finds people facing the camera, from portraits to small figures; misses people seen from
  behind.
* :class:`TorchvisionPersonDetector`: a torchvision detection model (Faster R-CNN,
  Keypoint R-CNN, ...) built without weights and loaded from a file the user supplies. Those
  models call torchvision's compiled ``nms``/``roi_align``; where they are missing (a CUDA
  build of torchvision on a CPU-only torch) it refuses at construction with a clear error.

:class:`OfflinePersonDetector` runs HOG (when OpenCV has it) and faces, and lists both.

The main person (:func:`main_person`) is the detection with the highest prominence
``area / image area * (1 - d / half_diagonal)``, ``d`` the distance from the box centre to
the image centre: large and central people win, and size counts as much as centrality.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import cv2
import numpy as np
import torch

from untils.boxes import box_iou
from untils.checkpoint import load_file

Box = tuple[int, int, int, int]
PersonDetector = Callable[[np.ndarray], list["Detection"]]

MAIN_PERSON_RULE = ("largest and most central: highest (box area / image area) * "
                    "(1 - distance of box centre from image centre / half the image diagonal)")
COCO_PERSON_LABEL = 1
TORCHVISION_ARCHS = ("fasterrcnn_mobilenet_v3_large_fpn", "fasterrcnn_mobilenet_v3_large_320_fpn",
                     "fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2", "keypointrcnn_resnet50_fpn",
                     "maskrcnn_resnet50_fpn", "retinanet_resnet50_fpn", "ssdlite320_mobilenet_v3_large")
# A face box (x, y, w, h) becomes the body box x+w/2 -/+ 1.6w, from y - 0.5h (hair) to
# y + 7h (about 7.5 head heights in all): a standing adult, cut by the frame as needed.
BODY_FROM_FACE = {"half_width": 1.6, "above": 0.5, "below": 7.0}
# The INRIA training windows are 64x128 with the pedestrian in the middle; HOG boxes are
# shrunk by these fractions of the window on each side to hug the person.
HOG_WINDOW_MARGIN = (0.2, 0.125)


class DetectorError(RuntimeError):
    """A person detector cannot be built or run here; the message says what to do instead."""


@dataclass(frozen=True)
class Detection:
    """A person box in image pixels; ``score`` is the detector's confidence where it has one."""

    box: Box
    score: Optional[float]
    detector: str
    evidence: Optional[Box] = None  # what was actually detected when the box is inferred (a face)

    def to_json(self) -> dict:
        entry = {"box": list(self.box), "score": self.score, "detector": self.detector}
        if self.evidence is not None:
            entry["evidence"] = list(self.evidence)
        return entry


def _check_rgb(rgb: np.ndarray) -> None:
    if not (isinstance(rgb, np.ndarray) and rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.dtype == np.uint8):
        described = f"{rgb.dtype} array of shape {rgb.shape}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
        raise ValueError(f"person detectors take an (H, W, 3) uint8 RGB array, got {described}")


def clip_to_image(x1: float, y1: float, x2: float, y2: float, width: int, height: int) -> Optional[Box]:
    """Whole-pixel box clipped to the image (outer rounding), or None when nothing is left."""
    box = (max(0, math.floor(x1)), max(0, math.floor(y1)), min(width, math.ceil(x2)), min(height, math.ceil(y2)))
    return box if box[2] > box[0] and box[3] > box[1] else None


def non_max_suppression(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    """Greedy NMS: indices kept, best score first; a box goes when its IoU with a kept one exceeds the threshold."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(boxes) != len(scores):
        raise ValueError(f"non_max_suppression got {len(boxes)} boxes and {len(scores)} scores")
    overlaps = box_iou(boxes, boxes)
    suppressed = np.zeros(len(boxes), dtype=bool)
    kept = []
    for index in np.argsort(-scores, kind="stable"):
        if suppressed[index]:
            continue
        kept.append(int(index))
        suppressed |= overlaps[index] > iou_threshold
    return kept


def prominence(box: Sequence[float], width: int, height: int) -> float:
    """Area share times centrality (1 at the image centre, 0 at a corner); see the module docstring."""
    x1, y1, x2, y2 = box
    area_share = max(0.0, x2 - x1) * max(0.0, y2 - y1) / (width * height)
    distance = math.hypot((x1 + x2) / 2 - width / 2, (y1 + y2) / 2 - height / 2)
    return area_share * (1.0 - distance / (math.hypot(width, height) / 2))


def main_person(detections: Sequence[Detection], width: int, height: int) -> Optional[int]:
    """Index of the main person (highest :func:`prominence`, first on ties), None without detections."""
    if not detections:
        return None
    values = [prominence(d.box, width, height) for d in detections]
    return int(np.argmax(values))


def _shrink_to(rgb: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """The image scaled so its longer side is at most ``max_side`` (never enlarged), and the scale."""
    scale = min(1.0, max_side / max(rgb.shape[:2]))
    if scale == 1.0:
        return rgb, 1.0
    size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA), scale


def hog_available() -> bool:
    """Whether this OpenCV has the HOG people detector (OpenCV 4.x does, 5.x does not)."""
    return hasattr(cv2, "HOGDescriptor") and hasattr(cv2, "HOGDescriptor_getDefaultPeopleDetector")


class HogPersonDetector:
    """OpenCV's HOG people detector on the shrunk photo, plain and bordered; see the module docstring."""

    name = "hog"

    def __init__(self, max_side: int = 640, border: float = 0.25, min_score: float = 0.5,
                 iou_threshold: float = 0.45) -> None:
        if not hog_available():
            raise DetectorError(f"OpenCV {cv2.__version__} has no HOG people detector (OpenCV 5 moved it out of "
                                "the main package); the face detector still works, or install opencv 4.x")
        self.max_side, self.border = max_side, border
        self.min_score, self.iou_threshold = min_score, iou_threshold
        self._hog = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_hog": None}  # cv2 objects do not pickle; rebuilt in each process

    def _descriptor(self):
        if self._hog is None:
            self._hog = cv2.HOGDescriptor()
            self._hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
        return self._hog

    def __call__(self, rgb: np.ndarray) -> list[Detection]:
        _check_rgb(rgb)
        height, width = rgb.shape[:2]
        small, scale = _shrink_to(rgb, self.max_side)
        boxes, scores = [], []
        for pad in (0, round(self.border * max(small.shape[:2]))):
            scanned = cv2.copyMakeBorder(small, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(0, 0, 0))
            rects, weights = self._descriptor().detectMultiScale(scanned, winStride=(8, 8), padding=(8, 8),
                                                                scale=1.05)
            for (x, y, w, h), weight in zip(np.reshape(rects, (-1, 4)), np.reshape(weights, -1)):
                if weight < self.min_score:
                    continue
                margin_x, margin_y = HOG_WINDOW_MARGIN[0] * w, HOG_WINDOW_MARGIN[1] * h
                boxes.append([(x - pad + margin_x) / scale, (y - pad + margin_y) / scale,
                              (x - pad + w - margin_x) / scale, (y - pad + h - margin_y) / scale])
                scores.append(float(weight))
        detections = []
        for index in non_max_suppression(np.array(boxes), np.array(scores), self.iou_threshold):
            box = clip_to_image(*boxes[index], width, height)
            if box is not None:
                detections.append(Detection(box, round(scores[index], 4), self.name))
        return detections


class FacePersonDetector:
    """scikit-image's LBP frontal-face cascade, each face grown into a body box; see the module docstring."""

    name = "face"

    def __init__(self, max_side: int = 512, min_face: float = 0.04, scale_factor: float = 1.2,
                 min_neighbours: int = 6) -> None:
        self.max_side, self.min_face, self.scale_factor = max_side, min_face, scale_factor
        self.min_neighbours = min_neighbours  # overlapping hits a face needs; scikit-image's 4 lets blur through
        self._cascade = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_cascade": None}  # the Cython cascade does not pickle; rebuilt in each process

    def _detector(self):
        if self._cascade is None:
            from skimage import data
            from skimage.feature import Cascade
            self._cascade = Cascade(data.lbp_frontal_face_cascade_filename())
        return self._cascade

    def __call__(self, rgb: np.ndarray) -> list[Detection]:
        _check_rgb(rgb)
        height, width = rgb.shape[:2]
        small, scale = _shrink_to(rgb, self.max_side)
        shorter = min(small.shape[:2])
        smallest = max(16, round(self.min_face * shorter))
        if shorter < smallest:
            return []
        faces = self._detector().detect_multi_scale(img=small, scale_factor=self.scale_factor, step_ratio=1,
                                                    min_size=(smallest, smallest), max_size=(shorter, shorter),
                                                    min_neighbor_number=self.min_neighbours)
        detections = []
        for face in faces:
            x, y = face["c"] / scale, face["r"] / scale
            w, h = face["width"] / scale, face["height"] / scale
            centre = x + w / 2
            body = clip_to_image(centre - BODY_FROM_FACE["half_width"] * w, y - BODY_FROM_FACE["above"] * h,
                                 centre + BODY_FROM_FACE["half_width"] * w, y + BODY_FROM_FACE["below"] * h,
                                 width, height)
            face_box = clip_to_image(x, y, x + w, y + h, width, height)
            if body is not None:
                detections.append(Detection(body, None, self.name, evidence=face_box))
        return detections


class OfflinePersonDetector:
    """HOG (where this OpenCV has it) and faces, their detections listed together."""

    def __init__(self) -> None:
        self.detectors: list[PersonDetector] = ([HogPersonDetector()] if hog_available() else [])
        self.detectors.append(FacePersonDetector())
        self.name = "+".join(detector.name for detector in self.detectors)

    def __call__(self, rgb: np.ndarray) -> list[Detection]:
        return [detection for detector in self.detectors for detection in detector(rgb)]


def _read_detector_state(weights_path: str) -> dict:
    state = load_file(weights_path, "detector weights file", DetectorError, weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not (isinstance(state, dict) and state and all(torch.is_tensor(v) for v in state.values())):
        raise DetectorError(f"detector weights file {weights_path!r} holds no state_dict")
    return state


class TorchvisionPersonDetector:
    """A torchvision detection model loaded from ``weights_path``; people are COCO label 1.

    Built with ``weights=None, weights_backbone=None`` (nothing is downloaded), loaded strictly,
    and tried once on a small blank image: if it cannot run here a :class:`DetectorError` says why.
    """

    def __init__(self, weights_path: str, arch: str = "fasterrcnn_mobilenet_v3_large_fpn",
                 min_score: float = 0.5, device: str | torch.device = "cpu") -> None:
        from untils.torchvision_compat import models
        if arch not in TORCHVISION_ARCHS:
            raise DetectorError(f"unknown detector architecture {arch!r}; expected one of {list(TORCHVISION_ARCHS)}")
        state = _read_detector_state(weights_path)
        model = getattr(models.detection, arch)(weights=None, weights_backbone=None)
        try:
            model.load_state_dict(state)
        except RuntimeError as error:
            raise DetectorError(f"{weights_path!r} is not a state_dict of torchvision's {arch} "
                                f"({str(error).splitlines()[0]}); pass --detector-arch to match it") from error
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.name, self.min_score = f"torchvision:{arch}", min_score
        try:
            self._run(np.zeros((64, 64, 3), dtype=np.uint8))
        except Exception as error:
            raise DetectorError(
                f"torchvision's {arch} cannot run on this installation ({type(error).__name__}: "
                f"{str(error).splitlines()[0][:300]}). Its compiled operators (nms, roi_align) are missing: "
                "this torchvision is built for a different torch (e.g. a CUDA build on a CPU-only torch). "
                "Use --detect-human without --detector-weights (offline HOG/face detection), "
                "or give the person with --human-box / --human-boxes.") from error

    @torch.inference_mode()
    def _run(self, rgb: np.ndarray) -> dict:
        pixels = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).to(self.device, torch.float32) / 255
        return self.model([pixels])[0]

    def __call__(self, rgb: np.ndarray) -> list[Detection]:
        _check_rgb(rgb)
        height, width = rgb.shape[:2]
        output = self._run(rgb)
        detections = []
        for box, label, score in zip(output["boxes"].cpu().tolist(), output["labels"].cpu().tolist(),
                                     output["scores"].cpu().tolist()):
            clipped = clip_to_image(*box, width, height)
            if label == COCO_PERSON_LABEL and score >= self.min_score and clipped is not None:
                detections.append(Detection(clipped, round(float(score), 4), self.name))
        return detections


def build_person_detector(weights_path: Optional[str] = None, arch: str = "fasterrcnn_mobilenet_v3_large_fpn",
                          device: str | torch.device = "cpu") -> PersonDetector:
    """The torchvision model when ``weights_path`` is given, else the offline HOG/face detector."""
    if weights_path:
        return TorchvisionPersonDetector(weights_path, arch, device=device)
    return OfflinePersonDetector()
