"""Per-user crop ratings for personalized image cropping (PIC): our folder layout, its loader and
the datasets over it. The checks it shares with the release's layout are ``untils.pic_checks``;
that layout's reader is ``untils.pic_release_layout`` (the converters in convert_PIC_data.py use both).

Our layout, ``<data_root>/PIC`` (paths overridable in ``config_PIC.Config``)::

    users.json                {"train": [user ids], "test": [user ids]}
    annotations/<user>.json   {image name: {"bbox": [[x1, y1, x2, y2], ...], "score": [s, ...]}}
    images/<image name>       the photos, shared by all users
    human_bboxes.json         optional {image name: [x1, y1, x2, y2]}
    pretrain/<user>/<image>   optional: the release's user-classification photos, kept for round trips

A user id is letters, digits, ``_``, ``-`` and ``.`` (not first); each image of a user has at
least ``MIN_CROPS`` distinct crops inside the image (``untils.pic_checks.check_rated_crops``);
image names are plain paths inside ``images/`` (``untils.safe_paths``). The release's CSV layout is
``untils.pic_release_layout.ReleaseData``; the README describes both.
"""

from __future__ import annotations

import bisect
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from torch.utils.data import ConcatDataset

from cropping_dataset import ScoredCropDataset
from untils.dataset_errors import DatasetError, problems_error
from untils.dataset_files import CropAnnotation, check_boxes, load_json, read_crop_annotations, read_human_boxes
from untils.pic_checks import best_crop_indices, box_key, check_rated_crops, crop_position, named_image_size
from untils.pic_format import RELEASE_PRETRAIN_FOLDER, USER_ID_PATTERN
from untils.training import seeded_order

if TYPE_CHECKING:
    from config_PIC import Config

PRETRAIN_FOLDER = RELEASE_PRETRAIN_FOLDER  # our layout keeps the release's pretrain/ under the same name
HEAT_MAP_FOLDER = "heat_maps"  # optional pseudo heat maps; PIC's model does not use them


@dataclass(frozen=True)
class UserSplit:
    """A test user's images: ``support`` to fine-tune on, ``val`` to pick the step, ``test`` to report."""

    support: list[str]
    val: list[str]
    test: list[str]


@dataclass
class PICData:
    """The checked contents of a PIC folder; boxes in original pixels, clipped to the image."""

    root: str
    image_dir: str
    train_users: list[str]
    test_users: list[str]
    annotations: dict[str, dict[str, CropAnnotation]]  # user -> image name -> crops and scores
    human_boxes: dict[str, np.ndarray]
    image_sizes: dict[str, tuple[int, int]]

    @property
    def users(self) -> list[str]:
        return self.train_users + self.test_users

    def images_of(self, user: str) -> list[str]:
        if user not in self.annotations:
            raise KeyError(f"unknown PIC user {user!r}; users: {', '.join(self.users)}")
        return list(self.annotations[user])

    def image_path(self, name: str) -> str:
        return os.path.join(self.image_dir, name)

    def best_crops(self, user: str, name: str, count: int) -> np.ndarray:
        """The user's ``count`` highest-scored crops of an image (ties: the one listed first), (count, 4)."""
        entry = self.annotations[user][name]
        return entry.boxes[best_crop_indices(entry.scores, count)]


def union_crops(
    data: PICData, users: Sequence[str], names: Sequence[str] | None = None
) -> tuple[dict[str, CropAnnotation], dict[tuple[str, str], np.ndarray]]:
    """Every crop the ``users`` rated on each image, with their mean score.

    Returns ``(annotations, crop_index)``: ``annotations[name]`` holds the union of the users'
    crops of that image (in order of first appearance) and the mean of the scores given to each;
    ``crop_index[(user, name)]`` maps that user's crops to rows of the union.
    """
    wanted = None if names is None else set(names)
    rows: dict[str, dict[tuple[float, ...], int]] = {}
    boxes: dict[str, list[np.ndarray]] = {}
    totals: dict[str, list[list[float]]] = {}
    crop_index: dict[tuple[str, str], np.ndarray] = {}
    for user in users:
        for name, entry in data.annotations[user].items():
            if wanted is not None and name not in wanted:
                continue
            image_rows = rows.setdefault(name, {})
            image_boxes, image_totals = boxes.setdefault(name, []), totals.setdefault(name, [])
            index = []
            for box, score in zip(entry.boxes, entry.scores, strict=True):
                key = box_key(box)
                if key not in image_rows:
                    image_rows[key] = len(image_boxes)
                    image_boxes.append(box)
                    image_totals.append([0.0, 0])
                row = image_rows[key]
                image_totals[row][0] += float(score)
                image_totals[row][1] += 1
                index.append(row)
            crop_index[(user, name)] = np.asarray(index, dtype=np.int64)
    annotations = {
        name: CropAnnotation(np.stack(boxes[name]), np.array([total / count for total, count in totals[name]]))
        for name in boxes
    }
    return annotations, crop_index


def split_user_images(
    user: str,
    names: Sequence[str],
    shots: int,
    val_images: int,
    test_fraction: float,
    seed: int,
    options: tuple[str, str] = ("--finetune_images", "--user_test_fraction"),
) -> UserSplit:
    """A test user's images: ``test_fraction`` held out for the report, then ``shots`` to fine-tune on,
    then up to ``val_images`` for model selection. ``options``: the caller's options that set
    ``shots`` and ``test_fraction``, named when the user has too few images.

    The test images depend on (seed, user, images) only, so runs with 5, 10 or 20 shots report on
    the same images, and the smaller support sets are part of the larger ones.
    """
    order = seeded_order(names, seed, user)
    test_count = max(1, round(test_fraction * len(order)))
    test, pool = order[:test_count], order[test_count:]
    if len(pool) < shots + 1:
        raise ValueError(
            f"PIC user {user!r} has {len(order)} images: {test_count} are held out for testing, "
            f"leaving {len(pool)}, but {shots} fine-tuning images and at least one validation "
            f"image are needed (lower {options[0]} or {options[1]})"
        )
    return UserSplit(support=pool[:shots], val=pool[shots : shots + val_images], test=test)


# ----------------------------------------------------------------------------------------------
# Checking and loading
# ----------------------------------------------------------------------------------------------


def _read_users(path: str, problems: list[str]) -> tuple[list[str], list[str]]:
    raw = load_json(path, "PIC users file")
    if not isinstance(raw, dict) or not all(isinstance(raw.get(k), list) for k in ("train", "test")):
        raise DatasetError(f'PIC users file {path} must hold {{"train": [user ids], "test": [user ids]}}')
    seen: dict[str, str] = {}
    for part in ("train", "test"):
        for user in raw[part]:
            if not isinstance(user, str) or not USER_ID_PATTERN.match(user):
                problems.append(
                    f"{path}: user id {user!r} in '{part}' must be letters, digits, '_', '-' or '.' (not first)"
                )
            elif user in seen:
                problems.append(f"{path}: user {user!r} is listed twice ('{seen[user]}' and '{part}')")
            else:
                seen[user] = part
    if not raw["train"]:
        problems.append(f"{path}: no training users")
    train, test = ([u for u in raw[part] if isinstance(u, str) and seen.get(u) == part] for part in ("train", "test"))
    return train, test


def config_path(value: str | None, option: str) -> str:
    """A path option of ``config_PIC.Config``, which derives every one left out from ``data_root``:
    None is a config whose ``__post_init__`` never ran."""
    if value is None:
        raise ValueError(f"config option {option} is not set")
    return value


def load_pic_data(cfg: Config) -> PICData:
    """Read and check ``cfg.PIC_path``; every problem is listed in one ``DatasetError``.

    Boxes up to 2% of a side outside their image are clipped (with a warning), as for GAICD.
    """
    root, image_dir = config_path(cfg.PIC_path, "PIC_path"), config_path(cfg.PIC_image, "PIC_image")
    users_file, annotation_dir = config_path(cfg.PIC_users, "PIC_users"), config_path(cfg.PIC_anno, "PIC_anno")
    human_file = config_path(cfg.PIC_human, "PIC_human")
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"PIC folder not found: {root} (expected users.json, annotations/, images/; see pic_dataset.py)"
        )
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(f"PIC image folder not found: {image_dir}")
    problems: list[str] = []
    train_users, test_users = _read_users(users_file, problems)
    human_boxes = read_human_boxes(human_file) if os.path.isfile(human_file) else {}
    sizes: dict[str, tuple[int, int] | None] = {}
    image_problems: dict[str, str | None] = {}
    annotations: dict[str, dict[str, CropAnnotation]] = {}
    clipped: list[str] = []
    for user in train_users + test_users:
        path = os.path.join(annotation_dir, f"{user}.json")
        try:
            entries = read_crop_annotations(path, "bbox", "score")
        except (FileNotFoundError, DatasetError) as error:
            problems.append(f"user {user}: {error}")
            continue
        if not entries:
            problems.append(f"user {user}: {path} rates no images")
        checked = {}
        for name, entry in entries.items():
            where = f"user {user}, image {name}"
            if name not in sizes:
                sizes[name], image_problems[name] = named_image_size(image_dir, name)
            if sizes[name] is None:
                problems.append(f"{where}: {image_problems[name]}")
                continue
            boxes, was_clipped, crop_problems = check_rated_crops(entry.boxes, entry.scores, sizes[name])
            problems += [f"{where}: {crop_position(problem.crops)}{problem.text}" for problem in crop_problems]
            if was_clipped:
                clipped.append(where)
            checked[name] = CropAnnotation(boxes, entry.scores)
        annotations[user] = checked
    for name, box in list(human_boxes.items()):
        size = sizes.get(name)
        if size is not None:
            checked_box, _, problem = check_boxes(box.reshape(1, 4), *size)
            human_boxes[name] = checked_box.reshape(4)
            if problem:
                problems.append(f"{human_file}: image {name}: person box {problem}")
    if problems:
        raise problems_error(f"PIC dataset {root}", problems)
    if clipped:
        warnings.warn(
            f"PIC dataset: crops of {len(clipped)} rated image(s) ran up to 2% outside the image and "
            f"were clipped (first: {clipped[0]})",
            stacklevel=2,
        )
    return PICData(
        root=root,
        image_dir=image_dir,
        train_users=train_users,
        test_users=test_users,
        annotations=annotations,
        human_boxes=human_boxes,
        image_sizes={name: size for name, size in sizes.items() if size is not None},
    )


# ----------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------


class PICUserDataset(ScoredCropDataset):
    """One user's rated images (all, or ``names``): ``cropping_dataset`` items plus ``user``."""

    def __init__(
        self, cfg: Config, data: PICData, user: str, names: Sequence[str] | None = None, augment: bool = False
    ) -> None:
        rated = data.annotations.get(user)
        if rated is None:
            raise KeyError(f"unknown PIC user {user!r}; users: {', '.join(data.users)}")
        names = list(rated) if names is None else list(names)
        unrated = [name for name in names if name not in rated]
        if unrated:
            raise DatasetError(
                f"PIC user {user} has not rated {len(unrated)} of the images asked for (first: {unrated[0]})"
            )
        self.user = user
        self.title = f"PIC user {user}"
        super().__init__(
            cfg,
            names,
            [data.image_path(name) for name in names],
            rated,
            data.human_boxes,
            os.path.join(data.root, HEAT_MAP_FOLDER),
            False,
            cfg.keep_aspect_ratio,
            augment,
        )

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = super().__getitem__(index)
        item["user"] = self.user
        return item


class PICDataset(ConcatDataset):
    """(user, image) pairs of several users; ``names`` optionally limits each user's images."""

    def __init__(
        self,
        cfg: Config,
        data: PICData,
        users: Sequence[str],
        names: Mapping[str, Sequence[str]] | None = None,
        augment: bool = False,
    ) -> None:
        if not users:
            raise ValueError("PICDataset needs at least one user")
        parts = [PICUserDataset(cfg, data, user, None if names is None else names[user], augment) for user in users]
        super().__init__(parts)
        self.parts = parts  # ConcatDataset.datasets, known to be PICUserDataset
        self.names = [name for part in parts for name in part.names]
        self.users = [part.user for part in parts for _ in part.names]

    def resized_size_of(self, index: int) -> tuple[int, int]:
        part = bisect.bisect_right(self.cumulative_sizes, index)
        offset = index - (self.cumulative_sizes[part - 1] if part else 0)
        return self.parts[part].resized_size_of(offset)


class PICImageDataset(ScoredCropDataset):
    """Each image rated by ``users`` once, with the union of their crops and the mean score of each.

    ``crop_index[(user, name)]`` maps a user's crops of an image to this dataset's crops.
    """

    title = "PIC images"

    def __init__(
        self,
        cfg: Config,
        data: PICData,
        users: Sequence[str],
        names: Sequence[str] | None = None,
        augment: bool = False,
    ) -> None:
        annotations, self.crop_index = union_crops(data, users, names)
        image_names = list(annotations) if names is None else [name for name in names if name in annotations]
        missing = sorted(set(names or ()) - set(annotations))
        if missing:
            raise DatasetError(
                f"PIC images: {len(missing)} image(s) asked for are rated by none of the "
                f"{len(users)} users (first: {missing[0]})"
            )
        self.users = list(users)
        super().__init__(
            cfg,
            image_names,
            [data.image_path(name) for name in image_names],
            annotations,
            data.human_boxes,
            os.path.join(data.root, HEAT_MAP_FOLDER),
            False,
            cfg.keep_aspect_ratio,
            augment,
        )
