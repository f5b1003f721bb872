"""The candidate crops the crop library ranks on a photo, chosen by the model's rule: in the photo's
pixels (what is ranked and cut) and in the network input's (what the model scores).

The rule is the one the model's ``photo_spec`` declares (``untils.preprocessing.PhotoSpec.candidates``):

* ``hcic`` (our models): the GAIC grid of the paper (up to 90 crops, aspect ratios 0.5 to 2.2)
  when the ratio is free, or crops of exactly the ratio on the ``dense`` grid (six scales, 5x5
  positions) or the ``fast`` one (three scales, 4x4 positions; ``untils.candidates``); made in the
  photo's pixels, scaled to the input and clipped inside it;
* ``gaic`` (GAIC's release models): the release's own generators (its 12x12 grid, or its 16:9,
  4:3 and 1:1 ones) on its input, mapped back to the photo as its test code does;
* ``pic`` (PIC's official models): the fixed views of ``untils.pic_format.fixed_views`` (4 scales
  of both sides, 95% to 65%, at 6 anchors), in that order, because the model adds one personal
  offset per position of that order; boxes scaled to the input as the release (x1, y1 floored,
  x2, y2 ceiled), not clipped, as ``untils.pic_recipe.rated_images`` feeds them. No other candidates.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Union

import numpy as np
import torch

from untils.boxes import clip_boxes, rescale_boxes
from untils.candidates import (
    DEFAULT_RATIO_CANDIDATES,
    fixed_ratio_candidates,
    gaic_grid_candidates,
    gaic_release_candidates,
    gaic_release_candidates_in_original,
    parse_aspect_ratio,
    ratio_candidate_grid,
)
from untils.photos import PhotoError
from untils.pic_format import fixed_views
from untils.preprocessing import CANDIDATE_RULES

FIXED_VIEW_COUNT = len(fixed_views(1, 1))  # the same for every photo size
RELEASE_RATIOS = (("16:9", 16 / 9), ("4:3", 4 / 3), ("1:1", 1.0))  # the ratios GAIC's release has generators for


def aspect_value(aspect_ratio: None | str | float) -> float | None:
    """A crop ratio as given (None: free, text such as "4:3" or "any", or a number) as w/h, None when free."""
    if aspect_ratio is None or isinstance(aspect_ratio, str):
        return None if aspect_ratio is None else parse_aspect_ratio(aspect_ratio)
    value = float(aspect_ratio)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"aspect ratio must be a positive number (w/h), got {aspect_ratio!r}")
    return value


AspectRatios = Union[None, str, float, Sequence[Union[None, str, float]]]  # noqa: UP007 (a runtime alias)


def requested_ratios(aspect_ratios: AspectRatios) -> list[tuple[str, float | None]]:
    """The crop ratios asked for, in order, as ``(text as given, w/h or None when free)``: one ratio
    (None, text or number) or a sequence of them. Raises ValueError for a bad or repeated ratio."""
    given = [aspect_ratios] if aspect_ratios is None or isinstance(aspect_ratios, (str, int, float)) else aspect_ratios
    ratios: list[tuple[str, float | None]] = []
    for ratio in given:
        value = aspect_value(ratio)
        text = "any" if ratio is None else ratio.strip() if isinstance(ratio, str) else f"{value:g}"
        twin = next(
            (
                seen
                for seen, seen_value in ratios
                if seen_value == value
                or (seen_value is not None and value is not None and math.isclose(seen_value, value, rel_tol=1e-9))
            ),
            None,
        )
        if twin is not None:
            raise ValueError(f"aspect ratio {text!r} is asked for twice (as {twin!r})")
        ratios.append((text, value))
    if not ratios:
        raise ValueError("no aspect ratio given: pass at least one (e.g. 'any')")
    return ratios


def ratio_tag(text: str) -> str:
    """A ratio's part of the output file names: ``any``, ``16x9``, ``1.5`` (no ``_``, ``:`` or ``/``)."""
    if parse_aspect_ratio(text) is None:
        return "any"
    return re.sub(r"[^0-9A-Za-z.]", "x", text.strip().lower())


def containing(candidates: np.ndarray, required: Sequence[Sequence[float]]) -> np.ndarray:
    """Which ``(N, 4)`` candidates contain every ``required`` box whole, as an ``(N,)`` bool mask."""
    keep = np.ones(len(candidates), dtype=bool)
    for x1, y1, x2, y2 in required:
        keep &= (
            (candidates[:, 0] <= x1) & (candidates[:, 1] <= y1) & (candidates[:, 2] >= x2) & (candidates[:, 3] >= y2)
        )
    return keep


def release_ratio(aspect_ratio: float | None) -> str | None:
    """The name of GAIC's release generator for ``aspect_ratio`` (None: its grid); raises
    :class:`PhotoError` (a ValueError) for a ratio it has none for."""
    if aspect_ratio is None:
        return None
    for name, value in RELEASE_RATIOS:
        if math.isclose(aspect_ratio, value, rel_tol=1e-6):
            return name
    raise PhotoError(f"aspect ratio {aspect_ratio:g}: GAIC's release models crop freely or at 16:9, 4:3 or 1:1")


def describe_candidates(rule: str, aspect_ratio: float | None, density: str = DEFAULT_RATIO_CANDIDATES) -> str:
    """How ``rule`` chooses the candidates at ``aspect_ratio`` (w/h, None: free) with the ``density``
    (``fast`` or ``dense``) of ``hcic``'s fixed-ratio grid, for the JSON outputs; raises ValueError for
    a ratio the rule cannot give (any ratio for ``pic``) or an unknown density."""
    scales, steps = ratio_candidate_grid(density)
    if rule == "pic":
        if aspect_ratio is not None:
            raise ValueError(
                f"aspect ratio {aspect_ratio:g}: an official PIC checkpoint crops only among its "
                f"{FIXED_VIEW_COUNT} fixed views (one personal offset per position), at their "
                "own ratio; drop --aspect-ratio"
            )
        return (
            f"PIC fixed views: the {FIXED_VIEW_COUNT} crops of untils.pic_format.fixed_views (4 scales, "
            "95% to 65% of each side, at 6 anchors), in that order: the official PIC model's candidates, "
            "one personal offset per position"
        )
    if rule == "gaic":
        ratio = release_ratio(aspect_ratio)
        return "GAIC release grid" if ratio is None else f"GAIC release {ratio} generator"
    if rule != "hcic":
        raise ValueError(f"candidate rule {rule!r}: expected one of {', '.join(CANDIDATE_RULES)}")
    if aspect_ratio is None:
        return "GAIC grid"
    return f"fixed ratio, {density} grid: {len(scales)} scales x {steps}x{steps} positions"


def boxes_in_input(boxes: np.ndarray, size: tuple[int, int], resized: tuple[int, int]) -> torch.Tensor:
    """Boxes in photo pixels to the network input, as the datasets scale them, clipped inside it."""
    scaled = rescale_boxes(np.asarray(boxes, dtype=np.float64), resized[0] / size[0], resized[1] / size[1])
    return torch.from_numpy(clip_boxes(scaled, *resized).astype(np.float32))


def photo_candidates(
    rule: str,
    size: tuple[int, int],
    resized: tuple[int, int],
    aspect_ratio: float | None,
    density: str = DEFAULT_RATIO_CANDIDATES,
) -> tuple[np.ndarray, torch.Tensor]:
    """The candidates of a ``size`` (w, h) photo whose network input is ``resized`` (w, h): ``(N, 4)``
    int64 whole pixels of the photo, in the rule's order, and the same crops ``(N, 4)`` float32 in
    the input's pixels; ``density`` picks ``hcic``'s fixed-ratio grid. Raises :class:`PhotoError`
    when the photo has none."""
    describe_candidates(rule, aspect_ratio, density)  # refuses a ratio the rule cannot give
    if rule == "pic":
        candidates = np.asarray(fixed_views(*size), dtype=np.int64)
        return candidates, rescale_boxes(torch.from_numpy(candidates), resized[0] / size[0], resized[1] / size[1])
    if rule == "gaic":  # the release's candidates on its input, mapped back
        ratio = release_ratio(aspect_ratio)
        in_photo = clip_boxes(gaic_release_candidates_in_original(*resized, *size, ratio), *size)
        if len(in_photo) == 0:
            raise PhotoError(f"GAIC's release makes no {ratio} candidate for a {resized[0]}x{resized[1]} input")
        return in_photo.numpy().astype(np.int64), gaic_release_candidates(*resized, ratio)
    if aspect_ratio is None:
        boxes = gaic_grid_candidates(*size)
    else:
        try:
            boxes = fixed_ratio_candidates(*size, aspect_ratio, *ratio_candidate_grid(density))
        except ValueError as error:  # a ratio this photo cannot honour: this photo fails, the others go on
            raise PhotoError(str(error)) from None
    if len(boxes) == 0:
        raise PhotoError(
            f"no candidate crop for a {size[0]}x{size[1]} photo: the GAIC grid keeps crops of aspect "
            "ratio 0.5 to 2.2 covering half the photo; pass --aspect-ratio for such a shape"
        )
    candidates = boxes.numpy().astype(np.int64)
    return candidates, boxes_in_input(candidates, size, resized)
