"""The recipe of PIC's release for its model (``pic_model.PICOfficialModel``): the rated images it
trains and is evaluated on, its augmentation of the subjective input, its loss (fidelity rank loss +
smooth-L1) and its loop (prior and fine-tuning alike). The model is taken as it comes (any module
called like it), so this module needs nothing of the top level.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from untils.boxes import rescale_boxes
from untils.metrics import gaicd_metrics, weighted_accuracy
from untils.pic_format import pic_crop_image, pic_user_image

FIDELITY_EPS = 1e-8  # inside the square roots of the fidelity loss, as the release


def fidelity_rank_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The release's ``loss_m``: over every pair i < j of one image's crops, the fidelity between
    the probit of the predicted difference, Phi(pred_i - pred_j), and the target's order
    ((sign(target_i - target_j) + 1) / 2: ties give 1/2); the mean of 1 - fidelity."""
    pred, target = pred.reshape(-1), target.reshape(-1).to(pred.dtype)
    if pred.numel() < 2 or pred.numel() != target.numel():
        raise ValueError(
            f"fidelity_rank_loss needs two or more crops and one target each, got {pred.numel()} "
            f"predictions and {target.numel()} targets"
        )
    rows, cols = torch.triu_indices(pred.numel(), pred.numel(), offset=1, device=pred.device)
    probability = 0.5 * (1 + torch.erf((pred[rows] - pred[cols]) / np.sqrt(2.0)))
    order = 0.5 * (torch.sign(target[rows] - target[cols]) + 1)
    fidelity = torch.sqrt(probability * order + FIDELITY_EPS) + torch.sqrt(
        (1 - probability) * (1 - order) + FIDELITY_EPS
    )
    return torch.mean(1 - fidelity)


@dataclass
class RatedImage:
    """One rated image, ready for the official model: its inputs and the user's scores."""

    name: str
    image: torch.Tensor  # (1, 3, H, W) objective branch input
    crop_box: torch.Tensor  # (1, N, 4) crops in its pixels, in the file's fixed order
    user_image: torch.Tensor  # (1, 3, 256, 256) subjective branch input, without augmentation
    scores: torch.Tensor  # (N,)


def rated_images(image_dir: str, ratings: Mapping[str, Any], bgr_order: bool = False) -> list[RatedImage]:
    """The images of a user's file (``{name: annotation with .boxes and .scores}``, e.g.
    ``untils.dataset_files.CropAnnotation``) as :class:`RatedImage` (crop boxes scaled as the release:
    x1/y1 floored, x2/y2 ceiled)."""
    examples = []
    for name, entry in ratings.items():
        with Image.open(os.path.join(image_dir, name)) as photo:
            rgb = photo.convert("RGB")
            image, ratio_w, ratio_h = pic_crop_image(np.asarray(rgb), bgr_order)
            user_image = pic_user_image(rgb)
        boxes = rescale_boxes(np.asarray(entry.boxes, dtype=np.float64), ratio_w, ratio_h)
        examples.append(
            RatedImage(
                name,
                image,
                torch.from_numpy(boxes).unsqueeze(0),
                user_image,
                torch.as_tensor(entry.scores, dtype=torch.float32),
            )
        )
    return examples


def augmented_user_image(user_image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A training view of the subjective input: mirrored half of the time, brightness and contrast
    jittered by up to 20% (a subset of the release's training transform, applied after
    normalisation)."""
    view = user_image.flip(-1) if torch.rand((), generator=generator) < 0.5 else user_image
    contrast, brightness = 1 + 0.4 * (torch.rand(2, generator=generator) - 0.5)
    return (view - view.mean()) * contrast + view.mean() * brightness


def official_loss(scores: torch.Tensor, target: torch.Tensor, rank_weight: float, l1_weight: float) -> torch.Tensor:
    """``rank_weight`` x :func:`fidelity_rank_loss` + ``l1_weight`` x smooth-L1 of one image's crops."""
    scores, target = scores.reshape(-1), target.reshape(-1).to(scores.dtype)
    return rank_weight * fidelity_rank_loss(scores, target) + l1_weight * F.smooth_l1_loss(scores, target)


def train_on_images(
    model: nn.Module,
    examples: Sequence[RatedImage],
    epochs: int,
    lr: float,
    rank_weight: float,
    l1_weight: float,
    generator: torch.Generator,
) -> list[float]:
    """The prior's and fine-tuning's loop: every parameter, Adam, batch 1, images in order, the
    model in training mode throughout, crops in their fixed order; mean loss per epoch."""
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    history = []
    for _ in range(epochs):
        total = 0.0
        for example in examples:
            scores = model(
                example.image, example.crop_box, user_image=augmented_user_image(example.user_image, generator)
            ).score
            loss = official_loss(scores, example.scores, rank_weight, l1_weight)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item()
        history.append(total / max(len(examples), 1))
    model.eval()
    return history


@torch.no_grad()
def evaluate_images(model: nn.Module, examples: Sequence[RatedImage], personal: bool = True) -> dict[str, float]:
    """Acc_K/5, Acc_K/10, wAcc_K/5, wAcc_K/10 (K = 1..4, and their means), SRCC, PCC of a user's
    images (fractions, not x100); ``personal=False`` scores with the objective branch alone."""
    model.eval()
    predictions = [
        model(example.image, example.crop_box, user_image=example.user_image if personal else None).score[0]
        for example in examples
    ]
    return user_metrics([example.scores for example in examples], predictions)


def user_metrics(targets: Sequence[torch.Tensor], predictions: Sequence[torch.Tensor]) -> dict[str, float]:
    """GAICD's metrics of a user's images plus wAcc_K/5 and wAcc_K/10 per K = 1..4 (``wacc{K}_5``,
    ``wacc{K}_10``, as the release prints them) and their means over K (``wacc5``, ``wacc10``)."""
    table = gaicd_metrics(targets, predictions)
    wacc5, wacc10 = weighted_accuracy(targets, predictions)
    for k, (five, ten) in enumerate(zip(wacc5, wacc10, strict=True), start=1):
        table[f"wacc{k}_5"], table[f"wacc{k}_10"] = five, ten
    table["wacc5"], table["wacc10"] = float(np.mean(wacc5)), float(np.mean(wacc10))
    return table
