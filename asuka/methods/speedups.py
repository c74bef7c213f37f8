"""The speed options of the app and the CLI: a step cache (`--cache NAME[:VALUE]`), LoRAs (`--lora
REPO_OR_FILE[:SCALE]`, repeatable) and `--compile`, applied to a loaded pipeline.

The step cache is chosen per run (it depends on the number of steps for MagCache), the LoRAs and compilation once
per loaded pipeline. They apply to the ASUKA pipelines; LoRAs also to the backbone baselines (diffusers' own
pipelines load them), compilation and the caches to the ASUKA pipelines only.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


logger = logging.getLogger(__name__)

# `--cache` help: the caches of `asuka.pipelines.step_cache.CACHE_KNOBS` and their main knob (written out, so that
# the interfaces start without importing the pipelines).
CACHE_HELP = (
    "diffusers step cache NAME[:VALUE]: first-block[:threshold], taylorseer[:cache_interval], mag[:threshold], "
    "faster[:spatial block skip range], pab[:spatial block skip range]; e.g. first-block:0.12"
)


def add_speed_arguments(parser: argparse.ArgumentParser) -> None:
    """`--cache`, `--lora` (repeatable) and `--compile`, as the CLI and the demo take them."""
    parser.add_argument("--cache", default=None, metavar="NAME[:VALUE]", help=CACHE_HELP)
    parser.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="REPO_OR_FILE[:SCALE]",
        help="a LoRA (Hub repo, folder or .safetensors file) at a scale (default 1.0); repeat for more",
    )
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the pipeline (warm-up at start, stated in the log)"
    )


@dataclass(frozen=True)
class Speedups:
    """What a pipeline gets when it is loaded: LoRAs (`REPO_OR_FILE[:SCALE]`) and whether to compile it, with
    `fullgraph` (False where a step cache will run: its hooks break the graph)."""

    loras: tuple[str, ...] = ()
    compile: bool = False
    fullgraph: bool = True

    def __bool__(self) -> bool:
        return bool(self.loras) or self.compile


def parse_lora(spec: str) -> tuple[str, float]:
    """`REPO_OR_FILE[:SCALE]` -> (source, scale); the scale defaults to 1.0 (a Hub id or a path holds no `:`
    followed by a number, so the last `:` separates the scale only when a number follows it)."""
    source, sep, scale = spec.rpartition(":")
    if sep:
        try:
            return source, float(scale)
        except ValueError:
            pass
    if not spec:
        raise ValueError("--lora needs REPO_OR_FILE[:SCALE], e.g. alimama-creative/FLUX.1-Turbo-Alpha:1.0.")
    return spec, 1.0


def load_loras(pipeline: Any, loras: tuple[str, ...]) -> list[str]:
    """Load each LoRA (a Hub repo, a folder or a `.safetensors` file) as its own adapter and activate them all at
    their scales; returns one line per LoRA for the log."""
    if not loras:
        return []
    if not hasattr(pipeline, "load_lora_weights"):
        raise ValueError(f"{type(pipeline).__name__} takes no LoRA (no diffusers LoRA loader).")
    names, scales, lines = [], [], []
    for index, spec in enumerate(loras):
        source, scale = parse_lora(spec)
        name = f"lora_{index}"
        if os.path.isfile(source):
            folder, weight_name = os.path.split(os.path.abspath(source))
            pipeline.load_lora_weights(folder, weight_name=weight_name, adapter_name=name)
        else:
            pipeline.load_lora_weights(source, adapter_name=name)
        names.append(name)
        scales.append(scale)
        lines.append(f"LoRA {source} at scale {scale:g}")
    pipeline.set_adapters(names, adapter_weights=scales)
    return lines


def compile_and_warm_up(pipeline: Any, fullgraph: bool = True, steps: int = 2) -> list[str]:
    """`compile_components(fullgraph=...)` and one warm-up call at the pipeline's square working size; returns the
    log lines."""
    if not hasattr(pipeline, "compile_components"):
        raise ValueError(f"--compile applies to the ASUKA pipelines, not to {type(pipeline).__name__}.")
    compiled = pipeline.compile_components(fullgraph=fullgraph)
    size = getattr(pipeline.config, "working_resolution", None) or pipeline.default_working_resolution
    start = time.perf_counter()
    pipeline.warm_up(size, size, num_inference_steps=steps)
    return [
        f"torch.compile: {', '.join(compiled)}{' (fullgraph)' if fullgraph else ''}; warm-up at {size}x{size} took "
        f"{time.perf_counter() - start:.1f} s (a new working size compiles once more)"
    ]


def apply_speedups(pipeline: Any, speedups: Speedups, report: Callable[[str], None] = logger.info) -> Any:
    """`pipeline` with `speedups` applied (LoRAs first, so that the compiled graphs include them); each is reported
    in a line to `report` (the log by default)."""
    lines = load_loras(pipeline, speedups.loras)
    if speedups.compile:
        lines += compile_and_warm_up(pipeline, speedups.fullgraph)
    for line in lines:
        report(line)
    return pipeline


def use_step_cache(pipeline: Any, spec: str | None, steps: int) -> None:
    """Enable the step cache `spec` (`NAME[:VALUE]`, None: none) for a run of `steps` steps, replacing the
    pipeline's current one when it differs; the pipeline remembers which one it has."""
    current = getattr(pipeline, "asuka_step_cache", None)
    wanted = None if not spec else (spec, steps if spec.partition(":")[0] == "mag" else None)
    if wanted == current:
        return
    if spec and not hasattr(pipeline, "enable_step_cache"):
        raise ValueError(f"--cache applies to the ASUKA pipelines, not to {type(pipeline).__name__}.")
    from asuka.pipelines.step_cache import parse_cache_spec

    config = parse_cache_spec(spec, steps) if spec else None  # a bad spec fails before the old cache goes
    if current is not None:
        pipeline.disable_step_cache()
    pipeline.asuka_step_cache = None
    if config is not None:
        pipeline.enable_step_cache(config)
        pipeline.asuka_step_cache = wanted
