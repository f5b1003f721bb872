"""GAIC's RoDAlign as a PyTorch operator (compiled CPU/CUDA kernels, pure-PyTorch fallback).

Shares its machinery with ``roi_align`` (``roi_align.align_core``); :class:`CropAlignFeatures`
(``crop_align``) puts the two ops together as the crop scorers' aligned features.
"""

from .crop_align import CropAlignFeatures
from .modules.rod_align import RoDAlign, RoDAlignAvg, RoDAlignMax
from .ops import KERNELS, rod_align

__all__ = ["KERNELS", "CropAlignFeatures", "RoDAlign", "RoDAlignAvg", "RoDAlignMax", "rod_align"]
