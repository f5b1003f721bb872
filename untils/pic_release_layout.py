"""PIC's release layout (github Cooperxjt/PIC, :class:`ReleaseData`): its per-user CSVs of rated
crops read and checked (every problem named by user, file and row, in one ``DatasetError``), and
the training users' ratings merged. ``convert_PIC_data.py`` converts it to and from ours.
"""

from __future__ import annotations

import codecs
import csv
import io
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from untils.dataset_errors import DatasetError, problems_error
from untils.dataset_files import CropAnnotation
from untils.pic_checks import MIN_CROPS, box_key, check_rated_crops, named_image_size, read_pretrain_folder
from untils.pic_format import (
    RELEASE_CSV_HEADER,
    RELEASE_FINETUNE_FOLDER,
    RELEASE_IMAGE_FOLDER,
    RELEASE_PRETRAIN_FOLDER,
    RELEASE_PRIOR_FOLDER,
)
from untils.safe_paths import UnsafeNameError, check_name

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
    min_crops: int = MIN_CROPS,
) -> tuple[UserRatings, bool]:
    """One user's CSV rows ``{image: [(line, box, score), ...]}`` through :func:`check_rated_crops`
    (``sizes[image]`` None: not at hand; ``min_crops`` crops at least); every problem is appended
    naming its rows. Returns the checked ``{image: crops}`` (boxes clipped as the loader clips them)
    and whether any was clipped."""
    ratings, clipped = {}, False
    for name, image_rows in rows.items():
        lines = [line for line, _, _ in image_rows]
        scores = np.asarray([score for _, _, score in image_rows])
        boxes, was_clipped, crop_problems = check_rated_crops(
            np.asarray([box for _, box, _ in image_rows]), scores, sizes.get(name), min_crops
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
        raise FileNotFoundError(
            f"release-layout PIC folder not found: {root} (see untils/pic_release_layout.py, ReleaseData)"
        )
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
