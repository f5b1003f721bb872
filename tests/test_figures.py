"""Training figures: drawn on the photo, and a flat target map is not overlaid."""

from __future__ import annotations

import numpy as np
import torch

from untils.figures import heat_map_figure, partition_figure, photo_of
from untils.preprocessing import IMAGE_NET_MEAN, IMAGE_NET_STD


def _normalised(photo: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(((photo - np.array(IMAGE_NET_MEAN)) / np.array(IMAGE_NET_STD)).transpose(2, 0, 1)).float()


def test_photo_of_undoes_the_normalisation():
    photo = np.random.default_rng(0).uniform(0, 1, (12, 16, 3))
    np.testing.assert_allclose(photo_of(_normalised(photo)), photo, atol=1e-6)


def test_heat_map_figure_overlays_only_a_map_with_contrast():
    photo = np.full((64, 96, 3), 0.5)
    image = _normalised(photo)
    ramp = torch.linspace(0, 1, 64).repeat(64, 1)
    with_target = heat_map_figure(image, ramp, ramp)
    flat_target = heat_map_figure(image, torch.zeros(64, 64), ramp)
    assert with_target.dtype == np.uint8 and with_target.ndim == 3 and with_target.shape[2] == 3
    assert with_target.shape == flat_target.shape
    height, width = with_target.shape[:2]
    # inside the middle panel: the flat target shows the grey photo alone, the other a coloured overlay
    panel = (slice(height // 3, 2 * height // 3), slice(int(0.36 * width), int(0.55 * width)))

    def saturation(pixels: np.ndarray) -> float:
        return float((pixels.max(axis=2).astype(int) - pixels.min(axis=2)).mean())

    assert saturation(flat_target[panel]) < 5 < saturation(with_target[panel])


def test_partition_figure_is_an_rgb_image():
    image = _normalised(np.full((64, 96, 3), 0.5))
    target = torch.zeros(9, 4, 6)
    target[4] = 1
    pixels = partition_figure(image, [20.0, 10.0, 60.0, 50.0], target, torch.randn(9, 4, 6))
    assert pixels.dtype == np.uint8 and pixels.shape[2] == 3 and pixels.std() > 0
