"""The crop library: photos in, ranked candidate crops out, for an already-loaded crop model
(``cropping_model.load_crop_model``); the model's ``photo_spec`` says how it wants its photos. Also
the photo dataset that prepares them and the writer of a photo's outputs (crops, JSON, figure).
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from untils.batching import SizeBucketBatchSampler, collate_crops
from untils.boxes import NO_PERSON_BOX
from untils.crop_candidates import FIXED_VIEW_COUNT, aspect_value, boxes_in_input, describe_candidates, photo_candidates
from untils.inference import move_batch, run_model
from untils.person_detection import MAIN_PERSON_RULE, Detection, PersonDetector, choose_main_person
from untils.photos import (DEFAULT_MAX_PIXELS, Box, OutputPaths, PhotoError, PhotoHeader, PhotoLike, as_upright_image,
                           checked_person_box, draw_crops, open_upright, read_header, save_crop, to_rgb8, write_atomic)
from untils.pic_format import pic_user_image
from untils.preprocessing import PhotoSpec, photo_input
from untils.runtime import autocast_dtype

UNTRAINED_WARNING = "UNTRAINED MODEL (random weights): these crops are meaningless"
NO_PERSON_NOTE = "no person: scored with the model's no-person input (human box of -1s)"
NO_USER_SCORE = "objective score (no --user: no user's preference added)"


@dataclass
class PersonInfo:
    """The person box used (upright photo pixels; None: no person) and where it came from."""

    box: Optional[tuple[float, float, float, float]]
    source: str  # given, file, detected or none
    detections: list[Detection] = field(default_factory=list)
    detector: Optional[str] = None

    def to_json(self) -> dict:
        entry: dict[str, Any] = {"box": None if self.box is None else [float(v) for v in self.box],
                                 "source": self.source}
        if self.detector is not None:
            entry.update(detector=self.detector, rule=MAIN_PERSON_RULE,
                         detections=[d.to_json() for d in self.detections])
        if self.box is None:
            entry["note"] = NO_PERSON_NOTE
        return entry


@dataclass
class PhotoFailure:
    """A photo that was skipped, and why."""

    index: int
    name: str
    message: str


@dataclass
class CropResult:
    """Every candidate of one photo, best first, in the upright photo's pixels."""

    index: int
    name: str
    width: int
    height: int
    boxes: list[Box]
    scores: list[float]
    person: PersonInfo
    aspect_ratio: Optional[float]
    resized_size: tuple[int, int]
    exif_orientation: int
    heat_map: Optional[np.ndarray] = None  # (64, 64) in [0, 1] over the whole photo (human-centric model)
    image: Optional[Image.Image] = None  # the upright photo, when asked for (keep_image)
    image_format: Optional[str] = None

    def top(self, k: int) -> list[tuple[Box, float]]:
        """The ``k`` best ``(box, score)`` pairs (fewer when there are fewer candidates)."""
        if k < 1:
            raise ValueError(f"top_k must be >= 1, got {k}")
        return list(zip(self.boxes[:k], self.scores[:k]))


# ----------------------------------------------------------------------------------------------
# Photos and candidates
# ----------------------------------------------------------------------------------------------

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
    candidates: np.ndarray
    person: PersonInfo
    resized_size: tuple[int, int]
    exif_orientation: int
    image: Optional[Image.Image]
    image_format: Optional[str]


@dataclass(frozen=True)
class PhotoSettings:
    """How photos are prepared: the model's :class:`untils.preprocessing.PhotoSpec`, the crop ratio
    (w/h, None: free), whether to keep the photo, the largest photo (in pixels) that is decoded, and
    whether to add the whole photo for an official PIC model's subjective branch."""

    spec: PhotoSpec
    aspect_ratio: Optional[float]
    keep_image: bool
    max_pixels: int = DEFAULT_MAX_PIXELS
    user_image: bool = False


class PhotoDataset(Dataset):
    """Photos decoded, person found, candidates made and resized; items for ``collate_crops``.

    File headers are read at construction, so every photo's resized size is known for size
    bucketing; unreadable or too large files become :class:`PhotoFailure` entries in ``failures``.
    Items that fail later (corrupt data, bad person box) come back as a ``PhotoFailure`` too.
    """

    def __init__(self, photos: Sequence[PhotoLike], human_boxes: Sequence[Optional[Sequence[float]]],
                 human_source: str, detector: Optional[PersonDetector], settings: PhotoSettings) -> None:
        self.settings, self.detector, self.human_source = settings, detector, human_source
        self.entries: list[tuple[int, Union[str, tuple[Image.Image, PhotoHeader]], PhotoHeader,
                                 Optional[Sequence[float]]]] = []
        self.resized_sizes: list[tuple[int, int]] = []
        self.failures: list[PhotoFailure] = []
        for index, (photo, human_box) in enumerate(zip(photos, human_boxes)):
            try:
                if isinstance(photo, (str, os.PathLike)):
                    source: Union[str, tuple[Image.Image, PhotoHeader]] = os.fspath(photo)
                    header = read_header(source, settings.max_pixels)
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

    def _person(self, rgb: Image.Image, human_box: Optional[Sequence[float]]) -> PersonInfo:
        width, height = rgb.size
        if human_box is not None:
            return PersonInfo(checked_person_box(human_box, width, height), self.human_source)
        if self.detector is None:
            return PersonInfo(None, "none")
        detections = choose_main_person(self.detector(np.asarray(rgb)), width, height)
        main = next((detection for detection in detections if detection.main), None)
        box = None if main is None else tuple(float(v) for v in main.box)
        return PersonInfo(box, "detected" if box else "none", detections, self.detector.name)

    def __getitem__(self, position: int) -> Union[dict[str, Any], PhotoFailure]:
        index, source, header, human_box = self.entries[position]
        name = photo_name(source, index)
        try:
            image, decoded = source if not isinstance(source, str) else open_upright(source, self.settings.max_pixels)
            if (decoded.width, decoded.height) != (header.width, header.height):
                raise PhotoError(f"the decoded image ({decoded.width}x{decoded.height}) does not match its header "
                                 f"({header.width}x{header.height})")
            return self._item(index, name, image, decoded, human_box, self.resized_sizes[position])
        except PhotoError as error:
            return PhotoFailure(index, name, str(error))

    def _item(self, index: int, name: str, image: Image.Image, header: PhotoHeader,
              human_box: Optional[Sequence[float]], resized: tuple[int, int]) -> dict[str, Any]:
        size, settings = image.size, self.settings
        candidates, resized_boxes = photo_candidates(settings.spec.candidates, size, resized, settings.aspect_ratio)
        rgb = to_rgb8(image)
        person = self._person(rgb, human_box)
        human = (np.array([person.box]) if person.box is not None else None)
        record = PhotoRecord(index, name, size[0], size[1], candidates, person, resized, header.orientation,
                              image if settings.keep_image else None, header.format)
        item = {
            "image": photo_input(rgb, settings.spec, resized),
            "crop_box": resized_boxes,
            "human_box": (boxes_in_input(human, size, resized) if human is not None
                          else torch.tensor([NO_PERSON_BOX], dtype=torch.float32)),
            "name": name,
            "photo": record,
        }
        if settings.user_image:
            item["user_image"] = pic_user_image(rgb)[0]
        return item


def collate_photos(items: list) -> tuple[Optional[dict[str, Any]], list[PhotoFailure]]:
    """``collate_crops`` of the photos that were prepared, and the failures beside them."""
    failures = [item for item in items if isinstance(item, PhotoFailure)]
    prepared = [item for item in items if not isinstance(item, PhotoFailure)]
    return (collate_crops(prepared) if prepared else None), failures


# ----------------------------------------------------------------------------------------------
# The cropper
# ----------------------------------------------------------------------------------------------

OFFICIAL_PIC_SCORE = "objective score + its position's offset from this photo's user logits (the release's score)"


def official_pic_scoring(model: nn.Module, checkpoint: str, user: Optional[str]) -> tuple[bool, str]:
    """How an official PIC model scores: ``(with its position offsets, the JSON's scored_as)``.
    ``user`` must be the one its fine-tuned checkpoint records (``model.trained_user``, finetune_PIC.py):
    a prior (or the release's file) holds no per-user state, each photo's own user logits give its
    offsets; a pre-trained one (``model.stage``) scores by its objective score alone."""
    stage, trained_for = getattr(model, "stage", None), getattr(model, "trained_user", None)
    what = {"finetuned": f"the official PIC model fine-tuned to user {trained_for}",
            "prior": "the official PIC prior model, which holds no per-user state",
            "pretrain": "an official PIC pre-trained model, whose position offsets are not trained"
            }.get(stage, "a state_dict of PIC's release, which records no user")
    if user is not None and (stage != "finetuned" or user != trained_for):
        raise ValueError(f"--user {user}: {checkpoint} is {what}; crop for {user} with their fine-tuned checkpoint "
                         f"(users/{user}.pth of finetune_PIC.py)")
    if stage == "pretrain":
        warnings.warn(f"{checkpoint} is {what}: crops are ranked by its objective score alone", stacklevel=3)
        return False, f"objective score ({what})"
    if model.num_positions != FIXED_VIEW_COUNT:
        raise ValueError(f"{checkpoint}: its {model.num_positions} position offsets do not fit the {FIXED_VIEW_COUNT} "
                         "fixed views crop.py scores (untils.pic_format.fixed_views)")
    if user is None:
        warnings.warn(f"{checkpoint} is {what}, used without --user: crops are ranked by its {OFFICIAL_PIC_SCORE}",
                      stacklevel=3)
    return True, f"{'user ' + user + ': ' if user else ''}{OFFICIAL_PIC_SCORE}; {what}"


class Cropper:
    """Rank candidate crops of photos with a loaded crop-scoring model (eval mode, on its device).

    ``Cropper(load_crop_model("best.pth")).crop("photo.jpg", top_k=3)`` gives
    ``[((x1, y1, x2, y2), score), ...]``. The model's ``photo_spec`` says how photos are prepared and
    which candidates it ranks; ``model.cfg`` names it. ``user`` scores as one of a personalized
    model's users. ``checkpoint`` (its file, for the outputs and messages) and ``untrained`` (random
    weights: its crops mean nothing, said in every output) describe where the model came from.
    ``detector`` finds the person when none is given (see ``untils.person_detection``). ``precision``
    (fp32, bf16, fp16) autocasts the forward pass; ``channels_last`` runs the model channels-last
    (both faster on GPUs).
    """

    def __init__(self, model: nn.Module, *, checkpoint: Optional[str] = None, untrained: bool = False,
                 detector: Optional[PersonDetector] = None, user: Optional[str] = None, precision: str = "fp32",
                 channels_last: bool = False) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.spec: PhotoSpec = model.photo_spec
        self.cfg = model.cfg
        self.model_type = self.cfg.model_type
        self.precision = precision
        self.autocast_dtype = autocast_dtype(precision)
        self.channels_last = channels_last
        self.checkpoint = checkpoint
        self.untrained = untrained
        self.user = user
        if untrained:
            warnings.warn(UNTRAINED_WARNING, stacklevel=2)
        self.user_image, self.scored_as = False, None
        if self.spec.takes_user_image:
            self.user_image, self.scored_as = official_pic_scoring(model, str(checkpoint), user)
        elif self.spec.takes_user:
            known = ", ".join(sorted(model.user_embeddings)) or "none"
            if user is not None:
                try:
                    model.embedding_of(user)
                except KeyError:
                    raise ValueError(f"--user {user}: {checkpoint} knows no such user (known users: {known})") from None
            self.scored_as = f"user {user}" if user is not None else NO_USER_SCORE
            if user is None:  # say so: without a user the scores are nobody's taste
                warnings.warn(f"{checkpoint} is a personalized (PIC) checkpoint used without --user: crops are ranked "
                              f"by its {NO_USER_SCORE}; --user ID ranks them as one of its users ({known})",
                              stacklevel=2)
        elif user is not None:
            raise ValueError(f"--user {user}: {checkpoint} is not a personalized (PIC) checkpoint; "
                             "train one with prior_PIC.py / finetune_PIC.py")
        self.detector = detector
        if channels_last:
            self.model.to(memory_format=torch.channels_last)

    def describe(self) -> dict[str, Any]:
        """The model, for the JSON outputs."""
        entry = {"checkpoint": self.checkpoint, "model_type": self.model_type, "user": self.user,
                 "backbone": self.cfg.backbone,
                 "image_size": list(self.spec.image_size), "keep_aspect_ratio": self.spec.keep_aspect_ratio,
                 "channel_order": self.spec.channel_order,
                 "untrained": self.untrained, "precision": self.precision, "channels_last": self.channels_last}
        if self.scored_as is not None:
            entry["scored_as"] = self.scored_as
        if self.untrained:
            entry["warning"] = UNTRAINED_WARNING
        return entry

    def candidates(self, aspect_ratio: Union[None, str, float] = None) -> str:
        """How this model's candidates are chosen at ``aspect_ratio`` (``untils.crop_candidates``);
        raises ValueError for a ratio they cannot give (any, for an official PIC model)."""
        return describe_candidates(self.spec.candidates, aspect_value(aspect_ratio))

    def rank_many(self, photos: Sequence[PhotoLike], human_boxes: Optional[Sequence[Optional[Sequence[float]]]] = None,
                  aspect_ratio: Union[None, str, float] = None, *, human_source: str = "given",
                  batch_size: int = 4, num_workers: int = 0, keep_image: bool = False,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[Union[CropResult, PhotoFailure]]:
        """Rank the candidates of many photos; yields one result or failure per photo, as they finish.

        Photos are decoded (and people detected) in ``num_workers`` DataLoader workers and
        scored ``batch_size`` at a time, photos of one resized size together, so the order is
        not the input order: use each result's ``index``. ``human_boxes`` (one per photo, None
        for none) are in upright-photo pixels; ``keep_image`` returns the upright photo too.
        Files over ``max_pixels`` pixels fail without being decoded.
        """
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"batch_size must be >= 1 and num_workers >= 0, got {batch_size} and {num_workers}")
        if human_boxes is None:
            human_boxes = [None] * len(photos)
        if len(human_boxes) != len(photos):
            raise ValueError(f"got {len(human_boxes)} person boxes for {len(photos)} photos")
        self.candidates(aspect_ratio)  # refuses a ratio this model's candidates cannot give
        settings = PhotoSettings(self.spec, aspect_value(aspect_ratio), keep_image, max_pixels, self.user_image)
        dataset = PhotoDataset(photos, human_boxes, human_source, self.detector, settings)
        yield from dataset.failures
        if len(dataset) == 0:
            return
        loader = DataLoader(dataset, batch_sampler=SizeBucketBatchSampler(dataset, batch_size, shuffle=False),
                            collate_fn=collate_photos, num_workers=num_workers,
                            pin_memory=self.device.type == "cuda")
        for batch, failures in loader:
            yield from failures
            if batch is not None:
                yield from self._score(batch, settings.aspect_ratio)

    @torch.inference_mode()
    def _score(self, batch: dict[str, Any], aspect_ratio: Optional[float]) -> list[CropResult]:
        output = run_model(self.model, move_batch(batch, self.device), self.autocast_dtype, self.channels_last,
                           self.user if self.spec.takes_user else None)
        results = []
        scores = output.score.float().cpu()  # one device-to-host copy per batch
        heat_maps = output.heat_map[:, 0].float().cpu() if output.heat_map is not None else None
        for row, record in enumerate(batch["photo"]):
            valid = batch["crop_valid"][row]
            photo_scores = scores[row][valid]
            order = torch.argsort(photo_scores, descending=True, stable=True).numpy()
            heat_map = heat_maps[row].numpy() if heat_maps is not None else None
            results.append(CropResult(
                index=record.index, name=record.name, width=record.width, height=record.height,
                boxes=[tuple(int(v) for v in record.candidates[i]) for i in order],
                scores=[float(photo_scores[i]) for i in order], person=record.person, aspect_ratio=aspect_ratio,
                resized_size=record.resized_size, exif_orientation=record.exif_orientation, heat_map=heat_map,
                image=record.image, image_format=record.image_format))
        return results

    def rank(self, image: PhotoLike, human_box: Optional[Sequence[float]] = None,
             aspect_ratio: Union[None, str, float] = None) -> CropResult:
        """Every candidate of one photo, ranked; raises :class:`PhotoError` if it cannot be cropped."""
        (result,) = self.rank_many([image], [human_box], aspect_ratio)
        if isinstance(result, PhotoFailure):
            raise PhotoError(f"{result.name}: {result.message}")
        return result

    def crop(self, image: PhotoLike, human_box: Optional[Sequence[float]] = None,
             aspect_ratio: Union[None, str, float] = None, top_k: int = 1) -> list[tuple[Box, float]]:
        """The ``top_k`` best ``((x1, y1, x2, y2), score)`` of a photo (path, PIL image or uint8 array)."""
        return self.rank(image, human_box, aspect_ratio).top(top_k)

    def crop_many(self, images: Sequence[PhotoLike], human_boxes: Optional[Sequence[Optional[Sequence[float]]]] = None,
                  aspect_ratio: Union[None, str, float] = None, top_k: int = 1, batch_size: int = 4,
                  num_workers: int = 0) -> list[list[tuple[Box, float]]]:
        """:meth:`crop` for many photos, batched, in input order; raises naming every photo that failed."""
        ranked: dict[int, list[tuple[Box, float]]] = {}
        failures = []
        for result in self.rank_many(images, human_boxes, aspect_ratio, batch_size=batch_size,
                                     num_workers=num_workers):
            if isinstance(result, PhotoFailure):
                failures.append(f"{result.name}: {result.message}")
            else:
                ranked[result.index] = result.top(top_k)
        if failures:
            raise PhotoError(f"{len(failures)} of {len(images)} photos failed:\n  " + "\n  ".join(failures))
        return [ranked[index] for index in range(len(images))]


# ----------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------

def write_outputs(result: CropResult, photo: Path, paths: OutputPaths, cropper: Cropper, aspect_text: str,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Crops (cut from the file, read again), JSON and (when ``paths.figure``) figure of one photo."""
    image, header = open_upright(photo, max_pixels)
    if (header.width, header.height) != (result.width, result.height):
        raise PhotoError(f"changed while it was cropped: {header.width}x{header.height} now, "
                         f"{result.width}x{result.height} when scored")
    top_k = len(paths.crops)
    crops = []
    for rank, ((box, score), path) in enumerate(zip(result.top(top_k), paths.crops), start=1):
        save_crop(image, box, path, paths.crop_format)
        crops.append({"rank": rank, "file": path.name, "box": list(box), "score": score,
                      "width": box[2] - box[0], "height": box[3] - box[1]})
    description = {
        "photo": str(photo), "width": result.width, "height": result.height,
        "exif_orientation": result.exif_orientation,
        "coordinates": "pixels of the upright photo (EXIF orientation applied), [x1, y1, x2, y2]",
        "model": cropper.describe(), "resized_to": list(result.resized_size),
        "aspect_ratio": aspect_text, "aspect_ratio_value": result.aspect_ratio,
        "candidates": cropper.candidates(result.aspect_ratio),
        "person": result.person.to_json(),
        "crops": crops,
        "ranked": [{"box": list(box), "score": score} for box, score in zip(result.boxes, result.scores)],
    }
    if paths.figure is not None:
        scored_as = f"; as user {cropper.user} likes" if cropper.user is not None else ""
        title_lines = [f"{photo.name}: top {len(crops)} of {len(result.boxes)} crops, ratio {aspect_text}{scored_as}",
                       f"{cropper.model_type} {cropper.cfg.backbone}; "
                       + (f"heat map of content to keep (jet, 0 blue to 1 red): {result.heat_map.min():.2f} to "
                          f"{result.heat_map.max():.2f}; " if result.heat_map is not None else "")
                       + ("dashed: person" if result.person.box is not None else "no person")]
        if cropper.untrained:
            title_lines.append(UNTRAINED_WARNING)
        draw_crops(image, result.top(top_k), result.person.box, result.heat_map, paths.figure, title_lines,
                   warning=cropper.untrained)
        description["figure"] = paths.figure.name
    write_atomic(paths.json, lambda tmp: Path(tmp).write_text(json.dumps(description, indent=1)))
