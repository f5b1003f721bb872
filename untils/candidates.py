"""Candidate crops: the GAIC grid, fixed-ratio crops, and the 1,745 predefined anchors.

All generators return float32 tensors (N, 4) of ``[x1, y1, x2, y2]`` in pixels.

GAIC grid (Zeng et al., "Grid Anchor based Image Cropping"): the image is cut into
``bins`` x ``bins`` bins, and a crop's corners sit on bin *centres*. The top-left
corner uses the centres of the first ``corner_bins`` bins on each axis, the
bottom-right corner the centres of the last ``corner_bins``:

    x1 = (i + 0.5) * width / bins,  i in 0 .. corner_bins-1
    x2 = (j + 0.5) * width / bins,  j in bins-corner_bins .. bins-1    (same for y)

rounded half up to whole pixels. A crop is kept when its area is at least
``min_area_ratio`` of the image's (measured on the grid, so exactly
``(j - i) * (l - k) / bins**2``) and its pixel aspect ratio w/h lies in
``aspect_range`` (both ends included). With bins=12 and corner_bins=4 that is at most
4**4 = 256 corners and at most 90 crops.

The paper states aspect ratios in [0.5, 2]; the GAICD annotation tool used
[0.5, 2.2]. With the default ``aspect_range=(0.5, 2.2)`` this generator reproduces the
annotated candidate set of every one of the 1,236 GAICD images exactly (same boxes,
same count: 90, 87, 83, 75, 72 or 54 crops depending on the image's shape), checked
against ``human_bboxes/GAICD/image_crop.json`` with each image's size inferred from
its crops. With (0.5, 2.0) wide images lose their widest crops (1024x683: 83 instead
of the annotated 87).
"""

from __future__ import annotations

import math
import os
import pickle
from collections.abc import Sequence

import numpy as np
import torch

NUM_PREDEFINED_ANCHORS = 1745
# A fixed-ratio crop narrower or lower than this would not honour its ratio (one pixel of rounding is
# more than 6% of it) nor be a useful crop; more extreme ratios than these make such crops on any photo.
MIN_CROP_SIDE = 16
ASPECT_RATIO_RANGE = (1 / 20, 20.0)
# The fixed-ratio candidate grids, as (scales, positions per axis) of :func:`fixed_ratio_candidates`:
# dense is the grid fixed ratios have always had (6 scales x 5x5 positions, up to 130 crops); fast has
# up to 36 (3 scales x 4x4), for several ratios in one run (BENCHMARKS.md measures both).
RATIO_CANDIDATE_GRIDS: dict[str, tuple[tuple[float, ...], int]] = {
    "dense": ((1.0, 0.9, 0.8, 0.7, 0.6, 0.5), 5),
    "fast": ((1.0, 0.8, 0.6), 4),
}
DEFAULT_RATIO_CANDIDATES = "dense"


def _check_image_size(width: float, height: float) -> None:
    if not (width > 0 and height > 0):
        raise ValueError(f"image size must be positive, got width={width}, height={height}")


def _round_half_up(values: np.ndarray) -> np.ndarray:
    return np.floor(values + 0.5)


def gaic_grid_candidates(
    width: float,
    height: float,
    bins: int = 12,
    min_area_ratio: float = 0.5,
    aspect_range: tuple[float, float] = (0.5, 2.2),
    corner_bins: int = 4,
) -> torch.Tensor:
    """The GAIC grid anchors of a ``width`` x ``height`` image, (N, 4) whole pixels.

    See the module docstring for exactly which points are used. Order: x1, y1, x2, y2
    grid indices ascending, outermost x1.
    """
    _check_image_size(width, height)
    if not 1 <= corner_bins <= bins // 2:
        raise ValueError(f"corner_bins={corner_bins} must be between 1 and bins // 2 = {bins // 2}")
    low_ratio, high_ratio = aspect_range
    if not 0 < low_ratio <= high_ratio:
        raise ValueError(f"aspect_range={aspect_range} must be (low, high) with 0 < low <= high")
    step_w, step_h = width / bins, height / bins
    starts = np.arange(corner_bins)
    ends = np.arange(bins - corner_bins, bins)
    x1, y1, x2, y2 = (grid.ravel() for grid in np.meshgrid(starts, starts, ends, ends, indexing="ij"))
    area_ratio = (x2 - x1) * (y2 - y1) / bins**2
    aspect = ((x2 - x1) * step_w) / ((y2 - y1) * step_h)
    # The grid area ratio is a ratio of small integers; the tolerance only absorbs float division.
    keep = (area_ratio >= min_area_ratio - 1e-9) & (aspect >= low_ratio) & (aspect <= high_ratio)
    corners = np.stack([x1, y1, x2, y2], axis=1)[keep] + 0.5
    boxes = _round_half_up(corners * np.array([step_w, step_h, step_w, step_h]))
    return torch.from_numpy(boxes).to(torch.float32).reshape(-1, 4)


def ratio_candidate_grid(density: str) -> tuple[tuple[float, ...], int]:
    """The ``(scales, steps)`` of a fixed-ratio candidate grid by name (``fast`` or ``dense``)."""
    if density not in RATIO_CANDIDATE_GRIDS:
        raise ValueError(f"ratio candidates {density!r}: expected one of {', '.join(RATIO_CANDIDATE_GRIDS)}")
    return RATIO_CANDIDATE_GRIDS[density]


def most_ratio_candidates(density: str) -> int:
    """The most crops the ``density`` grid gives a photo: a scale-1 crop fills one axis, so it has one
    row of positions, a smaller one ``steps`` x ``steps`` (fewer where a crop fills an axis)."""
    scales, steps = ratio_candidate_grid(density)
    return sum(steps if scale == 1 else steps**2 for scale in scales)


def fixed_ratio_candidates(
    width: int,
    height: int,
    ratio: float,
    scales: Sequence[float] = RATIO_CANDIDATE_GRIDS["dense"][0],
    steps: int = RATIO_CANDIDATE_GRIDS["dense"][1],
) -> torch.Tensor:
    """Crops of aspect ratio ``ratio`` (w/h) inside a ``width`` x ``height`` image, (N, 4).

    For each scale s the crop is s times the largest ``ratio`` box that fits, in whole
    pixels (its w/h is ``ratio`` to within one pixel of width); its top-left corner
    takes ``steps`` evenly spaced positions per axis from the image's edge to the
    opposite edge (one position on an axis the crop fills). Duplicates are removed;
    order is by scale as given, then y1, then x1.
    """
    _check_image_size(width, height)
    if not (ratio > 0 and math.isfinite(ratio)):
        raise ValueError(f"aspect ratio must be a positive number (w/h), got {ratio}")
    if steps < 1:
        raise ValueError(f"steps={steps} must be >= 1")
    fit_w = min(float(width), height * ratio)
    largest_h = min(height, max(1, round(fit_w / ratio)))
    largest_w = min(width, max(1, round(largest_h * ratio)))
    if min(largest_w, largest_h) < MIN_CROP_SIDE:
        raise ValueError(
            f"aspect ratio {ratio:g}: its largest crop of a {width:g}x{height:g} image is "
            f"{largest_w}x{largest_h} pixels, under {MIN_CROP_SIDE} on a side"
        )
    boxes: list[tuple[int, int, int, int]] = []
    seen: set[tuple[int, int, int, int]] = set()
    for scale in scales:
        if not 0 < scale <= 1:
            raise ValueError(f"scale {scale} must be in (0, 1]")
        crop_h = min(height, max(1, round(fit_w * scale / ratio)))
        crop_w = min(width, max(1, round(crop_h * ratio)))
        for y1 in np.unique(np.round(np.linspace(0, height - crop_h, steps))).astype(int):
            for x1 in np.unique(np.round(np.linspace(0, width - crop_w, steps))).astype(int):
                box = (int(x1), int(y1), int(x1) + crop_w, int(y1) + crop_h)
                if box not in seen:
                    seen.add(box)
                    boxes.append(box)
    return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)


def parse_aspect_ratio(text: str) -> float | None:
    """``"16:9"`` -> 16/9, ``"1.5"`` -> 1.5, ``"any"`` (or ``"free"``, ``"none"``) -> None."""
    cleaned = str(text).strip().lower()
    if cleaned in {"any", "free", "none"}:
        return None
    try:
        if ":" in cleaned:
            width_part, height_part = cleaned.split(":")
            value = float(width_part) / float(height_part)
        else:
            value = float(cleaned)
    except (ValueError, ZeroDivisionError):
        raise ValueError(
            f"aspect ratio {text!r} is not understood: expected 'W:H' (e.g. '16:9'), "
            "a positive number (e.g. '1.5') or 'any'"
        ) from None
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"aspect ratio {text!r} must be positive and finite")
    low, high = ASPECT_RATIO_RANGE
    if not low <= value <= high:
        raise ValueError(f"aspect ratio {text!r} = {value:g} is outside 1:20 to 20:1: no crop of a photo can honour it")
    return value


class _NumbersOnlyUnpickler(pickle.Unpickler):
    """Reads pickled lists, tuples and numbers; refuses every class and function a pickle names,
    since building those is how a crafted pickle runs code."""

    def find_class(self, module: str, name: str) -> object:
        raise pickle.UnpicklingError(
            f"it names {module}.{name}, and only lists of numbers are read from this file (other objects may run code)"
        )


def _is_number_rows(content: object) -> bool:
    """Whether ``content`` is a list (or tuple) of lists of ints and floats: all an anchors file may hold."""
    return isinstance(content, (list, tuple)) and all(
        isinstance(row, (list, tuple)) and all(type(value) in (int, float) for value in row) for row in content
    )


def load_predefined_anchors(path: str | os.PathLike) -> torch.Tensor:
    """The 1,745 predefined anchors (listwise view ranking) as (1745, 4) image fractions.

    The file is a pickle; only lists of numbers are read from it (a class or function it names is refused).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"predefined anchors file not found: {path} "
            "(expected pdefined_anchors.pkl, a pickled list of [x1, y1, x2, y2] fractions)"
        )
    try:
        with open(path, "rb") as handle:
            content = _NumbersOnlyUnpickler(handle, encoding="iso-8859-1").load()
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        ImportError,
        IndexError,
        KeyError,
        MemoryError,
    ) as error:
        raise ValueError(f"predefined anchors file {path} is not a pickled list of 4-number boxes: {error}") from None
    if not _is_number_rows(content):
        raise ValueError(
            f"predefined anchors file {path} is not a pickled list of 4-number boxes "
            f"(it holds a {type(content).__name__} of other values)"
        )
    anchors = np.asarray(content, dtype=np.float64)
    if anchors.shape != (NUM_PREDEFINED_ANCHORS, 4):
        raise ValueError(
            f"predefined anchors file {path} holds shape {anchors.shape}, expected ({NUM_PREDEFINED_ANCHORS}, 4)"
        )
    if not np.isfinite(anchors).all() or anchors.min() < 0 or anchors.max() > 1:
        raise ValueError(
            f"predefined anchors in {path} must be finite fractions in [0, 1], "
            f"got values in [{anchors.min()}, {anchors.max()}]"
        )
    return torch.from_numpy(anchors).to(torch.float32)


def scale_anchors(anchors: torch.Tensor, width: float, height: float) -> torch.Tensor:
    """Anchors in image fractions (N, 4) to pixels of a ``width`` x ``height`` image (no rounding)."""
    _check_image_size(width, height)
    return anchors * anchors.new_tensor([width, height, width, height])


# ----------------------------------------------------------------------------------------------
# The candidate generators of GAIC's PyTorch release (croppingDataset.py), exactly
# ----------------------------------------------------------------------------------------------

GAIC_RELEASE_BINS = 12
# Pixel steps (width, height) of the release's fixed-ratio generators; the crop is ``i`` steps
# wide and high for i in 14..29.
GAIC_RELEASE_RATIO_STEPS = {"16:9": (16, 9), "4:3": (16, 12), "1:1": (12, 12)}


def _gaic_release_grid_yxyx(width: int, height: int) -> np.ndarray:
    """The release's ``generate_bboxes``: float64 ``[y1, x1, y2, x2]`` rows in its order and arithmetic."""
    bins = float(GAIC_RELEASE_BINS)
    step_h, step_w = height / bins, width / bins
    boxes = []
    for row1 in range(4):
        for column1 in range(4):
            for row2 in range(8, 12):
                for column2 in range(8, 12):
                    aspect = (column2 - column1) * step_w / (row2 - row1) / step_h
                    if (row2 - row1) * (column2 - column1) > 0.4999 * bins * bins and 0.5 < aspect < 2.0:
                        boxes.append(
                            [
                                step_h * (0.5 + row1),
                                step_w * (0.5 + column1),
                                step_h * (0.5 + row2),
                                step_w * (0.5 + column2),
                            ]
                        )
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


def _gaic_release_ratio_yxyx(width: int, height: int, aspect_ratio: str) -> np.ndarray:
    """The release's ``generate_bboxes_16_9`` / ``_4_3`` / ``_1_1``: float64 ``[y1, x1, y2, x2]`` rows."""
    if aspect_ratio not in GAIC_RELEASE_RATIO_STEPS:
        raise ValueError(
            f"GAIC's release has no {aspect_ratio!r} generator; expected one of {sorted(GAIC_RELEASE_RATIO_STEPS)}"
        )
    step_w, step_h = GAIC_RELEASE_RATIO_STEPS[aspect_ratio]
    boxes = []
    for size in range(14, 30):
        crop_h, crop_w = step_h * size, step_w * size
        if crop_h < height and crop_w < width and crop_h * crop_w > 0.4 * height * width:
            for x1 in range(0, width - crop_w, step_w):
                for y1 in range(0, height - crop_h, step_h):
                    boxes.append([y1, x1, y1 + crop_h - 1, x1 + crop_w - 1])
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


def _gaic_release_yxyx(width: int, height: int, aspect_ratio: str | None) -> np.ndarray:
    _check_image_size(width, height)
    if int(width) != width or int(height) != height:
        raise ValueError(f"the release's generators take the resized image's whole-pixel size, got {width}x{height}")
    if aspect_ratio is None:
        return _gaic_release_grid_yxyx(int(width), int(height))
    return _gaic_release_ratio_yxyx(int(width), int(height), aspect_ratio)


def gaic_release_candidates(width: int, height: int, aspect_ratio: str | None = None) -> torch.Tensor:
    """Candidates of GAIC's release for its resized ``width`` x ``height`` input, (N, 4) float32.

    ``aspect_ratio`` None: ``generate_bboxes``, the 12x12 grid. It differs from
    :func:`gaic_grid_candidates` in four ways: corners are the exact bin centres (not rounded to
    pixels); the aspect ratio w/h must lie strictly inside (0.5, 2.0) (not [0.5, 2.2], so it has
    fewer crops than GAICD's annotations on wide images: 87 instead of 90 on 352x256); the order is
    y1, x1, y2, x2 ascending, outermost y1; and the release runs it on the resized image, not the
    original.

    ``"16:9"``, ``"4:3"``, ``"1:1"``: ``generate_bboxes_16_9`` / ``_4_3`` / ``_1_1``. Crops are
    ``i`` steps of (16, 9), (16, 12) or (12, 12) pixels wide and high, i = 14..29, smaller than the
    image on both sides and larger than 40% of its area; their corners move in steps of the same
    sizes and never reach the right or bottom edge; x2 = x1 + crop width - 1 (inclusive pixel
    ends, as the release). Unlike :func:`fixed_ratio_candidates` the crop sizes and positions do
    not scale with the image, and a small image may have none.
    """
    yxyx = _gaic_release_yxyx(width, height, aspect_ratio)
    return torch.from_numpy(yxyx[:, [1, 0, 3, 2]]).to(torch.float32)


def gaic_release_candidates_in_original(
    width: int, height: int, original_width: int, original_height: int, aspect_ratio: str | None = None
) -> torch.Tensor:
    """:func:`gaic_release_candidates` mapped to the original photo as the release's test code does
    (``source_bboxes``: float64 products with original/resized, Python's ``round``, half to even),
    (N, 4) float32 ``[x1, y1, x2, y2]`` whole pixels, in the same order."""
    _check_image_size(original_width, original_height)
    yxyx = _gaic_release_yxyx(width, height, aspect_ratio)
    scale_h, scale_w = original_height / float(height), original_width / float(width)
    original = np.round(yxyx * np.array([scale_h, scale_w, scale_h, scale_w]))
    return torch.from_numpy(original[:, [1, 0, 3, 2]]).to(torch.float32)
