"""PIC per-user data: loader and its checks, union of crops, splits, datasets, the converters and their
command line (convert_PIC_data.py)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import config_PIC
import convert_PIC_data
from convert_PIC_data import convert_ratings_csv, split_users, write_release_layout
from cropping_dataset import DatasetError
from pic_dataset import PICDataset, PICImageDataset, load_pic_data, split_user_images, union_crops
from untils.atomic import write_folder_atomic
from untils.cli import run_script
from untils.pic_checks import best_crop_indices
from untils.pic_format import RATINGS_CSV_COLUMNS
from untils.training import held_out_images

SIZES = {"a.jpg": (200, 100), "b.jpg": (120, 160), "c.jpg": (160, 160)}


def grid_crops(width: int, height: int, count: int = 12) -> list[list[int]]:
    """``count`` distinct crops inside the image, computed independently of the code under test."""
    return [[i, i, width - 2 * i, height - i] for i in range(count)]


def write_folder(
    root: Path, ratings: dict, train: list, test: list, human: dict | None = None, sizes: dict = SIZES
) -> config_PIC.Config:
    pic = root / "PIC"
    (pic / "images").mkdir(parents=True, exist_ok=True)
    (pic / "annotations").mkdir(exist_ok=True)
    for name, size in sizes.items():
        Image.new("RGB", size, (90, 120, 150)).save(pic / "images" / name)
    (pic / "users.json").write_text(json.dumps({"train": train, "test": test}))
    for user, entries in ratings.items():
        (pic / "annotations" / f"{user}.json").write_text(json.dumps(entries))
    if human is not None:
        (pic / "human_bboxes.json").write_text(json.dumps(human))
    return config_PIC.Config(data_root=str(root), pretrained=False)


def rating(name: str, scores: list[float] | None = None) -> dict:
    boxes = grid_crops(*SIZES[name])
    descending = [float(len(boxes) - i) for i in range(len(boxes))]
    return {"bbox": boxes, "score": descending if scores is None else scores}


@pytest.fixture
def small(tmp_path: Path) -> config_PIC.Config:
    ratings = {
        "ann": {"a.jpg": rating("a.jpg"), "b.jpg": rating("b.jpg")},
        "bob": {"a.jpg": rating("a.jpg", [float(i % 5) for i in range(12)]), "c.jpg": rating("c.jpg")},
        "cyd": {"b.jpg": rating("b.jpg"), "c.jpg": rating("c.jpg")},
    }
    return write_folder(tmp_path, ratings, ["ann", "bob"], ["cyd"], {"a.jpg": [50, 10, 90, 100]})


def test_loads_users_ratings_and_person_boxes(small):
    data = load_pic_data(small)
    assert data.train_users == ["ann", "bob"] and data.test_users == ["cyd"]
    assert data.images_of("bob") == ["a.jpg", "c.jpg"]
    np.testing.assert_array_equal(data.annotations["ann"]["b.jpg"].boxes, np.array(grid_crops(120, 160), float))
    np.testing.assert_array_equal(data.annotations["bob"]["a.jpg"].scores, [i % 5 for i in range(12)])
    np.testing.assert_array_equal(data.human_boxes["a.jpg"], [50, 10, 90, 100])
    assert data.image_sizes == SIZES


def test_every_problem_is_reported_at_once_naming_user_and_image(tmp_path):
    few = {"bbox": grid_crops(200, 100, 4), "score": [1, 2, 3, 4]}
    outside = rating("b.jpg")
    outside["bbox"][3] = [0, 0, 300, 160]
    duplicated = rating("c.jpg")
    duplicated["bbox"][5] = duplicated["bbox"][4]
    ratings = {
        "ann": {"a.jpg": few, "b.jpg": outside},
        "bob": {"missing.jpg": rating("a.jpg"), "c.jpg": duplicated},
        "eve": {"a.jpg": {"bbox": [[0, 0, 10, 10]]}},
    }
    cfg = write_folder(tmp_path, ratings, ["ann", "bob", "bad id!", "eve"], ["ann", "nofile"])
    with pytest.raises(DatasetError) as error:
        load_pic_data(cfg)
    message = str(error.value)
    for expected in (
        "user ann, image a.jpg: 4 crops, at least 10",
        "user ann, image b.jpg: crop box 3",
        "user bob, image missing.jpg: image",
        "missing.jpg is missing or unreadable",
        "user bob, image c.jpg: crop boxes 4, 5: the same crop",
        "'bad id!'",
        "user 'ann' is listed twice",
        "user nofile",
        "user eve",
    ):
        assert expected in message, expected


def test_missing_folder_and_malformed_users_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="PIC folder not found"):
        load_pic_data(config_PIC.Config(data_root=str(tmp_path / "nowhere"), pretrained=False))
    cfg = write_folder(tmp_path, {}, [], [])
    Path(cfg.PIC_users).write_text(json.dumps(["ann"]))
    with pytest.raises(DatasetError, match="must hold"):
        load_pic_data(cfg)


def test_crops_slightly_outside_are_clipped_with_a_warning(tmp_path):
    entry = rating("a.jpg")
    entry["bbox"][0] = [-2, 0, 200, 101]
    cfg = write_folder(tmp_path, {"ann": {"a.jpg": entry}}, ["ann"], [])
    with pytest.warns(UserWarning, match="clipped"):
        data = load_pic_data(cfg)
    np.testing.assert_array_equal(data.annotations["ann"]["a.jpg"].boxes[0], [0, 0, 200, 100])


def test_union_of_crops_averages_the_users_who_rated_each(small):
    data = load_pic_data(small)
    ann = data.annotations["ann"]["a.jpg"]
    data.annotations["bob"]["a.jpg"].boxes = np.concatenate([ann.boxes[:11], [[1, 2, 50, 60]]])
    annotations, index = union_crops(data, ["ann", "bob"])
    union = annotations["a.jpg"]
    assert len(union.boxes) == 13
    np.testing.assert_array_equal(index[("ann", "a.jpg")], np.arange(12))
    np.testing.assert_array_equal(index[("bob", "a.jpg")], list(range(11)) + [12])
    expected = [(12 - i + i % 5) / 2 for i in range(11)] + [12 - 11, 11 % 5]
    np.testing.assert_allclose(union.scores, expected)
    np.testing.assert_array_equal(union.boxes[12], [1, 2, 50, 60])
    assert set(annotations) == {"a.jpg", "b.jpg", "c.jpg"}


def test_best_crops_break_ties_by_listing_order():
    np.testing.assert_array_equal(best_crop_indices(np.array([1.0, 3.0, 2.0, 3.0, 0.5]), 3), [1, 3, 2])


def test_user_split_is_fixed_nested_and_disjoint():
    names = [f"img{i:02d}.jpg" for i in range(30)]
    five = split_user_images("ann", names, 5, 10, 0.5, seed=0)
    ten = split_user_images("ann", list(reversed(names)), 10, 10, 0.5, seed=0)
    assert len(five.test) == 15 and five.test == ten.test
    assert set(five.support) < set(ten.support) and len(five.val) == 10 and len(ten.val) == 5
    assert not set(five.support) & set(five.val) and not (set(five.support) | set(five.val)) & set(five.test)
    assert split_user_images("bob", names, 5, 10, 0.5, seed=0).test != five.test
    with pytest.raises(ValueError, match="user 'ann' has 30 images: 15 are held out"):
        split_user_images("ann", names, 15, 10, 0.5, seed=0)


def test_held_out_images_and_user_split():
    names = [f"{i}.jpg" for i in range(20)]
    val = held_out_images(names, 0.1, seed=3)
    assert len(val) == 2 and set(val) <= set(names) and val == held_out_images(names[::-1], 0.1, seed=3)
    train, test = split_users([f"u{i}" for i in range(10)], 0.2, seed=1)
    assert len(test) == 2 and sorted(train + test) == sorted(f"u{i}" for i in range(10))
    assert split_users(["a", "b"], 0.1, seed=0)[1] != []  # at least one test user


def test_datasets_give_cropping_items_with_the_user(small):
    cfg = config_PIC.Config(data_root=small.data_root, pretrained=False, image_size=(64, 64), keep_aspect_ratio=False)
    data = load_pic_data(cfg)
    pairs = PICDataset(cfg, data, ["bob", "ann"], names={"bob": ["c.jpg"], "ann": ["a.jpg", "b.jpg"]})
    assert pairs.names == ["c.jpg", "a.jpg", "b.jpg"] and pairs.users == ["bob", "ann", "ann"]
    item = pairs[1]
    assert item["user"] == "ann" and item["name"] == "a.jpg" and tuple(item["image"].shape) == (3, 64, 64)
    # the person box and the crops are scaled to the 64x64 input (x by 64/200, y by 64/100)
    torch.testing.assert_close(item["human_box"], torch.tensor([[16.0, 6.0, 29.0, 64.0]]))
    assert item["crop_box"][3].tolist() == [0.0, 1.0, 63.0, 63.0]  # [3, 3, 194, 97]: x1, y1 floored, x2, y2 ceiled
    assert pairs.resized_size_of(2) == (64, 64)
    torch.testing.assert_close(item["score"], torch.arange(12, 0, -1, dtype=torch.float32))
    images = PICImageDataset(cfg, data, ["ann", "bob"])
    assert images.names == ["a.jpg", "b.jpg", "c.jpg"]
    assert "user" not in images[0]
    with pytest.raises(DatasetError, match="has not rated"):
        PICDataset(cfg, data, ["cyd"], names={"cyd": ["a.jpg"]})


def write_csv(path: Path, rows: list[dict], columns=RATINGS_CSV_COLUMNS) -> None:
    with open(path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)


def test_converter_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for user in ("A1X", "B_2", "c-3", "d.4"):
        for name in ("a.jpg", "c.jpg"):
            for x1, y1, x2, y2 in grid_crops(*SIZES[name]):
                rows.append(
                    {
                        "annotator": user,
                        "image": name,
                        "x1": x1,
                        "y1": y1,
                        "x2": x2,
                        "y2": y2,
                        "score": int(rng.integers(0, 5)),
                    }
                )
    source = tmp_path / "photos"
    source.mkdir()
    for name in ("a.jpg", "c.jpg"):
        Image.new("RGB", SIZES[name], (1, 2, 3)).save(source / name)
    write_csv(tmp_path / "ratings.csv", rows)
    summary = convert_ratings_csv(
        str(tmp_path / "ratings.csv"), str(tmp_path / "out"), image_dir=str(source), test_fraction=0.25, seed=4
    )
    assert len(summary["test"]) == 1 and len(summary["train"]) == 3
    data = load_pic_data(config_PIC.Config(data_root=str(tmp_path / "out"), pretrained=False))
    back = {
        (user, name, *map(float, box), float(score))
        for user in data.users
        for name, entry in data.annotations[user].items()
        for box, score in zip(entry.boxes, entry.scores, strict=True)
    }
    original = {
        (r["annotator"], r["image"], float(r["x1"]), float(r["y1"]), float(r["x2"]), float(r["y2"]), float(r["score"]))
        for r in rows
    }
    assert back == original
    again = convert_ratings_csv(
        str(tmp_path / "ratings.csv"), str(tmp_path / "out"), test_fraction=0.25, seed=4, overwrite=True
    )
    assert again["test"] == summary["test"]
    with pytest.raises(FileExistsError):
        convert_ratings_csv(str(tmp_path / "ratings.csv"), str(tmp_path / "out"))


def test_converter_reports_bad_rows_with_line_numbers(tmp_path):
    good = {"annotator": "ann", "image": "a.jpg", "x1": 0, "y1": 0, "x2": 10, "y2": 10, "score": 1}
    rows = [good, {**good, "score": "high"}, {**good, "annotator": "a b"}, good]
    write_csv(tmp_path / "bad.csv", rows)
    with pytest.raises(DatasetError) as error:
        convert_ratings_csv(str(tmp_path / "bad.csv"), str(tmp_path / "out"))
    message = str(error.value)
    assert "line 3: x1, y1, x2, y2 and score must be numbers" in message
    assert "line 4: annotator 'a b'" in message
    assert (
        "lines 2, 5: annotator ann: image a.jpg: the same crop [0.0, 0.0, 10.0, 10.0] is listed more than once"
        in message
    )
    write_csv(tmp_path / "columns.csv", [{"annotator": "ann", "image": "a.jpg"}], columns=("annotator", "image"))
    with pytest.raises(DatasetError, match=r"lacks column\(s\) \['x1'"):
        convert_ratings_csv(str(tmp_path / "columns.csv"), str(tmp_path / "out"))
    write_csv(tmp_path / "ok.csv", [good])
    with pytest.raises(DatasetError, match="a.jpg is missing or unreadable"):
        convert_ratings_csv(str(tmp_path / "ok.csv"), str(tmp_path / "out"), image_dir=str(tmp_path))


# ----------------------------------------------------------------------------------------------
# convert_PIC_data.py: the three subcommands end to end
# ----------------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
MANY = {f"p{i}.jpg": (96 + 8 * i, 80) for i in range(6)}


def precise_ratings(seed: int) -> dict:
    """Our layout's ratings of two training users and a test user, with scores of many digits (the
    release's CSVs must keep every one) and whole-pixel boxes (the release reads them with int())."""
    rng = np.random.default_rng(seed)

    def entry(name: str) -> dict:
        boxes = [[x1 + 1, y1, x2, y2 - 3] for x1, y1, x2, y2 in grid_crops(*MANY[name])]
        return {"bbox": boxes, "score": [float(v) for v in rng.uniform(1, 5, len(boxes))]}

    names = sorted(MANY)
    return {
        "ann": {n: entry(n) for n in names[:4]},
        "bob": {n: entry(n) for n in names[2:]},
        "cyd": {n: entry(n) for n in names},
    }


def read_release_csv(path: Path) -> dict:
    """A release CSV read here with the csv and json modules: {image: {"bbox", "score"}}, file order."""
    ratings: dict = {}
    with open(path, newline="") as stream:
        for row in csv.DictReader(stream):
            entry = ratings.setdefault(row["name"], {"bbox": [], "score": []})
            entry["bbox"].append(json.loads(row["bbox"]))
            entry["score"].append(float(row["score"]))
    return ratings


def run_command(argv: list, capsys) -> tuple[int, str, str]:
    """The command line as ``python convert_PIC_data.py`` runs it (run_script), in this process."""
    status = run_script(convert_PIC_data.main, [str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_ratings_command_writes_our_layout(tmp_path):
    rng = np.random.default_rng(1)
    rows = [
        {
            "annotator": user,
            "image": name,
            "x1": x1,
            "y1": y1,
            "x2": x2,
            "y2": y2,
            "score": round(float(rng.uniform(0, 5)), 6),
        }
        for user in ("A1X", "B_2", "c-3", "d.4")
        for name in ("a.jpg", "c.jpg")
        for x1, y1, x2, y2 in grid_crops(*SIZES[name])
    ]
    write_csv(tmp_path / "ratings.csv", rows)
    (tmp_path / "photos").mkdir()
    for name in ("a.jpg", "c.jpg"):
        Image.new("RGB", SIZES[name], (1, 2, 3)).save(tmp_path / "photos" / name)
    result = subprocess.run(
        [
            sys.executable,
            "convert_PIC_data.py",
            "ratings",
            str(tmp_path / "ratings.csv"),
            "--out",
            str(tmp_path / "out"),
            "--images",
            str(tmp_path / "photos"),
            "--test-fraction",
            "0.25",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    pic = tmp_path / "out" / "PIC"
    assert result.stdout.strip() == f"wrote {pic}: 3 training users, 1 test users"
    users = json.loads((pic / "users.json").read_text())
    assert len(users["train"]) == 3 and len(users["test"]) == 1
    assert sorted(users["train"] + users["test"]) == ["A1X", "B_2", "c-3", "d.4"]
    written = set()
    for user in users["train"] + users["test"]:
        for name, entry in json.loads((pic / "annotations" / f"{user}.json").read_text()).items():
            assert entry["score"] == sorted(entry["score"], reverse=True)  # best first
            written |= {(user, name, *box, score) for box, score in zip(entry["bbox"], entry["score"], strict=True)}
    assert written == {(r["annotator"], r["image"], r["x1"], r["y1"], r["x2"], r["y2"], r["score"]) for r in rows}
    assert sorted(os.listdir(pic / "images")) == ["a.jpg", "c.jpg"]


def test_to_release_and_back_keeps_the_ratings(tmp_path, capsys):
    source = precise_ratings(0)
    write_folder(tmp_path / "ours", source, ["ann", "bob"], ["cyd"], sizes=MANY)
    release = tmp_path / "release"
    status, out, err = run_command(
        [
            "to-release",
            tmp_path / "ours",
            "--out",
            release,
            "--shots",
            "2",
            "1",
            "--val-fraction",
            "0.25",
            "--test-fraction",
            "0.5",
            "--seed",
            "3",
        ],
        capsys,
    )
    assert status == 0, err
    assert out.strip() == f"wrote {release}: 2 training users, 1 test users with 1, 2-shot splits"
    assert sorted(os.listdir(release / "images")) == sorted(MANY)
    for user in ("ann", "bob"):  # both files together hold exactly the user's ratings; 1 of 4 images held out
        train = read_release_csv(release / "prior" / f"{user}_train.csv")
        val = read_release_csv(release / "prior" / f"{user}_val.csv")
        assert len(val) == 1 and not train.keys() & val.keys() and {**train, **val} == source[user]
        assert sorted(os.listdir(release / "pretrain" / user)) == sorted(train)
    support = {n: read_release_csv(release / "finetune" / str(n) / "train" / "cyd_train.csv") for n in (1, 2)}
    test = {n: read_release_csv(release / "finetune" / str(n) / "val" / "cyd_val.csv") for n in (1, 2)}
    assert test[1] == test[2] and len(test[1]) == 3  # the same held-out half for every N
    assert len(support[1]) == 1 and len(support[2]) == 2 and support[1].keys() < support[2].keys()
    assert not support[2].keys() & test[2].keys()
    assert all(entry == source["cyd"][name] for n in (1, 2) for name, entry in {**support[n], **test[n]}.items())

    status, out, err = run_command(["from-release", release, "--out", tmp_path / "back", "--positions", "12"], capsys)
    assert status == 0, err
    back = tmp_path / "back" / "PIC"
    assert out.strip() == f"wrote {back}: 2 training users, 1 fine-tuning users"
    assert json.loads((back / "users.json").read_text()) == {"train": ["ann", "bob"], "test": ["cyd"]}
    for user in ("ann", "bob"):
        assert json.loads((back / "annotations" / f"{user}.json").read_text()) == source[user]
    # a test user keeps the images of the files: the largest support set and the test images
    kept = {name: source["cyd"][name] for name in {**support[2], **test[2]}}
    assert json.loads((back / "annotations" / "cyd.json").read_text()) == kept
    assert sorted(os.listdir(back / "images")) == sorted(MANY)


def broken_ratings_csv(root: Path) -> list:
    good = {"annotator": "ann", "image": "a.jpg", "x1": 0, "y1": 0, "x2": 10, "y2": 10, "score": 1}
    write_csv(root / "bad.csv", [good, {**good, "x2": "wide"}])
    return ["ratings", root / "bad.csv", "--out", root / "out"], root / "bad.csv", root / "out"


def broken_release(root: Path) -> list:
    write_folder(root / "ours", precise_ratings(1), ["ann", "bob"], ["cyd"], sizes=MANY)
    write_release_layout(
        load_pic_data(config_PIC.Config(data_root=str(root / "ours"))), str(root / "release"), shots=(1,)
    )
    path = root / "release" / "prior" / "bob_train.csv"
    with open(path, newline="") as stream:
        rows = list(csv.reader(stream))
    rows[1][1] = "[0.1,0,96]"  # row 2: three numbers
    with open(path, "w", newline="") as stream:
        csv.writer(stream).writerows(rows)
    return ["from-release", root / "release", "--out", root / "out"], path, root / "out"


@pytest.mark.parametrize(
    "case",
    [
        lambda root: (["ratings", root / "none.csv", "--out", root / "out"], root / "none.csv", root / "out"),
        broken_ratings_csv,
        broken_release,
        lambda root: (["to-release", root / "empty", "--out", root / "out"], root / "empty" / "PIC", root / "out"),
    ],
)
def test_bad_input_ends_in_one_error_naming_the_file_and_writes_nothing(case, tmp_path, capsys):
    argv, named, out = case(tmp_path)
    capsys.readouterr()  # the notes of preparing the case
    assert not out.exists()
    status, stdout, err = run_command(argv, capsys)
    assert status == 2 and not stdout
    assert err.startswith("error: ") and err.count("error:") == 1 and "Traceback" not in err
    assert str(named) in err
    assert not out.exists() and not [entry for entry in os.listdir(tmp_path) if entry.startswith(".tmp-")]


def test_broken_release_row_is_reported_with_its_row(tmp_path, capsys):
    argv, path, _ = broken_release(tmp_path)
    _, _, err = run_command(argv, capsys)
    assert f'user bob, {path}, row 2: bbox "[x1,y1,x2,y2]" and score must be numbers' in err


@pytest.mark.parametrize("command", ["ratings", "from-release", "to-release"])
def test_existing_output_is_replaced_only_with_overwrite(command, tmp_path, capsys):
    source = precise_ratings(2)
    write_folder(tmp_path / "ours", source, ["ann", "bob"], ["cyd"], sizes=MANY)
    rows = [
        {"annotator": user, "image": name, "x1": x1, "y1": y1, "x2": x2, "y2": y2, "score": score}
        for user, rated in source.items()
        for name, entry in rated.items()
        for (x1, y1, x2, y2), score in zip(entry["bbox"], entry["score"], strict=True)
    ]
    write_csv(tmp_path / "ratings.csv", rows)
    write_release_layout(
        load_pic_data(config_PIC.Config(data_root=str(tmp_path / "ours"))), str(tmp_path / "release"), shots=(1,)
    )
    argv, existing = {
        "ratings": (["ratings", tmp_path / "ratings.csv", "--out", tmp_path / "out"], tmp_path / "out" / "PIC"),
        "from-release": (["from-release", tmp_path / "release", "--out", tmp_path / "out"], tmp_path / "out" / "PIC"),
        "to-release": (
            ["to-release", tmp_path / "ours", "--out", tmp_path / "out" / "release", "--shots", "1"],
            tmp_path / "out" / "release",
        ),
    }[command]
    existing.mkdir(parents=True)
    (existing / "mine.txt").write_text("keep me")
    status, _, err = run_command(argv, capsys)
    assert status == 2 and f"error: {existing} already exists" in err
    assert os.listdir(existing) == ["mine.txt"] and os.listdir(existing.parent) == [existing.name]
    status, _, err = run_command(argv + ["--overwrite"], capsys)
    assert status == 0, err
    assert not (existing / "mine.txt").exists() and os.listdir(existing.parent) == [existing.name]
    assert (existing / ("prior" if command == "to-release" else "users.json")).exists()


def test_a_failed_write_leaves_nothing_and_the_old_folder_as_it_was(tmp_path):
    def fail(folder: str) -> None:
        Path(folder, "half.json").write_text("{")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_folder_atomic(str(tmp_path / "new" / "deeper" / "PIC"), False, fail)
    assert os.listdir(tmp_path) == []
    old = tmp_path / "old"
    old.mkdir()
    (old / "keep.txt").write_text("x")
    with pytest.raises(OSError, match="disk full"):
        write_folder_atomic(str(old), True, fail)
    assert os.listdir(tmp_path) == ["old"] and os.listdir(old) == ["keep.txt"]
    write_folder_atomic(str(old), True, lambda folder: Path(folder, "new.txt").write_text("y"))
    assert os.listdir(tmp_path) == ["old"] and os.listdir(old) == ["new.txt"]
