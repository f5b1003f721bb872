"""Personalized cropping from a person's own ratings (pic_model's interface for the web page): the
ranker of a prior or personal model, personalize_from_ratings' contract, and that a person's
consistent taste, rated by a hand-written rule, is followed on photos they did not rate.
"""

from __future__ import annotations

import csv
import json
import os
import shutil

import pytest
import torch
from PIL import Image

from pic_model import MIN_RATED_PHOTOS, load_pic_ranker, personalize_from_ratings
from untils.candidates import gaic_grid_candidates
from untils.demo_data import build_demo_dataset
from untils.pic_demo import demo_prior_checkpoint, demo_prior_commands
from untils.pic_format import RATINGS_CSV_COLUMNS

RATED_PHOTOS, HELD_OUT_PHOTOS, CROPS_PER_PHOTO = 8, 16, 12


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> tuple[str, dict, list[str], list[str]]:
    """Upright photos with people in one folder, their person boxes, the names to rate and the held-out ones."""
    root = tmp_path_factory.mktemp("photos")
    demo = build_demo_dataset(root / "source", num_train=RATED_PHOTOS, num_test=HELD_OUT_PHOTOS, seed=7, long_side=160)
    folder = root / "photos"
    folder.mkdir()
    for part in ("train", "test"):
        for name in demo[part]:
            shutil.copy(os.path.join(demo["path"], "images", part, name), folder / name)
    with open(os.path.join(demo["path"], "human_bboxes.json")) as stream:
        boxes = {name: tuple(box) for name, box in json.load(stream).items()}
    return str(folder), boxes, list(demo["train"]), list(demo["test"])


def right_of_centre_score(box, width: float) -> float:
    """The person's taste, a hand-written rule: the further right the crop's centre, the better (1..5)."""
    return round(1 + 4 * (box[0] + box[2]) / 2 / width, 2)


def rate(ranker, folder: str, boxes: dict, names: list[str], user: str = "me") -> list[list]:
    """Rows of the ratings CSV: ``CROPS_PER_PHOTO`` of the ranker's candidates of each photo, spread over
    its ranking, scored by :func:`right_of_centre_score`."""
    rows = []
    for name in names:
        with Image.open(os.path.join(folder, name)) as image:
            ranked = ranker.rank(image, boxes.get(name))
            width = image.size[0]
        step = len(ranked) // CROPS_PER_PHOTO
        for box, _ in ranked[::step][:CROPS_PER_PHOTO]:
            rows.append([user, name, *box, right_of_centre_score(box, width)])
    return rows


def write_csv(path, rows) -> str:
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(RATINGS_CSV_COLUMNS)
        writer.writerows(rows)
    return str(path)


@pytest.fixture(scope="module")
def ratings(demo_pic_prior, photos, tmp_path_factory) -> list[list]:
    folder, boxes, rated, _ = photos
    return rate(load_pic_ranker(demo_pic_prior), folder, boxes, rated)


def test_demo_prior_commands_run_the_pic_scripts_into_the_demo_folder(tmp_path):
    commands = demo_prior_commands(str(tmp_path), "python3")
    assert [os.path.basename(command[1]) for command in commands] == ["pretrain_PIC.py", "prior_PIC.py"]
    assert all(command[0] == "python3" and os.path.isfile(command[1]) for command in commands)
    assert all(command[command.index("--demo-dir") + 1] == str(tmp_path) for command in commands)
    assert demo_prior_checkpoint(str(tmp_path)) == os.path.join(str(tmp_path), "pic", "prior.pth")


def test_rank_gives_every_grid_candidate_best_first(demo_pic_prior, photos):
    folder, boxes, rated, _ = photos
    ranker = load_pic_ranker(demo_pic_prior)
    assert (ranker.kind, ranker.user) == ("prior", None)
    with Image.open(os.path.join(folder, rated[0])) as image:
        ranked = ranker.rank(image, boxes.get(rated[0]))
        expected = {tuple(float(v) for v in box) for box in gaic_grid_candidates(*image.size).long().tolist()}
    assert {box for box, _ in ranked} == expected and len(ranked) == len(expected)
    scores = [score for _, score in ranked]
    assert scores == sorted(scores, reverse=True)


def test_personal_model_is_written_atomically_and_ranks_as_its_user(demo_pic_prior, photos, ratings, tmp_path):
    folder, boxes, rated, _ = photos
    others = [["someone-else", "no-such-photo.jpg", 0, 0, 5, 5, 3.0]]  # other users' rows are ignored
    csv_path = write_csv(tmp_path / "ratings.csv", ratings + others)
    out = tmp_path / "models" / "me.pth"
    out.parent.mkdir()
    calls = []
    summary = personalize_from_ratings(
        demo_pic_prior,
        "me",
        csv_path,
        folder,
        str(out),
        human_boxes={name: boxes.get(name) for name in rated},
        progress=lambda fraction, message: calls.append((fraction, message)),
    )
    assert (summary["user"], summary["photos"], summary["ratings"]) == ("me", RATED_PHOTOS, len(ratings))
    assert summary["variant"] == "embedding" and summary["seconds"] > 0
    assert os.listdir(out.parent) == ["me.pth"]  # no temporary file left beside it
    fractions = [fraction for fraction, _ in calls]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    assert all(isinstance(message, str) and message for _, message in calls)
    personal = load_pic_ranker(str(out))
    assert (personal.kind, personal.user) == ("personal", "me")
    with Image.open(os.path.join(folder, rated[0])) as image:
        prior_boxes = {box for box, _ in load_pic_ranker(demo_pic_prior).rank(image, boxes.get(rated[0]))}
        assert {box for box, _ in personal.rank(image, boxes.get(rated[0]))} == prior_boxes


def _bad_inputs(rows: list[list], folder: str, tmp_path) -> dict[str, tuple[list[list], str]]:
    first = rows[0][1]
    outside = [row[:2] + [row[2], row[3], 10_000, row[5]] + row[6:] if row[1] == first else row for row in rows]
    few_photos = {row[1] for row in rows[: CROPS_PER_PHOTO * (MIN_RATED_PHOTOS - 1)]}
    return {
        "missing photo": ([[*row[:1], "gone.jpg", *row[2:]] if row[1] == first else row for row in rows], "gone.jpg"),
        "box outside the photo": (outside, first),
        "too few photos": ([row for row in rows if row[1] in few_photos], "ratings.csv"),
        "no rows of the user": ([["someone-else", *row[1:]] for row in rows], "ratings.csv"),
    }


def test_unusable_data_is_one_value_error_naming_it_and_leaves_the_previous_model(
    demo_pic_prior, photos, ratings, tmp_path
):
    folder, _, _, _ = photos
    out = tmp_path / "me.pth"
    out.write_bytes(b"the previous personal model")
    for case, (rows, named) in _bad_inputs(ratings, folder, tmp_path).items():
        csv_path = write_csv(tmp_path / "ratings.csv", rows)
        with pytest.raises(ValueError, match=named.replace(".", r"\.")) as raised:
            personalize_from_ratings(demo_pic_prior, "me", csv_path, folder, str(out))
        assert "\n" not in str(raised.value), case
        assert out.read_bytes() == b"the previous personal model", case
    not_a_prior = tmp_path / "weights.pth"
    torch.save({"model": {"w": torch.zeros(1)}}, not_a_prior)
    csv_path = write_csv(tmp_path / "ratings.csv", ratings)
    for prior, named in ((str(not_a_prior), "weights.pth"), (str(tmp_path / "absent.pth"), "absent.pth")):
        with pytest.raises(ValueError, match=named):
            personalize_from_ratings(prior, "me", csv_path, folder, str(out))
        with pytest.raises(ValueError, match=named):
            load_pic_ranker(prior)
    with pytest.raises(ValueError, match="absent.csv"):
        personalize_from_ratings(demo_pic_prior, "me", str(tmp_path / "absent.csv"), folder, str(out))
    assert out.read_bytes() == b"the previous personal model"
    assert sorted(os.listdir(tmp_path)) == ["me.pth", "ratings.csv", "weights.pth"]


def test_a_consistent_taste_is_followed_on_photos_not_rated(demo_pic_prior, photos, ratings, tmp_path):
    """Issue 26's done-when: a person rates crops of 8 photos preferring crops right of centre; on 16
    photos they did not rate, the personal model's top crop is right of centre clearly more often
    than the prior's (its generic score)."""
    folder, boxes, rated, held_out = photos
    csv_path = write_csv(tmp_path / "ratings.csv", ratings)
    out = str(tmp_path / "me.pth")
    personalize_from_ratings(demo_pic_prior, "me", csv_path, folder, out, human_boxes=boxes)
    follows = {}
    for label, ranker in (("prior", load_pic_ranker(demo_pic_prior)), ("personal", load_pic_ranker(out))):
        count = 0
        for name in held_out:
            with Image.open(os.path.join(folder, name)) as image:
                (x1, _, x2, _), _ = ranker.rank(image, boxes.get(name))[0]
                count += (x1 + x2) / 2 > image.size[0] / 2
        follows[label] = count
    print(f"\ntop crop right of centre on {len(held_out)} unrated photos: {follows}")
    assert follows["personal"] >= 14, follows
    assert follows["personal"] - follows["prior"] >= 6
