"""The photos the crop library ranks, prepared for its model: decoded upright, the person found,
every requested ratio's candidate crops made (scored together: each distinct crop once), resized as
the model's ``photo_spec`` asks; items for ``untils.batching.collate_crops``. ``untils.cropper`` runs
the model on them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from untils.batching import collate_crops
from untils.boxes import NO_PERSON_BOX
from untils.candidates import DEFAULT_RATIO_CANDIDATES
from untils.crop_candidates import boxes_in_input, containing, photo_candidates
from untils.person_detection import MAIN_PERSON_RULE, Detection, PersonDetector, choose_main_person
from untils.photos import (
    DEFAULT_MAX_PIXELS,
    PhotoError,
    PhotoHeader,
    PhotoLike,
    as_upright_image,
    checked_person_box,
    open_upright,
    read_header,
    to_rgb8,
)
from untils.pic_format import pic_user_image
from untils.preprocessing import PhotoSpec, photo_input

NO_PERSON_NOTE = "no person: scored with the model's no-person input (human box of -1s)"


@dataclass
class PersonInfo:
    """The person box used (upright photo pixels; None: no person) and where it came from."""

    box: tuple[float, float, float, float] | None
    source: str  # given, file, detected or none
    detections: list[Detection] = field(default_factory=list)
    detector: str | None = None

    def to_json(self) -> dict:
        entry: dict[str, Any] = {
            "box": None if self.box is None else [float(v) for v in self.box],
            "source": self.source,
        }
        if self.detector is not None:
            entry.update(
                detector=self.detector, rule=MAIN_PERSON_RULE, detections=[d.to_json() for d in self.detections]
            )
        if self.box is None:
            entry["note"] = NO_PERSON_NOTE
        return entry


@dataclass
class PhotoFailure:
    """A photo that was skipped, and why."""

    index: int
    name: str
    message: str


def photo_name(photo: PhotoLike, index: int) -> str:
    """A photo's name in results: its file name, or ``image<index>`` for an image given in memory."""
    return os.path.basename(os.fspath(photo)) if isinstance(photo, (str, os.PathLike)) else f"image{index}"


@dataclass
class PhotoRecord:
    """What the scorer needs besides tensors; travels through the DataLoader unchanged (no full-size
    image unless asked for: crops are cut from the file when they are written)."""

    index: int
    name: str
    width: int
    height: int
    candidates: list[np.ndarray]  # per ratio: (N_r, 4) photo pixels, in the rule's order
    scored: list[np.ndarray]  # per ratio: (N_r,) rows of the scored crop_box (all ratios' crops, once each)
    notes: list[str | None]  # per ratio: why it has no candidate
    person: PersonInfo
    resized_size: tuple[int, int]
    exif_orientation: int
    image: Image.Image | None
    image_format: str | None


@dataclass(frozen=True)
class PhotoSettings:
    """How photos are prepared: the model's :class:`untils.preprocessing.PhotoSpec`, the crop ratios
    (w/h, None: free), whether to keep the photo, the largest photo (in pixels) that is decoded,
    whether to add the whole photo for an official PIC model's subjective branch, whether only
    candidates that contain the person (and every detected face) whole are kept, and the fixed-ratio
    candidate grid (``fast`` or ``dense``)."""

    spec: PhotoSpec
    aspect_ratios: tuple[float | None, ...]
    keep_image: bool
    max_pixels: int = DEFAULT_MAX_PIXELS
    user_image: bool = False
    keep_person: bool = False
    ratio_candidates: str = DEFAULT_RATIO_CANDIDATES


class PhotoDataset(Dataset):
    """Photos decoded, person found, candidates made and resized; items for ``collate_crops``.

    File headers are read at construction, so every photo's resized size is known for size
    bucketing; unreadable or too large files become :class:`PhotoFailure` entries in ``failures``.
    Items that fail later (corrupt data, bad person box) come back as a ``PhotoFailure`` too.
    """

    def __init__(
        self,
        photos: Sequence[PhotoLike],
        human_boxes: Sequence[Sequence[float] | None],
        human_source: str,
        detector: PersonDetector | None,
        settings: PhotoSettings,
    ) -> None:
        self.settings, self.detector, self.human_source = settings, detector, human_source
        self.entries: list[tuple[int, str | tuple[Image.Image, PhotoHeader], PhotoHeader, Sequence[float] | None]] = []
        self.resized_sizes: list[tuple[int, int]] = []
        self.failures: list[PhotoFailure] = []
        for index, (photo, human_box) in enumerate(zip(photos, human_boxes, strict=True)):
            try:
                if isinstance(photo, (str, os.PathLike)):
                    path = os.fspath(photo)
                    header = read_header(path, settings.max_pixels)
                    source: str | tuple[Image.Image, PhotoHeader] = path
                else:
                    source = as_upright_image(photo)
                    header = source[1]
            except PhotoError as error:
                self.failures.append(PhotoFailure(index, photo_name(photo, index), str(error)))
                continue
            self.entries.append((index, source, header, human_box))
            self.resized_sizes.append(settings.spec.resized_size(header.width, header.height))

    def __len__(self) -> int:
        return len(self.entries)

    def resized_size_of(self, index: int) -> tuple[int, int]:
        return self.resized_sizes[index]

    def _person(self, rgb: Image.Image, human_box: Sequence[float] | None) -> PersonInfo:
        width, height = rgb.size
        if human_box is not None:
            return PersonInfo(checked_person_box(human_box, width, height), self.human_source)
        if self.detector is None:
            return PersonInfo(None, "none")
        detections = choose_main_person(self.detector(np.asarray(rgb)), width, height)
        main = next((detection for detection in detections if detection.main), None)
        if main is None:
            return PersonInfo(None, "none", detections, self.detector.name)
        x1, y1, x2, y2 = main.box
        return PersonInfo((float(x1), float(y1), float(x2), float(y2)), "detected", detections, self.detector.name)

    def __getitem__(self, position: int) -> dict[str, Any] | PhotoFailure:
        index, source, header, human_box = self.entries[position]
        name = photo_name(source if isinstance(source, str) else source[0], index)
        try:
            image, decoded = source if not isinstance(source, str) else open_upright(source, self.settings.max_pixels)
            if (decoded.width, decoded.height) != (header.width, header.height):
                raise PhotoError(
                    f"the decoded image ({decoded.width}x{decoded.height}) does not match its header "
                    f"({header.width}x{header.height})"
                )
            return self._item(index, name, image, decoded, human_box, self.resized_sizes[position])
        except PhotoError as error:
            return PhotoFailure(index, name, str(error))

    def _item(
        self,
        index: int,
        name: str,
        image: Image.Image,
        header: PhotoHeader,
        human_box: Sequence[float] | None,
        resized: tuple[int, int],
    ) -> dict[str, Any]:
        size, settings = image.size, self.settings
        rgb = to_rgb8(image)
        person = self._person(rgb, human_box)
        required = (
            []
            if person.box is None or not settings.keep_person
            else ([person.box] + [d.evidence for d in person.detections if d.evidence is not None])
        )
        per_ratio: list[tuple[np.ndarray, torch.Tensor]] = []
        notes: list[str | None] = []
        for value in settings.aspect_ratios:
            try:
                candidates, resized_boxes = photo_candidates(
                    settings.spec.candidates, size, resized, value, settings.ratio_candidates
                )
            except PhotoError as error:  # this ratio has none here; the others go on
                per_ratio.append((np.zeros((0, 4), np.int64), torch.zeros(0, 4)))
                notes.append(str(error))
                continue
            keep = containing(candidates, required)
            notes.append(
                None
                if keep.any()
                else f"no candidate contains the whole person {[round(v, 1) for v in required[0]]}"
                + (" and every detected face" if len(required) > 1 else "")
                + " (--keep-person): none is given rather than one that cuts the person"
            )
            per_ratio.append((candidates[keep], resized_boxes[torch.from_numpy(keep)]))
        if all(len(candidates) == 0 for candidates, _ in per_ratio) and not required:
            raise PhotoError("; ".join(note for note in notes if note))
        # Every ratio's crops scored in one pass: each distinct (photo box, input box) once, in the order
        # first met (an official PIC model adds one offset per position of its views' order).
        joined = np.concatenate(
            [np.concatenate([candidates, boxes.numpy().astype(np.float64)], axis=1) for candidates, boxes in per_ratio]
        )
        _, first, rows = np.unique(joined, axis=0, return_index=True, return_inverse=True)
        order = np.argsort(first)
        position = np.empty_like(order)
        position[order] = np.arange(len(order))
        distinct, rows = joined[first[order]], position[rows.reshape(-1)]
        if len(distinct) == 0:  # the person fits no candidate: the whole photo is scored, for the heat map
            distinct = np.array([[0, 0, *size, 0, 0, *resized]], dtype=np.float64)
        splits = np.cumsum([len(candidates) for candidates, _ in per_ratio])[:-1]
        record = PhotoRecord(
            index,
            name,
            size[0],
            size[1],
            [candidates for candidates, _ in per_ratio],
            np.split(rows, splits),
            notes,
            person,
            resized,
            header.orientation,
            image if settings.keep_image else None,
            header.format,
        )
        item = {
            "image": photo_input(rgb, settings.spec, resized),
            "crop_box": torch.from_numpy(distinct[:, 4:].astype(np.float32)),
            "human_box": (
                boxes_in_input(np.array([person.box]), size, resized)
                if person.box is not None
                else torch.tensor([NO_PERSON_BOX], dtype=torch.float32)
            ),
            "name": name,
            "photo": record,
        }
        if settings.user_image:
            item["user_image"] = pic_user_image(rgb)[0]
        return item


def collate_photos(items: list) -> tuple[dict[str, Any] | None, list[PhotoFailure]]:
    """``collate_crops`` of the photos that were prepared, and the failures beside them."""
    failures = [item for item in items if isinstance(item, PhotoFailure)]
    prepared = [item for item in items if not isinstance(item, PhotoFailure)]
    return (collate_crops(prepared) if prepared else None), failures
