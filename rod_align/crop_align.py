"""The RoI + RoD features of each crop, the aligned input of every crop scorer's head.

Built on the two ops' public modules only (``roi_align``'s and this package's).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from roi_align import RoIAlignAvg

from .modules.rod_align import RoDAlignAvg


class CropAlignFeatures(nn.Module):
    """RoIAlign (inside the crop) and RoDAlign (what the crop discards) features of each crop.

    Output ``(K, C * (2 if use_rod else 1), align_size, align_size)``; shared by every crop scorer.
    """

    def __init__(self, align_size: int, spatial_scale: float, use_rod: bool = True) -> None:
        super().__init__()
        self.RoIAlign = RoIAlignAvg(align_size, align_size, spatial_scale)
        self.RoDAlign = RoDAlignAvg(align_size, align_size, spatial_scale) if use_rod else None

    def forward(self, feature_map: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        roi_feat = self.RoIAlign(feature_map, rois)
        if self.RoDAlign is None:
            return roi_feat
        return torch.cat([roi_feat, self.RoDAlign(feature_map, rois)], dim=1)
