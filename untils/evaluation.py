"""Scoring a whole dataset with a crop model and computing the papers' metrics.

:func:`evaluate_scored` for datasets of scored candidate crops (GAICD, CPC: Acc_K/N, SRCC, PCC),
:func:`evaluate_anchors` for datasets of ground-truth crops scored with the predefined anchors
(FCDB, FLMS: IoU, Disp, recall). Both score images of one resized size together, keep the scores
on the device until every batch is queued (no host-device synchronisation per batch), and under
torch.distributed score this process's share and gather the results. Scores that are NaN or
infinite are refused (:class:`NonFiniteScores`), never turned into NaN metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from untils.batching import ResizedSizes, evaluation_loader, gather_from_processes, shard_for_this_process
from untils.inference import move_batch, prepare_for_inference, run_model
from untils.metrics import (
    ACC_N,
    TOP_K,
    best_crop_in_original,
    compute_iou_and_disp,
    crop_metrics,
    gaicd_metrics,
    weighted_accuracy,
)

_FIELDS_FOR_CROP_METRICS = ("crop_box", "crop_valid", "gt_crops", "width", "height")
Kept = TypeVar("Kept")


class NonFiniteScores(ValueError):
    """The model scored crops with NaN or infinity: its metrics would be meaningless (or NaN)."""


def _refuse_non_finite(finite: Sequence[bool], description: str) -> None:
    """Raise :class:`NonFiniteScores` when some image's scores (one flag per image) are not all finite."""
    bad = len(finite) - sum(finite)
    if bad:
        raise NonFiniteScores(
            f"the model gave NaN or infinite scores on {bad} of {len(finite)} images "
            f"({description}): no metrics computed"
        )


def _scored_batches(
    model: torch.nn.Module,
    dataset: Dataset,
    options: tuple[int, int, bool, str, torch.dtype | None, bool],
    keep: Callable[[dict], Kept],
) -> list[tuple[torch.Tensor, Kept]]:
    """This process's share of ``dataset`` scored by ``model`` batch by batch: each batch's scores
    (B, N), left on the device until every batch is queued, with ``keep(batch)``, the host fields
    its metrics need. ``options``: the evaluators' ``(images_per_batch, num_workers, progress,
    description, autocast_dtype, channels_last)``."""
    images_per_batch, num_workers, progress, description, autocast_dtype, channels_last = options
    if not isinstance(dataset, ResizedSizes):
        raise TypeError(f"{type(dataset).__name__} cannot be batched by size: it has no resized_size_of")
    if len(dataset) == 0:
        raise ValueError(f"no images to evaluate ({description})")
    device = prepare_for_inference(model, channels_last)
    loader = evaluation_loader(
        shard_for_this_process(dataset), images_per_batch, num_workers, pin_memory=device.type == "cuda"
    )
    scored = []
    for batch in tqdm(loader, desc=description, disable=not progress, leave=False):
        score = run_model(model, move_batch(batch, device), autocast_dtype, channels_last).score
        scored.append((score, keep(batch)))
    return scored


@torch.no_grad()
def evaluate_scored(
    model: torch.nn.Module,
    dataset: Dataset,
    images_per_batch: int = 1,
    num_workers: int = 0,
    progress: bool = True,
    description: str = "evaluating",
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> dict[str, float]:
    """Acc_K/N, Acc5, Acc10, SRCC, PCC, wAcc_K/N, wAcc5 and wAcc10 (means over K, as Acc5 and Acc10) of
    ``model`` on a dataset of scored crops (a :class:`~untils.batching.ResizedSizes` one), and ``images``.

    ``autocast_dtype`` and ``channels_last`` are :func:`untils.inference.run_model`'s
    (``channels_last`` converts the model's weights in place).
    """
    scored = _scored_batches(  # the host ground truth (B, N) and crop_valid (B, N) of each batch
        model,
        dataset,
        (images_per_batch, num_workers, progress, description, autocast_dtype, channels_last),
        lambda batch: (batch["score"], batch["crop_valid"]),
    )
    gt_scores, pr_scores = [], []
    for score, (truth, valid) in scored:
        score = score.float().cpu()
        for image in range(score.shape[0]):
            gt_scores.append(truth[image][valid[image]].double().numpy())
            pr_scores.append(score[image][valid[image]].double().numpy())
    gt_scores, pr_scores = gather_from_processes(gt_scores), gather_from_processes(pr_scores)
    _refuse_non_finite([bool(np.isfinite(scores).all()) for scores in pr_scores], description)
    results = gaicd_metrics(gt_scores, pr_scores)
    for n, weighted in zip(ACC_N, weighted_accuracy(gt_scores, pr_scores), strict=True):
        results.update({f"wacc{k}_{n}": value for k, value in zip(TOP_K, weighted, strict=True)})
        results[f"wacc{n}"] = sum(weighted) / len(weighted)
    results["images"] = len(gt_scores)
    return results


@torch.no_grad()
def evaluate_anchors(
    model: torch.nn.Module,
    dataset: Dataset,
    images_per_batch: int = 1,
    num_workers: int = 0,
    progress: bool = True,
    description: str = "evaluating",
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> dict[str, float]:
    """IoU, Disp and recall (IoU >= 0.75) of the best-scored anchor of each image against its
    ground-truth crops, and ``images``; the options are :func:`evaluate_scored`'s."""
    scored = _scored_batches(  # resized (w, h) and the host fields the metrics need of each batch
        model,
        dataset,
        (images_per_batch, num_workers, progress, description, autocast_dtype, channels_last),
        lambda batch: (
            (batch["image"].shape[-1], batch["image"].shape[-2]),
            {key: batch[key] for key in _FIELDS_FOR_CROP_METRICS},
        ),
    )
    results, finite = [], []
    for score, (resized, fields) in scored:
        score = score.float().cpu()
        for image in range(score.shape[0]):
            original = (int(fields["width"][image]), int(fields["height"][image]))
            valid = fields["crop_valid"][image]
            finite.append(bool(torch.isfinite(score[image][valid]).all()))
            if finite[-1]:  # else refused below, once every process knows
                pred = best_crop_in_original(fields["crop_box"][image][valid], score[image][valid], resized, original)
                results.append(compute_iou_and_disp(fields["gt_crops"][image], pred, *original))
    results = gather_from_processes(results)
    _refuse_non_finite(gather_from_processes(finite), description)
    metrics = crop_metrics(results)
    metrics["images"] = len(results)
    return metrics


def pooled_anchor_metrics(parts: Sequence[dict[str, float]]) -> dict[str, float]:
    """:func:`evaluate_anchors`' metrics of several datasets as if they were one: means over all their
    images (the papers' human-centric FCDB+FLMS column)."""
    images = sum(part["images"] for part in parts)
    pooled = {key: sum(part[key] * part["images"] for part in parts) / images for key in ("iou", "disp", "recall")}
    pooled["images"] = images
    return pooled
