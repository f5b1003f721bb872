"""The cropping datasets' files: the release's annotation files read and checked (JSON without
repeated keys, scored candidate crops of GAICD and CPC, FCDB's and FLMS's ground truth, person
boxes, lists of image names, crop boxes against their image) and where images and heat maps lie.
Every bad entry of a file is gathered into one error (``untils.dataset_errors``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from untils.boxes import clip_boxes
from untils.dataset_errors import DatasetError, problems_error
from untils.safe_paths import resolve_inside

CLIP_TOLERANCE = 0.02  # crops may run this fraction of a side outside the image and get clipped


def load_json(path: str, what: str) -> Any:
    """The JSON content of ``path``; an object that gives one key twice is an error (JSON keeps the last)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")

    def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [key for key, _ in pairs]
        repeated = sorted({key for key in keys if keys.count(key) > 1})
        if repeated:
            raise DatasetError(f"{what} {path} gives {len(repeated)} key(s) twice: {', '.join(repeated[:10])}")
        return dict(pairs)

    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle, object_pairs_hook=unique_keys)
    except json.JSONDecodeError as error:
        raise DatasetError(f"{what} {path} is not valid JSON: {error}") from error


def unique_names(names: Sequence[str], where: str) -> list[str]:
    """``names`` as a list; a name listed twice is an error (it would leak into both sides of a split)."""
    names = list(names)
    seen: set[str] = set()
    repeated: set[str] = set()
    for name in names:
        if name in seen:
            repeated.add(name)
        seen.add(name)
    if repeated:
        raise DatasetError(f"{where} lists {len(repeated)} image(s) twice: {', '.join(sorted(repeated)[:10])}")
    return names


def first_non_float32(values: np.ndarray) -> float | None:
    """The first value that is NaN or infinite once stored as float32, the dtype the model and metrics
    use (1e300 is finite in float64 but infinite in float32); None when every value is fine."""
    with np.errstate(over="ignore"):
        bad = ~np.isfinite(np.asarray(values, dtype=np.float64).astype(np.float32))
    return float(np.asarray(values, dtype=np.float64)[bad][0]) if bad.any() else None


@dataclass
class CropAnnotation:
    """Candidate crops (N, 4) in original pixels (float64) and their scores (N,)."""

    boxes: np.ndarray
    scores: np.ndarray


def read_crop_annotations(path: str, box_key: str, score_key: str) -> dict[str, CropAnnotation]:
    """Read ``{name: {box_key: [[x1, y1, x2, y2], ...], score_key: [s, ...]}}``.

    GAICD uses ``bbox``/``score``, CPC ``bboxes``/``scores``.
    """
    raw = load_json(path, "crop annotation file")
    if not isinstance(raw, dict):
        raise DatasetError(f"crop annotation file {path} must hold a JSON object {{name: ...}}")
    annotations, problems = {}, []
    for name, entry in raw.items():
        if not isinstance(entry, dict) or box_key not in entry or score_key not in entry:
            problems.append(f"{name}: expected keys '{box_key}' and '{score_key}'")
            continue
        try:
            boxes = np.asarray(entry[box_key], dtype=np.float64).reshape(-1, 4)
            scores = np.asarray(entry[score_key], dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            problems.append(f"{name}: '{box_key}' must be a list of [x1, y1, x2, y2] and '{score_key}' numbers")
            continue
        if len(boxes) == 0 or len(boxes) != len(scores):
            problems.append(f"{name}: {len(boxes)} boxes but {len(scores)} scores")
            continue
        bad = [value for value in (first_non_float32(scores), first_non_float32(boxes)) if value is not None]
        if bad:
            problems.append(f"{name}: boxes and scores must be finite float32 numbers, found {bad[0]}")
            continue
        annotations[name] = CropAnnotation(boxes, scores)
    if problems:
        raise problems_error(f"crop annotation file {path}", problems)
    return annotations


def score_statistics(annotations: dict[str, CropAnnotation]) -> tuple[float, float]:
    """Mean and (population) standard deviation of every score in the annotation file, as the release."""
    scores = np.concatenate([entry.scores for entry in annotations.values()])
    return float(np.mean(scores)), float(np.std(scores))


def read_human_boxes(path: str) -> dict[str, np.ndarray]:
    """Person boxes (4,) float64 by image name.

    Accepts ``{name: [x1, y1, x2, y2]}`` (GAICD, FCDB, FLMS) and CPC's
    ``{name: {"bbox": [...], "weight": W, "height": H}}``.
    """
    raw = load_json(path, "human box file")
    if not isinstance(raw, dict):
        raise DatasetError(f"human box file {path} must hold a JSON object {{name: box}}")
    boxes, problems = {}, []
    for name, entry in raw.items():
        box = entry.get("bbox") if isinstance(entry, dict) else entry
        try:
            boxes[name] = np.asarray(box, dtype=np.float64).reshape(4)
        except (TypeError, ValueError):
            problems.append(f"{name}: expected [x1, y1, x2, y2], got {box!r}")
            continue
        if first_non_float32(boxes[name]) is not None:
            problems.append(f"{name}: the person box {box!r} must hold finite float32 numbers")
    if problems:
        raise problems_error(f"human box file {path}", problems)
    return boxes


def read_fcdb_ground_truth(path: str) -> dict[str, np.ndarray]:
    """FCDB's ground-truth crop of each image, ``{name: [x, y, w, h]}`` in the file, as (1, 4) ``[x1, y1, x2, y2]``."""

    def corners(xywh: np.ndarray) -> np.ndarray:
        x, y, w, h = xywh.reshape(4)
        return np.array([[x, y, x + w, y + h]])

    return _read_ground_truth(path, "FCDB crop annotation file", "[x, y, w, h]", corners)


def read_flms_ground_truth(path: str) -> dict[str, np.ndarray]:
    """FLMS's ground-truth crops of each image, ``{name: [[x1, y1, x2, y2], ...]}``, as (M, 4)."""
    return _read_ground_truth(
        path, "FLMS crop annotation file", "a list of [x1, y1, x2, y2]", lambda boxes: boxes.reshape(-1, 4)
    )


def _read_ground_truth(
    path: str, what: str, form: str, to_boxes: Callable[[np.ndarray], np.ndarray]
) -> dict[str, np.ndarray]:
    """``to_boxes`` of each image's entry of a ``{name: numbers}`` file; an entry it cannot read (not ``form``)
    is an error naming it."""
    gt_crops = {}
    for name, value in load_json(path, what).items():
        try:
            gt_crops[name] = to_boxes(np.asarray(value, dtype=np.float64))
        except (TypeError, ValueError) as error:
            raise DatasetError(f"{what} {path}: {name} must be {form}, got {value!r}") from error
    return gt_crops


def check_boxes(boxes: np.ndarray, width: float, height: float) -> tuple[np.ndarray, bool, str | None]:
    """Validate boxes (N, 4) of a ``width`` x ``height`` image.

    Returns ``(boxes, clipped, problem)``: boxes at most ``CLIP_TOLERANCE`` of a side
    outside the image are clipped; an empty box or one further out is a problem.
    """
    x1, y1, x2, y2 = boxes.T
    empty = (x2 <= x1) | (y2 <= y1)
    if empty.any():
        index = int(np.argmax(empty))
        return boxes, False, f"box {index} {boxes[index].tolist()} has x2 <= x1 or y2 <= y1"
    slack_w, slack_h = CLIP_TOLERANCE * width, CLIP_TOLERANCE * height
    far = (x1 < -slack_w) | (y1 < -slack_h) | (x2 > width + slack_w) | (y2 > height + slack_h)
    if far.any():
        index = int(np.argmax(far))
        return (
            boxes,
            False,
            (
                f"box {index} {boxes[index].tolist()} lies more than {CLIP_TOLERANCE:.0%} "
                f"outside the {width}x{height} image"
            ),
        )
    outside = (x1 < 0) | (y1 < 0) | (x2 > width) | (y2 > height)
    if outside.any():
        return clip_boxes(boxes, width, height), True, None
    return boxes, False, None


def gaicd_image_path(image_dir: str, name: str) -> str | None:
    """Where a GAICD image is: flat ``images/`` or the download's ``images/train|test/``."""
    for candidate in (
        resolve_inside(image_dir, name),
        resolve_inside(os.path.join(image_dir, "train"), name),
        resolve_inside(os.path.join(image_dir, "test"), name),
    ):
        if os.path.isfile(candidate):
            return candidate
    return None


def heat_map_path(heat_map_dir: str, name: str) -> str:
    """Where the pseudo heat map of image ``name`` is (a PNG of its stem), inside ``heat_map_dir``."""
    return resolve_inside(heat_map_dir, os.path.splitext(name)[0] + ".png")


def existing_file(folder: str, name: str) -> str | None:
    """``name`` inside ``folder`` when that file is there, else None."""
    path = resolve_inside(folder, name)
    return path if os.path.isfile(path) else None
