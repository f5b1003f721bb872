"""GAIC's training augmentation: its photometric distortion (``PhotometricDistort`` of the release's
``augmentations.py``), for the GAIC-official recipe.

On a float32 image, before it is resized, with pixel values 0-255 and nothing clipped:

1. with probability 1/2, add a brightness offset drawn from U(-32, 32);
2. then, with probability 1/2 each, one of two orders:
   contrast, HSV, saturation, hue, back to RGB;  or  HSV, saturation, hue, back to RGB, contrast;
   where contrast multiplies every value by U(0.5, 1.5) with probability 1/2, saturation multiplies
   the HSV S channel by U(0.5, 1.5) with probability 1/2, and hue adds U(-18, 18) degrees to H with
   probability 1/2, wrapping values above 360 or below 0 back by 360, once.

Where this departs from the release, and why:

* The release works on cv2's BGR images, this project on RGB: the HSV conversion is taken from the
  RGB order (``cv2.COLOR_RGB2HSV`` / ``HSV2RGB``), which gives the same hue, saturation and value,
  so the result is the release's with its channels in RGB order.
* The release also builds a random channel permutation ("lighting noise") but never applies it;
  neither does this module.
* Its ``RandomMirror`` swaps x1 and x2 of every box (x2 < x1 after a flip): the datasets here flip
  images and boxes properly themselves, so this module does not mirror.
* The release draws from numpy's global generator; every draw here comes from the ``torch.Generator``
  passed in (the training engine seeds one per image), in the order listed above, so a run is
  reproducible whatever the worker layout.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

BRIGHTNESS_DELTA = 32.0
CONTRAST_RANGE = (0.5, 1.5)
SATURATION_RANGE = (0.5, 1.5)
HUE_DELTA = 18.0


def _coin(generator: torch.Generator) -> bool:
    return bool(torch.randint(2, (1,), generator=generator).item())


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand(1, generator=generator, dtype=torch.float64).item())


def adjust_saturation(hsv: np.ndarray, factor: float) -> np.ndarray:
    """The S channel of a float HSV image multiplied by ``factor`` (in place; returned)."""
    hsv[:, :, 1] *= factor
    return hsv


def shift_hue(hsv: np.ndarray, degrees: float) -> np.ndarray:
    """``degrees`` added to the H channel of a float HSV image, values past 360 or below 0 wrapped by
    360 once, as the release does (in place; returned)."""
    hue = hsv[:, :, 0]
    hue += degrees
    hue[hue > 360.0] -= 360.0
    hue[hue < 0.0] += 360.0
    return hsv


def _colour_steps(image: np.ndarray, generator: torch.Generator) -> np.ndarray:
    """HSV, saturation, hue and back to RGB, each random step drawn in turn."""
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    if _coin(generator):
        adjust_saturation(hsv, _uniform(generator, *SATURATION_RANGE))
    if _coin(generator):
        shift_hue(hsv, _uniform(generator, -HUE_DELTA, HUE_DELTA))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def _contrast(image: np.ndarray, generator: torch.Generator) -> np.ndarray:
    if _coin(generator):
        image = image * np.float32(_uniform(generator, *CONTRAST_RANGE))
    return image


def photometric_distort(image: np.ndarray, generator: torch.Generator) -> np.ndarray:
    """The release's photometric distortion of an (H, W, 3) float32 RGB image with values 0-255
    (see the module docstring); a new float32 array, not clipped. ``image`` is left as it is."""
    if image.dtype != np.float32 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"photometric_distort expects an (H, W, 3) float32 image, got {image.dtype} {image.shape}")
    image = image.copy()
    if _coin(generator):
        image += np.float32(_uniform(generator, -BRIGHTNESS_DELTA, BRIGHTNESS_DELTA))
    if _coin(generator):
        return _colour_steps(_contrast(image, generator), generator)
    return _contrast(_colour_steps(image, generator), generator)
