"""Soak: 60 `/inpaint` calls with --tiny leave the app's temporary files bounded, and the clean-up empties them."""

import time
from pathlib import Path

import pytest
from gradio_client import Client

from tests.support.app_launcher import inpaint_call, running_app, small_inputs


CALLS = 60
MAX_AGE_S = 4  # --cache-max-age: Gradio then deletes every max(1, 4 // 4) = 1 s what is older than 4 s
SWEEP_S = 1
# Calls are paced to at least this many seconds each, so the run outlasts the age several times over.
MIN_CALL_S = 0.3
MAX_RESULTS = 5
# Files one call may leave: 2 uploads (image, mask) + result + before/after (2) + reconstruction + mask + download.
FILES_PER_CALL = 8


def _files(folder: Path) -> dict[Path, int]:
    return {path: path.stat().st_size for path in folder.rglob("*") if path.is_file()}


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    temp = tmp_path_factory.mktemp("gradio_temp")
    args = ["--tiny", "--cache-max-age", str(MAX_AGE_S), "--max-results", str(MAX_RESULTS)]
    with running_app(args, tmp_path_factory.mktemp("app") / "app.log", env={"GRADIO_TEMP_DIR": str(temp)}) as url:
        yield url, temp


def test_sixty_calls_leave_bounded_temporary_files(app, tmp_path):
    url, temp = app
    image, mask, _, _ = small_inputs(tmp_path)
    client = Client(url, verbose=False, download_files=False)  # nothing written on the client side
    baseline = set(_files(temp))

    finished = []
    for _ in range(CALLS):
        started = time.monotonic()
        # a random seed each time: every result is a new file, as with real users
        outputs = inpaint_call(client, image, mask, steps=1, randomize_seed=True)
        finished.append(time.monotonic())
        assert outputs["result"] is not None
        time.sleep(max(0.0, MIN_CALL_S - (finished[-1] - started)))
    end = time.monotonic()

    after_run = {path: size for path, size in _files(temp).items() if path not in baseline}
    results = [path for path in after_run if "asuka-results" in path.parts]
    recent = sum(1 for t in finished if end - t <= MAX_AGE_S + SWEEP_S + 2)
    print(f"after {CALLS} calls: {len(after_run)} files, {sum(after_run.values())} bytes; {len(results)} results")
    assert 0 < len(results) <= MAX_RESULTS  # the app's own files: a count limit
    # Gradio's uploads and outputs: only what the last age + sweep interval produced is still there
    assert len(after_run) <= FILES_PER_CALL * (recent + 1) < FILES_PER_CALL * CALLS, (len(after_run), recent)

    time.sleep(MAX_AGE_S + 2 * SWEEP_S + 1)  # the clean-up interval
    after_cleanup = {path: size for path, size in _files(temp).items() if path not in baseline}
    print(f"after the clean-up interval: {len(after_cleanup)} files, {sum(after_cleanup.values())} bytes")
    assert after_cleanup == {}, sorted(map(str, after_cleanup))[:10]
