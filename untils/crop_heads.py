"""One RoI/RoD head: the building blocks every crop scorer shares (the calling convention's
:class:`CropOutput`, crop boxes to RoIs, RoI + RoD features, GAIC's multi-scale features and scoring
head, padded crops), so the model modules build on these and never on each other.

It imports nothing of the top level, the op packages included: a scorer's RoI + RoD aligner
(``rod_align.CropAlignFeatures``) is given by the model that builds it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from untils.backbones import build_backbone
from untils.boxes import FEATURE_STRIDE

ALIGN_SIZE = 9

# Builds the aligned features of each crop from (align_size, spatial_scale, use_rod): an
# ``nn.Module`` taking (feature_map, rois) to (K, C * (2 if use_rod else 1), align_size, align_size).
CropAlignerFactory = Callable[[int, float, bool], nn.Module]


class CropOutput(NamedTuple):
    """What every crop model returns: ``score`` (B, N), padded crops ``-inf``; the human-centric
    model's ``heat_map`` (B, 1, 64, 64) and ``partition_feat`` (B, P, H/16, W/16), None elsewhere."""

    score: torch.Tensor
    heat_map: torch.Tensor | None = None
    partition_feat: torch.Tensor | None = None


def resize_to(feature: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``feature`` resized (bilinear, align_corners=True) to ``reference``'s spatial size."""
    if feature.shape[-2:] == reference.shape[-2:]:
        return feature
    return F.interpolate(feature, size=reference.shape[-2:], mode="bilinear", align_corners=True)


def boxes_with_batch_index(boxes: torch.Tensor) -> torch.Tensor:
    """(B, N, 4) boxes -> (B*N, 5) rows ``(batch_index, x1, y1, x2, y2)``; (K, 5) passes through."""
    if boxes.dim() == 2:
        if boxes.shape[-1] != 5:
            raise ValueError(f"boxes of shape {tuple(boxes.shape)}: expected (B, N, 4) or (K, 5)")
        return boxes
    if boxes.dim() != 3 or boxes.shape[-1] not in (4, 5):
        raise ValueError(f"boxes of shape {tuple(boxes.shape)}: expected (B, N, 4) or (K, 5)")
    if boxes.shape[-1] == 5:
        return boxes.reshape(-1, 5)
    batch, count, _ = boxes.shape
    index = torch.arange(batch, device=boxes.device, dtype=boxes.dtype).view(batch, 1, 1).expand(batch, count, 1)
    return torch.cat([index, boxes], dim=-1).reshape(-1, 5)


def check_crop_box(crop_box: torch.Tensor, batch: int) -> None:
    """Raise naming the shape unless ``crop_box`` is (batch, N, 4)."""
    if crop_box.dim() != 3 or crop_box.shape[0] != batch or crop_box.shape[-1] != 4:
        raise ValueError(f"crop_box of shape {tuple(crop_box.shape)}: expected ({batch}, N, 4)")


def mask_padded_scores(scores: torch.Tensor, crop_valid: torch.Tensor | None) -> torch.Tensor:
    """Scores (B, N) with the padded crops of a batch (``crop_valid`` False) at ``-inf``.

    Padded crops are scored like the others and discarded here: no data-dependent shapes, hence
    no host-device synchronisation and one graph under torch.compile.
    """
    return scores if crop_valid is None else scores.masked_fill(~crop_valid, float("-inf"))


def scatter_valid_scores(
    valid_scores: torch.Tensor, crop_valid: torch.Tensor | None, batch: int, count: int
) -> torch.Tensor:
    """Place the scores of valid crops in a (B, N) tensor; padded crops get ``-inf``."""
    if crop_valid is None:
        return valid_scores.reshape(batch, count)
    scores = valid_scores.new_full((batch * count,), float("-inf"))
    scores[crop_valid.reshape(-1)] = valid_scores.reshape(-1)
    return scores.reshape(batch, count)


def gaic_fc_layers(in_dim: int, align_size: int, dropout: bool) -> nn.Sequential:
    """GAIC's scoring head over aligned crop features (the release's ``fc_layers``): conv -> 768,
    ReLU; 1x1 -> 128, ReLU; [dropout]; 1x1 -> 1. Our baseline has no dropout."""
    layers: list[nn.Module] = [
        nn.Sequential(nn.Conv2d(in_dim, 768, kernel_size=align_size), nn.ReLU(inplace=True)),
        nn.Sequential(nn.Conv2d(768, 128, kernel_size=1), nn.ReLU(inplace=True)),
    ]
    if dropout:
        layers.append(nn.Dropout(p=0.5))
    return nn.Sequential(*layers, nn.Conv2d(128, 1, kernel_size=1))


def release_scales(f3: torch.Tensor, f4: torch.Tensor, f5: torch.Tensor) -> torch.Tensor:
    """The multi-scale recipe of GAIC's (and PIC's) release before ``DimRed``: f3 halved, f4, half of
    f5 doubled (bilinear, align_corners=True as ``nn.UpsamplingBilinear2d``), concatenated."""
    down = F.interpolate(f3, scale_factor=0.5, mode="bilinear", align_corners=True)
    up = F.interpolate(f5, scale_factor=2.0, mode="bilinear", align_corners=True)
    if not down.shape[-2:] == f4.shape[-2:] == up.shape[-2:]:
        raise ValueError(
            f"feature maps of sizes {tuple(down.shape[-2:])}, {tuple(f4.shape[-2:])} and "
            f"{tuple(up.shape[-2:])}: the release models of GAIC and PIC need image sides that are "
            "multiples of 32 (untils.preprocessing.gaic_preprocess makes them)"
        )
    return torch.cat([down, f4, 0.5 * up], dim=1)


class ScorerOptions(Protocol):
    """The options a :class:`GAICScorer` is built from (``config_GAICD.Config`` and ``config_PIC.Config`` have them)."""

    backbone: str
    reduced_dim: int
    use_rod_feature: bool
    backbone_weight_path: str | None


class GAICScorer(nn.Module):
    """GAIC's multi-scale shared-feature scorer (Zeng et al.) on our backbones: f3, f4 and f5/2
    brought to f4's size and concatenated -> ``DimRed`` -> RoI (+ RoD) align -> ``FC_layers``.

    The objective branch of our GAIC baseline and of the PIC embedding variant; its module names
    are their checkpoints' parameter names. Built from the options of ``cfg`` (:class:`ScorerOptions`);
    ``crop_aligner`` builds its ``crop_align`` (the models pass ``rod_align.CropAlignFeatures``).
    """

    def __init__(self, cfg: ScorerOptions, pretrained: bool, crop_aligner: CropAlignerFactory) -> None:
        super().__init__()
        self.backbone = build_backbone(cfg.backbone, pretrained, cfg.backbone_weight_path)
        self.DimRed = nn.Conv2d(sum(self.backbone.channels), cfg.reduced_dim, kernel_size=1)
        self.crop_align = crop_aligner(ALIGN_SIZE, 1.0 / FEATURE_STRIDE, cfg.use_rod_feature)
        self.FC_layers = gaic_fc_layers(cfg.reduced_dim * (2 if cfg.use_rod_feature else 1), ALIGN_SIZE, False)

    def reduced_features(self, im: torch.Tensor) -> torch.Tensor:
        """(B, reduced_dim, H/16, W/16)."""
        f3, f4, f5 = self.backbone(im)
        return self.DimRed(torch.cat([resize_to(f3, f4), f4, 0.5 * resize_to(f5, f4)], dim=1))

    def objective_scores(
        self, image: torch.Tensor, crop_box: torch.Tensor, crop_valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Scores (B, N) of crops ``crop_box`` (B, N, 4, input pixels); padded crops ``-inf``."""
        rois = boxes_with_batch_index(crop_box)
        scores = self.FC_layers(self.crop_align(self.reduced_features(image), rois)).reshape(crop_box.shape[:2])
        return mask_padded_scores(scores, crop_valid)
