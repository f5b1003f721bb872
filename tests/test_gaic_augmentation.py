"""GAIC's photometric distortion: each step on hand-computed pixels with its draws forced, the colours
against a float64 colorsys reference, the RGB result against the release's BGR path, and the draws."""

from __future__ import annotations

import colorsys

import cv2
import numpy as np
import pytest
import torch

from untils.gaic_augmentation import (
    PhotometricDraws,
    apply_photometric,
    draw_photometric,
    photometric_distort,
    shift_hue,
)

# Worked by hand: (200, 100, 50) is H 20 degrees, S 0.75, V 200.
PIXEL = (200.0, 100.0, 50.0)


def _image(*pixels) -> np.ndarray:
    return np.array([pixels], dtype=np.float32)


def _only(**draws) -> PhotometricDraws:
    fields = dict(
        brightness_delta=None, contrast_first=False, contrast_factor=None, saturation_factor=None, hue_shift=None
    )
    fields.update(draws)
    return PhotometricDraws(**fields)


def _colorsys_reference(image: np.ndarray, draws: PhotometricDraws) -> np.ndarray:
    """The steps in float64, pixel by pixel, with Python's colorsys for HSV (valid where the largest
    channel is positive); scaling by the contrast factor commutes with HSV, so order is immaterial."""
    out = image.astype(np.float64)
    if draws.brightness_delta is not None:
        out = out + draws.brightness_delta
    if draws.contrast_factor is not None:
        out = out * draws.contrast_factor
    for index in np.ndindex(out.shape[:2]):
        h, s, v = colorsys.rgb_to_hsv(*out[index])
        degrees = h * 360.0 + (draws.hue_shift or 0.0)
        degrees = degrees - 360.0 if degrees > 360.0 else degrees + 360.0 if degrees < 0.0 else degrees
        s *= 1.0 if draws.saturation_factor is None else draws.saturation_factor
        out[index] = colorsys.hsv_to_rgb(degrees / 360.0 % 1.0, s, v)
    return out


def test_brightness_adds_the_offset_without_clipping():
    image = _image(PIXEL, (250.0, 240.0, 10.0), (10.0, 40.0, 5.0))
    np.testing.assert_allclose(
        apply_photometric(image, _only(brightness_delta=20.0)),
        _image((220, 120, 70), (270, 260, 30), (30, 60, 25)),
        atol=1e-3,
    )
    np.testing.assert_allclose(
        apply_photometric(image, _only(brightness_delta=-30.0)),
        _image((170, 70, 20), (220, 210, -20), (-20, 10, -25)),
        atol=1e-3,
    )


@pytest.mark.parametrize("contrast_first", [True, False])
def test_contrast_multiplies_every_value_without_clipping(contrast_first):
    image = _image(PIXEL, (240.0, 220.0, 100.0))
    got = apply_photometric(image, _only(contrast_first=contrast_first, contrast_factor=1.25))
    np.testing.assert_allclose(got, _image((250, 125, 62.5), (300, 275, 125)), atol=1e-3)


def test_saturation_scales_s_unclipped():
    image = _image(PIXEL)
    # S 0.375: min = V (1 - S) = 125, G = V (1 - S (1 - 20/60)) = 150
    np.testing.assert_allclose(
        apply_photometric(image, _only(saturation_factor=0.5)), _image((200, 150, 125)), atol=1e-3
    )
    # S 1.125 (above 1, kept): min = -25, G = 50
    np.testing.assert_allclose(
        apply_photometric(image, _only(saturation_factor=1.5)), _image((200, 50, -25)), atol=1e-3
    )


def test_hue_shift_rotates_the_colour():
    # H 30: G = V (1 - S (1 - 30/60)) = 125
    np.testing.assert_allclose(
        apply_photometric(_image(PIXEL), _only(hue_shift=10.0)), _image((200, 125, 50)), atol=1e-3
    )
    # (200, 50, 75) is H 350; + 15 wraps to H 5: G = 200 (1 - 0.75 (1 - 5/60)) = 62.5
    np.testing.assert_allclose(
        apply_photometric(_image((200.0, 50.0, 75.0)), _only(hue_shift=15.0)), _image((200, 62.5, 50)), atol=1e-3
    )


def test_hue_wraps_once_past_360_and_below_0_as_the_release():
    hsv = _image((350.0, 0.5, 100.0), (5.0, 0.5, 100.0), (180.0, 0.5, 100.0), (345.0, 0.5, 100.0), (3.0, 0.5, 100.0))
    shift_hue(hsv, 15.0)
    np.testing.assert_allclose(hsv[0, :, 0], [5.0, 20.0, 195.0, 360.0, 18.0])  # exactly 360 stays
    shift_hue(hsv, -18.0)
    np.testing.assert_allclose(hsv[0, :, 0], [347.0, 2.0, 177.0, 342.0, 0.0])  # exactly 0 stays
    np.testing.assert_array_equal(hsv[0, :, 1:], np.tile([0.5, 100.0], (5, 1)))


def test_no_step_drawn_keeps_the_channels_in_place():
    # only the HSV round trip runs; a channel permutation would move these values far
    image = _image(PIXEL, (10.0, 240.0, 130.0))
    np.testing.assert_allclose(apply_photometric(image, _only()), image, atol=1e-3)


@pytest.mark.parametrize("seed", range(8))
def test_all_steps_together_match_colorsys_in_float64(seed):
    rng = np.random.default_rng(seed)
    image = rng.uniform(40, 235, (4, 5, 3)).astype(np.float32)
    draws = PhotometricDraws(
        brightness_delta=rng.uniform(-32, 32),
        contrast_first=bool(seed % 2),
        contrast_factor=rng.uniform(0.5, 1.5),
        saturation_factor=rng.uniform(0.5, 1.5),
        hue_shift=rng.uniform(-18, 18),
    )
    got = apply_photometric(image, draws)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, _colorsys_reference(image, draws), rtol=1e-4, atol=2e-3)


def _release_path_on_bgr(rgb: np.ndarray, draws: PhotometricDraws) -> np.ndarray:
    """The release's sequence on the same picture held as BGR, with cv2's BGR conversions, back to RGB."""
    image = rgb[:, :, ::-1].copy()
    if draws.brightness_delta is not None:
        image += draws.brightness_delta

    def contrast(values):
        if draws.contrast_factor is not None:
            values *= draws.contrast_factor
        return values

    def colours(values):
        hsv = cv2.cvtColor(values, cv2.COLOR_BGR2HSV)
        if draws.saturation_factor is not None:
            hsv[:, :, 1] *= draws.saturation_factor
        if draws.hue_shift is not None:
            hsv[:, :, 0] += draws.hue_shift
            hsv[:, :, 0][hsv[:, :, 0] > 360.0] -= 360.0
            hsv[:, :, 0][hsv[:, :, 0] < 0.0] += 360.0
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)

    out = colours(contrast(image)) if draws.contrast_first else contrast(colours(image))
    return out[:, :, ::-1]


@pytest.mark.parametrize("seed", range(16))
def test_rgb_result_is_the_release_bgr_result_bit_for_bit(seed):
    # includes values that leave 0-255 and pixels with ties and all-negative channels
    image = np.random.default_rng(seed).uniform(-40, 300, (6, 7, 3)).astype(np.float32)
    image[0, :3] = [(5, 5, 5), (-5, -5, -5), (10, 10, 3)]
    draws = draw_photometric(torch.Generator().manual_seed(seed))
    np.testing.assert_array_equal(apply_photometric(image, draws), _release_path_on_bgr(image, draws))


def _replay_documented_draws(seed: int) -> PhotometricDraws:
    """The draws as the module docstring lists them, from a fresh generator with the same seed."""
    generator = torch.Generator().manual_seed(seed)

    def coin():
        return torch.randint(2, (1,), generator=generator).item() == 1

    def value_if_coin(low, high):
        return low + (high - low) * torch.rand(1, generator=generator, dtype=torch.float64).item() if coin() else None

    brightness = value_if_coin(-32.0, 32.0)
    first = coin()
    contrast = value_if_coin(0.5, 1.5) if first else None
    saturation, hue = value_if_coin(0.5, 1.5), value_if_coin(-18.0, 18.0)
    contrast = contrast if first else value_if_coin(0.5, 1.5)
    return PhotometricDraws(brightness, first, contrast, saturation, hue)


@pytest.mark.parametrize("seed", range(10))
def test_draws_follow_the_documented_order(seed):
    assert draw_photometric(torch.Generator().manual_seed(seed)) == _replay_documented_draws(seed)


def test_draws_have_the_release_probabilities_and_ranges():
    generator = torch.Generator().manual_seed(0)
    runs = [draw_photometric(generator) for _ in range(4000)]
    assert 0.46 < np.mean([run.contrast_first for run in runs]) < 0.54
    for field, (low, high) in {
        "brightness_delta": (-32, 32),
        "contrast_factor": (0.5, 1.5),
        "saturation_factor": (0.5, 1.5),
        "hue_shift": (-18, 18),
    }.items():
        values = [getattr(run, field) for run in runs if getattr(run, field) is not None]
        assert 0.46 < len(values) / len(runs) < 0.54, field
        assert low <= min(values) < low + 0.02 * (high - low) and high - 0.02 * (high - low) < max(values) < high
        assert abs(np.mean(values) - (low + high) / 2) < 0.03 * (high - low), field


def test_the_seed_decides_everything_and_nothing_is_clipped():
    image = np.full((3, 3, 3), 250.0, np.float32)
    image[0, 0] = (20.0, 10.0, 5.0)
    before = image.copy()
    runs = [photometric_distort(image, torch.Generator().manual_seed(seed)) for seed in range(40)]
    np.testing.assert_array_equal(runs[7], photometric_distort(image, torch.Generator().manual_seed(7)))
    assert sum(not np.allclose(run, image, atol=1e-3) for run in runs) > 20
    assert max(run.max() for run in runs) > 255 and min(run.min() for run in runs) < 0
    np.testing.assert_array_equal(image, before)  # the input is left as it was


@pytest.mark.parametrize(
    "image",
    [np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.float32), np.zeros((4, 4, 4), np.float32), [[0.0, 0.0, 0.0]]],
)
def test_refuses_what_is_not_a_float32_rgb_image(image):
    with pytest.raises(ValueError, match="float32 RGB image"):
        photometric_distort(image, torch.Generator())
