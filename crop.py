"""Crop your own photos with a trained crop-scoring model (human-centric, GAIC or PIC).

  python crop.py photo.jpg --checkpoint experiments/GAICD_PA_CP/checkpoints/best-srcc.pth
  python crop.py holidays/ --checkpoint best.pth --aspect-ratio 4:3 --top-k 3 --detect-human --visualize
  python crop.py portrait.png --checkpoint best.pth --human-box 120,40,380,512

Candidates are the GAIC grid of the paper (up to 90 crops, aspect ratios 0.5 to 2.2) when the
ratio is free, or for --aspect-ratio W:H crops of exactly that ratio (within one pixel) at six
scales (100% to 50% of the largest that fits) and 5x5 positions. They are made in the photo's
pixels, scored on the photo resized as the checkpoint's config says (shorter side 256 rounded
to a multiple of 32, LANCZOS), and returned in the photo's pixels: whole, inside the photo.

EXIF orientation is applied first (as viewers do): boxes and saved crops are upright. 16-bit
photos are scaled to 8 bits for scoring (crops keep their pixels); photos over --max-pixels and
formats Pillow cannot open here (HEIC, raw...) are reported like unreadable ones, by name.

The person: --human-box (pixels of the upright photo), --human-boxes FILE (JSON
{file name or stem: [x1, y1, x2, y2]}), or --detect-human: a torchvision person detector (Faster
R-CNN MobileNetV3, COCO weights downloaded once into torch's hub cache; --detector-weights FILE
offline, --no-download cache only), or, where it cannot be had or run, OpenCV's HOG and
scikit-image's face detector, with one warning. Duplicates are merged. The main person: most
confident first (below 0.8 of its detector's best score is set aside), then largest and most
central. The JSON lists each detection with its detector and score, the chosen one marked
"main". With no person the model takes its no-person input (human box of -1s), and the JSON says so.

GAIC's published models (a checkpoint of its release) see photos as its code prepares them (cv2
resize, pixels / 256) and crop among its own candidates (its 12x12 grid, or its 16:9, 4:3 and 1:1
generators), so the tool gives the release's demo crops. PIC's official models (pic_model.py: score =
objective + one personal offset per candidate position) crop only among their fixed views
(untils.pic_format.fixed_views: 24 crops, 4 scales of both sides at 6 anchors, in that order), on
GAIC's release input plus the whole photo at 256x256, whose user logits give the offsets. --user ID
needs ID's fine-tuned checkpoint (finetune_PIC.py's users/ID.pth); a prior scores each photo by its
own logits, as the release; a pre-trained one by its objective score. The JSON says which
("scored_as") and how candidates were chosen ("candidates").

Per photo, in --out (default crops/): NAME_crop1.EXT ... the top-k crops at full resolution,
cut from the file when they are written (JPEG stays JPEG at quality 95, PNG stays PNG), NAME.json
(every candidate ranked with its score, the person used and how it was found, the files written)
and with --visualize NAME_visualization.png (best crops and, for the human-centric model, its
content heat map). A photo whose output names exist is skipped unless --overwrite; files this
tool wrote into an input folder (--out equal to it) are not cropped again. Every option also
takes underscores (--top_k). Exit status: 0 when every photo was cropped or skipped, 1 when some
failed or there was nothing to crop, 2 on a setup error.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from config_GAICD import BACKBONES, PRECISIONS, Config
from cropping_dataset import NO_PERSON_BOX, network_input
from cropping_model import build_crop_model, load_crop_model
from untils.batching import SizeBucketBatchSampler, collate_crops
from untils.boxes import resized_size
from untils.candidates import parse_aspect_ratio
from untils.checkpoint import CheckpointError, read_checkpoint
from untils.crop_candidates import (FIXED_VIEW_COUNT, aspect_value, boxes_in_input, describe_candidates,
                                   photo_candidates)
from untils.cli import add_option_aliases
from untils.config import parse_bool
from untils.inference import move_batch, run_model
from untils.person_detection import (DEFAULT_TORCHVISION_ARCH, MAIN_PERSON_RULE, TORCHVISION_ARCHS, Detection,
                                     PersonDetector, build_person_detector, choose_main_person)
from untils.photos import (DEFAULT_MAX_PIXELS, GAIC_SHORT_SIDE, Box, OutputPaths, PhotoError, PhotoHeader,
                           PhotoLike, as_upright_image, checked_person_box, draw_crops, list_photos, open_upright,
                           plan_outputs, read_header, read_human_boxes_file, save_crop, to_rgb8, write_atomic)
from untils.pic_format import pic_crop_image, pic_user_image
from untils.runtime import autocast_dtype, configure_threads, default_workers, resolve_device

NO_CHECKPOINT_MESSAGE = (
    "crop.py needs a trained checkpoint: --checkpoint PATH.\n"
    "  * train one: python train_on_GAICD.py (the paper's recipe, needs GAICD), or\n"
    "    python train_on_GAICD.py --demo (generated data, on the CPU; writes\n"
    "    demo_runs/experiments/demo/checkpoints/best-srcc.pth);\n"
    "  * or use the official release's checkpoint (a bare state_dict): our loader, as test.py's, accepts it.\n"
    "To try the tool without one, add --allow-untrained: a random-weight model whose crops mean nothing.")
UNTRAINED_WARNING = "UNTRAINED MODEL (random weights): these crops are meaningless"
NO_PERSON_NOTE = "no person: scored with the model's no-person input (human box of -1s)"
NO_USER_SCORE = "objective score (no --user: no user's preference added)"


class MissingCheckpointError(RuntimeError):
    """No checkpoint was given and an untrained model was not allowed."""


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

def _photo_name(photo: PhotoLike, index: int) -> str:
    return os.path.basename(os.fspath(photo)) if isinstance(photo, (str, os.PathLike)) else f"image{index}"


@dataclass
class _PhotoRecord:
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
    """How photos are prepared: the checkpoint's resize rule, the crop ratio, whether to keep the photo,
    and the largest photo (in pixels) that is decoded."""

    image_size: tuple[int, int]
    keep_aspect_ratio: bool
    aspect_ratio: Optional[float]
    keep_image: bool
    max_pixels: int = DEFAULT_MAX_PIXELS
    preprocessing: str = "hcic"  # the model's, also its candidate rule (untils.crop_candidates); "pic": official PIC
    bgr_order: bool = False  # "pic": feed the objective branch BGR, as the checkpoint was trained
    user_image: bool = False  # "pic": add the whole photo at 256x256, whose user logits give the offsets


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
                self.failures.append(PhotoFailure(index, _photo_name(photo, index), str(error)))
                continue
            self.entries.append((index, source, header, human_box))
            self.resized_sizes.append(resized_size(header.width, header.height, settings.image_size,
                                                   settings.keep_aspect_ratio))

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
        name = _photo_name(source, index)
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
        candidates, resized_boxes = photo_candidates(settings.preprocessing, size, resized, settings.aspect_ratio)
        rgb = to_rgb8(image)
        person = self._person(rgb, human_box)
        human = (np.array([person.box]) if person.box is not None else None)
        record = _PhotoRecord(index, name, size[0], size[1], candidates, person, resized, header.orientation,
                              image if settings.keep_image else None, header.format)
        item = {
            "image": (pic_crop_image(np.asarray(rgb), settings.bgr_order)[0][0] if settings.preprocessing == "pic"
                      else network_input(rgb, resized, settings.preprocessing)),
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


def _official_pic_scoring(content: dict[str, Any], checkpoint: str, user: Optional[str],
                          num_positions: int) -> tuple[bool, str]:
    """How an official PIC checkpoint scores: ``(with its position offsets, the JSON's scored_as)``.
    ``user`` must be the one its fine-tuned checkpoint records (finetune_PIC.py): a prior (or the
    release's file) holds no per-user state, each photo's own user logits give its offsets."""
    stage, trained_for = content.get("stage"), content.get("user")
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
    if num_positions != FIXED_VIEW_COUNT:
        raise ValueError(f"{checkpoint}: its {num_positions} position offsets do not fit the {FIXED_VIEW_COUNT} "
                         "fixed views crop.py scores (untils.pic_format.fixed_views)")
    if user is None:
        warnings.warn(f"{checkpoint} is {what}, used without --user: crops are ranked by its {OFFICIAL_PIC_SCORE}",
                      stacklevel=3)
    return True, f"{'user ' + user + ': ' if user else ''}{OFFICIAL_PIC_SCORE}; {what}"


class Cropper:
    """Rank candidate crops of photos with a crop-scoring model.

    ``Cropper("best.pth").crop("photo.jpg", top_k=3)`` gives ``[((x1, y1, x2, y2), score), ...]``.
    ``checkpoint`` is ours (with its config) or the official release's bare state_dict. Without
    one, ``allow_untrained=True`` builds a random-weight human-centric model on ``backbone`` (for
    trying the tool and timing it; its crops mean nothing). ``detector`` finds the person when
    none is given (see ``untils.person_detection``). ``precision`` (fp32, bf16, fp16) autocasts the
    forward pass; ``channels_last`` runs the model channels-last (both faster on GPUs).
    """

    def __init__(self, checkpoint: Optional[str] = None, device: str = "auto", *,
                 detector: Optional[PersonDetector] = None, allow_untrained: bool = False,
                 backbone: str = "vgg16", user: Optional[str] = None, precision: str = "fp32",
                 channels_last: bool = False, trust_checkpoint: bool = False) -> None:
        self.device = resolve_device(device)
        self.precision = precision
        self.autocast_dtype = autocast_dtype(precision)
        self.channels_last = channels_last
        self.checkpoint = checkpoint
        self.untrained = checkpoint is None
        self.user = user
        content: dict[str, Any] = {}
        if checkpoint is None:
            if not allow_untrained:
                raise MissingCheckpointError(NO_CHECKPOINT_MESSAGE)
            self.model = build_crop_model(Config(backbone=backbone, pretrained=False), "HCIC").to(self.device).eval()
            warnings.warn(UNTRAINED_WARNING, stacklevel=2)
        else:
            content = read_checkpoint(checkpoint, trusted=trust_checkpoint)  # its stage and user are read below
            try:
                self.model = load_crop_model(content, self.device)
            except CheckpointError as error:
                raise CheckpointError(f"{checkpoint}: {error}") from None
        self.cfg = self.model.cfg
        self.model_type = self.cfg.model_type
        if user is not None and self.model_type != "PIC":
            raise ValueError(f"--user {user}: {checkpoint} is not a personalized (PIC) checkpoint; "
                             "train one with prior_PIC.py / finetune_PIC.py")
        official_pic = self.model_type == "PIC" and self.cfg.variant == "official"
        # an official PIC model sees GAIC's release input and its fixed views (untils.crop_candidates)
        self.preprocessing = "pic" if official_pic else self.cfg.image_preprocessing
        self.image_size, self.keep_aspect_ratio = (((GAIC_SHORT_SIDE, GAIC_SHORT_SIDE), True) if official_pic
                                                   else (tuple(self.cfg.image_size), self.cfg.keep_aspect_ratio))
        self.user_image, self.scored_as = False, None
        if official_pic:
            self.user_image, self.scored_as = _official_pic_scoring(content, str(checkpoint), user,
                                                                    self.cfg.num_positions)
        elif self.model_type == "PIC":
            users = self.model.user_embeddings
            known = ", ".join(sorted(users)) or "none"
            if user is not None and user not in users:
                raise ValueError(f"--user {user}: {checkpoint} knows no such user (known users: {known})")
            self.model.user = user
            self.scored_as = f"user {user}" if user is not None else NO_USER_SCORE
            if user is None:  # say so: without a user the scores are nobody's taste
                warnings.warn(f"{checkpoint} is a personalized (PIC) checkpoint used without --user: crops are ranked "
                              f"by its {NO_USER_SCORE}; --user ID ranks them as one of its users ({known})",
                              stacklevel=2)
        self.detector = detector
        if channels_last:
            self.model.to(memory_format=torch.channels_last)

    def describe(self) -> dict[str, Any]:
        """The model, for the JSON outputs."""
        entry = {"checkpoint": self.checkpoint, "model_type": self.model_type, "user": self.user,
                 "backbone": self.cfg.backbone,
                 "image_size": list(self.image_size), "keep_aspect_ratio": self.keep_aspect_ratio,
                 "untrained": self.untrained, "precision": self.precision, "channels_last": self.channels_last}
        if self.scored_as is not None:
            entry["scored_as"] = self.scored_as
        if self.untrained:
            entry["warning"] = UNTRAINED_WARNING
        return entry

    def candidates(self, aspect_ratio: Union[None, str, float] = None) -> str:
        """How this model's candidates are chosen at ``aspect_ratio`` (``untils.crop_candidates``);
        raises ValueError for a ratio they cannot give (any, for an official PIC model)."""
        return describe_candidates(self.preprocessing, aspect_value(aspect_ratio))

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
        settings = PhotoSettings(self.image_size, self.keep_aspect_ratio, aspect_value(aspect_ratio), keep_image,
                                 max_pixels, self.preprocessing, getattr(self.cfg, "bgr_order", False), self.user_image)
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
        output = run_model(self.model, move_batch(batch, self.device), self.autocast_dtype, self.channels_last)
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


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

def _aspect_argument(text: str) -> str:
    try:
        parse_aspect_ratio(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def _box_argument(text: str) -> tuple[float, ...]:
    parts = text.replace(" ", "").split(",")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"--human-box {text!r}: expected four numbers x1,y1,x2,y2")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("photos", nargs="+", metavar="PHOTO_OR_FOLDER", help="photos, or folders of photos")
    parser.add_argument("--checkpoint", help="trained model: ours (train_on_GAICD.py) or the official release's")
    parser.add_argument("--user", metavar="ID", help="score crops the way this user likes: needs a personalized "
                        "checkpoint (prior_PIC.py: its training users; finetune_PIC.py: users/ID.pth, the only "
                        "choice for the official variant)")
    parser.add_argument("--aspect-ratio", default="any", type=_aspect_argument,
                        help="any (the GAIC grid), or W:H such as 1:1, 4:3, 3:4, 16:9, or a number w/h; an "
                        "official PIC checkpoint takes only any (its fixed views)")
    parser.add_argument("--top-k", type=int, default=3, help="crops saved per photo (default 3)")
    person = parser.add_mutually_exclusive_group()
    person.add_argument("--human-box", type=_box_argument, metavar="X1,Y1,X2,Y2",
                        help="the person, in pixels of the upright photo (for every photo given)")
    person.add_argument("--human-boxes", metavar="JSON", help="a JSON file {file name or stem: [x1, y1, x2, y2]}")
    person.add_argument("--detect-human", action="store_true", help="find the person (see above)")
    parser.add_argument("--detector-weights", metavar="PATH",
                        help="with --detect-human: a torchvision detection model's state_dict file, used offline "
                        "(default: torchvision's COCO weights for --detector-arch, downloaded once into torch's hub "
                        "cache)")
    parser.add_argument("--detector-arch", default=DEFAULT_TORCHVISION_ARCH, choices=TORCHVISION_ARCHS,
                        help="the torchvision person detector (default %(default)s)")
    parser.add_argument("--no-download", action="store_true",
                        help="with --detect-human: never download detector weights; without them in torch's hub "
                        "cache, use the offline HOG/face detectors")
    parser.add_argument("--out", default="crops", help="output folder (default crops/)")
    parser.add_argument("--visualize", action="store_true", help="also write NAME_visualization.png")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--photos-per-batch", type=int, default=4, help="photos scored together (default 4)")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS,
                        help="forward pass in fp32 (default), or autocast to bf16/fp16: faster on GPUs and on "
                        "CPUs with AVX512-BF16/AMX; the ranking can change where scores are within rounding")
    parser.add_argument("--channels-last", type=parse_bool, nargs="?", const=True, default=False, metavar="BOOL",
                        help="channels-last convolutions (faster on GPUs and with oneDNN on CPUs); "
                        "alone or with true/false")
    parser.add_argument("--num-workers", type=int, default=default_workers(limit=2),
                        help="DataLoader workers decoding photos (0: in this process; default: the free CPUs "
                        "but one, at most 2)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help="photos with more pixels are refused undecoded, like unreadable ones (default "
                        f"{DEFAULT_MAX_PIXELS:,}, Pillow's decompression-bomb limit)")
    parser.add_argument("--allow-untrained", action="store_true",
                        help="without --checkpoint, use a random-weight model (its crops mean nothing)")
    parser.add_argument("--untrained-backbone", default="vgg16", choices=BACKBONES,
                        help="backbone of the --allow-untrained model")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="load a checkpoint that holds more than tensors and plain data (UNSAFE: such a file "
                        "can run code; only for files you made yourself with an older version)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an unexpected error")
    return add_option_aliases(parser, renamed={"--batch-size": "--photos-per-batch",
                                                       "--workers": "--num-workers"})


def _error(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the tool; returns 0 when every photo was cropped or skipped, 1 when some failed or none was
    found, 2 on a setup error. Every error is one ``error:`` line; ``--debug`` shows tracebacks."""
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except Exception as error:  # anything unforeseen: still one line, the traceback only when asked
        if args.debug:
            raise
        return _error(f"{type(error).__name__}: {error} (--debug shows where)")


def _run(args: argparse.Namespace) -> int:
    if args.top_k < 1 or args.photos_per_batch < 1 or args.num_workers < 0 or args.max_pixels < 1:
        return _error("--top-k, --photos-per-batch and --max-pixels must be >= 1 and --num-workers >= 0")
    if (args.detector_weights or args.no_download) and not args.detect_human:
        return _error("--detector-weights and --no-download need --detect-human")
    if not args.checkpoint and not args.allow_untrained:
        return _error(NO_CHECKPOINT_MESSAGE)
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        return _error(f"--out {out_dir}: is an existing file, not a folder")
    listing = list_photos(args.photos)
    configure_threads()  # no more torch threads than free CPUs: on a busy machine extra ones only contend
    for note in listing.notes:
        print(note, file=sys.stderr)
    if not listing.photos and not listing.failures:
        return _error(f"no photo to crop in {', '.join(args.photos)}", code=1)
    try:
        file_boxes = read_human_boxes_file(args.human_boxes) if args.human_boxes else None
        with warnings.catch_warnings(record=True) as caught:  # said below, as notes
            warnings.simplefilter("default")
            detector = (build_person_detector(args.detector_weights, args.detector_arch,
                                              allow_download=not args.no_download) if args.detect_human else None)
            cropper = Cropper(args.checkpoint, args.device, detector=detector, allow_untrained=args.allow_untrained,
                              backbone=args.untrained_backbone, user=args.user, precision=args.precision,
                              channels_last=args.channels_last, trust_checkpoint=args.trust_checkpoint)
        cropper.candidates(args.aspect_ratio)  # a ratio its candidates cannot give fails here, not per photo
    except (ValueError, RuntimeError) as error:  # bad file, checkpoint (CheckpointError), detector, device
        print(f"error: {error}", file=sys.stderr)
        if isinstance(error, CheckpointError) and not os.path.exists(args.checkpoint):
            print(NO_CHECKPOINT_MESSAGE, file=sys.stderr)
        return 2
    for warning in caught:
        text = str(warning.message)
        print(f"WARNING: {text}" if text == UNTRAINED_WARNING else f"note: {text}", file=sys.stderr)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        return _error(f"--out {out_dir}: cannot make the folder ({error.strerror or error})")

    plan = plan_outputs(listing.photos, out_dir, args.top_k, args.visualize, args.overwrite, args.max_pixels)
    failures, todo = listing.failures + plan.failures, list(plan.todo)
    boxes = [file_boxes.get(p.name, file_boxes.get(p.stem)) if file_boxes is not None else args.human_box
             for p in todo]
    for message in plan.skipped:
        print(f"skipped {message}", file=sys.stderr)
    source = "file" if file_boxes is not None else "given"
    if file_boxes is not None:
        missing = [p.name for p, box in zip(todo, boxes) if box is None]
        if missing:
            print(f"{args.human_boxes} has no box for {len(missing)} photo(s) ({', '.join(missing[:5])}): "
                  "cropped without a person", file=sys.stderr)

    cropped = 0
    with tqdm(total=len(todo), unit="photo", desc="cropping", file=sys.stderr) as progress:
        for result in cropper.rank_many([str(p) for p in todo], boxes, args.aspect_ratio, human_source=source,
                                        batch_size=args.photos_per_batch, num_workers=args.num_workers,
                                        max_pixels=args.max_pixels):
            photo = todo[result.index]
            progress.update(1)
            try:
                if isinstance(result, PhotoFailure):
                    raise PhotoError(result.message)
                write_outputs(result, photo, plan.todo[photo], cropper, args.aspect_ratio, args.max_pixels)
            except (OSError, PhotoError) as error:
                message = f"could not write its outputs ({error})" if isinstance(error, OSError) else str(error)
                failures.append(f"{photo}: {message}")
                progress.write(f"failed {photo}: {message}", file=sys.stderr)
                continue
            cropped += 1
            if result.person.source == "detected" or (args.detect_human and result.person.box is None):
                found = "no person found" if result.person.box is None else f"person at {list(result.person.box)}"
                progress.write(f"{photo.name}: {found}", file=sys.stderr)
    print(f"{cropped} photo(s) cropped into {out_dir}/, {len(plan.skipped)} skipped (outputs exist), "
          f"{len(failures)} failed", file=sys.stderr)
    for failure in failures:
        print(f"  failed: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
