"""The generated PIC benchmark: users with known, distinct tastes rate the candidate crops of real
photos of people and of generated scenes, written in the PIC format (``pic_dataset.py``).

Images come from ``untils.demo_data.build_demo_dataset``: people from photos shipped in pip
packages composited onto backgrounds with known person boxes, the plain person photos, and scenes
without a person. Each image then gets a generated second object (``draw_second_object``: a
filled ellipse of a saturated colour near the side edge away from the person), its box recorded
in ``objects.json``. Its train images are rated by the training users, its test images by the
test users, so nothing a model is pre-trained or prior-trained on is ever a test user's image.

Every user belongs to a taste group and has their own parameters. The subject of an image is its
person box, or without a person the image's central third (``[W/3, H/3, 2W/3, 2H/3]``).

Geometry groups (what the embedding variant's crop geometry, ``pic_embedding.crop_geometry``,
describes). With ``u`` the subject's centre across the crop (0 left edge, 1 right edge), ``gap``
the space above the subject over the crop height and ``fill`` the subject's height over the crop
height, the taste term (in [0, 1]) of a crop, with ``t`` the user's own target, is::

    centred    1 - |u - t| / 0.5, clipped to [0, 1]                    t ~ U(0.47, 0.53)
    thirds     1 - min(|u - t|, |u - (1 - t)|) / (1/6), clipped        t ~ U(0.30, 0.36)
    headroom   exp(-((gap - t) / 0.08)^2)                               t ~ U(0.22, 0.32)
    tight      exp(-((fill - t) / 0.12)^2)                              t ~ U(0.85, 0.95)

Content groups: read from the image's pixels (the written JPEG) inside the crop; no input
feature of either variant encodes them (the models see them only through their CNN features).
With ``luma`` the mean Rec. 601 luma (0.299 R + 0.587 G + 0.114 B, in [0, 1]) and ``sat`` the
mean HSV saturation ((max - min) / max of R, G, B per pixel, 0 for black) over the crop's pixels,
``image_luma``/``image_sat`` the same over the whole image, ``sigmoid(x) = 1 / (1 + e^-x)`` and
``kept_object`` the share of the second object's box inside the crop::

    bright         sigmoid((luma - image_luma) / t)                     t ~ U(0.010, 0.020)
    colourful      sigmoid((sat - image_sat) / t)                       t ~ U(0.010, 0.020)
    second_object  min(1, kept_object / t)                              t ~ U(0.85, 1.00)

(brighter / more colourful than the whole image is better, ``t`` the user's sensitivity; the
second object must be kept, ``t`` the share the user asks for).

The user's score is ``1 + 4 * ((1 - w) * kept**2 + w * taste) + N(0, noise**2)``, clipped to
[1, 5] and rounded to two decimals, with ``kept`` the share of the subject's box inside the crop
(no one likes a cut-off subject), ``w`` ~ U(0.6, 0.8) and ``noise`` ~ U(0.05, 0.15) per user. Every
term is symmetric under a horizontal flip (of the image with the crop), so flipped training views
keep their scores. These are SYNTHETIC tastes, written to test whether a model can learn
individual preferences; they are no human data. ``tastes.json`` in the PIC folder records each
user's group and parameters, ``objects.json`` the second objects (the loader ignores both).
"""

from __future__ import annotations

import colorsys
import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw

from untils.atomic import write_json_atomic
from untils.candidates import gaic_grid_candidates
from untils.demo_data import JPEG_QUALITY, build_demo_dataset
from untils.metrics import spearman
from untils.pic_format import fixed_views, write_pic_annotations

GEOMETRY_GROUPS = ("centred", "thirds", "headroom", "tight")
CONTENT_GROUPS = ("bright", "colourful", "second_object")
TASTE_GROUPS = GEOMETRY_GROUPS + CONTENT_GROUPS
TARGET_RANGES = {
    "centred": (0.47, 0.53),
    "thirds": (0.30, 0.36),
    "headroom": (0.22, 0.32),
    "tight": (0.85, 0.95),
    "bright": (0.010, 0.020),
    "colourful": (0.010, 0.020),
    "second_object": (0.85, 1.00),
}
WEIGHT_RANGE = (0.6, 0.8)
NOISE_RANGE = (0.05, 0.15)
MIN_SCORE, MAX_SCORE = 1.0, 5.0
TASTES_FILE = "tastes.json"
CANDIDATE_KINDS = ("grid", "fixed")
OBJECTS_FILE = "objects.json"
# the second object: its size over the image's shorter side, and its gap to the side edge over the width
OBJECT_SIZE_RANGE = (0.14, 0.22)
OBJECT_EDGE_GAP_RANGE = (0.01, 0.06)

Box = Sequence[float]


@dataclass(frozen=True)
class Taste:
    """One user's taste: the group's rule, its target, the weight of the taste term, the rating noise."""

    group: str
    target: float
    weight: float
    noise: float


@dataclass(frozen=True)
class ImageContent:
    """What the content tastes read from one image: summed-area tables ((H + 1, W + 1), float64)
    of per-pixel luma and saturation, and the second object's box (None: the image has none)."""

    luma_table: np.ndarray
    saturation_table: np.ndarray
    object_box: tuple[float, float, float, float] | None


def _summed_area(values: np.ndarray) -> np.ndarray:
    table = np.zeros((values.shape[0] + 1, values.shape[1] + 1))
    table[1:, 1:] = values.cumsum(axis=0).cumsum(axis=1)
    return table


def image_content(pixels: np.ndarray, object_box: Box | None = None) -> ImageContent:
    """The :class:`ImageContent` of an (H, W, 3) uint8 RGB image."""
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {pixels.dtype} array of shape {pixels.shape}")
    rgb = pixels.astype(np.float64) / 255.0
    luma = rgb @ np.array([0.299, 0.587, 0.114])
    brightest, darkest = rgb.max(axis=2), rgb.min(axis=2)
    saturation = np.divide(brightest - darkest, brightest, out=np.zeros_like(brightest), where=brightest > 0)
    box = None
    if object_box is not None:
        x1, y1, x2, y2 = object_box
        box = (float(x1), float(y1), float(x2), float(y2))
    return ImageContent(_summed_area(luma), _summed_area(saturation), box)


def region_mean(table: np.ndarray, box: Box) -> float:
    """Mean over the whole pixels of ``box`` (rounded to pixel edges, clipped to the image) of the
    values whose summed-area table is ``table``."""
    height, width = table.shape[0] - 1, table.shape[1] - 1
    x1, y1 = max(0, round(float(box[0]))), max(0, round(float(box[1])))
    x2, y2 = min(width, round(float(box[2]))), min(height, round(float(box[3])))
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"crop {list(box)} covers no pixel of the {width}x{height} image")
    total = table[y2, x2] - table[y1, x2] - table[y2, x1] + table[y1, x1]
    return float(total / ((x2 - x1) * (y2 - y1)))


def _sigmoid(value: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, value))))


def subject_box(human_box: Box | None, width: float, height: float) -> tuple[float, float, float, float]:
    """The person's box, or the image's central third when there is no person (None or x1 < 0)."""
    if human_box is None or human_box[0] < 0:
        return width / 3, height / 3, 2 * width / 3, 2 * height / 3
    x1, y1, x2, y2 = (float(v) for v in human_box)
    return x1, y1, x2, y2


def _content_term(group: str, target: float, crop: Box, content: ImageContent | None) -> float:
    if content is None:
        raise ValueError(f"taste group {group!r} reads the image's pixels: pass its ImageContent")
    if group == "second_object":
        if content.object_box is None:
            raise ValueError("taste group 'second_object' needs an image with a second object")
        return min(1.0, kept_share(crop, content.object_box) / target)
    table = content.luma_table if group == "bright" else content.saturation_table
    whole = (0, 0, table.shape[1] - 1, table.shape[0] - 1)
    return _sigmoid((region_mean(table, crop) - region_mean(table, whole)) / target)


def taste_term(group: str, target: float, crop: Box, subject: Box, content: ImageContent | None = None) -> float:
    """The taste term in [0, 1] of the module docstring for a crop, the image's subject box and,
    for the content groups, the image's :class:`ImageContent`."""
    x1, y1, x2, y2 = (float(v) for v in crop)
    sx1, sy1, sx2, sy2 = (float(v) for v in subject)
    crop_w, crop_h = x2 - x1, y2 - y1
    if crop_w <= 0 or crop_h <= 0:
        raise ValueError(f"crop {list(crop)} has no area")
    if group in CONTENT_GROUPS:
        return _content_term(group, target, crop, content)
    u = ((sx1 + sx2) / 2 - x1) / crop_w
    if group == "centred":
        return min(1.0, max(0.0, 1.0 - abs(u - target) / 0.5))
    if group == "thirds":
        return min(1.0, max(0.0, 1.0 - min(abs(u - target), abs(u - (1 - target))) / (1 / 6)))
    if group == "headroom":
        return math.exp(-((((sy1 - y1) / crop_h - target) / 0.08) ** 2))
    if group == "tight":
        return math.exp(-((((sy2 - sy1) / crop_h - target) / 0.12) ** 2))
    raise ValueError(f"unknown taste group {group!r}; expected one of {TASTE_GROUPS}")


def kept_share(crop: Box, subject: Box) -> float:
    """Share of the subject's box area inside the crop."""
    x1, y1, x2, y2 = (float(v) for v in crop)
    sx1, sy1, sx2, sy2 = (float(v) for v in subject)
    overlap = max(0.0, min(x2, sx2) - max(x1, sx1)) * max(0.0, min(y2, sy2) - max(y1, sy1))
    return overlap / ((sx2 - sx1) * (sy2 - sy1))


def taste_score(
    taste: Taste, crop: Box, human_box: Box | None, width: float, height: float, content: ImageContent | None = None
) -> float:
    """A user's noise-free score in [1, 5] of ``crop`` in a ``width`` x ``height`` image
    (``content``: the image's :class:`ImageContent`, needed by the content groups)."""
    subject = subject_box(human_box, width, height)
    quality = (1 - taste.weight) * kept_share(crop, subject) ** 2 + taste.weight * taste_term(
        taste.group, taste.target, crop, subject, content
    )
    return MIN_SCORE + (MAX_SCORE - MIN_SCORE) * quality


def sample_taste(group: str, rng: np.random.Generator) -> Taste:
    if group not in TARGET_RANGES:
        raise ValueError(f"unknown taste group {group!r}; expected one of {TASTE_GROUPS}")
    return Taste(
        group,
        float(rng.uniform(*TARGET_RANGES[group])),
        float(rng.uniform(*WEIGHT_RANGE)),
        float(rng.uniform(*NOISE_RANGE)),
    )


def draw_second_object(image: Image.Image, human_box: Box | None, rng: np.random.Generator) -> list[int]:
    """Draw a filled ellipse of a random saturated colour (with a dark rim) onto ``image`` near the
    side edge farther from the person's centre (a random side without a person), at a random
    height; return its box in whole pixels."""
    width, height = image.size
    size = max(4, round(rng.uniform(*OBJECT_SIZE_RANGE) * min(width, height)))
    gap = round(rng.uniform(*OBJECT_EDGE_GAP_RANGE) * width)
    if human_box is None or human_box[0] < 0:
        on_left = bool(rng.random() < 0.5)
    else:
        on_left = (human_box[0] + human_box[2]) / 2 > width / 2
    x1 = gap if on_left else width - gap - size
    y1 = int(rng.integers(round(0.1 * height), max(round(0.1 * height) + 1, round(0.9 * height) - size + 1)))
    fill = tuple(round(255 * v) for v in colorsys.hsv_to_rgb(float(rng.uniform()), 0.9, 0.9))
    ImageDraw.Draw(image).ellipse(
        [x1, y1, x1 + size - 1, y1 + size - 1], fill=fill, outline=(20, 20, 20), width=max(1, size // 12)
    )
    return [x1, y1, x1 + size, y1 + size]


def candidate_crops(width: int, height: int, candidates: str) -> list[list[int]]:
    """The crops users rate: "grid" (GAIC's grid anchors) or "fixed" (``fixed_views``, in their order)."""
    if candidates == "fixed":
        return fixed_views(width, height)
    if candidates == "grid":
        return gaic_grid_candidates(width, height).long().tolist()
    raise ValueError(f"candidates={candidates!r}; expected one of {CANDIDATE_KINDS}")


def _rate(
    taste: Taste,
    rng: np.random.Generator,
    width: int,
    height: int,
    human_box: Box | None,
    content: ImageContent,
    candidates: str,
) -> dict[str, list]:
    crops = candidate_crops(width, height, candidates)
    scores = [
        taste_score(taste, crop, human_box, width, height, content) + rng.normal(0.0, taste.noise) for crop in crops
    ]
    return {"bbox": crops, "score": [round(min(MAX_SCORE, max(MIN_SCORE, s)), 2) for s in scores]}


def build_pic_benchmark(
    root: str | os.PathLike,
    train_users_per_group: int = 6,
    test_users_per_group: int = 2,
    train_images: int = 96,
    test_images: int = 40,
    images_per_train_user: int = 32,
    long_side: int = 256,
    seed: int = 0,
    overwrite: bool = False,
    candidates: str = "grid",
    groups: Sequence[str] = GEOMETRY_GROUPS,
) -> dict:
    """Write ``<root>/PIC`` (with its ``tastes.json`` and ``objects.json``); return ``{"path",
    "train", "test", "groups"}``.

    Users are ``<group>-<NN>`` for each of ``groups``; the first ``train_users_per_group`` of each
    group are training users, each rating ``images_per_train_user`` random training images; test
    users rate every test image. The same arguments give the same files. ``candidates``: "grid"
    (GAIC's grid anchors) or "fixed" (``untils.pic_format.fixed_views``: 24 views in a fixed
    order, what the official model's per-position offsets need).
    """
    if candidates not in CANDIDATE_KINDS:
        raise ValueError(f"candidates={candidates!r}; expected one of {CANDIDATE_KINDS}")
    if train_users_per_group < 1 or test_users_per_group < 1:
        raise ValueError("need at least one training and one test user per taste group")
    unknown = [group for group in groups if group not in TASTE_GROUPS]
    if unknown or not groups or len(set(groups)) != len(groups):
        raise ValueError(f"groups={list(groups)}: expected distinct names out of {TASTE_GROUPS}")
    pic_dir = os.path.join(os.fspath(root), "PIC")
    if os.path.exists(pic_dir):
        if not overwrite:
            raise FileExistsError(f"{pic_dir} already exists; pass overwrite=True to replace it")
        shutil.rmtree(pic_dir)
    os.makedirs(os.path.join(pic_dir, "images"))
    source = tempfile.mkdtemp(prefix=".pic-source-", dir=os.fspath(root))
    try:
        demo = build_demo_dataset(source, num_train=train_images, num_test=test_images, seed=seed, long_side=long_side)
        with open(os.path.join(demo["path"], "human_bboxes.json")) as stream:
            human_boxes = json.load(stream)
        object_boxes, contents, sizes = {}, {}, {}
        for index, name in enumerate(demo["train"] + demo["test"]):
            part = "train" if index < len(demo["train"]) else "test"
            with Image.open(os.path.join(demo["path"], "images", part, name)) as opened:
                image = opened.convert("RGB")
            object_boxes[name] = draw_second_object(image, human_boxes.get(name), np.random.default_rng([seed, index]))
            target = os.path.join(pic_dir, "images", name)
            image.save(target, quality=JPEG_QUALITY)
            with Image.open(target) as written:  # the tastes read the pixels the models will see
                contents[name] = image_content(np.asarray(written.convert("RGB")), object_boxes[name])
                sizes[name] = written.size
    finally:
        shutil.rmtree(source, ignore_errors=True)

    rng = np.random.default_rng(seed)
    tastes: dict[str, Taste] = {}
    train_users: list[str] = []
    test_users: list[str] = []
    for group in groups:
        for index in range(train_users_per_group + test_users_per_group):
            user = f"{group}-{index:02d}"
            tastes[user] = sample_taste(group, rng)
            (train_users if index < train_users_per_group else test_users).append(user)
    ratings = {}
    for number, user in enumerate(train_users + test_users):
        user_rng = np.random.default_rng([seed, number])
        if user in test_users:
            names = list(demo["test"])
        else:
            count = min(images_per_train_user, len(demo["train"]))
            names = sorted(user_rng.choice(demo["train"], size=count, replace=False).tolist())
        ratings[user] = {
            name: _rate(tastes[user], user_rng, *sizes[name], human_boxes.get(name), contents[name], candidates)
            for name in names
        }
    write_pic_annotations(pic_dir, train_users, test_users, ratings, human_boxes)
    write_json_atomic(
        os.path.join(pic_dir, TASTES_FILE), {user: asdict(taste) for user, taste in tastes.items()}, indent=1
    )
    write_json_atomic(os.path.join(pic_dir, OBJECTS_FILE), object_boxes)
    return {
        "path": pic_dir,
        "train": train_users,
        "test": test_users,
        "groups": {user: taste.group for user, taste in tastes.items()},
    }


def read_tastes(pic_dir: str) -> dict[str, Taste]:
    """The ``tastes.json`` of a generated benchmark."""
    path = os.path.join(pic_dir, TASTES_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: not a generated PIC benchmark (see untils/pic_synthetic.py)")
    with open(path) as stream:
        return {user: Taste(**values) for user, values in json.load(stream).items()}


def read_image_contents(pic_dir: str, names: Sequence[str]) -> dict[str, ImageContent]:
    """The :class:`ImageContent` of images of a generated benchmark (pixels and ``objects.json``)."""
    path = os.path.join(pic_dir, OBJECTS_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: not a generated PIC benchmark (see untils/pic_synthetic.py)")
    with open(path) as stream:
        objects = json.load(stream)
    contents = {}
    for name in names:
        with Image.open(os.path.join(pic_dir, "images", name)) as image:
            contents[name] = image_content(np.asarray(image.convert("RGB")), objects.get(name))
    return contents


@dataclass(frozen=True)
class RatedImageInfo:
    """What a user's noise-free scores of an image depend on."""

    width: int
    height: int
    human_box: Box | None
    content: ImageContent | None = None


def _noise_free_scores(taste: Taste, crops: Sequence[Box], info: RatedImageInfo) -> np.ndarray:
    return np.array([taste_score(taste, crop, info.human_box, info.width, info.height, info.content) for crop in crops])


def departure_from_average(
    tastes: Mapping[str, Taste],
    population: Sequence[str],
    users: Sequence[str],
    images: Mapping[str, RatedImageInfo],
    candidates: str = "grid",
) -> dict[str, float]:
    """How far each user's taste is from the population's: 1 - mean SRCC over ``images`` between
    the user's noise-free scores of the candidates (``candidates`` as in
    :func:`build_pic_benchmark`) and the mean noise-free score of the ``population`` users."""
    departures: dict[str, list[float]] = {user: [] for user in users}
    for info in images.values():
        crops = candidate_crops(info.width, info.height, candidates)
        average = np.mean([_noise_free_scores(tastes[p], crops, info) for p in population], axis=0)
        for user in users:
            departures[user].append(spearman(_noise_free_scores(tastes[user], crops, info), average))
    return {user: 1.0 - float(np.mean(values)) for user, values in departures.items()}
