"""The generated PIC benchmark: users with known, distinct tastes rate the candidate crops of real
photos of people and of generated scenes, written in the PIC format (``pic_dataset.py``).

Images come from ``untils.demo_data.build_demo_dataset``: people from photos shipped in pip
packages composited onto backgrounds with known person boxes, the plain person photos, and scenes
without a person. Its train images are rated by the training users, its test images by the test
users, so nothing a model is pre-trained or prior-trained on is ever a test user's image.

Every user belongs to a taste group and has their own parameters. The subject of an image is its
person box, or without a person the image's central third (``[W/3, H/3, 2W/3, 2H/3]``). With ``u``
the subject's centre across the crop (0 left edge, 1 right edge), ``gap`` the space above the
subject over the crop height and ``fill`` the subject's height over the crop height, the taste
term (in [0, 1]) of a crop, with ``t`` the user's own target, is::

    centred    1 - |u - t| / 0.5, clipped to [0, 1]                    t ~ U(0.47, 0.53)
    thirds     1 - min(|u - t|, |u - (1 - t)|) / (1/6), clipped        t ~ U(0.30, 0.36)
    headroom   exp(-((gap - t) / 0.08)^2)                               t ~ U(0.22, 0.32)
    tight      exp(-((fill - t) / 0.12)^2)                              t ~ U(0.85, 0.95)

and the user's score is ``1 + 4 * ((1 - w) * kept**2 + w * taste) + N(0, noise**2)``, clipped to
[1, 5] and rounded to two decimals, with ``kept`` the share of the subject's box inside the crop
(no one likes a cut-off subject), ``w`` ~ U(0.6, 0.8) and ``noise`` ~ U(0.05, 0.15) per user. Every
term is symmetric under a horizontal flip, so flipped training views keep their scores. These
are SYNTHETIC tastes, written to test whether a model can learn individual preferences; they are
no human data. ``tastes.json`` in the PIC folder records each user's group and parameters (the
loader ignores it).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from typing import Mapping, Optional, Sequence

import numpy as np
from PIL import Image

from untils.candidates import gaic_grid_candidates
from untils.demo_data import build_demo_dataset
from untils.metrics import spearman
from untils.pic_format import fixed_views, write_pic_annotations

TASTE_GROUPS = ("centred", "thirds", "headroom", "tight")
TARGET_RANGES = {"centred": (0.47, 0.53), "thirds": (0.30, 0.36), "headroom": (0.22, 0.32), "tight": (0.85, 0.95)}
WEIGHT_RANGE = (0.6, 0.8)
NOISE_RANGE = (0.05, 0.15)
MIN_SCORE, MAX_SCORE = 1.0, 5.0
TASTES_FILE = "tastes.json"

Box = Sequence[float]


@dataclass(frozen=True)
class Taste:
    """One user's taste: the group's rule, its target, the weight of the taste term, the rating noise."""
    group: str
    target: float
    weight: float
    noise: float


def subject_box(human_box: Optional[Box], width: float, height: float) -> tuple[float, float, float, float]:
    """The person's box, or the image's central third when there is no person (None or x1 < 0)."""
    if human_box is None or human_box[0] < 0:
        return width / 3, height / 3, 2 * width / 3, 2 * height / 3
    x1, y1, x2, y2 = (float(v) for v in human_box)
    return x1, y1, x2, y2


def taste_term(group: str, target: float, crop: Box, subject: Box) -> float:
    """The taste term in [0, 1] of the module docstring for a crop and the image's subject box."""
    x1, y1, x2, y2 = (float(v) for v in crop)
    sx1, sy1, sx2, sy2 = (float(v) for v in subject)
    crop_w, crop_h = x2 - x1, y2 - y1
    if crop_w <= 0 or crop_h <= 0:
        raise ValueError(f"crop {list(crop)} has no area")
    u = ((sx1 + sx2) / 2 - x1) / crop_w
    if group == "centred":
        return min(1.0, max(0.0, 1.0 - abs(u - target) / 0.5))
    if group == "thirds":
        return min(1.0, max(0.0, 1.0 - min(abs(u - target), abs(u - (1 - target))) / (1 / 6)))
    if group == "headroom":
        return math.exp(-(((sy1 - y1) / crop_h - target) / 0.08) ** 2)
    if group == "tight":
        return math.exp(-(((sy2 - sy1) / crop_h - target) / 0.12) ** 2)
    raise ValueError(f"unknown taste group {group!r}; expected one of {TASTE_GROUPS}")


def kept_share(crop: Box, subject: Box) -> float:
    """Share of the subject's box area inside the crop."""
    x1, y1, x2, y2 = (float(v) for v in crop)
    sx1, sy1, sx2, sy2 = (float(v) for v in subject)
    overlap = max(0.0, min(x2, sx2) - max(x1, sx1)) * max(0.0, min(y2, sy2) - max(y1, sy1))
    return overlap / ((sx2 - sx1) * (sy2 - sy1))


def taste_score(taste: Taste, crop: Box, human_box: Optional[Box], width: float, height: float) -> float:
    """A user's noise-free score in [1, 5] of ``crop`` in a ``width`` x ``height`` image."""
    subject = subject_box(human_box, width, height)
    quality = (1 - taste.weight) * kept_share(crop, subject) ** 2 + taste.weight * taste_term(
        taste.group, taste.target, crop, subject)
    return MIN_SCORE + (MAX_SCORE - MIN_SCORE) * quality


def sample_taste(group: str, rng: np.random.Generator) -> Taste:
    if group not in TARGET_RANGES:
        raise ValueError(f"unknown taste group {group!r}; expected one of {TASTE_GROUPS}")
    return Taste(group, float(rng.uniform(*TARGET_RANGES[group])), float(rng.uniform(*WEIGHT_RANGE)),
                 float(rng.uniform(*NOISE_RANGE)))


def _rate(taste: Taste, rng: np.random.Generator, width: int, height: int,
          human_box: Optional[Box], candidates: str = "grid") -> dict[str, list]:
    crops = fixed_views(width, height) if candidates == "fixed" else gaic_grid_candidates(width, height).to(int).tolist()
    scores = [taste_score(taste, crop, human_box, width, height) + rng.normal(0.0, taste.noise) for crop in crops]
    return {"bbox": crops, "score": [round(min(MAX_SCORE, max(MIN_SCORE, s)), 2) for s in scores]}


def build_pic_benchmark(root: str | os.PathLike, train_users_per_group: int = 6, test_users_per_group: int = 2,
                        train_images: int = 96, test_images: int = 40, images_per_train_user: int = 32,
                        long_side: int = 256, seed: int = 0, overwrite: bool = False, candidates: str = "grid") -> dict:
    """Write ``<root>/PIC`` (and its ``tastes.json``); return ``{"path", "train", "test", "groups"}``.

    Users are ``<group>-<NN>``; the first ``train_users_per_group`` of each group are training
    users, each rating ``images_per_train_user`` random training images; test users rate every
    test image. The same arguments give the same files. ``candidates``: "grid" (GAIC's grid
    anchors) or "fixed" (``untils.pic_format.fixed_views``: 24 views in a fixed order, what the
    official model's per-position offsets need).
    """
    if candidates not in ("grid", "fixed"):
        raise ValueError(f"candidates={candidates!r}; expected 'grid' or 'fixed'")
    if train_users_per_group < 1 or test_users_per_group < 1:
        raise ValueError("need at least one training and one test user per taste group")
    pic_dir = os.path.join(os.fspath(root), "PIC")
    if os.path.exists(pic_dir):
        if not overwrite:
            raise FileExistsError(f"{pic_dir} already exists; pass overwrite=True to replace it")
        shutil.rmtree(pic_dir)
    os.makedirs(os.path.join(pic_dir, "images"))
    source = tempfile.mkdtemp(prefix=".pic-source-", dir=os.fspath(root))
    try:
        demo = build_demo_dataset(source, num_train=train_images, num_test=test_images, seed=seed,
                                  long_side=long_side)
        with open(os.path.join(demo["path"], "human_bboxes.json")) as stream:
            human_boxes = json.load(stream)
        sizes = {}
        for part in ("train", "test"):
            for name in demo[part]:
                target = os.path.join(pic_dir, "images", name)
                shutil.move(os.path.join(demo["path"], "images", part, name), target)
                with Image.open(target) as image:
                    sizes[name] = image.size
    finally:
        shutil.rmtree(source, ignore_errors=True)

    rng = np.random.default_rng(seed)
    tastes: dict[str, Taste] = {}
    train_users, test_users = [], []
    for group in TASTE_GROUPS:
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
        ratings[user] = {name: _rate(tastes[user], user_rng, *sizes[name], human_boxes.get(name), candidates) for name in names}
    write_pic_annotations(pic_dir, train_users, test_users, ratings, human_boxes)
    with open(os.path.join(pic_dir, TASTES_FILE), "w") as stream:
        json.dump({user: asdict(taste) for user, taste in tastes.items()}, stream, indent=1)
    return {"path": pic_dir, "train": train_users, "test": test_users,
            "groups": {user: taste.group for user, taste in tastes.items()}}


def read_tastes(pic_dir: str) -> dict[str, Taste]:
    """The ``tastes.json`` of a generated benchmark."""
    path = os.path.join(pic_dir, TASTES_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: not a generated PIC benchmark (see untils/pic_synthetic.py)")
    with open(path) as stream:
        return {user: Taste(**values) for user, values in json.load(stream).items()}


def departure_from_average(tastes: Mapping[str, Taste], population: Sequence[str], users: Sequence[str],
                           images: Mapping[str, tuple[int, int, Optional[Box]]]) -> dict[str, float]:
    """How far each user's taste is from the population's: 1 - mean SRCC over ``images``
    (``{name: (width, height, person box or None)}``) between the user's noise-free scores of
    the GAIC candidates and the mean noise-free score of the ``population`` users."""
    departures = {user: [] for user in users}
    for width, height, human_box in images.values():
        crops = gaic_grid_candidates(width, height).tolist()
        average = np.mean([[taste_score(tastes[p], crop, human_box, width, height) for crop in crops]
                           for p in population], axis=0)
        for user in users:
            own = np.array([taste_score(tastes[user], crop, human_box, width, height) for crop in crops])
            departures[user].append(spearman(own, average))
    return {user: 1.0 - float(np.mean(values)) for user, values in departures.items()}
