"""The checks both PIC folder layouts apply (ours, ``pic_dataset``, and the release's,
``untils.pic_release_layout``): the one rule for a user's rated crops of an image
(:func:`check_rated_crops`), image names and sizes, and the ``pretrain/<user>/<image>`` folder.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np
from PIL import Image

from untils.dataset_files import check_boxes
from untils.safe_paths import UnsafeNameError, resolve_inside

MIN_CROPS = 10
BOX_KEY_DECIMALS = 3  # crops of the same image are the same crop when equal to this many decimals


def best_crop_indices(scores: np.ndarray, count: int) -> np.ndarray:
    """Indices of the ``count`` highest scores; ties go to the crop listed first."""
    return np.argsort(-np.asarray(scores), kind="stable")[:count]


def box_key(box: Iterable[float]) -> tuple[float, ...]:
    return tuple(round(float(v), BOX_KEY_DECIMALS) for v in box)


class CropProblem(NamedTuple):
    """What is wrong with a user's crops of one image: ``crops`` (positions in the image's list;
    empty: the image as a whole) and ``text``, which names no position so callers can name rows."""

    crops: tuple[int, ...]
    text: str


def check_rated_crops(
    boxes: np.ndarray, scores: np.ndarray, size: tuple[int, int] | None, min_crops: int = MIN_CROPS
) -> tuple[np.ndarray, bool, list[CropProblem]]:
    """The one rule for a user's crops (N, 4) and scores (N,) of one image, for every loader and
    converter: at least ``min_crops`` crops (``MIN_CROPS`` for a data set; personalization from a
    person's own ratings asks fewer), finite scores, no crop twice (:func:`box_key`), and
    each box valid for the ``size`` (width, height) image by ``untils.dataset_files.check_boxes``
    (clipped when slightly outside). ``size`` None (image not at hand): boxes are checked for
    emptiness only. Returns ``(boxes, clipped, problems)``."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    problems = []
    if len(boxes) < min_crops:
        problems.append(CropProblem((), f"{len(boxes)} crops, at least {min_crops} are needed"))
    not_finite = tuple(int(i) for i in np.flatnonzero(~np.isfinite(scores)))
    if not_finite:
        problems.append(CropProblem(not_finite, "scores must be finite numbers"))
    first_of: dict[tuple[float, ...], int] = {}
    checked, clipped = boxes.copy(), False
    width, height = size if size is not None else (math.inf, math.inf)  # no image: no bounds to check
    for index, box in enumerate(boxes):
        first = first_of.setdefault(box_key(box), index)
        if first != index:
            problems.append(CropProblem((first, index), f"the same crop {box.tolist()} is listed more than once"))
        fixed, was_clipped, problem = check_boxes(box.reshape(1, 4), width, height)
        if problem:  # check_boxes names the one box it was given "box 0"
            problems.append(CropProblem((index,), problem.removeprefix("box 0 ")))
        checked[index], clipped = fixed[0], clipped or was_clipped
    return checked, clipped, problems


def image_size(path: str) -> tuple[int, int] | None:
    """(width, height) of the image at ``path``; None when it is missing or unreadable."""
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, SyntaxError, ValueError):
        return None


def named_image_size(folder: str, name: str) -> tuple[tuple[int, int] | None, str | None]:
    """``(size, problem)`` of the image ``name`` in ``folder``: the name must keep inside the folder
    (``untils.safe_paths``) and the image be readable; ``problem`` says which failed."""
    try:
        path = resolve_inside(folder, name)
    except UnsafeNameError as error:
        return None, str(error)
    size = image_size(path)
    return size, None if size is not None else f"image {path} is missing or unreadable"


def read_pretrain_folder(folder: str, problems: list[str]) -> dict[str, list[str]]:
    """``{user: image paths}`` of a ``pretrain/<user>/<image>`` folder (none: ``{}``); a file that
    leads outside it or is no readable image is appended to ``problems``."""
    if not os.path.isdir(folder):
        return {}
    pretrain: dict[str, list[str]] = {}
    for user in sorted(os.listdir(folder)):
        try:
            user_dir = resolve_inside(folder, user)
        except UnsafeNameError as error:
            problems.append(f"{folder}: {error}")
            continue
        if not os.path.isdir(user_dir):
            problems.append(f"{user_dir}: expected one folder of images per user")
            continue
        pretrain[user] = []
        for name in sorted(os.listdir(user_dir)):
            _, problem = named_image_size(user_dir, name)
            if problem:
                problems.append(f"user {user}: {problem}")
            else:
                pretrain[user].append(os.path.join(user_dir, name))
    return pretrain


def crop_position(crops: Sequence[int]) -> str:
    """How a loader names the crops of a :class:`CropProblem` ("crop box 3: ", "crop boxes 4, 5: ")."""
    return "" if not crops else f"crop box{'es' if len(crops) > 1 else ''} {', '.join(map(str, crops))}: "
