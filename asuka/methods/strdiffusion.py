"""The "strdiffusion" method (StrDiffusionPipeline).

`model` is a folder or Hub repo written by `python -m asuka.convert strdiffusion` (the authors' weight links are
dead, so there is no default). Steps at or above the model's T run the reference sampler with adaptive resampling;
fewer steps use the jump sampler.
"""

from __future__ import annotations

from typing import Any

import torch

from asuka.methods import registry
from asuka.methods.loading import ready_pipeline
from asuka.methods.running import InpaintRequest, InpaintResult, ProgressCallback, seeded_generator, step_callback


def load_strdiffusion(model: str, device: str, dtype: torch.dtype) -> Any:
    from asuka import StrDiffusionPipeline

    return ready_pipeline(StrDiffusionPipeline.from_pretrained(model, torch_dtype=dtype), device)


def run_strdiffusion(pipeline: Any, request: InpaintRequest, progress: ProgressCallback | None) -> InpaintResult:
    total = pipeline.scheduler.config.num_train_timesteps
    steps = None if request.steps >= total else request.steps  # None: the reference sampler over all T steps
    output = pipeline(
        image=request.image,
        mask_image=request.mask,
        num_inference_steps=steps,
        generator=seeded_generator(request.seed),
        callback_on_step_end=step_callback(progress, steps or total),
        callback_on_step_end_tensor_inputs=[],
    )
    return InpaintResult(image=output.images[0])  # known pixels are always pasted back (keep_unmasked)


registry.register_method(
    registry.MethodSpec(
        name="strdiffusion",
        label="StrDiffusion",
        default_model=None,  # the authors' weight links are dead: convert a copy
        load=load_strdiffusion,
        run=run_strdiffusion,
        tiny_kind="strdiffusion",
        default_steps=400,
        weights_hint="convert the authors' G.pth/Gs.pth/D.pth with `python -m asuka.convert strdiffusion ... "
        "--out DIR` and pass DIR with --model",
        requirements="a GPU recommended (CPU works, slowly)",
        paper="Paper: [*Structure Matters: Tackling the Semantic Discrepancy in Diffusion Models for Image "
        "Inpainting*](https://arxiv.org/abs/2403.19898), CVPR 2024",
        gpu_seconds_per_step=0.08,
    )
)
