"""RoDAlign modules; the import path of the original GAIC code."""

from __future__ import annotations

from roi_align.align_core import AlignModule, Backend

from ..ops import rod_align

__all__ = ["RoDAlign", "RoDAlignAvg", "RoDAlignMax"]


class RoDAlign(AlignModule):
    """``rod_align`` on an ``aligned_height x aligned_width`` grid; see :func:`rod_align.ops.rod_align`."""

    def __init__(self, aligned_height: int, aligned_width: int, spatial_scale: float, *, backend: Backend = "auto"):
        super().__init__(rod_align, None, aligned_height, aligned_width, spatial_scale, backend)


class RoDAlignAvg(AlignModule):
    """``rod_align`` on a grid one larger each way, then 2x2 stride-1 average pooling."""

    def __init__(self, aligned_height: int, aligned_width: int, spatial_scale: float, *, backend: Backend = "auto"):
        super().__init__(rod_align, "avg", aligned_height, aligned_width, spatial_scale, backend)


class RoDAlignMax(AlignModule):
    """``rod_align`` on a grid one larger each way, then 2x2 stride-1 max pooling."""

    def __init__(self, aligned_height: int, aligned_width: int, spatial_scale: float, *, backend: Backend = "auto"):
        super().__init__(rod_align, "max", aligned_height, aligned_width, spatial_scale, backend)
