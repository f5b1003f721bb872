"""GAIC's RoIAlign as a PyTorch operator (compiled CPU/CUDA kernels, pure-PyTorch fallback)."""

from .modules.roi_align import RoIAlign, RoIAlignAvg, RoIAlignMax
from .ops import KERNELS, roi_align

__all__ = ["KERNELS", "RoIAlign", "RoIAlignAvg", "RoIAlignMax", "roi_align"]
