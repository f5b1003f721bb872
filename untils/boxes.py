"""Box utilities: the one place that scales, flips, clips and rasterises crop boxes.

Boxes are ``[x1, y1, x2, y2]`` in pixels, in the last dimension. Functions work on
torch tensors on any device (batched where natural); the ones that say so also accept
numpy arrays and then return numpy arrays.

A box whose ``x1`` is negative is padding (the release pads with ``[-1, -1, -1, -1]``):
it rasterises to an all-zero mask and never counts as a person.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

# The release draws crop masks and resizes heat maps at 64x64, whatever the input size, and takes the
# RoI/RoD and partition features from f4, at 1/16 of the input.
HEAT_MAP_SIZE = 64
FEATURE_STRIDE = 16

BoxesLike = torch.Tensor | np.ndarray
# numpy in, numpy out; torch in, torch out
BoxesT = TypeVar("BoxesT", torch.Tensor, np.ndarray)


def _as_tensor(boxes: BoxesLike) -> torch.Tensor:
    """``boxes`` as a tensor; lists and tuples count as numpy."""
    if isinstance(boxes, torch.Tensor):
        return boxes
    return torch.from_numpy(np.asarray(boxes))


def _check_last_dim(boxes: torch.Tensor, name: str) -> None:
    if boxes.shape[-1:] != (4,):
        raise ValueError(f"{name} must have shape (..., 4) with [x1, y1, x2, y2] last, got {tuple(boxes.shape)}")


def _like_input(result: torch.Tensor, boxes: BoxesT) -> BoxesT:
    """``result`` as the kind of array ``boxes`` is."""
    if isinstance(boxes, torch.Tensor):
        return result
    return result.numpy()


def rescale_boxes(boxes: BoxesT, ratio_w: float, ratio_h: float) -> BoxesT:
    """Scale boxes to a resized image as the release: x1, y1 floored, x2, y2 ceiled.

    The products are taken in float64 (the release multiplies integer JSON boxes by a
    Python float), so the floor/ceil sees the exact product; the result is float32.
    Accepts numpy (returns numpy) or torch (returns torch on the same device).
    """
    tensor = _as_tensor(boxes)
    _check_last_dim(tensor, "boxes")
    scaled = tensor.to(torch.float64) * tensor.new_tensor([ratio_w, ratio_h, ratio_w, ratio_h], dtype=torch.float64)
    scaled = torch.cat([scaled[..., :2].floor(), scaled[..., 2:].ceil()], dim=-1)
    return _like_input(scaled.to(torch.float32), boxes)


def flip_boxes_horizontal(boxes: BoxesT, width: float) -> BoxesT:
    """Mirror boxes in an image ``width`` wide: ``x1' = width - x2``, ``x2' = width - x1``.

    Padding rows (x1 < 0) stay as they are. Numpy or torch, same kind out.
    """
    tensor = _as_tensor(boxes)
    _check_last_dim(tensor, "boxes")
    flipped = torch.stack([width - tensor[..., 2], tensor[..., 1], width - tensor[..., 0], tensor[..., 3]], dim=-1)
    flipped = torch.where((tensor[..., 0] < 0).unsqueeze(-1), tensor, flipped.to(tensor.dtype))
    return _like_input(flipped, boxes)


def clip_boxes(boxes: BoxesT, width: float, height: float) -> BoxesT:
    """Clamp x to [0, width] and y to [0, height]. Numpy or torch, same kind out.

    Padding is not special here: clip real boxes before padding them.
    """
    tensor = _as_tensor(boxes)
    _check_last_dim(tensor, "boxes")
    upper = tensor.new_tensor([width, height, width, height])
    clipped = torch.minimum(tensor.clamp(min=0), upper)
    return _like_input(clipped, boxes)


def box_area(boxes: BoxesT) -> BoxesT:
    """Areas (...,) of boxes (..., 4); boxes with x2 <= x1 or y2 <= y1 have area 0.

    Integer boxes are measured in float64; float boxes keep their dtype.
    """
    tensor = _as_tensor(boxes)
    _check_last_dim(tensor, "boxes")
    return _like_input(_tensor_area(tensor), boxes)


def _tensor_area(boxes: torch.Tensor) -> torch.Tensor:
    if not boxes.is_floating_point():
        boxes = boxes.to(torch.float64)
    widths = (boxes[..., 2] - boxes[..., 0]).clamp(min=0)
    heights = (boxes[..., 3] - boxes[..., 1]).clamp(min=0)
    return widths * heights


def box_iou(boxes_a: BoxesT, boxes_b: BoxesLike) -> BoxesT:
    """Pairwise IoU (M, N) of boxes (M, 4) and (N, 4); 0 where the union is empty.

    Computed in the wider float dtype of the two inputs (float64 stays float64).
    """
    a, b = _as_tensor(boxes_a), _as_tensor(boxes_b)
    for tensor, name in ((a, "boxes_a"), (b, "boxes_b")):
        _check_last_dim(tensor, name)
        if tensor.dim() != 2:
            raise ValueError(f"{name} must have shape (K, 4), got {tuple(tensor.shape)}")
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    a, b = a.to(dtype), b.to(device=a.device, dtype=dtype)
    inter_w = (torch.minimum(a[:, None, 2], b[None, :, 2]) - torch.maximum(a[:, None, 0], b[None, :, 0])).clamp(min=0)
    inter_h = (torch.minimum(a[:, None, 3], b[None, :, 3]) - torch.maximum(a[:, None, 1], b[None, :, 1])).clamp(min=0)
    inter = inter_w * inter_h
    union = _tensor_area(a)[:, None] + _tensor_area(b)[None, :] - inter
    iou = torch.where(union > 0, inter / union.clamp(min=torch.finfo(dtype).tiny), torch.zeros_like(inter))
    return _like_input(iou, boxes_a)


def _scaled_grid_coords(boxes: torch.Tensor, width: float, height: float, target_w: int, target_h: int) -> torch.Tensor:
    """Boxes scaled to a ``target_w`` x ``target_h`` grid and truncated toward zero.

    float32 arithmetic on purpose: the release multiplies float32 boxes by the ratio,
    and truncation makes the result sensitive to that rounding.
    """
    boxes = boxes.to(torch.float32)
    ratios = torch.tensor([target_w / width, target_h / height] * 2, dtype=torch.float32, device=boxes.device)
    return (boxes * ratios).trunc().to(torch.int64)


def _spans(starts: torch.Tensor, stops: torch.Tensor, length: int) -> torch.Tensor:
    """float32 0/1 (..., length): positions p with start <= p < stop (numpy-slice semantics).

    Masks are combined by multiplying floats: on CPU that is an order of magnitude faster
    than bool ``&`` followed by a cast.
    """
    positions = torch.arange(length, device=starts.device)
    inside = (positions >= starts.unsqueeze(-1)) & (positions < stops.unsqueeze(-1))
    return inside.to(torch.float32)


def crop_mask_factors(
    boxes: torch.Tensor, width: float, height: float, size: tuple[int, int] = (64, 64)
) -> tuple[torch.Tensor, torch.Tensor]:
    """The crop masks of boxes (..., 4) in a ``width`` x ``height`` image, as their factors.

    A crop mask is a filled box, so ``mask = rows[..., :, None] * columns[..., None, :]`` with
    ``rows`` (..., size_h) and ``columns`` (..., size_w) 0/1 float32 indicators. The release's
    ``generate_target_size_crop_mask``: each box is scaled to the ``size`` grid, truncated to
    integers, and ``[y1:y2, x1:x2]`` is filled. Padding boxes (x1 < 0) give all-zero masks.
    """
    _check_last_dim(boxes, "boxes")
    size_h, size_w = int(size[0]), int(size[1])
    grid = _scaled_grid_coords(boxes, width, height, size_w, size_h)
    real = (boxes[..., 0] >= 0).to(torch.float32).unsqueeze(-1)
    columns = _spans(grid[..., 0], grid[..., 2], size_w) * real
    rows = _spans(grid[..., 1], grid[..., 3], size_h)
    return rows, columns


def crop_masks(boxes: torch.Tensor, width: float, height: float, size: tuple[int, int] = (64, 64)) -> torch.Tensor:
    """Binary masks (..., N, size_h, size_w) of crops (N, 4) or (B, N, 4): :func:`crop_mask_factors` multiplied out."""
    if boxes.dim() not in (2, 3):
        raise ValueError(f"crop boxes must have shape (N, 4) or (B, N, 4), got {tuple(boxes.shape)}")
    rows, columns = crop_mask_factors(boxes, width, height, size)
    return rows.unsqueeze(-1) * columns.unsqueeze(-2)


def _human_boxes_as_batch(human_boxes: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(B, 4) boxes and whether the input was batched: (4,)/(1, 4) is one image, (B, 1, 4) a batch."""
    if not isinstance(human_boxes, torch.Tensor):
        raise TypeError(f"human boxes must be a torch tensor, got {type(human_boxes).__name__}")
    if human_boxes.dim() == 3 and human_boxes.shape[1:] == (1, 4):
        return human_boxes.reshape(-1, 4), True
    if human_boxes.numel() == 4 and human_boxes.dim() <= 2:
        return human_boxes.reshape(1, 4), False
    raise ValueError(f"human boxes must have shape (4,), (1, 4) or (B, 1, 4), got {tuple(human_boxes.shape)}")


NO_PERSON_BOX = (-1.0, -1.0, -1.0, -1.0)  # the person box of an image without a person, as the models take it


def has_person(human_boxes: torch.Tensor) -> torch.Tensor:
    """Whether each image has a person: x1 >= 0 and x2 > x1 and y2 > y1.

    (4,)/(1, 4) gives a 0-dim bool tensor, (B, 1, 4) a (B,) bool tensor.
    """
    boxes, batched = _human_boxes_as_batch(human_boxes)
    present = (boxes[:, 0] >= 0) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return present if batched else present[0]


def partition_masks(
    human_boxes: torch.Tensor, width: int, height: int, downsample: int = FEATURE_STRIDE
) -> torch.Tensor:
    """The nine partition masks (9, H', W') around the person, H' = int(height / downsample).

    The release's ``generate_partition_mask``: the box is scaled to the grid and truncated toward
    zero, and the grid lines ``[0, x1, x2, W'] x [0, y1, y2, H']`` cut the map into 3 x 3 cells
    (channel = row * 3 + column). As in the release: a box that truncates to zero width or height
    leaves the person's cell (channel 4) empty (the release meant to widen it by one cell, but did
    so after drawing the lines), and the model then treats the image as having no person; the
    no-person box of -1s truncates to the origin, so channel 8 covers the whole map; a box whose
    truncated x1 is negative gives all zeros.
    ``human_boxes`` (4,)/(1, 4) gives (9, H', W'); (B, 1, 4) gives (B, 9, H', W').
    """
    boxes, batched = _human_boxes_as_batch(human_boxes)
    target_w, target_h = int(width / downsample), int(height / downsample)
    grid = _scaled_grid_coords(boxes, width, height, target_w, target_h)
    x1, y1, x2, y2 = grid.unbind(-1)
    zeros = torch.zeros_like(x1)
    vertical_lines = torch.stack([zeros, x1, x2, torch.full_like(x1, target_w)], dim=-1)
    horizontal_lines = torch.stack([zeros, y1, y2, torch.full_like(y1, target_h)], dim=-1)
    columns = _spans(vertical_lines[:, :3], vertical_lines[:, 1:], target_w)
    rows = _spans(horizontal_lines[:, :3], horizontal_lines[:, 1:], target_h)
    rows = rows * (x1 >= 0).to(torch.float32)[:, None, None]
    masks = (rows[:, :, None, :, None] * columns[:, None, :, None, :]).reshape(-1, 9, target_h, target_w)
    return masks if batched else masks[0]


def resized_size(width: int, height: int, image_size: tuple[int, int], keep_aspect_ratio: bool) -> tuple[int, int]:
    """The network's input size ``(w, h)`` for a ``width`` x ``height`` image.

    Keeping the aspect ratio, the shorter side is scaled to ``image_size[0]`` and each
    side rounded to a multiple of 32 (Python's ``round``, half to even, as the release);
    otherwise the fixed ``(image_size[0], image_size[1])``.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if not keep_aspect_ratio:
        return int(image_size[0]), int(image_size[1])
    scale = float(image_size[0]) / min(width, height)
    return int(round(width * scale / 32.0) * 32), int(round(height * scale / 32.0) * 32)


def box_from_text(text: str) -> tuple[float, float, float, float] | None:
    """``"x1,y1,x2,y2"`` (spaces allowed) as four floats; None unless it is exactly four numbers."""
    try:
        values = [float(part) for part in text.replace(" ", "").split(",")]
    except ValueError:
        return None
    if len(values) != 4:
        return None
    return values[0], values[1], values[2], values[3]
