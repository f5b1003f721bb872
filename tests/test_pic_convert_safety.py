"""convert_PIC_data.py against hostile and malformed input: names that would lead outside their
folder (untils.safe_paths), the loader's crop rule, encodings, left-out entries, the release's
pretrain/ folder and integer boxes. Every fixture is written here with the csv and json modules."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
from PIL import Image

import convert_PIC_data
from untils.cli import run_script
from untils.safe_paths import UnsafeNameError, check_name, resolve_inside

WIDTH, HEIGHT = 120, 90
COLUMNS = ["annotator", "image", "x1", "y1", "x2", "y2", "score"]


def crops(count: int = 12) -> list[list[int]]:
    """``count`` distinct whole-pixel crops inside a WIDTH x HEIGHT image."""
    return [[i, i, WIDTH - i, HEIGHT - 2 * i] for i in range(count)]


def photo(path: Path, colour: tuple[int, int, int] = (10, 20, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (WIDTH, HEIGHT), colour).save(path, format="JPEG")
    return path


def rows_for(user: str, image: str, boxes: list[list[int]] | None = None) -> list[list]:
    return [[user, image, *box, 12 - i] for i, box in enumerate(crops() if boxes is None else boxes)]


def write_ratings(path: Path, rows: list[list], encoding: str = "utf-8") -> Path:
    with open(path, "w", newline="", encoding=encoding) as stream:
        writer = csv.writer(stream)
        writer.writerow(COLUMNS)
        writer.writerows(rows)
    return path


def run(argv: list, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    status = run_script(convert_PIC_data.main, [str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return status, out, err


def assert_refused(status: int, out: str, err: str, *named: str) -> None:
    assert status == 2 and not out, err
    assert err.startswith("error: ") and err.count("error:") == 1 and "Traceback" not in err
    for text in named:
        assert text in err, (text, err)


def nothing_written(out_root: Path) -> bool:
    return not (out_root / "PIC").exists() and not any(entry.startswith(".tmp-") for entry in os.listdir(out_root))


def write_release(root: Path, prior_names: dict[str, list[str]], pretrain: dict[str, list[str]] | None = None) -> Path:
    """A release-layout folder: prior/<user>_train.csv and _val.csv naming ``prior_names[user]``
    (first image in _val, the rest in _train), the photos in images/ and pretrain/<user>/."""
    release = root / "release"
    for user, names in prior_names.items():
        for part, part_names in (("train", names[1:]), ("val", names[:1])):
            path = release / "prior" / f"{user}_{part}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w", newline="") as stream:
                writer = csv.writer(stream)
                writer.writerow(["name", "bbox", "score"])
                for name in part_names:
                    writer.writerows(
                        [name, "[" + ",".join(map(str, box)) + "]", 12 - i] for i, box in enumerate(crops())
                    )
                    if ".." not in name and not name.startswith("/"):
                        photo(release / "images" / name)
    for user, names in (pretrain or {}).items():
        for index, name in enumerate(names):
            photo(release / "pretrain" / user / name, (index * 40, 200, 0))
    return release


def write_ours(root: Path, ratings: dict[str, dict[str, dict]], train: list[str], test: list[str]) -> Path:
    """Our layout under ``root/PIC`` with a photo for every rated name that stays inside images/."""
    pic = root / "PIC"
    (pic / "annotations").mkdir(parents=True)
    (pic / "images").mkdir()
    (pic / "users.json").write_text(json.dumps({"train": train, "test": test}))
    for user, rated in ratings.items():
        (pic / "annotations" / f"{user}.json").write_text(json.dumps(rated))
        for name in rated:
            if ".." not in name and not name.startswith("/"):
                photo(pic / "images" / name)
    return root


def rated(names: list[str], boxes: list[list[float]] | None = None) -> dict[str, dict]:
    boxes = crops() if boxes is None else boxes
    return {name: {"bbox": boxes, "score": [float(12 - i) for i in range(len(boxes))]} for name in names}


# ----------------------------------------------------------------------------------------------
# The rule itself
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["../x.jpg", "a/../../x.jpg", "/etc/passwd", "a//b.jpg", "a/./b.jpg", "a/", "", "a\0.jpg", "..", "."]
)
def test_names_that_are_not_plain_relative_paths_are_refused(name):
    with pytest.raises(UnsafeNameError):
        check_name(name)


def test_plain_names_resolve_inside_and_links_out_are_refused(tmp_path):
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "a.jpg").write_bytes(b"x")
    (tmp_path / "secret.txt").write_text("secret")
    os.symlink(tmp_path / "secret.txt", folder / "out.jpg")
    os.symlink(folder / "sub" / "a.jpg", folder / "in.jpg")
    assert resolve_inside(str(folder), "sub/a.jpg") == os.path.join(str(folder), "sub", "a.jpg")
    assert resolve_inside(str(folder), "in.jpg") == os.path.join(str(folder), "in.jpg")  # a link that stays inside
    with pytest.raises(UnsafeNameError, match="leads outside"):
        resolve_inside(str(folder), "out.jpg")
    linked = tmp_path / "linked"
    os.symlink(folder, linked)  # the folder itself may be a link
    assert resolve_inside(str(linked), "sub/a.jpg") == os.path.join(str(linked), "sub", "a.jpg")


# ----------------------------------------------------------------------------------------------
# Item B: no name from the data writes (or reads) outside its folder
# ----------------------------------------------------------------------------------------------


def test_a_dotdot_name_through_a_linked_folder_does_not_replace_a_project_file(tmp_path, capsys):
    """The reported attack: ``s`` is a link in the photo folder, the CSV names ``s/../../../../untils/__init__.py``."""
    project = tmp_path / "project"
    victim = project / "untils" / "__init__.py"
    victim.parent.mkdir(parents=True)
    victim.write_text("# the project's own file\n")
    payload_root = tmp_path / "evil"
    (payload_root / "untils").mkdir(parents=True)
    (payload_root / "untils" / "__init__.py").write_text("raise SystemExit('owned')\n")
    deep = payload_root / "a" / "b" / "c" / "d"
    deep.mkdir(parents=True)
    photos = tmp_path / "photos"
    photo(photos / "ok.jpg")
    os.symlink(deep, photos / "s")
    name = "s/../../../../untils/__init__.py"
    csv_path = write_ratings(tmp_path / "ratings.csv", rows_for("ann", "ok.jpg") + rows_for("ann", name))
    out_root = project / "dataset"
    out_root.mkdir()
    status, out, err = run(["ratings", csv_path, "--out", out_root, "--images", photos], capsys)
    assert_refused(status, out, err, str(csv_path), "line 14", repr(name))
    assert victim.read_text() == "# the project's own file\n"
    assert nothing_written(out_root)


def test_an_absolute_image_name_is_refused(tmp_path, capsys):
    elsewhere = photo(tmp_path / "elsewhere" / "secret.jpg")
    csv_path = write_ratings(tmp_path / "ratings.csv", rows_for("ann", str(elsewhere)))
    (tmp_path / "out").mkdir()
    status, out, err = run(["ratings", csv_path, "--out", tmp_path / "out"], capsys)
    assert_refused(status, out, err, "line 2", "absolute path", str(elsewhere))
    assert nothing_written(tmp_path / "out")


def test_a_photo_linked_to_a_file_outside_the_folder_is_not_copied(tmp_path, capsys):
    secret = photo(tmp_path / "private" / "secret.jpg")
    photos = tmp_path / "photos"
    photos.mkdir()
    os.symlink(secret, photos / "nice.jpg")
    csv_path = write_ratings(tmp_path / "ratings.csv", rows_for("ann", "nice.jpg"))
    (tmp_path / "out").mkdir()
    status, out, err = run(["ratings", csv_path, "--out", tmp_path / "out", "--images", photos], capsys)
    assert_refused(status, out, err, "line 2", "'nice.jpg'", "leads outside")
    assert nothing_written(tmp_path / "out")


def test_a_user_file_beside_the_output_stays_untouched(tmp_path, capsys):
    out_root = tmp_path / "out"
    out_root.mkdir()
    notes = out_root / "notes.jpg"
    notes.write_text("my notes")
    photos = tmp_path / "photos"
    photo(photos / "sub" / "x.jpg")
    name = "sub/../../notes.jpg"  # from the staging folder's images/, two levels up is out_root
    photo(tmp_path / "notes.jpg", (255, 0, 0))  # what photos/sub/../../notes.jpg reads
    csv_path = write_ratings(tmp_path / "ratings.csv", rows_for("ann", name))
    status, out, err = run(["ratings", csv_path, "--out", out_root, "--images", photos], capsys)
    assert_refused(status, out, err, "line 2", repr(name))
    assert notes.read_text() == "my notes" and os.listdir(out_root) == ["notes.jpg"]


def test_from_release_refuses_a_dotdot_name_and_writes_nothing(tmp_path, capsys):
    name = "../../victim.jpg"
    release = write_release(tmp_path, {"ann": ["a.jpg", "b.jpg", name]})
    photo(tmp_path / "victim.jpg", (0, 255, 0))  # what release/images/../../victim.jpg reads
    out_root = tmp_path / "out"
    out_root.mkdir()
    victim = out_root / "victim.jpg"
    victim.write_text("keep")
    status, out, err = run(["from-release", release, "--out", out_root], capsys)
    assert_refused(status, out, err, f"user ann, {release / 'prior' / 'ann_train.csv'}, row 14", repr(name))
    assert victim.read_text() == "keep" and os.listdir(out_root) == ["victim.jpg"]


def test_to_release_refuses_a_dotdot_name_and_writes_nothing(tmp_path, capsys):
    name = "../../victim.jpg"
    ours = write_ours(tmp_path / "ours", {"ann": rated(["a.jpg", "b.jpg", "c.jpg", name])}, ["ann"], [])
    photo(tmp_path / "ours" / "victim.jpg", (0, 0, 255))  # what ours/PIC/images/../../victim.jpg reads
    victim = tmp_path / "victim.jpg"
    victim.write_text("keep")
    status, out, err = run(["to-release", ours, "--out", tmp_path / "release"], capsys)
    assert_refused(status, out, err, f"user ann, image {name}", repr(name))
    assert victim.read_text() == "keep" and not (tmp_path / "release").exists()
    assert not any(entry.startswith(".tmp-") for entry in os.listdir(tmp_path))


# ----------------------------------------------------------------------------------------------
# Item C: the converter refuses what the loader refuses, and reports what it leaves out
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad_box, expected",
    [
        ([50, 10, 40, 80], "x2 <= x1 or y2 <= y1"),  # inverted
        ([-30, 0, 100, 80], "lies more than 2% outside the 120x90 image"),  # negative
        ([0, 0, 200, 80], "lies more than 2% outside the 120x90 image"),  # beyond the right side
    ],
)
def test_ratings_refuses_boxes_the_loader_refuses(bad_box, expected, tmp_path, capsys):
    photos = tmp_path / "photos"
    photo(photos / "a.jpg")
    boxes = crops()
    boxes[4] = bad_box
    csv_path = write_ratings(tmp_path / "ratings.csv", rows_for("ann", "a.jpg", boxes))
    (tmp_path / "out").mkdir()
    status, out, err = run(["ratings", csv_path, "--out", tmp_path / "out", "--images", photos], capsys)
    assert_refused(status, out, err, f"line 6: annotator ann: image a.jpg: {[float(v) for v in bad_box]}", expected)
    assert nothing_written(tmp_path / "out")


def test_ratings_refuses_too_few_crops_with_the_loaders_words(tmp_path, capsys):
    csv_path = write_ratings(tmp_path / "ratings.csv", rows_for("ann", "a.jpg", crops(9)))
    (tmp_path / "out").mkdir()
    status, out, err = run(["ratings", csv_path, "--out", tmp_path / "out"], capsys)
    assert_refused(status, out, err, "line 2: annotator ann: image a.jpg: 9 crops, at least 10 are needed")
    # the same words as the loader's, for the same crops in our layout
    ours = write_ours(tmp_path / "ours", {"ann": rated(["a.jpg"], crops(9))}, ["ann"], [])
    status, out, err = run(["to-release", ours], capsys)
    assert_refused(status, out, err, "user ann, image a.jpg: 9 crops, at least 10 are needed")


def test_duplicates_are_refused_naming_them(tmp_path, capsys):
    rows = rows_for("ann", "a.jpg")
    csv_path = write_ratings(tmp_path / "ratings.csv", rows + [rows[3]])
    (tmp_path / "out").mkdir()
    status, out, err = run(["ratings", csv_path, "--out", tmp_path / "out"], capsys)
    assert_refused(status, out, err, "lines 5, 14: annotator ann: image a.jpg: the same crop [3.0, 3.0, 117.0, 84.0]")
    human = tmp_path / "human.json"
    human.write_text('{"a.jpg": [1, 2, 3, 4], "a.jpg": [5, 6, 7, 8]}')
    status, out, err = run(
        ["ratings", write_ratings(tmp_path / "ok.csv", rows), "--out", tmp_path / "out", "--human-boxes", human], capsys
    )
    assert_refused(status, out, err, str(human), "gives 1 key(s) twice: a.jpg")
    ours = write_ours(tmp_path / "ours", {"ann": rated(["a.jpg"])}, ["ann"], [])
    annotations = ours / "PIC" / "annotations" / "ann.json"
    annotations.write_text(annotations.read_text()[:-1] + ', "a.jpg": {"bbox": [], "score": []}}')
    status, out, err = run(["to-release", ours], capsys)
    assert_refused(status, out, err, str(annotations), "twice: a.jpg")


def test_a_csv_with_a_byte_order_mark_is_read(tmp_path, capsys):
    csv_path = write_ratings(
        tmp_path / "ratings.csv", rows_for("ann", "a.jpg") + rows_for("bob", "a.jpg"), encoding="utf-8-sig"
    )
    assert csv_path.read_bytes().startswith(b"\xef\xbb\xbf")
    status, out, err = run(["ratings", csv_path, "--out", tmp_path / "out"], capsys)
    assert status == 0, err
    users = json.loads((tmp_path / "out" / "PIC" / "users.json").read_text())
    assert sorted(users["train"] + users["test"]) == ["ann", "bob"]


def test_a_latin1_csv_is_one_error_line_naming_the_file_and_the_byte(tmp_path, capsys):
    csv_path = write_ratings(tmp_path / "ratings.csv", rows_for("ann", "café.jpg"), encoding="latin-1")
    offset = csv_path.read_bytes().index(b"\xe9")
    status, out, err = run(["ratings", csv_path, "--out", tmp_path / "out"], capsys)
    assert_refused(status, out, err, f"{csv_path} is not UTF-8 text: byte {offset} is 0xe9")
    assert err.splitlines()[0].startswith(f"error: {csv_path}")
    assert not (tmp_path / "out").exists()


def test_to_release_reports_what_it_leaves_out(tmp_path, capsys):
    names = [f"t{i}.jpg" for i in range(6)]
    ours = write_ours(tmp_path / "ours", {"ann": rated(["a.jpg", "b.jpg"]), "cyd": rated(names)}, ["ann"], ["cyd"])
    (ours / "PIC" / "human_bboxes.json").write_text(json.dumps({"a.jpg": [1, 2, 30, 40]}))
    status, out, err = run(["to-release", ours, "--shots", "1", "--test-fraction", "0.5"], capsys)
    assert status == 0, err
    release = ours / "PIC_release"
    in_files = set()
    for part in ("train/cyd_train.csv", "val/cyd_val.csv"):
        with open(release / "finetune" / "1" / part, newline="") as stream:
            in_files |= {row["name"] for row in csv.DictReader(stream)}
    left_out = sorted(set(names) - in_files)
    assert len(in_files) == 4 and len(left_out) == 2  # 3 held out for the test, 1 to fine-tune on
    assert "note: 2 test users' images are in no file" in err and all(f"cyd/{name}" in err for name in left_out)
    assert "note: 1 person boxes are not carried" in err and "a.jpg" in err


def test_from_release_reports_files_it_does_not_convert(tmp_path, capsys):
    release = write_release(tmp_path, {"ann": ["a.jpg", "b.jpg"]})
    (release / "prior" / "README.txt").write_text("notes")
    photo(release / "images" / "unrated.jpg")
    status, out, err = run(["from-release", release, "--out", tmp_path / "out"], capsys)
    assert status == 0, err
    assert f"note: 1 files in {release} name no user's CSV" in err and "README.txt" in err
    assert "note: 1 photos in" in err and "unrated.jpg" in err


def test_a_val_file_without_its_train_file_is_reported(tmp_path, capsys):
    release = write_release(tmp_path, {"ann": ["a.jpg", "b.jpg"], "bob": ["a.jpg", "b.jpg"]})
    (release / "prior" / "bob_train.csv").unlink()
    status, out, err = run(["from-release", release, "--out", tmp_path / "out"], capsys)
    assert_refused(status, out, err, f"user bob, {release / 'prior' / 'bob_train.csv'}: file missing")


# ----------------------------------------------------------------------------------------------
# Item D: pretrain/ kept both ways, integer boxes, the converter's own option names
# ----------------------------------------------------------------------------------------------


def test_pretrain_is_kept_from_and_back_to_the_release(tmp_path, capsys):
    release = write_release(
        tmp_path,
        {"ann": ["a.jpg", "b.jpg"], "bob": ["a.jpg", "b.jpg"]},
        pretrain={"ann": ["p1.jpg", "p2.jpg"], "zed": ["q.jpg"]},
    )
    status, out, err = run(["from-release", release, "--out", tmp_path / "ours"], capsys)
    assert status == 0, err
    ours_pretrain = tmp_path / "ours" / "PIC" / "pretrain"
    for user, name in (("ann", "p1.jpg"), ("ann", "p2.jpg"), ("zed", "q.jpg")):
        assert (ours_pretrain / user / name).read_bytes() == (release / "pretrain" / user / name).read_bytes()
    status, out, err = run(["to-release", tmp_path / "ours", "--out", tmp_path / "again", "--shots", "1"], capsys)
    assert status == 0, err
    files = {
        (user, name)
        for user in os.listdir(tmp_path / "again" / "pretrain")
        for name in os.listdir(tmp_path / "again" / "pretrain" / user)
    }
    assert files == {("ann", "p1.jpg"), ("ann", "p2.jpg"), ("zed", "q.jpg")}
    for user, name in files:
        assert (tmp_path / "again" / "pretrain" / user / name).read_bytes() == (
            release / "pretrain" / user / name
        ).read_bytes()


def test_to_release_writes_boxes_the_releases_int_parse_reads(tmp_path, capsys):
    ours = write_ours(tmp_path / "ours", {"ann": rated(["a.jpg", "b.jpg"])}, ["ann"], [])
    status, out, err = run(["to-release", ours, "--val-fraction", "0.5"], capsys)
    assert status == 0, err
    for part in ("train", "val"):
        with open(ours / "PIC_release" / "prior" / f"ann_{part}.csv", newline="") as stream:
            boxes = [[int(v) for v in row["bbox"].strip("[]").split(",")] for row in csv.DictReader(stream)]
        assert boxes == crops()


def test_to_release_refuses_a_fractional_box_naming_it(tmp_path, capsys):
    boxes = crops()
    boxes[2] = [2.5, 2, 118, 86]
    ours = write_ours(tmp_path / "ours", {"ann": rated(["a.jpg", "b.jpg"], boxes)}, ["ann"], [])
    status, out, err = run(["to-release", ours], capsys)
    assert_refused(status, out, err, "whole pixels", "user ann, image a.jpg: crop box 2 [2.5, 2.0, 118.0, 86.0]")
    assert not (ours / "PIC_release").exists()


def test_errors_name_only_the_converters_own_options(tmp_path, capsys):
    ours = write_ours(tmp_path / "ours", {"ann": rated(["a.jpg"]), "cyd": rated(["x.jpg", "y.jpg"])}, ["ann"], ["cyd"])
    status, out, err = run(["to-release", ours, "--shots", "5"], capsys)
    assert_refused(status, out, err, "--shots", "--test-fraction")
    assert "--finetune_images" not in err and "--user_test_fraction" not in err
    release = write_release(tmp_path, {"ann": ["a.jpg", "b.jpg"]})
    status, out, err = run(["from-release", release, "--out", tmp_path / "out", "--positions", "24"], capsys)
    assert_refused(status, out, err, "--positions")
    assert "--num_positions" not in err
