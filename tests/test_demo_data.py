"""The generated demo dataset: GAICD's layout and formats, determinism, and the scoring rule."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import config_GAICD
from tests.conftest import require_shared
from untils.candidates import gaic_grid_candidates
from untils.demo_data import build_demo_dataset, composition_score
from untils.metrics import spearman

JSON_FILES = ("image_crop.json", "human_bboxes.json", "original_data_split.json", "human_data_split.json")


def _shape_of(value):
    """A JSON value's structure: dict keys (names of images collapsed), list item shapes, leaf types."""
    if isinstance(value, dict):
        keys = set(value)
        if all(key.endswith(".jpg") for key in keys):
            return ("images", {_shape_of(item) for item in value.values()})
        return ("dict", tuple(sorted((key, _shape_of(item)) for key, item in value.items())))
    if isinstance(value, list):
        return ("list", frozenset(_shape_of(item) for item in value))
    return type(value).__name__


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("demo")
    summary = build_demo_dataset(root, num_train=10, num_test=5, seed=3, long_side=200)
    gaicd = Path(summary["path"])
    loaded = {name: json.loads((gaicd / name).read_text()) for name in JSON_FILES}
    return {"root": root, "summary": summary, "gaicd": gaicd, **loaded}


def test_json_formats_match_the_real_gaicd_files(demo):
    real_folder = require_shared("human_bboxes/GAICD")
    for name in JSON_FILES:
        real = json.loads((real_folder / name).read_text())
        assert _shape_of(demo[name]) == _shape_of(real), name


def test_layout_is_found_by_the_gaicd_config(demo):
    cfg = config_GAICD.Config(data_root=str(demo["root"]))
    for path in (cfg.GAIC_anno, cfg.GAIC_human, cfg.GAIC_split, cfg.GAIC_human_split):
        assert Path(path).is_file()
    split = demo["original_data_split.json"]
    for subset in ("train", "test"):
        on_disk = sorted(p.name for p in (Path(cfg.GAIC_image) / subset).glob("*.jpg"))
        assert on_disk == sorted(split[subset])
    assert len(split["train"]) == 10 and len(split["test"]) == 5
    assert set(demo["image_crop.json"]) == set(split["train"]) | set(split["test"])


def test_splits_and_person_boxes(demo):
    split, human_split = demo["original_data_split.json"], demo["human_data_split.json"]
    humans = demo["human_bboxes.json"]
    assert not set(split["train"]) & set(split["test"])
    for subset in ("train", "test"):
        assert human_split[subset] == [name for name in split[subset] if name in humans]
        assert 0 < len(human_split[subset]) < len(split[subset])  # people, and images without one
    for name, (x1, y1, x2, y2) in humans.items():
        subset = "train" if name in split["train"] else "test"
        width, height = Image.open(demo["gaicd"] / "images" / subset / name).size
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height, name


def test_crops_are_the_grid_inside_the_image_and_scores_sorted(demo):
    split = demo["original_data_split.json"]
    for subset in ("train", "test"):
        for name in split[subset]:
            record = demo["image_crop.json"][name]
            width, height = Image.open(demo["gaicd"] / "images" / subset / name).size
            boxes, scores = record["bbox"], record["score"]
            assert len(boxes) == len(scores) <= 90
            assert {tuple(b) for b in boxes} == {tuple(b) for b in gaic_grid_candidates(width, height).int().tolist()}
            for x1, y1, x2, y2 in boxes:
                assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
            assert scores == sorted(scores, reverse=True)
            assert all(1.0 <= s <= 5.0 and round(s, 2) == s for s in scores)
            # The noise is small: the stored order follows the noiseless rule.
            rule = [composition_score(box, demo["human_bboxes.json"].get(name), width, height) for box in boxes]
            assert spearman(np.array(scores), np.array(rule)) > 0.9, name


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    def build(folder: str, seed: int) -> dict[str, bytes]:
        gaicd = Path(build_demo_dataset(tmp_path / folder, num_train=5, num_test=2, seed=seed, long_side=120)["path"])
        return {str(p.relative_to(gaicd)): p.read_bytes() for p in sorted(gaicd.rglob("*")) if p.is_file()}

    first, again, other = build("a", 7), build("b", 7), build("c", 8)
    assert first == again
    assert first.keys() == other.keys() and first != other


def test_existing_folder_needs_overwrite(tmp_path):
    build_demo_dataset(tmp_path, num_train=4, num_test=2, long_side=96)
    with pytest.raises(FileExistsError, match="overwrite"):
        build_demo_dataset(tmp_path, num_train=4, num_test=2, long_side=96)
    build_demo_dataset(tmp_path, num_train=4, num_test=2, long_side=96, overwrite=True)
    with pytest.raises(ValueError, match="num_train"):
        build_demo_dataset(tmp_path / "other", num_train=2)


def test_rule_without_a_person_hand_computed():
    assert composition_score([0, 0, 100, 100], None, 100, 100) == pytest.approx(5.0)
    # Half the image (size term 0), centre 25 px from the image centre, half-diagonal 50*sqrt(2).
    expected = 1 + 4 * 0.5 * (1 - 25 / (50 * math.sqrt(2)))
    assert composition_score([0, 0, 50, 100], None, 100, 100) == pytest.approx(expected)
    assert composition_score([0, 0, 50, 100], [-1, -1, -1, -1], 100, 100) == pytest.approx(expected)


def test_rule_with_a_person_hand_computed():
    person = [100, 20, 140, 180]  # centre x = 120 in a 300 x 200 image
    # Whole image: person kept; centre at 0.4 of the width, 1/15 from the third line -> placement 0.6;
    # gap 20 / 200 = 0.1 -> headroom exp(-(0.02 / 0.12)^2); size 1.
    headroom = math.exp(-((0.02 / 0.12) ** 2))
    assert composition_score([0, 0, 300, 200], person, 300, 200) == pytest.approx(
        1 + 4 * (0.5 + 0.25 * 0.6 + 0.15 * headroom + 0.1)
    )
    # Cut through the person's middle: half kept (0.5 * 0.25), centre on the crop's edge -> placement 0,
    # same headroom, 40% of the image -> size 0.
    assert composition_score([0, 0, 120, 200], person, 300, 200) == pytest.approx(
        1 + 4 * (0.5 * 0.25 + 0.15 * headroom)
    )
    # A crop that keeps the person beats one that cuts it, all else similar.
    assert composition_score([40, 0, 240, 200], person, 300, 200) > composition_score(
        [130, 0, 300, 200], person, 300, 200
    )


def test_rule_rejects_empty_boxes():
    with pytest.raises(ValueError, match="crop"):
        composition_score([10, 10, 10, 20], None, 100, 100)
    with pytest.raises(ValueError, match="human box"):
        composition_score([0, 0, 50, 50], [5, 5, 5, 9], 100, 100)
