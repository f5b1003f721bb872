"""What the frozen PIC embedding model (``pic_model.PICModel``) says about each rated image's
crops, kept so the preference module trains and is evaluated without the backbone: the feature
cache, a user's rated images and the scores of a user's embedding. Models and preference modules
are taken as they come (duck-typed), so this module needs nothing of the top level.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import Dataset
from tqdm import tqdm

from untils.batching import evaluation_loader
from untils.boxes import flip_boxes_horizontal
from untils.inference import move_batch
from untils.pic_recipe import user_metrics

VIEWS = 2  # the image as it is, and mirrored


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Run torch on one CPU thread: the preference module's tensors are so small that sharing
    them between threads costs far more than it saves (25x on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass
class ImageFeatures:
    """What the frozen model says about an image's candidate crops, per view (as is, mirrored)."""

    objective: torch.Tensor  # (VIEWS, N)
    features: torch.Tensor  # (VIEWS, N, F) descriptions for the preference module


@dataclass
class UserImage:
    """One image a user rated: the frozen model's outputs for the user's crops, and the user's scores."""

    name: str
    objective: torch.Tensor  # (views, n): VIEWS, or 1 (no mirrored view) for a person's own ratings
    features: torch.Tensor  # (views, n, F)
    scores: torch.Tensor  # (n,)
    evidence: torch.Tensor  # (views, best_crops, 2F) evidence rows of the user's best crops


@torch.no_grad()
def extract_features(
    model: Any,
    dataset: Dataset,
    device: torch.device,
    images_per_batch: int = 1,
    num_workers: int = 0,
    progress: bool = True,
) -> dict[str, ImageFeatures]:
    """Objective scores and descriptions (``model.crop_outputs``) of every crop of ``dataset``'s images
    (``pic_dataset.PICImageDataset``), for both views."""
    model.eval()
    cache: dict[str, ImageFeatures] = {}
    for batch in tqdm(
        evaluation_loader(dataset, images_per_batch, num_workers),
        desc="crop features",
        disable=not progress,
        leave=False,
    ):
        batch = move_batch(batch, device)
        valid = batch["crop_valid"]
        per_view = []
        for mirrored in (False, True):
            image, crop_box, human_box = batch["image"], batch["crop_box"], batch["human_box"]
            if mirrored:
                width = image.shape[-1]
                image = image.flip(-1)
                crop_box, human_box = flip_boxes_horizontal(crop_box, width), flip_boxes_horizontal(human_box, width)
            per_view.append(model.crop_outputs(image, crop_box, human_box, valid))
        for index, name in enumerate(batch["name"]):
            rows = [view_index == index for _, _, view_index in per_view]
            cache[name] = ImageFeatures(
                objective=torch.stack(
                    [objective[keep] for (objective, _, _), keep in zip(per_view, rows, strict=True)]
                ).cpu(),
                features=torch.stack(
                    [features[keep] for (_, features, _), keep in zip(per_view, rows, strict=True)]
                ).cpu(),
            )
    return cache


def embed_user(preference: Any, examples: Sequence[UserImage], view: int = 0) -> torch.Tensor:
    """A user's embedding from the evidence of ``examples`` (their best crops, as seen in ``view``)."""
    return preference.embed(torch.cat([example.evidence[view] for example in examples]))


def user_scores(preference: Any, embedding: torch.Tensor | None, example: UserImage, view: int = 0) -> torch.Tensor:
    """Scores of an image's crops: objective, plus the preference when an embedding is given."""
    if embedding is None or preference is None:
        return example.objective[view]
    return example.objective[view] + preference(example.features[view], embedding)


@torch.no_grad()
def evaluate_user(
    preference: nn.Module | None, embedding: torch.Tensor | None, examples: Sequence[UserImage]
) -> dict[str, float]:
    """:func:`untils.pic_recipe.user_metrics` (Acc_K/N, wAcc_K/N per K and their means, SRCC, PCC) of
    a user's images, scored as :func:`user_scores` (view 0)."""
    predictions = [user_scores(preference, embedding, example) for example in examples]
    return user_metrics([example.scores for example in examples], predictions)
