"""Candidate generators checked by brute force and against the real GAICD annotations."""

from __future__ import annotations

import json
import math
import pickle

import pytest
import torch

from tests.conftest import require_shared
from untils.candidates import (
    RATIO_CANDIDATE_GRIDS,
    fixed_ratio_candidates,
    gaic_grid_candidates,
    load_predefined_anchors,
    parse_aspect_ratio,
    scale_anchors,
)
from untils.crop_candidates import photo_candidates


def _brute_force_grid(width: int, height: int, low: float, high: float) -> set[tuple[int, ...]]:
    """Every corner pair on the bin centres of a 12 x 12 grid, filtered one by one."""
    boxes = set()
    for i in range(4):
        for k in range(4):
            for j in range(8, 12):
                for m in range(8, 12):
                    x1, y1 = (i + 0.5) * width / 12, (k + 0.5) * height / 12
                    x2, y2 = (j + 0.5) * width / 12, (m + 0.5) * height / 12
                    if (j - i) * (m - k) * 2 >= 144 and low <= (x2 - x1) / (y2 - y1) <= high:
                        boxes.add(tuple(math.floor(v + 0.5) for v in (x1, y1, x2, y2)))
    return boxes


def _as_set(boxes: torch.Tensor) -> set[tuple[int, ...]]:
    return {tuple(int(v) for v in row) for row in boxes.tolist()}


@pytest.mark.parametrize("width, height", [(1024, 683), (1024, 939), (1024, 744), (683, 1024), (512, 512), (450, 300)])
def test_grid_matches_brute_force(width, height):
    boxes = gaic_grid_candidates(width, height)
    assert boxes.dtype == torch.float32 and boxes.shape[1] == 4
    assert len(_as_set(boxes)) == boxes.shape[0]
    assert _as_set(boxes) == _brute_force_grid(width, height, 0.5, 2.2)
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
    # Whole-pixel rounding moves the area by well under 1%; the grid itself guarantees half the image.
    assert ((widths * heights) >= 0.49 * width * height).all()


def test_grid_counts_for_gaicd_shapes_and_the_paper_range():
    assert len(gaic_grid_candidates(1024, 744)) == 90  # a 4:3-ish GAICD image: every area-valid crop
    assert len(gaic_grid_candidates(1024, 683)) == 87
    assert len(gaic_grid_candidates(1024, 683, aspect_range=(0.5, 2.0))) == 83
    square = gaic_grid_candidates(600, 600, min_area_ratio=0.0, aspect_range=(0.01, 100))
    assert len(square) == 4**4


def test_grid_reproduces_the_annotated_crops_of_the_sample_images():
    annotations = json.loads(require_shared("human_bboxes/GAICD/image_crop.json").read_text())
    # Sizes of the three photos in GAICD-sample (all 1024 wide).
    for name, height in (("211958.jpg", 683), ("265813.jpg", 939), ("297406.jpg", 744)):
        annotated = {tuple(box) for box in annotations[name]["bbox"]}
        assert _as_set(gaic_grid_candidates(1024, height)) == annotated


def test_grid_rejects_bad_arguments():
    with pytest.raises(ValueError, match="positive"):
        gaic_grid_candidates(0, 100)
    with pytest.raises(ValueError, match="corner_bins"):
        gaic_grid_candidates(100, 100, corner_bins=7)
    with pytest.raises(ValueError, match="aspect_range"):
        gaic_grid_candidates(100, 100, aspect_range=(2.0, 0.5))


@pytest.mark.parametrize(
    "width, height, ratio",
    [(640, 480, 16 / 9), (480, 640, 1.0), (500, 333, 4 / 3), (300, 700, 9 / 16), (1000, 100, 0.5)],
)
def test_fixed_ratio_boxes_have_the_ratio_and_fit(width, height, ratio):
    scales = (1.0, 0.75, 0.5)
    boxes = fixed_ratio_candidates(width, height, ratio, scales=scales, steps=4)
    rows = boxes.tolist()
    assert len(rows) == len({tuple(r) for r in rows}) > 0
    largest_w = min(width, height * ratio)
    seen_widths = set()
    for x1, y1, x2, y2 in rows:
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
        assert all(float(v).is_integer() for v in (x1, y1, x2, y2))
        crop_w, crop_h = x2 - x1, y2 - y1
        assert abs(crop_w - ratio * crop_h) <= 1.0
        seen_widths.add(crop_w)
    # One size per scale, each the scale's share of the largest fitting box to within rounding.
    assert len(seen_widths) == len(scales)
    for scale, crop_w in zip(scales, sorted(seen_widths, reverse=True), strict=True):
        assert abs(crop_w - scale * largest_w) <= 1.0 + ratio


def test_fixed_ratio_positions_cover_the_image():
    boxes = fixed_ratio_candidates(400, 300, 1.0, scales=(0.5,), steps=3)
    # 150 x 150 crops: top-left corners at 0, 125, 250 horizontally and 0, 75, 150 vertically.
    expected = {(x, y, x + 150, y + 150) for y in (0, 75, 150) for x in (0, 125, 250)}
    assert {tuple(int(v) for v in row) for row in boxes.tolist()} == expected
    full = fixed_ratio_candidates(400, 300, 4 / 3, scales=(1.0,), steps=5)
    assert full.tolist() == [[0, 0, 400, 300]]  # one position when the crop fills the image


def test_fixed_ratio_rejects_bad_arguments():
    with pytest.raises(ValueError, match="aspect ratio"):
        fixed_ratio_candidates(100, 100, 0.0)
    with pytest.raises(ValueError, match="scale 1.5"):
        fixed_ratio_candidates(100, 100, 1.0, scales=(1.5,))
    with pytest.raises(ValueError, match="steps"):
        fixed_ratio_candidates(100, 100, 1.0, steps=0)


@pytest.mark.parametrize(
    "text, expected",
    [("16:9", 16 / 9), ("1:1", 1.0), (" 4:3 ", 4 / 3), ("1.5", 1.5), ("any", None), ("ANY", None), ("free", None)],
)
def test_parse_aspect_ratio(text, expected):
    assert parse_aspect_ratio(text) == expected


@pytest.mark.parametrize("text", ["16-9", "abc", "1:0", "0", "-2", "1:2:3", "", "inf"])
def test_parse_aspect_ratio_rejects_bad_text(text):
    with pytest.raises(ValueError, match="aspect ratio"):
        parse_aspect_ratio(text)


def test_real_predefined_anchors_load_and_scale():
    path = require_shared("pdefined_anchors.pkl")
    anchors = load_predefined_anchors(path)
    assert anchors.shape == (1745, 4) and anchors.dtype == torch.float32
    with open(path, "rb") as handle:
        first = pickle.load(handle, encoding="iso-8859-1")[0]
    assert anchors[0].tolist() == pytest.approx(first)
    scaled = scale_anchors(anchors, 200, 100)
    assert scaled[0].tolist() == pytest.approx([first[0] * 200, first[1] * 100, first[2] * 200, first[3] * 100])


def test_load_predefined_anchors_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pkl"):
        load_predefined_anchors(tmp_path / "missing.pkl")
    garbled = tmp_path / "garbled.pkl"
    garbled.write_bytes(b"this is not a pickle")
    with pytest.raises(ValueError, match="garbled.pkl"):
        load_predefined_anchors(garbled)
    wrong_shape = tmp_path / "short.pkl"
    wrong_shape.write_bytes(pickle.dumps([[0.0, 0.0, 1.0, 1.0]] * 3))
    with pytest.raises(ValueError, match=r"\(1745, 4\)"):
        load_predefined_anchors(wrong_shape)


def _size_from_coordinates(largest_end: int) -> list[int]:
    """Image sides whose last bin centre rounds to ``largest_end`` (11.5 / 12 of the side)."""
    guess = round(largest_end * 12 / 11.5)
    return [side for side in range(guess - 2, guess + 3) if math.floor(11.5 * side / 12 + 0.5) == largest_end]


def test_grid_reproduces_every_gaicd_annotation():
    annotations = json.loads(require_shared("human_bboxes/GAICD/image_crop.json").read_text())
    assert len(annotations) == 1236
    unmatched = []
    for name, record in annotations.items():
        annotated = {tuple(box) for box in record["bbox"]}
        widths = _size_from_coordinates(max(box[2] for box in annotated))
        heights = _size_from_coordinates(max(box[3] for box in annotated))
        if not any(_as_set(gaic_grid_candidates(w, h)) == annotated for w in widths for h in heights):
            unmatched.append(name)
    assert unmatched == []


@pytest.mark.parametrize("text", ["1e-9", "1:100", "21", "1000:1"])
def test_aspect_ratios_no_crop_can_honour_are_refused(text):
    with pytest.raises(ValueError, match="outside 1:20 to 20:1"):
        parse_aspect_ratio(text)


def test_fixed_ratio_crops_too_thin_for_their_ratio_are_refused():
    # 1:15 on a 200x150 image: the largest crop is 10x150, under 16 pixels wide.
    with pytest.raises(ValueError, match=r"largest crop of a 200x150 image is 10x150"):
        fixed_ratio_candidates(200, 150, 1 / 15)
    boxes = fixed_ratio_candidates(400, 300, 1 / 15)  # 20x300: kept, and every crop keeps its ratio
    assert (boxes[:, 2] - boxes[:, 0]).min() >= 1 and len(boxes) > 0


# The fixed-ratio grids as documented (crop.py --help, untils.candidates): scales, positions per axis.
DOCUMENTED_GRIDS = {"dense": ((1.0, 0.9, 0.8, 0.7, 0.6, 0.5), 5), "fast": ((1.0, 0.8, 0.6), 4)}


def _brute_force_ratio_crops(width: int, height: int, ratio: float, density: str) -> list[tuple[int, ...]]:
    """The documented fixed-ratio grid, one crop at a time: each scale of the largest ``ratio`` box
    that fits, in whole pixels, its top-left corner at ``steps`` evenly spaced positions per axis
    (rounded half to even), duplicates dropped, in scale, y1, x1 order."""
    scales, steps = DOCUMENTED_GRIDS[density]
    largest_w = min(width, height * ratio)
    crops: list[tuple[int, ...]] = []
    for scale in scales:
        crop_h = min(height, max(1, round(largest_w * scale / ratio)))
        crop_w = min(width, max(1, round(crop_h * ratio)))
        spots_y = sorted({round(k * (height - crop_h) / (steps - 1)) for k in range(steps)})
        spots_x = sorted({round(k * (width - crop_w) / (steps - 1)) for k in range(steps)})
        for y1 in spots_y:
            for x1 in spots_x:
                if (x1, y1, x1 + crop_w, y1 + crop_h) not in crops:
                    crops.append((x1, y1, x1 + crop_w, y1 + crop_h))
    return crops


def test_documented_grids_are_the_ones_used():
    assert RATIO_CANDIDATE_GRIDS == DOCUMENTED_GRIDS


@pytest.mark.parametrize("density", ["dense", "fast"])
@pytest.mark.parametrize(
    "width, height, ratio",
    [
        (1024, 768, 1.0),
        (1024, 768, 16 / 9),
        (1024, 768, 9 / 16),
        (683, 1024, 4 / 5),
        (512, 512, 3 / 2),
        (999, 401, 2.0),
    ],
)
def test_ratio_grids_match_brute_force_keep_the_ratio_and_fit(width, height, ratio, density):
    in_photo, in_input = photo_candidates("hcic", (width, height), (352, 264), ratio, density)
    assert [tuple(int(v) for v in row) for row in in_photo] == _brute_force_ratio_crops(width, height, ratio, density)
    assert len(in_input) == len(in_photo)
    for x1, y1, x2, y2 in in_photo.tolist():
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
        crop_w, crop_h = x2 - x1, y2 - y1
        assert min(abs(crop_w - ratio * crop_h), abs(crop_h - crop_w / ratio)) <= 1.0  # exact to a pixel


def test_dense_grid_is_the_previous_candidates_of_a_4_3_photo():
    # 1024x768 at 1:1: 768x768 at scale 1 fills the height (x1 = 0, 64, 128, 192, 256), then 691, 614, 538,
    # 461 and 384 pixels square at 5x5 positions each: 5 + 5 * 25 crops; the fast grid: 4 + 2 * 16.
    dense, _ = photo_candidates("hcic", (1024, 768), (352, 264), 1.0, "dense")
    assert len(dense) == 130
    assert [tuple(row) for row in dense[:5].tolist()] == [(x, 0, x + 768, 768) for x in (0, 64, 128, 192, 256)]
    assert sorted({int(row[2] - row[0]) for row in dense}) == [384, 461, 538, 614, 691, 768]
    fast, _ = photo_candidates("hcic", (1024, 768), (352, 264), 1.0, "fast")
    assert len(fast) == 36 and sorted({int(row[2] - row[0]) for row in fast}) == [461, 614, 768]
    assert photo_candidates("hcic", (1024, 768), (352, 264), None, "fast")[0].tolist() == (
        photo_candidates("hcic", (1024, 768), (352, 264), None, "dense")[0].tolist()
    )  # the free ratio's GAIC grid is the same in both
    with pytest.raises(ValueError, match="ratio candidates 'sparse'"):
        photo_candidates("hcic", (1024, 768), (352, 264), 1.0, "sparse")
