"""Start `app.py` in a subprocess on a free localhost port, for the app tests (API, load, browser)."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support import ROOT


STARTUP_TIMEOUT_S = 300  # importing torch + diffusers on a busy 2-core CI box can take minutes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Variables by which the app recognises a Hugging Face Space; the tests set them only where they mean to.
SPACES_VARIABLES = ("SYSTEM", "SPACE_ID", "SPACE_AUTHOR_NAME", "SPACE_REPO_NAME", "SPACE_HOST")


def quiet_env(**extra: str) -> dict:
    """Subprocess environment: one torch thread (the CI box is shared), no Hub, no telemetry, not a Space."""
    env = {key: value for key, value in os.environ.items() if key not in SPACES_VARIABLES}
    env.update(
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        GRADIO_ANALYTICS_ENABLED="False",
        HF_HUB_DISABLE_TELEMETRY="1",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


@contextmanager
def running_app(
    args: Sequence[str] = ("--tiny",), log_path: Path | None = None, env: dict[str, str] | None = None
) -> Iterator[str]:
    """Yield the base URL of a running `python app.py ARGS` (`env`: extra variables); stopped afterwards."""
    port = free_port()
    log = open(log_path, "w") if log_path else subprocess.DEVNULL
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "app.py"), *args, "--port", str(port)],
        cwd=ROOT,
        env=quiet_env(**(env or {})),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"app.py exited with {process.returncode} before serving; see {log_path}")
            try:
                with urllib.request.urlopen(url + "gradio_api/info", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"app.py did not start within {STARTUP_TIMEOUT_S}s; see {log_path}")
            time.sleep(1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if log_path:
            log.close()


# Debian's chromium (installed by .ci/install_browser.sh); Playwright never downloads a browser of its own.
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


@contextmanager
def browser_page(url: str, width: int = 1366, height: int = 768) -> Iterator[Any]:
    """A Playwright page of chromium showing `url` at `width` x `height`, closed afterwards."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(120_000)
            # not "networkidle": the page keeps a heartbeat connection open while it holds session state; ready
            # once the editor has drawn its canvas (an upload before that lands on a default-size canvas)
            page.goto(url, wait_until="load")
            page.locator("#run").wait_for(state="visible")
            page.locator("#editor canvas").first.wait_for(state="visible")
            yield page
        finally:
            browser.close()


def photo_and_hole(width: int = 77, height: int = 53) -> tuple[Any, Any]:
    """examples/chelsea.jpg at 77x53 (deliberately not a multiple of 8) as uint8 HxWx3, and a rectangular hole
    (bool HxW) in it."""
    import numpy as np
    from PIL import Image

    photo = np.asarray(Image.open(ROOT / "examples" / "chelsea.jpg").convert("RGB").resize((width, height)))
    hole = np.zeros((height, width), dtype=bool)
    hole[15:40, 20:50] = True
    return photo, hole


def small_inputs(tmp_path: Path) -> tuple[Path, Path, Any, Any]:
    """A 64x48 photo and a rectangular hole saved in `tmp_path`, for [`inpaint_call`].

    Returns the photo's file, the mask's file, the photo (uint8 HxWx3) and the hole (bool HxW).
    """
    import numpy as np
    from PIL import Image

    photo = np.asarray(Image.open(ROOT / "examples" / "coffee.jpg").convert("RGB").resize((64, 48)))
    Image.fromarray(photo).save(tmp_path / "photo.png")
    hole = np.zeros((48, 64), dtype=bool)
    hole[10:30, 20:40] = True
    Image.fromarray(hole.astype(np.uint8) * 255).save(tmp_path / "mask.png")
    return tmp_path / "photo.png", tmp_path / "mask.png", photo, hole


def inpaint_call(client: Any, image_path, mask_path=None, layers=(), **settings) -> dict:
    """Call `/inpaint` with files (ASUKA-SD, 2 steps unless `settings` say otherwise); returns the named outputs."""
    from gradio_client import handle_file

    values = dict(
        method="asuka-sd",
        steps=2,
        seed=0,
        randomize_seed=False,
        condition_weight=1.0,
        guidance_scale=1.0,
        keep_unmasked=True,
        dilation=0,
        run_backbone=False,
        feather=0,
        invert=False,
        step_cache="",
    )
    values.update(settings)
    editor = {
        "background": handle_file(str(image_path)),
        "layers": [handle_file(str(p)) for p in layers],
        "composite": None,
    }
    outputs = client.predict(
        editor, handle_file(str(mask_path)) if mask_path else None, *values.values(), api_name="/inpaint"
    )
    names = ["result", "slider", "backbone", "reconstruction", "download", "seed", "mask", "run_time"]
    return dict(zip(names, outputs))


def segment_call(client: Any, image_path, points=(), box=()) -> Any:
    """Call `/segment` (points `[x, y]` or `[x, y, add]`, a box `[x0, y0, x1, y1]` or empty); returns the mask
    as a boolean HxW array."""
    import numpy as np
    from gradio_client import handle_file
    from PIL import Image

    path = client.predict(handle_file(str(image_path)), [list(p) for p in points], list(box), api_name="/segment")
    return np.asarray(Image.open(path).convert("L")) > 127
