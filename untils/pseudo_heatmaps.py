"""The pseudo heat maps that supervise the content-preserving branch (``generate_pseudo_heatmap.py`` runs them).

For each image the candidate crops are sorted by score; with more than 10 crops only
those scoring above the dataset's mean score are kept (see ``crop_heat_map`` for the edge cases).
Each kept crop's binary mask at image resolution is weighted by
softmax(score + 2 * crop area / image area); the weighted sum, min-max normalised to
0..255, is written as an 8-bit PNG ``<out>/<dataset>/mask/<image stem>.png``. For
human-centric images a figure also goes to ``<out>/<dataset>/display/``.

What a dataset's maps are made from comes in a ``HeatMapSources`` (``cropping_dataset.heat_map_sources``
reads one from a config), so this module knows nothing of the datasets' file layouts.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image
from tqdm import tqdm

from untils.atomic import write_atomic
from untils.dataset_errors import DatasetError, problems_error
from untils.safe_paths import resolve_inside

MEAN_FILTER_MIN_CROPS = 10  # above this many crops, only those scoring above the mean are kept
AREA_WEIGHT = 2.0
OVERLAY_ALPHA = 0.7  # weight of the colour-mapped heat map over the photo in the figures
# Guards the floor against float noise: values within this of an integer level count as that level.
LEVEL_EPSILON = 1e-6


def crop_heat_map(
    boxes: np.ndarray, scores: np.ndarray, width: int, height: int, score_mean: float, fix_edge_cases: bool = False
) -> np.ndarray:
    """The pseudo heat map (height, width) uint8 of one image's crops (N, 4) and scores (N,).

    Boxes are truncated to integer pixels and clipped to the image, as the release's
    ``mask[y1:y2, x1:x2]``. Two edge cases: an image with more than 10 crops and none above the
    mean, and a map with no contrast (every kept crop covers the whole image). The release
    normalises 0 / 0 in both and writes an all-zero map (GAICD's 238216.jpg is the first kind):
    that is the default, so the paper's targets are reproduced. ``fix_edge_cases`` keeps every crop
    in the first case and writes a uniform 255 in the second (everything is to be preserved).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).astype(np.int64)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(boxes) == 0 or len(boxes) != len(scores):
        raise ValueError(
            f"need one score per crop and at least one crop, got {len(boxes)} crops and {len(scores)} scores"
        )
    if len(boxes) > MEAN_FILTER_MIN_CROPS:
        above = scores > score_mean
        if not above.any() and not fix_edge_cases:
            return np.zeros((height, width), dtype=np.uint8)
        if above.any():
            boxes, scores = boxes[above], scores[above]
    rows = (np.arange(height) >= boxes[:, 1:2]) & (np.arange(height) < boxes[:, 3:4])
    columns = (np.arange(width) >= boxes[:, 0:1]) & (np.arange(width) < boxes[:, 2:3])
    areas = rows.sum(1) * columns.sum(1) / float(width * height)
    logits = scores + AREA_WEIGHT * areas
    weights = np.exp(logits - logits.max())
    weights /= weights.sum()
    heat = (rows.T * weights) @ columns.astype(np.float64)
    low, high = heat.min(), heat.max()
    if high - low <= 1e-12 * max(abs(high), 1.0):
        return np.full((height, width), 255 if fix_edge_cases else 0, dtype=np.uint8)
    levels = np.floor((heat - low) / (high - low) * 255.0 + LEVEL_EPSILON)
    return np.clip(levels, 0, 255).astype(np.uint8)


@dataclass
class HeatMapTask:
    name: str
    image_path: str
    boxes: np.ndarray
    scores: np.ndarray
    score_mean: float
    mask_path: str
    display_path: str | None
    fix_edge_cases: bool = False


def save_png_atomically(pixels: np.ndarray, path: str) -> None:
    write_atomic(path, lambda tmp_path: Image.fromarray(pixels).save(tmp_path, format="PNG"))


def _overlay(image: np.ndarray, heat_map: np.ndarray) -> np.ndarray:
    from matplotlib import colormaps

    colours = colormaps["jet"](heat_map)[..., :3] * 255.0
    return ((1 - OVERLAY_ALPHA) * image + OVERLAY_ALPHA * colours).astype(np.uint8)


def save_display_figure(task: HeatMapTask, image: np.ndarray, heat_map: np.ndarray, path: str) -> None:
    """Input, top-5 and top-10 heat maps, the final heat map, best and worst crop, as a JPEG at ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    height, width = heat_map.shape
    order = np.argsort(-task.scores, kind="stable")
    boxes, scores = task.boxes[order], task.scores[order]
    final = _overlay(image, heat_map)
    panels = [
        ("input image", image),
        (
            "top-5 heat map",
            _overlay(image, crop_heat_map(boxes[:5], scores[:5], width, height, task.score_mean, task.fix_edge_cases)),
        ),
        (
            "top-10 heat map",
            _overlay(
                image, crop_heat_map(boxes[:10], scores[:10], width, height, task.score_mean, task.fix_edge_cases)
            ),
        ),
        ("heat map", final),
    ]
    for title, box in (("best crop", boxes[0]), ("worst crop", boxes[-1])):
        x1, y1, x2, y2 = np.clip(box.astype(np.int64), 0, [width, height, width, height])
        panels.append((title, final[y1:y2, x1:x2]))
    figure = Figure(figsize=(10, 7))
    FigureCanvasAgg(figure)
    for position, (title, pixels) in enumerate(panels, start=1):
        axes = figure.add_subplot(2, 3, position)
        axes.imshow(pixels)
        axes.set_title(title)
        axes.axis("off")
    figure.tight_layout()
    write_atomic(path, lambda tmp_path: figure.savefig(tmp_path, format="jpg"))


def run_task(task: HeatMapTask) -> str:
    """Write one image's heat map (and figure); returns the heat map's path."""
    pixels = None  # read only for the figure
    try:
        with Image.open(task.image_path) as image:
            width, height = image.size
            if task.display_path:
                pixels = np.asarray(image.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as error:
        raise DatasetError(f"cannot read image {task.image_path}: {error}") from error
    heat_map = crop_heat_map(task.boxes, task.scores, width, height, task.score_mean, task.fix_edge_cases)
    save_png_atomically(heat_map, task.mask_path)
    if task.display_path and pixels is not None:
        save_display_figure(task, pixels, heat_map, task.display_path)
    return task.mask_path


def _is_finished(task: HeatMapTask) -> bool:
    return os.path.isfile(task.mask_path) and (task.display_path is None or os.path.isfile(task.display_path))


class ScoredCrops(Protocol):
    """One image's candidate crops (N, 4) in original pixels and their scores (N,)."""

    boxes: np.ndarray
    scores: np.ndarray


@dataclass(frozen=True)
class HeatMapSources:
    """What a dataset's heat maps are made from.

    ``image_path`` gives an image's file, or None when it is not there; ``score_mean`` is the mean of
    every score in the annotation file; ``skip_missing`` leaves out (and counts) the images that are
    not there instead of failing, for a partial dataset.
    """

    annotations: Mapping[str, ScoredCrops]
    human_names: frozenset[str]
    image_path: Callable[[str], str | None]
    score_mean: float
    skip_missing: bool = False


def heat_map_tasks(
    dataset_name: str,
    sources: HeatMapSources,
    out_dir: str,
    images: Sequence[str] | None = None,
    fix_edge_cases: bool = False,
) -> list[HeatMapTask]:
    """One task per image of ``dataset_name`` (all annotated images, or ``images``).

    Raises one error listing every requested image that is unannotated or missing; with
    ``sources.skip_missing`` missing images are left out and counted instead.
    """
    annotations = sources.annotations
    mask_dir = os.path.join(out_dir, dataset_name, "mask")
    display_dir = os.path.join(out_dir, dataset_name, "display")
    tasks, problems, skipped = [], [], 0
    for name in list(annotations) if images is None else images:
        path = sources.image_path(name)
        if name not in annotations:
            problems.append(f"{name}: not in the crop annotation file")
        elif path is None and sources.skip_missing:
            skipped += 1
        elif path is None:
            problems.append(f"missing image {name} (--skip-missing processes the images that are there)")
        else:
            stem = os.path.splitext(name)[0]
            display = resolve_inside(display_dir, stem + ".jpg") if name in sources.human_names else None
            tasks.append(
                HeatMapTask(
                    name,
                    path,
                    annotations[name].boxes,
                    annotations[name].scores,
                    sources.score_mean,
                    resolve_inside(mask_dir, stem + ".png"),
                    display,
                    fix_edge_cases,
                )
            )
    if problems:
        raise problems_error(f"{dataset_name} heat maps", problems)
    if skipped:
        print(
            f"{dataset_name} heat maps: {skipped} of {skipped + len(tasks)} images are not there and were skipped",
            flush=True,
        )
    return tasks


def generate_heatmaps(
    dataset_name: str,
    sources: HeatMapSources,
    out_dir: str,
    workers: int = 0,
    overwrite: bool = False,
    images: Sequence[str] | None = None,
    fix_edge_cases: bool = False,
    progress: bool = True,
) -> list[str]:
    """Write the heat maps of ``dataset_name`` (it names the folder) under ``out_dir``.

    ``images`` restricts the run to those names. Finished images are skipped unless ``overwrite``.
    ``workers`` > 1 uses a process pool. Returns the heat map path of every requested image.
    """
    tasks = heat_map_tasks(dataset_name, sources, out_dir, images, fix_edge_cases)
    for folder in ("mask", "display"):
        os.makedirs(os.path.join(out_dir, dataset_name, folder), exist_ok=True)
    pending = [task for task in tasks if overwrite or not _is_finished(task)]
    bar = tqdm(total=len(pending), desc=f"{dataset_name} heat maps", unit="image", disable=not (pending and progress))
    with bar:
        for _ in _run_all(pending, workers):
            bar.update()
    return [task.mask_path for task in tasks]


def _run_all(tasks: list[HeatMapTask], workers: int) -> Iterable[str]:
    if workers <= 1 or len(tasks) <= 1:
        yield from map(run_task, tasks)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(run_task, tasks, chunksize=4)
