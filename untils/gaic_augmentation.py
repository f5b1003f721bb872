"""GAIC's training augmentation: the photometric distortion of its release (``PhotometricDistort`` in
``augmentations.py``), for the GAIC-official recipe.

It works on a float32 RGB image at its original size, before flipping and resizing, with pixel
values 0-255, and clips nothing (values may leave 0-255, and the HSV saturation may exceed 1):

1. with probability 1/2, add a brightness offset drawn from U(-32, 32) to every value;
2. then, with probability 1/2 each, one of two orders:
   contrast, to HSV, saturation, hue, back to RGB;  or  to HSV, saturation, hue, back to RGB, contrast;
   where contrast multiplies every value by U(0.5, 1.5) with probability 1/2, saturation multiplies
   the S channel by U(0.5, 1.5) with probability 1/2, and hue adds U(-18, 18) degrees to the H
   channel with probability 1/2, then subtracts 360 from values above 360 and adds 360 to values
   below 0, once each, as the release does. The HSV conversions are cv2's float ones (H in degrees,
   S = (max - min) / |max|, V = max), which run even when neither saturation nor hue is drawn; their
   round trip gives the colour back only where the largest channel is positive (a pixel whose
   channels a negative brightness offset made all negative comes back changed, in the release too).

The random draws, all from the ``torch.Generator`` passed in, in this order (``draw_photometric``):
a coin is ``torch.randint(2, (1,))`` (1 = the step runs); a value from U(low, high) is
``low + (high - low) * torch.rand(1, dtype=torch.float64)``, drawn right after its coin and only when
the coin is 1. First the brightness coin (and offset), then the order coin (1 = contrast first), then
the contrast, saturation and hue coins (each with its value) in the order in which the steps run.

Where this departs from the release, and why:

* The release works on cv2's BGR images, this project on RGB: the HSV conversions here are
  ``cv2.COLOR_RGB2HSV`` / ``COLOR_HSV2RGB``, which give the same H, S and V from the same picture and
  the same colours back, so the result is the release's, bit for bit, with its channels in RGB order
  (a test checks this against the BGR path).
* The release also builds a random channel permutation (``RandomLightingNoise``) but its
  ``PhotometricDistort`` never applies it, so neither does this module.
* The release's ``RandomMirror`` turns every box into one with x2 < x1 (it maps x1 to width - x1 and
  x2 to width - x2 without swapping them): the datasets here flip images and boxes properly with their
  own flip, so this module does not mirror.
* The release's ``ConvertFromInts`` (uint8 to float32) is the caller's ``astype(np.float32)``.
* The release draws from numpy's global generator; here every draw comes from the generator passed
  in (the training engine seeds one per image), so a run is reproducible whatever the worker layout.
  The distributions are the same (numpy's ``randint(2)`` and ``uniform`` are a fair coin and
  U[low, high) too); the individual draws of a given seed are not the release's.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

BRIGHTNESS_DELTA = 32.0
CONTRAST_RANGE = (0.5, 1.5)
SATURATION_RANGE = (0.5, 1.5)
HUE_DELTA = 18.0


@dataclass(frozen=True)
class PhotometricDraws:
    """One image's random choices; ``None`` means that step does not run."""

    brightness_delta: float | None
    contrast_first: bool
    contrast_factor: float | None
    saturation_factor: float | None
    hue_shift: float | None


def _coin(generator: torch.Generator) -> bool:
    return bool(torch.randint(2, (1,), generator=generator).item())


def _uniform_if_coin(generator: torch.Generator, low: float, high: float) -> float | None:
    if not _coin(generator):
        return None
    return low + (high - low) * float(torch.rand(1, generator=generator, dtype=torch.float64).item())


def draw_photometric(generator: torch.Generator) -> PhotometricDraws:
    """The draws of one distortion, in the order the module docstring lists."""
    brightness_delta = _uniform_if_coin(generator, -BRIGHTNESS_DELTA, BRIGHTNESS_DELTA)
    contrast_first = _coin(generator)
    contrast_factor = _uniform_if_coin(generator, *CONTRAST_RANGE) if contrast_first else None
    saturation_factor = _uniform_if_coin(generator, *SATURATION_RANGE)
    hue_shift = _uniform_if_coin(generator, -HUE_DELTA, HUE_DELTA)
    if not contrast_first:
        contrast_factor = _uniform_if_coin(generator, *CONTRAST_RANGE)
    return PhotometricDraws(brightness_delta, contrast_first, contrast_factor, saturation_factor, hue_shift)


def shift_hue(hsv: np.ndarray, degrees: float | np.floating) -> np.ndarray:
    """``degrees`` added to the H channel of a float HSV image, then values above 360 lowered by 360 and
    values below 0 raised by 360, once each, as the release does (in place; returned)."""
    hue = hsv[:, :, 0]
    hue += degrees
    hue[hue > 360.0] -= 360.0
    hue[hue < 0.0] += 360.0
    return hsv


def _colour_steps(image: np.ndarray, draws: PhotometricDraws) -> np.ndarray:
    hsv: np.ndarray = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)  # float32, as the image
    if draws.saturation_factor is not None:
        hsv[:, :, 1] *= np.float32(draws.saturation_factor)
    if draws.hue_shift is not None:
        shift_hue(hsv, np.float32(draws.hue_shift))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def _contrast(image: np.ndarray, draws: PhotometricDraws) -> np.ndarray:
    if draws.contrast_factor is None:
        return image
    return image * np.float32(draws.contrast_factor)


def apply_photometric(image: np.ndarray, draws: PhotometricDraws) -> np.ndarray:
    """The distortion that ``draws`` describe, of an (H, W, 3) float32 RGB image with values 0-255: a
    new float32 array, not clipped; ``image`` is left as it is."""
    if not isinstance(image, np.ndarray) or image.dtype != np.float32 or image.ndim != 3 or image.shape[2] != 3:
        described = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"the GAIC photometric distortion expects an (H, W, 3) float32 RGB image, got {described}")
    # float32 arithmetic throughout, as the release's in-place operations on its float32 image
    if draws.brightness_delta is not None:
        image = image + np.float32(draws.brightness_delta)
    if draws.contrast_first:
        return _colour_steps(_contrast(image, draws), draws)
    return _contrast(_colour_steps(image, draws), draws)


def photometric_distort(image: np.ndarray, generator: torch.Generator) -> np.ndarray:
    """The release's photometric distortion of an (H, W, 3) float32 RGB image with values 0-255 at its
    original size, every random draw from ``generator`` (see the module docstring): a new float32 RGB
    array on the same 0-255 scale, not clipped; ``image`` is left as it is."""
    return apply_photometric(image, draw_photometric(generator))
