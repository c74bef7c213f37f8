"""Generate a benchmark's inpaintings with a registered method, sharded and resumable.

Under `accelerate launch` every process takes every `num_processes`-th sample starting at its own
index, so each output is written by exactly one process. Outputs are written atomically (temporary
file, then rename), so an existing output is always complete and a re-run skips it. Each process
logs what it generated, skipped and failed to `logs/rank<i>.json`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accelerate import PartialState
from tqdm.auto import tqdm

from asuka.defaults import resolve_device_dtype
from asuka.evaluation.data import Benchmark, SampleError, load_sample
from asuka.methods import InpaintRequest, get_method, load_pipeline, run_method


IMAGES_DIR = "images"
LOGS_DIR = "logs"


@dataclass
class GenerationSettings:
    """What is passed to the method for every image (recorded in metrics.json)."""

    method: str
    model: str | None = None
    tiny: bool = False
    steps: int | None = None
    seed: int = 42
    guidance_scale: float | None = None
    condition_weight: float | None = None
    dtype: str = "auto"


@dataclass
class ShardLog:
    """What one process did: names generated, skipped (already there) and failed (name -> reason)."""

    rank: int
    generated: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)


def _save_atomic(image: Any, path: Path) -> None:
    partial = path.with_name(f".{path.name}.partial")
    image.save(partial, format="PNG")
    os.replace(partial, path)


def generate(benchmark: Benchmark, out_dir: Path, settings: GenerationSettings, state: PartialState) -> ShardLog:
    """Inpaint this process's slice of `benchmark` into `out_dir/images`, skipping existing outputs."""
    images_dir, logs_dir = out_dir / IMAGES_DIR, out_dir / LOGS_DIR
    images_dir.mkdir(parents=True, exist_ok=True)
    logs_dir.mkdir(parents=True, exist_ok=True)
    get_method(settings.method)  # unknown names fail before any work, listing the known ones
    log = ShardLog(rank=state.process_index)
    shard = benchmark.samples[state.process_index :: state.num_processes]
    todo = []
    for sample in shard:
        if (images_dir / sample.name).is_file():
            log.skipped.append(sample.name)
        else:
            todo.append(sample)
    pipeline = None
    if todo:
        device, dtype = resolve_device_dtype(state.device, settings.dtype)
        pipeline = load_pipeline(settings.method, settings.model, device, dtype, settings.tiny)
    bar = tqdm(
        todo, desc=f"{settings.method} [{state.process_index + 1}/{state.num_processes}]", position=state.process_index
    )
    for sample in bar:
        try:
            image, mask = load_sample(sample)
            request = InpaintRequest.from_settings(image, mask, settings)
            result = run_method(settings.method, pipeline, request)
            _save_atomic(result.image, images_dir / sample.name)
            log.generated.append(sample.name)
        except SampleError as error:
            log.errors[sample.name] = str(error)
        except Exception as error:  # one failing image must not end a 2000-image run; it is reported
            log.errors[sample.name] = f"{sample.image_path.name}: generation failed ({type(error).__name__}: {error})"
        if sample.name in log.errors:
            bar.write(f"[asuka.evaluation] skipped {log.errors[sample.name]}")
    (logs_dir / f"rank{state.process_index}.json").write_text(json.dumps(log.__dict__, indent=2))
    return log


def read_generation_errors(out_dir: Path, num_processes: int) -> dict[str, str]:
    """Per-file generation errors of the `num_processes` processes of the last run into `out_dir`."""
    errors: dict[str, str] = {}
    for rank in range(num_processes):
        path = out_dir / LOGS_DIR / f"rank{rank}.json"
        if path.is_file():
            errors.update(json.loads(path.read_text())["errors"])
    return errors
