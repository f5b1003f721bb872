"""The score losses of one group of crops (predicted and ground-truth scores, flat): smooth-L1,
its score-weighted form, the pairwise rank loss and the listwise view-ranking loss.

:func:`group_score_loss` sums the chosen ones for one group; ``cropping_model.crop_score_loss``
over each image's valid crops.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def _flat_pair(pre_score: torch.Tensor, gt_score: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pre, gt = pre_score.reshape(-1), gt_score.reshape(-1).to(pre_score.dtype)
    if pre.shape != gt.shape:
        raise ValueError(f"predicted scores {tuple(pre_score.shape)} and ground truth {tuple(gt_score.shape)} differ")
    return pre, gt


def score_regression_loss(pre_score: torch.Tensor, gt_score: torch.Tensor) -> torch.Tensor:
    """Smooth-L1 regression of the scores, averaged over crops."""
    pre, gt = _flat_pair(pre_score, gt_score)
    return F.smooth_l1_loss(pre, gt, reduction="mean")


def score_weighted_regression_loss(pre_score: torch.Tensor, gt_score: torch.Tensor, score_mean: float) -> torch.Tensor:
    """Smooth-L1 regression weighted by exp(max(score - mean, 0)): good crops count more."""
    pre, gt = _flat_pair(pre_score, gt_score)
    weight = torch.exp((gt - score_mean).clamp(min=0, max=100))
    return torch.mean(weight * F.smooth_l1_loss(pre, gt, reduction="none"))


def score_rank_loss(pre_score: torch.Tensor, gt_score: torch.Tensor, weighting: str = "sign") -> torch.Tensor:
    """Pairwise rank loss: sum over pairs of max(0, -w(g_i - g_j) * ((p_i - p_j) - (g_i - g_j))) / pairs.

    ``w`` is ``sin`` (what the human-centric release computes) or ``sign`` (a variant).
    """
    pre, gt = _flat_pair(pre_score, gt_score)
    count = pre.shape[0]
    if count < 2:
        return pre.sum() * 0
    pre_diff = pre[:, None] - pre[None, :]
    gt_diff = gt[:, None] - gt[None, :]
    if weighting == "sign":
        direction = torch.sign(gt_diff)
    elif weighting == "sin":
        direction = torch.sin(gt_diff)
    else:
        raise ValueError(f"rank loss weighting {weighting!r}; expected 'sign' or 'sin'")
    violation = torch.clamp(-direction * (pre_diff - gt_diff), min=0)
    return violation.sum() / (count * (count - 1) / 2)


def listwise_view_ranking_loss(pre_score: torch.Tensor, gt_score: torch.Tensor) -> torch.Tensor:
    """Cross-entropy between softmax(predictions) and softmax(dense rank of the ground truth)."""
    pre, gt = _flat_pair(pre_score, gt_score)
    _, dense_rank = torch.unique(gt, sorted=True, return_inverse=True)
    target = torch.softmax(dense_rank.to(pre.dtype) + 1, dim=-1)
    return -(torch.log_softmax(pre, dim=-1) * target).sum()


def group_score_loss(
    pre_score: torch.Tensor,
    gt_score: torch.Tensor,
    loss_types: Sequence[str],
    score_mean: float,
    rank_loss_weighting: str = "sign",
) -> torch.Tensor:
    """Sum of the ``loss_types`` (L1Loss, WeightedL1Loss, RankLoss, LVRLoss) of one group of crops."""
    total = pre_score.new_zeros(())
    for loss_type in loss_types:
        if loss_type == "L1Loss":
            total = total + score_regression_loss(pre_score, gt_score)
        elif loss_type == "WeightedL1Loss":
            total = total + score_weighted_regression_loss(pre_score, gt_score, score_mean)
        elif loss_type == "RankLoss":
            total = total + score_rank_loss(pre_score, gt_score, rank_loss_weighting)
        elif loss_type == "LVRLoss":
            total = total + listwise_view_ranking_loss(pre_score, gt_score)
        else:
            raise ValueError(f"unknown score loss {loss_type!r}")
    return total
