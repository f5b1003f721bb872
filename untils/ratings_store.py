"""The web page's crop ratings under ``--data-dir``: the rated photos (copied upright from the photo
store when first rated, so ratings outlive its eviction of old uploads) and one ratings CSV per user.

Layout (README.md, "The web page")::

    rated_photos/<photo id>.<ext>        the upright photo, the name the CSV's image column holds
    rated_photos/human_bboxes.json       {image: person box}, for the photos ranked with a person
    rated_photos/candidates.json         {image: the crops the server offered for rating}
    users/<user>/ratings.csv             annotator,image,x1,y1,x2,y2,score (convert_PIC_data.py ratings)
    users/<user>/training.csv            the ratings the last fine-tuning job read (a snapshot)
    users/<user>/model.pth               the user's personal model (POST /api/personalize)

Its one rule: no client-given text becomes a path unchecked; a user name matches :data:`USER_NAME`
and is taken in lower case (so two names differing only in case are one user, on every file
system), a photo id is the photo store's (32 hex digits). Every file is written atomically, and
one user's file is the only one a rating of that user touches.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from untils.atomic import write_atomic, write_json_atomic, write_text_atomic
from untils.photo_store import PHOTO_ID
from untils.photos import to_rgb8
from untils.pic_checks import box_key
from untils.pic_format import RATINGS_CSV_COLUMNS

USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
MIN_SCORE, MAX_SCORE = 1, 5
RATINGS_FILE = "ratings.csv"
TRAINING_FILE = "training.csv"
MODEL_FILE = "model.pth"
HUMAN_BOXES_FILE = "human_bboxes.json"
CANDIDATES_FILE = "candidates.json"
Box = tuple[float, float, float, float]


class RatingError(ValueError):
    """A rating, user name or photo the store refuses; ``status`` is the HTTP answer's."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def checked_user(name: object) -> str:
    """The user's name in lower case; :class:`RatingError` unless it is 1-32 letters, digits, '-' or
    '_' starting with a letter or digit (no path characters)."""
    if not isinstance(name, str) or not USER_NAME.match(name):
        raise RatingError(
            f"user {name!r}: a user name is 1 to 32 letters, digits, '-' or '_', starting with a letter or digit"
        )
    return name.lower()


def checked_score(score: object) -> int:
    if isinstance(score, bool) or not isinstance(score, (int, float)) or score not in range(MIN_SCORE, MAX_SCORE + 1):
        raise RatingError(f"score {score!r}: a rating is a whole number from {MIN_SCORE} to {MAX_SCORE}")
    return int(score)


def checked_box(box: object) -> Box:
    if (
        not isinstance(box, (list, tuple))
        or len(box) != 4
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)
    ):
        raise RatingError(f"box {box!r}: expected four numbers [x1, y1, x2, y2] in the photo's pixels")
    x1, y1, x2, y2 = (float(v) for v in box)
    return x1, y1, x2, y2


@dataclass(frozen=True)
class Rating:
    photo_id: str
    box: Box
    score: int

    def to_json(self) -> dict[str, Any]:
        return {"photo_id": self.photo_id, "box": list(self.box), "score": self.score}


@dataclass(frozen=True)
class RatedPhoto:
    """What :meth:`RatingsStore.add_photo` keeps of a photo: its upright pixels, the person box it
    was ranked with, and the crops offered for rating (the personal model's candidates)."""

    image: Image.Image
    image_format: str | None
    human_box: Box | None
    candidates: Sequence[Box]


def _number(value: float) -> str:
    return repr(int(value)) if float(value).is_integer() else repr(float(value))


class RatingsStore:
    """The rated photos and users' ratings under ``root`` (see the module's layout); thread-safe."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.photo_dir = Path(root) / "rated_photos"
        self.users_dir = Path(root) / "users"
        self.photo_dir.mkdir(parents=True, exist_ok=True)
        self.users_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    # -- files, every path built here from checked names --------------------------------------

    def user_dir(self, user: str) -> Path:
        return self.users_dir / checked_user(user)

    def ratings_file(self, user: str) -> Path:
        return self.user_dir(user) / RATINGS_FILE

    def model_file(self, user: str) -> Path:
        return self.user_dir(user) / MODEL_FILE

    def _read_json(self, name: str) -> dict[str, Any]:
        path = self.photo_dir / name
        return json.loads(path.read_text()) if path.is_file() else {}

    def image_name(self, photo_id: str) -> str | None:
        """The rated photo's file name in :attr:`photo_dir`, None when it was never rated."""
        if not PHOTO_ID.match(photo_id):
            raise RatingError(f"photo {photo_id!r}: photo ids are 32 hex digits", 404)
        return next((name for name in self._read_json(CANDIDATES_FILE) if name.split(".")[0] == photo_id), None)

    def human_boxes(self) -> dict[str, Box | None]:
        boxes = self._read_json(HUMAN_BOXES_FILE)
        return {name: tuple(box) for name, box in boxes.items()}

    # -- photos --------------------------------------------------------------------------------

    def add_photo(self, photo_id: str, photo: RatedPhoto) -> str:
        """Keep the photo for ratings (once: later calls add newly offered candidates and the latest
        person box); returns its image name."""
        with self._lock:
            name = self.image_name(photo_id)
            if name is None:
                extension = ".jpg" if photo.image_format == "JPEG" else ".png"
                name = photo_id + extension
                image = to_rgb8(photo.image)

                def save(tmp: str) -> None:
                    image.save(tmp, format="JPEG" if extension == ".jpg" else "PNG", quality=95)

                write_atomic(self.photo_dir / name, save)
            candidates = self._read_json(CANDIDATES_FILE)
            offered = candidates.get(name, [])
            known = {box_key(box) for box in offered}
            offered += [list(box) for box in photo.candidates if box_key(box) not in known]
            candidates[name] = offered
            boxes = self._read_json(HUMAN_BOXES_FILE)
            if photo.human_box is not None:
                boxes[name] = list(photo.human_box)
            else:
                boxes.pop(name, None)
            write_json_atomic(self.photo_dir / HUMAN_BOXES_FILE, boxes)
            write_json_atomic(self.photo_dir / CANDIDATES_FILE, candidates)  # last: it marks the photo as kept
        return name

    def offered_box(self, photo_id: str, box: Box) -> Box:
        """The offered crop equal to ``box`` (to :data:`untils.pic_checks.BOX_KEY_DECIMALS` decimals)."""
        name = self.image_name(photo_id)
        if name is None:
            raise RatingError(
                f"photo {photo_id}: no crops of it were offered for rating (POST /api/crop with a user)", 404
            )
        key = box_key(box)
        for offered in self._read_json(CANDIDATES_FILE)[name]:
            if box_key(offered) == key:
                return tuple(offered)
        raise RatingError(f"box {list(box)}: not one of the crops offered for rating of photo {photo_id}", 422)

    # -- ratings -------------------------------------------------------------------------------

    def ratings(self, user: str) -> list[Rating]:
        """The user's ratings in the order they were first given."""
        path = self.ratings_file(user)
        if not path.is_file():
            return []
        with path.open(newline="", encoding="utf-8") as stream:
            return [
                Rating(
                    row["image"].split(".")[0],
                    (float(row["x1"]), float(row["y1"]), float(row["x2"]), float(row["y2"])),
                    int(float(row["score"])),
                )
                for row in csv.DictReader(stream)
            ]

    def _write(self, user: str, ratings: Sequence[Rating], path: Path | None = None) -> None:
        names = self._read_json(CANDIDATES_FILE)
        by_id = {name.split(".")[0]: name for name in names}
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(RATINGS_CSV_COLUMNS)
        for rating in ratings:
            writer.writerow([checked_user(user), by_id[rating.photo_id], *map(_number, rating.box), rating.score])
        self.user_dir(user).mkdir(exist_ok=True)
        write_text_atomic(path or self.ratings_file(user), buffer.getvalue())

    def rate(self, user: str, photo_id: str, box: object, score: object) -> Rating:
        """Store (or replace: one rating per photo and crop) the user's rating of an offered crop."""
        user, checked, value = checked_user(user), checked_box(box), checked_score(score)
        with self._lock:
            rating = Rating(photo_id, self.offered_box(photo_id, checked), value)
            ratings = self.ratings(user)
            key = (photo_id, box_key(rating.box))
            index = next((i for i, old in enumerate(ratings) if (old.photo_id, box_key(old.box)) == key), None)
            if index is None:
                ratings.append(rating)
            else:
                ratings[index] = rating
            self._write(user, ratings)
        return rating

    def delete(self, user: str, photo_id: str, box: object) -> None:
        user, checked = checked_user(user), checked_box(box)
        with self._lock:
            ratings = self.ratings(user)
            key = (photo_id, box_key(checked))
            kept = [old for old in ratings if (old.photo_id, box_key(old.box)) != key]
            if len(kept) == len(ratings):
                raise RatingError(f"user {user} has no rating of crop {list(checked)} of photo {photo_id}", 404)
            self._write(user, kept)

    def training_file(self, user: str, min_crops: int) -> Path:
        """A snapshot of the user's ratings of the photos with at least ``min_crops`` rated crops
        (``users/<user>/training.csv``, the same columns): what a fine-tuning job reads, unchanged by
        ratings given while it runs."""
        with self._lock:
            ratings = self.ratings(user)
            per_photo = Counter(rating.photo_id for rating in ratings)
            path = self.user_dir(user) / TRAINING_FILE
            self._write(user, [rating for rating in ratings if per_photo[rating.photo_id] >= min_crops], path)
        return path

    def summary(self, user: str, min_crops: int = 1) -> dict[str, Any]:
        """``{"user", "crops", "photos", "photos_ready", "ratings", "has_model"}``: what the page shows
        of a user; ``photos_ready`` counts the photos with at least ``min_crops`` rated crops."""
        ratings = self.ratings(user)
        per_photo = Counter(rating.photo_id for rating in ratings)
        return {
            "user": checked_user(user),
            "crops": len(ratings),
            "photos": len(per_photo),
            "photos_ready": sum(count >= min_crops for count in per_photo.values()),
            "ratings": [rating.to_json() for rating in ratings],
            "has_model": self.model_file(user).is_file(),
        }
