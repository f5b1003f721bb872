"""The web server (app.py) through HTTP against the real server process: a tiny random-weight HCIC
checkpoint, a free loopback port, a temporary data folder. Answers are checked against the crop
library run in this process on the same photo, and against the photo's own pixels."""

from __future__ import annotations

import concurrent.futures
import io
import os
import socket
import subprocess
import sys
import time
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from skimage import data

from tests.conftest import REPO_ROOT
from tests.test_crop import save_checkpoint
from untils.candidates import parse_aspect_ratio

MAX_PIXELS = 3_000_000
MAX_UPLOAD_MB = 2
MAX_PHOTOS = 12


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """``python app.py`` as a subprocess; ``url`` is its address once /api/health answers."""

    def __init__(self, checkpoint: Path, data_dir: Path, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = data_dir.parent / f"server-{self.port}.log"
        self.process = subprocess.Popen(
            [
                sys.executable,
                str(REPO_ROOT / "app.py"),
                "--checkpoint",
                str(checkpoint),
                "--port",
                str(self.port),
                "--data-dir",
                str(data_dir),
                "--no-download",
                *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("w"),
            cwd=REPO_ROOT,
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited ({self.process.returncode}): {self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/api/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"the server did not answer in 180 s: {self.log.read_text()}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-hcic.pth", "HCIC")


@pytest.fixture(scope="module")
def server(checkpoint, tmp_path_factory) -> Iterator[Server]:
    running = Server(
        checkpoint,
        tmp_path_factory.mktemp("app") / "data",
        "--max-pixels",
        str(MAX_PIXELS),
        "--max-upload-mb",
        str(MAX_UPLOAD_MB),
        "--max-photos",
        str(MAX_PHOTOS),
    )
    yield running
    running.stop()


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    """A real photo of a person, 768x768 (the scikit-image astronaut, enlarged)."""
    return Image.fromarray(data.astronaut()).resize((768, 768), Image.Resampling.BICUBIC)


def post_crop(server: Server, content: bytes, name: str = "astronaut.png", **fields: str) -> httpx.Response:
    return httpx.post(
        f"{server.url}/api/crop", files={"photo": (name, content, "application/octet-stream")}, data=fields, timeout=300
    )


def assert_error(response: httpx.Response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    message = response.json()["error"]
    assert isinstance(message, str) and message.count("\n") == 0
    for word in words:
        assert word in message, message


def assert_serving(server: Server) -> None:
    assert server.process.poll() is None
    assert httpx.get(f"{server.url}/api/health", timeout=10).json()["status"] == "ok"


def test_health_names_the_model(server, checkpoint):
    answer = httpx.get(f"{server.url}/api/health", timeout=10).json()
    assert answer["status"] == "ok"
    assert answer["model"]["checkpoint"] == str(checkpoint)
    assert answer["model"]["model_type"] == "HCIC" and answer["model"]["backbone"] == "mobilenetv2"
    assert answer["detector"] is not None


def library_scores(checkpoint: Path, image: Image.Image, box, ratio: str) -> dict[tuple, float]:
    """Every candidate's score from the crop library in this process, as the reference."""
    import crop

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cropper = crop.Cropper(str(checkpoint), device="cpu")
    result = cropper.rank(image, box, ratio)
    return {tuple(b): s for b, s in zip(result.boxes, result.scores, strict=True)}


def test_three_ratios_and_the_detected_person(server, checkpoint, astronaut):
    response = post_crop(server, png_bytes(astronaut), aspect_ratio="free,1:1,16:9", top_k="3", detect_human="true")
    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["width"], answer["height"]) == (768, 768)
    person = answer["person"]
    assert person["source"] == "detected" and person["detector"] == "hog+face"
    x1, y1, x2, y2 = person["box"]
    assert 0 <= x1 < x2 <= 768 and 0 <= y1 < y2 <= 768
    # the astronaut's face (about x 250-350, y 60-200 at this size) lies in the box
    assert x1 < 260 and x2 > 340 and y1 < 110 and y2 > 200
    assert [entry["aspect_ratio"] for entry in answer["results"]] == ["free", "1:1", "16:9"]
    for entry in answer["results"]:
        ranked = entry["ranked"]
        scores = [item["score"] for item in ranked]
        assert scores == sorted(scores, reverse=True) and len(ranked) > 10
        assert [crop["box"] for crop in entry["crops"]] == [item["box"] for item in ranked[:3]]
        assert [crop["rank"] for crop in entry["crops"]] == [1, 2, 3]
        for crop in entry["crops"]:
            bx1, by1, bx2, by2 = crop["box"]
            assert (crop["width"], crop["height"]) == (bx2 - bx1, by2 - by1)
            assert 0 <= bx1 < bx2 <= 768 and 0 <= by1 < by2 <= 768
            value = parse_aspect_ratio(entry["aspect_ratio"])
            if value is not None:
                assert abs(crop["width"] / crop["height"] - value) < 0.02
        reference = library_scores(checkpoint, astronaut, person["box"], entry["aspect_ratio"])
        assert {tuple(item["box"]) for item in ranked} == set(reference)
        for item in ranked:
            assert item["score"] == pytest.approx(reference[tuple(item["box"])], rel=1e-4, abs=1e-6)
    assert answer["heat_map"] is not None
    heat_map = httpx.get(server.url + answer["heat_map"], timeout=10)
    assert heat_map.status_code == 200 and heat_map.headers["content-type"] == "image/png"


def test_crops_come_at_full_resolution_from_the_photo(server, astronaut):
    answer = post_crop(server, png_bytes(astronaut), aspect_ratio="4:5,free", top_k="2").json()
    pixels = np.asarray(astronaut)
    for entry in answer["results"]:
        for crop in entry["crops"]:
            response = httpx.get(server.url + crop["url"], timeout=30)
            assert response.status_code == 200 and response.headers["content-type"] == "image/png"
            x1, y1, x2, y2 = crop["box"]
            np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(response.content))), pixels[y1:y2, x1:x2])
    archive = httpx.get(f"{server.url}/api/photos/{answer['photo_id']}/crops.zip", timeout=30)
    assert archive.status_code == 200
    with zipfile.ZipFile(io.BytesIO(archive.content)) as opened:
        names = sorted(opened.namelist())
        assert names == sorted(
            [
                "astronaut_4x5_crop1.png",
                "astronaut_4x5_crop2.png",
                "astronaut_free_crop1.png",
                "astronaut_free_crop2.png",
            ]
        )
        first = answer["results"][0]["crops"][0]["box"]
        with opened.open("astronaut_4x5_crop1.png") as member:
            np.testing.assert_array_equal(
                np.asarray(Image.open(member)), pixels[first[1] : first[3], first[0] : first[2]]
            )


def test_a_given_person_box_and_exif_orientation(server, astronaut):
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: shown turned 90 degrees clockwise
    sideways = astronaut.resize((600, 400))
    sideways.save(buffer, format="JPEG", exif=exif.tobytes())
    answer = post_crop(
        server, buffer.getvalue(), "phone.jpg", human_box="50, 100, 300, 500", keep_person="true", aspect_ratio="9:16"
    ).json()
    assert (answer["width"], answer["height"]) == (400, 600)  # the upright photo
    assert answer["person"] == {"box": [50.0, 100.0, 300.0, 500.0], "source": "given"}
    (entry,) = answer["results"]
    for item in entry["ranked"]:
        x1, y1, x2, y2 = item["box"]
        assert x1 <= 51 and y1 <= 101 and x2 >= 299 and y2 >= 499  # keep_person: the whole person is inside


def test_bad_input_gets_a_4xx_sentence_and_the_server_goes_on(server, astronaut):
    good = png_bytes(astronaut)
    assert_error(post_crop(server, b"hello, this is text\n", "notes.txt"), 415, "notes.txt", "not an image")
    assert_error(post_crop(server, good[: len(good) // 2], "cut.png"), 422, "cut.png", "truncated")
    big = png_bytes(Image.new("RGB", (2000, 1600)))  # 3.2 million pixels: compresses to a few KB
    assert_error(post_crop(server, big, "big.png"), 413, "too large", "3,200,000")
    noise = np.random.default_rng(0).integers(0, 256, (1100, 1100, 3), dtype=np.uint8)
    assert_error(post_crop(server, png_bytes(Image.fromarray(noise)), "noise.png"), 413, f"{MAX_UPLOAD_MB:g} MB")
    assert_error(post_crop(server, good, human_box="1,2,3"), 400, "human_box", "four numbers")
    assert_error(post_crop(server, good, human_box="900,900,1000,1000"), 400, "outside the 768x768 photo")
    assert_error(post_crop(server, good, human_box="10,10,20,20", detect_human="true"), 400, "not both")
    assert_error(post_crop(server, good, aspect_ratio="1:1,x:y"), 400, "x:y")
    assert_error(post_crop(server, good, aspect_ratio="free,any"), 400, "same ratio")
    assert_error(post_crop(server, good, top_k="0"), 400, "top_k")
    assert_error(post_crop(server, good, detect_human="perhaps"), 400, "detect_human")
    assert_error(httpx.post(f"{server.url}/api/crop", data={"top_k": "3"}, timeout=30), 400, "photo")
    assert_error(httpx.post(f"{server.url}/api/crop", content=b"{}", timeout=30), 400, "multipart")
    assert_error(httpx.get(f"{server.url}/api/photos/..%2F..%2Fetc/crops/free/1", timeout=30), 404)
    assert_error(httpx.get(f"{server.url}/api/photos/{'0' * 32}/crops/free/1", timeout=30), 404, "no photo")
    answer = post_crop(server, good, aspect_ratio="1:1", top_k="1").json()
    assert_error(httpx.get(f"{server.url}/api/photos/{answer['photo_id']}/crops/16:9/1", timeout=30), 404, "16:9")
    assert_error(httpx.get(f"{server.url}/api/photos/{answer['photo_id']}/crops/1:1/9999", timeout=30), 404, "rank")
    assert_serving(server)


def comparable(answer: dict) -> tuple:
    """An answer without what differs between uploads (their id, in the crops' addresses)."""
    results = [
        (
            entry["aspect_ratio"],
            entry["ranked"],
            [{key: value for key, value in crop.items() if key != "url"} for crop in entry["crops"]],
        )
        for entry in answer["results"]
    ]
    return answer["width"], answer["height"], answer["person"], results


def test_eight_concurrent_requests_equal_one(server, astronaut):
    content = png_bytes(astronaut)
    fields = {"aspect_ratio": "free,3:2", "top_k": "3"}
    alone = comparable(post_crop(server, content, **fields).json())
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: post_crop(server, content, **fields), range(8)))
    assert [response.status_code for response in responses] == [200] * 8
    answers = [response.json() for response in responses]
    assert len({answer["photo_id"] for answer in answers}) == 8
    assert all(comparable(answer) == alone for answer in answers)
    assert_serving(server)


def test_uploads_are_capped_oldest_first(server, astronaut):
    small = png_bytes(astronaut.resize((200, 150)))
    ids = [post_crop(server, small, "small.png").json()["photo_id"] for _ in range(MAX_PHOTOS + 2)]
    stored = [name for name in os.listdir(Path(server.log.parent) / "data" / "photos")]
    assert len(stored) <= MAX_PHOTOS and ids[-1] in stored and ids[0] not in stored
    assert_error(httpx.get(f"{server.url}/api/photos/{ids[0]}/crops/any/1", timeout=30), 404, "oldest")
    assert httpx.get(f"{server.url}/api/photos/{ids[-1]}/crops/any/1", timeout=30).status_code == 200


def test_the_page_and_its_assets_are_served_locally(server):
    page = httpx.get(server.url + "/", timeout=10)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "http://" not in page.text and "https://" not in page.text  # nothing fetched from elsewhere
    for asset in ("/static/app.js", "/static/app.css"):
        response = httpx.get(server.url + asset, timeout=10)
        assert response.status_code == 200 and "https://" not in response.text


def test_help_and_a_missing_checkpoint_fail_cleanly(tmp_path):
    usage = subprocess.run([sys.executable, str(REPO_ROOT / "app.py"), "--help"], capture_output=True, text=True)
    assert usage.returncode == 0 and "--data-dir" in usage.stdout and "127.0.0.1" in usage.stdout
    missing = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "app.py"),
            "--checkpoint",
            str(tmp_path / "no.pth"),
            "--port",
            str(free_port()),
            "--data-dir",
            str(tmp_path / "data"),
            "--no-detector",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 2 and missing.stderr.startswith("error:") and "no.pth" in missing.stderr
