"""crop.py and untils/person_detection.py on real photos, with a tiny random-weight model.

Crops are checked against references that do not go through the tool: the photo's size, the
requested ratio, GAICD's own candidate set, the model scoring one crop on its own, pixels cut
with numpy, and hand-made detection cases.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

import crop
from config_GAICD import Config
from cropping_model import build_crop_model
from tests.conftest import REPO_ROOT, require_shared
from tests.test_photos import HEIC_BYTES, png_header_only
from untils import cropper as cropper_library
from untils import photos
from untils.boxes import rescale_boxes, resized_size
from untils.inference import run_model
from untils.person_detection import (
    Detection,
    DetectorError,
    FacePersonDetector,
    HogPersonDetector,
    TorchvisionPersonDetector,
    hog_available,
    main_person,
    non_max_suppression,
)
from untils.preprocessing import PhotoSpec, normalize_image

ASTRONAUT_REGION = (130, 20, 390, 512)  # where she is in scikit-image's 512x512 astronaut (checked by eye)
SAMPLE = "GAICD-sample/images/test/297406.jpg"  # human-centric, person at [142, 488, 252, 676]
NO_PERSON_SAMPLE = "GAICD-sample/images/train/211958.jpg"


def save_checkpoint(path: Path, model_type: str) -> Path:
    cfg = Config(backbone="mobilenetv2", pretrained=False)
    torch.manual_seed(0)
    model = build_crop_model(cfg, model_type)
    torch.save({"model": model.state_dict(), "config": dataclasses.asdict(cfg), "model_type": model_type}, path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-hcic.pth", "HCIC")


@pytest.fixture(scope="module")
def cropper(checkpoint) -> crop.Cropper:
    return crop.Cropper(str(checkpoint), device="cpu")


@pytest.fixture(scope="module")
def astronaut_png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photos") / "astronaut.png"
    Image.fromarray(data.astronaut()).save(path)
    return path


def iou(a, b) -> float:
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def run_tool(args: list[str], capsys) -> tuple[int, str]:
    code = crop.main([str(a) for a in args] + ["--workers", "0"])
    return code, capsys.readouterr().err


def assert_inside(boxes, width: int, height: int) -> None:
    for x1, y1, x2, y2 in boxes:
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height, (x1, y1, x2, y2)


def assert_non_increasing(scores) -> None:
    assert all(a >= b for a, b in zip(scores[:-1], scores[1:], strict=True)), scores


# ----------------------------------------------------------------------------------------------
# Candidates, ranking and scores (Python API)
# ----------------------------------------------------------------------------------------------


def test_free_ratio_ranks_exactly_the_gaicd_candidates(cropper):
    photo = require_shared(SAMPLE)
    annotated = json.loads(require_shared("human_bboxes/GAICD/image_crop.json").read_text())["297406.jpg"]["bbox"]
    result = cropper.rank(photo, human_box=[142, 488, 252, 676])
    assert (result.width, result.height) == Image.open(photo).size
    assert sorted(result.boxes) == sorted(tuple(box) for box in annotated)
    assert_inside(result.boxes, result.width, result.height)
    assert_non_increasing(result.scores)
    assert result.person.box == (142.0, 488.0, 252.0, 676.0) and result.person.source == "given"


def test_bf16_channels_last_scores_are_close_to_fp32(cropper, checkpoint, tmp_path, capsys):
    photo = require_shared(SAMPLE)
    person = [142, 488, 252, 676]
    reference = cropper.rank(photo, human_box=person)
    fast = crop.Cropper(str(checkpoint), device="cpu", precision="bf16", channels_last=True)
    result = fast.rank(photo, human_box=person)
    expected = dict(zip(reference.boxes, reference.scores, strict=True))
    ours = torch.tensor([result.scores[i] for i in range(len(result.boxes))], dtype=torch.float64)
    wanted = torch.tensor([expected[box] for box in result.boxes], dtype=torch.float64)
    assert sorted(result.boxes) == sorted(reference.boxes)
    torch.testing.assert_close(ours, wanted, atol=0.02 * wanted.abs().max().item(), rtol=0)
    assert not torch.equal(ours, wanted)  # bf16 really ran
    code, err = run_tool(
        [
            photo,
            "--checkpoint",
            checkpoint,
            "--out",
            tmp_path,
            "--human-box",
            "142,488,252,676",
            "--precision",
            "bf16",
            "--channels-last",
        ],
        capsys,
    )
    assert code == 0, err
    model = json.loads((tmp_path / "297406.json").read_text())["model"]
    assert model["precision"] == "bf16" and model["channels_last"] is True


@pytest.mark.parametrize("ratio_text, ratio", [("16:9", 16 / 9), ("3:4", 0.75)])
def test_fixed_ratio_crops_have_the_ratio_and_lie_inside(cropper, ratio_text, ratio):
    photo = require_shared(SAMPLE)
    best = cropper.crop(photo, aspect_ratios=ratio_text, top_k=5)
    width, height = Image.open(photo).size
    assert len(best) == 5
    assert_inside([box for box, _ in best], width, height)
    for (x1, y1, x2, y2), _ in best:
        assert all(isinstance(v, int) for v in (x1, y1, x2, y2))
        assert abs((x2 - x1) - (y2 - y1) * ratio) <= 1.0
    assert_non_increasing([score for _, score in best])


def test_scores_are_the_models_score_of_each_crop_alone(cropper):
    """Ranking must keep each box with its own score: rescore the top and bottom crops one at a time."""
    image = Image.fromarray(data.astronaut()).crop((0, 0, 512, 384))
    person = (130.0, 20.0, 384.0, 384.0)
    result = cropper.rank(image, human_box=person)
    resized = resized_size(512, 384, (256, 256), True)
    pixels = normalize_image(image.resize(resized, Image.Resampling.LANCZOS)).unsqueeze(0)
    ratio_w, ratio_h = resized[0] / 512, resized[1] / 384
    human = torch.from_numpy(rescale_boxes(np.array([[person]]), ratio_w, ratio_h))
    for rank in (0, len(result.boxes) - 1):
        box = torch.from_numpy(rescale_boxes(np.array([[result.boxes[rank]]], dtype=np.float64), ratio_w, ratio_h))
        with torch.no_grad():
            alone = run_model(cropper.model, {"image": pixels, "crop_box": box, "human_box": human}).score
        assert alone.item() == pytest.approx(result.scores[rank], abs=1e-4)


def test_batched_photos_with_different_candidate_counts_match_single(cropper):
    astronaut = data.astronaut()
    photos = [astronaut[:256, :340].copy(), Image.fromarray(astronaut[100:356, 100:460])]
    assert resized_size(340, 256, (256, 256), True) == resized_size(360, 256, (256, 256), True)
    boxes = [None, [20, 10, 200, 256]]
    batched = cropper.crop_many(photos, boxes, top_k=100, batch_size=2)
    assert len(batched[0]) == 90 and len(batched[1]) == 87  # the two GAIC grids differ: crops were padded
    alone = cropper.crop(photos[1], human_box=boxes[1], top_k=100)
    assert [b for b, _ in batched[1]] == [b for b, _ in alone]
    assert [s for _, s in batched[1]] == pytest.approx([s for _, s in alone], abs=1e-4)


def test_array_and_file_give_the_same_crops(cropper, astronaut_png):
    from_array, from_file = cropper.crop_many([data.astronaut(), astronaut_png], top_k=3, batch_size=2)
    assert from_array == from_file


def test_gaic_checkpoint_has_no_heat_map_and_draws(tmp_path, astronaut_png):
    gaic = crop.Cropper(str(save_checkpoint(tmp_path / "gaic.pth", "GAIC")), device="cpu")
    assert gaic.model_type == "GAIC"
    (result,) = gaic.rank_many([astronaut_png], keep_image=True)
    assert result.heat_map is None and result.image.size == (512, 512)
    assert_non_increasing(result.scores)
    photos.draw_crops(
        result.image,
        result.top(3),
        result.person.box,
        result.heat_map,
        tmp_path / "figure.png",
        ["GAIC: no heat map"],
        warning=False,
    )
    with Image.open(tmp_path / "figure.png") as figure:
        assert figure.format == "PNG" and min(figure.size) > 300


def test_bad_inputs_give_clear_errors(cropper):
    with pytest.raises(ValueError, match="aspect ratio 'x:y'"):
        cropper.crop(data.astronaut(), aspect_ratios="x:y")
    with pytest.raises(crop.PhotoError, match="lies outside the 512x512 photo"):
        cropper.crop(data.astronaut(), human_box=[600, 600, 700, 700])
    with pytest.raises(crop.PhotoError, match="x2 > x1"):
        cropper.crop(data.astronaut(), human_box=[300, 10, 200, 100])
    with pytest.raises(crop.PhotoError, match=r"\(H, W, 3\) uint8"):
        cropper.crop(np.zeros((10, 10), dtype=np.uint8))
    with pytest.raises(crop.MissingCheckpointError, match="train_on_GAICD.py"):
        crop.Cropper(None)


# ----------------------------------------------------------------------------------------------
# The command line
# ----------------------------------------------------------------------------------------------


def test_jpeg_outputs_match_json_in_sizes_count_and_order(checkpoint, tmp_path, capsys):
    photo = require_shared(SAMPLE)
    boxes_file = require_shared("human_bboxes/GAICD/human_bboxes.json")
    code, err = run_tool(
        [photo, "--checkpoint", checkpoint, "--out", tmp_path, "--top-k", 3, "--human-boxes", boxes_file], capsys
    )
    assert code == 0, err
    report = json.loads((tmp_path / "297406.json").read_text())
    assert report["person"]["box"] == [142, 488, 252, 676] and report["person"]["source"] == "file"
    assert [c["rank"] for c in report["results"][0]["crops"]] == [1, 2, 3]
    assert [c["box"] for c in report["results"][0]["crops"]] == [r["box"] for r in report["results"][0]["ranked"][:3]]
    assert_non_increasing([r["score"] for r in report["results"][0]["ranked"]])
    original = np.asarray(Image.open(photo).convert("RGB"), dtype=np.int16)
    for entry in report["results"][0]["crops"]:
        x1, y1, x2, y2 = entry["box"]
        with Image.open(tmp_path / entry["file"]) as saved:
            assert saved.format == "JPEG" and saved.size == (x2 - x1, y2 - y1) == (entry["width"], entry["height"])
            pixels = np.asarray(saved.convert("RGB"), dtype=np.int16)
        assert np.abs(pixels - original[y1:y2, x1:x2]).mean() < 3  # the right region, re-encoded at quality 95
    crop_files = [c["file"] for c in report["results"][0]["crops"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["297406.json"] + crop_files


def test_png_stays_png_lossless_with_detected_person_and_figure(checkpoint, tmp_path, astronaut_png, capsys):
    code, err = run_tool(
        [
            astronaut_png,
            "--checkpoint",
            checkpoint,
            "--out",
            tmp_path,
            "--top-k",
            2,
            "--aspect-ratio",
            "1:1",
            "--detect-human",
            "--visualize",
        ],
        capsys,
    )
    assert code == 0, err
    report = json.loads((tmp_path / "astronaut.json").read_text())
    person = report["person"]
    assert person["source"] == "detected" and person["detections"]
    assert iou(person["box"], ASTRONAUT_REGION) > 0.5
    assert len(report["results"][0]["crops"]) == 2
    for entry in report["results"][0]["crops"]:
        x1, y1, x2, y2 = entry["box"]
        assert x2 - x1 == y2 - y1
        with Image.open(tmp_path / entry["file"]) as saved:
            assert saved.format == "PNG"
            assert np.array_equal(np.asarray(saved), data.astronaut()[y1:y2, x1:x2])
    with Image.open(tmp_path / report["results"][0]["figure"]) as figure:
        assert figure.format == "PNG" and min(figure.size) > 300


def test_no_person_found_uses_the_no_person_input(checkpoint, tmp_path, capsys):
    photo = require_shared(NO_PERSON_SAMPLE)
    code, err = run_tool([photo, "--checkpoint", checkpoint, "--out", tmp_path, "--top-k", 1, "--detect-human"], capsys)
    assert code == 0, err
    person = json.loads((tmp_path / "211958.json").read_text())["person"]
    assert person["box"] is None and person["source"] == "none" and person["detections"] == []
    assert "no-person" in person["note"] and "no person found" in err
    settings = cropper_library.PhotoSettings(PhotoSpec("hcic", (256, 256), True, "hcic"), (None,), keep_image=False)
    item = cropper_library.PhotoDataset([photo], [None], "given", FacePersonDetector(), settings)[0]
    assert item["human_box"].tolist() == [[-1.0, -1.0, -1.0, -1.0]]  # what the model is given


def test_exif_orientation_is_applied(checkpoint, tmp_path, capsys):
    stored = data.astronaut()[:, :384]  # 384 wide, 512 tall as stored
    exif = Image.Exif()
    exif[photos.EXIF_ORIENTATION_TAG] = 6  # shown rotated 90 degrees clockwise
    Image.fromarray(stored).save(tmp_path / "turned.jpg", quality=100, exif=exif)
    upright = np.rot90(np.asarray(Image.open(tmp_path / "turned.jpg").convert("RGB")), k=-1).astype(np.int16)
    code, err = run_tool(
        [tmp_path / "turned.jpg", "--checkpoint", checkpoint, "--out", tmp_path / "out", "--top-k", 1], capsys
    )
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "turned.json").read_text())
    assert (report["width"], report["height"], report["exif_orientation"]) == (512, 384, 6)
    assert_inside([r["box"] for r in report["results"][0]["ranked"]], 512, 384)
    x1, y1, x2, y2 = report["results"][0]["crops"][0]["box"]
    with Image.open(tmp_path / "out" / report["results"][0]["crops"][0]["file"]) as saved:
        assert saved.getexif().get(photos.EXIF_ORIENTATION_TAG, 1) == 1
        pixels = np.asarray(saved.convert("RGB"), dtype=np.int16)
    assert np.abs(pixels - upright[y1:y2, x1:x2]).mean() < 3


def test_corrupt_files_are_skipped_and_the_run_fails(checkpoint, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(data.astronaut()[::2, ::2]).save(folder / "good.jpg")
    (folder / "garbage.jpg").write_bytes(b"this is not an image")
    whole = (folder / "good.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(whole[: len(whole) // 3])  # valid header, data cut off
    (folder / "notes.txt").write_text("not a photo")
    code = crop.main(
        [str(folder), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out"), "--top-k", "1", "--workers", "1"]
    )  # one DataLoader worker: failures cross processes
    err = capsys.readouterr().err
    assert code == 1
    assert "garbage.jpg" in err and "truncated.jpg" in err and "2 failed" in err
    assert "notes.txt" in err and "1 photo(s) cropped" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.json", "good_any_crop1.jpg"]


def test_existing_outputs_need_overwrite(checkpoint, tmp_path, astronaut_png, capsys):
    (tmp_path / "astronaut.json").write_text("kept")
    args = [astronaut_png, "--checkpoint", checkpoint, "--out", tmp_path, "--top-k", 1]
    code, err = run_tool(args, capsys)
    assert code == 0 and "skipped" in err and "--overwrite" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["astronaut.json"]
    assert (tmp_path / "astronaut.json").read_text() == "kept"
    code, err = run_tool(args + ["--overwrite"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "astronaut.json").read_text())
    assert report["results"][0]["crops"][0]["file"] == "astronaut_any_crop1.png"


def test_setup_errors_are_explained(checkpoint, tmp_path, astronaut_png, capsys):
    code, err = run_tool([astronaut_png, "--out", tmp_path], capsys)
    assert code == 2 and "--checkpoint" in err and "train_on_GAICD.py --demo" in err and "--allow-untrained" in err
    code, err = run_tool([astronaut_png, "--checkpoint", tmp_path / "missing.pth", "--out", tmp_path], capsys)
    assert code == 2 and "missing.pth" in err and "does not exist" in err
    bad_boxes = tmp_path / "boxes.json"
    bad_boxes.write_text(json.dumps({"astronaut.png": [1, 2, 3]}))
    code, err = run_tool(
        [astronaut_png, "--checkpoint", checkpoint, "--out", tmp_path, "--human-boxes", bad_boxes], capsys
    )
    assert code == 2 and "boxes.json" in err and "astronaut.png" in err
    assert not list(tmp_path.glob("astronaut*"))


@pytest.mark.parametrize(
    "option, value, expected",
    [
        ("--aspect-ratio", "4:0", "aspect ratio '4:0'"),
        ("--aspect-ratio", "wide", "aspect ratio 'wide'"),
        ("--human-box", "1,2,3", "four numbers"),
    ],
)
def test_bad_option_values_are_rejected(checkpoint, astronaut_png, capsys, option, value, expected):
    with pytest.raises(SystemExit) as exit_info:
        crop.main([str(astronaut_png), "--checkpoint", str(checkpoint), option, value])
    assert exit_info.value.code == 2 and expected in capsys.readouterr().err


def test_help_runs_as_a_script():
    completed = subprocess.run(
        [sys.executable, "crop.py", "--help"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0
    assert "--aspect-ratio" in completed.stdout and "--detect-human" in completed.stdout


# ----------------------------------------------------------------------------------------------
# Person detection
# ----------------------------------------------------------------------------------------------


def test_face_detector_finds_the_astronaut():
    detections = FacePersonDetector()(data.astronaut())
    main = main_person(detections, 512, 512)
    assert main is not None and iou(detections[main].box, ASTRONAUT_REGION) > 0.5
    face = detections[main].evidence
    assert ASTRONAUT_REGION[0] < face[0] < face[2] < ASTRONAUT_REGION[2]  # her face, inside her region
    assert FacePersonDetector()(np.full((300, 400, 3), 128, dtype=np.uint8)) == []


def test_hog_detector_where_opencv_has_it():
    if not hog_available():
        with pytest.raises(DetectorError, match="no HOG people detector"):
            HogPersonDetector()
        return
    detections = HogPersonDetector()(data.astronaut())
    assert all(d.detector == "hog" and 0 <= d.box[0] < d.box[2] <= 512 for d in detections)
    assert any(iou(d.box, ASTRONAUT_REGION) > 0.2 for d in detections)


def test_non_max_suppression_hand_case_and_brute_force():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 10, 9]], dtype=float)
    scores = np.array([0.8, 0.9, 0.7, 0.6])
    # IoU([1,1,10,10], [0,0,10,10]) = 81/100; with [0,0,10,9]: 72/(81 + 90 - 72) = 0.727
    assert non_max_suppression(boxes, scores, 0.5) == [1, 2]
    assert non_max_suppression(boxes, scores, 0.75) == [1, 2, 3]
    rng = np.random.default_rng(0)
    for _ in range(20):
        corners = rng.uniform(0, 50, size=(12, 2))
        random_boxes = np.concatenate([corners, corners + rng.uniform(1, 30, size=(12, 2))], axis=1)
        random_scores = rng.permutation(12).astype(float)
        expected, remaining = [], sorted(range(12), key=lambda i: -random_scores[i])
        while remaining:
            best = remaining.pop(0)
            expected.append(best)
            remaining = [i for i in remaining if iou(random_boxes[best], random_boxes[i]) <= 0.4]
        assert non_max_suppression(random_boxes, random_scores, 0.4) == expected


def test_main_person_prefers_large_and_central():
    def detection(box):
        return Detection(box, None, "test")

    small_centre, large_corner, large_centre = (45, 45, 55, 55), (0, 0, 40, 40), (30, 30, 70, 70)
    assert main_person([detection(small_centre), detection(large_corner), detection(large_centre)], 100, 100) == 2
    # area share 0.16 * centrality (1 - 28.3/70.7) = 0.096 beats 0.01 * 1
    assert main_person([detection(small_centre), detection(large_corner)], 100, 100) == 1
    assert main_person([], 100, 100) is None


def test_torchvision_detector_runs_or_explains_why_not(tmp_path, astronaut_png, checkpoint, capsys):
    from untils.torchvision_compat import models

    weights = tmp_path / "detector.pth"
    torch.save(
        models.detection.fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None).state_dict(), weights
    )
    try:
        detector = TorchvisionPersonDetector(str(weights))
    except DetectorError as error:
        assert "cannot run on this installation" in str(error) and "--human-box" in str(error)
        code, err = run_tool(
            [
                astronaut_png,
                "--checkpoint",
                checkpoint,
                "--out",
                tmp_path,
                "--detect-human",
                "--detector-weights",
                weights,
            ],
            capsys,
        )
        assert code == 2 and "cannot run on this installation" in err
    else:
        assert all(isinstance(d, Detection) for d in detector(data.astronaut()))
    with pytest.raises(DetectorError, match="does not exist"):
        TorchvisionPersonDetector(str(tmp_path / "nothing.pth"))
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(DetectorError, match="not a state_dict of torchvision's fasterrcnn"):
        TorchvisionPersonDetector(str(tmp_path / "other.pth"))


# ----------------------------------------------------------------------------------------------
# Hostile and careless inputs (issues 15 and 16)
# ----------------------------------------------------------------------------------------------


def test_16_bit_photo_scores_as_its_8_bit_version_and_keeps_its_pixels(cropper, checkpoint, tmp_path, capsys):
    grey = np.asarray(Image.fromarray(data.astronaut()).convert("L"))
    Image.fromarray(grey).save(tmp_path / "eight.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "sixteen.png")  # the same picture in 16 bits
    eight, sixteen = cropper.rank(tmp_path / "eight.png"), cropper.rank(tmp_path / "sixteen.png")
    assert sixteen.boxes == eight.boxes and sixteen.scores == eight.scores
    code, err = run_tool(
        [tmp_path / "sixteen.png", "--checkpoint", checkpoint, "--out", tmp_path / "out", "--top-k", 1], capsys
    )
    assert code == 0, err
    x1, y1, x2, y2 = json.loads((tmp_path / "out" / "sixteen.json").read_text())["results"][0]["crops"][0]["box"]
    with Image.open(tmp_path / "out" / "sixteen_any_crop1.png") as saved:
        assert saved.mode.startswith("I")  # still 16-bit: crops are cut from the file
        assert np.array_equal(np.asarray(saved), grey[y1:y2, x1:x2].astype(np.uint16) * 257)


def test_too_large_photos_are_reported_and_the_folder_goes_on(checkpoint, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    png_header_only(folder / "bomb.png", 20000, 10000)
    Image.fromarray(data.astronaut()[::2, ::2]).save(folder / "good.png")
    code, err = run_tool([folder, "--checkpoint", checkpoint, "--out", tmp_path / "out", "--top-k", 1], capsys)
    assert code == 1 and "Traceback" not in err
    assert "bomb.png: too large: 20000x10000" in err and "1 photo(s) cropped" in err and "1 failed" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.json", "good_any_crop1.png"]
    code, err = run_tool(
        [folder / "good.png", "--checkpoint", checkpoint, "--out", tmp_path / "low", "--max-pixels", 256 * 256 - 1],
        capsys,
    )
    assert code == 1 and "good.png: too large: 256x256 = 65,536 pixels" in err


def test_workers_send_only_what_scoring_needs(checkpoint, tmp_path, monkeypatch, capsys):
    width, height = 2400, 1800
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)).save(
        tmp_path / "big.png"
    )
    sent, collate_photos = [], cropper_library.collate_photos

    def measured_collate(items):  # the real collate, recording the size of what crossed from the workers
        sent.append(len(pickle.dumps(items)))
        return collate_photos(items)

    monkeypatch.setattr(cropper_library, "collate_photos", measured_collate)
    code, err = run_tool([tmp_path / "big.png", "--checkpoint", checkpoint, "--out", tmp_path / "out"], capsys)
    assert code == 0, err
    network_input = 3 * 4 * np.prod(resized_size(width, height, (256, 256), True))  # float32 pixels
    assert len(sent) == 1 and sent[0] < network_input + 100_000 < width * height * 3


def test_already_done_is_decided_by_the_json_written_last(checkpoint, tmp_path, capsys):
    Image.fromarray(data.astronaut()).save(tmp_path / "shot.png", format="JPEG")  # a JPEG named .png
    out = tmp_path / "out"
    out.mkdir()
    (out / "shot_any_crop1.jpg").write_text("a crop of an interrupted run (no JSON)")
    args = [tmp_path / "shot.png", "--checkpoint", checkpoint, "--out", out, "--top-k", 1]
    code, err = run_tool(args, capsys)
    assert code == 0 and "1 photo(s) cropped" in err, err  # an incomplete set is completed
    with Image.open(out / "shot_any_crop1.jpg") as saved:
        assert saved.format == "JPEG"
    (out / "shot_any_crop1.jpg").write_text("kept: the set is complete (its JSON exists)")
    code, err = run_tool(args, capsys)
    assert code == 0 and "skipped" in err and "shot.json" in err and "--overwrite" in err
    assert (out / "shot_any_crop1.jpg").read_text() == "kept: the set is complete (its JSON exists)"
    code, err = run_tool(args + ["--overwrite"], capsys)
    assert code == 0, err
    with Image.open(out / "shot_any_crop1.jpg") as saved:
        assert saved.format == "JPEG"


def test_out_in_the_input_folder_does_not_crop_its_own_outputs(checkpoint, tmp_path, capsys):
    Image.fromarray(data.astronaut()[::2, ::2]).save(tmp_path / "photo.png")
    args = [tmp_path, "--checkpoint", checkpoint, "--out", tmp_path, "--top-k", 2, "--visualize"]
    code, err = run_tool(args, capsys)
    assert code == 0, err
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == [
        "photo.json",
        "photo.png",
        "photo_any_crop1.png",
        "photo_any_crop2.png",
        "photo_any_visualization.png",
    ]
    code, err = run_tool(args + ["--overwrite"], capsys)
    assert code == 0 and "1 photo(s) cropped" in err and "4 file(s) this tool wrote" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == written


def test_out_naming_a_file_is_one_error_line(checkpoint, tmp_path, astronaut_png, capsys):
    (tmp_path / "taken").write_text("a file")
    code, err = run_tool([astronaut_png, "--checkpoint", checkpoint, "--out", tmp_path / "taken"], capsys)
    assert code == 2 and "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        f"error: --out {tmp_path / 'taken'}: is an existing file, not a folder"
    ]
    assert (tmp_path / "taken").read_text() == "a file"


def test_an_unexpected_error_is_one_line_unless_debug(checkpoint, tmp_path, astronaut_png, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise KeyError("something unforeseen")

    monkeypatch.setattr(crop, "plan_outputs", broken)
    args = [astronaut_png, "--checkpoint", checkpoint, "--out", tmp_path]
    code, err = run_tool(args, capsys)
    assert code == 2 and "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        "error: KeyError: 'something unforeseen' (--debug shows where)"
    ]
    with pytest.raises(KeyError, match="something unforeseen"):
        run_tool(args + ["--debug"], capsys)


def test_an_empty_folder_is_an_error(checkpoint, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, err = run_tool([tmp_path / "empty", "--checkpoint", checkpoint, "--out", tmp_path / "out"], capsys)
    assert code == 1 and f"error: no photo to crop in {tmp_path / 'empty'}" in err


@pytest.mark.skipif(".heic" in photos.readable_extensions(), reason="this Pillow has a HEIC plugin")
def test_heic_is_named_an_unsupported_format(checkpoint, tmp_path, capsys):
    folder = tmp_path / "phone"
    folder.mkdir()
    Image.fromarray(data.astronaut()[::2, ::2]).save(folder / "good.jpg")
    (folder / "IMG_0001.HEIC").write_bytes(HEIC_BYTES)
    code, err = run_tool([folder, "--checkpoint", checkpoint, "--out", tmp_path / "out", "--top-k", 1], capsys)
    assert code == 1 and "1 photo(s) cropped" in err and "1 failed" in err
    assert "IMG_0001.HEIC: unsupported image format HEIC" in err and "without an image extension" not in err


def test_outputs_follow_the_users_umask(checkpoint, tmp_path, astronaut_png, capsys):
    old = os.umask(0o022)
    try:
        code, err = run_tool(
            [astronaut_png, "--checkpoint", checkpoint, "--out", tmp_path / "out", "--top-k", 2, "--visualize"], capsys
        )
    finally:
        os.umask(old)
    assert code == 0, err
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "out").iterdir()}
    assert len(modes) == 4 and set(modes.values()) == {0o644}, modes


def test_options_take_both_spellings_and_boolean_values(checkpoint, tmp_path, astronaut_png, capsys):
    code, err = run_tool(
        [
            astronaut_png,
            "--checkpoint",
            checkpoint,
            "--out",
            tmp_path / "a",
            "--top_k",
            1,
            "--photos_per_batch",
            2,
            "--aspect_ratio",
            "1:1",
            "--channels-last",
            "false",
            "--num_workers",
            0,
        ],
        capsys,
    )
    assert code == 0, err
    report = json.loads((tmp_path / "a" / "astronaut.json").read_text())
    assert report["model"]["channels_last"] is False and len(report["results"][0]["crops"]) == 1
    assert report["results"][0]["aspect_ratio"] == "1:1"
    code, err = run_tool(
        [
            astronaut_png,
            "--checkpoint",
            checkpoint,
            "--out",
            tmp_path / "b",
            "--batch-size",
            2,
            "--channels_last",
            "true",
        ],
        capsys,
    )
    assert code == 0, err
    assert json.loads((tmp_path / "b" / "astronaut.json").read_text())["model"]["channels_last"] is True
    listed = {option for action in crop.build_parser()._actions for option in action.option_strings}  # --help's
    assert {"--photos-per-batch", "--num-workers", "--top-k", "--channels-last"} <= listed
    assert not {"--batch-size", "--workers", "--top_k", "--photos_per_batch"} & listed
