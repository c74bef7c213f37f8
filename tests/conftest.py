"""Test-wide settings: the Hub is never contacted."""

import os


# No test may download anything; huggingface_hub and diffusers then fail fast instead of retrying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# Tiny models on a 2-core machine run fastest single-threaded, and subprocesses (app servers) share the cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")
