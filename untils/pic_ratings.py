"""The ratings CSV (``untils.pic_format.RATINGS_CSV_COLUMNS``: one rated crop a row, boxes in the
upright photo's pixels) and its one reader, shared by ``convert_PIC_data.py ratings`` and
personalization (``pic_model.personalize_from_ratings``).
"""

from __future__ import annotations

import os

from untils.dataset_errors import DatasetError, problems_error
from untils.pic_checks import MIN_CROPS, named_image_size
from untils.pic_format import RATINGS_CSV_COLUMNS, USER_ID_PATTERN
from untils.pic_release_layout import CropCsvLayout, check_rated_rows, read_crop_rows

RATINGS_CSV = CropCsvLayout(RATINGS_CSV_COLUMNS, "image", ("x1", "y1", "x2", "y2"), "x1, y1, x2, y2", "line")
USER_COLUMN = RATINGS_CSV_COLUMNS[0]


def read_ratings_csv(
    path: str, image_dir: str | None = None, user: str | None = None, min_crops: int = MIN_CROPS
) -> dict[str, dict[str, dict[str, list]]]:
    """``annotator,image,x1,y1,x2,y2,score`` rows (extra columns ignored) -> ``{user: {image: {bbox,
    score}}}``, boxes and scores as given. ``user``: only that user's rows are read (the others are
    skipped unchecked). Each user's crops of an image are checked by the loader's rule
    (``untils.pic_checks.check_rated_crops``, at least ``min_crops`` crops), against the photo in
    ``image_dir`` when given (its name kept inside that folder); every problem is listed in one
    ``DatasetError`` naming its lines."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"ratings CSV not found: {path}")
    problems: list[str] = []
    rows: dict[str, dict[str, list[tuple[int, list[float], float]]]] = {}
    first_line: dict[str, int] = {}
    for line, row, image, box, score in read_crop_rows(path, RATINGS_CSV, str, problems):
        annotator = (row[USER_COLUMN] or "").strip()
        if user is not None and annotator != user:
            continue
        if not USER_ID_PATTERN.match(annotator):
            problems.append(
                f"line {line}: {USER_COLUMN} {annotator!r} must be letters, digits, '_', '-' or '.' (not first)"
            )
            continue
        first_line.setdefault(image, line)
        rows.setdefault(annotator, {}).setdefault(image, []).append((line, box, score))
    sizes: dict[str, tuple[int, int] | None] = {}
    if image_dir is not None:
        for name, line in first_line.items():
            sizes[name], problem = named_image_size(image_dir, name)
            if problem:
                problems.append(f"line {line}: {problem}")
    for annotator, user_rows in rows.items():

        def where(at: str, annotator: str = annotator) -> str:
            return f"{at}: {USER_COLUMN} {annotator}"

        check_rated_rows(
            RATINGS_CSV,
            {name: found for name, found in user_rows.items() if image_dir is None or sizes[name] is not None},
            sizes,
            where,
            problems,
            min_crops,
        )
    if problems:
        raise problems_error(f"ratings CSV {path}", problems)
    if not rows:
        raise DatasetError(f"ratings CSV {path} has no rows" + (f" of {USER_COLUMN} {user}" if user else ""))
    return {
        annotator: {
            name: {"bbox": [box for _, box, _ in found], "score": [score for _, _, score in found]}
            for name, found in user_rows.items()
        }
        for annotator, user_rows in rows.items()
    }
