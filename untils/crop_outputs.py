"""The crop tool's outputs of one photo: its crops (cut from the file again, so 16-bit and colour
profiles are kept), figures, XMP sidecar and JSON report, a set that is complete or absent.

Every file is encoded in memory and written whole (:func:`untils.photos.write_verified`); the JSON
comes last, as the mark of a complete set; when any file fails, the files of the set written so far
are removed. Stale files of an earlier run (``--overwrite``) are removed once the new set is whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from untils.atomic import json_text
from untils.crop_candidates import ratio_tag
from untils.cropper import UNTRAINED_WARNING, Cropper, CropResult
from untils.photos import (
    DEFAULT_MAX_PIXELS,
    OutputPaths,
    PhotoError,
    draw_crops,
    encode_crop,
    encode_png_16_bit,
    open_upright,
    png_is_16_bit_colour,
    read_png_16_bit_upright,
    write_verified,
)
from untils.xmp import crop_sidecar

COORDINATES = "pixels of the upright photo (EXIF orientation applied), [x1, y1, x2, y2]"


def write_outputs(
    result: CropResult,
    photo: Path,
    paths: OutputPaths,
    cropper: Cropper,
    top_k: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    stale: Sequence[Path] = (),
) -> None:
    """Crops, figures, XMP (the first ratio's best crop) and JSON of one photo, then ``stale`` removed.

    Raises :class:`PhotoError` when the photo changed since it was scored and
    :class:`untils.photos.OutputWriteError` (naming the file) when a file cannot be written; either
    way none of the set's new files is left.
    """
    written: list[Path] = []
    try:
        _write_set(result, photo, paths, cropper, top_k, max_pixels, written)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    for path in stale:
        path.unlink(missing_ok=True)


def _write(path: Path, content: bytes, written: list[Path]) -> None:
    write_verified(path, content)
    written.append(path)


def _write_set(
    result: CropResult,
    photo: Path,
    paths: OutputPaths,
    cropper: Cropper,
    top_k: int,
    max_pixels: int,
    written: list[Path],
) -> None:
    needs_pixels = any(paths.crops.values()) or bool(paths.figures)
    image = None
    if needs_pixels:
        image, header = open_upright(photo, max_pixels)
        if (header.width, header.height) != (result.width, result.height):
            raise PhotoError(
                f"changed while it was cropped: {header.width}x{header.height} now, "
                f"{result.width}x{result.height} when scored"
            )
    deep = (
        read_png_16_bit_upright(photo, result.exif_orientation)
        if any(paths.crops.values()) and paths.crop_format == "PNG" and png_is_16_bit_colour(photo)
        else None
    )
    files: list[list[str | None]] = []
    for ratio in result.results:
        crop_paths = paths.crops.get(ratio_tag(ratio.aspect_ratio), [])
        names: list[str | None] = []
        for rank, (box, _) in enumerate(ratio.top(top_k)):
            if rank >= len(crop_paths) or image is None:
                names.append(None)
                continue
            x1, y1, x2, y2 = box
            content = (
                encode_png_16_bit(deep[y1:y2, x1:x2], image.info.get("icc_profile"))
                if deep is not None
                else encode_crop(image, box, paths.crop_format)
            )
            _write(crop_paths[rank], content, written)
            names.append(crop_paths[rank].name)
        files.append(names)
    entries = result.to_json(top_k, files)
    for ratio, entry in zip(result.results, entries, strict=True):
        figure = paths.figures.get(ratio_tag(ratio.aspect_ratio))
        if figure is not None and image is not None:
            _draw(result, ratio.aspect_ratio, image, figure, cropper, top_k)
            written.append(figure)
            entry["figure"] = figure.name
    description = {
        "photo": str(photo),
        "width": result.width,
        "height": result.height,
        "exif_orientation": result.exif_orientation,
        "coordinates": COORDINATES,
        "model": cropper.describe(),
        "resized_to": list(result.resized_size),
        "person": result.person.to_json(),
        "results": entries,
    }
    if paths.xmp is not None:
        first = result.results[0]
        if first.boxes:
            note = f"best {first.aspect_ratio} crop of {photo.name} ({cropper.model_type}, crop.py)"
            sidecar = crop_sidecar(first.boxes[0], result.width, result.height, result.exif_orientation, note)
            _write(paths.xmp, sidecar.encode("utf-8"), written)
            description["xmp"] = paths.xmp.name
        else:
            description["xmp"] = None  # the first ratio has no crop (its note says why): no sidecar
    _write(paths.json, json_text(description, paths.json, indent=1).encode("utf-8"), written)


def _draw(result: CropResult, aspect_ratio: str, image, path: Path, cropper: Cropper, top_k: int) -> None:
    ratio = next(r for r in result.results if r.aspect_ratio == aspect_ratio)
    best = ratio.top(top_k)
    scored_as = f"; as user {cropper.user} likes" if cropper.user is not None else ""
    title_lines = [
        f"{Path(result.name).name}: top {len(best)} of {len(ratio.boxes)} crops, ratio {aspect_ratio}{scored_as}",
        f"{cropper.model_type} {cropper.cfg.backbone}; "
        + (
            f"heat map of content to keep (jet, 0 blue to 1 red): {result.heat_map.min():.2f} to "
            f"{result.heat_map.max():.2f}; "
            if result.heat_map is not None
            else ""
        )
        + ("dashed: person" if result.person.box is not None else "no person"),
    ]
    if ratio.note:
        title_lines.append(ratio.note)
    if cropper.untrained:
        title_lines.append(UNTRAINED_WARNING)
    draw_crops(image, best, result.person.box, result.heat_map, path, title_lines, warning=cropper.untrained)
