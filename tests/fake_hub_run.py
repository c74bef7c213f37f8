"""Run a training script as `accelerate launch` runs it, with `HfApi` intercepted (`training_support.intercept_hub`):
`python tests/fake_hub_run.py UPLOADS SCRIPT ARGS...` lands every upload under `UPLOADS/<repo_id>/`.

Processes started by a test cannot share its monkeypatches, so the launched command is this file, which patches the
Hub in each process and then runs the script as `__main__` with `ARGS` as its command line.
"""

import runpy
import sys
from pathlib import Path

import pytest
from training_support import intercept_hub, put_training_on_path


if __name__ == "__main__":
    uploads, script, *argv = sys.argv[1:]
    put_training_on_path()
    intercept_hub(pytest.MonkeyPatch(), Path(uploads))
    sys.argv = [script, *argv]
    runpy.run_path(script, run_name="__main__")
