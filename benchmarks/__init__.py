"""Benchmarks of the ASUKA pipelines and training against their backbones, each run from the repository root as
`python -m benchmarks.<name>` (benchmarks/README.md)."""

import os
import sys


# The repository root: the working directory of the fresh interpreters some benchmarks measure in.
REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def module_command(module: str, *arguments: str) -> list[str]:
    """The command that runs benchmark `module` (e.g. "benchmarks.flops") in a fresh interpreter; run it with
    `cwd=REPOSITORY`."""
    return [sys.executable, "-m", module, *arguments]
