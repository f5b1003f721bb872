"""Per-user crop ratings for personalized image cropping (PIC): the two folder layouts, their
loaders and the checks both apply (the converters in convert_PIC_data.py reuse them).

Our layout, ``<data_root>/PIC`` (paths overridable in ``config_PIC.Config``)::

    users.json                {"train": [user ids], "test": [user ids]}
    annotations/<user>.json   {image name: {"bbox": [[x1, y1, x2, y2], ...], "score": [s, ...]}}
    images/<image name>       the photos, shared by all users
    human_bboxes.json         optional {image name: [x1, y1, x2, y2]}
    pretrain/<user>/<image>   optional: the release's user-classification photos, kept for round trips

A user id is letters, digits, ``_``, ``-`` and ``.`` (not first); each image of a user has at
least ``MIN_CROPS`` distinct crops inside the image (:func:`check_rated_crops`); image names are
plain paths inside ``images/`` (``untils.safe_paths``). The release's CSV layout is
:class:`ReleaseData`; the README describes both.
"""

from __future__ import annotations

import bisect
import codecs
import csv
import io
import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from PIL import Image
from torch.utils.data import ConcatDataset

from cropping_dataset import ScoredCropDataset
from untils.dataset_errors import DatasetError, problems_error
from untils.dataset_files import CropAnnotation, check_boxes, load_json, read_crop_annotations, read_human_boxes
from untils.pic_format import (
    RELEASE_CSV_HEADER,
    RELEASE_FINETUNE_FOLDER,
    RELEASE_IMAGE_FOLDER,
    RELEASE_PRETRAIN_FOLDER,
    RELEASE_PRIOR_FOLDER,
    USER_ID_PATTERN,
)
from untils.safe_paths import UnsafeNameError, check_name, resolve_inside
from untils.training import seeded_order

if TYPE_CHECKING:
    from config_PIC import Config

MIN_CROPS = 10
PRETRAIN_FOLDER = RELEASE_PRETRAIN_FOLDER  # our layout keeps the release's pretrain/ under the same name
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


def box_key(box: Iterable[float]) -> tuple[float, ...]:
    return tuple(round(float(v), BOX_KEY_DECIMALS) for v in box)


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


def best_crop_indices(scores: np.ndarray, count: int) -> np.ndarray:
    """Indices of the ``count`` highest scores; ties go to the crop listed first."""
    return np.argsort(-np.asarray(scores), kind="stable")[:count]


# ----------------------------------------------------------------------------------------------
# Checking and loading
# ----------------------------------------------------------------------------------------------


class CropProblem(NamedTuple):
    """What is wrong with a user's crops of one image: ``crops`` (positions in the image's list;
    empty: the image as a whole) and ``text``, which names no position so callers can name rows."""

    crops: tuple[int, ...]
    text: str


def check_rated_crops(
    boxes: np.ndarray, scores: np.ndarray, size: tuple[int, int] | None
) -> tuple[np.ndarray, bool, list[CropProblem]]:
    """The one rule for a user's crops (N, 4) and scores (N,) of one image, for every loader and
    converter: at least ``MIN_CROPS`` crops, finite scores, no crop twice (:func:`box_key`), and
    each box valid for the ``size`` (width, height) image by ``untils.dataset_files.check_boxes``
    (clipped when slightly outside). ``size`` None (image not at hand): boxes are checked for
    emptiness only. Returns ``(boxes, clipped, problems)``."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    problems = []
    if len(boxes) < MIN_CROPS:
        problems.append(CropProblem((), f"{len(boxes)} crops, at least {MIN_CROPS} are needed"))
    not_finite = tuple(int(i) for i in np.flatnonzero(~np.isfinite(scores)))
    if not_finite:
        problems.append(CropProblem(not_finite, "scores must be finite numbers"))
    first_of: dict[tuple[float, ...], int] = {}
    checked, clipped = boxes.copy(), False
    width, height = size if size is not None else (math.inf, math.inf)  # no image: no bounds to check
    for index, box in enumerate(boxes):
        first = first_of.setdefault(box_key(box), index)
        if first != index:
            problems.append(CropProblem((first, index), f"the same crop {box.tolist()} is listed more than once"))
        fixed, was_clipped, problem = check_boxes(box.reshape(1, 4), width, height)
        if problem:  # check_boxes names the one box it was given "box 0"
            problems.append(CropProblem((index,), problem.removeprefix("box 0 ")))
        checked[index], clipped = fixed[0], clipped or was_clipped
    return checked, clipped, problems


def image_size(path: str) -> tuple[int, int] | None:
    """(width, height) of the image at ``path``; None when it is missing or unreadable."""
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, SyntaxError, ValueError):
        return None


def named_image_size(folder: str, name: str) -> tuple[tuple[int, int] | None, str | None]:
    """``(size, problem)`` of the image ``name`` in ``folder``: the name must keep inside the folder
    (``untils.safe_paths``) and the image be readable; ``problem`` says which failed."""
    try:
        path = resolve_inside(folder, name)
    except UnsafeNameError as error:
        return None, str(error)
    size = image_size(path)
    return size, None if size is not None else f"image {path} is missing or unreadable"


def read_pretrain_folder(folder: str, problems: list[str]) -> dict[str, list[str]]:
    """``{user: image paths}`` of a ``pretrain/<user>/<image>`` folder (none: ``{}``); a file that
    leads outside it or is no readable image is appended to ``problems``."""
    if not os.path.isdir(folder):
        return {}
    pretrain: dict[str, list[str]] = {}
    for user in sorted(os.listdir(folder)):
        try:
            user_dir = resolve_inside(folder, user)
        except UnsafeNameError as error:
            problems.append(f"{folder}: {error}")
            continue
        if not os.path.isdir(user_dir):
            problems.append(f"{user_dir}: expected one folder of images per user")
            continue
        pretrain[user] = []
        for name in sorted(os.listdir(user_dir)):
            _, problem = named_image_size(user_dir, name)
            if problem:
                problems.append(f"user {user}: {problem}")
            else:
                pretrain[user].append(os.path.join(user_dir, name))
    return pretrain


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


def crop_position(crops: Sequence[int]) -> str:
    """How a loader names the crops of a :class:`CropProblem` ("crop box 3: ", "crop boxes 4, 5: ")."""
    return "" if not crops else f"crop box{'es' if len(crops) > 1 else ''} {', '.join(map(str, crops))}: "


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


# ----------------------------------------------------------------------------------------------
# The release's layout (github Cooperxjt/PIC)
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
    belongs to a position in that order). Splits are honoured as given. ``ignored``: the files in
    prior/ and finetune/ that name no user's CSV.
    """

    root: str
    image_dir: str
    prior: dict[str, RatedSplit]
    finetune: dict[int, dict[str, RatedSplit]]
    pretrain: dict[str, list[str]]  # user -> image paths
    ignored: list[str]

    @property
    def train_users(self) -> list[str]:
        return sorted(self.prior)

    def image_path(self, name: str) -> str:
        return os.path.join(self.image_dir, name)


class CropCsvLayout(NamedTuple):
    """A CSV of rated crops, one row per crop: the columns it must have, which one names the image,
    which hold the box (four numbers, or one "[x1,y1,x2,y2]" text as the release's), and how an
    error names a row."""

    columns: tuple[str, ...]
    image_column: str
    box_columns: tuple[str, ...]
    box_text: str  # how an error message names the box
    row_word: str


RELEASE_CSV = CropCsvLayout(RELEASE_CSV_HEADER, "name", ("bbox",), 'bbox "[x1,y1,x2,y2]"', "row")


def rows_text(layout: CropCsvLayout, lines: Sequence[int]) -> str:
    """ "row 4" or "rows 4, 9" (the layout's word for a row)."""
    return f"{layout.row_word}{'s' if len(lines) > 1 else ''} {', '.join(map(str, lines))}"


def _parse_box(row: Mapping[str, str | None], columns: Sequence[str]) -> list[float]:
    texts = [row[column] or "" for column in columns]
    if len(texts) == 1:
        texts = texts[0].strip().strip("[]").split(",")
    if len(texts) != 4:
        raise ValueError("a box is four numbers")
    return [float(text) for text in texts]


def read_csv_text(path: str) -> str:
    """The text of a UTF-8 CSV (a leading byte-order mark dropped); any other encoding is one
    ``DatasetError`` naming the file and the first byte that is not UTF-8."""
    with open(path, "rb") as stream:
        data = stream.read()
    start = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[start:].decode("utf-8")
    except UnicodeDecodeError as error:
        offset = start + error.start
        raise DatasetError(
            f"{path} is not UTF-8 text: byte {offset} is 0x{data[offset]:02x}; save the CSV as UTF-8"
        ) from None


def read_crop_rows(
    path: str, layout: CropCsvLayout, where: Callable[[str], str], problems: list[str]
) -> Iterator[tuple[int, Mapping[str, str], str, list[float], float]]:
    """``(line, row, image, box, score)`` of each row of a CSV of rated crops with a readable, finite
    box and score and a plain image name (``untils.safe_paths.check_name``). Every other row, and
    a header without ``layout.columns``, is appended to ``problems`` as ``where("row 4"): ...``."""
    stream = io.StringIO(read_csv_text(path), newline="")
    reader = csv.DictReader(stream)
    try:
        missing = [column for column in layout.columns if column not in (reader.fieldnames or [])]
        if missing:
            problems.append(
                f"{where(rows_text(layout, [1]))}: the header lacks column(s) {missing}; expected "
                f"{','.join(layout.columns)}"
            )
            return
        for line, row in enumerate(reader, start=2):
            at = where(rows_text(layout, [line]))
            image = (row[layout.image_column] or "").strip()
            try:
                box, score = _parse_box(row, layout.box_columns), float(row["score"])
            except (TypeError, ValueError):
                problems.append(
                    f"{at}: {layout.box_text} and score must be numbers, got "
                    f"{[row[column] for column in layout.box_columns + ('score',)]}"
                )
                continue
            if not image:
                problems.append(f"{at}: empty image name")
            elif not all(math.isfinite(v) for v in box + [score]):
                problems.append(f"{at}: values must be finite")
            else:
                try:
                    check_name(image)
                except UnsafeNameError as error:
                    problems.append(f"{at}: {error}")
                    continue
                yield line, row, image, box, score
    except csv.Error as error:
        raise DatasetError(f"{path}, {rows_text(layout, [reader.line_num])}: not a readable CSV ({error})") from None


def check_rated_rows(
    layout: CropCsvLayout,
    rows: Mapping[str, Sequence[tuple[int, list[float], float]]],
    sizes: Mapping[str, tuple[int, int] | None],
    where: Callable[[str], str],
    problems: list[str],
) -> tuple[UserRatings, bool]:
    """One user's CSV rows ``{image: [(line, box, score), ...]}`` through :func:`check_rated_crops`
    (``sizes[image]`` None: not at hand); every problem is appended naming its rows. Returns the
    checked ``{image: crops}`` (boxes clipped as the loader clips them) and whether any was clipped."""
    ratings, clipped = {}, False
    for name, image_rows in rows.items():
        lines = [line for line, _, _ in image_rows]
        scores = np.asarray([score for _, _, score in image_rows])
        boxes, was_clipped, crop_problems = check_rated_crops(
            np.asarray([box for _, box, _ in image_rows]), scores, sizes.get(name)
        )
        problems += [
            f"{where(rows_text(layout, [lines[i] for i in problem.crops] or lines[:1]))}: image {name}: {problem.text}"
            for problem in crop_problems
        ]
        ratings[name], clipped = CropAnnotation(boxes, scores), clipped or was_clipped
    return ratings, clipped


def _read_release_csv(
    path: str,
    user: str,
    image_dir: str,
    sizes: dict[str, tuple[tuple[int, int] | None, str | None]],
    positions: int | None,
    positions_option: str,
    problems: list[str],
) -> UserRatings:
    """One user's CSV; every problem is appended to ``problems`` naming the user, file and row."""

    def where(rows: str) -> str:
        return f"user {user}, {path}, {rows}"

    rows: dict[str, list[tuple[int, list[float], float]]] = {}
    before = len(problems)
    for line, _, name, box, score in read_crop_rows(path, RELEASE_CSV, where, problems):
        if name not in sizes:
            sizes[name] = named_image_size(image_dir, name)
        size, problem = sizes[name]
        if size is None:
            problems.append(f"{where(rows_text(RELEASE_CSV, [line]))}: {problem}")
            continue
        rows.setdefault(name, []).append((line, box, score))
    ratings, _ = check_rated_rows(RELEASE_CSV, rows, {name: sizes[name][0] for name in rows}, where, problems)
    for name, image_rows in rows.items():
        if positions is not None and len(image_rows) != positions:
            problems.append(
                f"{where(rows_text(RELEASE_CSV, [image_rows[0][0]]))}: image {name} has "
                f"{len(image_rows)} crops; the official model scores exactly {positions} "
                f"({positions_option}), one per fixed position"
            )
    if not rows and len(problems) == before:
        problems.append(f"{where(rows_text(RELEASE_CSV, [1]))}: no crops")
    return ratings


def _release_users(folders: Mapping[str, Sequence[str]], ignored: list[str]) -> list[str]:
    """The users with a ``<user><suffix>`` file in any ``folder`` of ``{folder: suffixes}``; every
    other file there goes to ``ignored``."""
    users = set()
    for folder, suffixes in folders.items():
        for entry in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
            suffix = next((suffix for suffix in suffixes if entry.endswith(suffix) and len(entry) > len(suffix)), None)
            if suffix is not None:
                users.add(entry[: -len(suffix)])
            elif not os.path.isdir(os.path.join(folder, entry)):
                ignored.append(os.path.join(folder, entry))
    return sorted(users)


def load_release_layout(
    root: str, positions: int | None = None, positions_option: str = "--num_positions"
) -> ReleaseData:
    """Read and check a folder in the release's layout (:class:`ReleaseData`); every problem
    (naming the user, the file and the row) is listed in one ``DatasetError``. ``positions``:
    the number of crops each image must have (the official model's fixed candidate count), set by
    the caller's option ``positions_option``."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"release-layout PIC folder not found: {root} (see pic_dataset.ReleaseData)")
    image_dir = os.path.join(root, RELEASE_IMAGE_FOLDER)
    problems: list[str] = []
    ignored: list[str] = []
    sizes: dict[str, tuple[tuple[int, int] | None, str | None]] = {}

    def read_pair(train_path: str, val_path: str, user: str) -> RatedSplit:
        pair: list[UserRatings] = []
        for path in (train_path, val_path):
            if not os.path.isfile(path):
                problems.append(f"user {user}, {path}: file missing")
                pair.append({})
            else:
                pair.append(_read_release_csv(path, user, image_dir, sizes, positions, positions_option, problems))
        return RatedSplit(*pair)

    prior_dir = os.path.join(root, RELEASE_PRIOR_FOLDER)
    prior = {
        user: read_pair(os.path.join(prior_dir, f"{user}_train.csv"), os.path.join(prior_dir, f"{user}_val.csv"), user)
        for user in _release_users({prior_dir: ("_train.csv", "_val.csv")}, ignored)
    }
    finetune: dict[int, dict[str, RatedSplit]] = {}
    finetune_dir = os.path.join(root, RELEASE_FINETUNE_FOLDER)
    for entry in sorted(os.listdir(finetune_dir)) if os.path.isdir(finetune_dir) else []:
        if not entry.isdigit():
            problems.append(f"{os.path.join(finetune_dir, entry)}: expected folders named by N (5, 10, 20)")
            continue
        train_dir, val_dir = (os.path.join(finetune_dir, entry, part) for part in ("train", "val"))
        finetune[int(entry)] = {
            user: read_pair(
                os.path.join(train_dir, f"{user}_train.csv"), os.path.join(val_dir, f"{user}_val.csv"), user
            )
            for user in _release_users({train_dir: ("_train.csv",), val_dir: ("_val.csv",)}, ignored)
        }
    pretrain = read_pretrain_folder(os.path.join(root, RELEASE_PRETRAIN_FOLDER), problems)
    if not prior:
        problems.append(f"{prior_dir}: no <user>_train.csv of training users")
    if problems:
        raise problems_error(f"release-layout PIC folder {root}", problems)
    return ReleaseData(root, image_dir, prior, finetune, pretrain, ignored)


def merged_crops(files: Sequence[UserRatings]) -> dict[str, dict[tuple[float, ...], tuple[list[float], list[float]]]]:
    """Each image's crops in ``files`` (one crop: equal boxes by :func:`box_key`), in order of first
    appearance: ``{name: {box key: (the box as first given, every score given to it)}}``."""
    merged: dict[str, dict[tuple[float, ...], tuple[list[float], list[float]]]] = {}
    for user_ratings in files:
        for name, entry in user_ratings.items():
            crops = merged.setdefault(name, {})
            for box, score in zip(entry.boxes, entry.scores, strict=True):
                crops.setdefault(box_key(box), (box.tolist(), []))[1].append(float(score))
    return merged


def rated_average(files: Sequence[UserRatings]) -> UserRatings:
    """Each image's crops (in order of first appearance) with the mean of the scores the files give
    them: the objective target of the official pre-training (the training users' average)."""
    return {
        name: CropAnnotation(
            np.asarray([box for box, _ in crops.values()]),
            np.asarray([np.mean(scores) for _, scores in crops.values()]),
        )
        for name, crops in merged_crops(files).items()
    }
