"""Evaluation metrics of the release: GAICD ranking metrics, FCDB/FLMS IoU and Disp.

GAICD (per image, then averaged over images):

* Acc_K/N, K = 1..4, N = 5 or 10: of the K crops with the highest predicted scores,
  the fraction whose ground-truth score is at least the N-th best ground-truth score
  of the image. Ties in the ground truth need no rule (only the N-th best *value*
  matters, so every crop tied with it is a hit). Ties in the prediction are broken as
  the release's stable ``sorted(..., reverse=True)`` does: the crop listed first wins.
* Acc5, Acc10: the mean of Acc_K/5 (resp. Acc_K/10) over K = 1..4, as in the paper.
* SRCC: Spearman's rank correlation with tied values given their average rank
  (``scipy.stats.spearmanr``'s convention); PCC: Pearson's correlation. An image whose
  ground truth or prediction is constant has no correlation: NaN, which then makes the
  average NaN, as in the release.

wAcc_K/N (GAIC's TPAMI paper; ``TestAccuracy.py`` of its release and PIC's ``finetune_pic.py``):
the ground-truth rank r of a crop is its position (0 = best) when the image's crops are sorted by
ground truth, best first, ties in listing order (the releases' stable ``sorted(...,
reverse=True)``). The ranks of the K best-predicted crops (prediction ties as for Acc_K/N) are
sorted, r_0 <= ... <= r_{K-1}, and crop j counts exp(-0.2 (r_j - j)) when r_j < 5 (N = 5),
exp(-0.1 (r_j - j)) when r_j < 10 (N = 10); wAcc_K/N is their sum divided by K. A perfect ranking
scores 1. Unlike Acc_K/N, a crop tied with the N-th best ground truth but listed after it is not
a hit.

Scores come as one sequence per image (lists, numpy arrays or tensors, lengths may
differ), or padded: entries whose ground truth is NaN, or where ``valid`` is False, are
dropped first. Every image needs at least 10 scored crops.

FCDB/FLMS: the predicted box is compared with each ground-truth box (FLMS has up to 10;
rows with x1 < 0 are padding) by IoU and by the boundary displacement

    disp = (|x1 - x1'| + |x2 - x2'|) / width + (|y1 - y1'| + |y2 - y2'|) / height,

and one ground-truth box is chosen as the release does: the one with the highest IoU,
unless the box with the smallest displacement has that same IoU, then that one.
``crop_metrics`` averages over images, divides the displacement by 4 (the mean over the
four sides, the reported Disp) and counts recall at IoU >= 0.75. Arithmetic is float64
(the release's is float32, which can only matter for exact ties).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from untils.boxes import box_iou

ArrayLike = torch.Tensor | np.ndarray | Sequence[float]

TOP_K = (1, 2, 3, 4)
ACC_N = (5, 10)
RECALL_IOU = 0.75
WACC_DECAY = {5: 0.2, 10: 0.1}  # N -> decay of wAcc_K/N's weights exp(-decay * (rank - position))


def _as_float64(values: ArrayLike) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.float64)


def _image_score_pairs(
    gt_scores: Sequence[ArrayLike], pr_scores: Sequence[ArrayLike], valid: Sequence[ArrayLike] | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per image (gt, pred) float64 vectors with padding removed, checked."""
    if len(gt_scores) != len(pr_scores):
        raise ValueError(f"got ground truth for {len(gt_scores)} images but predictions for {len(pr_scores)}")
    if valid is not None and len(valid) != len(gt_scores):
        raise ValueError(f"got a validity mask for {len(valid)} images, expected {len(gt_scores)}")
    if len(gt_scores) == 0:
        raise ValueError("no images to evaluate")
    pairs = []
    for index, (gt_image, pr_image) in enumerate(zip(gt_scores, pr_scores, strict=True)):
        gt, pred = _as_float64(gt_image).reshape(-1), _as_float64(pr_image).reshape(-1)
        if gt.shape != pred.shape:
            raise ValueError(f"image {index}: {gt.size} ground-truth scores but {pred.size} predictions")
        keep = ~np.isnan(gt)
        if valid is not None:
            mask = _as_float64(valid[index]).reshape(-1)
            if mask.shape != gt.shape:
                raise ValueError(f"image {index}: validity mask has {mask.size} entries, expected {gt.size}")
            keep &= mask.astype(bool)
        gt, pred = gt[keep], pred[keep]
        if not np.all(np.isfinite(gt)):
            raise ValueError(f"image {index}: ground-truth scores must be finite, found {gt[~np.isfinite(gt)][0]}")
        if not np.all(np.isfinite(pred)):
            raise ValueError(f"image {index}: predictions must be finite where the ground truth is valid")
        if gt.size < max(ACC_N):
            raise ValueError(f"image {index}: {gt.size} scored crops, at least {max(ACC_N)} are needed for Acc10")
        pairs.append((gt, pred))
    return pairs


def _top_k_hits(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Acc_K/N of one image for every K in TOP_K and N in ACC_N."""
    predicted_order = np.argsort(-pred, kind="stable")
    gt_descending = np.sort(gt)[::-1]
    accuracies = {}
    for n in ACC_N:
        hits = gt[predicted_order[: max(TOP_K)]] >= gt_descending[n - 1]
        for k in TOP_K:
            accuracies[f"acc{k}_{n}"] = float(hits[:k].mean())
    return accuracies


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of a 1-D array, tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    group_starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    group_ends = np.r_[group_starts[1:], values.size]
    group_ranks = (group_starts + group_ends + 1) / 2.0
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat(group_ranks, group_ends - group_starts)
    return ranks


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's correlation of two 1-D arrays; NaN when either is constant."""
    a_centred, b_centred = a - a.mean(), b - b.mean()
    denominator = np.sqrt((a_centred**2).sum() * (b_centred**2).sum())
    if denominator == 0:
        return float("nan")
    return float(np.clip((a_centred * b_centred).sum() / denominator, -1.0, 1.0))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN when either is constant."""
    return pearson(average_ranks(a), average_ranks(b))


def gaicd_metrics(
    gt_scores: Sequence[ArrayLike], pr_scores: Sequence[ArrayLike], valid: Sequence[ArrayLike] | None = None
) -> dict[str, float]:
    """The full GAICD table: acc1_5..acc4_5, acc1_10..acc4_10, acc5, acc10, srcc, pcc.

    ``gt_scores`` and ``pr_scores`` hold one score vector per image (see the module
    docstring for padding and ties); every value is the mean over images.
    """
    pairs = _image_score_pairs(gt_scores, pr_scores, valid)
    per_image = [_top_k_hits(gt, pred) for gt, pred in pairs]
    table = {name: float(np.mean([image[name] for image in per_image])) for name in per_image[0]}
    for n in ACC_N:
        table[f"acc{n}"] = float(np.mean([table[f"acc{k}_{n}"] for k in TOP_K]))
    table["srcc"] = float(np.mean([spearman(gt, pred) for gt, pred in pairs]))
    table["pcc"] = float(np.mean([pearson(gt, pred) for gt, pred in pairs]))
    return table


def _weighted_hits(gt: np.ndarray, pred: np.ndarray) -> dict[int, list[float]]:
    """wAcc_K/N of one image: {N: [K = 1..4]}."""
    ground_truth_rank = np.empty(gt.size, dtype=np.int64)
    ground_truth_rank[np.argsort(-gt, kind="stable")] = np.arange(gt.size)
    returned = ground_truth_rank[np.argsort(-pred, kind="stable")[: max(TOP_K)]]
    accuracies: dict[int, list[float]] = {}
    for n, decay in WACC_DECAY.items():
        accuracies[n] = []
        for k in TOP_K:
            ranks = np.sort(returned[:k])
            weights = np.where(ranks < n, np.exp(-decay * (ranks - np.arange(k))), 0.0)
            accuracies[n].append(float(weights.sum() / k))
    return accuracies


def weighted_accuracy(
    gt_scores: Sequence[ArrayLike], pred_scores: Sequence[ArrayLike], valid: Sequence[ArrayLike] | None = None
) -> tuple[list[float], list[float]]:
    """``(wacc5, wacc10)``: wAcc_K/5 and wAcc_K/10 for K = 1..4, fractions averaged over images.

    Inputs as :func:`gaicd_metrics`; the definition is in the module docstring.
    """
    per_image = [_weighted_hits(gt, pred) for gt, pred in _image_score_pairs(gt_scores, pred_scores, valid)]
    wacc5, wacc10 = (np.mean([image[n] for image in per_image], axis=0).tolist() for n in ACC_N)
    return wacc5, wacc10


def _as_boxes(boxes: ArrayLike, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(_as_float64(boxes))
    if tensor.numel() % 4 != 0 or tensor.numel() == 0:
        raise ValueError(f"{name} must hold [x1, y1, x2, y2] boxes, got shape {tuple(tensor.shape)}")
    return tensor.reshape(-1, 4)


def compute_iou_and_disp(gt_crops: ArrayLike, pred_crop: ArrayLike, width: float, height: float) -> tuple[float, float]:
    """IoU and displacement of one predicted box against an image's ground truth.

    ``gt_crops``: (G, 4) boxes in original pixels, padding rows (x1 < 0) ignored;
    ``pred_crop``: one box, shape (4,) or (1, 4). Returns ``(iou, disp)`` of the
    chosen ground-truth box, with ``disp`` the *sum* of the four normalised side
    offsets, as the release's function (``crop_metrics`` divides it by 4).
    """
    if not (width > 0 and height > 0):
        raise ValueError(f"image size must be positive, got width={width}, height={height}")
    gt = _as_boxes(gt_crops, "gt_crops")
    gt = gt[gt[:, 0] >= 0]
    if gt.shape[0] == 0:
        raise ValueError("gt_crops holds no ground-truth box (all rows are [-1, -1, -1, -1] padding)")
    pred = _as_boxes(pred_crop, "pred_crop")
    if pred.shape[0] != 1:
        raise ValueError(f"pred_crop must be one box, got {pred.shape[0]}")
    iou = box_iou(gt, pred)[:, 0]
    offsets = (gt - pred).abs()
    disp = (offsets[:, 0] + offsets[:, 2]) / width + (offsets[:, 1] + offsets[:, 3]) / height
    best_iou_index = int(torch.argmax(iou))
    best_disp_index = int(torch.argmin(disp))
    chosen = best_disp_index if iou[best_disp_index] == iou[best_iou_index] else best_iou_index
    return float(iou[chosen]), float(disp[chosen])


def crop_metrics(results: Iterable[tuple[float, float]], iou_threshold: float = RECALL_IOU) -> dict[str, float]:
    """Mean IoU, mean Disp (per side) and recall at ``iou >= iou_threshold``.

    ``results`` holds one ``compute_iou_and_disp`` pair per image.
    """
    pairs = np.asarray(list(results), dtype=np.float64).reshape(-1, 2)
    if pairs.shape[0] == 0:
        raise ValueError("no images to evaluate")
    ious, disps = pairs[:, 0], pairs[:, 1]
    return {
        "iou": float(ious.mean()),
        "disp": float(disps.mean() / 4.0),
        "recall": float((ious >= iou_threshold).mean()),
    }


def best_crop_in_original(
    anchor_boxes_resized: ArrayLike,
    scores: ArrayLike,
    resized_wh: tuple[float, float],
    original_wh: tuple[float, float],
) -> list[int]:
    """The highest-scoring candidate mapped to original pixels as ``[x1, y1, x2, y2]`` ints.

    The release multiplies the anchor's float32 fractions by the original size and
    truncates (``int``); here the fractions are the resized boxes over the resized
    size. The arithmetic stays float32 on purpose: truncation is sensitive to it
    (0.9 * 1000 is 900 in float32 but 899.99... in float64). With a power-of-two
    resized side (the release's fixed 256 x 256) the fractions come back exactly and
    the result is the release's; with other sizes the float32 product anchor * size
    is not always undone by the division, and about 0.2% of coordinates differ from
    the release's by one pixel. The first of tied best scores wins (``argmax``).
    """
    boxes = _as_boxes(anchor_boxes_resized, "anchor_boxes_resized")
    flat_scores = _as_float64(scores).reshape(-1)
    if flat_scores.size != boxes.shape[0]:
        raise ValueError(f"got {flat_scores.size} scores for {boxes.shape[0]} candidate boxes")
    if not np.all(np.isfinite(flat_scores)):
        raise ValueError("candidate scores must be finite")
    (resized_w, resized_h), (original_w, original_h) = resized_wh, original_wh
    if min(resized_w, resized_h, original_w, original_h) <= 0:
        raise ValueError(f"sizes must be positive, got resized {resized_wh} and original {original_wh}")
    best = boxes[int(np.argmax(flat_scores))].numpy().astype(np.float32)
    fractions = best / np.array([resized_w, resized_h, resized_w, resized_h], dtype=np.float32)
    in_original = fractions * np.array([original_w, original_h, original_w, original_h], dtype=np.float32)
    return [int(value) for value in in_original]
