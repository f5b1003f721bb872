"""untils/boxes.py against hand-computed cases and plain-loop references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.conftest import require_shared
from untils.boxes import (
    box_area,
    box_from_text,
    box_iou,
    clip_boxes,
    crop_masks,
    flip_boxes_horizontal,
    has_person,
    partition_masks,
    rescale_boxes,
    resized_size,
)


def random_boxes(rng: np.random.Generator, count: int, width: int, height: int) -> np.ndarray:
    x = np.sort(rng.integers(0, width + 1, size=(count, 2)), axis=1)
    y = np.sort(rng.integers(0, height + 1, size=(count, 2)), axis=1)
    return np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1)


def loop_crop_mask(box, width, height, size_w, size_h) -> np.ndarray:
    """One mask by hand: float32 scaling, truncation, then a fill loop over pixels."""
    mask = np.zeros((size_h, size_w), np.float32)
    if box[0] < 0:
        return mask
    x1, x2 = (int(np.float32(v) * np.float32(size_w / width)) for v in (box[0], box[2]))
    y1, y2 = (int(np.float32(v) * np.float32(size_h / height)) for v in (box[1], box[3]))
    for row in range(max(y1, 0), min(y2, size_h)):
        for col in range(max(x1, 0), min(x2, size_w)):
            mask[row, col] = 1
    return mask


def loop_partition_mask(box, width, height, downsample) -> np.ndarray:
    target_w, target_h = int(width / downsample), int(height / downsample)
    """The release's generate_partition_mask, cell by cell: the lines come from the truncated box
    (its one-cell widening came after them, so it never took effect)."""
    masks = np.zeros((9, target_h, target_w), np.float32)
    x1, x2 = (int(np.float32(v) * np.float32(target_w / width)) for v in (box[0], box[2]))
    y1, y2 = (int(np.float32(v) * np.float32(target_h / height)) for v in (box[1], box[3]))
    if x1 < 0:
        return masks
    columns, rows = [0, x1, x2, target_w], [0, y1, y2, target_h]
    for row in range(target_h):
        for col in range(target_w):
            for i in range(3):
                for j in range(3):
                    if rows[i] <= row < rows[i + 1] and columns[j] <= col < columns[j + 1]:
                        masks[i * 3 + j, row, col] = 1
    return masks


def test_rescale_boxes_hand_case_numpy_and_torch():
    # 297406.jpg: 1024x744 resized to 352x256; its person box is [142, 488, 252, 676].
    ratio_w, ratio_h = 352 / 1024, 256 / 744
    expected = np.array([[48, 167, 87, 233]], np.float32)
    out = rescale_boxes(np.array([[142, 488, 252, 676]]), ratio_w, ratio_h)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)
    out_t = rescale_boxes(torch.tensor([[142, 488, 252, 676]]), ratio_w, ratio_h)
    assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.float32
    np.testing.assert_array_equal(out_t.numpy(), expected)


def test_rescale_boxes_matches_loop():
    rng = np.random.default_rng(0)
    boxes = random_boxes(rng, 200, 1024, 768)
    ratio_w, ratio_h = 0.3, 256 / 683
    out = rescale_boxes(boxes, ratio_w, ratio_h)
    for box, got in zip(boxes, out, strict=True):
        want = [
            math.floor(box[0] * ratio_w),
            math.floor(box[1] * ratio_h),
            math.ceil(box[2] * ratio_w),
            math.ceil(box[3] * ratio_h),
        ]
        assert got.tolist() == want


def test_flip_keeps_padding_and_is_an_involution():
    boxes = np.array([[1, 2, 3, 4], [-1, -1, -1, -1]], np.float32)
    flipped = flip_boxes_horizontal(boxes, 10)
    np.testing.assert_array_equal(flipped, [[7, 2, 9, 4], [-1, -1, -1, -1]])
    torch_boxes = torch.from_numpy(boxes)
    assert torch.equal(flip_boxes_horizontal(flip_boxes_horizontal(torch_boxes, 10), 10), torch_boxes)


def test_clip_boxes_hand_case():
    boxes = torch.tensor([[-3.0, -1.0, 105.0, 50.0], [10.0, 20.0, 30.0, 90.0]])
    expected = torch.tensor([[0.0, 0.0, 100.0, 50.0], [10.0, 20.0, 30.0, 80.0]])
    assert torch.equal(clip_boxes(boxes, 100, 80), expected)
    np.testing.assert_array_equal(clip_boxes(boxes.numpy(), 100, 80), expected.numpy())


def test_box_area_degenerate_and_float64():
    boxes = torch.tensor([[0, 0, 4, 3], [5, 5, 2, 9], [1, 1, 1, 4]])
    assert box_area(boxes).tolist() == [12.0, 0.0, 0.0]
    big = np.array([[1e8, 0.0, 1e8 + 1.5, 2.0]])
    assert box_area(big)[0] == 3.0  # float32 would round 1e8 + 1.5 to 1e8 + 2


def test_box_iou_matches_loop():
    rng = np.random.default_rng(1)
    a = random_boxes(rng, 30, 50, 40).astype(np.float64)
    b = random_boxes(rng, 20, 50, 40).astype(np.float64)
    got = box_iou(torch.from_numpy(a), torch.from_numpy(b))
    assert got.dtype == torch.float64 and got.shape == (30, 20)
    for i, box_a in enumerate(a):
        for j, box_b in enumerate(b):
            inter = max(0.0, min(box_a[2], box_b[2]) - max(box_a[0], box_b[0])) * max(
                0.0, min(box_a[3], box_b[3]) - max(box_a[1], box_b[1])
            )
            area_a = max(0.0, box_a[2] - box_a[0]) * max(0.0, box_a[3] - box_a[1])
            area_b = max(0.0, box_b[2] - box_b[0]) * max(0.0, box_b[3] - box_b[1])
            union = area_a + area_b - inter
            want = inter / union if union > 0 else 0.0
            assert got[i, j].item() == pytest.approx(want, abs=1e-12)


def test_box_iou_hand_cases():
    iou = box_iou(np.array([[0.0, 0, 2, 2]]), np.array([[1.0, 1, 3, 3], [0.0, 0, 2, 2], [5.0, 5, 5, 5]]))
    np.testing.assert_allclose(iou, [[1 / 7, 1.0, 0.0]])


def test_crop_masks_match_loop_and_batch():
    rng = np.random.default_rng(2)
    width, height = 352, 256
    boxes = random_boxes(rng, 40, width, height).astype(np.float32)
    boxes[5] = -1
    masks = crop_masks(torch.from_numpy(boxes), width, height, size=(48, 64))
    assert masks.shape == (40, 48, 64) and masks.dtype == torch.float32
    for box, mask in zip(boxes, masks, strict=True):
        np.testing.assert_array_equal(mask.numpy(), loop_crop_mask(box, width, height, 64, 48))
    assert masks[5].sum() == 0
    batched = crop_masks(torch.from_numpy(np.stack([boxes, boxes[::-1].copy()])), width, height, size=(48, 64))
    assert torch.equal(batched[0], masks) and torch.equal(batched[1], masks.flip(0))


def test_crop_mask_hand_case():
    # [0, 0, 176, 128] in 352x256 covers the top-left quarter of a 64x64 grid.
    mask = crop_masks(torch.tensor([[0.0, 0.0, 176.0, 128.0]]), 352, 256)[0]
    expected = torch.zeros(64, 64)
    expected[:32, :32] = 1
    assert torch.equal(mask, expected)


def test_partition_masks_real_person_channel_sums():
    # 297406.jpg resized to 352x256, person at [48, 167, 87, 233]: grid columns 0|3|5|22, rows 0|10|14|16.
    masks = partition_masks(torch.tensor([[48.0, 167.0, 87.0, 233.0]]), 352, 256)
    assert masks.shape == (9, 16, 22)
    assert masks.sum(dim=(1, 2)).tolist() == [30, 20, 170, 12, 8, 68, 6, 4, 34]
    assert torch.equal(masks.sum(0), torch.ones(16, 22))


def test_partition_masks_match_loop_batched():
    rng = np.random.default_rng(3)
    width, height = 384, 256
    boxes = random_boxes(rng, 25, width, height).astype(np.float32)
    boxes[0] = -1
    boxes[1] = [100, 50, 105, 53]  # truncates to zero width and height: no person cell, as the release
    masks = partition_masks(torch.from_numpy(boxes).unsqueeze(1), width, height)
    assert masks.shape == (25, 9, 16, 24)
    for box, mask in zip(boxes, masks, strict=True):
        np.testing.assert_array_equal(mask.numpy(), loop_partition_mask(box, width, height, 16))
    assert masks[0][8].sum() == 16 * 24 and masks[0].sum() == 16 * 24  # no person: channel 8 covers the map
    assert masks[1][4].sum() == 0


def test_has_person_per_image():
    boxes = torch.tensor([[[10.0, 10, 20, 20]], [[-1.0, -1, -1, -1]], [[5.0, 5, 5, 9]], [[0.0, 0, 1, 1]]])
    assert has_person(boxes).tolist() == [True, False, False, True]
    assert has_person(torch.tensor([-1.0, -1, -1, -1])).item() is False
    with pytest.raises(ValueError, match=r"\(B, 1, 4\)"):
        has_person(torch.zeros(2, 4))


@pytest.mark.parametrize(
    "width,height,expected",
    [
        (1024, 744, (352, 256)),  # 1024 * 256 / 744 = 352.3 -> 11.01 * 32
        (1024, 683, (384, 256)),  # 383.8 -> 12 * 32
        (400, 256, (384, 256)),  # 12.5 rounds half to even: 12 * 32
        (432, 256, (448, 256)),  # 13.5 rounds half to even: 14 * 32
        (683, 1024, (256, 384)),
    ],
)
def test_resized_size_keep_aspect(width, height, expected):
    assert resized_size(width, height, (256, 256), True) == expected


def test_resized_size_fixed_and_bad_input():
    assert resized_size(1024, 744, (256, 192), False) == (256, 192)
    with pytest.raises(ValueError, match="0x10"):
        resized_size(0, 10, (256, 256), True)


def test_masks_match_release_fixture():
    fixture = torch.load(require_shared("official_fixtures/hcic_forward_fixture.pt"), weights_only=True)
    width, height = fixture["resized_wh"]
    assert torch.equal(crop_masks(fixture["crop_box"], width, height), fixture["crop_mask"])
    assert torch.equal(partition_masks(fixture["human_box"], width, height), fixture["partition_mask"])
    # Without a person the release's -1 box truncates to a point at the origin, so channel 8 covers
    # the map (the fixture fed all zeros instead; both have an empty person cell, all the model reads).
    no_person = partition_masks(torch.full((1, 1, 4), -1.0), width, height)
    assert no_person.shape == fixture["partition_mask_no_human"].shape
    assert no_person[0, 8].sum() == no_person[0, 8].numel() and no_person.sum() == no_person[0, 8].numel()
    assert fixture["partition_mask_no_human"][:, 4].sum() == 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1,2,3,4", (1.0, 2.0, 3.0, 4.0)),
        (" 10.5, 0 ,-3,1e2", (10.5, 0.0, -3.0, 100.0)),
        ("1,2,3", None),
        ("1,2,3,4,5", None),
        ("a,2,3,4", None),
        ("", None),
    ],
)
def test_box_from_text(text: str, expected: tuple | None) -> None:
    assert box_from_text(text) == expected
