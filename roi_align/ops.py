"""RoIAlign as in GAIC: a bilinear grid spanning each RoI, corners included.

Only where RoIAlign samples lives here; the rest is ``roi_align.align_core``, shared with RoDAlign.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .align_core import AlignOp, Backend


def roi_align_positions(
    rois: Tensor,
    feature_size: tuple[int, int],
    aligned_height: int,
    aligned_width: int,
    spatial_scale: float,
    dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor]:
    """Sample positions ``h`` (K, ah, 1) and ``w`` (K, 1, aw) in ``dtype`` arithmetic, every sample kept.

    Each step is rounded to ``dtype`` like the original float32 kernel, so float32 results
    match it bit for bit up to the final interpolation.
    """
    rois = rois.to(dtype)
    x1, y1, x2, y2 = (rois[:, i] * spatial_scale for i in range(1, 5))
    zero = rois.new_zeros(())
    # fmax, as the original: a negative or NaN extent counts as 0 (the RoI collapses to its corner).
    roi_width = torch.fmax(x2 - x1 + 1, zero)
    roi_height = torch.fmax(y2 - y1 + 1, zero)
    rows = torch.arange(aligned_height, dtype=dtype, device=rois.device)
    cols = torch.arange(aligned_width, dtype=dtype, device=rois.device)
    h = rows * (roi_height / (aligned_height - 1)).unsqueeze(1) + y1.unsqueeze(1)
    w = cols * (roi_width / (aligned_width - 1)).unsqueeze(1) + x1.unsqueeze(1)
    keep = torch.ones((), dtype=torch.bool, device=rois.device)
    return h.unsqueeze(2), w.unsqueeze(1), keep


ROI_ALIGN = AlignOp("roi_align", roi_align_positions)
KERNELS = ROI_ALIGN.kernels


def roi_align(
    features: Tensor,
    rois: Tensor,
    aligned_height: int,
    aligned_width: int,
    spatial_scale: float,
    *,
    avg_pool: bool = False,
    backend: Backend = "auto",
) -> Tensor:
    """Bilinear ``aligned_height x aligned_width`` grid over each RoI (GAIC's RoIAlign).

    Args:
        features: ``(B, C, H, W)`` float16/bfloat16/float32/float64, any memory layout, H, W >= 2.
        rois: ``(K, 5)`` floating rows ``(batch_index, x1, y1, x2, y2)`` in input-image pixels;
            ``batch_index`` must be an integer value in ``[0, B)``. No gradient flows to rois.
        aligned_height, aligned_width: output grid size, >= 2.
        spatial_scale: feature pixels per input pixel (e.g. 1/16), finite and > 0.
        avg_pool: sample a grid one larger each way and average each 2x2 block (stride 1),
            i.e. ``RoIAlignAvg``; aligned sizes may then be 1. Fused in the compiled kernels.
        backend: "auto" (compiled kernels when built, else the PyTorch fallback), "compiled"
            (error without them) or "python" (force the fallback).

    Returns:
        ``(K, C, aligned_height, aligned_width)``, dtype of ``features``, contiguous.

    With ``x1s = spatial_scale * x1`` etc., ``roi_w = max(x2s - x1s + 1, 0)`` and
    ``roi_h = max(y2s - y1s + 1, 0)`` (a NaN extent counts as 0), cell ``(ph, pw)`` samples
    ``h = y1s + ph * roi_h / (aligned_height - 1)``, ``w = x1s + pw * roi_w / (aligned_width - 1)``.
    A sample outside ``[0, H) x [0, W)`` is 0; so is one whose position is NaN or infinite
    (a RoI with non-finite coordinates gives zeros where its samples are not finite).
    Otherwise the value is interpolated bilinearly from the top-left neighbour
    ``(min(floor(h), H - 2), min(floor(w), W - 2))``, extrapolating linearly in the last
    row/column as the original does. Positions are computed in float32 for float16, bfloat16
    and float32 features (as the original) and in float64 for float64 features; values are
    accumulated in the same precision.
    """
    return ROI_ALIGN(features, rois, aligned_height, aligned_width, spatial_scale, avg_pool, backend)
