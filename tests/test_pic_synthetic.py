"""The generated PIC benchmark: taste rules on hand-computed cases, and the files it writes."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from PIL import Image

import config_PIC
from pic_dataset import load_pic_data
from untils.candidates import gaic_grid_candidates
from untils.pic_synthetic import (TASTE_GROUPS, Taste, build_pic_benchmark, departure_from_average, kept_share,
                                  read_tastes, subject_box, taste_score, taste_term)

# A 300x200 image, person [120, 50, 180, 200] (centre x = 150), crop [60, 20, 300, 200] (240x180):
# u = (150 - 60) / 240 = 0.375, gap = (50 - 20) / 180 = 1/6, fill = 150 / 180 = 5/6.
CROP, PERSON = (60, 20, 300, 200), (120, 50, 180, 200)


def test_taste_terms_by_hand():
    assert taste_term("centred", 0.5, CROP, PERSON) == pytest.approx(1 - 0.125 / 0.5)
    assert taste_term("thirds", 1 / 3, CROP, PERSON) == pytest.approx(1 - (0.375 - 1 / 3) * 6)
    assert taste_term("headroom", 0.25, CROP, PERSON) == pytest.approx(math.exp(-((1 / 6 - 0.25) / 0.08) ** 2))
    assert taste_term("tight", 0.9, CROP, PERSON) == pytest.approx(math.exp(-((5 / 6 - 0.9) / 0.12) ** 2))
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
@given(group=st.sampled_from(TASTE_GROUPS), x1=st.floats(0, 100), y1=st.floats(0, 60), w=st.floats(80, 200),
       h=st.floats(80, 140), person=st.booleans())
def test_every_taste_is_mirror_symmetric(group, x1, y1, w, h, person):
    width, height = 300.0, 200.0
    crop = (x1, y1, min(width, x1 + w), min(height, y1 + h))
    human = PERSON if person else None
    mirrored_crop = (width - crop[2], crop[1], width - crop[0], crop[3])
    mirrored_human = (width - PERSON[2], PERSON[1], width - PERSON[0], PERSON[3]) if person else None
    taste = Taste(group, {"centred": 0.5, "thirds": 0.33, "headroom": 0.27, "tight": 0.9}[group], 0.7, 0.1)
    assert taste_score(taste, crop, human, width, height) == pytest.approx(
        taste_score(taste, mirrored_crop, mirrored_human, width, height), abs=1e-9)


def test_groups_prefer_different_crops():
    crops = gaic_grid_candidates(320, 240).tolist()
    person = (140, 80, 200, 240)
    best = {}
    for group, target in (("centred", 0.5), ("thirds", 0.33), ("headroom", 0.3), ("tight", 0.95)):
        scores = [taste_score(Taste(group, target, 0.7, 0.0), crop, person, 320, 240) for crop in crops]
        best[group] = tuple(crops[int(np.argmax(scores))])
    assert len(set(best.values())) == 4, best


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("pic")
    summary = build_pic_benchmark(root, train_users_per_group=2, test_users_per_group=1, train_images=8,
                                  test_images=6, images_per_train_user=5, long_side=96, seed=5)
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
    assert {tastes[user].group for user in data.users} == set(TASTE_GROUPS)
    assert summary["groups"] == {user: taste.group for user, taste in tastes.items()}


def test_benchmark_scores_follow_the_users_tastes(generated):
    root, summary = generated
    data = load_pic_data(config_PIC.Config(data_root=str(root), pretrained=False))
    tastes = read_tastes(summary["path"])
    for user in data.users:
        errors = []
        for name, entry in data.annotations[user].items():
            width, height = data.image_sizes[name]
            human = data.human_boxes.get(name)
            expected = np.clip([taste_score(tastes[user], box, human, width, height) for box in entry.boxes], 1, 5)
            errors.append(entry.scores - expected)
        errors = np.concatenate(errors)
        assert abs(errors.mean()) < 0.1 and errors.std() < 2.5 * tastes[user].noise + 0.01, user


def test_benchmark_is_reproducible_and_departure_is_measured(generated, tmp_path):
    root, summary = generated
    again = build_pic_benchmark(tmp_path, train_users_per_group=2, test_users_per_group=1, train_images=8,
                                test_images=6, images_per_train_user=5, long_side=96, seed=5)
    for user in summary["train"] + summary["test"]:
        first = json.loads((Path(summary["path"]) / "annotations" / f"{user}.json").read_text())
        assert first == json.loads((Path(again["path"]) / "annotations" / f"{user}.json").read_text())
    with pytest.raises(FileExistsError):
        build_pic_benchmark(tmp_path)
    tastes = read_tastes(summary["path"])
    images = {"scene": (160, 120, None), "person": (160, 120, (60, 40, 100, 120))}
    departure = departure_from_average(tastes, summary["train"], summary["train"][:1] + summary["test"], images)
    assert all(0 <= value <= 2 for value in departure.values())
    same = departure_from_average(tastes, summary["train"][:1], summary["train"][:1], images)
    assert same[summary["train"][0]] == pytest.approx(0.0)
