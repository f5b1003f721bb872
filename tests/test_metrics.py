"""Metrics against hand-computed cases and independent brute-force references."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr, spearmanr

from tests.conftest import require_shared
from untils.metrics import (
    average_ranks,
    best_crop_in_original,
    compute_iou_and_disp,
    crop_metrics,
    gaicd_metrics,
    weighted_accuracy,
)

# ---------- GAICD ranking metrics ----------


def _reference_acc(gt: list[float], pred: list[float], k: int, n: int) -> float:
    """Acc_K/N by definition: take the best prediction K times (first listed on ties);
    a pick is a hit when fewer than N crops have a strictly higher ground truth."""
    remaining = list(range(len(pred)))
    hits = 0
    for _ in range(k):
        best = remaining[0]
        for index in remaining:
            if pred[index] > pred[best]:
                best = index
        remaining.remove(best)
        strictly_better = sum(1 for value in gt if value > gt[best])
        hits += strictly_better < n
    return hits / k


def _reference_ranks(values: list[float]) -> list[float]:
    return [1 + sum(v < x for v in values) + (sum(v == x for v in values) - 1) / 2 for x in values]


def _reference_pearson(a: list[float], b: list[float]) -> float:
    mean_a, mean_b = sum(a) / len(a), sum(b) / len(b)
    cov = sum((x - mean_a) * (y - mean_b) for x, y in zip(a, b, strict=True))
    return cov / math.sqrt(sum((x - mean_a) ** 2 for x in a) * sum((y - mean_b) ** 2 for y in b))


def test_acc_hand_computed():
    gt = [10, 9, 8, 7, 6, 5, 4, 3, 2, 1]
    pred = [0.0] * 10
    for rank, index in enumerate([0, 7, 2, 9]):  # predicted top 4: gt 10, 3, 8, 1
        pred[index] = 10.0 - rank
    table = gaicd_metrics([gt], [pred])
    # 5th best gt is 6: hits are 10 and 8 only. 10th best is 1: every crop is a hit.
    assert table["acc1_5"] == 1.0
    assert table["acc2_5"] == 0.5
    assert table["acc3_5"] == pytest.approx(2 / 3)
    assert table["acc4_5"] == 0.5
    assert table["acc5"] == pytest.approx((1 + 0.5 + 2 / 3 + 0.5) / 4)
    assert all(table[f"acc{k}_10"] == 1.0 for k in range(1, 5))
    assert table["acc10"] == 1.0


def test_acc_prediction_ties_go_to_the_crop_listed_first():
    flat = [0.5] * 12
    assert gaicd_metrics([[1, 1, 1, 1, 9, 9, 9, 9, 9, 1, 1, 1]], [flat])["acc4_5"] == 0.0  # crops 0..3
    table = gaicd_metrics([[9, 9, 1, 1, 9, 9, 9, 1, 1, 1, 1, 1]], [flat])
    assert [table[f"acc{k}_5"] for k in range(1, 5)] == [1.0, 1.0, pytest.approx(2 / 3), 0.5]


def test_acc_ground_truth_ties_at_the_threshold_all_count():
    gt = [5, 4, 4, 4, 4, 4, 4, 1, 1, 1, 0, 0]  # 5th best value is 4, shared by six crops
    pred = [0, 0, 0, 0, 0, 0, 9, 8, 7, 6, 0, 0]
    table = gaicd_metrics([gt], [pred])
    assert [table[f"acc{k}_5"] for k in range(1, 5)] == [1.0, 0.5, pytest.approx(1 / 3), 0.25]


def test_gaicd_metrics_match_brute_force_on_random_images():
    rng = np.random.default_rng(1)
    gts, preds = [], []
    for _ in range(12):
        count = int(rng.integers(10, 30))
        gts.append(rng.integers(1, 8, count).astype(float).tolist())  # small integers: many ties
        preds.append(rng.integers(0, 6, count).astype(float).tolist())
    table = gaicd_metrics(gts, [torch.tensor(p) for p in preds])
    for n in (5, 10):
        for k in range(1, 5):
            expected = sum(_reference_acc(g, p, k, n) for g, p in zip(gts, preds, strict=True)) / len(gts)
            assert table[f"acc{k}_{n}"] == pytest.approx(expected, abs=1e-12)
        assert table[f"acc{n}"] == pytest.approx(sum(table[f"acc{k}_{n}"] for k in range(1, 5)) / 4)
    srcc = [_reference_pearson(_reference_ranks(g), _reference_ranks(p)) for g, p in zip(gts, preds, strict=True)]
    pcc = [_reference_pearson(g, p) for g, p in zip(gts, preds, strict=True)]
    assert table["srcc"] == pytest.approx(sum(srcc) / len(srcc), abs=1e-12)
    assert table["pcc"] == pytest.approx(sum(pcc) / len(pcc), abs=1e-12)
    pairs = list(zip(gts, preds, strict=True))
    assert table["srcc"] == pytest.approx(np.mean([spearmanr(g, p)[0] for g, p in pairs]), abs=1e-12)
    assert table["pcc"] == pytest.approx(np.mean([pearsonr(g, p)[0] for g, p in pairs]), abs=1e-12)


def test_srcc_hand_computed_with_ties():
    gt = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    pred = [5, 6, 7, 8, 7, 10, 11, 12, 13, 14]  # ranks 1, 2, 3.5, 5, 3.5, 6..10
    assert average_ranks(np.array(pred, dtype=float)).tolist() == [1, 2, 3.5, 5, 3.5, 6, 7, 8, 9, 10]
    # Rank deviations from 5.5: gt -4.5..4.5; pred differs only at ranks 3.5, 5, 3.5 of crops 2, 3, 4.
    deviations_gt = [r - 5.5 for r in range(1, 11)]
    deviations_pred = [r - 5.5 for r in [1, 2, 3.5, 5, 3.5, 6, 7, 8, 9, 10]]
    expected = sum(a * b for a, b in zip(deviations_gt, deviations_pred, strict=True)) / math.sqrt(
        sum(a * a for a in deviations_gt) * sum(b * b for b in deviations_pred)
    )
    assert expected == pytest.approx(80.5 / math.sqrt(82.5 * 82.0))
    assert gaicd_metrics([gt], [pred])["srcc"] == pytest.approx(expected, abs=1e-12)


def test_padding_by_nan_or_mask_is_ignored():
    rng = np.random.default_rng(2)
    gts = [rng.random(12), rng.random(15)]
    preds = [rng.random(12), rng.random(15)]
    expected = gaicd_metrics(gts, preds)
    padded_gt = np.full((2, 20), np.nan)
    padded_pred = np.zeros((2, 20))
    mask = np.zeros((2, 20), dtype=bool)
    for row, (g, p) in enumerate(zip(gts, preds, strict=True)):
        padded_gt[row, : g.size], padded_pred[row, : p.size], mask[row, : g.size] = g, p, True
    assert gaicd_metrics(padded_gt, padded_pred) == pytest.approx(expected)
    assert gaicd_metrics(np.nan_to_num(padded_gt, nan=-5.0), padded_pred, valid=mask) == pytest.approx(expected)


def test_constant_prediction_has_no_correlation():
    table = gaicd_metrics([list(range(10))], [[1.0] * 10])
    assert math.isnan(table["srcc"]) and math.isnan(table["pcc"])


@pytest.mark.parametrize(
    "gt, pred, message",
    [
        ([list(range(9))], [list(range(9))], "at least 10"),
        ([list(range(10))], [list(range(11))], "image 0"),
        ([list(range(10))], [], "predictions for 0"),
        ([list(range(10))], [[float("nan")] * 10], "finite"),
    ],
)
def test_gaicd_bad_input_is_named(gt, pred, message):
    with pytest.raises(ValueError, match=message):
        gaicd_metrics(gt, pred)


# ---------- wAcc ----------


def test_weighted_accuracy_reproduces_the_release_cases():
    """``wacc_cases``: the values PIC's ``finetune_pic.py`` ``test()`` computes for 40 images."""
    cases = torch.load(require_shared("official_fixtures/pic_forward_fixture.pt"), weights_only=True)["wacc_cases"]
    for case in cases:
        wacc5, wacc10 = weighted_accuracy([case["gt"]], [case["pred"]])
        assert wacc5 == pytest.approx(case["wacc5"], abs=1e-12)
        assert wacc10 == pytest.approx(case["wacc10"], abs=1e-12)
    wacc5, wacc10 = weighted_accuracy([c["gt"] for c in cases], [torch.tensor(c["pred"]) for c in cases])
    assert wacc5 == pytest.approx(np.mean([c["wacc5"] for c in cases], axis=0).tolist(), abs=1e-12)
    assert wacc10 == pytest.approx(np.mean([c["wacc10"] for c in cases], axis=0).tolist(), abs=1e-12)


def test_weighted_accuracy_hand_computed():
    gt = [10, 9, 8, 7, 6, 5, 4, 3, 2, 1]  # crop i has ground-truth rank i
    pred = [0.0] * 10
    for position, index in enumerate([0, 7, 2, 9]):  # returned ranks 0, 7, 2, 9
        pred[index] = 10.0 - position
    wacc5, wacc10 = weighted_accuracy([gt], [pred])
    e = math.exp
    # K = 3: sorted ranks 0, 2, 7 at positions 0, 1, 2 -> e^0 + e^(-0.2 * 1) (+ e^(-0.1 * 5) for N = 10).
    assert wacc5 == pytest.approx([1.0, 1 / 2, (1 + e(-0.2)) / 3, (1 + e(-0.2)) / 4])
    assert wacc10 == pytest.approx(
        [1.0, (1 + e(-0.6)) / 2, (1 + e(-0.1) + e(-0.5)) / 3, (1 + e(-0.1) + e(-0.5) + e(-0.6)) / 4]
    )
    perfect = weighted_accuracy([gt, gt[::-1]], [gt, gt[::-1]])
    assert perfect == ([1.0] * 4, [1.0] * 4)


def test_weighted_accuracy_ground_truth_ties_go_by_listing_order():
    # Crops 1..6 tie at 4; crop 6 is listed last, so its rank is 6: no wAcc_1/5 hit (an Acc_1/5 hit).
    gt = [5, 4, 4, 4, 4, 4, 4, 1, 1, 1, 0, 0]
    pred = [0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0]
    wacc5, wacc10 = weighted_accuracy([gt], [pred])
    assert wacc5[0] == 0.0 and gaicd_metrics([gt], [pred])["acc1_5"] == 1.0
    assert wacc10[0] == pytest.approx(math.exp(-0.6))
    with pytest.raises(ValueError, match="at least 10"):
        weighted_accuracy([gt[:9]], [pred[:9]])


# ---------- FCDB / FLMS ----------


def _pixel_iou(a: list[int], b: list[int]) -> float:
    """IoU of integer boxes by counting the unit pixels [x, x+1) x [y, y+1) each covers."""
    inside_a = {(x, y) for x in range(a[0], a[2]) for y in range(a[1], a[3])}
    inside_b = {(x, y) for x in range(b[0], b[2]) for y in range(b[1], b[3])}
    return len(inside_a & inside_b) / len(inside_a | inside_b)


def test_iou_and_disp_hand_computed():
    iou, disp = compute_iou_and_disp([[0, 0, 10, 10]], [5, 0, 15, 10], 20, 20)
    assert iou == pytest.approx(50 / 150)
    assert disp == pytest.approx((5 + 5) / 20)


def test_equal_iou_prefers_the_smaller_displacement():
    # Both gt boxes overlap the prediction with IoU 1/2; the second moves less relative to the image.
    gt = [[0, 0, 10, 20], [0, 0, 20, 10]]
    iou, disp = compute_iou_and_disp(gt, [[0, 0, 10, 10]], 40, 20)
    assert (iou, disp) == (pytest.approx(0.5), pytest.approx(10 / 40))
    # A higher IoU wins over a smaller displacement.
    iou, disp = compute_iou_and_disp([[0, 0, 12, 10], [0, 0, 30, 10]], [0, 0, 10, 10], 1000, 10)
    assert (iou, disp) == (pytest.approx(10 / 12), pytest.approx(2 / 1000))


def test_iou_and_disp_match_pixel_counting_and_ignore_padding():
    rng = np.random.default_rng(3)
    width, height = 23, 17
    for _ in range(40):
        count = int(rng.integers(1, 5))
        gt = []
        for _ in range(count + 1):
            x1, x2 = sorted(rng.choice(width + 1, 2, replace=False).tolist())
            y1, y2 = sorted(rng.choice(height + 1, 2, replace=False).tolist())
            gt.append([x1, y1, x2, y2])
        pred, gt = gt[0], gt[1:]
        ious = [_pixel_iou(box, pred) for box in gt]
        disps = [
            (abs(b[0] - pred[0]) + abs(b[2] - pred[2])) / width + (abs(b[1] - pred[1]) + abs(b[3] - pred[3])) / height
            for b in gt
        ]
        best_iou = max(ious)
        smallest_disp = disps.index(min(disps))
        chosen = smallest_disp if math.isclose(ious[smallest_disp], best_iou) else ious.index(best_iou)
        padded = np.array(gt + [[-1, -1, -1, -1]] * (10 - len(gt)))
        for gt_input, pred_input in ((padded, np.array(pred)), (torch.from_numpy(padded), torch.tensor([pred]))):
            iou, disp = compute_iou_and_disp(gt_input, pred_input, width, height)
            assert iou == pytest.approx(ious[chosen], abs=1e-12)
            assert disp == pytest.approx(disps[chosen], abs=1e-12)


def test_iou_and_disp_bad_input():
    with pytest.raises(ValueError, match="padding"):
        compute_iou_and_disp([[-1, -1, -1, -1]], [0, 0, 1, 1], 10, 10)
    with pytest.raises(ValueError, match="one box"):
        compute_iou_and_disp([[0, 0, 1, 1]], [[0, 0, 1, 1], [0, 0, 2, 2]], 10, 10)
    with pytest.raises(ValueError, match="positive"):
        compute_iou_and_disp([[0, 0, 1, 1]], [0, 0, 1, 1], 0, 10)


def test_crop_metrics_hand_computed():
    table = crop_metrics([(0.8, 0.4), (0.5, 0.2), (0.75, 0.0)])
    assert table["iou"] == pytest.approx((0.8 + 0.5 + 0.75) / 3)
    assert table["disp"] == pytest.approx((0.4 + 0.2) / 3 / 4)
    assert table["recall"] == pytest.approx(2 / 3)  # 0.75 itself counts
    with pytest.raises(ValueError, match="no images"):
        crop_metrics([])


def test_best_crop_in_original_hand_computed():
    boxes = np.array([[0, 0, 256, 256], [25.6, 0, 128, 256], [10, 10, 20, 20]], dtype=np.float32)
    assert best_crop_in_original(boxes, [0.1, 0.9, 0.9], (256, 256), (1000, 750)) == [100, 0, 500, 750]
    assert best_crop_in_original(torch.from_numpy(boxes), torch.tensor([0.1, 0.2, 0.3]), (256, 256), (1000, 750)) == [
        39,
        29,
        78,
        58,
    ]  # 39.06, 29.3, 78.1, 58.6 truncated
    with pytest.raises(ValueError, match="3 candidate boxes"):
        best_crop_in_original(boxes, [1.0, 2.0], (256, 256), (1000, 750))


def test_best_crop_in_original_reproduces_the_release_on_the_real_anchors():
    with open(require_shared("pdefined_anchors.pkl"), "rb") as handle:
        fractions = np.array(pickle.load(handle, encoding="iso-8859-1"), dtype=np.float32)
    resized_w = resized_h = 256
    resized = fractions * np.array([resized_w, resized_h] * 2, dtype=np.float32)
    original_w, original_h = 1000, 667
    for index in range(0, len(fractions), 7):
        scores = np.zeros(len(fractions))
        scores[index] = 1.0
        # The release: int(float32 fraction * original size), float32 arithmetic.
        expected = [int(fractions[index][c] * np.float32(size)) for c, size in enumerate((original_w, original_h) * 2)]
        assert best_crop_in_original(resized, scores, (resized_w, resized_h), (original_w, original_h)) == expected
