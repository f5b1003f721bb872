"""Photo files in and out: reading them upright and within a pixel limit, 16-bit pixels to 8 bits,
listing folders, and writing crops and reports atomically under the crop tool's names.

Boxes and sizes here are those of the *upright* photo: EXIF orientation applied, as viewers show it.
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
import threading
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from untils.atomic import write_atomic
from untils.boxes import clip_boxes

EXIF_ORIENTATION_TAG = 0x0112
ROTATED_ORIENTATIONS = frozenset({5, 6, 7, 8})  # EXIF orientations that swap width and height
DEFAULT_MAX_PIXELS = 178_956_970  # Pillow's own decompression-bomb limit (2 x Image.MAX_IMAGE_PIXELS)
JPEG_QUALITY = 95
SAVE_AS = {"MPO": "JPEG"}  # phone JPEGs often open as MPO; their crops are plain JPEGs
# Camera and phone formats this Pillow may have no plugin for; checked against Pillow at run time.
PHOTO_FORMATS = {
    ".heic": "HEIC",
    ".heif": "HEIF",
    ".hif": "HEIF",
    ".avif": "AVIF",
    ".jxl": "JPEG XL",
    ".dng": "DNG raw",
    ".cr2": "Canon raw",
    ".cr3": "Canon raw",
    ".nef": "Nikon raw",
    ".arw": "Sony raw",
    ".orf": "Olympus raw",
    ".rw2": "Panasonic raw",
    ".raf": "Fujifilm raw",
}
# ISO base-media brands (bytes 8-12 of the file) of HEIF-family photos, to name them whatever their extension.
FTYP_BRANDS = {
    b"heic": "HEIC",
    b"heix": "HEIC",
    b"hevc": "HEIC",
    b"heim": "HEIC",
    b"heis": "HEIC",
    b"mif1": "HEIF",
    b"msf1": "HEIF",
    b"avif": "AVIF",
    b"avis": "AVIF",
}
# Sample values of 16-bit modes span [0, 65535]; float images are taken to span [0, 1].
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
# NAME_<ratio>_cropN.EXT and NAME_<ratio>_visualization.png (ratio: any, 16x9, 1.5; see crop_candidates.ratio_tag)
OUTPUT_NAME = re.compile(r"^(?P<stem>.+)_(?P<ratio>any|[0-9][0-9.x]*)_(?:crop\d+|visualization)\.[^.]+$")
_PILLOW_LIMIT_LOCK = threading.Lock()
Box = tuple[int, int, int, int]
PhotoLike = str | os.PathLike | Image.Image | np.ndarray
T = TypeVar("T")


class PhotoError(ValueError):
    """One photo cannot be used (unreadable, too large, unsupported format, bad person box)."""


@dataclass(frozen=True)
class PhotoHeader:
    """What a photo file's header says: the upright size, its EXIF orientation and its file format."""

    width: int
    height: int
    orientation: int
    format: str | None


def _without_pillow_limit(action: Callable[[], T]) -> T:
    """``action()`` with Pillow's global decompression-bomb check off: :func:`_open_checked` applies ours."""
    with _PILLOW_LIMIT_LOCK:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            return action()
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _open_checked(path: str | os.PathLike, max_pixels: int) -> Image.Image:
    """The file opened (header read, nothing decoded yet), refused when over ``max_pixels`` pixels."""
    image = _without_pillow_limit(lambda: Image.open(path))
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise PhotoError(
            f"too large: {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,} "
            "(a decompression bomb or a huge photo; --max-pixels raises it)"
        )
    return image


def readable_extensions() -> set[str]:
    """File extensions (lower case, with the dot) whose format this Pillow can open."""
    return {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def unsupported_format(path: str | os.PathLike) -> str | None:
    """The name of a photo format this Pillow cannot open (HEIC, AVIF, raw...) that ``path`` is in, else None.

    Told from the extension, or for HEIF-family files from their content (a HEIC named .jpg too).
    """
    readable = readable_extensions()  # also loads every plugin, filling Image.OPEN
    suffix = Path(path).suffix.lower()
    if suffix in PHOTO_FORMATS and suffix not in readable:
        return PHOTO_FORMATS[suffix]
    try:
        with open(path, "rb") as stream:
            head = stream.read(12)
    except OSError:
        return None
    name = FTYP_BRANDS.get(head[8:12]) if head[4:8] == b"ftyp" else None
    return None if name is None or name in Image.OPEN else name


def _unsupported(fmt: str) -> str:
    return (
        f"unsupported image format {fmt}: Pillow on this installation cannot open it; convert it to JPEG "
        "or PNG (or install a Pillow plugin for it, e.g. pillow-heif)"
    )


def _unreadable(path: str | os.PathLike, error: Exception) -> PhotoError:
    fmt = unsupported_format(path)
    return PhotoError(_unsupported(fmt) if fmt is not None else f"not a readable image ({error})")


def _orientation(image: Image.Image) -> int:
    return int(image.getexif().get(EXIF_ORIENTATION_TAG, 1))


def read_header(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> PhotoHeader:
    """The upright size, EXIF orientation and format of a photo file, from its header only.

    Raises :class:`PhotoError` for an unreadable file, an unsupported format, or more than ``max_pixels``.
    """
    try:
        with _open_checked(path, max_pixels) as image:
            orientation, (width, height), fmt = _orientation(image), image.size, image.format
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        if isinstance(error, PhotoError):
            raise
        raise _unreadable(path, error) from None
    if orientation in ROTATED_ORIENTATIONS:
        width, height = height, width
    return PhotoHeader(width, height, orientation, fmt)


def upright(image: Image.Image) -> tuple[Image.Image, int]:
    """The photo turned as its EXIF orientation says (tag removed), and that orientation."""
    orientation = _orientation(image)
    return (ImageOps.exif_transpose(image) if orientation != 1 else image), orientation


def open_upright(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Image.Image, PhotoHeader]:
    """Decode a photo file upright: ``(image in its own mode, header)``; :class:`PhotoError` if it cannot be."""
    try:
        with _open_checked(path, max_pixels) as opened:
            fmt = opened.format
            opened.load()
            image, orientation = upright(opened)
            if image is opened:
                image = opened.copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        if isinstance(error, PhotoError):
            raise
        if isinstance(error, UnidentifiedImageError):
            raise _unreadable(path, error) from None
        raise PhotoError(f"cannot decode the image ({error})") from None
    return image, PhotoHeader(image.width, image.height, orientation, fmt)


def to_rgb8(image: Image.Image) -> Image.Image:
    """The image as 8-bit RGB, 16-bit and float pixels scaled (not clipped) to 0-255.

    16-bit modes (I;16, I;16B, I: samples in 0-65535) are divided by 257, so a 16-bit copy of an
    8-bit picture (value x 257) gives that picture back exactly; F is taken as 0-1. Values outside
    those ranges are clipped. Every other mode is converted by Pillow (alpha dropped, palette applied).
    """
    if image.mode == "RGB":
        return image
    if image.mode not in SIXTEEN_BIT_MODES and image.mode != "F":
        return image.convert("RGB")
    full_scale = 1.0 if image.mode == "F" else 65535.0
    pixels = np.asarray(image, dtype=np.float32) * np.float32(255.0 / full_scale)
    grey = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, "L").convert("RGB")


def as_upright_image(photo: PhotoLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Image.Image, PhotoHeader]:
    """A path, a PIL image or an (H, W, 3) uint8 array as ``(upright PIL image, header)``."""
    if isinstance(photo, (str, os.PathLike)):
        return open_upright(photo, max_pixels)
    if isinstance(photo, Image.Image):
        image, orientation = upright(photo)
        return image, PhotoHeader(image.width, image.height, orientation, photo.format)
    if isinstance(photo, np.ndarray):
        if photo.ndim != 3 or photo.shape[2] != 3 or photo.dtype != np.uint8:
            raise PhotoError(f"an image array must be (H, W, 3) uint8 RGB, got {photo.dtype} {photo.shape}")
        return Image.fromarray(photo), PhotoHeader(photo.shape[1], photo.shape[0], 1, None)
    raise PhotoError(f"a photo must be a path, a PIL image or an (H, W, 3) uint8 array, got {type(photo).__name__}")


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
        raise PhotoError(f"person box {values.tolist()} must have x2 > x1 and y2 > y1")
    clipped = clip_boxes(values.reshape(1, 4), width, height)[0]
    if not (clipped[2] > clipped[0] and clipped[3] > clipped[1]):
        raise PhotoError(f"person box {values.tolist()} lies outside the {width}x{height} photo")
    left, top, right, bottom = (float(v) for v in clipped)
    return left, top, right, bottom


def _refusing_duplicates(path: str) -> Callable[[list[tuple[str, Any]]], dict[str, Any]]:
    def pairs_to_dict(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        content: dict[str, Any] = {}
        for key, value in pairs:
            if key in content:
                raise ValueError(f"--human-boxes {path}: the key {key!r} appears twice; give each photo one box")
            content[key] = value
        return content

    return pairs_to_dict


def read_human_boxes_file(path: str) -> dict[str, list[float]]:
    """``{name: [x1, y1, x2, y2]}`` from a JSON file, each entry checked (a repeated key is an error)."""
    try:
        with open(path) as stream:
            content = json.load(stream, object_pairs_hook=_refusing_duplicates(path))
    except OSError as error:
        raise ValueError(f"--human-boxes {path}: cannot read it ({error})") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"--human-boxes {path}: not valid JSON ({error})") from None
    # a repeated key's ValueError (from the hook) already names the file and the key
    if not isinstance(content, dict):
        raise ValueError(
            f"--human-boxes {path}: expected an object {{name: [x1, y1, x2, y2]}}, got {type(content).__name__}"
        )
    bad = [
        name
        for name, box in content.items()
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box))
    ]
    if bad:
        raise ValueError(f"--human-boxes {path}: entries must be [x1, y1, x2, y2] numbers; bad: {', '.join(bad[:10])}")
    return content


# ----------------------------------------------------------------------------------------------
# Listing photos
# ----------------------------------------------------------------------------------------------


@dataclass
class PhotoListing:
    """The photo files found, the inputs that fail (``"path: why"``), and notes about files left out."""

    photos: list[Path] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def outputs_listed_in(report: Path) -> set[str]:
    """File names a crop report (``NAME.json`` of :func:`output_paths`) says the tool wrote, itself included."""
    try:
        content = json.loads(report.read_text())
    except (OSError, ValueError):
        return set()
    if not (isinstance(content, dict) and "photo" in content and isinstance(content.get("results"), list)):
        return set()
    entries = [entry for entry in content["results"] if isinstance(entry, dict)]
    names = {
        crop.get("file")
        for entry in entries
        if isinstance(entry.get("crops"), list)
        for crop in entry["crops"]
        if isinstance(crop, dict)
    }
    names |= {entry.get("figure") for entry in entries} | {content.get("xmp"), report.name}
    return {name for name in names if isinstance(name, str)}


def _tool_outputs(files: Sequence[Path]) -> set[Path]:
    """Files of a folder that a crop report beside them lists as written by the tool (``--out`` was this folder)."""
    written: set[str] = set()
    reports_read: set[str] = set()
    for path in files:
        match = OUTPUT_NAME.match(path.name)
        report = f"{match['stem']}.json" if match is not None else None
        if report is not None and report not in reports_read:
            reports_read.add(report)
            written |= outputs_listed_in(path.with_name(report))
    return {path for path in files if path.name in written}


def _names(paths: Sequence[Path], limit: int = 10) -> str:
    return ", ".join(p.name for p in paths[:limit]) + (" ..." if len(paths) > limit else "")


def list_photos(inputs: Sequence[str]) -> PhotoListing:
    """Files as given and the image files of folders (sorted, not recursive, hidden files left out).

    In a folder, files of a format this Pillow cannot open (HEIC, AVIF, raw) are failures named as
    such, the tool's own outputs (listed in a crop report beside them) and other files are noted.
    """
    listing, readable = PhotoListing(), readable_extensions()
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            entries = sorted(p for p in path.iterdir() if not p.name.startswith("."))
            files = [p for p in entries if p.is_file()]
            broken = [p for p in entries if p.is_symlink() and not p.exists()]
            if broken:
                listing.notes.append(
                    f"{path}: {len(broken)} broken symbolic link(s), not cropped: "
                    + ", ".join(f"{p.name} -> {os.readlink(p)}" for p in broken[:10])
                    + (" ..." if len(broken) > 10 else "")
                )
            ours = _tool_outputs(files)
            others = {p: unsupported_format(p) for p in files if p not in ours and p.suffix.lower() not in readable}
            listing.photos.extend(p for p in files if p not in ours and p.suffix.lower() in readable)
            listing.failures.extend(f"{p}: {_unsupported(fmt)}" for p, fmt in others.items() if fmt is not None)
            ignored = [p for p, fmt in others.items() if fmt is None]
            if ours:
                listing.notes.append(
                    f"{path}: left out {len(ours)} file(s) this tool wrote there: {_names(sorted(ours))}"
                )
            if ignored:
                listing.notes.append(f"{path}: ignored {len(ignored)} file(s) that are not images: {_names(ignored)}")
        elif path.is_file():
            listing.photos.append(path)
        else:
            listing.failures.append(f"{given}: no such file or folder")
    return listing


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------


def save_format(image_format: str | None, suffix: str) -> tuple[str, str]:
    """``(Pillow format, extension)`` of the crops: the photo's own where Pillow writes it, else PNG.

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


@dataclass(frozen=True)
class OutputPaths:
    """Every file the crop tool writes for one photo, and the format of its crops: per ratio tag its
    crops (none with ``--no-pixels``) and figure, the XMP sidecar, and the JSON (written last)."""

    json: Path
    crops: dict[str, list[Path]]
    figures: dict[str, Path]
    xmp: Path | None
    crop_format: str

    def files(self) -> list[Path]:
        """Every file of the set, the JSON last."""
        return (
            [path for paths in self.crops.values() for path in paths]
            + list(self.figures.values())
            + ([self.xmp] if self.xmp is not None else [])
            + [self.json]
        )


def output_paths(
    out_dir: Path,
    photo: Path,
    tags: Sequence[str],
    top_k: int,
    visualize: bool,
    image_format: str | None,
    pixels: bool = True,
    xmp: bool = False,
) -> OutputPaths:
    """``NAME.json``, ``NAME_<tag>_crop1.EXT``... and ``NAME_<tag>_visualization.png`` per ratio tag, and
    ``NAME.xmp``, in ``out_dir``; EXT from the photo's decoded ``image_format`` (see :func:`save_format`)."""
    crop_format, extension = save_format(image_format, photo.suffix)
    stem = photo.stem
    return OutputPaths(
        out_dir / f"{stem}.json",
        {
            tag: [out_dir / f"{stem}_{tag}_crop{rank}{extension}" for rank in range(1, top_k + 1)] if pixels else []
            for tag in tags
        },
        {tag: out_dir / f"{stem}_{tag}_visualization.png" for tag in tags} if visualize else {},
        out_dir / f"{stem}.xmp" if xmp else None,
        crop_format,
    )


@dataclass
class OutputPlan:
    """The photos to crop with their outputs (and, with --overwrite, the stale files of an earlier run
    to remove once the new set is written), and those skipped (done) or failing, as ``"path: why"``."""

    todo: dict[Path, OutputPaths] = field(default_factory=dict)
    stale: dict[Path, list[Path]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def _outputs_by_stem(out_dir: Path) -> dict[str, list[Path]]:
    """The files of ``out_dir`` the tool's naming rule makes, by the photo stem they belong to."""
    found: dict[str, list[Path]] = {}
    if not out_dir.is_dir():
        return found
    for path in out_dir.iterdir():
        match = OUTPUT_NAME.match(path.name)
        stem = match["stem"] if match is not None else path.stem if path.suffix in (".json", ".xmp") else None
        if stem is not None:
            found.setdefault(stem, []).append(path)
    return found


def plan_outputs(
    photos: Sequence[Path],
    out_dir: Path,
    tags: Sequence[str],
    top_k: int,
    visualize: bool,
    overwrite: bool,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    pixels: bool = True,
    xmp: bool = False,
    inputs: Sequence[Path] = (),
) -> OutputPlan:
    """Each photo's :func:`output_paths`, named from the format its header declares (a JPEG named
    .png gets .jpg crops). A photo whose JSON (written last, the mark of a complete set) exists is
    done: skipped unless ``overwrite``; one without is (re)done. A file among ``inputs`` (and the
    photos) is never an output: a photo whose set would name one fails, naming it. Unreadable photos,
    and a photo whose names another one took, fail. With ``overwrite``, the photo's other files of
    the naming rule (an earlier run's, e.g. with a larger top-k) are planned for removal."""
    plan, claimed = OutputPlan(), dict[Path, Path]()
    protected = {path.resolve() for path in [*inputs, *photos]}
    by_stem = _outputs_by_stem(out_dir) if overwrite else {}
    for photo in photos:
        try:
            paths = output_paths(
                out_dir, photo, tags, top_k, visualize, read_header(photo, max_pixels).format, pixels, xmp
            )
        except PhotoError as error:
            plan.failures.append(f"{photo}: {error}")
            continue
        if paths.json in claimed:
            plan.failures.append(
                f"{photo}: its outputs would have the same names as {claimed[paths.json]}'s; "
                "crop it on its own run or rename it"
            )
            continue
        claimed[paths.json] = photo
        inputs_hit = [path for path in paths.files() if path.resolve() in protected]
        if inputs_hit:
            plan.failures.append(
                f"{photo}: its output {inputs_hit[0].name} would replace an input photo of this run "
                f"({inputs_hit[0]}); choose another --out"
            )
            continue
        if paths.json.exists() and not overwrite:
            plan.skipped.append(f"{photo}: outputs exist ({paths.json.name}); --overwrite replaces them")
            continue
        plan.todo[photo] = paths
        wanted = set(paths.files())
        stale = [path for path in by_stem.get(photo.stem, []) if path not in wanted and path.resolve() not in protected]
        if stale:
            plan.stale[photo] = sorted(stale)
    return plan


class OutputWriteError(OSError):
    """An output file could not be written whole; nothing of it was left behind."""


def write_verified(path: Path, content: bytes) -> None:
    """``content`` written to ``path`` all or nothing: into a hidden file beside it, flushed to disk, its
    size checked against ``content``, then renamed into place. Raises :class:`OutputWriteError`
    naming the file (a full disk, a quota) with no partial file left."""

    def write(tmp_path: str) -> None:
        descriptor = os.open(tmp_path, os.O_WRONLY | os.O_TRUNC)
        try:
            view = memoryview(content)
            while view:
                written = os.write(descriptor, view)
                if written <= 0:
                    raise OSError(f"the disk took {len(content) - len(view)} of {len(content)} bytes")
                view = view[written:]
            os.fsync(descriptor)
            size = os.fstat(descriptor).st_size
        finally:
            os.close(descriptor)
        if size != len(content):
            raise OSError(f"{size} of {len(content)} bytes reached the disk")

    try:
        write_atomic(path, write)
    except OSError as error:
        raise OutputWriteError(
            f"could not write {path.name} ({error.strerror or error}); nothing of it was left"
        ) from None


def encode_crop(image: Image.Image, box: tuple[int, int, int, int], image_format: str) -> bytes:
    """The crop at full resolution, encoded in memory, keeping the photo's colour profile and
    (orientation-free) EXIF."""
    region = _without_pillow_limit(lambda: image.crop(box))  # the photo passed our limit when it was read
    options: dict[str, Any] = {key: image.info[key] for key in ("icc_profile", "exif") if image.info.get(key)}
    if image_format == "JPEG":
        options.update(quality=JPEG_QUALITY)
        if region.mode not in ("RGB", "L", "CMYK"):
            region = to_rgb8(region)
    buffer = io.BytesIO()
    region.save(buffer, format=image_format, **options)
    return buffer.getvalue()


# What each EXIF orientation does to the stored pixels to show them upright (numpy, rows first).
_UPRIGHT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 1)[::-1],
    8: lambda a: np.rot90(a, 1),
}


def png_is_16_bit_colour(path: str | os.PathLike) -> bool:
    """Whether a PNG stores 16-bit RGB or RGBA samples (which Pillow decodes to 8 bits)."""
    with open(path, "rb") as stream:
        head = stream.read(26)
    return head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR" and head[24] == 16 and head[25] in (2, 6)


def read_png_16_bit_upright(path: str | os.PathLike, orientation: int) -> np.ndarray:
    """A 16-bit RGB(A) PNG's pixels, (H, W, 3 or 4) uint16 RGB(A), turned upright by ``orientation``."""
    import cv2  # only for these files: Pillow reads them as 8 bits

    stored = cv2.imread(os.fspath(path), cv2.IMREAD_UNCHANGED)
    if stored is None or stored.dtype != np.uint16 or stored.ndim != 3:
        raise PhotoError("cannot decode its 16-bit pixels")
    rgb = stored[..., [2, 1, 0, 3][: stored.shape[2]]]
    return np.ascontiguousarray(_UPRIGHT.get(orientation, lambda a: a)(rgb))


def encode_png_16_bit(pixels: np.ndarray, icc_profile: bytes | None = None) -> bytes:
    """(H, W, 3 or 4) uint16 RGB(A) as a 16-bit PNG (with the colour profile, when given)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    height, width, channels = pixels.shape
    header = struct.pack(">IIBBBBB", width, height, 16, 2 if channels == 3 else 6, 0, 0, 0)
    rows = np.ascontiguousarray(pixels.astype(">u2")).reshape(height, width * channels).view(np.uint8)
    filtered = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1)  # filter type 0 per row
    profile = chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc_profile)) if icc_profile else b""
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + profile
        + chunk(b"IDAT", zlib.compress(filtered.tobytes(), 6))
        + chunk(b"IEND", b"")
    )


def draw_crops(
    image: Image.Image,
    ranked: Sequence[tuple[Box, float]],
    person_box: Sequence[float] | None,
    heat_map: np.ndarray | None,
    path: Path,
    title_lines: Sequence[str],
    warning: bool,
) -> None:
    """The photo with the ``ranked`` ``(box, score)`` crops, best first, and the person (dashed) drawn; a
    heat map over the whole photo (values in [0, 1]) overlaid where there is one; ``title_lines`` above
    it, the last one in red when ``warning``. Written as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    photo_inches, line_inches = 6.0, 0.3
    header_inches = line_inches * (len(title_lines) + 0.5)
    total_inches = photo_inches + header_inches
    figure = Figure(figsize=(max(4.0, photo_inches * image.width / image.height), total_inches))
    FigureCanvasAgg(figure)
    axes = figure.add_axes((0, 0, 1, photo_inches / total_inches))
    axes.imshow(to_rgb8(image))
    if heat_map is not None and np.ptp(heat_map) > 1e-6:  # a flat map would only tint the photo
        axes.imshow(
            heat_map,
            cmap="jet",
            alpha=0.4,
            vmin=0,
            vmax=1,
            interpolation="bilinear",
            extent=(0, image.width, image.height, 0),
        )
    colours = ["#ff2d2d", "#ffd400", "#2dd4ff", "#7dff2d", "#ff7dff"]
    for rank, (box, score) in reversed(list(enumerate(ranked, start=1))):
        colour = colours[(rank - 1) % len(colours)]
        x1, y1, x2, y2 = box
        axes.add_patch(
            Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linewidth=3.0 if rank == 1 else 1.5)
        )
        # Labels are listed in the corner: the best crops often share edges, so labels on them would overlap.
        axes.text(
            0.01,
            0.99 - (rank - 1) * 0.045,
            f"#{rank} {score:.3f}",
            transform=axes.transAxes,
            color="black",
            fontsize=9,
            va="top",
            bbox={"facecolor": colour, "alpha": 0.85, "pad": 1.5, "edgecolor": "none"},
        )
    if person_box is not None:
        left, top, right, bottom = person_box
        axes.add_patch(
            Rectangle(
                (left, top), right - left, bottom - top, fill=False, edgecolor="white", linestyle="--", linewidth=1.5
            )
        )
    axes.set_xlim(0, image.width)
    axes.set_ylim(image.height, 0)
    axes.axis("off")
    for line_number, line in enumerate(title_lines):
        is_warning = warning and line_number == len(title_lines) - 1
        figure.text(
            0.01,
            1 - line_inches * (line_number + 0.75) / total_inches,
            line,
            fontsize=9,
            va="center",
            color="red" if is_warning else "black",
            fontweight="bold" if is_warning else "normal",
        )
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    write_verified(path, buffer.getvalue())
