"""Per-user crop ratings for personalized image cropping (PIC): format, loader, checks, converter.

The paper's per-user ratings are not public, so this project defines the format. Everything lives
in ``<data_root>/PIC`` (paths overridable in ``config_PIC.Config``)::

    users.json                {"train": [user ids], "test": [user ids]}
    annotations/<user>.json   {image name: {"bbox": [[x1, y1, x2, y2], ...], "score": [s, ...]}}
    images/<image name>       the photos, shared by all users
    human_bboxes.json         optional {image name: [x1, y1, x2, y2]}

* A user id is letters, digits, ``_``, ``-`` and ``.`` (not first); it names the user's file.
  Training users teach the shared model (pre-training, prior); test users are the new users a
  model is fine-tuned to, from a few of their images, and evaluated on the rest.
* Each user file is GAICD's ``image_crop.json`` for one person: that user's score of each
  candidate crop, boxes in pixels of the original image, at least ``MIN_CROPS`` (10) crops per
  image (Acc_K/10 needs them), any score scale (higher is better), any order. Users may rate
  different images and different candidate crops of the same image.
* Person boxes are GAICD's ``human_bboxes.json``: images without an entry have no person.

``load_pic_data`` reads and checks all of it and reports every problem (naming the user and the
image) in one error. ``PICDataset`` gives ``cropping_dataset``'s item dicts plus ``user``;
``PICImageDataset`` gives each image once with the users' average score of each crop (the
objective scores of the generated benchmark). ``convert_ratings_csv`` turns a table of
per-annotator ratings (``annotator,image,x1,y1,x2,y2,score``) into the format. The release's CSV
layout (:class:`ReleaseData`) is read by ``load_release_layout`` and converted both ways by
``write_release_layout`` and ``release_to_json``. ``convert_PIC_data.py`` runs the three converters
from the command line. The files are written by ``untils.pic_format``, which the generated
benchmark (``untils/pic_synthetic.py``) uses too; a converter writes a whole new folder or nothing.
"""
from __future__ import annotations

import bisect
import csv
import math
import os
import random
import shutil
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, NamedTuple, Optional, Sequence

import numpy as np
from PIL import Image
from torch.utils.data import ConcatDataset

from cropping_dataset import (CropAnnotation, DatasetError, ScoredCropDataset, check_boxes, load_json,
                              problems_error, read_crop_annotations, read_human_boxes)
from untils.atomic import write_folder_atomic
from untils.pic_format import (RELEASE_CSV_HEADER, RELEASE_FINETUNE_FOLDER, RELEASE_IMAGE_FOLDER,
                               RELEASE_PRETRAIN_FOLDER, RELEASE_PRIOR_FOLDER, USER_ID_PATTERN, copy_images,
                               write_pic_annotations, write_release_csv)
from untils.training import held_out_images, seeded_order

if TYPE_CHECKING:
    from config_PIC import Config

MIN_CROPS = 10
CSV_COLUMNS = ("annotator", "image", "x1", "y1", "x2", "y2", "score")
HEAT_MAP_FOLDER = "heat_maps"  # optional pseudo heat maps; PIC's model does not use them
BOX_KEY_DECIMALS = 3  # crops of the same image are the same crop when equal to this many decimals


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


def box_key(box: Sequence[float]) -> tuple[float, ...]:
    return tuple(round(float(v), BOX_KEY_DECIMALS) for v in box)


def union_crops(data: PICData, users: Sequence[str], names: Optional[Sequence[str]] = None
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
            for box, score in zip(entry.boxes, entry.scores):
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
    annotations = {name: CropAnnotation(np.stack(boxes[name]),
                                        np.array([total / count for total, count in totals[name]]))
                   for name in boxes}
    return annotations, crop_index


def split_user_images(user: str, names: Sequence[str], shots: int, val_images: int, test_fraction: float,
                      seed: int) -> UserSplit:
    """A test user's images: ``test_fraction`` held out for the report, then ``shots`` to fine-tune on,
    then up to ``val_images`` for model selection.

    The test images depend on (seed, user, images) only, so runs with 5, 10 or 20 shots report on
    the same images, and the smaller support sets are part of the larger ones.
    """
    order = seeded_order(names, seed, user)
    test_count = max(1, round(test_fraction * len(order)))
    test, pool = order[:test_count], order[test_count:]
    if len(pool) < shots + 1:
        raise ValueError(f"PIC user {user!r} has {len(order)} images: {test_count} are held out for testing, "
                         f"leaving {len(pool)}, but {shots} fine-tuning images and at least one validation "
                         "image are needed (lower --finetune_images or --user_test_fraction)")
    return UserSplit(support=pool[:shots], val=pool[shots:shots + val_images], test=test)


def best_crop_indices(scores: np.ndarray, count: int) -> np.ndarray:
    """Indices of the ``count`` highest scores; ties go to the crop listed first."""
    return np.argsort(-np.asarray(scores), kind="stable")[:count]


# ----------------------------------------------------------------------------------------------
# Loading and checking
# ----------------------------------------------------------------------------------------------

def _read_users(path: str, problems: list[str]) -> tuple[list[str], list[str]]:
    raw = load_json(path, "PIC users file")
    if not isinstance(raw, dict) or not all(isinstance(raw.get(k), list) for k in ("train", "test")):
        raise DatasetError(f"PIC users file {path} must hold {{\"train\": [user ids], \"test\": [user ids]}}")
    seen: dict[str, str] = {}
    for part in ("train", "test"):
        for user in raw[part]:
            if not isinstance(user, str) or not USER_ID_PATTERN.match(user):
                problems.append(f"{path}: user id {user!r} in '{part}' must be letters, digits, '_', '-' or '.' "
                                "(not first)")
            elif user in seen:
                problems.append(f"{path}: user {user!r} is listed twice ('{seen[user]}' and '{part}')")
            else:
                seen[user] = part
    if not raw["train"]:
        problems.append(f"{path}: no training users")
    return tuple([u for u in raw[part] if isinstance(u, str) and seen.get(u) == part] for part in ("train", "test"))


def _image_size(path: str) -> Optional[tuple[int, int]]:
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, SyntaxError, ValueError):
        return None


def load_pic_data(cfg: "Config") -> PICData:
    """Read and check ``cfg.PIC_path``; every problem is listed in one ``DatasetError``.

    Boxes up to 2% of a side outside their image are clipped (with a warning), as for GAICD.
    """
    if not os.path.isdir(cfg.PIC_path):
        raise FileNotFoundError(f"PIC folder not found: {cfg.PIC_path} (expected users.json, annotations/, "
                                "images/; see pic_dataset.py)")
    if not os.path.isdir(cfg.PIC_image):
        raise FileNotFoundError(f"PIC image folder not found: {cfg.PIC_image}")
    problems: list[str] = []
    train_users, test_users = _read_users(cfg.PIC_users, problems)
    human_boxes = read_human_boxes(cfg.PIC_human) if os.path.isfile(cfg.PIC_human) else {}
    sizes: dict[str, Optional[tuple[int, int]]] = {}
    annotations: dict[str, dict[str, CropAnnotation]] = {}
    clipped: list[str] = []
    for user in train_users + test_users:
        path = os.path.join(cfg.PIC_anno, f"{user}.json")
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
                sizes[name] = _image_size(os.path.join(cfg.PIC_image, name))
            if sizes[name] is None:
                problems.append(f"{where}: image {os.path.join(cfg.PIC_image, name)} is missing or unreadable")
                continue
            if len(entry.boxes) < MIN_CROPS:
                problems.append(f"{where}: {len(entry.boxes)} crops, at least {MIN_CROPS} are needed")
            if not np.all(np.isfinite(entry.scores)):
                problems.append(f"{where}: scores must be finite numbers")
            if len({box_key(box) for box in entry.boxes}) < len(entry.boxes):
                problems.append(f"{where}: the same crop is listed more than once")
            boxes, was_clipped, problem = check_boxes(entry.boxes, *sizes[name])
            if problem:
                problems.append(f"{where}: crop {problem}")
            if was_clipped:
                clipped.append(where)
            checked[name] = CropAnnotation(boxes, entry.scores)
        annotations[user] = checked
    for name, box in list(human_boxes.items()):
        if sizes.get(name) is not None:
            checked_box, _, problem = check_boxes(box.reshape(1, 4), *sizes[name])
            human_boxes[name] = checked_box.reshape(4)
            if problem:
                problems.append(f"{cfg.PIC_human}: image {name}: person box {problem}")
    if problems:
        raise problems_error(f"PIC dataset {cfg.PIC_path}", problems)
    if clipped:
        warnings.warn(f"PIC dataset: crops of {len(clipped)} rated image(s) ran up to 2% outside the image and "
                      f"were clipped (first: {clipped[0]})", stacklevel=2)
    return PICData(root=cfg.PIC_path, image_dir=cfg.PIC_image, train_users=train_users, test_users=test_users,
                   annotations=annotations, human_boxes=human_boxes,
                   image_sizes={name: size for name, size in sizes.items() if size is not None})


# ----------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------

class PICUserDataset(ScoredCropDataset):
    """One user's rated images (all, or ``names``): ``cropping_dataset`` items plus ``user``."""

    def __init__(self, cfg: "Config", data: PICData, user: str, names: Optional[Sequence[str]] = None,
                 augment: bool = False) -> None:
        rated = data.annotations.get(user)
        if rated is None:
            raise KeyError(f"unknown PIC user {user!r}; users: {', '.join(data.users)}")
        names = list(rated) if names is None else list(names)
        unrated = [name for name in names if name not in rated]
        if unrated:
            raise DatasetError(f"PIC user {user} has not rated {len(unrated)} of the images asked for "
                               f"(first: {unrated[0]})")
        self.user = user
        self.title = f"PIC user {user}"
        super().__init__(cfg, names, [data.image_path(name) for name in names], rated, data.human_boxes,
                         os.path.join(data.root, HEAT_MAP_FOLDER), False, cfg.keep_aspect_ratio, augment)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = super().__getitem__(index)
        item["user"] = self.user
        return item


class PICDataset(ConcatDataset):
    """(user, image) pairs of several users; ``names`` optionally limits each user's images."""

    def __init__(self, cfg: "Config", data: PICData, users: Sequence[str],
                 names: Optional[Mapping[str, Sequence[str]]] = None, augment: bool = False) -> None:
        if not users:
            raise ValueError("PICDataset needs at least one user")
        parts = [PICUserDataset(cfg, data, user, None if names is None else names[user], augment)
                 for user in users]
        super().__init__(parts)
        self.names = [name for part in parts for name in part.names]
        self.users = [part.user for part in parts for _ in part.names]

    def resized_size_of(self, index: int) -> tuple[int, int]:
        part = bisect.bisect_right(self.cumulative_sizes, index)
        offset = index - (self.cumulative_sizes[part - 1] if part else 0)
        return self.datasets[part].resized_size_of(offset)


class PICImageDataset(ScoredCropDataset):
    """Each image rated by ``users`` once, with the union of their crops and the mean score of each.

    ``crop_index[(user, name)]`` maps a user's crops of an image to this dataset's crops.
    """

    title = "PIC images"

    def __init__(self, cfg: "Config", data: PICData, users: Sequence[str], names: Optional[Sequence[str]] = None,
                 augment: bool = False) -> None:
        annotations, self.crop_index = union_crops(data, users, names)
        image_names = list(annotations) if names is None else [name for name in names if name in annotations]
        missing = sorted(set(names or ()) - set(annotations))
        if missing:
            raise DatasetError(f"PIC images: {len(missing)} image(s) asked for are rated by none of the "
                               f"{len(users)} users (first: {missing[0]})")
        self.users = list(users)
        super().__init__(cfg, image_names, [data.image_path(name) for name in image_names], annotations,
                         data.human_boxes, os.path.join(data.root, HEAT_MAP_FOLDER), False, cfg.keep_aspect_ratio,
                         augment)


# ----------------------------------------------------------------------------------------------
# The converter from per-annotator ratings (written with untils.pic_format)
# ----------------------------------------------------------------------------------------------

def split_users(users: Sequence[str], test_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded (train, test) split of user ids; at least one of each when there are two or more users."""
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction={test_fraction} must be in [0, 1)")
    order = sorted(users)
    random.Random(seed).shuffle(order)
    test_count = round(test_fraction * len(order))
    if test_fraction > 0 and len(order) > 1:
        test_count = min(max(test_count, 1), len(order) - 1)
    return sorted(order[test_count:]), sorted(order[:test_count])


class CropCsvLayout(NamedTuple):
    """A CSV of rated crops, one row per crop: the columns it must have, which one names the image,
    and which hold the box (four numbers, or one "[x1,y1,x2,y2]" text as the release's)."""
    columns: tuple[str, ...]
    image_column: str
    box_columns: tuple[str, ...]
    box_text: str  # how an error message names the box


RATINGS_CSV = CropCsvLayout(CSV_COLUMNS, "image", ("x1", "y1", "x2", "y2"), "x1, y1, x2, y2")
RELEASE_CSV = CropCsvLayout(RELEASE_CSV_HEADER, "name", ("bbox",), 'bbox "[x1,y1,x2,y2]"')


def _parse_box(row: Mapping[str, Optional[str]], columns: Sequence[str]) -> list[float]:
    texts = [row[column] or "" for column in columns]
    if len(texts) == 1:
        texts = texts[0].strip().strip("[]").split(",")
    if len(texts) != 4:
        raise ValueError("a box is four numbers")
    return [float(text) for text in texts]


def _read_crop_rows(path: str, layout: CropCsvLayout, where: Callable[[int], str],
                   problems: list[str]) -> Iterator[tuple[int, Mapping[str, str], str, list[float], float]]:
    """``(line, row, image, box, score)`` of each row of a CSV of rated crops with a readable, finite
    box and score and an image name. Every other row, and a header without ``layout.columns``,
    is appended to ``problems`` as ``where(line): ...``."""
    with open(path, newline="", encoding="utf-8") as stream:
        reader = csv.DictReader(stream)
        missing = [column for column in layout.columns if column not in (reader.fieldnames or [])]
        if missing:
            problems.append(f"{where(1)}: the header lacks column(s) {missing}; expected {','.join(layout.columns)}")
            return
        for line, row in enumerate(reader, start=2):
            image = (row[layout.image_column] or "").strip()
            try:
                box, score = _parse_box(row, layout.box_columns), float(row["score"])
            except (TypeError, ValueError):
                problems.append(f"{where(line)}: {layout.box_text} and score must be numbers, got "
                                f"{[row[column] for column in layout.box_columns + ('score',)]}")
                continue
            if not image:
                problems.append(f"{where(line)}: empty image name")
            elif not all(math.isfinite(v) for v in box + [score]):
                problems.append(f"{where(line)}: values must be finite")
            else:
                yield line, row, image, box, score


def read_ratings_csv(path: str) -> dict[str, dict[str, dict[str, list]]]:
    """``annotator,image,x1,y1,x2,y2,score`` rows (extra columns ignored) -> ``{user: {image: {bbox, score}}}``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"ratings CSV not found: {path}")
    problems: list[str] = []
    ratings: dict[str, dict[str, dict[str, list]]] = {}
    seen: set[tuple[str, str, tuple[float, ...]]] = set()
    for line, row, image, box, score in _read_crop_rows(path, RATINGS_CSV, lambda line: f"line {line}", problems):
        user = (row["annotator"] or "").strip()
        if not USER_ID_PATTERN.match(user):
            problems.append(f"line {line}: annotator {user!r} must be letters, digits, '_', '-' or '.' (not first)")
            continue
        key = (user, image, box_key(box))
        if key in seen:
            problems.append(f"line {line}: annotator {user} rates crop {box} of {image} twice")
            continue
        seen.add(key)
        entry = ratings.setdefault(user, {}).setdefault(image, {"bbox": [], "score": []})
        entry["bbox"].append(box)
        entry["score"].append(score)
    if problems:
        raise problems_error(f"ratings CSV {path}", problems)
    if not ratings:
        raise DatasetError(f"ratings CSV {path} has no rows")
    return ratings


def convert_ratings_csv(csv_path: str, out_root: str, image_dir: Optional[str] = None,
                        human_boxes: Optional[str] = None, test_fraction: float = 0.2, seed: int = 0,
                        overwrite: bool = False) -> dict[str, Any]:
    """Write ``<out_root>/PIC`` from a ratings CSV; returns ``{"path", "train", "test"}``.

    Users are split into train/test with ``split_users(test_fraction, seed)``. With ``image_dir`` the
    rated images are copied into ``PIC/images`` (a missing one is an error); without it, put them
    there yourself. ``human_boxes`` is a ``human_bboxes.json`` to copy alongside.
    """
    ratings = read_ratings_csv(csv_path)
    pic_dir = os.path.join(out_root, "PIC")
    images = sorted({name for user_ratings in ratings.values() for name in user_ratings})
    if image_dir is not None:
        missing = [name for name in images if not os.path.isfile(os.path.join(image_dir, name))]
        if missing:
            raise problems_error(f"images for {csv_path} in {image_dir}", [f"missing image {name}" for name in missing])
    boxes = None if human_boxes is None else {name: box.tolist() for name, box in read_human_boxes(human_boxes).items()}
    train, test = split_users(list(ratings), test_fraction, seed)
    for user_ratings in ratings.values():
        for entry in user_ratings.values():
            order = sorted(range(len(entry["score"])), key=lambda i: -entry["score"][i])
            entry["bbox"] = [entry["bbox"][i] for i in order]
            entry["score"] = [entry["score"][i] for i in order]

    def write(folder: str) -> None:
        write_pic_annotations(folder, train, test, ratings, boxes)
        os.makedirs(os.path.join(folder, "images"))  # without image_dir, the user puts the photos here
        if image_dir is not None:
            copy_images(images, lambda name: os.path.join(image_dir, name), os.path.join(folder, "images"))

    write_folder_atomic(pic_dir, overwrite, write)
    return {"path": pic_dir, "train": train, "test": test}


# ----------------------------------------------------------------------------------------------
# The release's layout (github Cooperxjt/PIC) and the converters between it and ours
# ----------------------------------------------------------------------------------------------

UserRatings = dict[str, CropAnnotation]  # image name -> crops (in file order) and scores


@dataclass
class RatedSplit:
    """One user's two files: ``train`` (fit on) and ``val`` (the release evaluates on it)."""
    train: UserRatings
    val: UserRatings


@dataclass
class ReleaseData:
    """The checked contents of a folder in the release's layout (``untils.pic_format``)::

        prior/<user>_train.csv, prior/<user>_val.csv          training users (prior stage)
        finetune/<N>/train/<user>_train.csv, <N>/val/<user>_val.csv   test users, N shots
        images/<name>                                          the photos the CSVs name
        pretrain/<user>/<image>                                user classification, one folder per user

    Each CSV has the header ``name,bbox,score``, one row per crop, ``bbox`` "[x1,y1,x2,y2]" in
    original pixels; an image's crops keep their file order (the official model's personal offset
    belongs to a position in that order). Splits are honoured as given.
    """
    root: str
    image_dir: str
    prior: dict[str, RatedSplit]
    finetune: dict[int, dict[str, RatedSplit]]
    pretrain: dict[str, list[str]]  # user -> image paths

    @property
    def train_users(self) -> list[str]:
        return sorted(self.prior)

    def image_path(self, name: str) -> str:
        return os.path.join(self.image_dir, name)


def _read_release_csv(path: str, user: str, image_dir: str, sizes: dict[str, Optional[tuple[int, int]]],
                      positions: Optional[int], problems: list[str]) -> UserRatings:
    """One user's CSV; every problem is appended to ``problems`` naming the user, file and row."""
    boxes: dict[str, list[list[float]]] = {}
    scores: dict[str, list[float]] = {}
    first_row: dict[str, int] = {}

    def where(line: int) -> str:
        return f"user {user}, {path}, row {line}"

    for line, _, name, box, score in _read_crop_rows(path, RELEASE_CSV, where, problems):
        if name not in sizes:
            sizes[name] = _image_size(os.path.join(image_dir, name))
        if sizes[name] is None:
            problems.append(f"{where(line)}: image {os.path.join(image_dir, name)} is missing or unreadable")
            continue
        checked, _, problem = check_boxes(np.asarray([box], dtype=np.float64), *sizes[name])
        if problem:
            problems.append(f"{where(line)}: crop {problem}")
            continue
        if box_key(checked[0]) in {box_key(seen) for seen in boxes.get(name, [])}:
            problems.append(f"{where(line)}: crop {box} of {name} is listed twice")
            continue
        first_row.setdefault(name, line)
        boxes.setdefault(name, []).append(checked[0].tolist())
        scores.setdefault(name, []).append(score)
    for name, listed in boxes.items():
        if len(listed) < MIN_CROPS:
            problems.append(f"{where(first_row[name])}: image {name} has {len(listed)} crops, at least {MIN_CROPS} "
                            "are needed")
        elif positions is not None and len(listed) != positions:
            problems.append(f"{where(first_row[name])}: image {name} has {len(listed)} crops; the official model "
                            f"scores exactly {positions} (--num_positions), one per fixed position")
    if not boxes and not any(problem.startswith(f"user {user}, {path}") for problem in problems):
        problems.append(f"user {user}, {path}, row 1: no crops")
    return {name: CropAnnotation(np.asarray(boxes[name]), np.asarray(scores[name])) for name in boxes}


def _release_users(folder: str, suffix: str) -> list[str]:
    return sorted(entry[:-len(suffix)] for entry in os.listdir(folder) if entry.endswith(suffix)) \
        if os.path.isdir(folder) else []


def load_release_layout(root: str, positions: Optional[int] = None) -> ReleaseData:
    """Read and check a folder in the release's layout (:class:`ReleaseData`); every problem
    (naming the user, the file and the row) is listed in one ``DatasetError``. ``positions``:
    the number of crops each image must have (the official model's fixed candidate count)."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"release-layout PIC folder not found: {root} (see pic_dataset.ReleaseData)")
    image_dir = os.path.join(root, RELEASE_IMAGE_FOLDER)
    problems: list[str] = []
    sizes: dict[str, Optional[tuple[int, int]]] = {}

    def read_pair(train_path: str, val_path: str, user: str) -> RatedSplit:
        pair = []
        for path in (train_path, val_path):
            if not os.path.isfile(path):
                problems.append(f"user {user}, {path}: file missing")
                pair.append({})
            else:
                pair.append(_read_release_csv(path, user, image_dir, sizes, positions, problems))
        return RatedSplit(*pair)

    prior_dir = os.path.join(root, RELEASE_PRIOR_FOLDER)
    prior = {user: read_pair(os.path.join(prior_dir, f"{user}_train.csv"), os.path.join(prior_dir, f"{user}_val.csv"),
                             user) for user in _release_users(prior_dir, "_train.csv")}
    finetune: dict[int, dict[str, RatedSplit]] = {}
    finetune_dir = os.path.join(root, RELEASE_FINETUNE_FOLDER)
    for entry in sorted(os.listdir(finetune_dir)) if os.path.isdir(finetune_dir) else []:
        if not entry.isdigit():
            problems.append(f"{os.path.join(finetune_dir, entry)}: expected folders named by N (5, 10, 20)")
            continue
        shots_dir = os.path.join(finetune_dir, entry)
        finetune[int(entry)] = {user: read_pair(os.path.join(shots_dir, "train", f"{user}_train.csv"),
                                                os.path.join(shots_dir, "val", f"{user}_val.csv"), user)
                                for user in _release_users(os.path.join(shots_dir, "train"), "_train.csv")}
    pretrain_dir = os.path.join(root, RELEASE_PRETRAIN_FOLDER)
    pretrain = {user: sorted(os.path.join(pretrain_dir, user, name) for name in os.listdir(os.path.join(pretrain_dir, user)))
                for user in sorted(os.listdir(pretrain_dir)) if os.path.isdir(os.path.join(pretrain_dir, user))} \
        if os.path.isdir(pretrain_dir) else {}
    for user, paths in pretrain.items():
        for path in paths:
            if _image_size(path) is None:
                problems.append(f"user {user}, {path}: not a readable image")
    if not prior:
        problems.append(f"{prior_dir}: no <user>_train.csv of training users")
    if problems:
        raise problems_error(f"release-layout PIC folder {root}", problems)
    return ReleaseData(root, image_dir, prior, finetune, pretrain)


def _merged_crops(files: Sequence[UserRatings]) -> dict[str, dict[tuple[float, ...], tuple[list[float], list[float]]]]:
    """Each image's crops in ``files`` (one crop: equal boxes by :func:`box_key`), in order of first
    appearance: ``{name: {box key: (the box as first given, every score given to it)}}``."""
    merged: dict[str, dict[tuple[float, ...], tuple[list[float], list[float]]]] = {}
    for user_ratings in files:
        for name, entry in user_ratings.items():
            crops = merged.setdefault(name, {})
            for box, score in zip(entry.boxes, entry.scores):
                crops.setdefault(box_key(box), (box.tolist(), []))[1].append(float(score))
    return merged


def rated_average(files: Sequence[UserRatings]) -> UserRatings:
    """Each image's crops (in order of first appearance) with the mean of the scores the files give
    them: the objective target of the official pre-training (the training users' average)."""
    return {name: CropAnnotation(np.asarray([box for box, _ in crops.values()]),
                                 np.asarray([np.mean(scores) for _, scores in crops.values()]))
            for name, crops in _merged_crops(files).items()}


def _as_json_entry(annotation: CropAnnotation) -> dict[str, list]:
    return {"bbox": annotation.boxes.tolist(), "score": annotation.scores.tolist()}


def _release_rows(data: PICData, user: str, names: Sequence[str]) -> dict[str, dict[str, list]]:
    return {name: _as_json_entry(data.annotations[user][name]) for name in names}


def write_release_layout(data: PICData, out_dir: str, shots: Sequence[int] = (5, 10, 20), val_fraction: float = 0.2,
                         test_fraction: float = 0.5, seed: int = 0, overwrite: bool = False) -> str:
    """Write ``data`` (our layout) in the release's layout under ``out_dir``; returns ``out_dir``.

    Training users: ``prior/<user>_train.csv`` and ``_val.csv`` (``held_out_images(val_fraction,
    seed)``), their images in ``pretrain/<user>/``. Test users: ``finetune/<N>/train`` = the N
    support images of :func:`split_user_images` and ``finetune/<N>/val`` = its test images (the
    same for every N, as the embedding variant reports on), so both variants see the same images.
    """
    splits = {n: {user: split_user_images(user, data.images_of(user), n, 0, test_fraction, seed)
                  for user in data.test_users} for n in shots}

    def write(folder: str) -> None:
        names = sorted({name for user in data.users for name in data.images_of(user)})
        copy_images(names, data.image_path, os.path.join(folder, RELEASE_IMAGE_FOLDER))
        for user in data.train_users:
            held_out = set(held_out_images(data.images_of(user), val_fraction, seed))
            train = [name for name in data.images_of(user) if name not in held_out]
            prior_dir = os.path.join(folder, RELEASE_PRIOR_FOLDER)
            write_release_csv(os.path.join(prior_dir, f"{user}_train.csv"), _release_rows(data, user, train))
            write_release_csv(os.path.join(prior_dir, f"{user}_val.csv"),
                              _release_rows(data, user, [n for n in data.images_of(user) if n in held_out]))
            user_dir = os.path.join(folder, RELEASE_PRETRAIN_FOLDER, user)
            os.makedirs(user_dir)
            for name in train:
                shutil.copy2(data.image_path(name), os.path.join(user_dir, name.replace("/", "_")))
        for n, by_user in splits.items():
            shots_dir = os.path.join(folder, RELEASE_FINETUNE_FOLDER, str(n))
            for user, split in by_user.items():
                write_release_csv(os.path.join(shots_dir, "train", f"{user}_train.csv"),
                                  _release_rows(data, user, split.support))
                write_release_csv(os.path.join(shots_dir, "val", f"{user}_val.csv"),
                                  _release_rows(data, user, split.test))

    write_folder_atomic(out_dir, overwrite, write)
    return out_dir


def release_to_json(release: ReleaseData, out_root: str, overwrite: bool = False) -> str:
    """Write ``<out_root>/PIC`` (our layout) from a release-layout folder; returns its path.

    The prior's users are the training users, the fine-tuning users the test users; a user's
    ratings are the union of all that user's files (a crop rated twice must have one score). Our
    layout holds no splits: the N-shot files become one set per user.
    """
    pic_dir = os.path.join(out_root, "PIC")
    files: dict[str, list[UserRatings]] = {}
    for user, split in release.prior.items():
        files.setdefault(user, []).extend([split.train, split.val])
    test_users = sorted({user for by_user in release.finetune.values() for user in by_user} - set(release.prior))
    for by_user in release.finetune.values():
        for user, split in by_user.items():
            files.setdefault(user, []).extend([split.train, split.val])
    problems: list[str] = []
    ratings: dict[str, dict[str, dict[str, list]]] = {}
    for user, ratings_files in files.items():
        ratings[user] = {}
        for name, crops in _merged_crops(ratings_files).items():
            problems += [f"user {user}, image {name}: crop {box} has different scores in the release's files "
                         f"({sorted(set(scores))})" for box, scores in crops.values() if len(set(scores)) > 1]
            ratings[user][name] = {"bbox": [box for box, _ in crops.values()],
                                   "score": [scores[0] for _, scores in crops.values()]}
    if problems:
        raise problems_error(f"release-layout PIC folder {release.root}", problems)

    def write(folder: str) -> None:
        names = sorted({name for user_ratings in ratings.values() for name in user_ratings})
        copy_images(names, release.image_path, os.path.join(folder, "images"))
        write_pic_annotations(folder, release.train_users, test_users, ratings)

    write_folder_atomic(pic_dir, overwrite, write)
    return pic_dir
