"""Options for training on CPC (evaluated on FCDB and FLMS), with the paper's defaults.

Same options as ``config_GAICD.Config``; only the defaults that differ are set here.
Importing this module has no side effects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from config_GAICD import Config as GAICDConfig


@dataclass
class Config(GAICDConfig):
    TRAINING_SET: ClassVar[str] = "CPC"

    keep_aspect_ratio: bool = field(
        default=False, metadata={"help": "resize the shorter side to image_size[0] (else a fixed size)"}
    )
    batch_size: int = field(default=8, metadata={"help": "images per optimiser step"})
    images_per_step: int = field(
        default=8, metadata={"help": "images per forward pass (same resized size); gradients accumulate to batch_size"}
    )
    max_epoch: int = field(default=30, metadata={"help": "epochs"})
    view_per_image: int = field(
        default=0,
        metadata={"help": "candidate crops sampled per image per step (0: every crop, the release's CPC training)"},
    )
    score_loss_over: str = field(
        default="batch",
        metadata={
            "help": "image: score losses per image, averaged; batch: once over all the batch's crops (the release)"
        },
    )
    display_freq: int = field(default=100, metadata={"help": "log losses every N steps"})
    visualize_freq: int = field(default=100, metadata={"help": "log image panels every N steps"})


cfg = Config()
