"""A real browser (Debian's chromium, driven by Playwright) at a laptop's 1366x768: paint a stroke, Run, check;
click objects to select them (a second click, subtracting clicks, a box drag), grow the selection, Run, check.

Playwright's own browser download is never used: chromium comes from apt (see .ci/install_browser.sh).
"""

import io
import time

import numpy as np
import pytest
from gradio_client import Client
from PIL import Image

from asuka.masks import grow_mask
from tests.support.app_launcher import ROOT, browser_page, segment_call


WIDTH, HEIGHT = 1366, 768  # a common laptop screen
# Seconds a click may take to show its selection on CPU with --tiny (typically under 1 s on an idle machine).
CLICK_SECONDS = 15


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


def _wait_until_idle(page, selector: str) -> None:
    """Wait until the event just triggered has updated `selector` (its status tracker is hidden again)."""
    page.wait_for_timeout(300)  # the tracker shows within a frame of the click
    page.wait_for_function(
        "sel => document.querySelector(sel + ' [data-testid=status-tracker]').classList.contains('hide')", arg=selector
    )


def _click_and_read_selection(
    page, photo: np.ndarray, x: int, y: int, to=None, key: str | None = None
) -> tuple[np.ndarray, float]:
    """Click pixel (x, y) of the "Click to select" view (or drag from there to pixel `to`; holding `key`);
    return the selection its overlay shows and the seconds until it showed. The overlay tints the selected pixels,
    so they are the pixels that differ from the photo."""
    view = page.locator("#select-view img")
    before = view.get_attribute("src")
    box = view.bounding_box()
    natural_width, natural_height = view.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    # where the page draws the photo inside the element (Gradio: contained, centred, never enlarged)
    scale = min(box["width"] / natural_width, box["height"] / natural_height, 1)
    left = box["x"] + (box["width"] - natural_width * scale) / 2
    top = box["y"] + (box["height"] - natural_height * scale) / 2
    start = time.monotonic()
    page.mouse.move(left + x * scale, top + y * scale)
    if key:
        page.keyboard.down(key)
    page.mouse.down()
    if to is not None:
        page.mouse.move(left + to[0] * scale, top + to[1] * scale, steps=8)
    page.mouse.up()
    if key:
        page.keyboard.up(key)
    page.wait_for_function("src => document.querySelector('#select-view img').getAttribute('src') !== src", arg=before)
    seconds = time.monotonic() - start
    return (_fetch(page, "#select-view img") != photo).any(axis=-1), seconds


def test_click_to_select_subtract_grow_and_run(page, tmp_path):
    photo = Image.open(ROOT / "examples" / "chelsea.jpg").convert("RGB").resize((160, 106))
    photo.save(tmp_path / "photo.png")
    photo = np.asarray(photo)
    page.evaluate("window.scrollTo(0, 0)")
    page.get_by_role("tab", name="Paint").click()
    page.locator("#editor input[type=file]").first.set_input_files(str(tmp_path / "photo.png"))
    page.get_by_role("tab", name="Click to select").click()
    page.locator("#select-view img").wait_for(state="visible")
    page.locator("#clear-mask").click()  # nothing left from painting: the mask is the selection alone
    _wait_until_idle(page, "#select-view")
    for locator in (page.locator("#select-view img"), page.locator("#select-mode"), page.locator("#run")):
        assert _on_screen(page, locator), locator.bounding_box()  # at 1366x768, without scrolling

    first, seconds = _click_and_read_selection(page, photo, 40, 50)
    assert seconds < CLICK_SECONDS, f"the selection took {seconds:.1f} s to show"
    assert 0 < first.sum() < first.size
    client = Client(page.url, verbose=False)  # the overlay is the /segment mask of that click
    assert np.array_equal(first, segment_call(client, tmp_path / "photo.png", [(40, 50)]))

    second, _ = _click_and_read_selection(page, photo, 120, 30)
    assert (second >= first).all() and second.sum() > first.sum(), "a second click adds its object"
    page.locator("#select-mode").get_by_label("Subtract").check()
    third, _ = _click_and_read_selection(page, photo, 80, 80)
    assert (third <= second).all() and third.sum() < second.sum(), "a subtracting click removes its object"
    assert np.array_equal(third, segment_call(client, tmp_path / "photo.png", [(40, 50), (120, 30), (80, 80, 0)]))
    fourth, _ = _click_and_read_selection(page, photo, 20, 15, to=(100, 90))  # a drag selects by box
    assert np.array_equal(fourth, third | segment_call(client, tmp_path / "photo.png", box=(20, 15, 100, 90)))
    page.locator("#select-mode").get_by_label("Add").check()
    fifth, _ = _click_and_read_selection(page, photo, 60, 60, key="Shift")  # Shift-click subtracts too
    assert np.array_equal(fifth, fourth & ~segment_call(client, tmp_path / "photo.png", [(60, 60)]))

    page.locator("#settings").get_by_text("Settings", exact=True).click()
    grow = page.locator("#grow input[type=number]")
    grow.fill("3")
    grow.press("Tab")  # the slider takes the typed value when the field loses focus
    page.wait_for_function("() => document.querySelector('#grow input[type=range]').value === '3'")
    page.locator("#run").click()
    _wait_until_idle(page, "#result")
    page.get_by_role("tab", name="Mask used").click()
    page.locator("#mask-used img").wait_for(state="visible")
    used = _fetch(page, "#mask-used img")[..., 0] > 127
    assert np.array_equal(used, grow_mask(fifth.astype(np.float32), 3) > 0.5), "Run uses the selection, grown"
    page.get_by_role("tab", name="Result").click()
    result = _fetch(page, "#result img")
    assert np.array_equal(result[~used], photo[~used])
