"""RoIAlign modules; the import path of the original GAIC code."""

from __future__ import annotations

from ..align_core import AlignModule, Backend
from ..ops import roi_align

__all__ = ["RoIAlign", "RoIAlignAvg", "RoIAlignMax"]


class RoIAlign(AlignModule):
    """``roi_align`` on an ``aligned_height x aligned_width`` grid; see :func:`roi_align.ops.roi_align`."""

    def __init__(self, aligned_height: int, aligned_width: int, spatial_scale: float, *, backend: Backend = "auto"):
        super().__init__(roi_align, None, aligned_height, aligned_width, spatial_scale, backend)


class RoIAlignAvg(AlignModule):
    """``roi_align`` on a grid one larger each way, then 2x2 stride-1 average pooling."""

    def __init__(self, aligned_height: int, aligned_width: int, spatial_scale: float, *, backend: Backend = "auto"):
        super().__init__(roi_align, "avg", aligned_height, aligned_width, spatial_scale, backend)


class RoIAlignMax(AlignModule):
    """``roi_align`` on a grid one larger each way, then 2x2 stride-1 max pooling."""

    def __init__(self, aligned_height: int, aligned_width: int, spatial_scale: float, *, backend: Backend = "auto"):
        super().__init__(roi_align, "max", aligned_height, aligned_width, spatial_scale, backend)
