"""The `accelerate launch` command line of the tests that start two CPU processes (evaluation and training)."""

import sys


def two_process_launch(*target: str, main_process_port: int | None = None) -> list[str]:
    """`accelerate launch` of `target` (a script, or `-m module`) in two processes on this machine.

    `--cpu` starts a single process unless MPI is installed; the torchrun launcher (`--multi_gpu`) starts two, which
    form a gloo group on a machine without CUDA.
    """
    port = ["--main_process_port", str(main_process_port)] if main_process_port else []
    launcher = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    return [sys.executable, *launcher, "--mixed_precision", "no", "--dynamo_backend", "no", *port, *target]
