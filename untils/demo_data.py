"""A small generated human-centric dataset in GAICD's exact layout, for demos and tests.

No cropping dataset can be downloaded everywhere, so ``build_demo_dataset`` makes one
from photos that ship inside installed packages:

* people: scikit-image's ``astronaut`` and ``camera`` (the cameraman, grayscale) and
  matplotlib's ``sample_data/grace_hopper.jpg``, each with a hand-annotated person box
  (``PERSON_SOURCES``; checked by drawing the boxes on the photos);
* backgrounds: scikit-image's ``coffee``, ``chelsea``, ``rocket``, ``hubble_deep_field``,
  ``grass``, ``gravel`` and ``brick`` (the grayscale ones tinted), and generated
  gradient-plus-noise textures.

Most images are composites: the person with some context is cut from a person photo,
scaled so the person is 45-85% of the image height, maybe mirrored, and pasted at a
random horizontal position onto a background (bottom-aligned, since every source's
person runs off its bottom edge), so the person box is known exactly. Training also
gets each person photo as it is, and about one image in seven has no person at all
(no entry in ``human_bboxes.json``). The long side is ``long_side`` pixels, the aspect
ratio one of 4:3, 3:2, 16:9, 1:1, 3:4, 2:3.

Every image's candidate crops are its GAIC grid anchors (``gaic_grid_candidates``, at
most 90, as in GAICD), scored by ``composition_score`` plus Gaussian noise (std
``SCORE_NOISE``), clipped to [1, 5] and rounded to two decimals like GAICD's mean
opinion scores.

The scores are a SYNTHETIC RULE written to exercise the pipeline with something a
model can learn from the image and the crop boxes; they are not human judgements and
not a result of the paper. With a person (all terms in [0, 1]):

    quality = 0.50 * kept**2          fraction of the person's box inside the crop
            + 0.25 * placement        person's centre on a vertical third line or the
                                      centre line of the crop (1), falling linearly to 0
                                      at 1/6 of the crop width away from all three
            + 0.15 * headroom         exp(-((gap - 0.08) / 0.12)**2), gap = space above
                                      the person's box over the crop height
            + 0.10 * size             (crop area / image area - 0.5) / 0.5, clipped

Without a person: quality = 0.5 * size + 0.5 * centring, centring = 1 - the crop
centre's distance from the image centre relative to the half-diagonal.
The score is ``1 + 4 * quality``.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from untils.atomic import write_json_atomic
from untils.candidates import gaic_grid_candidates

SCORE_NOISE = 0.05
MIN_SCORE, MAX_SCORE = 1.0, 5.0
ASPECT_RATIOS = (4 / 3, 3 / 2, 16 / 9, 1.0, 3 / 4, 2 / 3)
PERSON_HEIGHT_RANGE = (0.45, 0.85)
CONTEXT_RANGE = (0.05, 0.20)
NO_PERSON_SHARE = 1 / 7
JPEG_QUALITY = 90

Box = Sequence[float]


def _skimage_image(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return _as_rgb(getattr(skimage.data, name)())

    return load


def _grace_hopper() -> np.ndarray:
    import matplotlib

    path = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"matplotlib sample photo not found: {path}")
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _as_rgb(pixels: np.ndarray) -> np.ndarray:
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    return np.ascontiguousarray(pixels[:, :, :3]).astype(np.uint8)


@dataclass(frozen=True)
class PersonSource:
    load: Callable[[], np.ndarray]
    person_box: tuple[int, int, int, int]  # x1, y1, x2, y2 in the source photo's pixels


PERSON_SOURCES = {
    "astronaut": PersonSource(_skimage_image("astronaut"), (20, 14, 362, 512)),
    "cameraman": PersonSource(_skimage_image("camera"), (0, 62, 332, 512)),
    "grace_hopper": PersonSource(_grace_hopper, (12, 22, 512, 600)),
}
PHOTO_BACKGROUNDS = ("coffee", "chelsea", "rocket", "hubble_deep_field")
TEXTURE_BACKGROUNDS = ("grass", "gravel", "brick")
GENERATED_BACKGROUND = "generated"


def _clip01(value: float) -> float:
    return min(1.0, max(0.0, value))


def composition_score(crop: Box, human_box: Box | None, width: float, height: float) -> float:
    """The synthetic rule of the module docstring, without noise: a score in [1, 5].

    ``crop`` and ``human_box`` are ``[x1, y1, x2, y2]`` pixels of a ``width`` x
    ``height`` image; ``human_box`` is None (or x1 < 0) for an image without a person.
    """
    x1, y1, x2, y2 = (float(v) for v in crop)
    crop_w, crop_h = x2 - x1, y2 - y1
    if crop_w <= 0 or crop_h <= 0 or width <= 0 or height <= 0:
        raise ValueError(f"crop {list(crop)} must have positive size inside a positive image ({width}x{height})")
    size = _clip01((crop_w * crop_h / (width * height) - 0.5) / 0.5)
    if human_box is None or human_box[0] < 0:
        offset_x = (x1 + x2) / 2 - width / 2
        offset_y = (y1 + y2) / 2 - height / 2
        centring = 1.0 - math.hypot(offset_x, offset_y) / math.hypot(width / 2, height / 2)
        return 1.0 + 4.0 * (0.5 * size + 0.5 * centring)
    hx1, hy1, hx2, hy2 = (float(v) for v in human_box)
    person_area = (hx2 - hx1) * (hy2 - hy1)
    if person_area <= 0:
        raise ValueError(f"human box {list(human_box)} must have positive size")
    overlap_w = max(0.0, min(x2, hx2) - max(x1, hx1))
    overlap_h = max(0.0, min(y2, hy2) - max(y1, hy1))
    kept = overlap_w * overlap_h / person_area
    centre_u = ((hx1 + hx2) / 2 - x1) / crop_w
    line_distance = min(abs(centre_u - line) for line in (1 / 3, 1 / 2, 2 / 3))
    placement = _clip01(1.0 - line_distance / (1 / 6))
    gap = (hy1 - y1) / crop_h
    headroom = math.exp(-(((gap - 0.08) / 0.12) ** 2))
    return 1.0 + 4.0 * (0.50 * kept**2 + 0.25 * placement + 0.15 * headroom + 0.10 * size)


def _image_size(rng: np.random.Generator, long_side: int) -> tuple[int, int]:
    ratio = ASPECT_RATIOS[rng.integers(len(ASPECT_RATIOS))]
    if ratio >= 1:
        return long_side, round(long_side / ratio)
    return round(long_side * ratio), long_side


def _resize(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.asarray(Image.fromarray(pixels).resize((width, height), Image.Resampling.BILINEAR))


def _generated_texture(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A vertical two-colour gradient with soft low-frequency noise."""
    top, bottom = rng.uniform(30, 230, size=(2, 3))
    blend = np.linspace(0.0, 1.0, height)[:, None, None]
    gradient = np.broadcast_to(top * (1 - blend) + bottom * blend, (height, width, 3))
    coarse = rng.uniform(0, 255, size=(6, 8, 3)).astype(np.uint8)
    noise = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), dtype=np.float64)
    return np.clip(0.75 * gradient + 0.25 * noise, 0, 255).astype(np.uint8)


class _SourceCache:
    """Loads each packaged photo once per build."""

    def __init__(self) -> None:
        self._pixels: dict[str, np.ndarray] = {}

    def get(self, name: str) -> np.ndarray:
        if name not in self._pixels:
            if name in PERSON_SOURCES:
                self._pixels[name] = PERSON_SOURCES[name].load()
            else:
                self._pixels[name] = _skimage_image(name)()
        return self._pixels[name]


def _background(rng: np.random.Generator, cache: _SourceCache, width: int, height: int) -> np.ndarray:
    """A random region of a random background source with the image's aspect ratio, resized."""
    choices = PHOTO_BACKGROUNDS + TEXTURE_BACKGROUNDS + (GENERATED_BACKGROUND,)
    name = choices[rng.integers(len(choices))]
    if name == GENERATED_BACKGROUND:
        return _generated_texture(rng, width, height)
    source = cache.get(name)
    if name in TEXTURE_BACKGROUNDS:
        source = np.clip(source * rng.uniform(0.6, 1.2, size=3), 0, 255).astype(np.uint8)
    source_h, source_w = source.shape[:2]
    region_w = min(source_w, source_h * width / height) * rng.uniform(0.6, 1.0)
    region_h = region_w * height / width
    left = rng.uniform(0, source_w - region_w)
    top = rng.uniform(0, source_h - region_h)
    region = source[int(top) : int(top + region_h), int(left) : int(left + region_w)]
    pixels = _resize(region, width, height)
    return pixels[:, ::-1] if rng.random() < 0.5 else pixels


def _composite(rng: np.random.Generator, cache: _SourceCache, width: int, height: int) -> tuple[np.ndarray, list[int]]:
    """A person (with context) pasted onto a background; returns pixels and the person box."""
    canvas = _background(rng, cache, width, height).copy()
    name = list(PERSON_SOURCES)[rng.integers(len(PERSON_SOURCES))]
    photo, (px1, py1, px2, py2) = cache.get(name), PERSON_SOURCES[name].person_box
    photo_h, photo_w = photo.shape[:2]
    margin_x, margin_y = rng.uniform(*CONTEXT_RANGE, size=2)
    left = max(0, round(px1 - margin_x * (px2 - px1)))
    right = min(photo_w, round(px2 + margin_x * (px2 - px1)))
    top = max(0, round(py1 - margin_y * (py2 - py1)))
    bottom = min(photo_h, round(py2 + margin_y * (py2 - py1)))
    scale = rng.uniform(*PERSON_HEIGHT_RANGE) * height / (py2 - py1)
    scale = min(scale, 0.95 * width / (right - left), height / (bottom - top))
    patch_w, patch_h = max(1, round((right - left) * scale)), max(1, round((bottom - top) * scale))
    patch = _resize(photo[top:bottom, left:right], patch_w, patch_h)
    ratio_x, ratio_y = patch_w / (right - left), patch_h / (bottom - top)
    box_x1, box_x2 = (px1 - left) * ratio_x, (px2 - left) * ratio_x
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
        box_x1, box_x2 = patch_w - box_x2, patch_w - box_x1
    offset_x = int(rng.integers(0, width - patch_w + 1))
    offset_y = height - patch_h  # the sources' people run off the bottom of the photo
    canvas[offset_y : offset_y + patch_h, offset_x : offset_x + patch_w] = patch
    person = [offset_x + box_x1, offset_y + (py1 - top) * ratio_y, offset_x + box_x2, offset_y + (py2 - top) * ratio_y]
    return canvas, _whole_pixel_box(person, width, height)


def _whole_pixel_box(box: Sequence[float], width: int, height: int) -> list[int]:
    x1, y1, x2, y2 = (round(v) for v in box)
    return [max(0, x1), max(0, y1), min(width, x2), min(height, y2)]


def _plain_photo(cache: _SourceCache, name: str, long_side: int) -> tuple[np.ndarray, list[int]]:
    photo = cache.get(name)
    photo_h, photo_w = photo.shape[:2]
    scale = long_side / max(photo_w, photo_h)
    width, height = round(photo_w * scale), round(photo_h * scale)
    box = [v * scale for v in PERSON_SOURCES[name].person_box]
    return _resize(photo, width, height), _whole_pixel_box(box, width, height)


def _scored_crops(rng: np.random.Generator, width: int, height: int, person: list[int] | None) -> dict[str, list]:
    crops = gaic_grid_candidates(width, height).long().tolist()
    scores = [composition_score(crop, person, width, height) + rng.normal(0.0, SCORE_NOISE) for crop in crops]
    scores = [round(min(MAX_SCORE, max(MIN_SCORE, s)), 2) for s in scores]
    order = sorted(range(len(crops)), key=lambda i: -scores[i])
    return {"bbox": [crops[i] for i in order], "score": [scores[i] for i in order]}


def _write_json(path: str, content: dict) -> None:
    write_json_atomic(path, content)


def build_demo_dataset(
    root: str | os.PathLike,
    num_train: int = 48,
    num_test: int = 16,
    seed: int = 0,
    long_side: int = 448,
    overwrite: bool = False,
) -> dict:
    """Write the demo dataset under ``<root>/GAICD`` in GAICD's layout; return a summary.

    Files: ``images/train/*.jpg``, ``images/test/*.jpg``, ``image_crop.json``,
    ``human_bboxes.json``, ``original_data_split.json``, ``human_data_split.json``.
    The same ``seed`` and arguments give the same files. ``num_train`` counts the
    three plain person photos. The summary holds ``path`` (the GAICD folder), the
    ``train``/``test`` image names and ``human_train``/``human_test``.
    """
    if num_train < len(PERSON_SOURCES) + 1 or num_test < 2:
        raise ValueError(
            f"need num_train >= {len(PERSON_SOURCES) + 1} and num_test >= 2, "
            f"got num_train={num_train}, num_test={num_test}"
        )
    if long_side < 64:
        raise ValueError(f"long_side={long_side} must be at least 64 pixels")
    gaicd = os.path.join(os.fspath(root), "GAICD")
    if os.path.exists(gaicd):
        if not overwrite:
            raise FileExistsError(f"{gaicd} already exists; pass overwrite=True to replace it")
        shutil.rmtree(gaicd)
    rng = np.random.default_rng(seed)
    cache = _SourceCache()
    annotations: dict[str, dict] = {}
    human_boxes: dict[str, list[int]] = {}
    split: dict[str, list[str]] = {"train": [], "test": []}
    index = 0
    for subset, count in (("train", num_train), ("test", num_test)):
        folder = os.path.join(gaicd, "images", subset)
        os.makedirs(folder)
        plain = list(PERSON_SOURCES) if subset == "train" else []
        without_person = max(1, round(count * NO_PERSON_SHARE))
        kinds = plain + ["none"] * without_person + ["composite"] * (count - len(plain) - without_person)
        for kind in (kinds[i] for i in rng.permutation(len(kinds))):
            name = f"demo{index:04d}.jpg"
            index += 1
            person: list[int] | None
            if kind == "composite":
                pixels, person = _composite(rng, cache, *_image_size(rng, long_side))
            elif kind == "none":
                width, height = _image_size(rng, long_side)
                pixels, person = _background(rng, cache, width, height), None
            else:
                pixels, person = _plain_photo(cache, kind, long_side)
            Image.fromarray(np.ascontiguousarray(pixels)).save(os.path.join(folder, name), quality=JPEG_QUALITY)
            height, width = pixels.shape[:2]
            annotations[name] = _scored_crops(rng, width, height, person)
            if person is not None:
                human_boxes[name] = person
            split[subset].append(name)
    human_split = {subset: [n for n in names if n in human_boxes] for subset, names in split.items()}
    _write_json(os.path.join(gaicd, "image_crop.json"), annotations)
    _write_json(os.path.join(gaicd, "human_bboxes.json"), human_boxes)
    _write_json(os.path.join(gaicd, "original_data_split.json"), split)
    _write_json(os.path.join(gaicd, "human_data_split.json"), human_split)
    return {
        "path": gaicd,
        "train": split["train"],
        "test": split["test"],
        "human_train": human_split["train"],
        "human_test": human_split["test"],
    }
