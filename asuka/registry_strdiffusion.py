"""Registry entry "strdiffusion" (StrDiffusionPipeline). Imported lazily by `asuka.registry`.

`model` is a folder or Hub repo written by `python -m asuka.convert strdiffusion` (the authors' weight
links are dead, so there is no default). Steps at or above the model's T run the reference sampler with
adaptive resampling; fewer steps use the jump sampler.
"""

from __future__ import annotations

from typing import Any

import torch

from asuka.registry import (
    InpaintRequest,
    InpaintResult,
    MethodSpec,
    ProgressCallback,
    _generator,
    register_method,
    step_callback,
)


def _load(model: str | None, device: str, dtype: torch.dtype, tiny: bool) -> Any:
    if tiny:
        from asuka.testing import make_tiny_pipeline

        pipeline = make_tiny_pipeline("strdiffusion")
    else:
        if model is None:
            raise ValueError(
                "strdiffusion has no public weights: convert the authors' G.pth/Gs.pth/D.pth with "
                "`python -m asuka.convert strdiffusion ... --out DIR` and pass DIR as the model."
            )
        from asuka import StrDiffusionPipeline

        pipeline = StrDiffusionPipeline.from_pretrained(model, torch_dtype=dtype)
    pipeline = pipeline.to(device)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _run(pipeline: Any, request: InpaintRequest, progress: ProgressCallback | None) -> InpaintResult:
    total = pipeline.scheduler.config.num_train_timesteps
    steps = None if request.steps is None or request.steps >= total else request.steps
    output = pipeline(
        image=request.image,
        mask_image=request.mask,
        num_inference_steps=steps,
        generator=_generator(request.seed),
        callback_on_step_end=step_callback(progress, steps or total),
        callback_on_step_end_tensor_inputs=[],
    )
    return InpaintResult(image=output.images[0])  # known pixels are always pasted back (keep_unmasked)


def strdiffusion_method_spec() -> MethodSpec:
    """The "strdiffusion" MethodSpec (no guidance scale, no condition weight)."""
    return MethodSpec(
        name="strdiffusion",
        label="StrDiffusion",
        default_model=None,
        load=_load,
        run=_run,
        uses_guidance=False,
        uses_condition_weight=False,
        default_steps=400,
    )


register_method(strdiffusion_method_spec())
