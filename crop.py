"""Crop your own photos with a trained crop-scoring model (human-centric or GAIC).

  python crop.py photo.jpg --checkpoint experiments/GAICD_PA_CP/checkpoints/best-srcc.pth
  python crop.py holidays/ --checkpoint best.pth --aspect-ratio 4:3 --top-k 3 --detect-human --visualize
  python crop.py portrait.png --checkpoint best.pth --human-box 120,40,380,512

Candidates are the GAIC grid of the paper (up to 90 crops, aspect ratios 0.5 to 2.2) when the
ratio is free, or for --aspect-ratio W:H crops of exactly that ratio (within one pixel) at six
scales (100% to 50% of the largest that fits) and 5x5 positions. They are made in the photo's
pixels, scored on the photo resized as the checkpoint's config says (shorter side 256 rounded
to a multiple of 32, LANCZOS), and returned in the photo's pixels: whole, inside the photo.

EXIF orientation is applied first (as photo viewers do), so every box refers to the upright
photo, and the saved crops are upright.

The person: --human-box (pixels of the upright photo), --human-boxes FILE (JSON
{file name or stem: [x1, y1, x2, y2]}), or --detect-human (offline: OpenCV's HOG people
detector where this OpenCV has it, and scikit-image's face cascade grown into a body box; with
--detector-weights, a torchvision detection model). The main person is the largest, most
central detection: highest (area / image area) * (1 - centre distance / half diagonal). With no
person the model takes its no-person input (human box of -1s), and the JSON says so.

Per photo, in --out (default crops/): NAME_crop1.EXT ... the top-k crops at full resolution
(JPEG stays JPEG at quality 95, PNG stays PNG), NAME.json (every candidate ranked with its
score, the person used and how it was found, the files written) and with --visualize
NAME_visualization.png (best crops and, for the human-centric model, its content heat map).
Existing outputs are kept (the photo is skipped) unless --overwrite.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from config_GAICD import BACKBONES, PRECISIONS, Config
from cropping_dataset import NO_PERSON_BOX, SizeBucketBatchSampler, collate_crops, normalize_image
from cropping_model import GAICModel, HumanCentricCroppingModel, PICModel, build_crop_model, load_pic_model
from test import load_model, model_outputs
from untils.boxes import clip_boxes, rescale_boxes, resized_size
from untils.candidates import fixed_ratio_candidates, gaic_grid_candidates, parse_aspect_ratio
from untils.checkpoint import CheckpointError, read_checkpoint
from untils.person_detection import (MAIN_PERSON_RULE, TORCHVISION_ARCHS, Detection, PersonDetector,
                                     build_person_detector, main_person)
from untils.runtime import autocast, autocast_dtype, resolve_device

Box = tuple[int, int, int, int]
PhotoLike = Union[str, os.PathLike, Image.Image, np.ndarray]
JPEG_QUALITY = 95
SAVE_AS = {"MPO": "JPEG"}  # phone JPEGs often open as MPO; their crops are plain JPEGs
EXIF_ORIENTATION_TAG = 0x0112
ROTATED_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations that swap width and height
NO_CHECKPOINT_MESSAGE = (
    "crop.py needs a trained checkpoint: --checkpoint PATH.\n"
    "  * train one: python train_on_GAICD.py (the paper's recipe, needs GAICD), or\n"
    "    python train_on_GAICD.py --demo (a few CPU minutes on generated data; writes\n"
    "    demo_runs/experiments/demo/checkpoints/best-srcc.pth);\n"
    "  * or use the official release's checkpoint (a bare state_dict): our loader, as test.py's, accepts it.\n"
    "To try the tool without one, add --allow-untrained: a random-weight model whose crops mean nothing.")
UNTRAINED_WARNING = "UNTRAINED MODEL (random weights): these crops are meaningless"
NO_PERSON_NOTE = "no person: scored with the model's no-person input (human box of -1s)"


class MissingCheckpointError(RuntimeError):
    """No checkpoint was given and an untrained model was not allowed."""


class PhotoError(ValueError):
    """One photo cannot be cropped (unreadable, bad person box, no candidate crop)."""


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
    image: Optional[Image.Image] = None  # the upright photo, when asked for (to save crops)
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


def read_upright_size(path: str) -> tuple[int, int, int]:
    """``(width, height, exif_orientation)`` of the upright photo, from its header only."""
    try:
        with Image.open(path) as image:
            orientation = int(image.getexif().get(EXIF_ORIENTATION_TAG, 1))
            width, height = image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise PhotoError(f"not a readable image ({error})") from None
    if orientation in ROTATED_ORIENTATIONS:
        width, height = height, width
    return width, height, orientation


def upright(image: Image.Image) -> tuple[Image.Image, int]:
    """The photo turned as its EXIF orientation says (tag removed), and that orientation."""
    orientation = int(image.getexif().get(EXIF_ORIENTATION_TAG, 1))
    return (ImageOps.exif_transpose(image) if orientation != 1 else image), orientation


def load_photo(path: str) -> tuple[Image.Image, int, Optional[str]]:
    """Decode a photo file: ``(upright image, EXIF orientation, file format)``."""
    try:
        with Image.open(path) as opened:
            image_format = opened.format
            opened.load()
            image, orientation = upright(opened)
            if image is opened:
                image = opened.copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise PhotoError(f"cannot decode the image ({error})") from None
    return image, orientation, image_format


def as_upright_image(photo: PhotoLike) -> tuple[Image.Image, int, Optional[str]]:
    """A path, a PIL image or an (H, W, 3) uint8 array as ``(upright PIL image, orientation, format)``."""
    if isinstance(photo, (str, os.PathLike)):
        return load_photo(os.fspath(photo))
    if isinstance(photo, Image.Image):
        image, orientation = upright(photo)
        return image, orientation, photo.format
    if isinstance(photo, np.ndarray):
        if photo.ndim != 3 or photo.shape[2] != 3 or photo.dtype != np.uint8:
            raise PhotoError(f"an image array must be (H, W, 3) uint8 RGB, got {photo.dtype} {photo.shape}")
        return Image.fromarray(photo), 1, None
    raise PhotoError(f"a photo must be a path, a PIL image or an (H, W, 3) uint8 array, got {type(photo).__name__}")


def candidate_boxes(width: int, height: int, aspect_ratio: Optional[float]) -> np.ndarray:
    """Candidate crops (N, 4) in whole pixels of a ``width`` x ``height`` photo; see the module docstring."""
    if aspect_ratio is None:
        boxes = gaic_grid_candidates(width, height)
    else:
        boxes = fixed_ratio_candidates(width, height, aspect_ratio)
    if len(boxes) == 0:
        raise PhotoError(f"no candidate crop for a {width}x{height} photo: the GAIC grid keeps crops of aspect "
                         "ratio 0.5 to 2.2 covering half the photo; pass --aspect-ratio for such a shape")
    return boxes.numpy().astype(np.int64)


def checked_person_box(box: Sequence[float], width: int, height: int) -> tuple[float, float, float, float]:
    """A person box ``[x1, y1, x2, y2]`` clipped to the photo; an error names what is wrong."""
    try:
        values = np.asarray(box, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        values = np.zeros(0)
    if values.size != 4 or not np.all(np.isfinite(values)):
        raise PhotoError(f"person box {box!r} must be 4 finite numbers x1, y1, x2, y2")
    x1, y1, x2, y2 = values
    if not (x2 > x1 and y2 > y1):
        raise PhotoError(f"person box {list(values)} must have x2 > x1 and y2 > y1")
    clipped = clip_boxes(values.reshape(1, 4), width, height)[0]
    if not (clipped[2] > clipped[0] and clipped[3] > clipped[1]):
        raise PhotoError(f"person box {list(values)} lies outside the {width}x{height} photo")
    return tuple(float(v) for v in clipped)


def _resized_boxes(boxes: np.ndarray, size: tuple[int, int], resized: tuple[int, int]) -> torch.Tensor:
    """Boxes in photo pixels to the network input, as the datasets scale them, clipped inside it."""
    scaled = rescale_boxes(np.asarray(boxes, dtype=np.float64), resized[0] / size[0], resized[1] / size[1])
    return torch.from_numpy(clip_boxes(scaled, *resized).astype(np.float32))


@dataclass(frozen=True)
class _DecodedPhoto:
    image: Image.Image  # upright
    orientation: int
    image_format: Optional[str]


@dataclass
class _PhotoRecord:
    """What the scorer needs besides tensors; travels through the DataLoader unchanged."""

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
    """How photos are prepared: the checkpoint's resize rule, the crop ratio, whether to keep the photo."""

    image_size: tuple[int, int]
    keep_aspect_ratio: bool
    aspect_ratio: Optional[float]
    keep_image: bool


class PhotoDataset(Dataset):
    """Photos decoded, person found, candidates made and resized; items for ``collate_crops``.

    File headers are read at construction, so every photo's resized size is known for size
    bucketing; unreadable files become :class:`PhotoFailure` entries in ``failures``. Items
    that fail later (corrupt data, bad person box) come back as a ``PhotoFailure`` too.
    """

    def __init__(self, photos: Sequence[PhotoLike], human_boxes: Sequence[Optional[Sequence[float]]],
                 human_source: str, detector: Optional[PersonDetector], settings: PhotoSettings) -> None:
        self.settings, self.detector, self.human_source = settings, detector, human_source
        self.entries: list[tuple[int, Union[str, _DecodedPhoto], Optional[Sequence[float]]]] = []
        self.resized_sizes: list[tuple[int, int]] = []
        self.failures: list[PhotoFailure] = []
        for index, (photo, human_box) in enumerate(zip(photos, human_boxes)):
            try:
                if isinstance(photo, (str, os.PathLike)):
                    source: Union[str, _DecodedPhoto] = os.fspath(photo)
                    width, height, _ = read_upright_size(source)
                else:
                    source = _DecodedPhoto(*as_upright_image(photo))
                    width, height = source.image.size
            except PhotoError as error:
                self.failures.append(PhotoFailure(index, _photo_name(photo, index), str(error)))
                continue
            self.entries.append((index, source, human_box))
            self.resized_sizes.append(resized_size(width, height, settings.image_size, settings.keep_aspect_ratio))

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
        detections = self.detector(np.asarray(rgb))
        main = main_person(detections, width, height)
        box = None if main is None else tuple(float(v) for v in detections[main].box)
        return PersonInfo(box, "detected" if box else "none", detections, self.detector.name)

    def __getitem__(self, position: int) -> Union[dict[str, Any], PhotoFailure]:
        index, source, human_box = self.entries[position]
        name = _photo_name(source, index)
        try:
            decoded = source if isinstance(source, _DecodedPhoto) else _DecodedPhoto(*load_photo(source))
            return self._item(index, name, decoded, human_box, self.resized_sizes[position])
        except PhotoError as error:
            return PhotoFailure(index, name, str(error))

    def _item(self, index: int, name: str, decoded: _DecodedPhoto, human_box: Optional[Sequence[float]],
              resized: tuple[int, int]) -> dict[str, Any]:
        image = decoded.image
        size = image.size
        if resized != resized_size(*size, self.settings.image_size, self.settings.keep_aspect_ratio):
            raise PhotoError(f"the decoded image ({size[0]}x{size[1]}) does not match its header")
        candidates = candidate_boxes(*size, self.settings.aspect_ratio)
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        person = self._person(rgb, human_box)
        human = (np.array([person.box]) if person.box is not None else None)
        record = _PhotoRecord(index, name, size[0], size[1], candidates, person, resized, decoded.orientation,
                              image if self.settings.keep_image else None, decoded.image_format)
        return {
            "image": normalize_image(rgb.resize(resized, Image.Resampling.LANCZOS)),
            "crop_box": _resized_boxes(candidates, size, resized),
            "human_box": (_resized_boxes(human, size, resized) if human is not None
                          else torch.tensor([NO_PERSON_BOX], dtype=torch.float32)),
            "photo": record,
        }


def collate_photos(items: list) -> tuple[Optional[dict[str, Any]], list[PhotoFailure]]:
    """``collate_crops`` of the photos that were prepared, and the failures beside them."""
    failures = [item for item in items if isinstance(item, PhotoFailure)]
    prepared = [item for item in items if not isinstance(item, PhotoFailure)]
    return (collate_crops(prepared) if prepared else None), failures


# ----------------------------------------------------------------------------------------------
# The cropper
# ----------------------------------------------------------------------------------------------

def _aspect_value(aspect_ratio: Union[None, str, float]) -> Optional[float]:
    if aspect_ratio is None or isinstance(aspect_ratio, str):
        return None if aspect_ratio is None else parse_aspect_ratio(aspect_ratio)
    value = float(aspect_ratio)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"aspect ratio must be a positive number (w/h), got {aspect_ratio!r}")
    return value


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
                 channels_last: bool = False) -> None:
        self.device = resolve_device(device)
        self.precision = precision
        self.autocast_dtype = autocast_dtype(precision)
        self.channels_last = channels_last
        self.checkpoint = checkpoint
        self.untrained = checkpoint is None
        self.user = user
        if checkpoint is None:
            if not allow_untrained:
                raise MissingCheckpointError(NO_CHECKPOINT_MESSAGE)
            self.cfg = Config(backbone=backbone, pretrained=False)
            self.model = build_crop_model(self.cfg, "HCIC").to(self.device).eval()
            warnings.warn(UNTRAINED_WARNING, stacklevel=2)
        else:
            content = read_checkpoint(checkpoint)
            if content.get("model_type") == "PIC":
                self.model = load_pic_model(content, self.device)
                self.cfg = self.model.cfg
            else:
                self.model, self.cfg = load_model(checkpoint, {}, self.device)
        if user is not None:
            if not isinstance(self.model, PICModel):
                raise ValueError(f"--user {user}: {checkpoint} is not a personalized (PIC) checkpoint; "
                                 "train one with prior_PIC.py / finetune_PIC.py")
            if user not in self.model.user_embeddings:
                known = ", ".join(sorted(self.model.user_embeddings)) or "none"
                raise ValueError(f"--user {user}: {checkpoint} knows no such user (known users: {known})")
        self.model_type = ("PIC" if isinstance(self.model, PICModel)
                           else "GAIC" if isinstance(self.model, GAICModel) else "HCIC")
        self.has_heat_map = (isinstance(self.model, HumanCentricCroppingModel)
                             and self.model.content_preserve is not None)
        self.detector = detector
        if channels_last:
            self.model.to(memory_format=torch.channels_last)

    def describe(self) -> dict[str, Any]:
        """The model, for the JSON outputs."""
        entry = {"checkpoint": self.checkpoint, "model_type": self.model_type, "user": self.user,
                 "backbone": self.cfg.backbone,
                 "image_size": list(self.cfg.image_size), "keep_aspect_ratio": self.cfg.keep_aspect_ratio,
                 "untrained": self.untrained, "precision": self.precision, "channels_last": self.channels_last}
        if self.untrained:
            entry["warning"] = UNTRAINED_WARNING
        return entry

    def rank_many(self, photos: Sequence[PhotoLike], human_boxes: Optional[Sequence[Optional[Sequence[float]]]] = None,
                  aspect_ratio: Union[None, str, float] = None, *, human_source: str = "given",
                  batch_size: int = 4, num_workers: int = 0,
                  keep_image: bool = False) -> Iterator[Union[CropResult, PhotoFailure]]:
        """Rank the candidates of many photos; yields one result or failure per photo, as they finish.

        Photos are decoded (and people detected) in ``num_workers`` DataLoader workers and
        scored ``batch_size`` at a time, photos of one resized size together, so the order is
        not the input order: use each result's ``index``. ``human_boxes`` (one per photo, None
        for none) are in upright-photo pixels; ``keep_image`` returns the upright photo too.
        """
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"batch_size must be >= 1 and num_workers >= 0, got {batch_size} and {num_workers}")
        if human_boxes is None:
            human_boxes = [None] * len(photos)
        if len(human_boxes) != len(photos):
            raise ValueError(f"got {len(human_boxes)} person boxes for {len(photos)} photos")
        settings = PhotoSettings(tuple(self.cfg.image_size), self.cfg.keep_aspect_ratio,
                             _aspect_value(aspect_ratio), keep_image)
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
        inputs = {key: batch[key].to(self.device, non_blocking=True)
                  for key in ("image", "crop_box", "human_box", "crop_valid")}
        if self.user is not None:
            if self.channels_last:
                inputs["image"] = inputs["image"].contiguous(memory_format=torch.channels_last)
            with autocast(self.device, self.autocast_dtype):
                heat_maps, scores = None, self.model.score_for_user(inputs, self.user)
        else:
            _, heat_maps, scores = model_outputs(self.model, inputs, self.autocast_dtype, self.channels_last)
        results = []
        scores = scores.float().cpu()  # one device-to-host copy per batch
        heat_maps = heat_maps[:, 0].float().cpu() if self.has_heat_map and heat_maps is not None else None
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

def _save_format(image_format: Optional[str], suffix: str) -> tuple[str, str]:
    """``(PIL format, extension)`` for the crops: the photo's own where Pillow writes it, else PNG.

    The photo's extension is kept when it fits the format (.jpeg stays .jpeg).
    """
    registered = Image.registered_extensions()  # also loads every plugin, filling Image.SAVE
    fmt = SAVE_AS.get(str(image_format).upper(), str(image_format).upper())
    if fmt not in Image.SAVE:
        fmt = "PNG"
    extensions = [ext for ext, owner in registered.items() if owner == fmt]
    if suffix.lower() in extensions:
        return fmt, suffix
    return fmt, (".png" if fmt == "PNG" else ".jpg" if fmt == "JPEG" else extensions[0])


def _write_atomic(path: Path, write: Callable[[str], None]) -> None:
    """Write through a temporary file in the same folder, then rename: never a half-written output."""
    handle, tmp_path = tempfile.mkstemp(prefix=".tmp-", suffix=path.suffix, dir=path.parent)
    os.close(handle)
    try:
        write(tmp_path)
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


def save_crop(image: Image.Image, box: Box, path: Path, image_format: str) -> None:
    """The crop at full resolution, keeping the photo's colour profile and (orientation-free) EXIF."""
    region = image.crop(box)
    options: dict[str, Any] = {key: image.info[key] for key in ("icc_profile", "exif") if image.info.get(key)}
    if image_format == "JPEG":
        options.update(quality=JPEG_QUALITY)
        if region.mode not in ("RGB", "L", "CMYK"):
            region = region.convert("RGB")
    _write_atomic(path, lambda tmp: region.save(tmp, format=image_format, **options))


def draw_figure(result: CropResult, top_k: int, path: Path, title_lines: Sequence[str], warning: bool) -> None:
    """The photo with the best crops (and person) drawn, the content heat map overlaid where there is one."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    photo_inches, line_inches = 6.0, 0.3
    header_inches = line_inches * (len(title_lines) + 0.5)
    total_inches = photo_inches + header_inches
    figure = Figure(figsize=(max(4.0, photo_inches * result.width / result.height), total_inches))
    FigureCanvasAgg(figure)
    axes = figure.add_axes((0, 0, 1, photo_inches / total_inches))
    axes.imshow(result.image.convert("RGB"))
    if result.heat_map is not None:
        axes.imshow(result.heat_map, cmap="jet", alpha=0.4, vmin=0, vmax=1, interpolation="bilinear",
                    extent=(0, result.width, result.height, 0))
    colours = ["#ff2d2d", "#ffd400", "#2dd4ff", "#7dff2d", "#ff7dff"]
    for rank, (box, score) in reversed(list(enumerate(result.top(top_k), start=1))):
        colour = colours[(rank - 1) % len(colours)]
        x1, y1, x2, y2 = box
        axes.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour,
                                 linewidth=3.0 if rank == 1 else 1.5))
        # Labels are listed in the corner: the best crops often share edges, so labels on them would overlap.
        axes.text(0.01, 0.99 - (rank - 1) * 0.045, f"#{rank} {score:.3f}", transform=axes.transAxes,
                  color="black", fontsize=9, va="top",
                  bbox={"facecolor": colour, "alpha": 0.85, "pad": 1.5, "edgecolor": "none"})
    if result.person.box is not None:
        x1, y1, x2, y2 = result.person.box
        axes.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="white",
                                 linestyle="--", linewidth=1.5))
    axes.set_xlim(0, result.width)
    axes.set_ylim(result.height, 0)
    axes.axis("off")
    for line_number, line in enumerate(title_lines):
        is_warning = warning and line_number == len(title_lines) - 1
        figure.text(0.01, 1 - line_inches * (line_number + 0.75) / total_inches, line, fontsize=9, va="center",
                    color="red" if is_warning else "black", fontweight="bold" if is_warning else "normal")
    _write_atomic(path, lambda tmp: figure.savefig(tmp, format="png", dpi=100))


@dataclass(frozen=True)
class OutputPaths:
    json: Path
    crops: list[Path]
    figure: Optional[Path]

    def existing(self) -> list[Path]:
        return [p for p in [self.json, *self.crops, self.figure] if p is not None and p.exists()]


def output_paths(out_dir: Path, photo: Path, top_k: int, visualize: bool, image_format: Optional[str]) -> OutputPaths:
    """Where a photo's outputs go; ``image_format`` None means guess it from the file name."""
    if image_format is None:
        image_format = Image.registered_extensions().get(photo.suffix.lower())
    _, extension = _save_format(image_format, photo.suffix)
    stem = photo.stem
    return OutputPaths(out_dir / f"{stem}.json",
                       [out_dir / f"{stem}_crop{rank}{extension}" for rank in range(1, top_k + 1)],
                       out_dir / f"{stem}_visualization.png" if visualize else None)


def write_outputs(result: CropResult, photo: Path, out_dir: Path, top_k: int, visualize: bool,
                  cropper: Cropper, aspect_text: str) -> None:
    """Crops, JSON and (with ``visualize``) figure of one photo."""
    paths = output_paths(out_dir, photo, top_k, visualize, result.image_format)
    image_format, _ = _save_format(result.image_format, photo.suffix)
    crops = []
    for rank, ((box, score), path) in enumerate(zip(result.top(top_k), paths.crops), start=1):
        save_crop(result.image, box, path, image_format)
        crops.append({"rank": rank, "file": path.name, "box": list(box), "score": score,
                      "width": box[2] - box[0], "height": box[3] - box[1]})
    description = {
        "photo": str(photo), "width": result.width, "height": result.height,
        "exif_orientation": result.exif_orientation,
        "coordinates": "pixels of the upright photo (EXIF orientation applied), [x1, y1, x2, y2]",
        "model": cropper.describe(), "resized_to": list(result.resized_size),
        "aspect_ratio": aspect_text, "aspect_ratio_value": result.aspect_ratio,
        "candidates": "GAIC grid" if result.aspect_ratio is None else "fixed ratio",
        "person": result.person.to_json(),
        "crops": crops,
        "ranked": [{"box": list(box), "score": score} for box, score in zip(result.boxes, result.scores)],
    }
    if paths.figure is not None:
        title_lines = [f"{photo.name}: top {len(crops)} of {len(result.boxes)} crops, ratio {aspect_text}",
                       f"{cropper.model_type} {cropper.cfg.backbone}; "
                       + (f"heat map of content to keep (jet, 0 blue to 1 red): {result.heat_map.min():.2f} to "
                          f"{result.heat_map.max():.2f}; " if result.heat_map is not None else "")
                       + ("dashed: person" if result.person.box is not None else "no person")]
        if cropper.untrained:
            title_lines.append(UNTRAINED_WARNING)
        draw_figure(result, top_k, paths.figure, title_lines, warning=cropper.untrained)
        description["figure"] = paths.figure.name
    _write_atomic(paths.json, lambda tmp: Path(tmp).write_text(json.dumps(description, indent=1)))


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
                        "checkpoint (prior_PIC.py: its training users; finetune_PIC.py: users/ID.pth)")
    parser.add_argument("--aspect-ratio", default="any", type=_aspect_argument,
                        help="any (the GAIC grid), or W:H such as 1:1, 4:3, 3:4, 16:9, or a number w/h")
    parser.add_argument("--top-k", type=int, default=3, help="crops saved per photo (default 3)")
    person = parser.add_mutually_exclusive_group()
    person.add_argument("--human-box", type=_box_argument, metavar="X1,Y1,X2,Y2",
                        help="the person, in pixels of the upright photo (for every photo given)")
    person.add_argument("--human-boxes", metavar="JSON", help="a JSON file {file name or stem: [x1, y1, x2, y2]}")
    person.add_argument("--detect-human", action="store_true", help="find the person (see above)")
    parser.add_argument("--detector-weights", metavar="PATH",
                        help="with --detect-human: a torchvision detection model's state_dict file")
    parser.add_argument("--detector-arch", default="fasterrcnn_mobilenet_v3_large_fpn", choices=TORCHVISION_ARCHS,
                        help="the torchvision architecture of --detector-weights")
    parser.add_argument("--out", default="crops", help="output folder (default crops/)")
    parser.add_argument("--visualize", action="store_true", help="also write NAME_visualization.png")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--batch-size", type=int, default=4, help="photos scored together (default 4)")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS,
                        help="forward pass in fp32 (default), or autocast to bf16/fp16: faster on GPUs and on "
                        "CPUs with AVX512-BF16/AMX; the ranking can change where scores are within rounding")
    parser.add_argument("--channels-last", action="store_true",
                        help="channels-last convolutions (faster on GPUs and with oneDNN on CPUs)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="DataLoader workers decoding photos (0: in this process)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--allow-untrained", action="store_true",
                        help="without --checkpoint, use a random-weight model (its crops mean nothing)")
    parser.add_argument("--untrained-backbone", default="vgg16", choices=BACKBONES,
                        help="backbone of the --allow-untrained model")
    return parser


def collect_photos(inputs: Sequence[str], extensions: set[str]) -> tuple[list[Path], list[str], list[str]]:
    """``(photos, failures, notes)``: files as given, folders' image files (sorted, not recursive)."""
    photos, failures, notes = [], [], []
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
            ignored = [p.name for p in files if p.suffix.lower() not in extensions]
            photos.extend(p for p in files if p.suffix.lower() in extensions)
            if ignored:
                notes.append(f"{path}: ignored {len(ignored)} file(s) without an image extension: "
                             + ", ".join(ignored[:10]) + (" ..." if len(ignored) > 10 else ""))
        elif path.is_file():
            photos.append(path)
        else:
            failures.append(f"{given}: no such file or folder")
    return photos, failures, notes


def read_human_boxes_file(path: str) -> dict[str, list[float]]:
    """``{name: [x1, y1, x2, y2]}`` from a JSON file, each entry checked."""
    try:
        with open(path) as stream:
            content = json.load(stream)
    except OSError as error:
        raise ValueError(f"--human-boxes {path}: cannot read it ({error})") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"--human-boxes {path}: not valid JSON ({error})") from None
    if not isinstance(content, dict):
        raise ValueError(f"--human-boxes {path}: expected an object {{name: [x1, y1, x2, y2]}}, "
                         f"got {type(content).__name__}")
    bad = [name for name, box in content.items()
           if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box))]
    if bad:
        raise ValueError(f"--human-boxes {path}: entries must be [x1, y1, x2, y2] numbers; bad: {', '.join(bad[:10])}")
    return content


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the tool; returns 0 when every photo was cropped or skipped, 1 when some failed, 2 on a setup error."""
    args = build_parser().parse_args(argv)
    if args.top_k < 1 or args.batch_size < 1 or args.workers < 0:
        print("error: --top-k and --batch-size must be >= 1 and --workers >= 0", file=sys.stderr)
        return 2
    if args.detector_weights and not args.detect_human:
        print("error: --detector-weights needs --detect-human", file=sys.stderr)
        return 2
    if not args.checkpoint and not args.allow_untrained:
        print(NO_CHECKPOINT_MESSAGE, file=sys.stderr)
        return 2
    try:
        file_boxes = read_human_boxes_file(args.human_boxes) if args.human_boxes else None
        detector = (build_person_detector(args.detector_weights, args.detector_arch)
                    if args.detect_human else None)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=re.escape(UNTRAINED_WARNING))  # said below, once
            cropper = Cropper(args.checkpoint, args.device, detector=detector, allow_untrained=args.allow_untrained,
                              backbone=args.untrained_backbone, user=args.user, precision=args.precision,
                              channels_last=args.channels_last)
    except (ValueError, RuntimeError) as error:  # bad file, checkpoint (CheckpointError), detector, device
        print(f"error: {error}", file=sys.stderr)
        if isinstance(error, CheckpointError) and not os.path.exists(args.checkpoint):
            print(NO_CHECKPOINT_MESSAGE, file=sys.stderr)
        return 2
    if cropper.untrained:
        print(f"WARNING: {UNTRAINED_WARNING}", file=sys.stderr)

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    readable = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    photos, failures, notes = collect_photos(args.photos, readable)
    for note in notes:
        print(note, file=sys.stderr)
    todo, boxes, skipped, claimed = [], [], [], {}
    for photo in photos:
        paths = output_paths(out_dir, photo, args.top_k, args.visualize, None)
        if paths.json in claimed:
            failures.append(f"{photo}: its outputs would have the same names as {claimed[paths.json]}'s; "
                            "crop it on its own run or rename it")
            continue
        claimed[paths.json] = photo
        if paths.existing() and not args.overwrite:
            skipped.append(f"{photo}: outputs exist ({paths.existing()[0].name}); --overwrite replaces them")
            continue
        todo.append(photo)
        if file_boxes is not None:
            boxes.append(file_boxes.get(photo.name, file_boxes.get(photo.stem)))
        else:
            boxes.append(args.human_box)
    for message in skipped:
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
                                        batch_size=args.batch_size, num_workers=args.workers, keep_image=True):
            photo = todo[result.index]
            progress.update(1)
            if isinstance(result, PhotoFailure):
                failures.append(f"{photo}: {result.message}")
                progress.write(f"failed {photo}: {result.message}", file=sys.stderr)
                continue
            try:
                write_outputs(result, photo, out_dir, args.top_k, args.visualize, cropper, args.aspect_ratio)
            except OSError as error:
                failures.append(f"{photo}: could not write its outputs ({error})")
                progress.write(f"failed {photo}: could not write its outputs ({error})", file=sys.stderr)
                continue
            cropped += 1
            if result.person.source == "detected" or (args.detect_human and result.person.box is None):
                found = "no person found" if result.person.box is None else f"person at {list(result.person.box)}"
                progress.write(f"{photo.name}: {found}", file=sys.stderr)
    print(f"{cropped} photo(s) cropped into {out_dir}/, {len(skipped)} skipped (outputs exist), "
          f"{len(failures)} failed", file=sys.stderr)
    for failure in failures:
        print(f"  failed: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
