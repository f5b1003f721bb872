"""Personalized cropping in a real headless browser (Playwright driving /usr/bin/chromium) against
the real server with the demo PIC prior: type a name, rate the offered crops with clicks and with
the keys 1-5, see the counts, personalize with the progress bar, then see the user's own ranking
beside the generic one. Skips only outside CI when no browser or Playwright is installed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.test_app import Server
from tests.test_app_browser import browser_page, require_browser
from tests.test_app_ratings import taste
from tests.test_crop import save_checkpoint

PHOTOS, SHOWN = 3, 10


@pytest.fixture(scope="module")
def photo_files(tmp_path_factory) -> list[Path]:
    from untils.demo_data import build_demo_dataset

    root = tmp_path_factory.mktemp("browser-photos")
    build_demo_dataset(root, num_train=4, num_test=2, seed=5, long_side=160)
    return sorted((root / "GAICD" / "images" / "train").glob("*.jpg"))[:PHOTOS]


@pytest.fixture(scope="module")
def served(demo_pic_prior, tmp_path_factory) -> Iterator[tuple]:
    require_browser()
    checkpoint = save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-hcic.pth", "HCIC")
    data = tmp_path_factory.mktemp("browser-personal") / "data"
    server = Server(checkpoint, data, "--pic-prior", demo_pic_prior, "--no-detector")
    with browser_page(server) as page:
        yield page, server


def listed_boxes(card, selector: str) -> list[list[float]]:
    """The boxes of the crops a card lists under ``selector``."""
    return card.eval_on_selector_all(
        f"{selector} li",
        "items => items.map(i => i.dataset.box.split(',').map(Number))",
    )


def test_rate_personalize_and_see_the_ranking_change(served, photo_files, tmp_path):
    page, server = served
    page.wait_for_selector("#personal:not([hidden])")
    page.fill("#top-k", str(SHOWN))
    page.fill("#user", "Lena")
    page.wait_for_function("document.querySelector('#rated-count').textContent.includes('lena: 0 crops')")
    page.set_input_files("#file-input", [str(path) for path in photo_files])
    page.wait_for_function(
        f"document.querySelectorAll('.card .personal-column:not([hidden])').length === {PHOTOS} && "
        "![...document.querySelectorAll('.card')].some(c => c.ariaBusy)"
    )
    assert "Rate these crops, lena" in page.inner_text(".card .personal-title")

    # rate each photo's crops by a taste rule (right of centre): the first crop by clicking a star,
    # the others by focusing them and pressing the key; "More crops to rate" offers more candidates
    for card in page.query_selector_all(".card"):
        width = float(card.get_attribute("data-width"))
        assert len(card.query_selector_all(".personal-crops li")) == SHOWN
        card.query_selector(".more-crops").click()
        items = card.query_selector_all(".personal-crops li")
        assert len(items) == SHOWN + page.evaluate("personal.minCrops")
        for index, item in enumerate(items):
            score = taste([float(v) for v in item.get_attribute("data-box").split(",")], width, +1)
            if index == 0:
                item.query_selector(f".stars button[data-score='{score}']").click()
            else:
                item.focus()
                page.keyboard.press(str(score))
            page.wait_for_function("item => item.classList.contains('rated')", arg=item)
            pressed = item.eval_on_selector_all(".stars button[aria-pressed='true']", "b => b.length")
            assert pressed == score
    rated = PHOTOS * (SHOWN + page.evaluate("personal.minCrops"))
    page.wait_for_function(
        f"document.querySelector('#rated-count').textContent.includes('{rated} crops of {PHOTOS} photos rated')"
    )
    stored = httpx.get(f"{server.url}/api/users/lena/ratings", timeout=30).json()
    assert (stored["crops"], stored["photos"]) == (rated, PHOTOS)

    # 0 clears a rating (the server forgets it), a key gives it again
    item = page.query_selector(".card .personal-crops li:nth-child(2)")
    item.focus()
    page.keyboard.press("0")
    page.wait_for_function("item => !item.classList.contains('rated')", arg=item)
    page.wait_for_function(f"document.querySelector('#rated-count').textContent.includes('{rated - 1} crops')")
    assert httpx.get(f"{server.url}/api/users/lena/ratings", timeout=30).json()["crops"] == rated - 1
    page.keyboard.press("5")
    page.wait_for_function(f"document.querySelector('#rated-count').textContent.includes('{rated} crops')")

    # personalize: the progress bar runs, then every card shows lena's ranking beside the generic one
    assert page.is_enabled("#personalize")
    page.click("#personalize")
    page.wait_for_selector("#job-progress:not([hidden])")
    page.wait_for_function("document.querySelector('#personal-status').textContent.startsWith('done')")
    assert page.evaluate("document.querySelector('#job-progress').value") == 1
    page.wait_for_function(
        f"[...document.querySelectorAll('.card .generic-column')].filter(c => !c.hidden).length === {PHOTOS}"
    )
    for card in page.query_selector_all(".card"):
        assert "lena's ranking (personal model)" in card.query_selector(".personal-title").inner_text()
        mine = listed_boxes(card, ".personal-crops")
        generic = listed_boxes(card, ".generic-crops")
        assert len(generic) >= 1 and mine[: len(generic)] != generic
    assert "Personal model in use" in page.inner_text("#rated-count")
    page.screenshot(path=str(tmp_path / "app_personalize.png"), full_page=True)
