"""Feeding a collated batch to a crop model: on its device, in its precision and memory format.

Every crop model is called the same way, ``model(image, crop_box, human_box=..., crop_valid=...)``,
and returns an ``untils.crop_heads.CropOutput``; this module is the one place that does it. What a
model's ``photo_spec`` says it takes is added: ``user`` (the user a PIC embedding model scores for)
when one is given, ``user_image`` (the whole photo, for the official PIC model) when the batch has one.
"""

from __future__ import annotations

from typing import Any

import torch

from untils.runtime import autocast

# What a model or a loss reads from a batch; the rest (names, sizes, ground-truth crops) stays on the host.
DEVICE_KEYS = ("image", "crop_box", "human_box", "partition_mask", "crop_valid", "score", "heat_map", "user_image")


def move_batch(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch with the tensors a model reads on ``device`` (non-blocking from pinned memory)."""
    return {
        key: (value.to(device, non_blocking=True) if torch.is_tensor(value) and key in DEVICE_KEYS else value)
        for key, value in batch.items()
    }


def run_model(
    model: torch.nn.Module,
    batch: dict[str, Any],
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    user: str | None = None,
) -> Any:
    """The model's ``CropOutput`` for a batch already on its device (for ``user``, when given).

    ``autocast_dtype`` (torch.bfloat16 or torch.float16) runs the forward under autocast;
    ``channels_last`` passes the image channels-last (convert the weights once with
    :func:`prepare_for_inference`; both formats give the same scores).
    """
    image = batch["image"]
    if channels_last:
        image = image.contiguous(memory_format=torch.channels_last)
    extra = {"user_image": batch["user_image"]} if "user_image" in batch else {}
    if user is not None:
        extra["user"] = user
    with autocast(image.device, autocast_dtype):
        return model(
            image, batch["crop_box"], human_box=batch.get("human_box"), crop_valid=batch.get("crop_valid"), **extra
        )


def prepare_for_inference(model: torch.nn.Module, channels_last: bool = False) -> torch.device:
    """Eval mode, channels-last weights when asked (in place, once); returns the model's device."""
    model.eval()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return next(model.parameters()).device
