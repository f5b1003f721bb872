"""Find people in a photo and pick the main one (``MAIN_PERSON_RULE``): detectors are callables
``detector(rgb) -> list[Detection]``, the torchvision model or, where it cannot be had, the offline
HOG and face detectors (README.md, "Person detection", describes them and the rules).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import urllib.parse
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np
import torch

from untils.boxes import box_iou
from untils.checkpoint import load_file

Box = tuple[int, int, int, int]

CONFIDENT_FRACTION = 0.8
DUPLICATE_IOU = 0.5
# A face counts as lying in a box when this share of its area is inside it.
FACE_INSIDE_SHARE = 0.8
MAIN_PERSON_RULE = (
    f"most confident, then largest and most central: detections scoring below {CONFIDENT_FRACTION} "
    "of the best score of their own detector are set aside (a detection without a score counts "
    "as its detector's best); among the rest, the highest (box area / image area) * "
    "(1 - distance of box centre from image centre / half the image diagonal)"
)
COCO_PERSON_LABEL = 1
DEFAULT_TORCHVISION_ARCH = "fasterrcnn_mobilenet_v3_large_fpn"
TORCHVISION_ARCHS = (
    "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_mobilenet_v3_large_320_fpn",
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "keypointrcnn_resnet50_fpn",
    "maskrcnn_resnet50_fpn",
    "retinanet_resnet50_fpn",
    "ssdlite320_mobilenet_v3_large",
)
# A face box (x, y, w, h) becomes the body box x+w/2 -/+ 1.6w, from y - 0.5h (hair) to
# y + 7h (about 7.5 head heights in all): a standing adult, cut by the frame as needed.
BODY_FROM_FACE = {"half_width": 1.6, "above": 0.5, "below": 7.0}
# The INRIA training windows are 64x128 with the pedestrian in the middle; HOG boxes are
# shrunk by these fractions of the window on each side to hug the person.
HOG_WINDOW_MARGIN = (0.2, 0.125)


class PersonDetector(Protocol):
    """What finds people: called on an RGB photo; ``name`` says which detector found them."""

    @property
    def name(self) -> str: ...

    def __call__(self, rgb: np.ndarray) -> list[Detection]: ...


class DetectorError(RuntimeError):
    """A person detector cannot be built or run here; the message says what to do instead."""


class DetectorFallbackWarning(UserWarning):
    """The torchvision detector could not be had; the offline detector is used instead."""


@dataclass(frozen=True)
class Detection:
    """A person box in image pixels; ``score`` is the detector's confidence where it has one.

    ``main`` marks the main person (:func:`choose_main_person`); ``also_found_by`` names the other
    detectors whose duplicates of this person were merged into it (:func:`merge_duplicates`).
    """

    box: Box
    score: float | None
    detector: str
    evidence: Box | None = None  # what was actually detected when the box is inferred (a face)
    main: bool = False
    also_found_by: tuple[str, ...] = ()

    def to_json(self) -> dict:
        entry = {
            "box": list(self.box),
            "score": self.score,
            "detector": self.detector,
            "main": self.main,
            "also_found_by": list(self.also_found_by),
        }
        if self.evidence is not None:
            entry["evidence"] = list(self.evidence)
        return entry


def _check_rgb(rgb: np.ndarray) -> None:
    if not (isinstance(rgb, np.ndarray) and rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.dtype == np.uint8):
        described = f"{rgb.dtype} array of shape {rgb.shape}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
        raise ValueError(f"person detectors take an (H, W, 3) uint8 RGB array, got {described}")


def clip_to_image(x1: float, y1: float, x2: float, y2: float, width: int, height: int) -> Box | None:
    """Whole-pixel box clipped to the image (outer rounding), or None when nothing is left."""
    box = (max(0, math.floor(x1)), max(0, math.floor(y1)), min(width, math.ceil(x2)), min(height, math.ceil(y2)))
    return box if box[2] > box[0] and box[3] > box[1] else None


def _greedy_suppression(order: Iterable[int], duplicates: np.ndarray) -> dict[int, list[int]]:
    """Walk ``order``; keep an index unless it duplicates one already kept (``duplicates[i, j]``).

    Returns ``{kept index: [indices merged into it]}`` in the order kept.
    """
    kept: dict[int, list[int]] = {}
    for index in order:
        owner = next((k for k in kept if duplicates[k, index]), None)
        if owner is None:
            kept[int(index)] = []
        else:
            kept[owner].append(int(index))
    return kept


def non_max_suppression(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    """Greedy NMS: indices kept, best score first; a box goes when its IoU with a kept one exceeds the threshold."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(boxes) != len(scores):
        raise ValueError(f"non_max_suppression got {len(boxes)} boxes and {len(scores)} scores")
    return list(_greedy_suppression(np.argsort(-scores, kind="stable"), box_iou(boxes, boxes) > iou_threshold))


def _face_in_top_half(inferred: Detection, measured: Detection) -> bool:
    """Whether ``inferred`` was grown from a face that lies in the top half of ``measured``'s box."""
    if inferred.evidence is None or measured.evidence is not None:
        return False
    fx1, fy1, fx2, fy2 = inferred.evidence
    mx1, my1, mx2, my2 = measured.box
    inside = max(0, min(fx2, mx2) - max(fx1, mx1)) * max(0, min(fy2, my2) - max(fy1, my1))
    return inside >= FACE_INSIDE_SHARE * (fx2 - fx1) * (fy2 - fy1) and (fy1 + fy2) / 2 <= (my1 + my2) / 2


def merge_duplicates(detections: Sequence[Detection], iou_threshold: float = DUPLICATE_IOU) -> list[Detection]:
    """One detection per person, across and within detectors; see the module docstring."""
    if not detections:
        return []
    boxes = np.array([d.box for d in detections], dtype=np.float64)
    duplicates = box_iou(boxes, boxes) > iou_threshold
    for i, first in enumerate(detections):
        for j, second in enumerate(detections):
            duplicates[i, j] |= _face_in_top_half(first, second)
    duplicates |= duplicates.T
    order = sorted(range(len(detections)), key=lambda i: (detections[i].score is None, -(detections[i].score or 0.0)))
    merged = []
    for kept, absorbed in _greedy_suppression(order, duplicates).items():
        detection = detections[kept]
        others = {detections[i].detector for i in absorbed} - {detection.detector}
        merged.append(dataclasses.replace(detection, also_found_by=tuple(sorted(others))))
    return merged


def prominence(box: Sequence[float], width: int, height: int) -> float:
    """Area share times centrality (1 at the image centre, 0 at a corner); see the module docstring."""
    x1, y1, x2, y2 = box
    area_share = max(0.0, x2 - x1) * max(0.0, y2 - y1) / (width * height)
    distance = math.hypot((x1 + x2) / 2 - width / 2, (y1 + y2) / 2 - height / 2)
    return area_share * (1.0 - distance / (math.hypot(width, height) / 2))


def confident(detections: Sequence[Detection]) -> list[bool]:
    """Whether each detection scores at least ``CONFIDENT_FRACTION`` of its detector's best (no score: yes)."""
    best: dict[str, float] = {}
    for detection in detections:
        if detection.score is not None:
            best[detection.detector] = max(best.get(detection.detector, -math.inf), detection.score)
    # Written as a margin below the best so that a detector with scores <= 0 keeps at least its best.
    return [
        d.score is None or d.score >= best[d.detector] - (1 - CONFIDENT_FRACTION) * abs(best[d.detector])
        for d in detections
    ]


def main_person(detections: Sequence[Detection], width: int, height: int) -> int | None:
    """Index of the main person by ``MAIN_PERSON_RULE``, None without detections."""
    if not detections:
        return None
    values = [
        prominence(d.box, width, height) if keep else -math.inf
        for d, keep in zip(detections, confident(detections), strict=True)
    ]
    return int(np.argmax(values))


def choose_main_person(detections: Sequence[Detection], width: int, height: int) -> list[Detection]:
    """The detections with the main person (:func:`main_person`) marked ``main``, the rest unmarked."""
    chosen = main_person(detections, width, height)
    return [dataclasses.replace(d, main=index == chosen) for index, d in enumerate(detections)]


def _shrink_to(rgb: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """The image scaled so its longer side is at most ``max_side`` (never enlarged), and the scale."""
    scale = min(1.0, max_side / max(rgb.shape[:2]))
    if scale == 1.0:
        return rgb, 1.0
    size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA), scale


def hog_available() -> bool:
    """Whether this OpenCV has the HOG people detector (OpenCV 4.x does, 5.x does not)."""
    return hasattr(cv2, "HOGDescriptor") and hasattr(cv2.HOGDescriptor, "getDefaultPeopleDetector")


class HogPersonDetector:
    """OpenCV's HOG people detector on the shrunk photo, plain and bordered; see the module docstring."""

    name = "hog"

    def __init__(
        self, max_side: int = 640, border: float = 0.25, min_score: float = 0.5, iou_threshold: float = 0.45
    ) -> None:
        if not hog_available():
            raise DetectorError(
                f"OpenCV {cv2.__version__} has no HOG people detector (OpenCV 5 moved it out of "
                "the main package); the face detector still works, or install opencv 4.x"
            )
        self.max_side, self.border = max_side, border
        self.min_score, self.iou_threshold = min_score, iou_threshold
        self._hog: cv2.HOGDescriptor | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_hog": None}  # cv2 objects do not pickle; rebuilt in each process

    def _descriptor(self) -> cv2.HOGDescriptor:
        if self._hog is None:
            self._hog = cv2.HOGDescriptor()
            self._hog.setSVMDetector(np.asarray(cv2.HOGDescriptor.getDefaultPeopleDetector(), dtype=np.float32))
        return self._hog

    def __call__(self, rgb: np.ndarray) -> list[Detection]:
        _check_rgb(rgb)
        height, width = rgb.shape[:2]
        small, scale = _shrink_to(rgb, self.max_side)
        boxes, scores = [], []
        for pad in (0, round(self.border * max(small.shape[:2]))):
            scanned = cv2.copyMakeBorder(small, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(0, 0, 0))
            rects, weights = self._descriptor().detectMultiScale(scanned, winStride=(8, 8), padding=(8, 8), scale=1.05)
            for (x, y, w, h), weight in zip(np.reshape(rects, (-1, 4)), np.reshape(weights, -1), strict=True):
                if weight < self.min_score:
                    continue
                margin_x, margin_y = HOG_WINDOW_MARGIN[0] * w, HOG_WINDOW_MARGIN[1] * h
                boxes.append(
                    [
                        (x - pad + margin_x) / scale,
                        (y - pad + margin_y) / scale,
                        (x - pad + w - margin_x) / scale,
                        (y - pad + h - margin_y) / scale,
                    ]
                )
                scores.append(float(weight))
        detections = []
        for index in non_max_suppression(np.array(boxes), np.array(scores), self.iou_threshold):
            x1, y1, x2, y2 = boxes[index]
            box = clip_to_image(x1, y1, x2, y2, width, height)
            if box is not None:
                detections.append(Detection(box, round(scores[index], 4), self.name))
        return detections


class FacePersonDetector:
    """scikit-image's LBP frontal-face cascade, each face grown into a body box; see the module docstring."""

    name = "face"

    def __init__(
        self, max_side: int = 512, min_face: float = 0.04, scale_factor: float = 1.2, min_neighbours: int = 6
    ) -> None:
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
        faces = self._detector().detect_multi_scale(
            img=small,
            scale_factor=self.scale_factor,
            step_ratio=1,
            min_size=(smallest, smallest),
            max_size=(shorter, shorter),
            min_neighbor_number=self.min_neighbours,
        )
        detections = []
        for face in faces:
            x, y = face["c"] / scale, face["r"] / scale
            w, h = face["width"] / scale, face["height"] / scale
            centre = x + w / 2
            body = clip_to_image(
                centre - BODY_FROM_FACE["half_width"] * w,
                y - BODY_FROM_FACE["above"] * h,
                centre + BODY_FROM_FACE["half_width"] * w,
                y + BODY_FROM_FACE["below"] * h,
                width,
                height,
            )
            face_box = clip_to_image(x, y, x + w, y + h, width, height)
            if body is not None:
                detections.append(Detection(body, None, self.name, evidence=face_box))
        return detections


class OfflinePersonDetector:
    """HOG (where this OpenCV has it) and faces, their detections listed together, duplicates merged."""

    def __init__(self) -> None:
        self.detectors: list[PersonDetector] = [HogPersonDetector()] if hog_available() else []
        self.detectors.append(FacePersonDetector())
        self.name = "+".join(detector.name for detector in self.detectors)

    def __call__(self, rgb: np.ndarray) -> list[Detection]:
        return merge_duplicates([detection for detector in self.detectors for detection in detector(rgb)])


def _first_sentence(error: BaseException) -> str:
    """The start of an error's message: torchvision's and torch's go on for lines of advice."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text.split(". ")[0][:200]


def torchvision_ops_problem(device: str | torch.device = "cpu") -> str | None:
    """Why torchvision's compiled ``nms``/``roi_align`` cannot run on ``device``, or None when they can.

    torchvision's detection models call both; this tries each on a tiny input.
    """
    try:
        from untils.torchvision_compat import torchvision

        boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0]], device=device)
        torchvision.ops.nms(boxes, torch.ones(1, device=device), 0.5)
        torchvision.ops.roi_align(torch.zeros(1, 1, 4, 4, device=device), [boxes], output_size=2)
    except Exception as error:  # missing library, missing kernel, wrong device: all mean "cannot run"
        return f"{type(error).__name__}: {_first_sentence(error)}"
    return None


def _read_detector_state(weights_path: str) -> dict:
    state = load_file(weights_path, "detector weights file", DetectorError)
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not (isinstance(state, dict) and state and all(torch.is_tensor(v) for v in state.values())):
        raise DetectorError(f"detector weights file {weights_path!r} holds no state_dict")
    return state


def _hub_cache_file(url: str) -> str:
    """Where ``torch.hub.load_state_dict_from_url`` keeps the file downloaded from ``url``."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urllib.parse.urlparse(url).path))


def _weights_api_state(arch: str, allow_download: bool) -> tuple[dict, str]:
    """The state_dict of ``arch``'s DEFAULT weights from torchvision's weights API, and their URL."""
    from untils.torchvision_compat import models

    weights = models.get_model_weights(arch).DEFAULT
    advice = (
        f"download {weights.url} and pass it with --detector-weights FILE, "
        f"or place it in torch's hub cache ({os.path.dirname(_hub_cache_file(weights.url))})"
    )
    if not allow_download and not os.path.isfile(_hub_cache_file(weights.url)):
        raise DetectorError(f"the {weights} weights are not in torch's hub cache and downloads are off; {advice}")
    try:
        state = weights.get_state_dict(progress=True, check_hash=True, weights_only=True, map_location="cpu")
    except Exception as error:  # offline, proxy, corrupt cache: all end the same way for the user
        raise DetectorError(
            f"could not get the {weights} weights ({type(error).__name__}: {_first_sentence(error)}); {advice}"
        ) from error
    return state, weights.url


def _check_arch(arch: str) -> None:
    if arch not in TORCHVISION_ARCHS:
        raise DetectorError(f"unknown detector architecture {arch!r}; expected one of {list(TORCHVISION_ARCHS)}")


def _check_torchvision_runs(arch: str, device: torch.device, advice: str = "") -> None:
    problem = torchvision_ops_problem(device)
    if problem is not None:
        raise DetectorError(
            f"torchvision's {arch} cannot run on this installation: its compiled operators "
            f"(nms, roi_align) fail ({problem}); this torchvision is built for a different "
            f"torch (e.g. a CUDA build on a CPU-only torch){advice}"
        )


def _torchvision_model(arch: str, state: dict, source: str) -> torch.nn.Module:
    """``arch`` built without weights (nothing downloaded), ``state`` loaded strictly."""
    from untils.torchvision_compat import models

    model = getattr(models.detection, arch)(weights=None, weights_backbone=None)
    try:
        # torchvision's own files were saved from FrozenBatchNorm2d and lack num_batches_tracked:
        # BatchNorm2d fills it in, and in eval mode computes the same.
        model.load_state_dict(state)
    except RuntimeError as error:
        raise DetectorError(
            f"{source!r} is not a state_dict of torchvision's {arch} "
            f"({str(error).splitlines()[0]}); pass --detector-arch to match it"
        ) from error
    return model


class TorchvisionPersonDetector:
    """A torchvision COCO detection model; people are label 1. See the module docstring.

    The weights come from ``weights_path`` when given, else from torchvision's weights API
    (``allow_download=False``: only from torch's hub cache), loaded weights-only. A
    :class:`DetectorError` says why when the weights cannot be had or the model cannot run
    here; without a file, whether it can run is checked before anything is downloaded.
    """

    def __init__(
        self,
        weights_path: str | None = None,
        arch: str = DEFAULT_TORCHVISION_ARCH,
        min_score: float = 0.5,
        device: str | torch.device = "cpu",
        allow_download: bool = True,
    ) -> None:
        _check_arch(arch)
        self.device = torch.device(device)
        self.name, self.min_score = f"torchvision:{arch}", min_score
        if weights_path:
            self.weights_source = weights_path
            model = _torchvision_model(arch, _read_detector_state(weights_path), weights_path)
            _check_torchvision_runs(
                arch,
                self.device,
                ". Use --detect-human without --detector-weights "
                "(offline HOG/face detection), or give the person with --human-box / --human-boxes",
            )
        else:
            _check_torchvision_runs(arch, self.device)
            state, self.weights_source = _weights_api_state(arch, allow_download)
            model = _torchvision_model(arch, state, self.weights_source)
        self.model = model.to(self.device).eval()

    @torch.inference_mode()
    def _run(self, rgb: np.ndarray) -> dict:
        pixels = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).to(self.device, torch.float32) / 255
        return self.model([pixels])[0]

    def __call__(self, rgb: np.ndarray) -> list[Detection]:
        _check_rgb(rgb)
        height, width = rgb.shape[:2]
        output = self._run(rgb)
        detections = []
        for (x1, y1, x2, y2), label, score in zip(
            output["boxes"].cpu().tolist(),
            output["labels"].cpu().tolist(),
            output["scores"].cpu().tolist(),
            strict=True,
        ):
            clipped = clip_to_image(x1, y1, x2, y2, width, height)
            if label == COCO_PERSON_LABEL and score >= self.min_score and clipped is not None:
                detections.append(Detection(clipped, round(float(score), 4), self.name))
        return detections


def build_person_detector(
    weights_path: str | None = None,
    arch: str = DEFAULT_TORCHVISION_ARCH,
    device: str | torch.device = "cpu",
    allow_download: bool = True,
) -> PersonDetector:
    """The torchvision detector, or the offline one with one warning where it cannot be had.

    With ``weights_path`` the user asked for that file: a :class:`DetectorError` when it cannot
    be used. Without it, the weights API's DEFAULT weights for ``arch`` (``allow_download=False``:
    only from torch's hub cache); where they cannot be had or the model cannot run here, one
    :class:`DetectorFallbackWarning` names why and :class:`OfflinePersonDetector` is returned.
    """
    if weights_path:
        return TorchvisionPersonDetector(weights_path, arch, device=device)
    _check_arch(arch)
    try:
        return TorchvisionPersonDetector(None, arch, device=device, allow_download=allow_download)
    except DetectorError as error:
        fallback = OfflinePersonDetector()
        warnings.warn(
            f"person detection: {error}; using the offline {fallback.name} detector instead",
            DetectorFallbackWarning,
            stacklevel=2,
        )
        return fallback


def add_detector_options(parser: argparse.ArgumentParser, needs: str = "") -> None:
    """The options of :func:`build_person_detector` a script takes (``--detector-weights``,
    ``--detector-arch``, ``--no-download``), one wording for every script; ``needs`` begins the help
    of the two that count only with another option (e.g. "with --detect-human: ")."""
    parser.add_argument(
        "--detector-weights",
        metavar="PATH",
        help=f"{needs}a torchvision detection model's state_dict file, used offline (default: torchvision's "
        "COCO weights for --detector-arch, from torch's hub cache or downloaded once)",
    )
    parser.add_argument(
        "--detector-arch",
        default=DEFAULT_TORCHVISION_ARCH,
        choices=TORCHVISION_ARCHS,
        help="the torchvision person detector (default %(default)s)",
    )
    parser.add_argument(
        "--no-download",
        action="store_true",
        help=f"{needs}never download detector weights; without them in torch's hub cache, use the offline "
        "HOG/face detectors",
    )
