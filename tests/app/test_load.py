"""Load and start-up behaviour: a full queue refuses politely; an unloadable model exits fast with guidance."""

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError
from gradio_client.utils import QueueError
from PIL import Image

from tests.support.app_launcher import ROOT, inpaint_call, quiet_env, running_app, segment_call, small_inputs


MAX_QUEUE = 2
CALLS = 16


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    with running_app(["--tiny", "--max-queue", str(MAX_QUEUE)], tmp_path_factory.mktemp("app") / "app.log") as url:
        yield url


def _call(url, image, mask, steps):
    """The result file of an ASUKA-SD `/inpaint` call with `steps`, from a client of its own."""
    return inpaint_call(Client(url, verbose=False), image, mask, steps=steps)["result"]


def _burst(call) -> list[tuple[str, object]]:
    """`call(index)` for CALLS indices at once: each ("ok", output) or ("refused", message); every refusal must be
    the queue's, and at least one call served."""

    def one(index):
        try:
            return "ok", call(index)
        except (QueueError, AppError) as error:
            return "refused", str(error)

    with ThreadPoolExecutor(CALLS) as pool:
        outcomes = list(pool.map(one, range(CALLS)))
    kinds = [kind for kind, _ in outcomes]
    refusals = [detail for kind, detail in outcomes if kind == "refused"]
    assert set(kinds) <= {"ok", "refused"} and "ok" in kinds
    assert all("queue is full" in detail.lower() for detail in refusals), refusals
    return outcomes


def test_concurrent_calls_succeed_or_are_told_the_queue_is_full(app_url, tmp_path):
    image, mask, photo, hole = small_inputs(tmp_path)
    outcomes = _burst(lambda _: _call(app_url, image, mask, 4))
    assert "refused" in dict(outcomes), "16 simultaneous calls against a queue of 2 must overflow it"
    for kind, output in outcomes:
        if kind == "ok":
            result = np.asarray(Image.open(output).convert("RGB"))
            assert result.shape == photo.shape and np.array_equal(result[~hole], photo[~hole])
    # the server still answers once the burst is over
    result = np.asarray(Image.open(_call(app_url, image, mask, 1)).convert("RGB"))
    assert np.array_equal(result[~hole], photo[~hole])


def test_concurrent_segment_calls_are_served_or_told_the_queue_is_full(app_url, tmp_path):
    image, _, photo, _ = small_inputs(tmp_path)
    outcomes = _burst(lambda index: segment_call(Client(app_url, verbose=False), image, [(5 + index * 3, 20)]))
    assert all(mask.shape == photo.shape[:2] for kind, mask in outcomes if kind == "ok")
    # the server still answers once the burst is over
    assert segment_call(Client(app_url, verbose=False), image, [(10, 10)]).shape == photo.shape[:2]


def _start(*args: str, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    """Run `app.py ARGS` outside Spaces, offline, until it exits; returns the process and its wall time."""
    start = time.monotonic()
    process = subprocess.run(
        [sys.executable, str(ROOT / "app.py"), *args, "--port", "0"],
        cwd=ROOT,
        env=quiet_env(HF_HUB_OFFLINE="1", **env),
        capture_output=True,
        text=True,
        timeout=300,
    )
    return process, time.monotonic() - start


def test_unloadable_model_exits_fast_with_guidance():
    process, _ = _start("--method", "asuka-sd", "--model", "no-such-user/no-such-asuka-model")
    assert process.returncode == 2
    message = process.stderr
    assert "no-such-user/no-such-asuka-model" in message
    for hint in ("hf auth login", "accept its licence", "local folder", "--tiny"):
        assert hint in message, message
    assert "Traceback" not in message and "Traceback" not in process.stdout


def test_unloadable_default_exits_with_code_2_within_30_s(tmp_path):
    # what a Space runs (its variable names the method), but outside Spaces: fail fast, as before
    process, seconds = _start(ASUKA_METHOD="asuka-flux", ASUKA_CACHE=str(tmp_path), HF_HOME=str(tmp_path))
    assert process.returncode == 2, process.stderr
    assert seconds < 30, f"took {seconds:.0f} s"
    assert "Could not load the ASUKA-FLUX model" in process.stderr and "How to fix it" in process.stderr
    assert "Traceback" not in process.stderr


def test_no_method_on_a_machine_without_cuda_explains_tiny_and_what_each_method_needs():
    process, _ = _start()  # the test machines have no CUDA GPU
    assert process.returncode == 2 and "Traceback" not in process.stderr
    message = process.stderr
    assert "No CUDA GPU" in message and "--tiny" in message and "--method" in message
    for name in ("asuka-sd", "sd", "asuka-flux", "flux-fill", "strdiffusion"):
        assert f"  {name} " in message, message
