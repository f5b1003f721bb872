"""Rating crops and personalizing through the real server (app.py with the demo PIC prior, a free
loopback port): ratings stored as the ratings CSV the PIC reader takes, users kept apart, bad input
refused in a sentence, a fine-tuning job that changes the user's ranking, and the issue's test:
a user who prefers crops left of centre gets such crops on photos they never rated clearly more
often than the generic ranking gives them. The references are the PIC library run in this process
and a taste rule written here, never the server's own answers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.test_app import Server, assert_error, assert_serving
from tests.test_crop import save_checkpoint
from untils.pic_ratings import read_ratings_csv

RATED_PHOTOS, UNSEEN_PHOTOS, CROPS_PER_PHOTO = 8, 8, 24
JOB_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    """Generated photos of people (the GAIC demo's), 160 px on the long side."""
    from untils.demo_data import build_demo_dataset

    root = tmp_path_factory.mktemp("photos")
    build_demo_dataset(root, num_train=RATED_PHOTOS + UNSEEN_PHOTOS, num_test=4, seed=11, long_side=160)
    return sorted((root / "GAICD" / "images").rglob("*.jpg"))


@pytest.fixture(scope="module")
def server(demo_pic_prior, tmp_path_factory) -> Iterator[Server]:
    checkpoint = save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-hcic.pth", "HCIC")
    data = tmp_path_factory.mktemp("app-ratings") / "data"
    running = Server(checkpoint, data, "--pic-prior", demo_pic_prior, "--no-detector")
    running.data = data
    yield running
    running.stop()


def crop(server: Server, path: Path, user: str, top_k: int = 3) -> dict:
    response = httpx.post(
        f"{server.url}/api/crop",
        files={"photo": (path.name, path.read_bytes(), "image/jpeg")},
        data={"user": user, "top_k": str(top_k)},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    return response.json()


def rerank(server: Server, photo_id: str, user: str, top_k: int = 3) -> dict:
    response = httpx.post(
        f"{server.url}/api/crop", data={"photo_id": photo_id, "user": user, "top_k": str(top_k)}, timeout=120
    )
    assert response.status_code == 200, response.text
    return response.json()


def rate(server: Server, user: str, photo_id: str, box, score) -> httpx.Response:
    body = {"user": user, "photo_id": photo_id, "box": box, "score": score}
    return httpx.post(f"{server.url}/api/ratings", json=body, timeout=30)


def taste(box, width: float, side: int) -> int:
    """The taste rule: 5 for a crop well to the ``side`` (-1 left, +1 right) of the photo's centre,
    down to 1 for one well to the other side."""
    offset = side * ((box[0] + box[2]) / 2 - width / 2) / width
    return 5 if offset > 0.06 else 4 if offset > 0.02 else 3 if offset >= -0.02 else 2 if offset >= -0.06 else 1


def on_side(box, width: float, side: int) -> bool:
    return side * ((box[0] + box[2]) / 2 - width / 2) > 0.02 * width


def spread(items: list, count: int) -> list:
    """``count`` items spread evenly over ``items`` (best, middle, worst of a ranking alike)."""
    step = max(1, len(items) // count)
    return items[::step][:count]


def personalize(server: Server, user: str) -> tuple[dict, list[float]]:
    """Start the user's job and poll it to its end: (the last state, the progress values seen)."""
    response = httpx.post(f"{server.url}/api/personalize", json={"user": user}, timeout=30)
    assert response.status_code == 202, response.text
    job = response.json()["job"]
    seen, deadline = [], time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        state = httpx.get(f"{server.url}/api/jobs/{job}", timeout=30).json()
        assert state["state"] in ("queued", "running", "done", "failed")
        seen.append(state["progress"])
        if state["state"] in ("done", "failed"):
            return state, seen
        time.sleep(0.25)
    pytest.fail(f"job {job} of {user} did not end in {JOB_TIMEOUT_S} s")


def test_offered_crops_are_the_prior_candidates(server, photos, demo_pic_prior):
    from pic_model import load_pic_ranker

    answer = crop(server, photos[0], "Ana", top_k=5)
    personal = answer["personal"]
    assert personal["user"] == "ana" and personal["kind"] == "prior"
    with Image.open(photos[0]) as opened:
        reference = load_pic_ranker(demo_pic_prior).rank(opened.convert("RGB"), None)
    assert [tuple(item["box"]) for item in personal["ranked"]] == [box for box, _ in reference]
    for item, (_, score) in zip(personal["ranked"], reference, strict=True):
        assert item["score"] == pytest.approx(score, rel=1e-4, abs=1e-6)
    assert [item["box"] for item in personal["crops"]] == [item["box"] for item in personal["ranked"][:5]]
    assert personal["generic"] == [{key: c[key] for key in ("rank", "box", "score")} for c in personal["crops"]]


def test_ratings_round_trip_as_the_ratings_csv(server, photos):
    offered = {}
    for path in photos[:3]:
        answer = crop(server, path, "bea")
        offered[answer["photo_id"]] = (answer["width"], spread(answer["personal"]["ranked"], 10))
    expected = {}
    for photo_id, (width, crops) in offered.items():
        for item in crops:
            response = rate(server, "bea", photo_id, item["box"], taste(item["box"], width, -1))
            assert response.status_code == 200, response.text
            expected[(photo_id, tuple(item["box"]))] = taste(item["box"], width, -1)
    first_id, (width, crops) = next(iter(offered.items()))
    again = rate(server, "BEA", first_id, crops[0]["box"], 1 if expected[(first_id, tuple(crops[0]["box"]))] > 1 else 5)
    expected[(first_id, tuple(crops[0]["box"]))] = again.json()["rating"]["score"]
    summary = httpx.get(f"{server.url}/api/users/bea/ratings", timeout=30).json()
    assert (summary["crops"], summary["photos"], summary["photos_ready"]) == (30, 3, 3)
    assert {(r["photo_id"], tuple(r["box"])): r["score"] for r in summary["ratings"]} == expected

    csv_path = server.data / "users" / "bea" / "ratings.csv"
    read = read_ratings_csv(str(csv_path), str(server.data / "rated_photos"))  # convert_PIC_data.py's reader
    assert list(read) == ["bea"]
    from_csv = {
        (name.split(".")[0], tuple(box)): score
        for name, entry in read["bea"].items()
        for box, score in zip(entry["bbox"], entry["score"], strict=True)
    }
    assert from_csv == expected
    for photo_id, (width, _) in offered.items():  # the kept photo is the upright upload
        with Image.open(server.data / "rated_photos" / f"{photo_id}.jpg") as kept:
            assert kept.width == width

    removed = crops[1]["box"]
    box_text = ",".join(str(v) for v in removed)
    deleted = httpx.delete(f"{server.url}/api/users/bea/ratings/{first_id}", params={"box": box_text}, timeout=30)
    assert deleted.status_code == 200 and deleted.json()["crops"] == 29
    assert_error(
        httpx.delete(f"{server.url}/api/users/bea/ratings/{first_id}", params={"box": box_text}), 404, "no rating"
    )


def test_one_users_ratings_never_change_anothers(server, photos):
    answer = crop(server, photos[3], "cid")
    box = answer["personal"]["ranked"][0]["box"]
    assert rate(server, "cid", answer["photo_id"], box, 4).status_code == 200
    cid_file = server.data / "users" / "cid" / "ratings.csv"
    before = cid_file.read_bytes()
    for user, score in (("dee", 1), ("cid-2", 2), ("CID_", 5)):
        assert rate(server, user, answer["photo_id"], box, score).status_code == 200
    assert cid_file.read_bytes() == before
    assert httpx.get(f"{server.url}/api/users/cid/ratings", timeout=30).json()["ratings"][0]["score"] == 4


def test_bad_input_gets_a_4xx_sentence(server, photos):
    answer = crop(server, photos[4], "eve")
    photo_id, box = answer["photo_id"], answer["personal"]["ranked"][0]["box"]
    for user in ("../x", "a/b", "", "x" * 33, "é", "-lead", None, 7):
        assert_error(rate(server, user, photo_id, box, 3), 400, "user")
    assert httpx.get(f"{server.url}/api/users/..%2Fetc/ratings", timeout=30).status_code in (400, 404)
    assert_error(httpx.get(f"{server.url}/api/users/a.b/ratings", timeout=30), 400, "user")
    for bad in ([1, 2, 3], ["a", 1, 2, 3], "0,0,9,9", None):
        assert_error(rate(server, "eve", photo_id, bad, 3), 400, "box")
    assert_error(rate(server, "eve", photo_id, [0, 0, 3, 3], 3), 422, "not one of the crops offered")
    for score in (0, 6, 2.5, "5", True, None):
        assert_error(rate(server, "eve", photo_id, box, score), 400, "score")
    assert_error(rate(server, "eve", "0" * 32, box, 3), 404, "offered")
    assert_error(rate(server, "eve", "../../etc", box, 3), 404, "32 hex digits")
    assert_error(httpx.post(f"{server.url}/api/ratings", content=b"[1, 2]", timeout=30), 400, "JSON object")
    assert_error(httpx.post(f"{server.url}/api/ratings", content=b"x" * 5000, timeout=30), 413, "bytes")
    assert_error(httpx.post(f"{server.url}/api/personalize", json={"user": "eve"}, timeout=30), 422, "needs 3")
    assert_error(httpx.get(f"{server.url}/api/jobs/nope", timeout=30), 404, "no job")
    bad_user = httpx.post(f"{server.url}/api/crop", data={"photo_id": photo_id, "user": "a/b"}, timeout=30)
    assert_error(bad_user, 400, "user")
    assert_error(httpx.post(f"{server.url}/api/crop", data={"photo_id": "f" * 32}, timeout=30), 404, "no photo")
    assert not any((server.data / "users").glob("*/*/*"))  # nothing written below a user's folder
    assert_serving(server)


def rate_by_taste(server: Server, photos: list[Path], user: str, side: int) -> dict:
    """``user`` rates crops of RATED_PHOTOS photos by the taste rule for ``side`` and personalizes."""
    for path in photos[:RATED_PHOTOS]:
        answer = crop(server, path, user)
        for item in spread(answer["personal"]["ranked"], CROPS_PER_PHOTO):
            score = taste(item["box"], answer["width"], side)
            assert rate(server, user, answer["photo_id"], item["box"], score).status_code == 200
    started = time.monotonic()
    state, progress = personalize(server, user)
    return {"state": state, "progress": progress, "seconds": time.monotonic() - started}


@pytest.fixture(scope="module")
def left_leaning(server, photos) -> dict:
    return rate_by_taste(server, photos, "lefty", -1)


def test_personalizing_changes_the_ranking(server, photos, left_leaning):
    assert left_leaning["state"]["state"] == "done", left_leaning["state"]
    progress = left_leaning["progress"]
    assert all(0 <= value <= 1 for value in progress) and progress[-1] == 1
    print(f"\npersonalizing lefty from {RATED_PHOTOS} photos took {left_leaning['seconds']:.1f} s (poll to done)")
    answer = crop(server, photos[RATED_PHOTOS], "lefty", top_k=5)
    personal = answer["personal"]
    assert personal["kind"] == "personal"
    assert personal["model"].endswith("users/lefty/model.pth")
    personal_order = [c["box"] for c in personal["ranked"]]
    generic_order = [c["box"] for c in crop(server, photos[RATED_PHOTOS], "nobody")["personal"]["ranked"]]
    assert sorted(personal_order) == sorted(generic_order) and personal_order != generic_order
    assert [c["box"] for c in personal["generic"]] == generic_order[:5]


def test_a_taste_is_followed_on_unseen_photos(server, photos, left_leaning):
    """The issue's "done when": on photos the user never rated, the personal top crop follows the
    user's taste (left of centre; and right, the mirror) clearly more often than the generic
    (prior's) top crop: at least 3 photos more, or on all of them where the prior is close to that."""
    right_leaning = rate_by_taste(server, photos, "righty", +1)
    assert right_leaning["state"]["state"] == "done", right_leaning["state"]
    counts = {"lefty": [0, 0], "righty": [0, 0]}
    for path in photos[RATED_PHOTOS : RATED_PHOTOS + UNSEEN_PHOTOS]:
        for user, side in (("lefty", -1), ("righty", +1)):
            answer = crop(server, path, user, top_k=1)
            counts[user][0] += on_side(answer["personal"]["crops"][0]["box"], answer["width"], side)
            counts[user][1] += on_side(answer["personal"]["generic"][0]["box"], answer["width"], side)
    print(
        f"\ntop crop on the user's side, {UNSEEN_PHOTOS} unseen photos (personal, generic): {counts}; "
        f"personalizing took {left_leaning['seconds']:.1f} s and {right_leaning['seconds']:.1f} s"
    )
    for personal, generic in counts.values():
        assert personal >= min(generic + 3, UNSEEN_PHOTOS), counts


def test_a_second_job_is_refused_and_a_failed_one_keeps_the_model(server, photos, left_leaning):
    assert left_leaning["state"]["state"] == "done"
    model = server.data / "users" / "lefty" / "model.pth"
    first = httpx.post(f"{server.url}/api/personalize", json={"user": "lefty"}, timeout=30)
    assert first.status_code == 202
    assert_error(httpx.post(f"{server.url}/api/personalize", json={"user": "Lefty"}, timeout=30), 409, "already")
    assert_serving(server)  # serving goes on while it trains
    crop(server, photos[-1], "lefty")
    job = first.json()["job"]
    while (state := httpx.get(f"{server.url}/api/jobs/{job}", timeout=30).json())["state"] not in ("done", "failed"):
        time.sleep(0.25)
    assert state["state"] == "done"

    # a rated photo gone bad: the next job fails, says which file, and the model stays
    rated = sorted((server.data / "rated_photos").glob("*.jpg"))
    lefty = {r["photo_id"] for r in httpx.get(f"{server.url}/api/users/lefty/ratings", timeout=30).json()["ratings"]}
    broken = next(path for path in rated if path.stem in lefty)
    before = model.read_bytes()
    broken.write_bytes(b"not a photo any more")
    state, _ = personalize(server, "lefty")
    assert state["state"] == "failed" and broken.name in state["message"] and "\n" not in state["message"]
    assert model.read_bytes() == before
    assert crop(server, photos[RATED_PHOTOS], "lefty")["personal"]["kind"] == "personal"
    assert_serving(server)
