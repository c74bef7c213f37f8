"""A real browser (Debian's chromium, driven by Playwright) paints a stroke, presses Run and checks the result.

Playwright's own browser download is never used: chromium comes from apt (see .ci/install_browser.sh).
"""

import io
import os

import numpy as np
import pytest
from app_launcher import ROOT, running_app
from PIL import Image
from playwright.sync_api import sync_playwright


CHROMIUM = os.environ.get("ASUKA_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    with running_app(["--tiny"], tmp_path_factory.mktemp("app") / "app.log") as url:
        yield url


@pytest.fixture(scope="module")
def page(app_url):
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(120_000)
        page.goto(app_url, wait_until="networkidle")
        yield page
        browser.close()


def _fetch(page, selector: str) -> np.ndarray:
    src = page.locator(selector).get_attribute("src")
    return np.asarray(Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB"))


def test_banner_is_visible(page):
    assert page.get_by_text("random weights, for trying the interface").is_visible()


def test_paint_a_stroke_run_and_see_the_result(page, tmp_path):
    photo = Image.open(ROOT / "examples" / "chelsea.jpg").convert("RGB").resize((160, 106))
    photo.save(tmp_path / "photo.png")
    photo = np.asarray(photo)
    editor = page.locator("#editor")
    editor.locator("input[type=file]").first.set_input_files(str(tmp_path / "photo.png"))
    editor.get_by_role("button", name="Brush", exact=True).click()

    # a horizontal stroke through the middle of the canvas, where the image is centred
    box = editor.locator("canvas").first.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x - 40, y)
    page.mouse.down()
    page.mouse.move(x + 40, y, steps=10)
    page.mouse.up()

    page.locator("#run").click()
    page.locator("#result img").wait_for(state="visible")
    assert page.locator("#result img").is_visible()

    result = _fetch(page, "#result img")
    mask = _fetch(page, "#mask-used img")[..., 0] > 127
    assert result.shape == photo.shape
    # the painted region is where the stroke went: a band through the centre, not the whole image
    assert mask[photo.shape[0] // 2, photo.shape[1] // 2] and 0 < mask.mean() < 0.9
    assert not mask[0].any() and not mask[-1].any()
    changed = (result != photo).any(axis=-1)
    assert changed.any(), "the painted region must be repainted"
    assert not (changed & ~mask).any(), "pixels outside the painted region must equal the input"
