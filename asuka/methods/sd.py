"""SD-1.5 methods: "asuka-sd" (AsukaPipeline) and "sd" (the plain SD-1.5 inpainting backbone, the paper's baseline)."""

from __future__ import annotations

from typing import Any

import torch

from asuka.defaults import SD_INPAINT_REPO
from asuka.methods import registry
from asuka.methods.baseline import run_baseline
from asuka.methods.loading import ready_pipeline
from asuka.methods.running import InpaintRequest, InpaintResult, ProgressCallback, seeded_generator, step_callback


def load_asuka_sd(model: str, device: str, dtype: torch.dtype) -> Any:
    """An AsukaPipeline saved with `save_pretrained`, full or light (folder or Hub repo; docs/hub.md)."""
    from asuka import AsukaPipeline

    return ready_pipeline(AsukaPipeline.from_pretrained(model, torch_dtype=dtype), device)


def run_asuka_sd(pipeline: Any, request: InpaintRequest, progress: ProgressCallback | None) -> InpaintResult:
    # Only aligners trained with a null embedding have a condition weight; for others it is ignored.
    has_null = pipeline.aligner.config.null_embedding is not None
    output = pipeline(
        image=request.image,
        mask_image=request.mask,
        num_inference_steps=request.steps,
        generator=seeded_generator(request.seed),
        condition_weight=request.condition_weight if has_null else None,
        keep_unmasked=request.keep_unmasked,
        mae_input_preprocessing=request.mae_input_preprocessing,
        callback_on_step_end=step_callback(progress, request.steps),
        callback_on_step_end_tensor_inputs=[],  # progress needs only the step index
    )
    reconstruction = (
        pipeline.mae_reconstruction(request.image, request.mask, request.mae_input_preprocessing)[0]
        if request.reconstruction
        else None
    )
    return InpaintResult(image=output.images[0], reconstruction=reconstruction)


def load_sd_backbone(model: str, device: str, dtype: torch.dtype) -> Any:
    """diffusers' StableDiffusionInpaintPipeline, without the safety checker."""
    from diffusers import StableDiffusionInpaintPipeline

    pipeline = StableDiffusionInpaintPipeline.from_pretrained(
        model, torch_dtype=dtype, safety_checker=None, requires_safety_checker=False
    )
    return ready_pipeline(pipeline, device)


def run_sd_backbone(pipeline: Any, request: InpaintRequest, progress: ProgressCallback | None) -> InpaintResult:
    """The plain SD-inpainting backbone with an empty prompt, on AsukaPipeline's working region (native size)."""
    if pipeline.text_encoder is not None:
        text = {"prompt": ""}
    else:  # the tiny backbone has no text encoder: an all-zero "empty prompt" stands in
        from asuka.pipelines.backbones import SD15_INPAINTING as spec

        text = spec.zero_conditioning(pipeline.unet.config, spec.text_tokens, 1, pipeline.device, pipeline.unet.dtype)

    native = pipeline.unet.config.sample_size * pipeline.vae_scale_factor  # AsukaPipeline's default resolution
    return run_baseline(
        pipeline,
        request,
        progress,
        prompt=text,
        working_resolution=native,
        multiple=pipeline.vae_scale_factor,
    )


# The ASUKA paper as its authors title it (github.com/Yikai-Wang/asuka-misato); the model cards carry its BibTeX.
ASUKA_PAPER = (
    "Paper: [*Towards Enhanced Image Inpainting: Mitigating Unwanted Object Insertion and Preserving Color "
    "Consistency*](https://arxiv.org/abs/2312.04831), CVPR 2025 (Highlight)"
)

registry.register_method(
    registry.MethodSpec(
        name="asuka-sd",
        label="ASUKA-SD",
        default_model=None,  # no public ASUKA-SD checkpoint exists yet
        load=load_asuka_sd,
        run=run_asuka_sd,
        tiny_kind="sd",
        uses_condition_weight=True,
        default_steps=50,
        backbone="sd",
        description="ASUKA on SD-1.5-inpainting: MAE prior + aligner instead of text, mask-conditioned decoder.",
        weights_hint="train one with training/ (see docs/training.md) and pass its folder or Hub repo with --model",
        requirements="a GPU with >= 6 GB in float16 (CPU works, slowly)",
        paper=ASUKA_PAPER,
        gpu_seconds_per_step=0.08,
    )
)
# The plain backbone, for comparison: its declaration states this method's own values (name, weights, code, needs).
registry.register_method(
    registry.MethodSpec(
        name="sd",
        label="SD-1.5 inpainting (backbone)",
        default_model=SD_INPAINT_REPO,
        load=load_sd_backbone,
        run=run_sd_backbone,
        tiny_kind="sd-backbone",
        default_steps=50,
        description="The frozen SD-1.5 inpainting backbone alone, with an empty prompt.",
        requirements="~4 GB download on first use; a GPU with >= 4 GB in float16 (CPU works, slowly)",
        gpu_seconds_per_step=0.06,
    )
)
