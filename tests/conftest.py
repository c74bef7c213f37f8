"""Test-wide settings: the Hub is never contacted."""

import os

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
    from app_launcher import running_app

    with running_app(["--tiny"], tmp_path_factory.mktemp("app") / "app.log") as url:
        yield url
