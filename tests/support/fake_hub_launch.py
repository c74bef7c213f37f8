"""Run a training script with the Hub intercepted (`tests.support.training.intercept_hub`), so a test can push from the
processes `accelerate launch` starts: `fake_hub_launch.py UPLOADS SCRIPT [ARGS...]`; uploads land in UPLOADS."""

import runpy
import sys
from pathlib import Path

import pytest

from tests.support.training import intercept_hub


if __name__ == "__main__":
    uploads, script, *script_args = sys.argv[1:]
    intercept_hub(pytest.MonkeyPatch(), Path(uploads))
    sys.argv = [script, *script_args]
    runpy.run_path(script, run_name="__main__")
