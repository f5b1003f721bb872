"""The generated PIC benchmark: taste rules on hand-computed cases, and the files it writes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.colors import rgb_to_hsv
from PIL import Image
from scipy.stats import spearmanr

import config_PIC
from pic_dataset import load_pic_data
from untils.candidates import gaic_grid_candidates
from untils.pic_format import fixed_views
from untils.pic_synthetic import (
    CONTENT_GROUPS,
    GEOMETRY_GROUPS,
    TASTE_GROUPS,
    RatedImageInfo,
    Taste,
    build_pic_benchmark,
    departure_from_average,
    draw_second_object,
    image_content,
    kept_share,
    read_image_contents,
    read_tastes,
    region_mean,
    subject_box,
    taste_score,
    taste_term,
)

# A 300x200 image, person [120, 50, 180, 200] (centre x = 150), crop [60, 20, 300, 200] (240x180):
# u = (150 - 60) / 240 = 0.375, gap = (50 - 20) / 180 = 1/6, fill = 150 / 180 = 5/6.
CROP, PERSON = (60, 20, 300, 200), (120, 50, 180, 200)


def test_taste_terms_by_hand():
    assert taste_term("centred", 0.5, CROP, PERSON) == pytest.approx(1 - 0.125 / 0.5)
    assert taste_term("thirds", 1 / 3, CROP, PERSON) == pytest.approx(1 - (0.375 - 1 / 3) * 6)
    assert taste_term("headroom", 0.25, CROP, PERSON) == pytest.approx(math.exp(-(((1 / 6 - 0.25) / 0.08) ** 2)))
    assert taste_term("tight", 0.9, CROP, PERSON) == pytest.approx(math.exp(-(((5 / 6 - 0.9) / 0.12) ** 2)))
    # the person's centre on the crop's left edge: no centring, no third line
    assert taste_term("centred", 0.5, (150, 0, 300, 200), PERSON) == 0.0
    assert taste_term("thirds", 0.3, (150, 0, 300, 200), PERSON) == 0.0
    with pytest.raises(ValueError, match="unknown taste group"):
        taste_term("wide", 0.5, CROP, PERSON)


def test_scores_mix_kept_person_and_taste():
    taste = Taste("centred", 0.5, weight=0.7, noise=0.1)
    assert taste_score(taste, CROP, PERSON, 300, 200) == pytest.approx(1 + 4 * (0.3 * 1.0 + 0.7 * 0.75))
    # half of the person's box (x 120..150 of 120..180) is inside: kept = 0.5, u = 150/150 = 1
    assert kept_share((0, 0, 150, 200), PERSON) == pytest.approx(0.5)
    assert taste_score(taste, (0, 0, 150, 200), PERSON, 300, 200) == pytest.approx(1 + 4 * (0.3 * 0.25 + 0.7 * 0.0))
    # without a person the subject is the central third of the image
    assert subject_box(None, 300, 200) == (100, 200 / 3, 200, 400 / 3)
    assert subject_box([-1, -1, -1, -1], 300, 200) == subject_box(None, 300, 200)
    assert taste_score(taste, (50, 0, 250, 200), None, 300, 200) == pytest.approx(1 + 4 * (0.3 + 0.7))


@settings(max_examples=60, deadline=None)
@given(
    group=st.sampled_from(GEOMETRY_GROUPS),
    x1=st.floats(0, 100),
    y1=st.floats(0, 60),
    w=st.floats(80, 200),
    h=st.floats(80, 140),
    person=st.booleans(),
)
def test_every_taste_is_mirror_symmetric(group, x1, y1, w, h, person):
    width, height = 300.0, 200.0
    crop = (x1, y1, min(width, x1 + w), min(height, y1 + h))
    human = PERSON if person else None
    mirrored_crop = (width - crop[2], crop[1], width - crop[0], crop[3])
    mirrored_human = (width - PERSON[2], PERSON[1], width - PERSON[0], PERSON[3]) if person else None
    taste = Taste(group, {"centred": 0.5, "thirds": 0.33, "headroom": 0.27, "tight": 0.9}[group], 0.7, 0.1)
    assert taste_score(taste, crop, human, width, height) == pytest.approx(
        taste_score(taste, mirrored_crop, mirrored_human, width, height), abs=1e-9
    )


def test_groups_prefer_different_crops():
    crops = gaic_grid_candidates(320, 240).tolist()
    person = (140, 80, 200, 240)
    best = {}
    for group, target in (("centred", 0.5), ("thirds", 0.33), ("headroom", 0.3), ("tight", 0.95)):
        scores = [taste_score(Taste(group, target, 0.7, 0.0), crop, person, 320, 240) for crop in crops]
        best[group] = tuple(crops[int(np.argmax(scores))])
    assert len(set(best.values())) == 4, best


# ----- content tastes: pixels inside the crop, checked against direct numpy computations -------------


def _luma(pixels: np.ndarray) -> np.ndarray:
    rgb = pixels.astype(np.float64) / 255
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


def _saturation(pixels: np.ndarray) -> np.ndarray:
    return rgb_to_hsv(pixels.astype(np.float64) / 255)[..., 1]  # matplotlib's HSV, an independent reference


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


@pytest.fixture()
def halves() -> np.ndarray:
    """A 120x80 image: the left half bright and saturated orange, the right half dark grey, with noise."""
    rng = np.random.default_rng(3)
    pixels = np.empty((80, 120, 3), dtype=np.int64)
    pixels[:, :60] = (230, 150, 40)
    pixels[:, 60:] = (60, 60, 60)
    return np.clip(pixels + rng.integers(-10, 11, size=pixels.shape), 0, 255).astype(np.uint8)


def test_bright_and_colourful_read_the_pixels_inside_the_crop(halves):
    content = image_content(halves)
    left, right = (0, 0, 80, 80), (40, 0, 120, 80)
    for group, per_pixel in (("bright", _luma), ("colourful", _saturation)):
        values = per_pixel(halves)
        for crop in (left, right):
            x1, y1, x2, y2 = crop
            expected = _sigmoid((values[y1:y2, x1:x2].mean() - values.mean()) / 0.015)
            assert taste_term(group, 0.015, crop, (0, 0, 1, 1), content) == pytest.approx(expected, abs=1e-9)
        taste = Taste(group, 0.015, weight=0.7, noise=0.1)
        assert taste_score(taste, left, None, 120, 80, content) > taste_score(taste, right, None, 120, 80, content)
    # a geometry taste ignores the pixels: the same score with or without them
    geometry = Taste("centred", 0.5, 0.7, 0.1)
    assert taste_score(geometry, left, None, 120, 80, content) == taste_score(geometry, left, None, 120, 80)


def test_second_object_term_is_the_kept_share_over_the_users_need(halves):
    content = image_content(halves, object_box=(100, 20, 120, 40))  # 20x20 at the right edge
    assert taste_term("second_object", 0.9, (0, 0, 120, 80), (0, 0, 1, 1), content) == 1.0
    assert taste_term("second_object", 0.9, (0, 0, 110, 80), (0, 0, 1, 1), content) == pytest.approx(0.5 / 0.9)
    assert taste_term("second_object", 0.9, (0, 0, 100, 80), (0, 0, 1, 1), content) == 0.0
    taste = Taste("second_object", 0.9, 0.7, 0.1)
    assert taste_score(taste, (10, 0, 120, 80), None, 120, 80, content) > taste_score(
        taste, (0, 0, 110, 80), None, 120, 80, content
    )
    with pytest.raises(ValueError, match="second object"):
        taste_term("second_object", 0.9, (0, 0, 110, 80), (0, 0, 1, 1), image_content(halves))
    for group in CONTENT_GROUPS:
        with pytest.raises(ValueError, match="ImageContent"):
            taste_score(Taste(group, 0.9, 0.7, 0.1), (0, 0, 110, 80), None, 120, 80)


@settings(max_examples=40, deadline=None)
@given(x1=st.integers(0, 50), y1=st.integers(0, 30), w=st.integers(1, 70), h=st.integers(1, 50))
def test_region_mean_is_the_plain_mean_of_the_pixels(x1, y1, w, h):
    pixels = np.random.default_rng(x1 * 1000 + y1).integers(0, 256, size=(80, 120, 3)).astype(np.uint8)
    content = image_content(pixels)
    box = (x1, y1, min(120, x1 + w), min(80, y1 + h))
    assert region_mean(content.luma_table, box) == pytest.approx(
        _luma(pixels)[box[1] : box[3], box[0] : box[2]].mean(), abs=1e-9
    )
    assert region_mean(content.saturation_table, box) == pytest.approx(
        _saturation(pixels)[box[1] : box[3], box[0] : box[2]].mean(), abs=1e-9
    )


@settings(max_examples=30, deadline=None)
@given(
    group=st.sampled_from(CONTENT_GROUPS),
    x1=st.integers(0, 40),
    y1=st.integers(0, 20),
    w=st.integers(60, 120),
    h=st.integers(50, 80),
)
def test_content_tastes_are_mirror_symmetric(group, x1, y1, w, h):
    pixels = np.random.default_rng(x1 + 100 * y1).integers(0, 256, size=(80, 120, 3)).astype(np.uint8)
    crop = (x1, y1, min(120, x1 + w), min(80, y1 + h))
    taste = Taste(group, 0.9 if group == "second_object" else 0.015, 0.7, 0.1)
    content = image_content(pixels, (5, 30, 25, 50))
    mirrored = image_content(np.ascontiguousarray(pixels[:, ::-1]), (95, 30, 115, 50))
    person, mirrored_person = (70, 20, 100, 80), (20, 20, 50, 80)
    assert taste_score(taste, crop, person, 120, 80, content) == pytest.approx(
        taste_score(taste, (120 - crop[2], crop[1], 120 - crop[0], crop[3]), mirrored_person, 120, 80, mirrored),
        abs=1e-9,
    )


def test_second_object_is_drawn_inside_its_box_away_from_the_person():
    background = Image.new("RGB", (160, 120), (128, 128, 128))
    for person, left_side in (((100, 20, 150, 120), True), ((10, 20, 60, 120), False)):
        image = background.copy()
        box = draw_second_object(image, person, np.random.default_rng(1))
        changed = np.argwhere(np.any(np.asarray(image) != np.asarray(background), axis=2))
        ys, xs = changed[:, 0], changed[:, 1]
        assert len(changed) > 0.5 * (box[2] - box[0]) * (box[3] - box[1])  # an ellipse fills ~78% of its box
        assert xs.min() >= box[0] and xs.max() < box[2] and ys.min() >= box[1] and ys.max() < box[3]
        centre = (box[0] + box[2]) / 2
        assert (centre < 80) == left_side


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("pic")
    summary = build_pic_benchmark(
        root,
        train_users_per_group=2,
        test_users_per_group=1,
        train_images=8,
        test_images=6,
        images_per_train_user=5,
        long_side=96,
        seed=5,
    )
    return root, summary


@pytest.fixture(scope="module")
def generated_fixed(tmp_path_factory):
    root = tmp_path_factory.mktemp("pic-fixed")
    summary = build_pic_benchmark(
        root,
        train_users_per_group=1,
        test_users_per_group=1,
        train_images=8,
        test_images=6,
        images_per_train_user=5,
        long_side=96,
        seed=2,
        candidates="fixed",
        groups=TASTE_GROUPS,
    )
    return root, summary


def test_benchmark_is_a_valid_pic_folder(generated):
    root, summary = generated
    data = load_pic_data(config_PIC.Config(data_root=str(root), pretrained=False))
    assert data.train_users == summary["train"] and data.test_users == summary["test"]
    assert len(data.train_users) == 8 and len(data.test_users) == 4
    train_images = {name for user in data.train_users for name in data.images_of(user)}
    test_images = {name for user in data.test_users for name in data.images_of(user)}
    assert not train_images & test_images and len(test_images) == 6
    assert all(len(data.images_of(user)) == 5 for user in data.train_users)
    assert all(set(data.images_of(user)) == test_images for user in data.test_users)
    for user in data.users:
        for name, entry in data.annotations[user].items():
            width, height = Image.open(Path(data.image_dir) / name).size
            np.testing.assert_array_equal(entry.boxes, gaic_grid_candidates(width, height).numpy())
            assert entry.scores.min() >= 1 and entry.scores.max() <= 5
    tastes = read_tastes(summary["path"])
    assert {tastes[user].group for user in data.users} == set(GEOMETRY_GROUPS)  # the default groups
    assert summary["groups"] == {user: taste.group for user, taste in tastes.items()}


def _check_scores_follow_tastes(root, summary):
    data = load_pic_data(config_PIC.Config(data_root=str(root), pretrained=False))
    tastes = read_tastes(summary["path"])
    contents = read_image_contents(summary["path"], sorted(data.image_sizes))
    for user in data.users:
        errors = []
        for name, entry in data.annotations[user].items():
            width, height = data.image_sizes[name]
            human = data.human_boxes.get(name)
            expected = np.clip(
                [taste_score(tastes[user], box, human, width, height, contents[name]) for box in entry.boxes], 1, 5
            )
            errors.append(entry.scores - expected)
        errors = np.concatenate(errors)
        assert abs(errors.mean()) < 0.1 and errors.std() < 2.5 * tastes[user].noise + 0.01, user
    return data


def test_benchmark_scores_follow_the_users_tastes(generated):
    _check_scores_follow_tastes(*generated)


def test_fixed_view_benchmark_with_content_tastes(generated_fixed):
    root, summary = generated_fixed
    data = _check_scores_follow_tastes(root, summary)
    assert {summary["groups"][user] for user in data.users} == set(TASTE_GROUPS)
    objects = json.loads((Path(summary["path"]) / "objects.json").read_text())
    assert set(objects) == set(data.image_sizes)
    for user in data.users:
        for name, entry in data.annotations[user].items():
            np.testing.assert_array_equal(entry.boxes, np.asarray(fixed_views(*data.image_sizes[name])))
    # the drawn object is in the written image: its box is more saturated than the image on average
    for name, box in objects.items():
        pixels = np.asarray(Image.open(Path(data.image_dir) / name).convert("RGB"))
        x1, y1, x2, y2 = box
        inner = pixels[y1 + (y2 - y1) // 3 : y2 - (y2 - y1) // 3, x1 + (x2 - x1) // 3 : x2 - (x2 - x1) // 3]
        assert _saturation(inner).mean() > 0.6, name
    with pytest.raises(ValueError, match="groups"):
        build_pic_benchmark(root / "other", groups=("bright", "sepia"))


def test_benchmark_is_reproducible_and_departure_is_measured(generated, generated_fixed, tmp_path):
    root, summary = generated
    again = build_pic_benchmark(
        tmp_path,
        train_users_per_group=2,
        test_users_per_group=1,
        train_images=8,
        test_images=6,
        images_per_train_user=5,
        long_side=96,
        seed=5,
    )
    for user in summary["train"] + summary["test"]:
        first = json.loads((Path(summary["path"]) / "annotations" / f"{user}.json").read_text())
        assert first == json.loads((Path(again["path"]) / "annotations" / f"{user}.json").read_text())
    with pytest.raises(FileExistsError):
        build_pic_benchmark(tmp_path)
    tastes = read_tastes(summary["path"])
    images = {"scene": RatedImageInfo(160, 120, None), "person": RatedImageInfo(160, 120, (60, 40, 100, 120))}
    departure = departure_from_average(tastes, summary["train"], summary["train"][:1] + summary["test"], images)
    assert all(0 <= value <= 2 for value in departure.values())
    same = departure_from_average(tastes, summary["train"][:1], summary["train"][:1], images)
    assert same[summary["train"][0]] == pytest.approx(0.0)
    # with content tastes: a user's departure from a population of one is 1 - SRCC of the two users' scores
    _, fixed = generated_fixed
    tastes = read_tastes(fixed["path"])
    name = sorted(json.loads((Path(fixed["path"]) / "objects.json").read_text()))[0]
    content = read_image_contents(fixed["path"], [name])[name]
    width, height = Image.open(Path(fixed["path"]) / "images" / name).size
    bright, keeper = "bright-00", "second_object-00"
    views = fixed_views(width, height)
    scores = {
        user: np.array([taste_score(tastes[user], view, None, width, height, content) for view in views])
        for user in (bright, keeper)
    }
    measured = departure_from_average(
        tastes, [keeper], [bright], {name: RatedImageInfo(width, height, None, content)}, candidates="fixed"
    )
    assert measured[bright] == pytest.approx(1 - spearmanr(scores[bright], scores[keeper]).statistic, abs=1e-9)
