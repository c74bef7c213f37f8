"""The benchmark scripts as modules, for tests/test_benchmarks_*.py: benchmarks/ is a folder of scripts that import
each other as siblings, so it goes on sys.path once here and every test file imports them from this module."""

import pathlib
import sys


sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import aligner_precompute  # noqa: E402
import bench_pipelines  # noqa: E402
import flops  # noqa: E402
import gpu_suite  # noqa: E402
import memory_plan  # noqa: E402
import meta_memory  # noqa: E402
import training_budget  # noqa: E402


__all__ = [
    "aligner_precompute",
    "bench_pipelines",
    "flops",
    "gpu_suite",
    "memory_plan",
    "meta_memory",
    "training_budget",
]
