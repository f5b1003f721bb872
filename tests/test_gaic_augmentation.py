"""GAIC's photometric distortion against a hand-written replay of its steps (colorsys for the colours)."""
from __future__ import annotations

import colorsys

import numpy as np
import pytest
import torch

from untils.gaic_augmentation import adjust_saturation, photometric_distort, shift_hue


def _replay(image: np.ndarray, seed: int) -> np.ndarray:
    """The distortion worked out pixel by pixel in float64 from the same draws, in the documented order."""
    generator = torch.Generator().manual_seed(seed)

    def coin() -> bool:
        return bool(torch.randint(2, (1,), generator=generator).item())

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand(1, generator=generator, dtype=torch.float64).item())

    pixels = image.astype(np.float64).copy()
    if coin():
        pixels += uniform(-32, 32)

    def contrast(values):
        return values * uniform(0.5, 1.5) if coin() else values

    def colours(values):
        saturation = uniform(0.5, 1.5) if coin() else 1.0
        hue = uniform(-18, 18) if coin() else 0.0
        out = np.empty_like(values)
        for index in np.ndindex(values.shape[:2]):
            r, g, b = values[index]
            top = max(r, g, b)
            h, s, v = colorsys.rgb_to_hsv(r / top, g / top, b / top) if top > 0 else (0.0, 0.0, 0.0)
            degrees = h * 360 + hue
            degrees = degrees - 360 if degrees > 360 else degrees + 360 if degrees < 0 else degrees
            out[index] = np.array(colorsys.hsv_to_rgb(degrees / 360 % 1.0, s * saturation, 1.0)) * top
        return out
    return colours(contrast(pixels)) if coin() else contrast(colours(pixels))


@pytest.mark.parametrize("seed", range(12))
def test_distortion_equals_the_replay_of_its_steps(seed):
    image = np.random.default_rng(seed).uniform(20, 235, (4, 5, 3)).astype(np.float32)
    # saturation stays <= 1 for this replay's colorsys to apply: keep colours mild
    image = 0.5 * image + 0.5 * image.mean(axis=2, keepdims=True)
    got = photometric_distort(image, torch.Generator().manual_seed(seed))
    np.testing.assert_allclose(got, _replay(image, seed), rtol=2e-3, atol=0.05)


def test_the_draws_decide_everything_and_nothing_is_clipped():
    image = np.full((3, 3, 3), 250.0, np.float32)
    runs = [photometric_distort(image, torch.Generator().manual_seed(seed)) for seed in range(40)]
    np.testing.assert_array_equal(runs[0], photometric_distort(image, torch.Generator().manual_seed(0)))
    assert any(not np.array_equal(run, image) for run in runs)
    assert max(run.max() for run in runs) > 255  # brightness or contrast pushed past 255, kept
    assert np.array_equal(image, np.full((3, 3, 3), 250.0, np.float32))  # the input is left as it was


def test_hue_wraps_once_at_360_as_the_release():
    hsv = np.array([[[350.0, 0.5, 100.0], [5.0, 0.5, 100.0], [180.0, 0.5, 100.0]]], np.float32)
    shift_hue(hsv, 15.0)
    np.testing.assert_allclose(hsv[0, :, 0], [5.0, 20.0, 195.0])
    shift_hue(hsv, -18.0)
    np.testing.assert_allclose(hsv[0, :, 0], [347.0, 2.0, 177.0])
    np.testing.assert_allclose(adjust_saturation(hsv, 2.0)[0, :, 1], [1.0, 1.0, 1.0])


def test_refuses_what_is_not_a_float_image():
    with pytest.raises(ValueError, match="float32"):
        photometric_distort(np.zeros((4, 4, 3), np.uint8), torch.Generator())
