"""Training figures: the predicted heat map and partition maps beside their targets, on the photo.

Each figure is drawn with matplotlib's Agg backend (no display needed) and returned as an
(H, W, 3) uint8 array, so the trainer can both log it to TensorBoard and save it as a PNG.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from untils.preprocessing import IMAGE_NET_MEAN, IMAGE_NET_STD

OVERLAY_ALPHA = 0.6
FLAT_MAP = 1e-6  # a map whose values span less than this shows nothing: drawn without an overlay
REGION_NAMES = ("top-left", "top", "top-right", "left", "person", "right", "bottom-left", "bottom", "bottom-right")


def photo_of(image: torch.Tensor) -> np.ndarray:
    """An ImageNet-normalised (3, H, W) input back to an (H, W, 3) float image in [0, 1], for display."""
    pixels = image.detach().float().cpu().numpy().transpose(1, 2, 0)
    return np.clip(pixels * np.array(IMAGE_NET_STD) + np.array(IMAGE_NET_MEAN), 0, 1)


def _render(figure) -> np.ndarray:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _resized(values: np.ndarray, height: int, width: int) -> np.ndarray:
    """A small map stretched to the photo's size (nearest cells, so the grid stays visible)."""
    rows = (np.arange(height) * values.shape[0] // height).clip(0, values.shape[0] - 1)
    columns = (np.arange(width) * values.shape[1] // width).clip(0, values.shape[1] - 1)
    return values[rows][:, columns]


def _three_panels(image: torch.Tensor, first_title: str):
    """A figure of three panels, the photo in the first: ``(figure, axes, photo)``."""
    from matplotlib.figure import Figure

    photo = photo_of(image)
    figure = Figure(figsize=(12, 4.2), dpi=80, layout="constrained")
    axes = figure.subplots(1, 3)
    axes[0].imshow(photo)
    axes[0].set_title(first_title)
    return figure, axes, photo


def heat_map_figure(image: torch.Tensor, target: torch.Tensor, predicted: torch.Tensor, title: str = "") -> np.ndarray:
    """Photo, target and predicted heat maps (values in [0, 1]) over it, one colour bar for both.

    A flat target (e.g. an image without a pseudo heat map) is said so instead of drawn."""
    figure, axes, photo = _three_panels(image, "input")
    height, width = photo.shape[:2]
    shown = None
    for axis, (name, heat_map) in zip(
        axes[1:], (("target heat map", target), ("predicted heat map", predicted)), strict=True
    ):
        values = heat_map.detach().float().cpu().numpy().reshape(target.shape[-2:])
        axis.imshow(photo)
        if values.max() - values.min() < FLAT_MAP:
            axis.set_title(f"{name}: flat ({values.max():.2f}), not drawn")
        else:
            shown = axis.imshow(_resized(values, height, width), cmap="jet", vmin=0, vmax=1, alpha=OVERLAY_ALPHA)
            axis.set_title(name)
    for axis in axes:
        axis.axis("off")
    if shown is not None:
        figure.colorbar(shown, ax=list(axes[1:]), shrink=0.8, label="content to preserve")
    if title:
        figure.suptitle(title)
    return _render(figure)


def partition_figure(
    image: torch.Tensor,
    human_box: Sequence[float] | None,
    target: torch.Tensor,
    predicted: torch.Tensor,
    title: str = "",
) -> np.ndarray:
    """Photo with the person's box, then the nine regions of the target partition mask and the
    partition feature's strongest region per cell (softmax over the nine channels), labelled."""
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Rectangle

    nine_colours = ListedColormap(colormaps["tab10"](np.arange(9)))  # its first nine colours
    figure, axes, photo = _three_panels(image, "input and person box")
    height, width = photo.shape[:2]
    if human_box is not None and human_box[0] >= 0:
        x1, y1, x2, y2 = human_box
        axes[0].add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="yellow", linewidth=2))
    regions = None
    for axis, (name, maps) in zip(
        axes[1:],
        (("target regions", target), ("predicted regions", torch.softmax(predicted.float(), dim=0))),
        strict=True,
    ):
        labels = maps.detach().float().cpu().argmax(dim=0).numpy()
        axis.imshow(photo)
        regions = axis.imshow(
            _resized(labels, height, width),
            cmap=nine_colours,
            vmin=-0.5,
            vmax=8.5,
            alpha=OVERLAY_ALPHA,
            interpolation="nearest",
        )
        axis.set_title(name)
    for axis in axes:
        axis.axis("off")
    bar = figure.colorbar(regions, ax=list(axes[1:]), shrink=0.8, ticks=range(9))
    bar.ax.set_yticklabels(REGION_NAMES)
    if title:
        figure.suptitle(title)
    return _render(figure)
