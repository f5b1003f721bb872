"""RoDAlign as in GAIC: a bilinear grid over the whole feature map with the RoI cut out.

Only where RoDAlign samples lives here; the rest is ``roi_align.align_core``, shared with RoIAlign.
"""

from __future__ import annotations

import torch
from torch import Tensor

from roi_align.align_core import AlignOp, Backend

# The original steps over H - 1.001 rather than H - 1, keeping the last sample inside the map.
MAP_SPAN_MARGIN = 1.001


def rod_align_positions(
    rois: Tensor,
    feature_size: tuple[int, int],
    aligned_height: int,
    aligned_width: int,
    spatial_scale: float,
    dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor]:
    """Sample positions ``h`` (1, ah, 1), ``w`` (1, 1, aw) and ``keep`` (K, ah, aw): False inside the RoI.

    Each step is rounded to ``dtype`` like the original float32 kernel.
    """
    height, width = feature_size
    rois = rois.to(dtype)
    x1, y1, x2, y2 = ((rois[:, i] * spatial_scale).view(-1, 1, 1) for i in range(1, 5))
    step_h = torch.tensor(height - MAP_SPAN_MARGIN, dtype=dtype, device=rois.device) / (aligned_height - 1)
    step_w = torch.tensor(width - MAP_SPAN_MARGIN, dtype=dtype, device=rois.device) / (aligned_width - 1)
    h = (torch.arange(aligned_height, dtype=dtype, device=rois.device) * step_h).view(1, -1, 1)
    w = (torch.arange(aligned_width, dtype=dtype, device=rois.device) * step_w).view(1, 1, -1)
    # Comparisons with NaN are false: a NaN coordinate removes nothing.
    inside = (h >= y1) & (h <= y2) & (w >= x1) & (w <= x2)
    return h, w, ~inside


ROD_ALIGN = AlignOp("rod_align", rod_align_positions)
KERNELS = ROD_ALIGN.kernels


def rod_align(
    features: Tensor,
    rois: Tensor,
    aligned_height: int,
    aligned_width: int,
    spatial_scale: float,
    *,
    avg_pool: bool = False,
    backend: Backend = "auto",
) -> Tensor:
    """Bilinear ``aligned_height x aligned_width`` grid over the whole map, zero inside each RoI (GAIC's RoDAlign).

    Arguments (``avg_pool`` included: ``RoDAlignAvg``), return value and precision as
    :func:`roi_align.roi_align`.

    Cell ``(ph, pw)`` samples ``h = ph * (H - 1.001) / (aligned_height - 1)``,
    ``w = pw * (W - 1.001) / (aligned_width - 1)`` (the same grid for every RoI) and is 0
    when the sample lies inside the scaled RoI, ``y1s <= h <= y2s and x1s <= w <= x2s``
    (bounds inclusive, ``x1s = spatial_scale * x1`` etc.); otherwise it is the bilinear value
    there. Infinite coordinates act as unbounded sides; a NaN coordinate makes the RoI
    contain no sample, so nothing is zeroed. A degenerate RoI (x2 < x1) contains nothing.
    """
    return ROD_ALIGN(features, rois, aligned_height, aligned_width, spatial_scale, avg_pool, backend)
