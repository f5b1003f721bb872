"""untils/photos.py and untils/cli.py: 16-bit pixels, pixel limits, formats, atomic writes, output names,
and options in both spellings.

References are independent of the code under test: the 8-bit picture a 16-bit copy was made from,
float64 rounding of every 16-bit value, file modes computed from the umask, hand-made PNG headers.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from untils import photos
from untils.cli import add_option_aliases

# The start of a HEIC file: an ISO base-media "ftyp" box of brand heic (what phones write).
HEIC_BYTES = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64)


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG declaring ``width`` x ``height`` 8-bit grey pixels with one row of data: cheap to write,
    a decompression bomb to anything that decodes it."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(width + 1)))
        + chunk(b"IEND", b"")
    )
    return path


def grey_astronaut() -> np.ndarray:
    return np.asarray(Image.fromarray(data.astronaut()).convert("L"))


def rgb_of(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=2)


# ----------------------------------------------------------------------------------------------
# 16-bit pixels
# ----------------------------------------------------------------------------------------------


def test_16_bit_and_float_modes_give_back_the_8_bit_picture(tmp_path):
    grey = grey_astronaut()
    wide = grey.astype(np.uint16) * 257  # 0..255 -> 0..65535, as 16-bit exports of 8-bit pictures are
    images = {
        "I;16": Image.fromarray(wide),
        "I;16B": Image.fromarray(wide.astype(">u2")),
        "I": Image.fromarray(wide.astype(np.int32)),
        "F": Image.fromarray(grey.astype(np.float32) / 255),
    }
    Image.fromarray(wide).save(tmp_path / "wide.png")
    Image.fromarray(wide).save(tmp_path / "wide.tif")
    for suffix in ("png", "tif"):
        with Image.open(tmp_path / f"wide.{suffix}") as opened:
            opened.load()
            images[f"{suffix} file ({opened.mode})"] = opened.copy()
    assert {images["I;16"].mode, images["I;16B"].mode, images["I"].mode} == {"I;16", "I;16B", "I"}
    for name, image in images.items():
        converted = photos.to_rgb8(image)
        assert converted.mode == "RGB", name
        assert np.array_equal(np.asarray(converted), rgb_of(grey)), name
    clipped = np.asarray(images["I;16"].convert("RGB"))  # what Pillow alone does: nearly white
    assert (clipped == 255).mean() > 0.8


def test_every_16_bit_value_is_rounded_to_the_nearest_8_bit_one():
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    expected = np.floor(values.astype(np.float64) * 255 / 65535 + 0.5)
    got = np.asarray(photos.to_rgb8(Image.fromarray(values)))[..., 0]
    # float32 arithmetic may round a value lying within 1e-4 of a half differently: allow those only
    halves = np.abs(values.astype(np.float64) * 255 / 65535 % 1 - 0.5) < 1e-4
    assert np.array_equal(got[~halves], expected[~halves])
    assert np.all(np.abs(got.astype(int) - expected) <= 1)


def test_other_modes_go_through_pillow():
    rgba = Image.fromarray(np.dstack([data.astronaut(), np.full((512, 512), 7, np.uint8)]))
    assert np.array_equal(np.asarray(photos.to_rgb8(rgba)), data.astronaut())
    grey = Image.fromarray(grey_astronaut())
    assert np.array_equal(np.asarray(photos.to_rgb8(grey)), rgb_of(grey_astronaut()))


# ----------------------------------------------------------------------------------------------
# Pixel limit, formats, EXIF
# ----------------------------------------------------------------------------------------------


def test_a_decompression_bomb_is_refused_from_its_header(tmp_path):
    bomb = png_header_only(tmp_path / "bomb.png", 20000, 10000)  # 200 M pixels > Pillow's 179 M
    limit_before = Image.MAX_IMAGE_PIXELS
    for read in (photos.read_header, photos.open_upright):
        with pytest.raises(photos.PhotoError, match="too large: 20000x10000 = 200,000,000 pixels.*--max-pixels"):
            read(bomb)
    assert Image.MAX_IMAGE_PIXELS == limit_before  # Pillow's global setting is left as it was
    header = photos.read_header(bomb, max_pixels=300_000_000)  # a higher limit lets it through Pillow's too
    assert (header.width, header.height, header.format) == (20000, 10000, "PNG")
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((48, 64), np.uint8)).save(small)
    with pytest.raises(photos.PhotoError, match="3,072 pixels, over the limit of 3,000"):
        photos.read_header(small, max_pixels=3000)
    assert photos.read_header(small, max_pixels=3072).width == 64


def test_orientation_swaps_the_header_size_and_turns_the_image(tmp_path):
    exif = Image.Exif()
    exif[photos.EXIF_ORIENTATION_TAG] = 6  # shown turned 90 degrees clockwise
    stored = data.astronaut()[:, :384]
    Image.fromarray(stored).save(tmp_path / "turned.png", exif=exif)
    header = photos.read_header(tmp_path / "turned.png")
    assert (header.width, header.height, header.orientation) == (512, 384, 6)
    image, decoded = photos.open_upright(tmp_path / "turned.png")
    assert decoded == header
    assert np.array_equal(np.asarray(image), np.rot90(stored, k=-1))


@pytest.mark.skipif(".heic" in photos.readable_extensions(), reason="this Pillow has a HEIC plugin")
def test_formats_pillow_cannot_open_are_named(tmp_path):
    (tmp_path / "phone.heic").write_bytes(HEIC_BYTES)
    (tmp_path / "renamed.jpg").write_bytes(HEIC_BYTES)  # a HEIC whose extension lies
    (tmp_path / "garbage.jpg").write_bytes(b"not an image at all")
    assert photos.unsupported_format(tmp_path / "phone.heic") == "HEIC"
    assert photos.unsupported_format(tmp_path / "renamed.jpg") == "HEIC"
    assert photos.unsupported_format(tmp_path / "garbage.jpg") is None
    with pytest.raises(photos.PhotoError, match="unsupported image format HEIC"):
        photos.read_header(tmp_path / "renamed.jpg")
    with pytest.raises(photos.PhotoError, match="not a readable image"):
        photos.read_header(tmp_path / "garbage.jpg")


# ----------------------------------------------------------------------------------------------
# Listing folders
# ----------------------------------------------------------------------------------------------


def test_listing_names_unsupported_files_and_leaves_out_the_tools_outputs(tmp_path):
    small = Image.fromarray(data.astronaut()[::8, ::8])
    for name in ("a.png", "a_any_crop1.png", "a_any_visualization.png", "b_any_crop1.png"):
        small.save(tmp_path / name)
    report = {
        "photo": str(tmp_path / "a.png"),
        "results": [{"crops": [{"rank": 1, "file": "a_any_crop1.png"}], "figure": "a_any_visualization.png"}],
    }
    (tmp_path / "a.json").write_text(json.dumps(report))
    (tmp_path / "notes.txt").write_text("not a photo")
    (tmp_path / ".hidden.png").write_bytes(b"")
    listing = photos.list_photos([str(tmp_path), str(tmp_path / "missing.jpg")])
    # b_any_crop1.png is named like an output but no report lists it: a photo of the user's
    assert [p.name for p in listing.photos] == ["a.png", "b_any_crop1.png"]
    assert any("3 file(s) this tool wrote" in note and "a_any_crop1.png" in note for note in listing.notes)
    assert any("notes.txt" in note and "not images" in note for note in listing.notes)
    assert listing.failures == [f"{tmp_path / 'missing.jpg'}: no such file or folder"]


@pytest.mark.skipif(".heic" in photos.readable_extensions(), reason="this Pillow has a HEIC plugin")
def test_listing_reports_heic_as_unsupported(tmp_path):
    (tmp_path / "phone.heic").write_bytes(HEIC_BYTES)
    listing = photos.list_photos([str(tmp_path)])
    assert listing.photos == [] and listing.notes == []
    assert len(listing.failures) == 1 and "phone.heic: unsupported image format HEIC" in listing.failures[0]


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------


def test_atomic_writes_follow_the_umask_and_leave_nothing_behind_on_failure(tmp_path):
    target = tmp_path / "out.json"
    for mask in (0o022, 0o077, 0o002):
        old = os.umask(mask)
        try:
            photos.write_atomic(target, lambda tmp: Path(tmp).write_text("new"))
        finally:
            os.umask(old)
        assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
        target.unlink()
    target.write_text("kept")

    def fail(tmp: str) -> None:
        Path(tmp).write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        photos.write_atomic(target, fail)
    assert target.read_text() == "kept" and sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_output_names_come_from_the_decoded_format(tmp_path):
    photo = tmp_path / "shot.png"
    Image.fromarray(data.astronaut()[::4, ::4]).save(photo, format="JPEG")  # a JPEG named .png
    out = tmp_path / "out"
    out.mkdir()
    plan = photos.plan_outputs([photo], out, ["any"], 2, True, overwrite=False)
    paths = plan.todo[photo]
    assert paths.crop_format == "JPEG"
    assert [p.name for p in paths.crops["any"]] == ["shot_any_crop1.jpg", "shot_any_crop2.jpg"]
    assert (paths.json.name, paths.figures["any"].name) == ("shot.json", "shot_any_visualization.png")
    (out / "shot.json").write_text("the report of an earlier run: its set is complete")
    plan = photos.plan_outputs([photo], out, ["any"], 2, False, overwrite=False)
    assert plan.todo == {} and "shot.json" in plan.skipped[0] and "--overwrite" in plan.skipped[0]
    assert photo in photos.plan_outputs([photo], out, ["any"], 2, False, overwrite=True).todo
    twin = tmp_path / "shot.jpg"
    Image.fromarray(data.astronaut()[::4, ::4]).save(twin)
    plan = photos.plan_outputs([photo, twin], tmp_path / "elsewhere", ["any"], 1, False, overwrite=False)
    assert list(plan.todo) == [photo] and "same names" in plan.failures[0]


def test_save_format_keeps_what_pillow_writes():
    assert photos.save_format("JPEG", ".JPEG") == ("JPEG", ".JPEG")
    assert photos.save_format("MPO", ".jpg") == ("JPEG", ".jpg")
    assert photos.save_format("PNG", ".jpg") == ("PNG", ".png")
    assert photos.save_format(None, ".xyz") == ("PNG", ".png")


# ----------------------------------------------------------------------------------------------
# Options in both spellings
# ----------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tool")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--data_root")
    parser.add_argument("--photos-per-batch", type=int, default=4)
    parser.add_argument("--verbose", action="store_true")
    return add_option_aliases(parser, renamed={"--batch-size": "--photos-per-batch"})


@pytest.mark.parametrize(
    "argv",
    [
        ["--top_k", "5", "--data-root", "d", "--batch-size", "2"],
        ["--top-k=5", "--data_root=d", "--batch_size", "2"],
        ["--top_k=5", "--data-root", "d", "--photos_per_batch", "2"],
    ],
)
def test_every_option_takes_both_spellings(argv):
    args = _parser().parse_args(argv)
    assert (args.top_k, args.data_root, args.photos_per_batch) == (5, "d", 2)


def test_aliases_are_hidden_and_abbreviations_refused(capsys):
    parser = _parser()
    help_text = parser.format_help()
    assert "--top-k" in help_text and "--photos-per-batch" in help_text and "--data_root" in help_text
    assert "--top_k" not in help_text and "--batch-size" not in help_text and "--data-root" not in help_text
    with pytest.raises(SystemExit):
        parser.parse_args(["--top", "5"])
    assert "unrecognized arguments: --top" in capsys.readouterr().err
