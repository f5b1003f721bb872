"""Folders of generated photo-like JPEGs for the crop and web-server benchmarks (seeded, so every
benchmark times the same photos)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def generated_photo(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A photo-like image: a smooth colour field, a few filled shapes, sensor-like noise."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    corners = rng.uniform(30, 225, size=(4, 3)).astype(np.float32)
    u, v = (xs / width)[..., None], (ys / height)[..., None]
    pixels = corners[0] * (1 - u) * (1 - v) + corners[1] * u * (1 - v) + corners[2] * (1 - u) * v + corners[3] * u * v
    for _ in range(rng.integers(3, 8)):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        rx, ry = rng.uniform(30, width / 4), rng.uniform(30, height / 4)
        inside = ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 < 1
        pixels[inside] = rng.uniform(0, 255, size=3)
    pixels += rng.normal(0, 6, size=pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def make_folder(folder: Path, count: int, width: int, height: int, seed: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        generated_photo(rng, width, height).save(folder / f"photo{index:04d}.jpg", quality=90)
    return folder
