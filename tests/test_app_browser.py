"""The cropping page in a real headless browser: Playwright driving the system's Chromium
(/usr/bin/chromium) against the real server process. Skips only outside CI (CI unset) when no
browser or Playwright is installed; fails under CI=true."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from skimage import data

from tests.test_app import Server
from tests.test_crop import save_checkpoint

CHROMIUM = os.environ.get("HCIC_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 120_000


def browser_missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed (pip install playwright)"
    if shutil.which(CHROMIUM) is None:
        return f"no Chromium at {CHROMIUM} (set HCIC_CHROMIUM)"
    return None


def require_browser() -> None:
    """Skip (fail under CI) when Playwright or Chromium is missing."""
    missing = browser_missing()
    if missing is not None:
        if os.environ.get("CI"):
            pytest.fail(f"the browser tests must run under CI: {missing}")
        pytest.skip(missing)


@contextlib.contextmanager
def browser_page(server: Server) -> Iterator:
    """The server's page in headless Chromium (a fresh profile); the server is stopped afterwards."""
    from playwright.sync_api import sync_playwright

    try:
        with sync_playwright() as playwright, tempfile.TemporaryDirectory() as profile:
            context = playwright.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                headless=True,
                args=CHROMIUM_ARGS,
                accept_downloads=True,
                viewport={"width": 1400, "height": 1000},
            )
            context.set_default_timeout(TIMEOUT_MS)
            opened = context.new_page()
            opened.goto(server.url + "/")
            yield opened
            context.close()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Iterator:
    require_browser()
    checkpoint = save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-hcic.pth", "HCIC")
    with browser_page(Server(checkpoint, tmp_path_factory.mktemp("browser-app") / "data")) as opened:
        yield opened


@pytest.fixture(scope="module")
def astronaut_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photos") / "astronaut.png"
    Image.fromarray(data.astronaut()).resize((640, 640)).save(path)
    return path


def crop_boxes(page) -> list[list[float]]:
    """The crop rectangles drawn on the first card's photo, in photo pixels."""
    return page.eval_on_selector_all(
        ".card .overlay rect.crop",
        "shapes => shapes.map(s => ['x', 'y', 'width', 'height'].map(a => Number(s.getAttribute(a))))",
    )


def wait_for_answer(page, status_words: str) -> None:
    page.wait_for_function(
        "words => { const s = document.querySelector('.card .status');"
        " return s && s.textContent.includes(words) && !s.closest('.card').ariaBusy; }",
        arg=status_words,
    )


def test_upload_change_ratio_draw_download_and_errors(page, astronaut_file, tmp_path):
    # upload: the ranked crops appear on the photo and as thumbnails with scores
    page.set_input_files("#file-input", str(astronaut_file))
    wait_for_answer(page, "640×640")
    page.wait_for_function(
        "document.querySelectorAll('.card .thumbs img').length === 3 && "
        "[...document.querySelectorAll('.card .thumbs img')].every(i => i.naturalWidth > 0)"
    )
    assert len(crop_boxes(page)) == 3
    assert "score" in page.inner_text(".card .thumbs li")
    assert page.inner_text(".card .ratio-tabs") == "free"
    page.check(".card .show-heat")
    assert page.is_visible(".card .heat")

    # change the ratio with the keyboard: 1:1 on, free off
    page.focus('input[name="ratio"][value="1:1"]')
    page.keyboard.press("Space")
    page.focus('input[name="ratio"][value="free"]')
    page.keyboard.press("Space")
    page.wait_for_function(
        "document.querySelector('.card .ratio-tabs').textContent === '1:1' && !document.querySelector('.card').ariaBusy"
    )
    for _, _, width, height in crop_boxes(page):
        assert abs(width - height) <= 1

    # draw the person: drag a box on the photo; it is sent as the person box
    page.check('input[name="person"][value="draw"]')
    assert page.is_visible(".card .box-form")
    overlay = page.locator(".card .overlay").bounding_box()
    scale = overlay["width"] / 640
    start, end = (160, 40), (480, 600)  # photo pixels
    page.mouse.move(overlay["x"] + start[0] * scale, overlay["y"] + start[1] * scale)
    page.mouse.down()
    page.mouse.move(overlay["x"] + 300 * scale, overlay["y"] + 300 * scale, steps=4)
    page.mouse.move(overlay["x"] + end[0] * scale, overlay["y"] + end[1] * scale, steps=4)
    page.mouse.up()
    wait_for_answer(page, "person given")
    drawn = page.eval_on_selector(
        ".card .overlay rect.person", "s => ['x', 'y', 'width', 'height'].map(a => Number(s.getAttribute(a)))"
    )
    assert drawn == pytest.approx([start[0], start[1], end[0] - start[0], end[1] - start[1]], abs=3)
    typed = page.input_value(".card .box-input")
    assert [float(v) for v in typed.split(",")] == pytest.approx([*start, *end], abs=3)

    # download a crop at full resolution
    first_box = crop_boxes(page)[-1]  # the best is drawn last, on top
    with page.expect_download() as download:
        page.click(".card .thumbs li >> text=Download")
    saved = tmp_path / "crop.png"
    download.value.save_as(saved)
    with Image.open(saved) as crop:
        assert crop.size == (round(first_box[2]), round(first_box[3]))
    with page.expect_download() as archive:
        page.click(".card .downloads >> text=All crops (zip)")
    assert archive.value.suggested_filename == "astronaut_crops.zip"
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)

    # a text file: the error is shown in the page, in words
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not a photo\n")
    page.set_input_files("#file-input", str(text_file))
    page.wait_for_function("document.querySelector('.card .status.error') !== null")
    message = page.inner_text(".card .status.error")
    assert "notes.txt" in message and "not an image" in message
    assert page.get_attribute(".card .status.error", "role") == "alert"
