"""Running one inpainting request: the request and its result, `run_method`, and the helpers the methods' run
functions share (progress callbacks, seeded generators)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from asuka.methods.registry import get_method
from asuka.methods.speedups import use_step_cache


ProgressCallback = Callable[[int, int], None]
"""Called as `progress(steps_done, total_steps)` after each denoising step."""


@dataclass
class InpaintRequest:
    """One inpainting job: an RGB image and an `L` mask of the same size (255 = hole).

    `reconstruction` asks methods with a prior for its reconstruction too (an extra prior pass; only the app shows
    it). `mae_input_preprocessing` is the MAE's input order for methods with one (`None`: the MAE's config); the
    run and its reconstruction use the same. `step_cache` is a diffusers step cache as `NAME[:VALUE]` (e.g.
    `first-block:0.12`; see `asuka.methods.speedups`) for the ASUKA methods.
    """

    image: Image.Image
    mask: Image.Image
    steps: int | None = None
    seed: int = 0
    condition_weight: float | None = None
    guidance_scale: float | None = None
    keep_unmasked: bool = True
    reconstruction: bool = False
    mae_input_preprocessing: str | None = None
    step_cache: str | None = None

    @classmethod
    def from_settings(cls, image: Image.Image, mask: Image.Image, settings: Any) -> InpaintRequest:
        """A request for `image` and `mask` with `settings`' steps, seed, condition_weight, guidance_scale and
        cache, where it has one (the CLI's parsed arguments, an evaluation run's settings), so every interface
        passes the same fields."""
        return cls(
            image=image,
            mask=mask,
            steps=settings.steps,
            seed=settings.seed,
            condition_weight=settings.condition_weight,
            guidance_scale=settings.guidance_scale,
            step_cache=getattr(settings, "cache", None),
        )


@dataclass
class InpaintResult:
    """The inpainted image (input size) and, when the request asked for it and the method has a prior, the prior's
    reconstruction."""

    image: Image.Image
    reconstruction: Image.Image | None = None


def run_method(
    name: str, pipeline: Any, request: InpaintRequest, progress: ProgressCallback | None = None
) -> InpaintResult:
    """Run `request` through `pipeline` with method `name`, validating the request first.

    The method's run function always gets a positive `request.steps` and a `request.guidance_scale` (the
    spec's defaults when none is given); the pipeline runs with `request.step_cache` (none when it is None).
    """
    if request.image.size != request.mask.size:
        raise ValueError(f"Image size {request.image.size} and mask size {request.mask.size} differ; they must match.")
    spec = get_method(name)
    if request.steps is None:
        request = dataclasses.replace(request, steps=spec.default_steps)
    elif request.steps < 1:
        raise ValueError(f"steps must be a positive integer, got {request.steps}.")
    if request.guidance_scale is None:
        request = dataclasses.replace(request, guidance_scale=spec.default_guidance)
    use_step_cache(pipeline, request.step_cache, request.steps)
    return spec.run(pipeline, request, progress)


def step_callback(progress: ProgressCallback | None, total: int) -> Callable | None:
    """A diffusers `callback_on_step_end` that reports `(step + 1, total)` to `progress`."""
    if progress is None:
        return None

    def callback(pipeline: Any, step: int, timestep: Any, callback_kwargs: dict) -> dict:
        progress(min(step + 1, total), total)  # some schedulers (PNDM) take one step more than asked
        return callback_kwargs

    return callback


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with `seed` (CPU, so a seed gives the same noise on every device)."""
    return torch.Generator(device="cpu").manual_seed(int(seed))
