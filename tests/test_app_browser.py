"""A real browser (Debian's chromium, driven by Playwright) at a laptop's 1366x768: paint a stroke, Run, check.

Playwright's own browser download is never used: chromium comes from apt (see .ci/install_browser.sh).
"""

import io

import numpy as np
import pytest
from app_launcher import ROOT, browser_page
from PIL import Image


WIDTH, HEIGHT = 1366, 768  # a common laptop screen


@pytest.fixture(scope="module")
def page(tiny_app_url):
    with browser_page(tiny_app_url, WIDTH, HEIGHT) as page:
        yield page


def _fetch(page, selector: str) -> np.ndarray:
    src = page.locator(selector).get_attribute("src")
    return np.asarray(Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB"))


def _on_screen(page, locator) -> bool:
    """Visible and entirely inside the viewport with the page scrolled to the top."""
    box = locator.bounding_box()
    return (
        locator.is_visible()
        and box is not None
        and box["x"] >= 0
        and box["y"] >= 0
        and box["x"] + box["width"] <= WIDTH
        and box["y"] + box["height"] <= HEIGHT
    )


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

    # the result, the output tabs and the download fit a laptop screen without scrolling
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(tmp_path / "after_run_1366x768.png"))
    assert (tmp_path / "after_run_1366x768.png").stat().st_size > 0
    assert _on_screen(page, page.locator("#result img")), page.locator("#result img").bounding_box()
    assert _on_screen(page, page.locator("#download")), page.locator("#download").bounding_box()
    for name in ("Result", "Before / after", "Backbone alone", "MAE reconstruction", "Mask used"):
        assert _on_screen(page, page.get_by_role("tab", name=name)), name

    page.get_by_role("tab", name="Mask used").click()
    page.locator("#mask-used img").wait_for(state="visible")
    mask = _fetch(page, "#mask-used img")[..., 0] > 127
    assert result.shape == photo.shape
    # the painted region is where the stroke went: a band through the centre, not the whole image
    assert mask[photo.shape[0] // 2, photo.shape[1] // 2] and 0 < mask.mean() < 0.9
    assert not mask[0].any() and not mask[-1].any()
    changed = (result != photo).any(axis=-1)
    assert changed.any(), "the painted region must be repainted"
    assert not (changed & ~mask).any(), "pixels outside the painted region must equal the input"
