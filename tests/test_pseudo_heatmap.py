"""generate_pseudo_heatmap.py against an independent per-crop loop of the paper's recipe."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
from PIL import Image

from config_GAICD import Config
from cropping_dataset import heat_map_sources
from generate_pseudo_heatmap import main
from tests.conftest import require_shared
from untils.dataset_files import read_crop_annotations, score_statistics
from untils.pseudo_heatmaps import crop_heat_map, generate_heatmaps

REAL_IMAGE = "297406.jpg"  # human-centric, 1024x744, 90 crops


def reference_heat_map(boxes, scores, width, height, score_mean, fix_edge_cases=False) -> np.ndarray:
    """The recipe written out crop by crop in float64; the release's 0 / 0 edge cases give all zeros."""
    ranked = sorted(zip(scores, [list(map(int, box)) for box in boxes], strict=True), key=lambda pair: -pair[0])
    if len(ranked) > 10 and (any(score > score_mean for score, _ in ranked) or not fix_edge_cases):
        ranked = [(score, box) for score, box in ranked if score > score_mean]
    if not ranked:
        return np.zeros((height, width), np.uint8)
    masks = []
    for _, (x1, y1, x2, y2) in ranked:
        mask = np.zeros((height, width))
        mask[max(y1, 0) : y2, max(x1, 0) : x2] = 1.0
        masks.append(mask)
    logits = [score + 2.0 * mask.sum() / (width * height) for (score, _), mask in zip(ranked, masks, strict=True)]
    exps = [math.exp(logit - max(logits)) for logit in logits]
    heat = np.zeros((height, width))
    for weight, mask in zip(exps, masks, strict=True):
        heat += weight / sum(exps) * mask
    if heat.max() == heat.min():
        return np.full((height, width), 255 if fix_edge_cases else 0, np.uint8)
    return np.floor((heat - heat.min()) / (heat.max() - heat.min()) * 255.0).astype(np.uint8)


def test_hand_case_two_crops():
    # Crops [0,0,2,4] (score 1) and [2,0,4,4] (score 0) of a 4x4 image: equal areas, so the
    # weights are softmax(1, 0); the left half is the max (255), the right half the min (0).
    heat = crop_heat_map(np.array([[0, 0, 2, 4], [2, 0, 4, 4]]), np.array([1.0, 0.0]), 4, 4, score_mean=0.5)
    expected = np.zeros((4, 4), np.uint8)
    expected[:, :2] = 255
    np.testing.assert_array_equal(heat, expected)


def test_map_without_contrast_is_zero_as_the_release_or_uniform_when_fixed():
    boxes, scores = np.array([[0, 0, 5, 3]] * 3), np.array([3.0, 2.0, 1.0])
    np.testing.assert_array_equal(crop_heat_map(boxes, scores, 5, 3, score_mean=2.0), np.zeros((3, 5), np.uint8))
    heat = crop_heat_map(boxes, scores, 5, 3, score_mean=2.0, fix_edge_cases=True)
    np.testing.assert_array_equal(heat, np.full((3, 5), 255, np.uint8))


@pytest.mark.parametrize("fix_edge_cases", [False, True])
def test_mean_filter_with_none_or_some_above_the_mean(fix_edge_cases):
    rng = np.random.default_rng(4)
    x = np.sort(rng.integers(0, 41, size=(12, 2)), axis=1)
    y = np.sort(rng.integers(0, 31, size=(12, 2)), axis=1)
    boxes = np.stack([x[:, 0], y[:, 0], x[:, 1] + 1, y[:, 1] + 1], axis=1)
    scores = rng.uniform(1, 2, size=12)
    for mean in (10.0, 1.5):  # none above (the release: all zeros; fixed: every crop kept), then some above
        got = crop_heat_map(boxes, scores, 42, 32, mean, fix_edge_cases)
        want = reference_heat_map(boxes, scores, 42, 32, mean, fix_edge_cases)
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


@pytest.fixture
def real_gaicd_cfg(tmp_path):
    shared = require_shared()
    return Config(
        data_root=str(tmp_path / "root"),
        GAIC_image=str(shared / "GAICD-sample" / "images"),
        GAIC_anno=str(shared / "human_bboxes" / "GAICD" / "image_crop.json"),
        GAIC_human=str(shared / "human_bboxes" / "GAICD" / "human_bboxes.json"),
    )


@pytest.fixture
def real_gaicd_sources(real_gaicd_cfg):
    return heat_map_sources("GAICD", real_gaicd_cfg)


def test_sources_read_from_the_config(real_gaicd_cfg, real_gaicd_sources):
    with open(real_gaicd_cfg.GAIC_human) as handle:
        assert real_gaicd_sources.human_names == set(json.load(handle))
    # the sample keeps the download's images/train|test/ layout
    assert real_gaicd_sources.image_path(REAL_IMAGE) == os.path.join(real_gaicd_cfg.GAIC_image, "test", REAL_IMAGE)
    assert real_gaicd_sources.image_path("235093.jpg") is None  # annotated, not in the sample
    assert not real_gaicd_sources.skip_missing
    with pytest.raises(ValueError, match="FCDB"):
        heat_map_sources("FCDB", real_gaicd_cfg)


def test_real_image_matches_reference(real_gaicd_cfg, real_gaicd_sources, tmp_path):
    out = tmp_path / "heat"
    paths = generate_heatmaps("GAICD", real_gaicd_sources, str(out), images=[REAL_IMAGE])
    assert paths == [str(out / "GAICD" / "mask" / "297406.png")]
    heat = np.asarray(Image.open(paths[0]))
    assert heat.dtype == np.uint8 and heat.shape == (744, 1024)
    with open(real_gaicd_cfg.GAIC_anno) as handle:
        annotations = json.load(handle)
    all_scores = [score for entry in annotations.values() for score in entry["score"]]
    entry = annotations[REAL_IMAGE]
    want = reference_heat_map(entry["bbox"], entry["score"], 1024, 744, sum(all_scores) / len(all_scores))
    difference = np.abs(heat.astype(int) - want.astype(int))
    assert difference.max() <= 1 and (difference == 0).mean() > 0.999
    assert heat.min() == 0 and heat.max() == 255
    assert (out / "GAICD" / "display" / "297406.jpg").is_file()  # human-centric: a figure too
    assert not list((out / "GAICD" / "mask").glob(".*"))  # no temporary files left


def test_skips_finished_images_unless_overwrite(real_gaicd_sources, tmp_path):
    out = tmp_path / "heat"
    (path,) = generate_heatmaps("GAICD", real_gaicd_sources, str(out), images=["211958.jpg"])
    assert not (out / "GAICD" / "display" / "211958.jpg").exists()  # no person: no figure
    placeholder = np.zeros((2, 2), np.uint8)
    Image.fromarray(placeholder).save(path)
    generate_heatmaps("GAICD", real_gaicd_sources, str(out), images=["211958.jpg"])
    np.testing.assert_array_equal(np.asarray(Image.open(path)), placeholder)
    generate_heatmaps("GAICD", real_gaicd_sources, str(out), images=["211958.jpg"], overwrite=True)
    assert np.asarray(Image.open(path)).shape == (683, 1024)


def test_missing_images_are_listed_in_one_error(real_gaicd_sources, tmp_path):
    with pytest.raises(ValueError) as error:
        generate_heatmaps("GAICD", real_gaicd_sources, str(tmp_path), images=["235093.jpg", "nope.jpg"])
    assert "missing image 235093.jpg" in str(error.value)
    assert "nope.jpg: not in the crop annotation file" in str(error.value)


def test_command_line_with_process_pool(real_gaicd_cfg, tmp_path):
    # Only the three sample photos exist, so point the default paths at them via a data root
    # whose GAICD folder links the shared files.
    root = tmp_path / "root"
    gaicd = root / "GAICD"
    gaicd.mkdir(parents=True)
    os.symlink(real_gaicd_cfg.GAIC_image, gaicd / "images")
    annotations = json.loads(open(real_gaicd_cfg.GAIC_anno).read())
    sample = {name: annotations[name] for name in ("211958.jpg", "265813.jpg", REAL_IMAGE)}
    (gaicd / "image_crop.json").write_text(json.dumps(sample))
    (gaicd / "human_bboxes.json").write_text(json.dumps({REAL_IMAGE: [142, 488, 252, 676]}))
    paths = main(["--dataset", "GAICD", "--data-root", str(root), "--workers", "2", "--only-human"])
    assert paths == [str(root / "heat_map_gt" / "GAICD" / "mask" / "297406.png")]
    paths = main(["--data-root", str(root), "--out", str(tmp_path / "out"), "--limit", "2", "--workers", "2"])
    assert [os.path.basename(path) for path in paths] == ["211958.png", "265813.png"]
    assert all(os.path.isfile(path) for path in paths)


def test_real_gaicd_image_with_no_crop_above_the_mean_gets_the_release_all_zero_map():
    """238216.jpg: more than 10 crops, none above the dataset's mean score."""
    annotations = read_crop_annotations(str(require_shared("human_bboxes/GAICD/image_crop.json")), "bbox", "score")
    mean, _ = score_statistics(annotations)
    entry = annotations["238216.jpg"]
    assert len(entry.scores) > 10 and (entry.scores <= mean).all()
    width, height = int(entry.boxes[:, 2].max()), int(entry.boxes[:, 3].max())
    assert not crop_heat_map(entry.boxes, entry.scores, width, height, mean).any()
    fixed = crop_heat_map(entry.boxes, entry.scores, width, height, mean, fix_edge_cases=True)
    np.testing.assert_array_equal(fixed, reference_heat_map(entry.boxes, entry.scores, width, height, mean, True))
    assert fixed.max() == 255
