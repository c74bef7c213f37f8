"""Test-wide settings (the Hub is never contacted) and the fixtures several rooms use."""

import os
from collections.abc import Iterator

import pytest


# No test may download anything; huggingface_hub and diffusers then fail fast instead of retrying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# Tiny models on a 2-core machine run fastest single-threaded, and subprocesses (app servers) share the cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tiny_app_url(tmp_path_factory):
    """One `python app.py --tiny` server for the API, upload and browser tests (each start costs a torch import)."""
    from tests.support.app_launcher import running_app

    with running_app(["--tiny"], tmp_path_factory.mktemp("app") / "app.log") as url:
        yield url


@pytest.fixture(scope="module")
def offline(tmp_path_factory) -> Iterator[None]:
    """No network, and no user accelerate config or Hub cache leaking into a module's runs (its own HF_HOME)."""
    patch = pytest.MonkeyPatch()
    patch.setenv("HF_HUB_OFFLINE", "1")
    patch.setenv("HF_HOME", str(tmp_path_factory.mktemp("hf_home")))
    patch.setenv("OMP_NUM_THREADS", "1")
    yield
    patch.undo()


def pytest_addoption(parser):
    parser.addoption(
        "--run-compile",
        action="store_true",
        help="also run the slow torch.compile tests (inductor on CPU, size changes); one compile test always runs",
    )


def pytest_configure(config):
    config.addinivalue_line("markers", "compile: a slow torch.compile test, run with --run-compile")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-compile"):
        return
    deselected = [item for item in items if item.get_closest_marker("compile")]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not item.get_closest_marker("compile")]
