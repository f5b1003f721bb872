"""The four cropping datasets (GAICD, CPC, FCDB, FLMS); batch them with ``untils.batching``.

Every dataset reads the release's annotation formats (see ``human_bboxes/README.md``)
from the paths of a ``config_GAICD.Config``/``config_CPC.Config`` and yields dicts:

``image``           (3, h, w) float32, ImageNet-normalised, resized as the paper
``crop_box``        (N, 4) float32 candidate crops in resized pixels
``score``           (N,) float32 mean opinion scores (GAICD, CPC)
``human_box``       (1, 4) float32 in resized pixels, -1s without a person
``has_human``       bool
``partition_mask``  (9, h/16, w/16) float32, zeros without a person
``heat_map``        (1, 64, 64) float32 in [0, 1] and ``has_heat_map`` (GAICD, CPC)
``gt_crops``        (M, 4) float32 ground-truth crops in original pixels (FCDB, FLMS)
``width``/``height`` original image size; ``name`` the file name; ``flipped`` bool.

FCDB and FLMS items carry the 1,745 predefined anchors as ``crop_box``, so evaluating
on them is the same loop as on GAICD: score every crop, pick the best.

Everything a dataset needs is checked at construction, and every missing file or bad
annotation is reported in one error.
"""

from __future__ import annotations

import functools
import os
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from untils.boxes import (
    FEATURE_STRIDE,
    HEAT_MAP_SIZE,
    NO_PERSON_BOX,
    flip_boxes_horizontal,
    has_person,
    partition_masks,
    rescale_boxes,
    resized_size,
)
from untils.candidates import load_predefined_anchors, scale_anchors
from untils.dataset_errors import DatasetError, problems_error
from untils.dataset_files import (
    CLIP_TOLERANCE,
    CropAnnotation,
    check_boxes,
    existing_file,
    first_non_float32,
    gaicd_image_path,
    heat_map_path,
    load_json,
    read_crop_annotations,
    read_fcdb_ground_truth,
    read_flms_ground_truth,
    read_human_boxes,
    score_statistics,
    unique_names,
)
from untils.gaic_augmentation import photometric_distort
from untils.photos import to_rgb8
from untils.preprocessing import gaic_resized_pixels, network_input, normalize_image, normalize_pixels
from untils.pseudo_heatmaps import HeatMapSources
from untils.safe_paths import resolve_inside
from untils.torchvision_compat import transforms

if TYPE_CHECKING:
    from config_GAICD import Config

FLMS_MAX_CROPS = 10
GAICD_SPLITS = ("train", "test", "all")


def _names_from_split(path: str, key: str, what: str) -> list[str]:
    split = load_json(path, what)
    if not isinstance(split, dict) or key not in split:
        raise DatasetError(f"{what} {path} has no '{key}' list")
    return unique_names(split[key], f"{what} {path} ('{key}')")


def gaicd_image_names(cfg: Config, split: str, only_human: bool) -> list[str]:
    """GAICD image names of ``split`` (train/test/all), or its human-centric subset."""
    if split not in GAICD_SPLITS:
        raise ValueError(f"GAICD split must be one of {GAICD_SPLITS}, got {split!r}")
    if only_human:
        if split == "all":
            return list(read_human_boxes(cfg.GAIC_human))
        return _names_from_split(cfg.GAIC_human_split, split, "GAICD human-centric split file")
    if split == "all":
        return unique_names(
            _names_from_split(cfg.GAIC_split, "test", "GAICD split file")
            + _names_from_split(cfg.GAIC_split, "train", "GAICD split file"),
            f"GAICD split file {cfg.GAIC_split} (train and test together)",
        )
    return _names_from_split(cfg.GAIC_split, split, "GAICD split file")


def cpc_image_names(cfg: Config, only_human: bool) -> list[str]:
    if only_human:
        return list(read_human_boxes(cfg.CPC_human))
    return list(load_json(cfg.CPC_anno, "CPC crop annotation file"))


def fcdb_image_names(cfg: Config, only_human: bool) -> list[str]:
    """FCDB's 176 human-centric images, or its 319-image test split."""
    if only_human:
        return list(read_human_boxes(cfg.FCDB_human))
    return _names_from_split(cfg.FCDB_split, "test", "FCDB split file")


def flms_image_names(cfg: Config, only_human: bool) -> list[str]:
    """FLMS's 39 human-centric images, or all 500."""
    if only_human:
        return list(read_human_boxes(cfg.FLMS_human))
    return list(load_json(cfg.FLMS_anno, "FLMS crop annotation file"))


class CroppingDataset(Dataset):
    """What the four datasets share: image files, sizes, resizing, person boxes, checks.

    Subclasses list their images, gather problems while reading annotations, and call
    ``_finish_checks`` once so that all problems surface in a single error. Every image is decoded
    once here (JPEGs at 1/8 scale), so a truncated file is reported now, not in the middle of an
    epoch. With ``cfg.skip_missing`` the images missing from a partial dataset are left out, and
    their number is printed.
    """

    title = "dataset"

    def __init__(
        self,
        cfg: Config,
        names: list[str],
        image_paths: list[str | None],
        human_boxes: dict[str, np.ndarray],
        keep_aspect_ratio: bool,
    ) -> None:
        self.cfg = cfg
        self.image_size = (cfg.image_size[0], cfg.image_size[1])
        self.keep_aspect_ratio = keep_aspect_ratio
        self.names = list(names)
        self.image_paths: list[str] = []
        self._read_sizes: list[tuple[int, int] | None] = []  # None: unreadable, a problem _finish_checks reports
        self.original_sizes: list[tuple[int, int]] = []  # set by _finish_checks, once every image was read
        self.human_boxes: list[np.ndarray | None] = []
        self._problems: list[str] = []
        self._clipped_names: list[str] = []
        self.color_jitter = transforms.ColorJitter(brightness=0.125, contrast=0.5, saturation=0.5, hue=0.05)
        missing = []
        for name, path in zip(list(self.names), image_paths, strict=True):
            if getattr(cfg, "skip_missing", False) and (path is None or not os.path.isfile(path)):
                missing.append(name)
                continue
            self.image_paths.append(path or "")
            self._read_sizes.append(self._read_header(name, path))
        if missing:
            self.names = [name for name in self.names if name not in set(missing)]
            print(
                f"{self.title}: {len(missing)} of {len(missing) + len(self.names)} images are not there and "
                f"were skipped (--skip_missing); using {len(self.names)}",
                flush=True,
            )
        self.skipped = len(missing)
        for name, size in zip(self.names, self._read_sizes, strict=True):
            box = human_boxes.get(name)
            self.human_boxes.append(
                None if box is None or size is None else self._checked(name, "person", box.reshape(1, 4), size)
            )

    def _read_header(self, name: str, path: str | None) -> tuple[int, int] | None:
        """The image's size, after decoding it once (JPEGs at 1/8 scale: fast, and truncation still shows)."""
        if path is None or not os.path.isfile(path):
            self._problems.append(f"missing image {path or name}")
            return None
        try:
            with Image.open(path) as image:
                size = image.size
                image.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
                image.load()
            return size
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            self._problems.append(f"unreadable image {path}: {error}")
            return None

    def _checked(self, name: str, what: str, boxes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """``boxes`` validated against the image size; problems are collected, not raised."""
        boxes, clipped, problem = check_boxes(boxes, *size)
        if problem:
            self._problems.append(f"{name}: {what} {problem}")
        if clipped:
            self._clipped_names.append(name)
        return boxes

    def _finish_checks(self) -> None:
        if self._problems:
            error = problems_error(f"{self.title} ({len(self.names)} images)", self._problems)
            if any(problem.startswith("missing image") for problem in self._problems):
                error = DatasetError(f"{error}\n  (--skip-missing uses the images that are there)")
            raise error
        self.original_sizes = [size for size in self._read_sizes if size is not None]  # all: no problems
        if self._clipped_names:
            warnings.warn(
                f"{self.title}: boxes of {len(self._clipped_names)} image(s) ran up to "
                f"{CLIP_TOLERANCE:.0%} outside the image and were clipped "
                f"(first: {self._clipped_names[0]})",
                stacklevel=3,
            )
        self.resized_sizes = [
            resized_size(w, h, self.image_size, self.keep_aspect_ratio) for w, h in self.original_sizes
        ]

    def __len__(self) -> int:
        return len(self.names)

    def resized_size_of(self, index: int) -> tuple[int, int]:
        """The network input size ``(w, h)`` of item ``index``, known without loading it."""
        return self.resized_sizes[index]

    def _load_image(self, index: int) -> Image.Image:
        """Image ``index`` in 8-bit RGB (16-bit files scaled, not clipped) at its original size, as it was
        when the dataset was built."""
        path = self.image_paths[index]
        try:
            with Image.open(path) as opened:
                opened.load()  # decoded before the file closes (to_rgb8 returns an RGB image as it is)
                image = to_rgb8(opened)
        except (OSError, SyntaxError, ValueError) as error:
            raise DatasetError(f"{self.title}: cannot decode image {path}: {error}") from error
        if image.size != self.original_sizes[index]:
            raise DatasetError(
                f"{self.title}: image {path} is {image.size[0]}x{image.size[1]} now, "
                f"{self.original_sizes[index][0]}x{self.original_sizes[index][1]} when the "
                "dataset was built"
            )
        return image

    def _image_tensor(self, index: int, flipped: bool = False, augment: bool = False) -> torch.Tensor:
        """The network input (3, h, w) of image ``index``, as ``cfg.image_preprocessing`` says.

        hcic (the HCIC release): PIL Lanczos resize, flip, colour jitter, pixels / 255.
        gaic (GAIC's release): photometric distortion at the original size, flip, cv2 bilinear
        resize (of the uint8 pixels when nothing was distorted, as its test code), pixels / 256.
        Both ImageNet-normalised. Randomness comes from torch's RNG (seeded per image in training).
        """
        image = self._load_image(index)
        size = self.resized_sizes[index]
        if not (flipped or augment):
            return network_input(image, size, self.cfg.image_preprocessing)
        if self.cfg.image_preprocessing == "gaic":
            pixels = np.asarray(image)
            if augment:
                generator = torch.Generator().manual_seed(int(torch.randint(2**62, ())))
                pixels = photometric_distort(pixels.astype(np.float32), generator)
            if flipped:
                pixels = pixels[:, ::-1]
            return normalize_pixels(gaic_resized_pixels(pixels, size))
        image = image.resize(size, Image.Resampling.LANCZOS)
        if flipped:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if augment:
            image = self.color_jitter(image)
        return normalize_image(image)

    def _resized_human_box(self, index: int) -> np.ndarray:
        box = self.human_boxes[index]
        if box is None:
            return np.array([NO_PERSON_BOX], dtype=np.float32)
        return rescale_boxes(box, *self._ratios(index))

    def _ratios(self, index: int) -> tuple[float, float]:
        (width, height), (resized_w, resized_h) = self.original_sizes[index], self.resized_sizes[index]
        return resized_w / width, resized_h / height

    def _common_item(
        self, index: int, image: torch.Tensor, crop_box: np.ndarray | torch.Tensor, human_box: np.ndarray, flipped: bool
    ) -> dict[str, Any]:
        resized_w, resized_h = self.resized_sizes[index]
        width, height = self.original_sizes[index]
        crop_tensor = torch.as_tensor(crop_box, dtype=torch.float32)
        human_tensor = torch.as_tensor(human_box, dtype=torch.float32)
        item = {
            "image": image,
            "crop_box": crop_tensor,
            "human_box": human_tensor,
            "has_human": bool(has_person(human_tensor)),
            "partition_mask": partition_masks(human_tensor, resized_w, resized_h, FEATURE_STRIDE),
            "width": width,
            "height": height,
            "name": self.names[index],
            "flipped": flipped,
        }
        return item


class ScoredCropDataset(CroppingDataset):
    """GAICD and CPC: scored candidate crops, pseudo heat maps, training augmentation."""

    def __init__(
        self,
        cfg: Config,
        names: list[str],
        image_paths: list[str | None],
        annotations: dict[str, CropAnnotation],
        human_boxes: dict[str, np.ndarray],
        heat_map_dir: str,
        require_heat_maps: bool,
        keep_aspect_ratio: bool,
        augment: bool,
    ) -> None:
        super().__init__(cfg, names, image_paths, human_boxes, keep_aspect_ratio)
        self.score_mean, self.score_std = score_statistics(annotations)
        self.augment = augment
        self.heat_map_dir = heat_map_dir
        self.crop_boxes: list[np.ndarray] = []
        self.scores: list[np.ndarray] = []
        self.heat_map_paths: list[str | None] = []
        missing_annotations = []
        for name, size in zip(self.names, self._read_sizes, strict=True):
            entry = annotations.get(name)
            if entry is None:
                missing_annotations.append(name)
            elif size is not None:  # else the image is a problem, and the dataset is never built
                self.crop_boxes.append(self._checked(name, "crop", entry.boxes, size))
                self.scores.append(entry.scores.astype(np.float32))
            path = heat_map_path(heat_map_dir, name)
            if os.path.isfile(path):
                self.heat_map_paths.append(path)
                if require_heat_maps:
                    self._check_heat_map(path)
            else:
                self.heat_map_paths.append(None)
                if require_heat_maps:
                    self._problems.append(f"missing heat map {path} (run generate_pseudo_heatmap.py)")
        self._problems.extend(f"{name}: not in the crop annotation file" for name in missing_annotations)
        self._finish_checks()

    def _check_heat_map(self, path: str) -> None:
        try:
            with Image.open(path) as heat_map:
                heat_map.load()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            self._problems.append(f"unreadable heat map {path}: {error} (run generate_pseudo_heatmap.py --overwrite)")

    def _load_heat_map(self, index: int) -> Image.Image | None:
        path = self.heat_map_paths[index]
        if path is None:
            return None
        try:
            with Image.open(path) as opened:
                heat_map = opened.convert("L")
        except (OSError, SyntaxError, ValueError) as error:
            raise DatasetError(f"{self.title}: cannot decode heat map {path}: {error}") from error
        return heat_map.resize((HEAT_MAP_SIZE, HEAT_MAP_SIZE), Image.Resampling.BICUBIC)

    def __getitem__(self, index: int) -> dict[str, Any]:
        heat_map = self._load_heat_map(index)
        crop_box = rescale_boxes(self.crop_boxes[index], *self._ratios(index))
        human_box = self._resized_human_box(index)
        flipped = self.augment and bool(torch.rand(()) < 0.5)
        if flipped:
            resized_w = self.resized_sizes[index][0]
            if heat_map is not None:
                heat_map = heat_map.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            crop_box = flip_boxes_horizontal(crop_box, resized_w)
            human_box = flip_boxes_horizontal(human_box, resized_w)
        image = self._image_tensor(index, flipped, self.augment)
        item = self._common_item(index, image, crop_box, human_box, flipped)
        item["score"] = torch.from_numpy(self.scores[index])
        if heat_map is None:
            item["heat_map"] = torch.zeros(1, HEAT_MAP_SIZE, HEAT_MAP_SIZE)
        else:
            item["heat_map"] = torch.from_numpy(np.asarray(heat_map, dtype=np.float32) / 255.0).unsqueeze(0)
        item["has_heat_map"] = heat_map is not None
        return item


class GAICDataset(ScoredCropDataset):
    """GAICD (1,036 train / 200 test images; 289 / 50 human-centric), 54-90 scored crops each.

    ``augment=None`` means ``cfg.data_augmentation and split == 'train'``; heat maps are required
    for the train split when the model has the content-preserving module (``require_heat_maps=None``)
    and optional otherwise.
    """

    def __init__(
        self,
        cfg: Config,
        split: str = "train",
        only_human_images: bool = False,
        keep_aspect_ratio: bool = True,
        augment: bool | None = None,
        require_heat_maps: bool | None = None,
    ) -> None:
        self.split = split
        self.title = f"GAICD {split} split" + (" (human-centric)" if only_human_images else "")
        names = gaicd_image_names(cfg, split, only_human_images)
        if not os.path.isdir(cfg.GAIC_image):
            raise FileNotFoundError(f"GAICD image folder not found: {cfg.GAIC_image}")
        super().__init__(
            cfg,
            names,
            [gaicd_image_path(cfg.GAIC_image, name) for name in names],
            read_crop_annotations(cfg.GAIC_anno, "bbox", "score"),
            read_human_boxes(cfg.GAIC_human),
            cfg.GAIC_heat_map,
            split == "train" and cfg.use_content_preserve if require_heat_maps is None else require_heat_maps,
            keep_aspect_ratio,
            cfg.data_augmentation and split == "train" if augment is None else augment,
        )


class CPCDataset(ScoredCropDataset):
    """CPC (10,797 images, 1,154 human-centric), scored crops in ``{"bboxes", "scores"}``.

    A training set: ``augment=None`` means ``cfg.data_augmentation``, and heat maps are
    required (``require_heat_maps=None``) when the model has the content-preserving module.
    """

    title = "CPC"

    def __init__(
        self,
        cfg: Config,
        only_human_images: bool = False,
        keep_aspect_ratio: bool = False,
        augment: bool | None = None,
        require_heat_maps: bool | None = None,
    ) -> None:
        if only_human_images:
            self.title = "CPC (human-centric)"
        names = cpc_image_names(cfg, only_human_images)
        if not os.path.isdir(cfg.CPC_image):
            raise FileNotFoundError(f"CPC image folder not found: {cfg.CPC_image}")
        super().__init__(
            cfg,
            names,
            [resolve_inside(cfg.CPC_image, name) for name in names],
            read_crop_annotations(cfg.CPC_anno, "bboxes", "scores"),
            read_human_boxes(cfg.CPC_human),
            cfg.CPC_heat_map,
            cfg.use_content_preserve if require_heat_maps is None else require_heat_maps,
            keep_aspect_ratio,
            cfg.data_augmentation if augment is None else augment,
        )


class AnchorEvalDataset(CroppingDataset):
    """FCDB and FLMS: ground-truth crops, scored against the predefined anchors."""

    def __init__(
        self,
        cfg: Config,
        names: list[str],
        image_dir: str,
        gt_crops: dict[str, np.ndarray],
        human_boxes: dict[str, np.ndarray],
        keep_aspect_ratio: bool,
    ) -> None:
        if not os.path.isdir(image_dir):
            raise FileNotFoundError(f"{self.title} image folder not found: {image_dir}")
        super().__init__(
            cfg, names, [resolve_inside(image_dir, name) for name in names], human_boxes, keep_aspect_ratio
        )
        self.anchors = load_predefined_anchors(cfg.predefined_pkl)
        self.gt_crops: list[np.ndarray] = []
        self._odd_ground_truth: list[str] = []
        for name, size in zip(self.names, self._read_sizes, strict=True):
            boxes = gt_crops.get(name)
            if boxes is None:
                self._problems.append(f"{name}: not in the crop annotation file")
            elif first_non_float32(boxes) is not None:
                self._problems.append(
                    f"{name}: ground-truth crops must be finite float32 numbers, got {boxes.tolist()}"
                )
            elif size is not None:  # else the image is a problem, and the dataset is never built
                self.gt_crops.append(self._prepare_gt(name, boxes, size))
        self._finish_checks()
        if self._odd_ground_truth:
            warnings.warn(
                f"{self.title}: {len(self._odd_ground_truth)} image(s) have ground-truth crops with "
                "x2 <= x1, y2 <= y1 or outside the image; kept and scored as annotated, as the release "
                f"does: {'; '.join(self._odd_ground_truth[:5])}",
                stacklevel=2,
            )

    def _prepare_gt(self, name: str, boxes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """The ground truth as annotated: the release scores every official box as it is, also ones
        running outside the image or with x2 < x1 (they get IoU 0); such images are named in a warning."""
        width, height = size
        odd = (
            (boxes[:, 2] <= boxes[:, 0])
            | (boxes[:, 3] <= boxes[:, 1])
            | (boxes[:, 0] < 0)
            | (boxes[:, 1] < 0)
            | (boxes[:, 2] > width)
            | (boxes[:, 3] > height)
        )
        if odd.any():
            self._odd_ground_truth.append(f"{name} {boxes[odd].tolist()}")
        return boxes

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = self._image_tensor(index)
        anchors = scale_anchors(self.anchors, *self.resized_sizes[index])
        item = self._common_item(index, image, anchors, self._resized_human_box(index), flipped=False)
        item["gt_crops"] = torch.from_numpy(self.gt_crops[index].astype(np.float32))
        return item


class FCDBDataset(AnchorEvalDataset):
    """FCDB: one ground-truth crop per image (``[x, y, w, h]`` in the file); 176 human-centric images."""

    title = "FCDB"

    def __init__(self, cfg: Config, only_human_images: bool = True, keep_aspect_ratio: bool = False) -> None:
        gt_crops = read_fcdb_ground_truth(cfg.FCDB_anno)
        super().__init__(
            cfg,
            fcdb_image_names(cfg, only_human_images),
            cfg.FCDB_image,
            gt_crops,
            read_human_boxes(cfg.FCDB_human),
            keep_aspect_ratio,
        )


class FLMSDataset(AnchorEvalDataset):
    """FLMS: up to 10 ground-truth crops per image, padded with -1s; 39 human-centric images.

    As the release, crops reaching beyond the image's right or bottom edge are dropped, and the
    others are kept as annotated (two official boxes have x2 < x1 or y2 < y1).
    """

    title = "FLMS"

    def __init__(self, cfg: Config, only_human_images: bool = True, keep_aspect_ratio: bool = False) -> None:
        gt_crops = read_flms_ground_truth(cfg.FLMS_anno)
        super().__init__(
            cfg,
            flms_image_names(cfg, only_human_images),
            cfg.FLMS_image,
            gt_crops,
            read_human_boxes(cfg.FLMS_human),
            keep_aspect_ratio,
        )

    def _prepare_gt(self, name: str, boxes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        width, height = size
        inside = boxes[(boxes[:, 2] <= width) & (boxes[:, 3] <= height)]
        if not 1 <= len(inside) <= FLMS_MAX_CROPS:
            self._problems.append(
                f"{name}: {len(inside)} ground-truth crops inside the {width}x{height} image, "
                f"expected 1 to {FLMS_MAX_CROPS}"
            )
            return inside
        inside = super()._prepare_gt(name, inside, size)
        padding = np.full((FLMS_MAX_CROPS - len(inside), 4), -1.0)
        return np.concatenate([inside, padding])


# The evaluation protocols of the paper's tables: (dataset, human-centric images only).
PROTOCOLS = {
    "GAICD-human": ("GAICD", True),
    "GAICD": ("GAICD", False),
    "FCDB-human": ("FCDB", True),
    "FCDB": ("FCDB", False),
    "FLMS-human": ("FLMS", True),
    "FLMS": ("FLMS", False),
}
SCORED_DATASETS = ("GAICD", "CPC")  # evaluated on scored crops; the others on ground-truth crops


def evaluation_dataset(cfg: Config, dataset: str, only_human: bool, split: str = "test") -> CroppingDataset:
    """An evaluation set without augmentation: GAICD's ``split``, or FCDB's / FLMS's test images."""
    if dataset == "GAICD":
        return GAICDataset(
            cfg, split=split, only_human_images=only_human, keep_aspect_ratio=cfg.keep_aspect_ratio, augment=False
        )
    if dataset == "FCDB":
        return FCDBDataset(cfg, only_human_images=only_human, keep_aspect_ratio=cfg.keep_aspect_ratio)
    if dataset == "FLMS":
        return FLMSDataset(cfg, only_human_images=only_human, keep_aspect_ratio=cfg.keep_aspect_ratio)
    raise ValueError(f"dataset={dataset!r}; expected GAICD, FCDB or FLMS")


def heat_map_sources(dataset_name: str, cfg: Config) -> HeatMapSources:
    """What the pseudo heat maps of GAICD or CPC are made from, read from ``cfg``'s paths; with
    ``cfg.skip_missing`` the images that are not there are left out instead of being an error."""
    if dataset_name not in SCORED_DATASETS:
        raise ValueError(f"dataset must be one of {SCORED_DATASETS}, got {dataset_name!r}")
    if dataset_name == "GAICD":
        annotations = read_crop_annotations(cfg.GAIC_anno, "bbox", "score")
        human_file, image_path = cfg.GAIC_human, functools.partial(gaicd_image_path, cfg.GAIC_image)
    else:
        annotations = read_crop_annotations(cfg.CPC_anno, "bboxes", "scores")
        human_file, image_path = cfg.CPC_human, functools.partial(existing_file, cfg.CPC_image)
    return HeatMapSources(
        annotations,
        frozenset(read_human_boxes(human_file)),
        image_path,
        score_statistics(annotations)[0],
        cfg.skip_missing,
    )
