"""crop.py on a photo collection (issue 24): several ratios from one pass, the person kept whole,
XMP sidecars read back with an XML parser and exiftool, and sharding over processes.

References are independent of the tool: exact ratios from the boxes, containment of the person's
box, the stored-frame crop worked out from pixels that encode their own stored position (turned
upright by Pillow), and the set of photos each shard wrote.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps
from skimage import data

import crop
from tests.test_crop import save_checkpoint
from untils import photos

CRS = "{http://ns.adobe.com/camera-raw-settings/1.0/}"
RATIOS = {"any": None, "1:1": 1.0, "16:9": 16 / 9}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-hcic.pth", "HCIC")


def small_person_photo(path: Path, left: int, orientation: int = 1) -> None:
    """The astronaut shrunk into a wide grey frame (room around her for every ratio)."""
    canvas = np.full((576, 1024, 3), 120, dtype=np.uint8)
    person = np.asarray(Image.fromarray(data.astronaut()).resize((224, 224)))
    canvas[176:400, left : left + 224] = person
    exif = Image.Exif()
    exif[photos.EXIF_ORIENTATION_TAG] = orientation
    Image.fromarray(canvas).save(path, quality=95, exif=exif)


def crop_fields(xmp: Path) -> dict[str, str]:
    description = ElementTree.parse(xmp).getroot().find(".//{http://www.w3.org/1999/02/22-rdf-syntax-ns#}Description")
    assert description is not None
    return {key[len(CRS) :]: value for key, value in description.attrib.items() if key.startswith(CRS)}


def test_done_when_three_ratios_kept_person_xmp_and_two_shards(checkpoint, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for index, left in enumerate((300, 420, 560)):
        small_person_photo(folder / f"shot{index}.jpg", left)
    args = [
        "--checkpoint",
        checkpoint,
        "--aspect-ratio",
        "any",
        "1:1",
        "16:9",
        "--top-k",
        2,
        "--keep-person",
        "--detect-human",
        "--no-download",
        "--xmp",
        "--workers",
        0,
    ]
    for shard in ("0/2", "1/2"):
        code = crop.main([str(a) for a in [folder, "--out", tmp_path / "out", "--shard", shard] + args])
        err = capsys.readouterr().err
        assert code == 0, err
        assert f"shard {shard}" in err and "photo(s) cropped" in err
    out = tmp_path / "out"
    reports = sorted(out.glob("*.json"))
    assert [p.stem for p in reports] == ["shot0", "shot1", "shot2"]  # each photo once, none missed
    for report_path in reports:
        report = json.loads(report_path.read_text())
        person = report["person"]["box"]
        assert person is not None
        assert [entry["aspect_ratio"] for entry in report["results"]] == list(RATIOS)
        for entry in report["results"]:
            assert entry["note"] is None and len(entry["crops"]) == 2
            for crop_entry in entry["crops"]:
                x1, y1, x2, y2 = crop_entry["box"]
                assert x1 <= person[0] and y1 <= person[1] and x2 >= person[2] and y2 >= person[3]
                ratio = RATIOS[entry["aspect_ratio"]]
                if ratio is not None:
                    assert abs((x2 - x1) - (y2 - y1) * ratio) <= 1.0
                with Image.open(out / crop_entry["file"]) as saved:
                    assert saved.size == (x2 - x1, y2 - y1)
        best = report["results"][0]["crops"][0]["box"]
        fields = crop_fields(out / report["xmp"])
        expected = [best[0] / 1024, best[1] / 576, best[2] / 1024, best[3] / 576]
        assert [float(fields[k]) for k in ("CropLeft", "CropTop", "CropRight", "CropBottom")] == pytest.approx(
            expected, abs=1e-5
        )
        assert fields["HasCrop"] == "True" and float(fields["CropAngle"]) == 0


def stored_box_from_pixels(stored_size: tuple[int, int], orientation: int, box) -> tuple[float, ...]:
    """The stored-frame fractions of an upright ``box``, found by turning position-coded pixels upright."""
    width, height = stored_size
    ys, xs = np.mgrid[0:height, 0:width]
    code_x = Image.fromarray(xs.astype(np.int32), "I")
    code_y = Image.fromarray(ys.astype(np.int32), "I")
    exif = Image.Exif()
    exif[photos.EXIF_ORIENTATION_TAG] = orientation
    turned = []
    for code in (code_x, code_y):
        code.info["exif"] = exif.tobytes()
        code.getexif()[photos.EXIF_ORIENTATION_TAG] = orientation
        turned.append(np.asarray(ImageOps.exif_transpose(code)))
    x1, y1, x2, y2 = box
    region_x, region_y = turned[0][y1:y2, x1:x2], turned[1][y1:y2, x1:x2]
    return (
        region_x.min() / width,
        region_y.min() / height,
        (region_x.max() + 1) / width,
        (region_y.max() + 1) / height,
    )


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_xmp_crop_is_in_the_stored_frame_and_exiftool_reads_it(checkpoint, tmp_path, capsys, orientation):
    small_person_photo(tmp_path / "turned.jpg", 400, orientation)
    out = tmp_path / "out"
    code = crop.main(
        [
            str(tmp_path / "turned.jpg"),
            "--checkpoint",
            str(checkpoint),
            "--out",
            str(out),
            "--aspect-ratio",
            "4:5",
            "--xmp",
            "--no-pixels",
            "--workers",
            "0",
        ]
    )
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "turned.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == ["turned.json", "turned.xmp"]  # --no-pixels: no crop
    assert report["exif_orientation"] == orientation
    box = report["results"][0]["crops"][0]["box"]
    assert report["results"][0]["crops"][0]["file"] is None
    expected = stored_box_from_pixels((1024, 576), orientation, box)
    fields = crop_fields(out / "turned.xmp")
    got = [float(fields[k]) for k in ("CropLeft", "CropTop", "CropRight", "CropBottom")]
    assert got == pytest.approx(expected, abs=1e-5)
    exiftool = shutil.which("exiftool")
    if exiftool is None:
        pytest.skip("exiftool (libimage-exiftool-perl) is not installed")
    read = json.loads(
        subprocess.run(
            [exiftool, "-j", "-n", "-XMP-crs:all", str(out / "turned.xmp")],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
    )[0]
    assert [read["CropLeft"], read["CropTop"], read["CropRight"], read["CropBottom"]] == pytest.approx(
        expected, abs=1e-5
    )
    assert read["HasCrop"] in (True, "True", 1) and read["CropAngle"] == 0


def test_library_returns_every_ratio_in_order_from_one_pass(checkpoint, tmp_path):
    cropper = crop.Cropper(str(checkpoint), device="cpu")
    small_person_photo(tmp_path / "p.jpg", 400)
    calls = []
    forward = cropper.model.forward

    def counted(*args, **kwargs):
        calls.append(args[1].shape[1])
        return forward(*args, **kwargs)

    cropper.model.forward = counted  # type: ignore[method-assign]
    result = cropper.rank(tmp_path / "p.jpg", aspect_ratios=["16:9", "any", "1:1"])
    assert len(calls) == 1  # one pass of the model for all three ratios
    assert [r.aspect_ratio for r in result.results] == ["16:9", "any", "1:1"]
    alone = {
        text: crop.Cropper(str(checkpoint), device="cpu").rank(tmp_path / "p.jpg", aspect_ratios=text)
        for text in ("16:9", "any")
    }
    for entry in result.results[:2]:
        reference = alone[entry.aspect_ratio].results[0]
        assert entry.boxes == reference.boxes
        assert entry.scores == pytest.approx(reference.scores, abs=1e-4)
    assert cropper.crop(tmp_path / "p.jpg", aspect_ratios="16:9", top_k=1)[0][0] == result.results[0].boxes[0]
    entries = result.to_json(2)
    assert [e["aspect_ratio"] for e in entries] == ["16:9", "any", "1:1"] and len(entries[0]["crops"]) == 2
    with pytest.raises(ValueError, match="twice"):
        cropper.rank(tmp_path / "p.jpg", aspect_ratios=["1:1", "1"])


def test_keep_person_says_when_no_crop_of_a_ratio_fits(checkpoint, tmp_path):
    cropper = crop.Cropper(str(checkpoint), device="cpu")
    tall = Image.fromarray(data.astronaut())  # she fills the photo's height: no 16:9 crop holds her
    result = cropper.rank(tall, human_box=[130, 20, 390, 512], aspect_ratios=["16:9", "1:1"], keep_person=True)
    wide, square = result.results
    assert wide.boxes == [] and "whole person" in (wide.note or "")
    assert square.boxes and all(b[0] <= 130 and b[1] <= 20 and b[2] >= 390 and b[3] >= 512 for b in square.boxes)
    unconstrained = cropper.rank(tall, human_box=[130, 20, 390, 512], aspect_ratios="16:9")
    assert unconstrained.results[0].boxes  # without --keep-person the ratio has crops (that cut her)


def test_ratio_candidates_fast_is_recorded_and_ranks_its_documented_grid(checkpoint, tmp_path, capsys):
    assert "--ratio-candidates {dense,fast}" in crop.build_parser().format_help()
    small_person_photo(tmp_path / "p.jpg", 400)
    reports = {}
    for mode in ("fast", "dense"):
        args = [tmp_path / "p.jpg", "--checkpoint", checkpoint, "--out", tmp_path / mode, "--no-pixels", "--workers", 0]
        code = crop.main([str(a) for a in args + ["--aspect-ratio", "any", "1:1", "--ratio-candidates", mode]])
        assert code == 0, capsys.readouterr().err
        reports[mode] = json.loads((tmp_path / mode / "p.json").read_text())
    for mode, report in reports.items():
        assert report["model"]["ratio_candidates"] == mode
        free, square = report["results"]
        assert mode in square["candidates"] and free["candidates"] == "GAIC grid"
    # 1024x576 at 1:1: 576 pixels square at 4 (fast) or 5 (dense) positions across, then 461 and 346
    # (fast) or 518, 461, 403, 346 and 288 (dense) square at 4x4 or 5x5 positions.
    assert len(reports["fast"]["results"][1]["ranked"]) == 4 + 2 * 16
    assert len(reports["dense"]["results"][1]["ranked"]) == 5 + 5 * 25
    assert reports["fast"]["results"][0]["ranked"] == reports["dense"]["results"][0]["ranked"]  # any: unchanged
    fast_sizes = {
        (c["box"][2] - c["box"][0], c["box"][3] - c["box"][1]) for c in reports["fast"]["results"][1]["ranked"]
    }
    assert fast_sizes == {(576, 576), (461, 461), (346, 346)}
    result = crop.Cropper(str(checkpoint), device="cpu", ratio_candidates="fast").rank(tmp_path / "p.jpg", None, "1:1")
    assert result.ratio_candidates == "fast" and len(result.boxes) == 36
    with pytest.raises(ValueError, match="ratio candidates 'sparse'"):
        crop.Cropper(str(checkpoint), device="cpu", ratio_candidates="sparse")
